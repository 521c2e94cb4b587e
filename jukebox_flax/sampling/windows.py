"""Windows of one level: where they start, what each one conditions on, how many tokens it adds.

A song longer than a prior's context (``n_ctx`` tokens) is sampled window by window, as in the
original ``sample.py``: windows of ``n_ctx`` tokens advance by ``hop = int(hop_fraction * n_ctx)``
(the last one right-aligned), each re-primes with the tokens already sampled inside it and samples
only its new tail. Every window gets its own label vector (offset, sample length, lyric window) and,
for upsamplers, its own slice of the codes of the level above. (The per-window label vector is
``jukebox_flax.labels.window_y``, the original ``SimplePrior.get_y``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SamplingError


def get_starts(total_length: int, n_ctx: int, hop_length: int) -> list[int]:
    """Window starts (tokens) covering ``total_length`` tokens, as the original ``get_starts``.

    Starts advance by ``hop_length``; a window that would reach the end is moved back so that it
    ends exactly at ``total_length`` (full context for the last window).
    """
    starts = []
    for start in range(0, total_length - n_ctx + hop_length, hop_length):
        if start + n_ctx >= total_length:
            start = total_length - n_ctx
        starts.append(start)
    return starts


@dataclass(frozen=True)
class Window:
    """One prior call: tokens ``[start, start + sample_tokens)``, of which the first ``n_prime``
    already exist (the prime) and the rest are new."""

    start: int
    sample_tokens: int
    n_prime: int

    @property
    def n_new(self) -> int:
        return self.sample_tokens - self.n_prime

    @property
    def end(self) -> int:
        return self.start + self.sample_tokens


def plan_window(start: int, n_ctx: int, current_tokens: int, sample_tokens: int | None = None) -> Window:
    """The original ``sample_single_window``: prime with what exists in ``[start, start + n_ctx)``."""
    sample_tokens = n_ctx if sample_tokens is None else sample_tokens
    n_prime = max(0, min(current_tokens, start + n_ctx) - start)
    return Window(start=start, sample_tokens=sample_tokens, n_prime=n_prime)


def partial_window(current_tokens: int, n_ctx: int, tokens_to_sample: int) -> Window:
    """The original ``sample_partial_window``: add ``tokens_to_sample`` tokens with a window shorter
    than ``n_ctx`` (a level whose whole length is below one context)."""
    if current_tokens < n_ctx - tokens_to_sample:
        return plan_window(0, n_ctx, current_tokens, sample_tokens=current_tokens + tokens_to_sample)
    return plan_window(current_tokens - n_ctx + tokens_to_sample, n_ctx, current_tokens, sample_tokens=n_ctx)


def level_windows(total_tokens: int, current_tokens: int, n_ctx: int, hop_length: int) -> list[Window]:
    """Every window still to sample to bring a level from ``current_tokens`` to ``total_tokens``.

    Windows already covered by existing tokens (a prompt, or a resumed run) are left out. A level
    shorter than one context gets one partial window that adds exactly the missing tokens (the
    original adds ``total_tokens`` more, which overshoots when some tokens exist already).
    """
    if current_tokens >= total_tokens:
        return []
    if total_tokens < n_ctx:
        return [partial_window(current_tokens, n_ctx, total_tokens - current_tokens)]
    windows: list[Window] = []
    for start in get_starts(total_tokens, n_ctx, hop_length):
        # windows are sampled in order, so the level holds everything up to the previous window's end
        have = max([current_tokens] + [w.end for w in windows])
        window = plan_window(start, n_ctx, have)
        if window.n_new > 0:
            windows.append(window)
    return windows


def upper_codes(z_upper: np.ndarray, start: int, n_ctx: int, cond_downsample: int) -> np.ndarray:
    """The codes of the level above that condition the window ``[start, start + n_ctx)``.

    The original ``get_z_conds`` slice ``[start // d, (start + n_ctx) // d]``; the Hugging Face port
    passes the whole upper sequence instead, which is wrong beyond one window.
    """
    end = start + n_ctx
    if start % cond_downsample or end % cond_downsample:
        raise SamplingError(f"window [{start}, {end}) is not aligned to the upper level (x{cond_downsample})")
    z = z_upper[:, start // cond_downsample : end // cond_downsample]
    if z.shape[1] != n_ctx // cond_downsample:
        raise SamplingError(
            f"upsampling needs the level above to cover the window [{start}, {end}): it has "
            f"{z_upper.shape[1]} codes, the window needs up to {end // cond_downsample}"
        )
    return z
