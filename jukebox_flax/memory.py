"""Memory plan of sampling: params + KV cache + activations per sample, and the batch that fits.

Per prior (``PriorConfig``) and precision:

- params: every leaf of the param tree at its stored dtype (``released`` fp16: the transformer
  kernels in float16, the rest float32, as the original ``fp16_params``);
- KV cache per sample: ``transformer.cache_bytes`` (sized per attention type: full length only
  for dense / transpose / prime layers);
- activations per sample: the sampler's own buffers (float32 conditioning x_cond [n_ctx, W] and
  encoder_kv, the token buffer) plus the temporaries of one prefill call of ``chunk_size``
  positions, counted twice for XLA's double buffering: residual, q/k/v, MLP hidden, float32
  attention scores over the longest cache, float32 logits.

``max_batch(...)`` = (usable - params) // per-sample, with ``usable`` = ``headroom`` (0.9) of the
device's memory. On GPUs JAX preallocates 75 % of the memory by default: set
``XLA_PYTHON_CLIENT_MEM_FRACTION=.95`` (or ``XLA_PYTHON_CLIENT_PREALLOCATE=false``) to use the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import PriorConfig
from .prior.prior import abstract_prior_params
from .prior.transformer import TransformerConfig, cache_bytes
from .tree import named_leaves

__all__ = ["MemoryPlan", "memory_plan", "max_batch", "pick_batch_chunk", "device_memory_bytes", "GB"]

GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of one prior at one precision (per sample: one batch row)."""

    params: int
    cache_per_sample: int
    activations_per_sample: int

    @property
    def per_sample(self) -> int:
        return self.cache_per_sample + self.activations_per_sample

    def max_batch(self, device_bytes: float, headroom: float = 0.9) -> int:
        """The largest batch that fits in ``headroom`` of ``device_bytes`` (0: not even the params)."""
        free = headroom * device_bytes - self.params
        return max(int(free // self.per_sample), 0)


def _param_bytes(config: PriorConfig, dtype: Any, released: bool) -> int:
    total = 0
    for names, leaf in named_leaves(abstract_prior_params(config)).items():
        half = not released or ("transformer" in names and names[-1] == "kernel")
        total += int(np.prod(leaf.shape)) * (jnp.dtype(dtype).itemsize if half else 4)
    return total


def memory_plan(
    config: PriorConfig, dtype: Any = jnp.float32, released: bool = False, chunk_size: int = 32
) -> MemoryPlan:
    """The plan of ``config`` with activations and KV cache in ``dtype`` (params too, unless
    ``released``: then only the transformer kernels are in ``dtype``)."""
    spec = TransformerConfig.from_prior(config, dtype=dtype, param_dtype=dtype)
    act = jnp.dtype(dtype).itemsize
    cache = cache_bytes(spec, 1, dtype)
    n_ctx, w = config.total_ctx, config.width
    longest = max(spec.cache_length(t) for t in set(config.attention_layout))
    c = min(chunk_size, n_ctx)
    # sampler buffers: x_cond [n_ctx, W] f32, encoder_kv [n_tokens, W] f32, tokens int32 (+ shifted copy)
    buffers = 4 * n_ctx * w + (4 * config.n_tokens * w if config.lyrics == "separate" else 0) + 8 * n_ctx
    layer = c * (2 * w + 3 * spec.n_state + int(config.m_mlp * w)) * act  # residual, qkv, MLP hidden
    scores = 2 * config.heads * c * longest * 4  # float32 scores and softmax weights
    logits = 2 * c * config.total_bins * 4
    return MemoryPlan(
        params=_param_bytes(config, dtype, released),
        cache_per_sample=cache,
        activations_per_sample=buffers + 2 * (layer + scores + logits),
    )


def max_batch(
    config: PriorConfig,
    device_bytes: float,
    dtype: Any = jnp.float32,
    released: bool = False,
    chunk_size: int = 32,
    headroom: float = 0.9,
) -> int:
    return memory_plan(config, dtype, released, chunk_size).max_batch(device_bytes, headroom)


def device_memory_bytes(device: Any | None = None) -> int | None:
    """The memory limit XLA reports for ``device`` (GPU/TPU), or None (CPU: no fixed limit)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement memory_stats
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def pick_batch_chunk(
    config: PriorConfig,
    n_samples: int,
    dtype: Any = jnp.float32,
    released: bool = False,
    chunk_size: int = 32,
    device_bytes: float | None = None,
    devices: int = 1,
    headroom: float = 0.9,
) -> int:
    """Rows to sample together: all ``n_samples`` if they fit, else the largest batch that fits
    ``devices`` data-parallel devices of ``device_bytes`` each (default: this device's reported
    limit; without one, e.g. on CPU, everything at once), rounded down to a multiple of ``devices``
    and never below 1 (a prior whose params alone do not fit still gets a try)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    device_bytes = device_memory_bytes() if device_bytes is None else device_bytes
    if device_bytes is None:
        return n_samples
    per_device = max_batch(config, device_bytes, dtype, released, chunk_size, headroom)
    fits = per_device * devices
    if fits >= n_samples:
        return n_samples
    return max(fits - fits % devices, 1) if fits >= devices else max(fits, 1)
