"""Vector quantisation with EMA codebooks, as in openai/jukebox ``vqvae/bottleneck.py``.

Everything here is a pure function of arrays. A codebook ``k`` is ``[bins, emb_width]``; it is
stored in the param tree (``params['bottleneck']['level_blocks_L']['k']``) so a model directory
holds it, but it is never trained by gradients: training keeps an :class:`EMAState`
(``k_sum``, ``k_elem``) per level and replaces ``k`` with :func:`ema_update` after every step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "quantise",
    "quantise_margin",
    "dequantise",
    "commit_loss",
    "straight_through",
    "EMAState",
    "init_codebook",
    "restore_ema_state",
    "ema_update",
]


def _distances(x: jax.Array, k: jax.Array) -> jax.Array:
    """Squared distances ``[rows, bins]`` with the original's expanded formula.

    ``|x|^2 - 2 x.k + |k|^2`` rounds differently from ``|x - k|^2``; using the same formula keeps
    the argmin identical to the original except at genuine near-ties.
    """
    return jnp.sum(x**2, axis=-1, keepdims=True) - 2 * x @ k.T + jnp.sum(k**2, axis=-1)[None, :]


def quantise(x: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest code of each latent vector: ``x [..., C] -> (codes int32 [...], fit)``.

    ``fit`` is the mean squared distance to the chosen codes (a training metric). Ties go to the
    lowest index, like ``torch.min``.
    """
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    dist = _distances(flat, k.astype(jnp.float32))
    codes = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    fit = jnp.mean(jnp.min(dist, axis=-1))
    return codes.reshape(x.shape[:-1]), fit


def quantise_margin(x: jax.Array, k: jax.Array) -> jax.Array:
    """Second-best minus best distance per vector (how safe each code choice is against noise)."""
    flat = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    two = -jax.lax.top_k(-_distances(flat, k.astype(jnp.float32)), 2)[0]
    return (two[:, 1] - two[:, 0]).reshape(x.shape[:-1])


def dequantise(codes: jax.Array, k: jax.Array) -> jax.Array:
    """Codebook lookup: ``codes [...] -> [..., emb_width]``."""
    return jnp.take(k, codes, axis=0)


def commit_loss(x: jax.Array, x_quantised: jax.Array) -> jax.Array:
    """``|sg(x_q) - x|^2 / numel(x)``: pulls the encoder towards its codes (no codebook gradient)."""
    diff = jax.lax.stop_gradient(x_quantised) - x
    return jnp.sum(diff**2) / diff.size


def straight_through(x: jax.Array, x_quantised: jax.Array) -> jax.Array:
    """The quantised value forward, the identity's gradient backward."""
    return x + jax.lax.stop_gradient(x_quantised - x)


class EMAState(NamedTuple):
    """The running sums behind one codebook: ``k = k_sum / k_elem`` for codes in use."""

    k_sum: jax.Array  # [bins, emb_width]
    k_elem: jax.Array  # [bins]


def _random_rows(key: jax.Array, x: jax.Array, bins: int) -> jax.Array:
    """``bins`` random rows of ``x``; when ``x`` has fewer rows it is tiled and jittered first.

    As the original ``_tile`` + ``randperm``: the jitter is N(0, (0.01 / sqrt(C))^2).
    """
    rows, width = x.shape
    noise_key, perm_key = jax.random.split(key)
    if rows < bins:
        repeats = (bins + rows - 1) // rows
        x = jnp.tile(x, (repeats, 1))
        x = x + jax.random.normal(noise_key, x.shape, x.dtype) * (0.01 / np.sqrt(width))
    return x[jax.random.permutation(perm_key, x.shape[0])[:bins]]


def init_codebook(key: jax.Array, x: jax.Array, bins: int) -> tuple[jax.Array, EMAState]:
    """The original ``init_k``: a codebook of random latents ``x [rows, C]`` and its EMA state."""
    k = _random_rows(key, x.reshape(-1, x.shape[-1]).astype(jnp.float32), bins)
    return k, EMAState(k_sum=k, k_elem=jnp.ones((bins,), jnp.float32))


def restore_ema_state(k: jax.Array, num_tokens: float | None = None) -> EMAState:
    """The original ``restore_k``: EMA sums for resuming training from a stored codebook.

    ``num_tokens`` (tokens per batch, all devices) sets the assumed usage ``num_tokens / bins``.
    """
    bins = k.shape[0]
    usage = 1.0 if num_tokens is None else num_tokens / bins
    return EMAState(k_sum=k * usage, k_elem=jnp.full((bins,), usage, jnp.float32))


def ema_update(
    key: jax.Array,
    k: jax.Array,
    state: EMAState,
    x: jax.Array,
    codes: jax.Array,
    mu: float = 0.99,
    threshold: float = 1.0,
) -> tuple[jax.Array, EMAState, dict[str, jax.Array]]:
    """One EMA codebook step with dead-code restarts (the original ``update_k``).

    ``x [..., C]`` are the latents that were quantised to ``codes [...]`` with the codebook ``k``.
    Codes whose running count ``k_elem`` falls below ``threshold`` are replaced by random latents
    of this batch. Returns the new codebook, the new state and the original's metrics
    (entropy, used_curr, usage, dk).
    """
    bins, width = k.shape
    x = jax.lax.stop_gradient(x.reshape(-1, width).astype(jnp.float32))
    onehot = jax.nn.one_hot(codes.reshape(-1), bins, dtype=jnp.float32)  # [rows, bins]
    batch_sum = onehot.T @ x  # [bins, C]
    batch_elem = jnp.sum(onehot, axis=0)  # [bins]
    k_rand = _random_rows(key, x, bins)

    k_sum = mu * state.k_sum + (1.0 - mu) * batch_sum
    k_elem = mu * state.k_elem + (1.0 - mu) * batch_elem
    usage = (k_elem >= threshold).astype(jnp.float32)[:, None]
    new_k = usage * (k_sum / k_elem[:, None]) + (1.0 - usage) * k_rand

    prob = batch_elem / jnp.sum(batch_elem)
    metrics = dict(
        entropy=-jnp.sum(prob * jnp.log(prob + 1e-8)),
        used_curr=jnp.sum(batch_elem >= threshold),
        usage=jnp.sum(usage),
        dk=jnp.linalg.norm(new_k - k) / np.sqrt(k.size),
    )
    return new_k, EMAState(k_sum=k_sum, k_elem=k_elem), metrics
