"""``jukebox-flax info DIR``: what a model directory holds, read from its metadata (no weights are
loaded). The files are checked against the directory's ``checksums.json`` when it has one, and a
damaged directory (a missing ``_METADATA``, manifest or config) is an error, not an empty model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from .checkpoint import load_config, load_vocab, param_metadata, verify_checksums
from .config import JukeboxConfig, PriorConfig, VQVAEConfig
from .errors import CheckpointError

__all__ = ["describe", "param_summary"]


def param_summary(path: Any) -> tuple[int, int, dict[str, int]]:
    """(number of arrays, number of parameters, {dtype: parameters}) of a component directory."""
    meta = param_metadata(path)
    meta = getattr(meta, "tree", meta)
    leaves = jax.tree_util.tree_leaves(meta, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    dtypes: dict[str, int] = {}
    total = 0
    for leaf in leaves:
        n = int(np.prod(leaf.shape, dtype=np.int64))
        total += n
        name = np.dtype(leaf.dtype).name
        dtypes[name] = dtypes.get(name, 0) + n
    return len(leaves), total, dtypes


def _kind(config: Any) -> str:
    if isinstance(config, VQVAEConfig):
        return f"VQ-VAE ({config.levels} levels, hops {', '.join(map(str, config.hop_lengths))}, {config.l_bins} codes)"
    if isinstance(config, PriorConfig):
        role = "upsampler" if config.is_upsampler else "top prior"
        lyrics = {"none": "no lyrics", "single": "lyrics in one encoder-decoder", "separate": "separate lyric encoder"}[
            config.lyrics
        ]
        return (
            f"prior level {config.level} ({role}, width {config.width}, {config.depth} layers, "
            f"{config.heads} heads, n_ctx {config.n_ctx}, {lyrics})"
        )
    return type(config).__name__


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n:,} ({n / size:.2f} {unit})"
    return f"{n:,}"


def _vocab_line(vocab: Any) -> str:
    if not vocab:
        return "vocab: none (pass --ids or --vocab to convert)"
    lyrics = vocab.get("lyrics", [])
    return (
        f"vocab: {vocab.get('version', '?')}, {len(vocab.get('artists', {}))} artists, "
        f"{len(vocab.get('genres', {}))} genres, {len(lyrics)} lyric characters"
    )


def _component_lines(path: Path, config: Any, indent: str = "") -> tuple[list[str], int]:
    verify_checksums(path)
    arrays, total, dtypes = param_summary(path)
    dtype_text = ", ".join(f"{name} {n / total:.0%}" if len(dtypes) > 1 else name for name, n in dtypes.items())
    lines = [
        f"{indent}{_kind(config)}",
        f"{indent}  parameters: {_count(total)} in {arrays} arrays, dtype {dtype_text or '-'}",
    ]
    if isinstance(config, PriorConfig):
        lines.append(f"{indent}  {_vocab_line(load_vocab(path))}")
    return lines, total


def describe(path: Any) -> str:
    """A few lines: kind, parameter count, dtype and vocabulary of a model directory."""
    path = Path(path)
    config = load_config(path)
    if not isinstance(config, JukeboxConfig):
        lines, _ = _component_lines(path, config)
        return "\n".join([f"{path}: one component"] + ["  " + line for line in lines])
    verify_checksums(path)
    lines = [f"{path}: whole Jukebox model"]
    grand = 0
    names = ["vqvae"] + [f"prior_level_{p.level}" for p in config.priors]
    for name, component in zip(names, (config.vqvae,) + tuple(config.priors)):
        if not (path / name / "config.json").is_file():
            raise CheckpointError(f"{path / name} is missing or damaged (no config.json)")
        sub, total = _component_lines(path / name, component, "    ")
        grand += total
        lines += [f"  {name}/"] + sub
    lines.append(f"  total parameters: {_count(grand)}")
    lines.append(f"  {_vocab_line(load_vocab(path))}")
    return "\n".join(lines)
