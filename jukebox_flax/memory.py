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
While sampling, ``pick_batch_chunk`` reads what the device has free once the level's params are
resident (``bytes_limit - bytes_in_use``) instead.

``plan_levels(config, seconds, ...)`` is the per-level table of ``jukebox-flax plan`` and
``sample --dry-run`` (``format_plan`` prints it; ``LevelPlan.as_dict`` is its JSON), from abstract
shapes only; with ``xla=True`` each level also gets XLA's own count for the compiled window
programs (``compiled_window_bytes``), where the backend reports one.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import JukeboxConfig, PriorConfig
from .errors import ConfigError
from .prior.prior import abstract_prior_params
from .prior.transformer import TransformerConfig, cache_bytes
from .tree import named_leaves, path_names

__all__ = [
    "MemoryPlan",
    "memory_plan",
    "max_batch",
    "pick_batch_chunk",
    "device_memory_bytes",
    "device_free_bytes",
    "original_defaults",
    "LevelPlan",
    "plan_levels",
    "format_plan",
    "compiled_window_bytes",
    "lower_window",
    "parse_size",
    "GB",
    "GiB",
]

GB = 1e9
GiB = 2**30
# The original sample.py's hop fractions per level (level 0 first).
_HOP_FRACTION = (0.5, 0.5, 0.125)


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
    return _memory_plan(config, jnp.dtype(dtype), bool(released), int(chunk_size))


@functools.lru_cache(maxsize=64)  # abstract shapes of a released prior take a while to trace
def _memory_plan(config: PriorConfig, dtype: Any, released: bool, chunk_size: int) -> MemoryPlan:
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


def device_free_bytes(device: Any | None = None) -> int | None:
    """What ``device`` has free now (``bytes_limit - bytes_in_use``; None where not reported)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement memory_stats
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def pick_batch_chunk(
    config: PriorConfig,
    n_samples: int,
    dtype: Any = jnp.float32,
    released: bool = False,
    chunk_size: int = 32,
    device_bytes: float | None = None,
    devices: int = 1,
    headroom: float = 0.9,
    free_bytes: float | None = None,
) -> int:
    """Rows to sample together: all ``n_samples`` if they fit, else the largest batch that fits
    ``devices`` data-parallel devices, rounded down to a multiple of ``devices`` and never below 1
    (a prior whose params alone do not fit still gets a try).

    Memory per device: ``device_bytes`` total (the params are counted in it), else ``free_bytes``
    left once the params are resident, else what this device reports free now
    (:func:`device_free_bytes`: call it with the level's params already on the device); without
    any figure (e.g. on CPU) everything at once."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if device_bytes is not None:
        per_device = max_batch(config, device_bytes, dtype, released, chunk_size, headroom)
    else:
        free_bytes = device_free_bytes() if free_bytes is None else free_bytes
        if free_bytes is None:
            return n_samples
        limit = device_memory_bytes() or free_bytes
        plan = memory_plan(config, dtype, released, chunk_size)
        # the same headroom as max_batch, taken from the whole device, not only from what is free
        per_device = max(int((free_bytes - (1 - headroom) * limit) // plan.per_sample), 0)
    fits = per_device * devices
    if fits >= n_samples:
        return n_samples
    return max(fits - fits % devices, 1) if fits >= devices else max(fits, 1)


def original_defaults(config: PriorConfig) -> tuple[int, int]:
    """``(max_batch_size, chunk_size)`` of the original ``sample.py`` for a level: 3 / 16 for the
    5B top priors (the fp16-params ones), 16 / 32 for 1b_lyrics and the upsamplers."""
    if not config.is_upsampler and config.fp16_params:
        return 3, 16
    return 16, 32


def parse_size(text: str | float | int) -> int:
    """Bytes of ``16GiB`` / ``16GB`` / ``1.5e10`` (GiB etc. are powers of 2, GB etc. of 10)."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?b?)?\s*", text.lower())
    if not match:
        raise ConfigError(f"cannot read the size {text!r} (e.g. 16GiB, 24GB, 8e9)")
    value, unit = float(match.group(1)), match.group(2) or ""
    if unit:
        power = "kmgt".index(unit[0]) + 1
        value *= (1024**power) if (unit.endswith("i") or unit.endswith("ib")) else (1000**power)
    return int(value)


@dataclass(frozen=True)
class LevelPlan:
    """One level of a sampling memory plan (bytes; a row is one sample of the batch)."""

    level: int
    params_bytes: int
    kv_bytes_per_row: int
    activation_bytes_per_row: int
    rows_per_call: int  # rows sampled together (calls per window: ceil(batch / rows_per_call))
    peak_bytes: int  # params + rows_per_call rows (XLA's count instead, when measured)
    fits: bool  # the peak is within the device memory (True where no limit is known)
    chunk_size: int
    windows: int  # windows of n_ctx tokens for the planned seconds
    xla_bytes: int | None = None  # XLA's compiled memory analysis of the window, at rows_per_call rows

    def as_dict(self) -> dict:
        d = asdict(self)
        return d if self.xla_bytes is not None else {k: v for k, v in d.items() if k != "xla_bytes"}


def _priors(config: Any) -> list[PriorConfig]:
    if isinstance(config, JukeboxConfig):
        return list(config.priors)
    if isinstance(config, PriorConfig):
        return [config]
    priors = list(config)
    if not all(isinstance(p, PriorConfig) for p in priors):
        raise ConfigError("plan needs a whole-model config, a prior config or a list of prior configs")
    return priors


def _windows(config: PriorConfig, seconds: float) -> int:
    tokens = int(seconds * config.sr) // config.hop_length
    if tokens <= config.n_ctx:
        return 1
    hop = max(int(_HOP_FRACTION[min(config.level, 2)] * config.n_ctx), 1)
    return 1 + math.ceil((tokens - config.n_ctx) / hop)


def plan_levels(
    config: Any,
    seconds: float,
    batch: int | None = None,
    dtype: Any = jnp.float32,
    released: bool = False,
    device_memory: float | None = None,
    max_batch_size: int | None = None,
    chunk_size: int | None = None,
    headroom: float = 0.9,
    xla: bool = False,
) -> list[LevelPlan]:
    """The memory plan of sampling ``seconds`` of ``batch`` rows with every prior of ``config``
    (a ``JukeboxConfig``, a ``PriorConfig`` or a list of them), top level first, computing in
    ``dtype`` (``released``: only transformer kernels in ``dtype``; see ``precision.resolve_precision``).

    Rows per call: ``batch`` (default: as many as fit) capped by ``max_batch_size`` and, with a
    ``device_memory`` (bytes per device), by what fits in ``headroom`` of it after the params; the
    chunk size defaults to the original's per level (``original_defaults``). ``xla``: also lower
    and compile each level's window programs on abstract params (no weights) and report XLA's
    count, where the backend gives one."""
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if seconds <= 0:
        raise ConfigError(f"seconds must be > 0, got {seconds}")
    plans = []
    for prior in sorted(_priors(config), key=lambda p: -p.level):
        default_rows, default_chunk = original_defaults(prior)
        chunk = chunk_size or default_chunk
        plan = memory_plan(prior, dtype, released, chunk)
        want = batch or max_batch_size or default_rows
        rows = min(want, max_batch_size) if max_batch_size else want
        fits = True
        if device_memory is not None:
            room = plan.max_batch(device_memory, headroom)
            rows = min(rows, room) if batch or max_batch_size else room
            fits = room >= 1
            rows = max(rows, 1)
        peak = plan.params + rows * plan.per_sample
        measured = compiled_window_bytes(prior, rows, dtype, released, chunk) if xla else None
        if measured is not None:
            peak = measured
            fits = device_memory is None or measured <= headroom * device_memory
        plans.append(
            LevelPlan(
                level=prior.level,
                params_bytes=plan.params,
                kv_bytes_per_row=plan.cache_per_sample,
                activation_bytes_per_row=plan.activations_per_sample,
                rows_per_call=rows,
                peak_bytes=int(peak),
                fits=bool(fits),
                chunk_size=chunk,
                windows=_windows(prior, seconds),
                xla_bytes=measured,
            )
        )
    return plans


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def format_plan(plans: list[LevelPlan], device_memory: float | None = None, batch: int | None = None) -> str:
    """The plan as a table (GiB), one line per level, top level first."""
    where = f"{device_memory / GiB:.1f} GiB per device" if device_memory else "no device limit known"
    lines = [
        f"memory plan ({where}; GiB = 2^30 bytes; a row = one sample)",
        f"{'level':>5} {'params':>8} {'kv/row':>8} {'act/row':>8} {'rows':>5} {'chunk':>5} {'windows':>7} "
        f"{'peak':>8} {'xla':>8}  fits",
    ]
    for p in plans:
        xla = _gib(p.xla_bytes) if p.xla_bytes is not None else "-"
        lines.append(
            f"{p.level:>5} {_gib(p.params_bytes):>8} {_gib(p.kv_bytes_per_row):>8} "
            f"{_gib(p.activation_bytes_per_row):>8} {p.rows_per_call:>5} {p.chunk_size:>5} {p.windows:>7} "
            f"{_gib(p.peak_bytes):>8} {xla:>8}  {'yes' if p.fits else 'NO'}"
        )
    if batch:
        calls = ", ".join(f"level {p.level}: {math.ceil(batch / p.rows_per_call)}" for p in plans)
        lines.append(f"calls per window for {batch} rows: {calls}")
    return "\n".join(lines)


def lower_window(
    config: PriorConfig,
    rows: int,
    dtype: Any = jnp.float32,
    released: bool = False,
    chunk_size: int = 32,
    scan_layers: bool = False,
) -> tuple[Any, Any]:
    """The two programs of one sampling window of ``rows`` rows, lowered on abstract params (no
    weights): ``(prefill, sample)`` as ``jax.stages.Lowered``. ``scan_layers=False`` is the layout
    sampling loads (``load_prior(..., scan_layers=False)``); ``released``: fp16 transformer kernels,
    the rest float32."""
    from .prior.prior import JukeboxPrior
    from .sampling.sampler import SamplingParams, WindowSampler, condition

    module = JukeboxPrior(config, dtype=dtype, param_dtype=jnp.float32 if released else dtype, scan_layers=scan_layers)

    def abstract(keypath: Any, leaf: Any) -> Any:
        names = path_names(keypath)
        half = not released or ("transformer" in names and names[-1] == "kernel")
        return jax.ShapeDtypeStruct(leaf.shape, dtype if half else jnp.float32)

    params = jax.tree_util.tree_map_with_path(abstract, abstract_prior_params(config, scan_layers=scan_layers))
    y = jax.ShapeDtypeStruct((rows, config.y_length), jnp.int32) if config.labels else None
    upper = (
        jax.ShapeDtypeStruct((rows, config.n_ctx // config.cond_downsample), jnp.int32) if config.is_upsampler else None
    )
    cond = jax.eval_shape(lambda p, y, u: condition(module, p, y, u), params, y, upper)
    tokens = jax.ShapeDtypeStruct((rows, config.total_ctx), jnp.int32)
    cache = jax.eval_shape(lambda: module.init_cache(rows))
    sampler = WindowSampler(module, chunk_size)
    key = jax.eval_shape(lambda: jax.random.key(0))
    n = jax.ShapeDtypeStruct((), jnp.int32)
    prefill = WindowSampler.prefill.lower(sampler, params, cond, tokens, n, cache, key)
    state = jax.eval_shape(lambda *a: WindowSampler.prefill(sampler, *a), params, cond, tokens, n, cache, key)
    sampling = jax.eval_shape(lambda: SamplingParams.make())
    return prefill, WindowSampler.sample.lower(sampler, params, cond, state, n, sampling)


def compiled_window_bytes(
    config: PriorConfig, rows: int, dtype: Any = jnp.float32, released: bool = False, chunk_size: int = 32
) -> int | None:
    """XLA's memory analysis of one sampling window of ``rows`` rows (``lower_window``: the prefill
    and the token loop in the sampling layout, compiled on abstract params): the larger of the two
    programs' arguments + outputs + temporaries - aliased buffers. None where the backend reports
    no analysis."""
    try:
        analyses: list[Any] = [
            p.compile().memory_analysis() for p in lower_window(config, rows, dtype, released, chunk_size)
        ]
    except NotImplementedError:
        return None
    if any(m is None for m in analyses):
        return None
    return max(
        int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
        for m in analyses
    )
