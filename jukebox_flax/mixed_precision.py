"""Training precision: float32 master weights, a bfloat16 / float16 forward and backward, and the
dynamic loss scaling of float16 training.

``--precision`` of ``jukebox-flax train`` (:data:`TRAIN_PRECISIONS`):

* ``float32``: everything in float32;
* ``bfloat16``: the params and optimizer state stay float32 (the master weights); each step the
  loss is computed on a bfloat16 copy of the params (the task's ``cast``: for a prior the
  transformers' matmul kernels, as ``precision.cast_params(..., released=True)``), with the model's
  activations in bfloat16 and LayerNorm, softmax, logits and loss in float32. Gradients come back
  float32 (the transpose of the cast). bfloat16 has float32's range: no loss scaling;
* ``float16``: the same in float16 with dynamic loss scaling as the original's fp16 training
  (``jukebox/utils/fp16.py``): the loss is multiplied by the scale before the backward and the
  gradients divided by it after; a step whose loss or gradients are not finite is skipped (params
  and optimizer state unchanged) and the scale halved; after every ``growth_interval`` good steps
  the scale is multiplied by ``growth_factor`` (at most ``max_scale``). The original starts at 2^16
  and grows by 2^(1/1000) after every good step (doubling over 1000 good steps), capped at 2^24:
  :class:`LossScaleConfig`'s defaults.

The loss-scale state (:class:`LossScaleState`) is a pytree of the training state, so it is
checkpointed with it and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .errors import TrainingError

__all__ = [
    "TRAIN_PRECISIONS",
    "compute_dtype",
    "cast_floats",
    "LossScaleConfig",
    "LossScaleState",
    "init_loss_scale",
    "update_loss_scale",
    "all_finite",
    "select_tree",
]

TRAIN_PRECISIONS = ("float32", "bfloat16", "float16")


def compute_dtype(precision: str) -> Any:
    """The dtype the forward and backward compute in for a ``--precision`` name."""
    if precision not in TRAIN_PRECISIONS:
        raise TrainingError(f"unknown training precision {precision!r} (one of {', '.join(TRAIN_PRECISIONS)})")
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[precision]


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype`` (the default cast of a training task)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclass(frozen=True)
class LossScaleConfig:
    """Dynamic loss scaling (float16 training); the defaults are the original's."""

    init_scale: float = 2.0**16
    growth_factor: float = 2.0 ** (1.0 / 1000.0)
    growth_interval: int = 1  # good steps between growths
    max_scale: float = 2.0**24


class LossScaleState(NamedTuple):
    """The current loss scale (float32 scalar) and the good steps since the last growth or skip."""

    scale: jax.Array
    good_steps: jax.Array


def init_loss_scale(config: LossScaleConfig) -> LossScaleState:
    return LossScaleState(jnp.asarray(config.init_scale, jnp.float32), jnp.zeros((), jnp.int32))


def update_loss_scale(state: LossScaleState, finite: jax.Array, config: LossScaleConfig) -> LossScaleState:
    """The scale after a step: halved when ``finite`` is False (the step was skipped), else grown by
    ``growth_factor`` once ``growth_interval`` good steps in a row have passed."""
    good = jnp.where(finite, state.good_steps + 1, 0)
    grow = finite & (good >= config.growth_interval)
    grown = jnp.minimum(state.scale * config.growth_factor, config.max_scale)
    scale = jnp.where(finite, jnp.where(grow, grown, state.scale), state.scale * 0.5)
    return LossScaleState(scale.astype(jnp.float32), jnp.where(grow, 0, good).astype(jnp.int32))


def all_finite(tree: Any) -> jax.Array:
    """True where every element of every leaf is finite (a bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """``on_true`` where ``pred`` else ``on_false``, leaf by leaf (bitwise the chosen one)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
