"""The autoregressive token model of a prior (original ``ConditionalAutoregressive2D``).

Interface (other modules code against this)
-------------------------------------------
``Autoregressive(config, scan_layers=True)`` (a Linen module; ``config`` a ``TransformerConfig``, built
by ``TransformerConfig.from_prior(prior_config)`` or ``.from_prior(prior_config, lyric_encoder=True)``)
over ``config.n_ctx`` positions (all of them: lyrics + music for a single encoder-decoder) and a
vocabulary of ``config.bins`` tokens. ``scan_layers``: see ``transformer.py`` (same results);
``remat`` ('none', 'attention', 'block'): what the transformer recomputes per layer in the backward
pass (training memory; same params and results).

- ``model.apply({'params': p}, tokens, x_cond=None, y_cond=None, encoder_kv=None)``: teacher forcing
  exactly as the original forward. tokens int [B, T] (T <= n_ctx, a multiple of block_ctx; normally
  T = n_ctx); x_cond [B, T, w] or [B, 1, w] or None; y_cond [B, 1, w] (start embedding; required iff
  ``config.y_cond``); encoder_kv [B, encoder_len, w] (cross layers). Returns float32 logits
  [B, T, bins] (``only_encode``: the final activations [B, T, w]).
- ``method=Autoregressive.attention_weights`` (same arguments) -> (logits, {layer index: softmax
  weights}) in the original's recorded layouts (block / prev_block [B*rows, H, bc, bc], transpose
  [B*bc, H, rows, rows], dense [B, H, T, T], cross [B, H, T, enc], prime [B, H, T - prime_len, prime_len]).
- ``method=Autoregressive.features`` (tokens, x_cond, y_cond, encoder_kv, layers=(n, ...),
  stop_early=True) -> {n: float32 [B, T, w]}: the same teacher-forced forward, returning the residual
  stream after the first n layers (0 = the transformer's input, depth = its output, before the x_cond
  re-add and the head; ``head(h, x_cond)`` applies those). With ``stop_early`` no layer past
  max(layers) runs.
- ``cache = model.init_cache(batch, dtype)`` (a plain method: no params needed) -> a pytree of
  zero arrays with static shapes (see ``transformer.py``): per layer ``{'k', 'v'}`` of shape
  [R, B, S, n_state], S per attention type as the original keeps it: dense/transpose n_ctx,
  block block_ctx, prev_block 2*block_ctx, prime (prime_len // blocks + 1) * blocks, cross encoder_len.
  ``model.cache_bytes(batch, dtype)`` gives its size.
- ``logits, cache = model.apply({'params': p}, inputs, start, cache, x_cond=None, y_cond=None,
  encoder_kv=None, method=Autoregressive.decode)``: C = inputs.shape[1] new positions
  ``start .. start+C-1`` (``start`` a traced int32 scalar: one compilation serves every position).
  ``inputs[:, i]`` is the token at position start+i-1 (position 0 uses the start / y_cond embedding
  and ignores inputs[:, 0]). x_cond is the FULL conditioning [B, n_ctx, w] (or [B, 1, w], or None):
  it is sliced inside. Returns float32 logits [B, C, bins] for those positions and the new cache.
  C = 1 is a sampling step; C > 1 is chunked priming (same logits as the full forward). Positions
  must be fed in order from 0 (the cache holds no position counter: ``start`` is the position).
  Cross layers compute ``c_enc_kv(encoder_kv)`` into their cache when ``start == 0`` (under
  ``lax.cond``, so pass the same encoder_kv on every call; it costs nothing afterwards).
  Works under jit with the cache donated and inside lax loops.

Parameters (plain nested dict): ``x_emb/embedding`` [bins, w]; ``start_token`` [1, w] (only without
``y_cond``); ``pos_emb`` [n_ctx, w]; ``x_out/kernel`` [w, bins] (only when ``merged_decoder``: else the
output head is tied to x_emb); ``transformer/...`` (see ``transformer.py``: scanned runs
``layers_{a}_{b}/unit_{j}`` with a leading stack axis, single layers ``layer_{i}``).
``convert/transformer_keys.py`` maps the original state-dict keys to this tree and back.

dtype (``config.dtype``): the transformer's activation dtype (float32, or float16 / bfloat16 to sample
as the original's fp16 mode: residual stream, matmuls and KV cache in that dtype, LayerNorm and
softmax in float32); embedding sums, the conditioning re-add and the output head are always float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..errors import PriorInputError
from .transformer import Transformer, TransformerConfig, cache_bytes, init_cache, partitioned

__all__ = ["Autoregressive", "PriorInputError", "TransformerConfig"]

Array = jax.Array


def _torch_linear_init(key, shape, dtype=jnp.float32):
    """nn.Linear's default init (kaiming-uniform, a=sqrt(5)) for a [in, out] kernel: U(+-1/sqrt(in))."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Autoregressive(nn.Module):
    """Token embedding + positional embedding + start token, sparse transformer, output head."""

    config: TransformerConfig
    scan_layers: bool = True
    remat: str = "none"  # the transformer's per-layer recomputation in the backward pass (``transformer.remat_block``)

    def setup(self) -> None:
        c = self.config
        s = c.init_scale
        self.x_emb = nn.Embed(
            c.bins,
            c.width,
            param_dtype=c.param_dtype,
            embedding_init=partitioned(nn.initializers.normal(0.02 * s), ("vocab", "embed")),
        )
        if not c.y_cond:
            self.start_token = self.param(
                "start_token",
                partitioned(nn.initializers.normal(0.01 * s), (None, "embed")),
                (1, c.width),
                c.param_dtype,
            )
        self.pos_emb = self.param(
            "pos_emb",
            partitioned(nn.initializers.normal(0.01 * s), ("ctx", "embed")),
            (c.n_ctx, c.width),
            c.param_dtype,
        )
        self.transformer = Transformer(c, self.scan_layers, self.remat)
        if c.merged_decoder and not c.only_encode:
            self.x_out = nn.Dense(
                c.bins,
                use_bias=False,
                param_dtype=c.param_dtype,
                kernel_init=partitioned(_torch_linear_init, ("embed", "vocab")),
            )

    # -- helpers ---------------------------------------------------------------------------------
    def _start_embedding(self, batch: int, y_cond: Array | None) -> Array:
        width = self.config.width
        if self.config.y_cond:
            if y_cond is None or y_cond.shape != (batch, 1, width):
                got = None if y_cond is None else y_cond.shape
                raise PriorInputError(f"y_cond must be [{batch}, 1, {width}], got {got}")
            return y_cond.reshape(batch, width).astype(jnp.float32)
        if y_cond is not None:
            raise PriorInputError("this model has a learned start token: pass no y_cond")
        return jnp.broadcast_to(self.start_token.astype(jnp.float32), (batch, width))

    def _check_cond(self, x_cond: Array | None, batch: int, length: int) -> None:
        w = self.config.width
        if x_cond is not None and x_cond.shape not in ((batch, length, w), (batch, 1, w)):
            raise PriorInputError(f"x_cond must be [{batch}, {length} or 1, {w}], got {x_cond.shape}")

    def _head(self, h: Array, cond: Array | None) -> Array:
        """Conditioning re-add (not merged_decoder) and the output head, in float32."""
        c = self.config
        if not c.merged_decoder and cond is not None:
            h = h + cond
        if c.only_encode:
            return h
        if c.merged_decoder:
            return self.x_out(h)
        return h @ self.x_emb.embedding.astype(jnp.float32).T

    def head(self, h: Array, x_cond: Array | None = None) -> Array:
        """The output head on the final residual stream h [B, T, w] (``features`` at layer ``depth``):
        float32 logits [B, T, bins], re-adding x_cond first when not ``merged_decoder``."""
        return self._head(h.astype(jnp.float32), None if x_cond is None else x_cond.astype(jnp.float32))

    # -- teacher forcing ----------------------------------------------------------------------
    def _embed(self, tokens: Array, x_cond: Array | None, y_cond: Array | None) -> tuple[Array, Array | None]:
        """The transformer's input (shifted token embeddings + start + positions + x_cond) and x_cond (float32)."""
        if tokens.ndim != 2:
            raise PriorInputError(f"tokens must be [batch, time], got shape {tokens.shape}")
        batch, length = tokens.shape
        if length > self.config.n_ctx:
            raise PriorInputError(f"{length} tokens exceed the context of {self.config.n_ctx}")
        self._check_cond(x_cond, batch, length)
        emb = self.x_emb.embedding[tokens].astype(jnp.float32)
        start = self._start_embedding(batch, y_cond)
        h = jnp.concatenate([start[:, None], emb[:, :-1]], axis=1)  # shift right, start at position 0
        h = h + self.pos_emb[:length].astype(jnp.float32)
        cond = None if x_cond is None else x_cond.astype(jnp.float32)
        if cond is not None:
            h = h + cond
        return h, cond

    def __call__(
        self, tokens: Array, x_cond: Array | None = None, y_cond: Array | None = None, encoder_kv: Array | None = None
    ) -> Array:
        h, cond = self._embed(tokens, x_cond, y_cond)
        h, _ = self.transformer(h, encoder_kv)
        return self._head(h, cond)

    def attention_weights(
        self, tokens: Array, x_cond: Array | None = None, y_cond: Array | None = None, encoder_kv: Array | None = None
    ) -> tuple[Array, dict[int, Array]]:
        """(``__call__``'s output, {layer index: softmax weights})."""
        h, cond = self._embed(tokens, x_cond, y_cond)
        h, weights = self.transformer.attention_weights(h, encoder_kv)
        return self._head(h, cond), weights

    def features(
        self,
        tokens: Array,
        x_cond: Array | None = None,
        y_cond: Array | None = None,
        encoder_kv: Array | None = None,
        layers: tuple[int, ...] = (),
        stop_early: bool = True,
    ) -> dict[int, Array]:
        """Teacher-forced residual stream after the first n layers, for each n in ``layers``
        (0 = the transformer's input, ``depth`` = its output; as ``__call__``, before the x_cond
        re-add and the head): {n: float32 [B, T, w]}. ``stop_early`` runs no layer past max(layers)."""
        depth = self.config.depth
        layers = tuple(sorted(set(int(n) for n in layers)))
        if not layers or layers[0] < 0 or layers[-1] > depth:
            raise PriorInputError(f"layers must be a non-empty set of layer counts in 0..{depth}, got {layers}")
        h, _ = self._embed(tokens, x_cond, y_cond)
        return self.transformer.features(h, encoder_kv, layers, layers[-1] if stop_early else depth)

    # -- incremental decoding -----------------------------------------------------------------
    @nn.nowrap
    def init_cache(self, batch: int, dtype: Any = None) -> dict:
        """Zero KV caches, sized per attention type (see the module docstring)."""
        return init_cache(self.config, batch, dtype)

    @nn.nowrap
    def cache_bytes(self, batch: int = 1, dtype: Any = None) -> int:
        return cache_bytes(self.config, batch, dtype)

    def decode(
        self,
        inputs: Array,
        start: Array,
        cache: dict,
        x_cond: Array | None = None,
        y_cond: Array | None = None,
        encoder_kv: Array | None = None,
    ) -> tuple[Array, dict]:
        if inputs.ndim != 2:
            raise PriorInputError(f"inputs must be [batch, chunk], got shape {inputs.shape}")
        batch, chunk = inputs.shape
        self._check_cond(x_cond, batch, self.config.n_ctx)
        start = jnp.asarray(start, jnp.int32)
        pos = start + jnp.arange(chunk)
        emb = self.x_emb.embedding[inputs].astype(jnp.float32)
        first = self._start_embedding(batch, y_cond)
        h = jnp.where((pos == 0)[None, :, None], first[:, None, :], emb)
        h = h + lax.dynamic_slice_in_dim(self.pos_emb, start, chunk, axis=0).astype(jnp.float32)
        cond = None
        if x_cond is not None:
            cond = x_cond.astype(jnp.float32)
            if cond.shape[1] != 1:
                cond = lax.dynamic_slice_in_dim(cond, start, chunk, axis=1)
            h = h + cond
        h, new_cache = self.transformer(h, encoder_kv, cache=cache, start=start)
        assert new_cache is not None
        return self._head(h, cond), new_cache
