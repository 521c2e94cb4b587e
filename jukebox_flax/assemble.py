"""A whole model from parts: ``jukebox-flax assemble --vqvae DIR --prior-level-L DIR ... OUT``.

The parts are component directories (the ``RUN/model`` of ``train vqvae`` / ``train prior``) or
the components of other whole models. Before anything is written they are checked against each
other: every prior's downsampling (``downs_t`` / ``strides_t``), codebook size and sample rate must
be the VQ-VAE's, prior ``L`` must hold level ``L``, an upsampler's window must be a whole number
of tokens of the level above, and a prior with labels needs its vocabulary, whose ids must fit
its embedding tables.

Vocabulary merge (openai/jukebox #227): a top prior fine-tuned on new artists or genres, put over
the released upsamplers, knows names the upsamplers do not. Each such name is added to that
upsampler's stored ``vocab.json`` with the upsampler's ``unknown`` id (what the original gives an
unknown name), so sampling with the new artist labels every level with no special case.

The components' files are copied byte for byte (verified against their checksums first); the
merged vocabularies and the new ``config.json`` are written and every checksum list rebuilt, all
in a temporary directory renamed into place (``atomic_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_dir
from .checkpoint import (
    CONFIG_FILE,
    PARAMS_DIR,
    VOCAB_FILE,
    check_replaceable,
    component_dir,
    load_config,
    load_vocab,
    verify_checksums,
    write_checksums,
)
from .config import JukeboxConfig, PriorConfig, VQVAEConfig, vqvae_mismatch
from .errors import CheckpointError, ConfigError
from .labels import UNKNOWN, artist_key, genre_keys

__all__ = ["Part", "assemble", "plan_assembly", "merge_vocab", "assembly_bytes"]

PathLike = str | os.PathLike
# Orbax's commit marker records the writing machine's temporary path: not copied.
_SKIPPED = frozenset({"commit_success.txt"})


@dataclass(frozen=True)
class Part:
    """One component to copy: its directory, config and (priors) the vocabulary it is stored with."""

    name: str
    source: Path
    config: Any
    vocab: dict | None


def _component(path: PathLike, name: str) -> tuple[Path, Any, dict | None]:
    given = Path(path)
    sub = component_dir(given, name)  # a component's own directory, or the one inside a whole model
    verify_checksums(sub)
    vocab = load_vocab(sub)
    if vocab is None and sub != given:
        vocab = load_vocab(given)  # older whole models keep the top prior's vocab only at the top
    return sub, load_config(sub), vocab


def _check_prior(level: int, path: PathLike, config: Any, vq: VQVAEConfig, vocab: dict | None) -> None:
    flag = f"--prior-level-{level}"
    if not isinstance(config, PriorConfig):
        raise ConfigError(f"{flag} {path} holds a {type(config).__name__}, not a prior")
    if config.level != level:
        raise ConfigError(f"{flag} {path} holds the level-{config.level} prior, not level {level}")
    mismatch = vqvae_mismatch(config, vq)
    if mismatch:
        raise ConfigError(f"{flag} {path} {mismatch}")
    if config.is_upsampler and config.n_ctx % config.cond_downsample:
        raise ConfigError(
            f"{flag} {path}: n_ctx {config.n_ctx} is not a whole number of level-{level + 1} tokens "
            f"({config.cond_downsample} level-{level} tokens each)"
        )
    if not config.labels:
        return
    if vocab is None:
        raise ConfigError(f"{flag} {path} takes labels but has no vocab.json (artist and genre names)")
    if vocab.get("version") != config.labeller_version:
        raise ConfigError(
            f"{flag} {path} uses {config.labeller_version} labels, its vocab.json is {vocab.get('version')}"
        )
    for table, bins in (("artists", config.artist_bins), ("genres", config.genre_bins)):
        ids = [int(i) for i in vocab.get(table, {}).values()]
        if ids and max(ids) >= bins:
            raise ConfigError(f"{flag} {path}: its vocab.json has {table[:-1]} id {max(ids)}, the prior takes {bins}")


def merge_vocab(top: Mapping[str, Any], lower: Mapping[str, Any]) -> tuple[dict, list[str], list[str]]:
    """``lower`` (an upsampler's vocab dict) with every artist / genre name of ``top`` it lacks
    added under ``lower``'s ``unknown`` id; returns (merged, added artists, added genre words).

    Names are looked up as the upsampler's labeller will look them up (its label version's
    normalisation), so a name typed for the top prior finds its alias at every level.
    """
    version = str(lower["version"])
    merged = dict(lower)
    added: dict[str, list[str]] = {"artists": [], "genres": []}
    for table, keys_of in (
        ("artists", lambda name: [artist_key(name, version)]),
        ("genres", lambda name: genre_keys(name, version)),
    ):
        names = dict(lower[table])
        unknown = int(names.get(UNKNOWN, 0))
        for name in top[table]:
            for key in keys_of(str(name)):
                if key and key not in names:
                    names[key] = unknown
                    added[table].append(key)
        merged[table] = names
    return merged, added["artists"], added["genres"]


def plan_assembly(vqvae: PathLike, priors: Sequence[PathLike]) -> tuple[JukeboxConfig, list[Part], list[str]]:
    """The checked whole-model config, the parts to copy (vocabularies merged) and the notes to
    print about merged names; raises ConfigError / CheckpointError on an inconsistency."""
    vq_dir, vq_config, _ = _component(vqvae, "vqvae")
    if not isinstance(vq_config, VQVAEConfig):
        raise ConfigError(f"--vqvae {vqvae} holds a {type(vq_config).__name__}, not a VQ-VAE")
    if len(priors) != vq_config.levels:
        raise ConfigError(
            f"the VQ-VAE has {vq_config.levels} levels: give one prior per level "
            f"(--prior-level-0 .. --prior-level-{vq_config.levels - 1}), got {len(priors)}"
        )
    parts = [Part("vqvae", vq_dir, vq_config, None)]
    for level, path in enumerate(priors):
        sub, config, vocab = _component(path, f"prior_level_{level}")
        _check_prior(level, path, config, vq_config, vocab)
        parts.append(Part(f"prior_level_{level}", sub, config, vocab))
    top = parts[-1]
    notes: list[str] = []
    if top.config.labels and top.vocab is not None:
        new_artists: dict[str, None] = {}
        new_genres: dict[str, None] = {}
        for i, part in enumerate(parts[1:-1], 1):
            if part.config.labels and part.vocab is not None:
                merged, artists, genres = merge_vocab(top.vocab, part.vocab)
                parts[i] = Part(part.name, part.source, part.config, merged)
                new_artists.update(dict.fromkeys(artists))
                new_genres.update(dict.fromkeys(genres))
        notes += [f"artist {a!r} is not in the upsamplers' vocabulary: they get 'unknown'" for a in new_artists]
        notes += [f"genre {g!r} is not in the upsamplers' vocabulary: they get 'unknown'" for g in new_genres]
    try:
        whole = JukeboxConfig(vqvae=vq_config, priors=tuple(p.config for p in parts[1:]))
    except ConfigError as e:
        raise ConfigError(f"the parts do not make a whole model: {e}") from None
    return whole, parts, notes


def _files(part: Part) -> list[Path]:
    """The component's files to copy: params/ and config.json (vocab.json and checksums are rewritten)."""
    files = [part.source / CONFIG_FILE]
    for file in sorted((part.source / PARAMS_DIR).rglob("*")):
        if file.is_symlink():
            raise CheckpointError(f"{file} is a symlink; a model directory holds only plain files")
        if file.is_file() and file.name not in _SKIPPED:
            files.append(file)
    return files


def _vocab_text(vocab: Mapping[str, Any]) -> str:
    return json.dumps(vocab, indent=1)


def assembly_bytes(config: JukeboxConfig, parts: Sequence[Part]) -> int:
    """Bytes the assembled directory will take, without the small checksum lists."""
    total = len(config.to_json().encode())
    for part in parts:
        total += sum(f.stat().st_size for f in _files(part))
        if part.vocab is not None:
            total += len(_vocab_text(part.vocab).encode())
    top = parts[-1].vocab
    return total + (len(_vocab_text(top).encode()) if top is not None else 0)


def assemble(
    out: PathLike,
    vqvae: PathLike,
    priors: Sequence[PathLike],
    *,
    hop_fraction: Sequence[float] | None = None,
    overwrite: bool = False,
    check: Callable[[JukeboxConfig, list[Part]], None] | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Write the whole model of ``vqvae`` and ``priors`` (level 0 first) into ``out``; see the
    module docstring. ``hop_fraction``: the sampling windows' (default the released values).
    ``check(config, parts)`` (optional) runs after the consistency checks and before anything is
    written (e.g. a size budget). ``out`` is replaced only with ``overwrite`` and only if it is a
    model directory jukebox-flax wrote (never one that holds a part)."""
    out = Path(out).absolute()
    whole, parts, notes = plan_assembly(vqvae, priors)
    if hop_fraction is not None:
        try:
            whole = JukeboxConfig(vqvae=whole.vqvae, priors=whole.priors, hop_fraction=tuple(hop_fraction))
        except ConfigError as e:
            raise ConfigError(f"--hop-fraction: {e}") from None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
        check_replaceable(out, protect=tuple(p.source for p in parts))
    if check is not None:
        check(whole, parts)
    for note in notes:
        echo(note)
    with atomic_dir(out) as tmp:
        for part in parts:
            dst = tmp / part.name
            for file in _files(part):
                target = dst / file.relative_to(part.source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target, follow_symlinks=False)
            if part.vocab is not None:
                (dst / VOCAB_FILE).write_text(_vocab_text(part.vocab), encoding="utf-8")
            write_checksums(dst)
        (tmp / CONFIG_FILE).write_text(whole.to_json(), encoding="utf-8")
        if parts[-1].vocab is not None:
            (tmp / VOCAB_FILE).write_text(_vocab_text(parts[-1].vocab), encoding="utf-8")
        write_checksums(tmp)
    return out
