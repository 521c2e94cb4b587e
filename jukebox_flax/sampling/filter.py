"""Temperature, top-k and top-p (nucleus) filtering of logits, exactly as the original ``filter_logits``.

The original (``jukebox/transformer/ops.py``) divides the logits by the temperature in the sampling
loop, then filters:

* top-k: every logit strictly below the k-th largest becomes ``-inf`` (ties with the k-th are kept);
* top-p: sort descending, cumulative softmax, remove where the cumulative probability exceeds ``p``,
  then shift that mask right by one so the first token crossing the threshold is kept (the most
  likely token is always kept).

top-k and top-p are mutually exclusive, as in the original. Every argument may be a traced value, so
one compiled sampling loop serves any temperature / top-k / top-p (0 switches a filter off).
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

Scalar = Union[float, int, jax.Array]


def check_filter_args(top_k: int, top_p: float) -> None:
    """Reject the combinations the original asserts against (call with concrete values)."""
    from .errors import SamplingError

    if top_k < 0:
        raise SamplingError(f"top_k must be >= 0 (0 switches it off), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise SamplingError(f"top_p must be in [0, 1] (0 switches it off), got {top_p}")
    if top_k > 0 and top_p > 0.0:
        raise SamplingError("top_k and top_p cannot both be set (as in the original sampler)")


def filter_logits(logits: jax.Array, top_k: Scalar = 0, top_p: Scalar = 0.0) -> jax.Array:
    """Set the logits outside the top-k / nucleus to ``-inf`` (last axis = vocabulary).

    ``top_k`` 0 and ``top_p`` 0.0 leave the logits unchanged; ``top_k`` larger than the vocabulary
    keeps everything (the original's ``min(top_k, vocab)``).
    """
    logits = jnp.asarray(logits)
    vocab = logits.shape[-1]
    neg_inf = jnp.array(-jnp.inf, logits.dtype)
    desc = -jnp.sort(-logits, axis=-1)  # descending

    # top-k: threshold = the k-th largest logit.
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 0, vocab)
    kth = jnp.take(desc, jnp.maximum(k - 1, 0), axis=-1)[..., None]
    logits = jnp.where((k > 0) & (logits < kth), neg_inf, logits)

    # top-p on the (possibly already top-k filtered) logits, as the original's second branch.
    p = jnp.asarray(top_p, jnp.float32)
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
    remove_sorted = cumulative > p
    # shift right by one: keep the first token that crosses the threshold; never remove the top one
    remove_sorted = jnp.concatenate(
        [jnp.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], axis=-1
    )
    remove = jnp.zeros_like(remove_sorted)
    remove = jnp.put_along_axis(remove, order, remove_sorted, axis=-1, inplace=False)
    return jnp.where((p > 0.0) & remove, neg_inf, logits)


def sample_token(key: jax.Array, logits: jax.Array, temperature: Scalar = 1.0, top_k: Scalar = 0,
                 top_p: Scalar = 0.0) -> jax.Array:
    """One token per row of ``logits [..., vocab]``: divide by the temperature, filter, sample."""
    logits = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    logits = filter_logits(logits, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
