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
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .prior.api import Prior
from .prior.prior import JukeboxPrior
from .tree import path_names

__all__ = ["cast_params", "with_precision"]


def _is_transformer_kernel(names: tuple[str, ...]) -> bool:
    return "transformer" in names and names[-1] == "kernel"


def cast_params(params: Any, dtype: Any, released: bool = False) -> Any:
    """Floating params cast to ``dtype``; ``released=True`` casts only the transformers' matmul
    kernels (the original ``fp16_params``: biases, embeddings, LayerNorms, heads and conditioners
    stay float32)."""

    def one(keypath, x):
        names = path_names(keypath)
        if not jnp.issubdtype(x.dtype, jnp.floating) or (released and not _is_transformer_kernel(names)):
            return x
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def with_precision(prior: Any, dtype: Any, released: bool = False) -> Any:
    """A copy of a loaded ``Prior`` computing in ``dtype`` (params cast by :func:`cast_params`)."""
    module = JukeboxPrior(
        prior.config, dtype=dtype, param_dtype=jnp.float32 if released else dtype, scan_layers=prior.module.scan_layers
    )
    return Prior(
        config=prior.config, params=cast_params(prior.params, dtype, released), module=module, vocab=prior.vocab
    )
