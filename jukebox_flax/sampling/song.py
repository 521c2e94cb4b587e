"""A whole song: every level sampled window by window, top level first, as the original ``_sample``.

Levels go from the top (level 2) down. Each level samples ``sample_length // hop`` tokens in
windows (``windows.level_windows``): the top level from scratch (ancestral) or continuing existing
codes (primed), the upsamplers conditioned on the codes of the level above sliced per window. After a
level is complete it can be decoded to audio. Codes already present (a prompt's codes, a resumed
run's codes, saved top-level codes to upsample) are kept, and windows they cover are skipped.

Randomness: window ``start`` of level ``l`` uses ``fold_in(fold_in(key, l), start)`` (and each batch
row its own row key, see ``sampler``), so a run that is killed and resumed produces exactly the
codes of an uninterrupted run, whatever the batch split.

``RunDir`` keeps a run resumable: the codes of a level are written (atomically: temp file +
``os.replace``) after every window, next to a JSON of the run's arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..labels import window_y
from ..memory import pick_batch_chunk
from .errors import SamplingError
from .sampler import sample_window
from .windows import Window, level_windows, upper_codes

__all__ = [
    "LevelSettings",
    "LevelLabels",
    "window_key",
    "seed_key",
    "sample_level",
    "sample_song",
    "RunDir",
    "level_lengths",
    "rows_per_call",
]


@dataclass(frozen=True)
class LevelSettings:
    """How one level is sampled (the original's per-level ``sampling_kwargs``)."""

    temperature: float = 0.99
    top_k: int = 0
    top_p: float = 0.0
    chunk_size: int = 32  # prime positions per transformer call
    # rows sampled together (keys depend on the row, not the split); None: as many as the device's
    # memory holds (``memory.pick_batch_chunk``; all of them on a CPU)
    max_batch_size: int | None = None


@dataclass
class LevelLabels:
    """A level's labels: the song's y [B, Y] (offset of its first sample) and, for priors with
    lyrics, every row's full lyric tokens (the lyric window is re-selected per window)."""

    y: np.ndarray | None
    full_tokens: Sequence[Sequence[int]] = field(default_factory=list)


def seed_key(seed: int) -> jax.Array:
    """The run's key for an integer seed in 0..2**63-1.

    ``jax.random.key`` keeps only the low 32 bits of a seed (with 64-bit types off), so seeds that
    differ above them would give the same music; the high 32 bits are folded in when non-zero, which
    keeps every seed below 2**32 on exactly the key it always had.
    """
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise SamplingError(f"seed must be an integer in 0..2**63-1, got {seed}")
    key = jax.random.key(seed & 0xFFFFFFFF)
    high = seed >> 32
    return jax.random.fold_in(key, high) if high else key


def window_key(key: jax.Array, level: int, start: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(key, level), start)


def level_lengths(sample_length: int, hop_lengths: Sequence[int]) -> list[int]:
    """Tokens per level for ``sample_length`` audio samples (must be a multiple of the top hop)."""
    top = hop_lengths[-1]
    if sample_length % top:
        raise SamplingError(f"sample_length {sample_length} is not a multiple of the top level's hop ({top} samples)")
    return [sample_length // hop for hop in hop_lengths]


def rows_per_call(prior, batch: int, settings: LevelSettings) -> int:
    """Rows sampled together: ``settings.max_batch_size``, or the memory plan's pick when None
    (activations in the prior module's dtype; float32 params with half activations are the
    released fp16 mode, see ``precision.with_precision``)."""
    if settings.max_batch_size is not None:
        if settings.max_batch_size < 1:
            raise SamplingError(f"max_batch_size must be >= 1, got {settings.max_batch_size}")
        return settings.max_batch_size
    module = getattr(prior, "module", None)
    dtype = jnp.dtype(getattr(module, "dtype", jnp.float32))
    released = dtype != jnp.float32 and jnp.dtype(getattr(module, "param_dtype", dtype)) == jnp.float32
    return pick_batch_chunk(prior.config, batch, dtype, released, settings.chunk_size)


def _window_inputs(prior, zs: Sequence[np.ndarray], level: int, window: Window, labels: LevelLabels | None):
    c = prior.config
    z = zs[level]
    prime = z[:, window.start : window.start + window.n_prime]
    upper = None
    if c.is_upsampler:
        upper = upper_codes(zs[level + 1], window.start, c.n_ctx, c.cond_downsample)
    y = None
    if c.labels:
        if labels is None or labels.y is None:
            raise SamplingError(f"the level-{level} prior needs labels")
        n_tokens = c.n_tokens if c.lyrics != "none" else 0
        full = labels.full_tokens if n_tokens else [()] * len(labels.y)
        y = window_y(labels.y, full, n_tokens, window.start, c.hop_length, c.sample_length)
    return prime, upper, y


def sample_level(
    prior,
    zs: list[np.ndarray],
    level: int,
    total_tokens: int,
    hop_length: int,
    labels: LevelLabels | None,
    settings: LevelSettings,
    key: jax.Array,
    *,
    on_window: Callable[[int, Window, list], None] | None = None,
    progress: bool = False,
    sample_fn: Callable = sample_window,
) -> list[np.ndarray]:
    """Bring ``zs[level]`` to ``total_tokens`` tokens window by window; returns the updated ``zs``.

    ``zs``: int32 [B, T_l] codes per level (index = level; T_l may be 0). ``hop_length``: tokens a
    window advances (``int(hop_fraction * n_ctx)``). ``on_window(level, window, zs)`` runs after
    every window (to save progress). ``sample_fn`` is ``sampler.sample_window`` (replaceable in tests).
    """
    c = prior.config
    zs = list(zs)
    batch = zs[level].shape[0]
    windows = level_windows(total_tokens, zs[level].shape[1], c.n_ctx, hop_length)
    bar = _progress_bar(level, windows, progress)
    caches: dict[int, Any] = {}  # one KV cache per batch-part size, reused (donated) window after window
    rows = rows_per_call(prior, batch, settings) if batch else 1
    try:
        for i, window in enumerate(windows):
            prime, upper, y = _window_inputs(prior, zs, level, window, labels)
            wkey = window_key(key, level, window.start)
            parts = []
            for lo in range(0, batch, rows):
                hi = min(batch, lo + rows)
                out, caches[hi - lo] = sample_fn(
                    prior,
                    wkey,
                    window.n_new,
                    y=None if y is None else y[lo:hi],
                    upper=None if upper is None else upper[lo:hi],
                    prime=prime[lo:hi],
                    temperature=settings.temperature,
                    top_k=settings.top_k,
                    top_p=settings.top_p,
                    chunk_size=settings.chunk_size,
                    row_offset=lo,
                    batch=hi - lo,
                    cache=caches.pop(hi - lo, None),
                )
                parts.append(np.asarray(out)[:, -window.n_new :])
            zs[level] = np.concatenate([zs[level], np.concatenate(parts).astype(np.int32)], axis=1)
            if on_window is not None:
                on_window(level, window, zs)
            if bar is not None:
                bar.set_postfix_str(f"window {i + 1}/{len(windows)}", refresh=False)
                bar.update(window.n_new)
    finally:
        if bar is not None:
            bar.close()
    return zs


def _progress_bar(level: int, windows: Sequence[Window], enabled: bool):
    if not enabled or not windows:
        return None

    return tqdm(
        total=sum(w.n_new for w in windows),
        desc=f"level {level}",
        unit="tok",
        dynamic_ncols=True,
        postfix=f"window 0/{len(windows)}",
    )


def sample_song(
    priors: Mapping[int, Any],
    zs: list[np.ndarray],
    levels: Sequence[int],
    sample_length: int,
    labels: Mapping[int, LevelLabels | None],
    settings: Mapping[int, LevelSettings],
    key: jax.Array,
    hop_fraction: Sequence[float],
    *,
    decode: Callable[[list, int], Any] | None = None,
    on_window: Callable[[int, Window, list], None] | None = None,
    on_level: Callable[[int, list, Any], None] | None = None,
    progress: bool = False,
    sample_fn: Callable = sample_window,
) -> list[np.ndarray]:
    """Sample ``levels`` (top first) of a song of ``sample_length`` audio samples; returns ``zs``.

    Ancestral: ``zs`` all empty. Primed / continued: ``zs`` holds the codes of the prompt at every
    level. Upsampling alone: ``levels = [0, 1]`` and ``zs[2]`` the saved top-level codes.
    ``decode(zs[level:], level)`` (optional) gives a level's audio, passed to ``on_level(level, zs, audio)``.
    """
    zs = [np.asarray(z, np.int32) for z in zs]
    for level in sorted(levels, reverse=True):
        prior = priors[level]
        c = prior.config
        if sample_length % c.hop_length:
            raise SamplingError(
                f"sample_length {sample_length} is not a multiple of level {level}'s hop {c.hop_length}"
            )
        total = sample_length // c.hop_length
        if c.is_upsampler and zs[level + 1].shape[1] * c.cond_downsample < total:
            raise SamplingError(
                f"level {level + 1} has {zs[level + 1].shape[1]} codes, too few to upsample "
                f"{sample_length} samples: sample it first"
            )
        if c.is_upsampler and total < c.n_ctx:
            raise SamplingError(
                f"upsampling needs at least one window of level {level} "
                f"({c.n_ctx * c.hop_length} samples); got {sample_length}"
            )
        hop = int(hop_fraction[level] * c.n_ctx)
        zs = sample_level(
            prior,
            zs,
            level,
            total,
            hop,
            labels.get(level),
            settings[level],
            key,
            on_window=on_window,
            progress=progress,
            sample_fn=sample_fn,
        )
        if decode is not None or on_level is not None:
            audio = decode(zs[level:], level) if decode is not None else None
            if on_level is not None:
                on_level(level, zs, audio)
        del prior  # so that a mapping loading one level at a time can free it before the next
    return zs


# ----------------------------------------------------------------------------------------------
# A resumable run directory


class RunDir:
    """A sampling run's output directory: ``run.json`` (the arguments), ``codes/level_{l}.npy``
    (saved after every window), ``level_{l}/item_{b}.wav`` (audio per level and sample)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    def code_file(self, level: int) -> Path:
        return self.path / "codes" / f"level_{level}.npy"

    def wav_file(self, level: int, item: int) -> Path:
        return self.path / f"level_{level}" / f"item_{item}.wav"

    def exists(self) -> bool:
        return self.run_file.is_file()

    def start(self, args: Mapping[str, Any]) -> None:
        (self.path / "codes").mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_file, "w") as f:
            f.write(json.dumps(dict(args), indent=2, sort_keys=True))

    def read_args(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError) as e:
            raise SamplingError(f"cannot resume: {self.run_file} is missing or unreadable ({e})") from None

    def save_codes(self, level: int, z: np.ndarray) -> None:
        with atomic_write(self.code_file(level)) as f:
            np.save(f, np.asarray(z, np.int32))

    def has_progress(self) -> bool:
        """Whether any window was sampled: a saved level longer than the codes the run started from
        (``initial_tokens`` in run.json). A run that failed before its first window has none, so the
        same command may simply start it again."""
        if not self.exists():
            return False
        try:
            initial = list(json.loads(self.run_file.read_text()).get("initial_tokens") or [])
        except (OSError, ValueError, AttributeError):
            return any((self.path / "codes").glob("level_*.npy"))
        for path in (self.path / "codes").glob("level_*.npy"):
            try:
                level = int(path.stem.split("_")[1])
                length = np.load(path, mmap_mode="r").shape[1]
            except (OSError, ValueError, IndexError):
                return True
            if length > (initial[level] if level < len(initial) else 0):
                return True
        return False

    def load_codes(
        self, batch: int, levels: int, totals: Sequence[int] | None = None, bins: int | None = None
    ) -> list[np.ndarray]:
        """Saved codes per level ([B, 0] where none were saved yet), each checked against the run:
        an integer [batch, T] array, T at most ``totals[level]``, values in ``0..bins - 1``."""
        zs = []
        for level in range(levels):
            path = self.code_file(level)
            if not path.is_file():
                zs.append(np.zeros((batch, 0), np.int32))
                continue
            try:
                z = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise SamplingError(f"cannot resume: {path} is not a saved codes array ({e})") from None
            if z.ndim != 2 or z.shape[0] != batch:
                raise SamplingError(f"cannot resume: {path} holds codes of shape {z.shape}, expected [{batch}, T]")
            if not np.issubdtype(z.dtype, np.integer):
                raise SamplingError(f"cannot resume: {path} holds {z.dtype} values, not integer codes")
            if totals is not None and z.shape[1] > totals[level]:
                raise SamplingError(
                    f"cannot resume: {path} holds {z.shape[1]} codes, more than level {level}'s {totals[level]}"
                )
            if bins is not None and z.size and (z.min() < 0 or z.max() >= bins):
                raise SamplingError(
                    f"cannot resume: {path} holds codes {z.min()}..{z.max()}, outside the codebook 0..{bins - 1}"
                )
            zs.append(z.astype(np.int32))
        return zs
