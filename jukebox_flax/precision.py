"""Mixed precision: run a prior in bfloat16 or float16 with float32 where accuracy needs it.

The model keeps these in float32 whatever the activation dtype (see ``prior/transformer.py`` and
``prior/autoregressive.py``): LayerNorm statistics, attention softmax, the embedding sums, the
conditioning re-add and the output logits. What changes with ``dtype``: the residual stream, every
transformer matmul and the KV cache (half the memory and bandwidth).

    fast = with_precision(prior, jnp.bfloat16)              # bf16 params and activations
    orig = with_precision(prior, jnp.float16, released=True)  # the released 5B priors' fp16 mode:
                                                              # fp16 transformer kernels, rest fp32

bfloat16 has float32's range, so it needs no loss scaling for training; float16 reproduces the
original sampling numerics (``fp16=True``, ``fp16_params=True``).

The ``--precision`` names map to a compute dtype and that layout (:func:`resolve_precision`):
``float16`` is the released mode; ``auto`` is float16 on GPUs, bfloat16 on TPUs, float32 elsewhere.
:func:`load_prior_at` restores a prior's params from Orbax straight into that layout, so a
float32 checkpoint never has a full float32 copy on the device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .errors import ConfigError
from .prior.api import Prior, load_prior
from .prior.prior import JukeboxPrior, released_dtype
from .tree import path_names

__all__ = ["PRECISIONS", "resolve_precision", "cast_params", "with_precision", "load_prior_at"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cast_params(params: Any, dtype: Any, released: bool = False) -> Any:
    """Floating params cast to ``dtype``; ``released=True`` casts only the transformers' matmul
    kernels (``prior.released_dtype``: the original ``fp16_params``)."""

    def one(keypath, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(released_dtype(path_names(keypath), x.dtype, dtype) if released else dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def with_precision(prior: Any, dtype: Any, released: bool = False) -> Any:
    """A copy of a loaded ``Prior`` computing in ``dtype`` (params cast by :func:`cast_params`)."""
    module = JukeboxPrior(
        prior.config, dtype=dtype, param_dtype=jnp.float32 if released else dtype, scan_layers=prior.module.scan_layers
    )
    return Prior(
        config=prior.config, params=cast_params(prior.params, dtype, released), module=module, vocab=prior.vocab
    )


def resolve_precision(name: str, platform: str | None = None) -> tuple[Any, bool]:
    """``(compute dtype, released)`` of a ``--precision`` name; ``released``: only the transformer
    kernels are in that dtype (the rest float32), as the released models sample. ``auto`` picks
    by ``platform`` (default: JAX's default backend): float16 released on GPUs, bfloat16 on TPUs,
    float32 on CPUs."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r} (expected one of {', '.join(PRECISIONS)})")
    if name == "auto":
        platform = (platform or jax.default_backend()).lower()
        name = "float16" if platform in ("gpu", "cuda", "rocm") else "bfloat16" if platform == "tpu" else "float32"
    if name == "float16":
        return jnp.float16, True
    return (jnp.bfloat16 if name == "bfloat16" else jnp.float32), False


def load_prior_at(
    path: Any, precision: str = "auto", level: int | None = None, platform: str | None = None, scan_layers: bool = True
) -> Prior:
    """``load_prior(path, level)`` computing at ``precision`` (see :func:`resolve_precision`), its
    params read from Orbax straight into their dtypes (for ``released``: per leaf)."""
    dtype, released = resolve_precision(precision, platform)
    return load_prior(path, level, dtype=dtype, released=released, scan_layers=scan_layers)
