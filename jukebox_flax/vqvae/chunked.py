"""Encoding and decoding long audio in windows whose results equal the whole-signal pass.

Each output (a token, or an audio sample) depends only on inputs within a fixed reach (the
receptive field). A window is a chunk plus that much context on each side, clipped at the signal
edges; the outputs of the chunk itself are kept. Windows start on top-hop boundaries so every
level's strided convolutions see the same alignment as in the whole pass, and at the true edges
the window edge is the signal edge, so zero padding matches too. Memory is bounded by the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..config import VQVAEConfig
from .encdec import resnet_dilations

__all__ = ["encoder_reach", "decoder_reach", "encode_chunked", "decode_chunked"]


def _resnet_reach(config: VQVAEConfig, level: int, reverse: bool) -> int:
    return sum(resnet_dilations(config.level_depth(level), config.dilation_growth_rate, config.dilation_cycle, reverse))


def encoder_reach(config: VQVAEConfig, level: int) -> int:
    """Samples on either side of ``t * hop`` that latent ``t`` of ``level`` can depend on."""
    left = right = 0
    unit = 1  # samples per position of the current layer's input
    res = _resnet_reach(config, level, reverse=False)
    for down_t, stride in zip(config.downs_t[: level + 1], config.strides_t[: level + 1]):
        kernel, pad = 2 * stride, stride // 2
        for _ in range(down_t):
            left += pad * unit
            right += (kernel - 1 - pad) * unit
            unit *= stride
            left += res * unit  # k3 dilated convs, padding = dilation
            right += res * unit
        left += unit  # the k3 output conv
        right += unit
    return max(left, right)


def decoder_reach(config: VQVAEConfig, level: int) -> int:
    """Tokens of ``level`` on either side that one output sample can depend on (rounded up)."""
    reach = 0.0
    tokens_per_unit = 1.0  # tokens per position of the current layer's input
    res = _resnet_reach(config, level, reverse=config.reverse_decoder_dilation)
    for down_t, stride in reversed(list(zip(config.downs_t[: level + 1], config.strides_t[: level + 1]))):
        reach += tokens_per_unit  # k3 input conv
        for _ in range(down_t):
            reach += res * tokens_per_unit
            reach += 2 * tokens_per_unit  # transposed conv k=2s: at most 2 input positions each way
            tokens_per_unit /= stride
    reach += tokens_per_unit  # the k3 output conv
    return int(math.ceil(reach)) + 1


def _progress(total: int, desc: str, enabled: bool):

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, leave=False)


def encode_chunked(
    encode: Callable[[np.ndarray], Sequence[np.ndarray]],
    audio: np.ndarray,
    config: VQVAEConfig,
    chunk_samples: int,
    progress: bool = True,
) -> list[np.ndarray]:
    """Codes of every level for ``audio [N, T, 1]`` by windows of ``chunk_samples`` (+ context).

    ``encode(window)`` returns the codes of all levels for one window ``[N, t, 1]``.
    """
    hop = config.hop_length
    hops = config.hop_lengths
    total = audio.shape[1]
    chunk = max(hop, chunk_samples // hop * hop)
    context = math.ceil(max(encoder_reach(config, L) for L in range(config.levels)) / hop) * hop
    outs: list[list[np.ndarray]] = [[] for _ in range(config.levels)]
    starts = range(0, total, chunk)
    with _progress(len(starts), "encode", progress) as bar:
        for a in starts:
            b = min(a + chunk, total)
            lo, hi = max(0, a - context), min(total, b + context)
            codes = encode(audio[:, lo:hi])
            for L, z in enumerate(codes):
                z = np.asarray(z)
                outs[L].append(z[:, (a - lo) // hops[L] : (b - lo) // hops[L]])
            bar.update(1)
    return [np.concatenate(parts, axis=1) for parts in outs]


def decode_chunked(
    decode: Callable[[np.ndarray], np.ndarray],
    codes: np.ndarray,
    config: VQVAEConfig,
    level: int,
    chunk_tokens: int,
    progress: bool = True,
) -> np.ndarray:
    """Audio ``[N, T, 1]`` from codes ``[N, T / hop_level]`` of ``level`` by windows of tokens.

    ``decode(window_codes)`` runs the level's decoder on one window ``[N, t]``.
    """
    hop = config.hop_lengths[level]
    total = codes.shape[1]
    chunk = max(1, chunk_tokens)
    context = decoder_reach(config, level)
    parts = []
    starts = range(0, total, chunk)
    with _progress(len(starts), "decode", progress) as bar:
        for a in starts:
            b = min(a + chunk, total)
            lo, hi = max(0, a - context), min(total, b + context)
            x = np.asarray(decode(codes[:, lo:hi]))
            parts.append(x[:, (a - lo) * hop : (b - lo) * hop])
            bar.update(1)
    return np.concatenate(parts, axis=1)
