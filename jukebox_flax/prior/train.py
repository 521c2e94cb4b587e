"""Training a prior: the original's optimiser as an optax chain and one jitted train step.

The original (``train.py``/``utils/fp16.py``) uses Adam (lr 3e-4, betas (0.9, 0.999), eps 1e-8,
weight decay 0), linear warm-up over ``lr_warmup`` steps and gradient clipping by global norm
``clip`` = 1.0. The loss is ``JukeboxPrior.loss`` (bits per token, lyric loss mixed in).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from .prior import JukeboxPrior

__all__ = ["prior_optimizer", "make_train_step"]


def prior_optimizer(lr: float = 3e-4, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    weight_decay: float = 0.0, warmup_steps: int = 100, clip: float = 1.0
                    ) -> optax.GradientTransformation:
    """Adam with linear warm-up and global-norm clipping, the original's defaults (the same
    optimizer as :func:`jukebox_flax.training.make_optimizer`)."""
    from ..training import OptimConfig, make_optimizer

    return make_optimizer(OptimConfig(lr=lr, warmup_steps=warmup_steps, b1=b1, b2=b2, eps=eps,
                                      weight_decay=weight_decay, clip=clip))


def make_train_step(module: JukeboxPrior, optimizer: optax.GradientTransformation):
    """A jitted ``step(params, opt_state, tokens, y, upper) -> (params, opt_state, loss, metrics)``.

    params and opt_state are donated (updated in place on accelerators).
    """

    def loss_fn(params: Any, tokens: jax.Array, y: Optional[jax.Array], upper: Optional[jax.Array]):
        return module.apply({"params": params}, tokens, y, upper, method=JukeboxPrior.loss)

    def step(params, opt_state, tokens, y=None, upper=None):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens, y, upper)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return params, opt_state, loss, metrics

    return jax.jit(step, donate_argnums=(0, 1))
