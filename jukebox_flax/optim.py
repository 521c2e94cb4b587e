"""The optimizer of every training task: AdamW with linear warm-up, optional linear decay and
global-norm clipping. Its defaults are the original's Adam (lr 3e-4, betas (0.9, 0.999), eps 1e-8,
weight decay 0, warm-up 100 steps, clipping at norm 1), written once in :class:`OptimConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import optax

__all__ = ["OptimConfig", "make_schedule", "make_optimizer"]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the schedule of :func:`make_schedule`, after clipping by global norm."""

    lr: float = 3e-4
    warmup_steps: int = 100
    decay_steps: int = 0  # > 0: decay linearly to lr * final_lr_fraction over this many steps after warm-up
    final_lr_fraction: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip: float = 1.0  # global gradient norm; <= 0 disables clipping


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate per step: 0 -> lr over ``warmup_steps`` (none when 0), then constant or linear decay."""
    decay = (
        optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_fraction, cfg.decay_steps)
        if cfg.decay_steps > 0
        else optax.constant_schedule(cfg.lr)
    )
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clipping by global norm, then AdamW on the schedule of :func:`make_schedule`."""
    adam = optax.adamw(make_schedule(cfg), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.clip), adam) if cfg.clip > 0 else adam
