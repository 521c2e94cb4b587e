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

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from .checkpoint import PARAMS_DIR, check_tree, component_dir, load_config, load_vocab, param_metadata
from .config import JukeboxConfig, PriorConfig
from .errors import CheckpointError, ConfigError
from .prior.api import Prior, load_prior
from .prior.prior import JukeboxPrior, abstract_prior_params, unroll_layers
from .tree import path_names

__all__ = ["PRECISIONS", "resolve_precision", "cast_params", "with_precision", "load_prior_at"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


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


def _restore_released(sub: Path, config: PriorConfig, dtype: Any) -> Any:
    """Params restored with the transformer kernels in ``dtype`` and every other float in float32
    (Orbax casts leaf by leaf while reading, so no float32 copy of the kernels is made)."""
    meta = param_metadata(sub)
    check_tree(meta, abstract_prior_params(config), where=str(sub))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(keypath, m):
        want = m.dtype
        if jnp.issubdtype(m.dtype, jnp.floating):
            want = dtype if _is_transformer_kernel(path_names(keypath)) else jnp.float32
        return jax.ShapeDtypeStruct(tuple(m.shape), want, sharding=device)

    ckpt = sub.absolute() / PARAMS_DIR
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(ckpt, jax.tree_util.tree_map_with_path(target, meta))
        except Exception as e:
            raise CheckpointError(f"cannot restore the checkpoint in {ckpt}: {e}") from None


def load_prior_at(
    path: Any, precision: str = "auto", level: int | None = None, platform: str | None = None, scan_layers: bool = True
) -> Prior:
    """``load_prior(path, level)`` computing at ``precision`` (see :func:`resolve_precision`), its
    params read from Orbax straight into their dtypes (for ``released``: per leaf)."""
    dtype, released = resolve_precision(precision, platform)
    if not released:
        return load_prior(path, level, dtype=dtype, scan_layers=scan_layers)
    config = load_config(path)
    if isinstance(config, JukeboxConfig):
        level = len(config.priors) - 1 if level is None else level
        if not 0 <= level < len(config.priors):
            raise CheckpointError(f"{path} has prior levels 0..{len(config.priors) - 1}, not {level}")
        sub = component_dir(path, f"prior_level_{level}")
        config = load_config(sub)
    else:
        sub = Path(path)
    if not isinstance(config, PriorConfig):
        raise CheckpointError(f"{sub} holds a {type(config).__name__}, not a prior")
    if level is not None and config.level != level:
        raise CheckpointError(f"{sub} holds the level-{config.level} prior, not level {level}")
    params = _restore_released(sub, config, dtype)
    if not scan_layers:
        params = jax.jit(unroll_layers)(params)
    module = JukeboxPrior(config, dtype=dtype, param_dtype=jnp.float32, scan_layers=scan_layers)
    return Prior(config=config, params=params, module=module, vocab=load_vocab(sub))
