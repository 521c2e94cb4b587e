"""The token loop of one window, shaped as gemma's sampler: ``prefill`` the prime into the KV cache,
then ``sample`` token by token.

``WindowSampler(model, chunk_size)`` is a frozen (hashable) dataclass whose two methods are jitted
with ``self`` static: jit's own cache is the only cache of compiled functions, one entry per model,
chunk size and batch size. ``prefill`` runs the prime through the model (one ``lax.fori_loop`` over
full chunks, then the prime's tail one position at a time) and returns a ``SamplingState``;
``sample`` carries that state through one ``lax.while_loop`` until the window's end. Every length
that changes between windows (prime length, tokens to sample) and every setting of
``SamplingParams`` (temperature, top-k, top-p) is a traced value and every array has the shape of a
full context, so one compilation of each serves every window of a level. The KV cache is donated
to ``prefill`` and the state to ``sample``: a caller sampling many windows reuses one allocation,
and nothing waits on the host between tokens.

Randomness: the token at position ``t`` of batch row ``b`` is drawn with
``fold_in(fold_in(key, row_offset + b), t)``, so samples do not depend on the chunk size, on how a
batch is split or on where a window starts its prefill.

The model is a Flax module satisfying ``DecodeModel`` (the prior's ``JukeboxPrior``, the tests' toy
model), called as ``model.apply({'params': p}, ..., method='decode')``.

Single encoder-decoder priors (1b_lyrics style) sample one sequence ``[lyrics ; music]`` in a merged
vocabulary: the lyric tokens (the last ``n_tokens`` entries of y) are always primed first, music
tokens are shifted by ``n_vocab`` going in and shifted back and clamped at 0 coming out, as the
original (which does not forbid lyric tokens at music positions while sampling).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ..sharding import shard_batch, shard_cache, shard_params, to_host
from .errors import SamplingError
from .filter import check_filter_args, sample_token

__all__ = [
    "DecodeModel",
    "LoadedModel",
    "SamplingParams",
    "SamplingState",
    "WindowSampler",
    "condition",
    "init_cache",
    "row_keys",
    "sample_prior",
    "sample_window",
    "score_tokens",
]

_DECODE_INPUTS = ("x_cond", "y_cond", "encoder_kv")  # the conditioning tensors decode takes


class DecodeModel(Protocol):
    """What the sampler needs of a model (a Flax module; methods run through ``apply``).

    * ``init_cache(batch, dtype=None)``: zero KV caches, callable on the unbound module (positions
      are fed in order from 0);
    * ``decode(inputs, start, cache, x_cond, y_cond, encoder_kv) -> (logits, cache)``:
      ``inputs[:, i]`` is the token at position ``start + i - 1`` (position 0 ignores its input and
      uses the start / artist-genre embedding) and ``logits [B, C, bins]`` predict positions
      ``start .. start + C - 1``; the call at position 0 fills what the cache keeps of
      ``encoder_kv``, and later calls may pass ``encoder_kv=None`` (the token loop does);
    * ``condition(y, upper)``: labels / codes of the level above -> a dict holding at least the
      tensors ``decode`` takes (``x_cond`` full length [B, total_ctx, W], ``y_cond``, ``encoder_kv``).
    """

    def init_cache(self, batch: int, dtype: Any = None) -> Any: ...

    def decode(
        self,
        inputs: jax.Array,
        start: Any,
        cache: Any,
        x_cond: jax.Array | None = None,
        y_cond: jax.Array | None = None,
        encoder_kv: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]: ...

    def condition(self, y: jax.Array | None, upper: jax.Array | None) -> dict: ...

    def param_axes(self) -> Any: ...

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...


class LoadedModel(Protocol):
    """A model with its params, as ``sample_prior`` takes it (``prior.api.Prior``, the tests' toy handle).

    ``config`` has ``bins``, ``n_ctx``, ``total_ctx``, ``prime_len`` and ``n_vocab``;
    ``check_inputs(tokens, y, upper)`` validates them and returns int32 numpy arrays (None stays None).
    """

    @property
    def config(self) -> Any: ...

    @property
    def params(self) -> Any: ...

    @property
    def module(self) -> DecodeModel: ...

    def check_inputs(self, tokens: Any = None, y: Any = None, upper: Any = None) -> tuple: ...


@flax.struct.dataclass
class SamplingParams:
    """Temperature, top-k and top-p (0 switches a filter off), traced: one compile serves them all."""

    temperature: jax.Array  # float32 scalar
    top_k: jax.Array  # int32 scalar
    top_p: jax.Array  # float32 scalar

    @classmethod
    def make(cls, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0) -> SamplingParams:
        """Checked host values (numpy scalars: cheaper to pass to jit than jax arrays)."""
        check_filter_args(int(top_k), float(top_p))
        if not temperature > 0:
            raise SamplingError(f"temperature must be > 0, got {temperature}")
        return cls(np.float32(temperature), np.int32(top_k), np.float32(top_p))


@flax.struct.dataclass
class SamplingState:
    """The carry of the token loop."""

    t: jax.Array  # int32 scalar: the position sampled next
    tokens: jax.Array  # int32 [B, L]: prime, then sampled tokens (merged vocabulary for 1b style)
    cache: Any  # the model's KV cache, filled below t
    keys: jax.Array | None  # [B] row keys (None when only scoring)
    logits: jax.Array | None = None  # float32 [B, L, bins]: the model's logits below t, when asked for


def row_keys(key: jax.Array, batch: int, row_offset: Any = 0) -> jax.Array:
    """One key per batch row, derived from the row's index in the whole batch (``row_offset`` may
    be traced: ``prefill`` derives the keys inside its compiled program)."""
    rows = jnp.asarray(row_offset, jnp.uint32) + jnp.arange(batch, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)


@partial(jax.jit, static_argnames="model")
def condition(model: DecodeModel, params: Any, y: jax.Array | None, upper: jax.Array | None) -> dict:
    """``model.condition(y, upper)`` restricted to the tensors ``decode`` takes."""
    cond = model.apply({"params": params}, y, upper, method="condition")
    return {k: cond.get(k) for k in _DECODE_INPUTS}


@partial(jax.jit, static_argnames=("model", "batch"))
def init_cache(model: DecodeModel, batch: int) -> Any:
    """``model.init_cache(batch)`` in the model's activation dtype, as one program (one call
    instead of a dispatch per cache array)."""
    return model.init_cache(batch)


@dataclass(frozen=True)
class WindowSampler:
    """The compiled prefill and token loop of a model; ``chunk_size`` prime positions per model call."""

    model: DecodeModel
    chunk_size: int

    def _decode(self, params: Any, inputs: jax.Array, start: Any, cache: Any, cond: dict) -> tuple[jax.Array, Any]:
        return self.model.apply({"params": params}, inputs, start, cache, method="decode", **cond)

    @partial(jax.jit, static_argnames=("self", "with_logits"), donate_argnames="cache")
    def prefill(
        self,
        params: Any,
        cond: dict,
        tokens: jax.Array,
        n_prime: jax.Array,
        cache: Any,
        key: jax.Array | None = None,
        row_offset: Any = 0,
        with_logits: bool = False,
    ) -> SamplingState:
        """Run positions ``< n_prime`` of ``tokens [B, L]`` (and position 0 in any case) through the
        model into ``cache`` (its old contents are discarded); the state samples position
        ``n_prime`` next. ``key``: the window's key, from which the row keys ``sample`` draws with
        are derived (``row_keys``; None: the state can only be scored); ``with_logits``: keep the
        logits of every position (``state.logits``)."""
        batch, length = tokens.shape
        keys = None if key is None else row_keys(key, batch, row_offset)
        chunk = self.chunk_size
        # Entries are written before they are read (position t's keys/values are stored when t is
        # decoded, and attention only looks back), but zeroing keeps a reused cache free of old windows.
        cache = jax.tree.map(jnp.zeros_like, cache)
        # inputs of position p = token p - 1; position 0's input is ignored by the model
        shifted = jnp.concatenate([jnp.zeros((batch, 1), tokens.dtype), tokens[:, :-1]], axis=1)
        logits_buf = None
        if with_logits:
            shape = jax.eval_shape(lambda: self._decode(params, tokens[:, :1], 0, cache, cond)[0]).shape
            logits_buf = jnp.zeros((batch, length, shape[-1]), jnp.float32)

        def run(start, width, carry):
            cache, logits_buf = carry
            inputs = jax.lax.dynamic_slice_in_dim(shifted, start, width, axis=1)
            logits, cache = self._decode(params, inputs, start, cache, cond)
            if with_logits:
                logits_buf = jax.lax.dynamic_update_slice_in_dim(logits_buf, logits.astype(jnp.float32), start, axis=1)
            return cache, logits_buf

        # full chunks, then the prime's tail one position at a time (as the token loop decodes).
        # Position 0 always runs: it fills the cross-attention caches from encoder_kv, so that the
        # token loop never has to (its input is ignored, so with no prime the token loop's
        # recomputation of position 0 writes the same keys and values again).
        n_chunks = n_prime // chunk
        carry = jax.lax.fori_loop(0, n_chunks, lambda i, c: run(i * chunk, chunk, c), (cache, logits_buf))
        tail_end = jnp.maximum(n_prime, 1)
        cache, logits_buf = jax.lax.fori_loop(n_chunks * chunk, tail_end, lambda t, c: run(t, 1, c), carry)
        return SamplingState(
            t=jnp.asarray(n_prime, jnp.int32), tokens=tokens, cache=cache, keys=keys, logits=logits_buf
        )

    @partial(jax.jit, static_argnames="self", donate_argnames="state")
    def sample(
        self, params: Any, cond: dict, state: SamplingState, end: jax.Array, sampling: SamplingParams
    ) -> SamplingState:
        """Sample positions ``state.t .. end - 1`` into ``state.tokens`` (needs ``state.keys``)."""
        if state.keys is None:
            raise SamplingError("sampling needs row keys: pass the key to prefill")
        # prefill filled the cross-attention caches: without encoder_kv a step does not re-check
        # (a conditional there copies every cross-attention cache at every step)
        step_cond = {**cond, "encoder_kv": None}

        def step(state: SamplingState) -> SamplingState:
            t = state.t
            prev = jax.lax.dynamic_slice_in_dim(state.tokens, jnp.maximum(t - 1, 0), 1, axis=1)
            logits, cache = self._decode(params, prev, t, state.cache, step_cond)
            keys = state.keys
            assert keys is not None  # checked above; the carry keeps it
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t.astype(jnp.uint32))
            token = jax.vmap(sample_token, in_axes=(0, 0, None, None, None))(
                step_keys, logits[:, 0], sampling.temperature, sampling.top_k, sampling.top_p
            )
            tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], t, axis=1)
            logits_buf = state.logits
            if logits_buf is not None:
                logits_buf = jax.lax.dynamic_update_slice_in_dim(logits_buf, logits.astype(jnp.float32), t, axis=1)
            return dataclasses.replace(state, t=t + 1, tokens=tokens, cache=cache, logits=logits_buf)

        return jax.lax.while_loop(lambda s: s.t < end, step, state)


def _prepare(prior: LoadedModel, y: Any, upper: Any, prime: Any, batch: int | None, cache: Any):
    """Conditioning, the token buffer ([lyrics ; music] in the merged vocabulary for a single
    encoder-decoder) and a cache for one window."""
    config = prior.config
    if prime is None:
        prime = np.zeros((batch if batch is not None else _batch_of(y, upper), 0), np.int32)
    prime = np.asarray(prime)
    # clear errors for bad shapes, ids or ranges; numpy out: the compiled function transfers it
    # faster than separate jnp.asarray calls would
    _, y, upper = prior.check_inputs(prime, y, upper)
    batch, n_prime = prime.shape
    if n_prime and (prime.min() < 0 or prime.max() >= config.bins):
        raise SamplingError(f"prime codes must be in [0, {config.bins})")
    cond = condition(prior.module, prior.params, y, upper)
    lyric_len = config.prime_len
    tokens = np.zeros((batch, config.total_ctx), np.int32)
    if lyric_len:
        tokens[:, :lyric_len] = np.asarray(y)[:, -lyric_len:]
        tokens[:, lyric_len : lyric_len + n_prime] = prime + config.n_vocab
    else:
        tokens[:, :n_prime] = prime
    if cache is None:
        cache = init_cache(prior.module, batch)
    return cond, tokens, lyric_len + n_prime, cache


def _sampler(prior: LoadedModel, chunk_size: int) -> WindowSampler:
    if chunk_size < 1:
        raise SamplingError(f"chunk_size must be >= 1, got {chunk_size}")
    return WindowSampler(prior.module, min(int(chunk_size), prior.config.total_ctx))


def sample_window(
    prior: LoadedModel,
    key: jax.Array,
    n: int,
    y: Any = None,
    upper: Any = None,
    prime: Any = None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    chunk_size: int = 32,
    row_offset: int = 0,
    batch: int | None = None,
    cache: Any = None,
    mesh: Any = None,
) -> tuple[np.ndarray, Any]:
    """``sample_prior`` that also takes and returns the KV cache, so a caller sampling many windows
    reuses (donates) one cache allocation. The returned cache must not be used after passing it."""
    config = prior.config
    sampling = SamplingParams.make(temperature, top_k, top_p)
    sampler = _sampler(prior, chunk_size)
    n_prime = 0 if prime is None else np.shape(prime)[1]
    if n < 0 or n_prime + n > config.n_ctx:
        raise SamplingError(f"a window holds {config.n_ctx} tokens: cannot add {n} to a prime of {n_prime}")
    cond, tokens, filled, cache = _prepare(prior, y, upper, prime, batch, cache)
    if n == 0:
        return np.asarray(prime, np.int32), cache
    params, cond, tokens, cache = _place(mesh, prior, cond, tokens, cache)
    state = sampler.prefill(params, cond, tokens, np.int32(filled), cache, key, np.int32(row_offset))
    state = sampler.sample(params, cond, state, np.int32(filled + n), sampling)
    lyric_len = config.prime_len
    out = _to_host(state.tokens)[:, lyric_len : filled + n]
    if lyric_len:
        out = np.maximum(out - config.n_vocab, 0)  # the original's prior_postprocess
    return out.astype(np.int32), state.cache


def score_tokens(
    prior: LoadedModel,
    tokens: Any,
    y: Any = None,
    upper: Any = None,
    chunk_size: int = 32,
    joint: bool = False,
    mesh: Any = None,
) -> np.ndarray:
    """Logits of existing tokens computed the way sampling computes them (chunked prefill, the tail
    one position at a time with the KV cache): float32 [B, T, bins]; for a single encoder-decoder the
    lyric positions come first and the vocabulary is the merged one (as ``Prior.logits``), and
    ``joint=True`` takes ``tokens`` as the whole [lyrics ; music + n_vocab] sequence. For checks."""
    sampler = _sampler(prior, chunk_size)
    tokens = np.asarray(tokens, np.int32)
    if joint:
        cond, buf, _, cache = _prepare(prior, y, upper, None, tokens.shape[0], None)
        buf[:, : tokens.shape[1]] = tokens
        filled = tokens.shape[1]
    else:
        cond, buf, filled, cache = _prepare(prior, y, upper, tokens, None, None)
    params, cond, buf, cache = _place(mesh, prior, cond, buf, cache)
    state = sampler.prefill(params, cond, buf, np.int32(filled), cache, with_logits=True)
    return _to_host(state.logits)[:, :filled]


def sample_prior(
    prior: LoadedModel,
    key: jax.Array,
    n: int,
    y: Any = None,
    upper: Any = None,
    prime: Any = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    chunk_size: int = 32,
    row_offset: int = 0,
    batch: int | None = None,
    mesh: Any = None,
) -> np.ndarray:
    """Sample ``n`` new tokens of one window with a prior; returns int32 ``[B, T_prime + n]``.

    Like the original ``SimplePrior.sample`` the result is the prime followed by the new tokens.
    ``prior``: a ``LoadedModel`` (a loaded ``Prior``: config, params, module).
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
    tokens, _ = sample_window(
        prior,
        key,
        n,
        y,
        upper,
        prime,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        chunk_size=chunk_size,
        row_offset=row_offset,
        batch=batch,
        mesh=mesh,
    )
    return tokens


def _place(mesh: Any, prior: LoadedModel, cond: dict, tokens: Any, cache: Any) -> tuple:
    """Put the window's arrays on ``mesh`` (None: leave them where they are)."""
    if mesh is None:
        return prior.params, cond, tokens, cache
    return (
        shard_params(prior.params, mesh, prior.module.param_axes()),
        shard_batch(cond, mesh),
        shard_batch(tokens, mesh),
        shard_cache(cache, mesh),
    )


def _to_host(x: Any) -> np.ndarray:
    """numpy on every process (gathers the rows other hosts hold in a multi-host run)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return to_host(x)
    return np.asarray(x)


def _batch_of(*arrays: Any) -> int:
    for a in arrays:
        if a is not None:
            return int(np.shape(a)[0])
    raise SamplingError("the batch size is unknown: give y, upper, prime or batch")
