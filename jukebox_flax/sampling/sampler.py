"""The token loop of one window: prefill the prime into the KV cache, then sample token by token.

The whole window is one jit-compiled function (one ``lax.fori_loop`` over prefill chunks, one
``lax.while_loop`` over tokens, carrying a ``SamplingState``). Every length that changes between
windows (prime length, tokens to sample) and every sampling setting (temperature, top-k, top-p) is a
traced value and every array has the shape of a full context, so one compilation serves every
window of a level; only the batch size, the chunk size and the model itself select a new one.

Randomness: the token at position ``t`` of batch row ``b`` is drawn with
``fold_in(fold_in(key, row_offset + b), t)``, so samples do not depend on the chunk size, on how a
batch is split or on where a window starts its prefill.

The model is any Flax module with two methods (the prior's ``JukeboxPrior`` and ``Autoregressive``):

* ``init_cache(batch, dtype=None) -> cache``, callable on the unbound module (a pytree of zero arrays;
  positions must be fed in order from 0),
* ``decode(inputs, start, cache, x_cond=None, y_cond=None, encoder_kv=None) -> (logits, cache)``
  where ``inputs[:, i]`` is the token at position ``start + i - 1`` (position 0 ignores its input and
  uses the start / artist-genre embedding) and ``logits [B, C, bins]`` predict positions
  ``start .. start + C - 1``.

Single encoder-decoder priors (1b_lyrics style) sample one sequence ``[lyrics ; music]`` in a merged
vocabulary: the lyric tokens (the last ``n_tokens`` entries of y) are always primed first, music
tokens are shifted by ``n_vocab`` going in and shifted back and clamped at 0 coming out, as the
original (which does not forbid lyric tokens at music positions while sampling).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from .errors import SamplingError
from .filter import check_filter_args, sample_token

__all__ = ["SamplingState", "sample_prior", "sample_window", "score_tokens", "window_function",
           "condition_function", "row_keys"]


SPLIT_MAX_BATCH = 2  # largest batch decoded with per-layer (split) weights, see _window_loop


@flax.struct.dataclass
class SamplingState:
    """The carry of the token loop: next position, the token buffer and the KV cache."""

    t: jax.Array  # int32 scalar: the position sampled next
    tokens: jax.Array  # int32 [B, L]: prime, then sampled tokens (merged vocabulary for 1b style)
    cache: Any


def _copy_fits(params) -> bool:
    """Whether a second copy of ``params`` fits in half the free memory of the device (at trace
    time): the accelerator's memory statistics, else the host's available memory (CPUs report no
    statistics); True when neither is known."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # not a POSIX host
            return True
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    return need < 0.5 * free


def row_keys(key: jax.Array, batch: int, row_offset=0) -> jax.Array:
    """One key per batch row, derived from the row's index in the whole batch (``row_offset`` may
    be traced: the window function derives the keys inside its compiled loop)."""
    rows = jnp.asarray(row_offset, jnp.uint32) + jnp.arange(batch, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)


def _decode(module, params, inputs, start, cache, cond):
    return module.apply({"params": params}, inputs, start, cache, method="decode", **cond)


def _window_loop(module, chunk_size: int, with_logits: bool, params, cond: dict, tokens: jax.Array,
                 n_prime: jax.Array, end: jax.Array, key: jax.Array, row_offset: jax.Array, temperature: jax.Array,
                 top_k: jax.Array, top_p: jax.Array, cache: Any):
    """Fill ``tokens[:, n_prime:end]`` given ``tokens[:, :n_prime]``; returns (tokens, cache, logits)
    where logits [B, L, bins] are the model's (unfiltered) logits at positions < end when
    ``with_logits``, else None."""
    batch, length = tokens.shape
    keys = row_keys(key, batch, row_offset)
    # Entries are written before they are read (position t's keys/values are stored when t is
    # decoded, and attention only looks back), but zeroing keeps a reused cache free of old windows.
    cache = jax.tree.map(jnp.zeros_like, cache)
    # inputs of position p = token p - 1; position 0's input is ignored by the model
    shifted = jnp.concatenate([jnp.zeros((batch, 1), tokens.dtype), tokens[:, :-1]], axis=1)
    logits_buf = None
    if with_logits:
        bins = jax.eval_shape(lambda: _decode(module, params, tokens[:, :1], 0, cache, cond)[0]).shape[-1]
        logits_buf = jnp.zeros((batch, length, bins), jnp.float32)

    n_chunks = n_prime // chunk_size

    def prefill(i, carry):
        cache, logits_buf = carry
        start = i * chunk_size
        inputs = jax.lax.dynamic_slice_in_dim(shifted, start, chunk_size, axis=1)
        logits, cache = _decode(module, params, inputs, start, cache, cond)
        if with_logits:
            logits_buf = jax.lax.dynamic_update_slice_in_dim(logits_buf, logits.astype(jnp.float32), start, axis=1)
        return cache, logits_buf

    cache, logits_buf = jax.lax.fori_loop(0, n_chunks, prefill, (cache, logits_buf))

    # Positions from the last full chunk on go one at a time; the prime's tail is forced, not sampled.
    def not_done(carry):
        return carry[0].t < end

    def step(carry):
        state, logits_buf = carry
        t = state.t
        prev = jax.lax.dynamic_slice_in_dim(state.tokens, jnp.maximum(t - 1, 0), 1, axis=1)
        logits, cache = _decode(module, params, prev, t, state.cache, cond)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t.astype(jnp.uint32))
        new = jax.vmap(sample_token, in_axes=(0, 0, None, None, None))(
            step_keys, logits[:, 0], temperature, top_k, top_p)
        old = jax.lax.dynamic_slice_in_dim(state.tokens, t, 1, axis=1)[:, 0]
        token = jnp.where(t < n_prime, old, new)
        tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], t, axis=1)
        if with_logits:
            logits_buf = jax.lax.dynamic_update_slice_in_dim(logits_buf, logits.astype(jnp.float32), t, axis=1)
        return SamplingState(t=t + 1, tokens=tokens, cache=cache), logits_buf

    state = SamplingState(t=(n_chunks * chunk_size).astype(jnp.int32), tokens=tokens, cache=cache)
    state, logits_buf = jax.lax.while_loop(not_done, step, (state, logits_buf))
    return state.tokens, state.cache, logits_buf


@functools.lru_cache(maxsize=None)
def window_function(module, chunk_size: int, with_logits: bool = False):
    """The compiled window sampler of a model (one per module and chunk size; the KV cache is donated).

    Call it as ``fn(params, cond, tokens, n_prime, end, key, row_offset, temperature, top_k, top_p,
    cache)`` -> (tokens, cache, logits or None): ``key`` the window's key (row keys are derived
    inside, see ``row_keys``); ``fn._cache_size()`` counts its compilations. Scalars may be numpy
    scalars (cheaper to pass than jax arrays).
    """
    return jax.jit(functools.partial(_window_loop, module, chunk_size, with_logits), donate_argnames=("cache",))


@functools.lru_cache(maxsize=None)
def condition_function(module):
    """The compiled ``module.condition(y, upper)`` (labels / upper codes -> conditioning tensors)."""

    def condition(params, y, upper):
        cond = module.apply({"params": params}, y, upper, method="condition")
        return {k: cond.get(k) for k in ("x_cond", "y_cond", "encoder_kv")}  # what decode takes

    return jax.jit(condition)


@functools.lru_cache(maxsize=None)
def _zero_cache_function(module, batch: int):
    """The compiled ``module.init_cache(batch)``: one call instead of a dispatch per cache array."""
    return jax.jit(lambda: module.init_cache(batch))


def _prepare(prior, y, upper, prime, batch, cache):
    """Conditioning, the token buffer ([lyrics ; music] in the merged vocabulary for a single
    encoder-decoder) and a cache for one window."""
    config = prior.config
    if prime is None:
        prime = np.zeros((batch if batch is not None else _batch_of(y, upper), 0), np.int32)
    prime = np.asarray(prime)
    if hasattr(prior, "check_inputs"):  # a loaded Prior: clear errors for bad shapes, ids or ranges
        _, y, upper = prior.check_inputs(prime, y, upper)
    batch, n_prime = prime.shape
    if n_prime and (prime.min() < 0 or prime.max() >= config.bins):
        raise SamplingError(f"prime codes must be in [0, {config.bins})")
    # numpy in: the compiled function transfers it faster than separate jnp.asarray calls would
    y = None if y is None else np.asarray(y, np.int32)
    upper = None if upper is None else np.asarray(upper, np.int32)
    cond = condition_function(prior.module)(prior.params, y, upper)
    lyric_len = config.prime_len
    tokens = np.zeros((batch, config.total_ctx), np.int32)
    if lyric_len:
        tokens[:, :lyric_len] = np.asarray(y)[:, -lyric_len:]
        tokens[:, lyric_len : lyric_len + n_prime] = prime + config.n_vocab
    else:
        tokens[:, :n_prime] = prime
    if cache is None:
        # the model's activation dtype (a half-precision model keeps a half-precision cache)
        cache = _zero_cache_function(prior.module, batch)()
    return cond, tokens, lyric_len + n_prime, cache


def sample_window(prior, key: jax.Array, n: int, y=None, upper=None, prime=None, *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 0.0, chunk_size: int = 32, row_offset: int = 0,
                  batch: Optional[int] = None, cache: Any = None, mesh: Any = None) -> tuple[np.ndarray, Any]:
    """``sample_prior`` that also takes and returns the KV cache, so a caller sampling many windows
    reuses (donates) one cache allocation. The returned cache must not be used after passing it."""
    config = prior.config
    check_filter_args(int(top_k), float(top_p))
    if not temperature > 0:
        raise SamplingError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise SamplingError(f"chunk_size must be >= 1, got {chunk_size}")
    n_prime = 0 if prime is None else np.shape(prime)[1]
    if n < 0 or n_prime + n > config.n_ctx:
        raise SamplingError(f"a window holds {config.n_ctx} tokens: cannot add {n} to a prime of {n_prime}")
    cond, tokens, filled, cache = _prepare(prior, y, upper, prime, batch, cache)
    if n == 0:
        return np.asarray(prime, np.int32), cache
    params, cond, tokens, cache = _place(mesh, prior, cond, tokens, cache)
    fn = window_function(prior.module, min(int(chunk_size), config.total_ctx))
    out, cache, _ = fn(params, cond, tokens, np.int32(filled), np.int32(filled + n), key, np.int32(row_offset),
                       np.float32(temperature), np.int32(top_k), np.float32(top_p), cache)
    lyric_len = config.prime_len
    out = _to_host(out)[:, lyric_len : filled + n]
    if lyric_len:
        out = np.maximum(out - config.n_vocab, 0)  # the original's prior_postprocess
    return out.astype(np.int32), cache


def score_tokens(prior, tokens, y=None, upper=None, chunk_size: int = 32, joint: bool = False,
                 mesh: Any = None) -> np.ndarray:
    """Logits of existing tokens computed the way sampling computes them (chunked prefill, then one
    position at a time with the KV cache): float32 [B, T, bins]; for a single encoder-decoder the
    lyric positions come first and the vocabulary is the merged one (as ``Prior.logits``), and
    ``joint=True`` takes ``tokens`` as the whole [lyrics ; music + n_vocab] sequence. For checks."""
    tokens = np.asarray(tokens, np.int32)
    if joint:
        cond, buf, _, cache = _prepare(prior, y, upper, None, tokens.shape[0], None)
        buf[:, : tokens.shape[1]] = tokens
        filled = tokens.shape[1]
    else:
        cond, buf, filled, cache = _prepare(prior, y, upper, tokens, None, None)
    params, cond, buf, cache = _place(mesh, prior, cond, buf, cache)
    fn = window_function(prior.module, min(int(chunk_size), prior.config.total_ctx), True)
    _, _, logits = fn(params, cond, buf, np.int32(filled), np.int32(filled), jax.random.key(0), np.int32(0),
                      np.float32(1.0), np.int32(0), np.float32(0.0), cache)
    return _to_host(logits)[:, :filled]


def sample_prior(prior, key: jax.Array, n: int, y=None, upper=None, prime=None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 0.0, chunk_size: int = 32, row_offset: int = 0,
                 batch: Optional[int] = None, mesh: Any = None) -> np.ndarray:
    """Sample ``n`` new tokens of one window with a prior; returns int32 ``[B, T_prime + n]``.

    Like the original ``SimplePrior.sample`` the result is the prime followed by the new tokens.
    ``prior``: an object with ``config`` (PriorConfig), ``params`` and ``module`` (a ``JukeboxPrior``).
    ``y``: int32 [B, Y] labels of this window; ``upper``: int32 [B, n_ctx / 4] codes of the level
    above aligned with the window (upsamplers); ``prime``: int32 [B, T_prime] existing tokens of the
    window. The logits are divided by ``temperature`` and filtered by ``top_k`` / ``top_p`` as the
    original (``top_k=1`` is greedy). ``chunk_size`` positions are prefilled per transformer call.
    ``row_offset``: the index of the first row in a larger batch (row keys depend on it);
    ``batch``: the number of samples when neither y, upper nor prime gives it.
    ``mesh``: a ``sharding.make_mesh`` mesh: params placed by the sharding rules (a no-op when
    loaded with ``load_prior(..., mesh=mesh)``), batch rows, conditioning and KV cache split over 'data'
    (the batch must be a multiple of it); the results equal the single-device ones.
    """
    tokens, _ = sample_window(prior, key, n, y, upper, prime, temperature=temperature, top_k=top_k,
                              top_p=top_p, chunk_size=chunk_size, row_offset=row_offset, batch=batch,
                              mesh=mesh)
    return tokens


def _place(mesh, prior, cond, tokens, cache):
    """Put the window's arrays on ``mesh`` (None: leave them where they are)."""
    if mesh is None:
        return prior.params, cond, tokens, cache
    from ..sharding import shard_batch, shard_cache, shard_params

    return (shard_params(prior.params, mesh, prior.module.param_axes()), shard_batch(cond, mesh),
            shard_batch(tokens, mesh), shard_cache(cache, mesh))


def _to_host(x) -> np.ndarray:
    """numpy on every process (gathers the rows other hosts hold in a multi-host run)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from ..sharding import to_host

        return to_host(x)
    return np.asarray(x)


def _batch_of(*arrays) -> int:
    for a in arrays:
        if a is not None:
            return int(np.shape(a)[0])
    raise SamplingError("the batch size is unknown: give y, upper, prime or batch")
