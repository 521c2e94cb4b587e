"""Temperature, top-k and top-p (nucleus) filtering of logits, exactly as the original ``filter_logits``.

The original (``jukebox/transformer/ops.py``) divides the logits by the temperature in the sampling
loop, then filters:

* top-k: every logit strictly below the k-th largest becomes ``-inf`` (ties with the k-th are kept);
* top-p: sort descending, cumulative softmax, remove where the cumulative probability exceeds ``p``,
  then shift that mask right by one so the first token crossing the threshold is kept (the most
  likely token is always kept).

top-k and top-p are mutually exclusive, as in the original. Every argument may be a traced value, so
one compiled sampling loop serves any temperature / top-k / top-p (0 switches a filter off). Each
filter sits behind ``lax.cond``, so a filter that is off costs nothing (the nucleus sorts the whole
vocabulary, many times the cost of the categorical draw: ``scripts/bench_sampling.py --filters``
prints both), and the k-th largest logit comes from ``lax.top_k`` of the smallest of a few static
sizes that holds it (a ``lax.switch``), not from a sort.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .errors import SamplingError

Scalar = float | int | jax.Array


def check_filter_args(top_k: int, top_p: float) -> None:
    """Reject the combinations the original asserts against (call with concrete values)."""

    if top_k < 0:
        raise SamplingError(f"top_k must be >= 0 (0 switches it off), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise SamplingError(f"top_p must be in [0, 1] (0 switches it off), got {top_p}")
    if top_k > 0 and top_p > 0.0:
        raise SamplingError("top_k and top_p cannot both be set (as in the original sampler)")


_TOP_K_SIZES = (8, 64, 512)  # static lax.top_k sizes tried before the whole vocabulary


def _kth_largest(logits: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th largest logit of every row ([..., 1]; 1 <= k <= vocab, k traced), ties counted as
    a descending sort counts them: ``lax.top_k`` of the smallest static size >= k."""
    vocab = logits.shape[-1]
    sizes = sorted({min(n, vocab) for n in _TOP_K_SIZES} | {vocab})
    branch = sum(((k > n).astype(jnp.int32) for n in sizes[:-1]), jnp.int32(0))

    def kth(size):
        return lambda x: jnp.take(lax.top_k(x, size)[0], jnp.maximum(k - 1, 0), axis=-1)[..., None]

    return lax.switch(branch, [kth(n) for n in sizes], logits)


def _nucleus(logits: jax.Array, p: jax.Array) -> jax.Array:
    """The original's top-p on ``logits`` (p > 0)."""
    neg_inf = jnp.array(-jnp.inf, logits.dtype)
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1), axis=-1)
    remove_sorted = cumulative > p
    # shift right by one: keep the first token that crosses the threshold; never remove the top one
    remove_sorted = jnp.concatenate([jnp.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], axis=-1)
    remove = jnp.zeros_like(remove_sorted)
    remove = jnp.put_along_axis(remove, order, remove_sorted, axis=-1, inplace=False)
    return jnp.where(remove, neg_inf, logits)


def filter_logits(logits: jax.Array, top_k: Scalar = 0, top_p: Scalar = 0.0) -> jax.Array:
    """Set the logits outside the top-k / nucleus to ``-inf`` (last axis = vocabulary).

    ``top_k`` 0 and ``top_p`` 0.0 leave the logits unchanged; ``top_k`` larger than the vocabulary
    keeps everything (the original's ``min(top_k, vocab)``). ``top_k`` and ``top_p`` are scalars.
    """
    logits = jnp.asarray(logits)
    vocab = logits.shape[-1]
    neg_inf = jnp.array(-jnp.inf, logits.dtype)

    # top-k: every logit below the k-th largest goes.
    k = jnp.clip(jnp.asarray(top_k, jnp.int32), 0, vocab)
    logits = lax.cond(k > 0, lambda x: jnp.where(x < _kth_largest(x, k), neg_inf, x), lambda x: x, logits)

    # top-p on the (possibly already top-k filtered) logits, as the original's second branch.
    p = jnp.asarray(top_p, jnp.float32)
    return lax.cond(p > 0.0, lambda x: _nucleus(x, p), lambda x: x, logits)


def sample_token(
    key: jax.Array, logits: jax.Array, temperature: Scalar = 1.0, top_k: Scalar = 0, top_p: Scalar = 0.0
) -> jax.Array:
    """One token per row of ``logits [..., vocab]``: divide by the temperature, filter, sample."""
    logits = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    logits = filter_logits(logits, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
