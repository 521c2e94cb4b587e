"""The released label vocabularies as plain tables: the openai/jukebox id lists and the Hugging
Face tokenizer files. ``jukebox_flax.labels.Labeller`` builds itself from what these return
(``Labeller.from_ids_dir`` / ``Labeller.from_vocab``); ``convert --ids / --vocab`` writes it into
the model directory's ``vocab.json``, which is all the library itself reads.

Both readers return ``{"version": "v2" | "v3", "artists": {name: id}, "genres": {name: id},
"lyrics": alphabet or None}`` (None: the version's built-in alphabet), names as the original looks
them up (v2 normalised, v3 lower-cased).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jukebox_flax.errors import LabelError

__all__ = ["read_id_file", "read_ids_dir", "read_hf_vocab", "HF_FILES"]

PathLike = str | os.PathLike
HF_FILES = ("artists.json", "genres.json", "lyrics.json")
_HF_V2_SUFFIX = ".v2"
_VERSIONS = ("v2", "v3")


def _check_version(version: Any) -> str:
    if version not in _VERSIONS:
        raise LabelError(f"label version must be 'v2' or 'v3', got {version!r}")
    return version


def read_id_file(path: PathLike) -> dict[str, int]:
    """A released ``{v2,v3}_{artist,genre}_ids.txt``: lines ``name;id``, names lower-cased."""
    table: dict[str, int] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LabelError(f"cannot read the id list {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise LabelError(f"the id list {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.rpartition(";")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise LabelError(f"{path}:{number}: expected 'name;id', got {line!r}")
        table[name.lower()] = int(value)
    return table


def read_ids_dir(ids_dir: PathLike, version: str) -> dict[str, Any]:
    """The tables of the released id lists ``{version}_artist_ids.txt`` / ``{version}_genre_ids.txt``."""
    _check_version(version)
    ids_dir = Path(ids_dir)
    return {
        "version": version,
        "artists": read_id_file(ids_dir / f"{version}_artist_ids.txt"),
        "genres": read_id_file(ids_dir / f"{version}_genre_ids.txt"),
        "lyrics": None,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LabelError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelError(f"{path} is not valid JSON: {e}") from None


def read_hf_vocab(path: PathLike, version: str | None = None) -> dict[str, Any]:
    """The tables of Hugging Face tokenizer files: a directory with ``artists.json``,
    ``genres.json``, ``lyrics.json`` (or one of those files), or a single JSON with
    ``artists``/``genres``/``lyrics`` dicts. Their tables hold both versions; ``version`` picks one
    (default: ``version[0]`` of the directory's ``tokenizer_config.json``, or the only version
    present)."""
    path = Path(path)
    if path.is_file() and path.name not in HF_FILES:
        data = _read_json(path)
        if not isinstance(data, dict):
            raise LabelError(f"{path} is not a vocabulary (expected a JSON object)")
        if not all(k in data for k in ("artists", "genres", "lyrics")):
            raise LabelError(f"{path} is not a vocabulary (no artists/genres/lyrics entries)")
        artists, genres, lyrics = data["artists"], data["genres"], data["lyrics"]
        config: Mapping[str, Any] = {}
    else:
        folder = path.parent if path.is_file() else path
        if not (folder / "artists.json").is_file():
            expected = "vocab.json or artists.json/genres.json/lyrics.json"
            raise LabelError(f"no vocabulary at {path} (expected {expected})")
        artists = _read_json(folder / "artists.json")
        genres = _read_json(folder / "genres.json")
        lyrics = _read_json(folder / "lyrics.json")
        config_file = folder / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
    return _hf_tables(artists, genres, lyrics, config, version, str(path))


def _hf_tables(
    artists: Any, genres: Any, lyrics: Any, config: Mapping[str, Any], version: str | None, where: str
) -> dict[str, Any]:
    for name, table in (("artists", artists), ("genres", genres), ("lyrics", lyrics)):
        if not isinstance(table, dict):
            raise LabelError(f"{where}: {name} must be a JSON object of name -> id")
    has_v2 = any(k.endswith(_HF_V2_SUFFIX) for k in artists)
    has_v3 = any(not k.endswith(_HF_V2_SUFFIX) for k in artists)
    if version is None:
        configured = config.get("version")
        if isinstance(configured, list) and configured:
            version = configured[0]
        elif has_v2 != has_v3:
            version = "v2" if has_v2 else "v3"
        else:
            raise LabelError(f"{where} holds v2 and v3 names: pass version='v2' or 'v3'")
    version = _check_version(version)

    def pick(table: Mapping[str, int]) -> dict[str, int]:
        # HF keeps v2 names (normalised) with a '.v2' suffix beside the plain v3 names.
        if version == "v2":
            return {k[: -len(_HF_V2_SUFFIX)]: int(i) for k, i in table.items() if k.endswith(_HF_V2_SUFFIX)}
        return {k: int(i) for k, i in table.items() if not k.endswith(_HF_V2_SUFFIX)}

    alphabet = None  # v2: HF replaces the lyric vocabulary by the built-in v2 alphabet too
    if version == "v3":
        by_id = {int(i): c for c, i in lyrics.items() if int(i) > 0}
        if sorted(by_id) != list(range(1, len(by_id) + 1)) or any(len(c) != 1 for c in by_id.values()):
            raise LabelError(f"{where}: lyrics must map single characters to ids 1..N")
        alphabet = "".join(by_id[i] for i in range(1, len(by_id) + 1))
    return {"version": version, "artists": pick(artists), "genres": pick(genres), "lyrics": alphabet}
