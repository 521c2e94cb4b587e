"""Lyric alignment from a lyrics prior's attention: the original ``jukebox/align.py:get_alignment``.

The top prior is run teacher-forced over the top-level codes, window by window (the sampling
windows: ``hop = int(hop_fraction * n_ctx)``). In every window the chosen layer's attention at the
chosen head, music queries x the ``n_tokens`` lyric slots of that window, is written into a
[top-level tokens, full lyric tokens] array at the lyric positions those slots hold. The lyric layer
is the 1b_lyrics style prime attention (lyric slot j then holds token j - 1: the input is shifted
by one, slot 0 is the start position) or the 5b_lyrics style encoder-decoder attention.

The original's quirks are kept, because users compare alignments with it:

- the array is assembled with one extra column that padding slots (index -1, lyrics shorter than
  ``n_tokens``) write into and that is dropped at the end, so their attention mass is lost;
- windows are written in reverse start order: where windows overlap the earliest one wins on its
  lyric columns;
- codes shorter than one window are padded with code 0 to ``n_ctx``, one window is run and the
  padded rows are cut (attention is causal: the kept rows do not depend on the padding).

``alignment.npz`` (``save_alignment``) holds one float32 array ``item_<i>`` per row.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .atomic import atomic_write
from .errors import SamplingError
from .labels import relevant_lyric_tokens, window_y
from .prior.prior import JukeboxPrior
from .sampling.song import LevelLabels
from .sampling.windows import get_starts

__all__ = [
    "ALIGNMENT_FILE",
    "alignment_settings",
    "get_alignment",
    "save_alignment",
    "load_alignment",
    "write_run_alignment",
    "run_align",
]

ALIGNMENT_FILE = "alignment.npz"
LYRIC_ATTENTION = ("prime", "cross")  # the layer types whose keys are the lyric tokens

PathLike = str | os.PathLike


@partial(jax.jit, static_argnames=("module", "layer", "head"))
def _window_weights(module: JukeboxPrior, params: Any, tokens: Any, y: Any, layer: int, head: int) -> Any:
    """[B, n_ctx, n_tokens] float32: layer ``layer``'s softmax weights at ``head``, music x lyrics.

    Only that layer's weights leave the jitted function, so XLA drops the output head, the layers
    after it and every other layer's weights."""
    weights: Any = module.apply({"params": params}, tokens, y, None, method=JukeboxPrior.attention_weights)[1]
    return weights[layer][:, head].astype(jnp.float32)


def alignment_settings(config: Any, layer: int | None = None, head: int | None = None) -> tuple[int, int]:
    """(layer, head) to read, checked against a top prior's config (defaults: its
    ``alignment_layer`` / ``alignment_head``; for a config that names none, its last lyric layer
    and head 0)."""
    if config.lyrics == "none" or config.is_upsampler:
        raise SamplingError(f"the level-{config.level} prior is not conditioned on lyrics: nothing to align")
    layout = config.attention_layout
    lyric_layers = [i for i, kind in enumerate(layout) if kind in LYRIC_ATTENTION]
    if layer is None:
        layer = lyric_layers[-1] if config.alignment_layer is None else config.alignment_layer
    if head is None:
        head = 0 if config.alignment_head is None else config.alignment_head
    layer, head = int(layer), int(head)
    if layer not in lyric_layers:
        raise SamplingError(f"layer {layer} does not attend to the lyrics; lyric layers: {lyric_layers}")
    if not 0 <= head < config.heads:
        raise SamplingError(f"head must be in 0..{config.heads - 1}, got {head}")
    return layer, head


def _top_hop_fraction(config: Any, hop_fraction: float | Sequence[float]) -> float:
    if isinstance(hop_fraction, (int, float)):
        return float(hop_fraction)
    fractions = list(hop_fraction)
    if config.level >= len(fractions):
        raise SamplingError(f"hop_fraction has {len(fractions)} values; level {config.level} needs its own")
    return float(fractions[config.level])


def get_alignment(
    prior: Any,
    z: Any,
    labels: LevelLabels,
    hop_fraction: float | Sequence[float],
    layer: int | None = None,
    head: int | None = None,
    max_batch: int | None = None,
) -> list[np.ndarray]:
    """The original ``get_alignment``: per row float32 [T, len(full lyric tokens of the row)].

    ``prior``: a loaded top prior with lyrics (``load_prior``; ``scan_layers=False`` compiles
    faster). ``z``: its level's codes int [B, T]. ``labels``: the song's y [B, Y] (offset of token
    0) and every row's full lyric tokens. ``hop_fraction``: this level's (a float) or one per level,
    level 0 first (the original order). ``layer`` / ``head``: default the config's
    ``alignment_layer`` / ``alignment_head``. ``max_batch``: rows per prior call (default all).
    """
    c = prior.config
    layer, head = alignment_settings(c, layer, head)
    z = np.asarray(z)
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.integer):
        raise SamplingError(f"codes must be an integer array [batch, tokens], got {z.dtype} {list(z.shape)}")
    if labels.y is None:
        raise SamplingError("alignment needs the rows' labels (y)")
    y = np.asarray(labels.y)
    batch, total = z.shape
    full_tokens = [list(map(int, tokens)) for tokens in labels.full_tokens]
    if y.shape[0] != batch or len(full_tokens) != batch:
        raise SamplingError(f"{batch} rows of codes, {y.shape[0]} label rows, {len(full_tokens)} lyric lists")
    if total == 0:
        return [np.zeros((0, len(tokens)), np.float32) for tokens in full_tokens]
    padding = max(0, c.n_ctx - total)
    if padding:  # the original pads short codes with code 0 to one window and cuts the rows at the end
        z = np.concatenate([z, np.zeros((batch, padding), z.dtype)], axis=1)
    length = z.shape[1]
    hop = int(_top_hop_fraction(c, hop_fraction) * c.n_ctx)
    if hop < 1:
        raise SamplingError(f"hop_fraction gives a hop of {hop} tokens; it must be at least 1 / n_ctx")
    starts = get_starts(length, c.n_ctx, hop)
    rows = batch if max_batch is None else max(1, int(max_batch))

    hops: dict[int, Any] = {}
    indices: dict[int, list[list[int]]] = {}
    for start in starts:
        wy = window_y(y, full_tokens, c.n_tokens, start, c.hop_length, c.sample_length)
        # the lyric positions each slot of this window's y holds (-1: padding), as the original get_y
        indices[start] = [
            relevant_lyric_tokens(tokens, c.n_tokens, int(r[0]), int(r[1]), int(r[2]), float32=True)[1]
            for r, tokens in zip(wy, full_tokens)
        ]
        tokens = z[:, start : start + c.n_ctx].astype(np.int32)
        _, wy, _ = prior.check_inputs(tokens, wy, None)
        parts = [
            _window_weights(prior.module, prior.params, tokens[lo : lo + rows], wy[lo : lo + rows], layer, head)
            for lo in range(0, batch, rows)
        ]
        hops[start] = parts  # device arrays: fetched once, after every window is queued
    fetched = {start: np.concatenate([np.asarray(p) for p in parts]) for start, parts in jax.device_get(hops).items()}

    alignments = []
    for item, tokens in enumerate(full_tokens):
        out = np.zeros((length, len(tokens) + 1), np.float32)  # + 1: where the padding slots (-1) write
        for start in reversed(starts):
            out[start : start + c.n_ctx, indices[start][item]] = fetched[start][item]
        alignments.append(out[: length - padding, :-1])
    return alignments


def save_alignment(run_dir: PathLike, arrays: Sequence[np.ndarray]) -> Path:
    """Write ``run_dir/alignment.npz`` (``item_<i>``: float32 [tokens, lyric tokens]) atomically."""
    path = Path(run_dir) / ALIGNMENT_FILE
    buf = io.BytesIO()
    items: dict[str, Any] = {f"item_{i}": np.asarray(a, np.float32) for i, a in enumerate(arrays)}
    np.savez(buf, **items)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def load_alignment(run_dir: PathLike) -> list[np.ndarray] | None:
    """The rows of ``run_dir/alignment.npz`` in order, or None when the run has none."""
    path = Path(run_dir) / ALIGNMENT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        items = sorted((int(k.split("_", 1)[1]), k) for k in f.files if k.startswith("item_"))
        return [np.asarray(f[k], np.float32) for _, k in items]


def write_run_alignment(
    run_dir: PathLike,
    prior: Any,
    z: Any,
    labels: LevelLabels | None,
    hop_fraction: float | Sequence[float],
    layer: int | None = None,
    head: int | None = None,
) -> Path | None:
    """``get_alignment`` + ``save_alignment`` for a run after its top level is sampled; does
    nothing (returns None) when the prior has no lyrics or the run no labels."""
    c = prior.config
    if c.lyrics == "none" or c.is_upsampler or labels is None or labels.y is None:
        return None
    return save_alignment(run_dir, get_alignment(prior, z, labels, hop_fraction, layer, head))


def run_align(args: Any) -> Path:
    """``jukebox-flax align SRC [--model DIR] [--layer L] [--head H] [--hop-fraction F F F] [--out DIR]``:
    the alignment of SRC's top-level codes, written to ``DIR/alignment.npz`` (default: SRC's run)."""
    from .prior.api import load_prior
    from .sampling.sources import level_labels, load_source

    source = load_source(args.src, getattr(args, "model", None))
    top = len(source.config.priors) - 1
    config = source.config.priors[top]
    layer, head = alignment_settings(config, args.layer, args.head)  # before any model is loaded
    hop_fraction = tuple(args.hop_fraction) if args.hop_fraction else tuple(source.hop_fraction)
    if len(hop_fraction) != len(source.config.priors):
        raise SamplingError(f"give one --hop-fraction per level ({len(source.config.priors)}), got {len(hop_fraction)}")
    z = source.zs[top]
    if z.shape[1] == 0:
        raise SamplingError(f"{args.src} holds no top-level codes")
    labels = level_labels(source.config, source.model, source.metas, source.total_length, top)
    if labels is None:
        raise SamplingError(f"{args.src} has no labels for the top level")
    out = Path(args.out) if args.out else (source.path if source.path.is_dir() else source.path.parent)
    prior = load_prior(source.model, level=top, scan_layers=False)
    return save_alignment(out, get_alignment(prior, z, labels, hop_fraction, layer, head))
