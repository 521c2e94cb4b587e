"""Where a derived run (``continue``, ``upsample``, ``align``) starts from: an earlier run's codes and labels.

``load_source`` reads one of our run directories (``run.json`` + ``codes/``), a ``codes.npz``
(``jukebox-flax encode`` or a run's final codes), or a ``data.pth.tar`` of the original
``sample.py`` (read by the converter's pickle allow-list, imported only then), and checks it
against the model it will be sampled with. ``level_labels`` rebuilds a level's labels for the rows
from their metas (artist, genre, lyrics, and optionally their own ``total_length`` / ``offset`` in
samples, as the original's ``metas`` list), exactly as the original ``get_batch_labels``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import component_dir, load_config, load_vocab
from ..config import JukeboxConfig
from ..labels import Labeller
from .errors import SamplingError
from .song import LevelLabels

__all__ = [
    "RunSource",
    "load_source",
    "level_labels",
    "read_metas",
    "default_total_length",
    "DEFAULT_TOTAL_SECONDS",
]

PathLike = str | os.PathLike

DEFAULT_TOTAL_SECONDS = 240  # the original hparams' total_sample_length_in_seconds


@dataclass
class RunSource:
    """Codes and labels of an earlier run, checked against ``config``.

    ``zs``: int32 [B, T_l] per level (level 0 first; [B, 0] where the source has none). ``metas``:
    per row ``artist`` / ``genre`` / ``lyrics`` (plus ``total_length`` / ``offset`` in samples when a
    row's differ from the run's). ``total_length``: the song length (samples) the labels assume.
    ``record``: the source's ``run.json`` (or, for an original file, its ``sampling_kwargs``).
    """

    path: Path
    kind: str  # 'run' | 'codes' | 'original'
    model: Path
    config: JukeboxConfig
    zs: list[np.ndarray]
    metas: list[dict]
    total_length: int
    hop_fraction: tuple[float, ...]
    record: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.zs[0].shape[0])

    @property
    def top_tokens(self) -> int:
        return int(self.zs[-1].shape[1])

    @property
    def sampled_levels(self) -> list[int]:
        """Levels that hold codes (from the lowest such level up to the top)."""
        have = [level for level, z in enumerate(self.zs) if z.shape[1]]
        return list(range(min(have), len(self.zs))) if have else []

    def select(self, rows: Sequence[int]) -> RunSource:
        """The source restricted to ``rows`` (in that order; repeats allowed)."""
        rows = list(rows)
        for r in rows:
            if not 0 <= r < self.batch:
                raise SamplingError(f"row {r} is out of range: {self.path} holds rows 0..{self.batch - 1}")
        return replace(self, zs=[z[rows] for z in self.zs], metas=[dict(self.metas[r]) for r in rows])


# ----------------------------------------------------------------------------------------------
# Labels


def default_total_length(config: JukeboxConfig, sample_length: int) -> int:
    """The song length (samples) the labels assume when none is given, as the original: 240 s (its
    hparams' ``total_sample_length_in_seconds``) when the top prior's timing signal covers it; for a
    model trained on shorter songs the longer of its ``min_duration`` and the sampled length."""
    top = config.priors[-1]
    sr = config.vqvae.sr
    default = DEFAULT_TOTAL_SECONDS * sr
    if top.has_timing and top.max_duration is not None and default >= top.max_duration * sr:
        default = max(math.ceil((top.min_duration or 0.0) * sr), sample_length)
    return max(default, sample_length)


def read_metas(path: PathLike) -> list[dict]:
    """Rows of a ``--metas`` file: a JSON list, or JSON lines, of {artist, genre, lyrics} objects
    (``lyrics`` may be ``@FILE``; ``total_length`` / ``offset`` in samples are optional)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SamplingError(f"cannot read --metas file {path}: {e}") from None
    try:
        stripped = text.strip()
        rows = (
            json.loads(stripped)
            if stripped.startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except ValueError as e:
        raise SamplingError(f"--metas file {path} is neither a JSON list nor JSON lines ({e})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise SamplingError(f"--metas file {path} must hold at least one {{artist, genre, lyrics}} object")
    known = {"artist", "genre", "lyrics", "total_length", "offset"}
    metas = []
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise SamplingError(f"--metas row {i} has unknown keys {unknown} (known: {sorted(known)})")
        meta: dict[str, Any] = {
            "artist": str(row.get("artist", "unknown")),
            "genre": str(row.get("genre", "unknown")),
            "lyrics": _lyrics_text(str(row.get("lyrics", "") or ""), path.parent),
        }
        for key in ("total_length", "offset"):
            if key in row:
                if not isinstance(row[key], int) or isinstance(row[key], bool):
                    raise SamplingError(f"--metas row {i}: {key} must be an integer number of samples")
                meta[key] = int(row[key])
        metas.append(meta)
    return metas


def _lyrics_text(text: str, base: Path) -> str:
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SamplingError(f"cannot read lyrics file {path}: {e}") from None


def _labeller(config: JukeboxConfig, model_dir: PathLike, level: int) -> Labeller:
    prior = config.priors[level]
    sub = component_dir(model_dir, f"prior_level_{level}")
    vocab = load_vocab(sub) or load_vocab(model_dir)
    if vocab is None:
        raise SamplingError(f"{sub} has no vocab.json (artist/genre names): convert the model with --ids or --vocab")
    return Labeller.from_vocab_dict(vocab).for_config(prior)


def level_labels(
    config: JukeboxConfig, model_dir: PathLike, metas: Sequence[Mapping[str, Any]], total_length: int, level: int
) -> LevelLabels | None:
    """The song's labels at ``level`` for these rows (None for a prior without labels).

    Each row: its artist, genre and lyrics (lyrics only for a prior with lyrics, as the original's
    upsamplers ignore them), at ``total_length`` samples and offset 0 unless the row says otherwise.
    Lyric characters the model cannot write are an error, not silently dropped.
    """
    prior = config.priors[level]
    if not prior.labels:
        return None
    labeller = _labeller(config, model_dir, level)
    ys, full = [], []
    for meta in metas:
        lyrics = str(meta.get("lyrics", "") or "") if prior.lyrics != "none" else ""
        if lyrics:
            dropped = labeller.check_lyrics(lyrics)
            if dropped:
                shown = " ".join(repr(c) for c in dropped[:10])
                raise SamplingError(
                    f"the lyrics contain characters this model cannot write: {shown} (it knows {labeller.alphabet!r})"
                )
        label = labeller.get_label(
            str(meta.get("artist", "unknown")),
            str(meta.get("genre", "unknown")),
            lyrics,
            int(meta.get("total_length", total_length)),
            int(meta.get("offset", 0)),
        )
        ys.append(label.y)
        full.append(list(label.full_tokens))
    return LevelLabels(y=np.stack(ys), full_tokens=full)


# ----------------------------------------------------------------------------------------------
# Sources


def _whole_model(path: Path) -> JukeboxConfig:
    config = load_config(path)
    if not isinstance(config, JukeboxConfig):
        raise SamplingError(f"{path} holds a single {type(config).__name__}; sampling needs a whole model")
    return config


def _resolve_model(src: Path, recorded: str | None, model: PathLike | None) -> tuple[Path, JukeboxConfig]:
    """The model to sample with: ``model`` if given (it must match the recorded one), else the recorded."""
    if model is None:
        if recorded is None:
            raise SamplingError(f"{src} does not say which model made it: pass --model DIR")
        path = Path(recorded)
        if not path.is_dir():
            raise SamplingError(f"{src} was sampled with {path}, which is gone: pass --model DIR")
        return path, _whole_model(path)
    path = Path(model)
    config = _whole_model(path)
    if recorded is not None and Path(recorded).resolve() != path.resolve():
        try:
            theirs = _whole_model(Path(recorded))
        except Exception:
            theirs = None  # the recorded model is gone: the codes and labels are checked instead
        if theirs is not None and theirs != config:
            raise SamplingError(f"{src} was sampled with {recorded}, a different model from --model {path}")
    return path, config


def _check_codes(src: Path, zs: list[np.ndarray], config: JukeboxConfig) -> list[np.ndarray]:
    n_levels = len(config.priors)
    if len(zs) != n_levels:
        raise SamplingError(f"{src} holds codes for {len(zs)} levels; the model has {n_levels}")
    rows = {z.shape[0] for z in zs}
    if len(rows) != 1:
        raise SamplingError(f"{src} holds different numbers of rows per level: {[z.shape[0] for z in zs]}")
    hops = config.vqvae.hop_lengths
    bins = config.vqvae.l_bins
    out = []
    for level, z in enumerate(zs):
        if z.ndim != 2 or not np.issubdtype(z.dtype, np.integer):
            raise SamplingError(f"{src}: level {level} codes must be integer [batch, tokens], got {z.dtype} {z.shape}")
        if z.size and (z.min() < 0 or z.max() >= bins):
            raise SamplingError(
                f"{src}: level {level} codes lie in {z.min()}..{z.max()}, outside this model's codebook (0..{bins - 1})"
            )
        out.append(z.astype(np.int32))
    top = out[-1].shape[1] * hops[-1]
    for level, z in enumerate(out[:-1]):
        if z.shape[1] * hops[level] > top:
            raise SamplingError(
                f"{src}: level {level} holds {z.shape[1]} codes, more than the top level's {out[-1].shape[1]} cover"
            )
    return out


def _run_dir_source(path: Path, model: PathLike | None) -> RunSource:
    try:
        record = json.loads((path / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise SamplingError(f"{path / 'run.json'} is unreadable ({e})") from None
    model_path, config = _resolve_model(path, record.get("model"), model)
    n = len(config.priors)
    codes = path / "codes"
    if (path / "codes.npz").is_file():
        zs = _npz_codes(path / "codes.npz", n)
    else:
        files = [codes / f"level_{level}.npy" for level in range(n)]
        batch = int(record.get("batch", 1))
        zs = [np.load(f, allow_pickle=False) if f.is_file() else np.zeros((batch, 0), np.int32) for f in files]
    zs = _check_codes(path, zs, config)
    batch = zs[0].shape[0]
    metas = record.get("metas") or [
        {
            "artist": record.get("artist", "unknown"),
            "genre": record.get("genre", "unknown"),
            "lyrics": record.get("lyrics", ""),
        }
    ]
    metas = [dict(metas[i % len(metas)]) for i in range(batch)]
    sample_length = zs[-1].shape[1] * config.vqvae.hop_lengths[-1]
    total = int(record.get("total_length") or default_total_length(config, sample_length))
    hop = tuple(float(h) for h in (record.get("hop_fraction") or config.hop_fraction))
    return RunSource(path, "run", model_path, config, zs, metas, total, hop, record)


def _npz_codes(path: Path, n_levels: int) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise SamplingError(f"{path} is not a codes .npz ({e})") from None
    found = [k for k in arrays if k.startswith("level_")]
    if not found:
        raise SamplingError(f"{path} holds no level_L code arrays")
    batch = arrays[found[0]].shape[0] if arrays[found[0]].ndim else 0
    return [arrays.get(f"level_{level}", np.zeros((batch, 0), np.int32)) for level in range(n_levels)]


def _codes_source(path: Path, model: PathLike | None) -> RunSource:
    if (path.parent / "run.json").is_file():
        source = _run_dir_source(path.parent, model)
        zs = _check_codes(path, _npz_codes(path, len(source.config.priors)), source.config)
        return replace(source, path=path, kind="codes", zs=zs)
    if model is None:
        raise SamplingError(f"{path} has no run.json beside it to say which model made it: pass --model DIR")
    model_path, config = _resolve_model(path, None, model)
    zs = _check_codes(path, _npz_codes(path, len(config.priors)), config)
    batch = zs[0].shape[0]
    metas = [{"artist": "unknown", "genre": "unknown", "lyrics": ""} for _ in range(batch)]
    total = default_total_length(config, zs[-1].shape[1] * config.vqvae.hop_lengths[-1])
    return RunSource(path, "codes", model_path, config, zs, metas, total, tuple(config.hop_fraction), {})


def _original_source(path: Path, model: PathLike | None) -> RunSource:
    from jukebox_flax_convert.original_run import load_original_run  # torch stays inside the converter

    if model is None:
        raise SamplingError(f"{path} is a run of the original sample.py: pass --model DIR (the converted model)")
    data = load_original_run(path)
    model_path, config = _resolve_model(path, None, model)
    zs = _check_codes(path, data["zs"], config)
    batch = zs[0].shape[0]
    labels = data["labels"]
    for level, label in enumerate(labels):
        want = config.priors[level].y_length
        if label["y"].shape[1] != want:
            raise SamplingError(
                f"{path}: level {level} labels have {label['y'].shape[1]} entries, --model {model_path} takes {want}: "
                "another model made this run"
            )
    # The highest labelled level's info holds the names and the lyrics as that model cleaned them;
    # its y the lengths in samples (a level without labels has info "n/a" and an empty y).
    labelled = [label for label in labels if label["y"].shape[1]]
    info = (labelled or labels)[-1]["info"]
    y = labelled[-1]["y"] if labelled else None
    metas = []
    for row in range(batch):
        meta: dict[str, Any] = {k: str(info[row].get(k, "unknown")) for k in ("artist", "genre")}
        meta["lyrics"] = str(info[row].get("lyrics", "") or "")
        if y is not None:
            meta["total_length"], meta["offset"] = int(y[row, 0]), int(y[row, 1])
        metas.append(meta)
    sample_length = zs[-1].shape[1] * config.vqvae.hop_lengths[-1]
    total = metas[0].get("total_length", default_total_length(config, sample_length)) if metas else 0
    if all(m.get("total_length") == total for m in metas):
        for m in metas:
            m.pop("total_length", None)
    if all(m.get("offset", 0) == 0 for m in metas):
        for m in metas:
            m.pop("offset", None)
    source = RunSource(
        path,
        "original",
        model_path,
        config,
        zs,
        metas,
        int(total),
        tuple(config.hop_fraction),
        {"sampling_kwargs": data["sampling_kwargs"]},
    )
    _check_original_labels(source, labels)
    return source


def _check_original_labels(source: RunSource, labels: list[dict]) -> None:
    """The labels rebuilt from the file's metas must be the file's own ``y`` (else the model's
    vocabulary is not the one that made the run)."""
    for level, label in enumerate(labels):
        ours = level_labels(source.config, source.model, source.metas, source.total_length, level)
        theirs = label["y"]
        if ours is None or ours.y is None or not theirs.shape[1]:
            continue
        if ours.y.shape != theirs.shape or not np.array_equal(ours.y, theirs):
            raise SamplingError(
                f"{source.path}: the level-{level} labels rebuilt with {source.model}'s vocabulary differ from the "
                "file's: another model made this run"
            )


def load_source(src: PathLike, model: PathLike | None = None) -> RunSource:
    """Read ``src`` (a run directory, a codes ``.npz`` or an original ``data.pth.tar``) for sampling
    with ``model`` (default: the model the run recorded; required for the other two without one)."""
    path = Path(src)
    if not path.exists():
        raise SamplingError(f"{path} does not exist")
    if path.is_dir():
        if not (path / "run.json").is_file():
            raise SamplingError(f"{path} is not a sampling run (no run.json)")
        return _run_dir_source(path, model)
    if path.suffix == ".npz":
        return _codes_source(path, model)
    return _original_source(path, model)
