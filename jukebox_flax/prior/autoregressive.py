"""The autoregressive token model of a prior (original ``ConditionalAutoregressive2D``).

Interface (other modules code against this)
-------------------------------------------
``Autoregressive`` (a Linen module; build it with ``Autoregressive.from_prior_config(cfg)`` or
``Autoregressive.lyric_encoder(enc_cfg, n_tokens, n_vocab)``) over ``n_ctx`` positions (all of them:
lyrics + music for a single encoder-decoder) and a vocabulary of ``bins`` tokens.

- ``model.apply({'params': p}, tokens, x_cond=None, y_cond=None, encoder_kv=None, return_attn=False)``
  teacher forcing exactly as the original forward. tokens int [B, T] (T <= n_ctx, a multiple of
  block_ctx; normally T = n_ctx); x_cond [B, T, w] or [B, 1, w] or None; y_cond [B, 1, w] (start
  embedding; required iff ``y_cond``); encoder_kv [B, encoder_len, w] (cross layers).
  Returns float32 logits [B, T, bins] (``only_encode``: the final activations [B, T, w]);
  with ``return_attn=True`` returns (logits, {layer index: softmax weights}) in the original's
  recorded layouts (block / prev_block [B*rows, H, bc, bc], transpose [B*bc, H, rows, rows],
  dense [B, H, T, T], cross [B, H, T, enc], prime [B, H, T - prime_len, prime_len]).
- ``model.apply({'params': p}, tokens, x_cond, y_cond, encoder_kv, layers=(n, ...), stop_early=True,
  method=Autoregressive.features)`` -> {n: float32 [B, T, w]}: the same teacher-forced forward,
  returning the residual stream after the first n layers (0 = the transformer's input, depth = its
  output, before the x_cond re-add and the head; ``head(h, x_cond)`` applies those). With
  ``stop_early`` no layer past max(layers) runs.
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

dtype: the transformer's activation dtype (float32, or float16 / bfloat16 to sample as the original's
fp16 mode: residual stream, matmuls and KV cache in that dtype, LayerNorm and softmax in float32);
embedding sums, the conditioning re-add and the output head are always float32.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..config import LyricEncoderConfig, PriorConfig, attention_layout
from ..errors import PriorInputError
from .transformer import LayerSpec, Transformer

__all__ = ["Autoregressive", "PriorInputError"]

Array = jax.Array


def _torch_linear_init(key, shape, dtype=jnp.float32):
    """nn.Linear's default init (kaiming-uniform, a=sqrt(5)) for a [in, out] kernel: U(+-1/sqrt(in))."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Autoregressive(nn.Module):
    """Token embedding + positional embedding + start token, sparse transformer, output head."""

    width: int
    depth: int
    heads: int
    layout: tuple[str, ...]  # attention type per layer
    blocks: Optional[int]
    n_ctx: int  # all positions (lyrics + music for a single encoder-decoder)
    bins: int
    init_scale: float = 1.0
    m_attn: float = 0.25
    m_mlp: float = 1.0
    zero_out: bool = False
    res_scale: bool = False
    merged_decoder: bool = False  # True: untied x_out, conditioning not re-added after the transformer
    prime_len: int = 0  # lyric positions in front (prime layers)
    encoder_len: int = 0  # lyric encoder positions (cross layers)
    only_encode: bool = False
    y_cond: bool = False  # start embedding given (y_cond) instead of a learned start_token
    x_cond: bool = False  # conditioning expected (informative: None means zeros)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_prior_config(
        cls, cfg: PriorConfig, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
    ) -> "Autoregressive":
        """The music model of a prior (``SimplePrior.prior``)."""
        return cls(
            width=cfg.width, depth=cfg.depth, heads=cfg.heads, layout=cfg.attention_layout, blocks=cfg.blocks,
            n_ctx=cfg.total_ctx, bins=cfg.total_bins, init_scale=cfg.init_scale, m_attn=cfg.m_attn,
            m_mlp=cfg.m_mlp, zero_out=cfg.zero_out, res_scale=cfg.res_scale, merged_decoder=cfg.merged_decoder,
            prime_len=cfg.prime_len, encoder_len=cfg.n_tokens if cfg.lyrics == "separate" else 0,
            y_cond=cfg.labels or cfg.lyrics == "single", x_cond=cfg.is_upsampler or cfg.labels,
            dtype=dtype, param_dtype=param_dtype,
        )

    @classmethod
    def lyric_encoder(
        cls, enc: LyricEncoderConfig, n_tokens: int, n_vocab: int, dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ) -> "Autoregressive":
        """The separate lyric encoder of a 5b_lyrics-style prior (``SimplePrior.prime_prior``)."""
        return cls(
            width=enc.width, depth=enc.depth, heads=enc.heads, layout=attention_layout(enc.attn_order, enc.depth),
            blocks=enc.blocks, n_ctx=n_tokens, bins=n_vocab, init_scale=enc.init_scale, m_attn=enc.m_attn,
            m_mlp=enc.m_mlp, zero_out=enc.zero_out, res_scale=enc.res_scale, only_encode=True,
            dtype=dtype, param_dtype=param_dtype,
        )

    # -- modules -------------------------------------------------------------------------------
    @property
    def spec(self) -> LayerSpec:
        return LayerSpec(
            width=self.width, heads=self.heads, n_ctx=self.n_ctx, blocks=self.blocks, m_attn=self.m_attn,
            m_mlp=self.m_mlp, zero_out=self.zero_out, init_scale=self.init_scale,
            res_scale=1.0 / self.depth if self.res_scale else 1.0, prime_len=self.prime_len,
            encoder_len=self.encoder_len, dtype=self.dtype, param_dtype=self.param_dtype,
        )

    def setup(self) -> None:
        if len(self.layout) != self.depth:
            raise PriorInputError(f"layout has {len(self.layout)} layers, depth is {self.depth}")
        s = self.init_scale
        self.x_emb = nn.Embed(self.bins, self.width, embedding_init=nn.initializers.normal(0.02 * s),
                              param_dtype=self.param_dtype)
        if not self.y_cond:
            self.start_token = self.param("start_token", nn.initializers.normal(0.01 * s), (1, self.width),
                                          self.param_dtype)
        self.pos_emb = self.param("pos_emb", nn.initializers.normal(0.01 * s), (self.n_ctx, self.width),
                                  self.param_dtype)
        self.transformer = Transformer(tuple(self.layout), self.spec)
        if self.merged_decoder and not self.only_encode:
            self.x_out = nn.Dense(self.bins, use_bias=False, kernel_init=_torch_linear_init,
                                  param_dtype=self.param_dtype)

    # -- helpers ---------------------------------------------------------------------------------
    def _start_embedding(self, batch: int, y_cond: Optional[Array]) -> Array:
        if self.y_cond:
            if y_cond is None or y_cond.shape != (batch, 1, self.width):
                got = None if y_cond is None else y_cond.shape
                raise PriorInputError(f"y_cond must be [{batch}, 1, {self.width}], got {got}")
            return y_cond.reshape(batch, self.width).astype(jnp.float32)
        if y_cond is not None:
            raise PriorInputError("this model has a learned start token: pass no y_cond")
        return jnp.broadcast_to(self.start_token.astype(jnp.float32), (batch, self.width))

    def _check_cond(self, x_cond: Optional[Array], batch: int, length: int) -> None:
        if x_cond is not None and x_cond.shape not in ((batch, length, self.width), (batch, 1, self.width)):
            raise PriorInputError(f"x_cond must be [{batch}, {length} or 1, {self.width}], got {x_cond.shape}")

    def _head(self, h: Array, cond: Optional[Array]) -> Array:
        """Conditioning re-add (not merged_decoder) and the output head, in float32."""
        if not self.merged_decoder and cond is not None:
            h = h + cond
        if self.only_encode:
            return h
        if self.merged_decoder:
            return self.x_out(h)
        return h @ self.x_emb.embedding.astype(jnp.float32).T

    def head(self, h: Array, x_cond: Optional[Array] = None) -> Array:
        """The output head on the final residual stream h [B, T, w] (``features`` at layer ``depth``):
        float32 logits [B, T, bins], re-adding x_cond first when not ``merged_decoder``."""
        return self._head(h.astype(jnp.float32), None if x_cond is None else x_cond.astype(jnp.float32))

    # -- teacher forcing ----------------------------------------------------------------------
    def _embed(self, tokens: Array, x_cond: Optional[Array], y_cond: Optional[Array]) -> tuple[Array, Optional[Array]]:
        """The transformer's input (shifted token embeddings + start + positions + x_cond) and x_cond (float32)."""
        if tokens.ndim != 2:
            raise PriorInputError(f"tokens must be [batch, time], got shape {tokens.shape}")
        batch, length = tokens.shape
        if length > self.n_ctx:
            raise PriorInputError(f"{length} tokens exceed the context of {self.n_ctx}")
        self._check_cond(x_cond, batch, length)
        emb = self.x_emb.embedding.astype(jnp.float32)[tokens]
        start = self._start_embedding(batch, y_cond)
        h = jnp.concatenate([start[:, None], emb[:, :-1]], axis=1)  # shift right, start at position 0
        h = h + self.pos_emb[:length].astype(jnp.float32)
        cond = None if x_cond is None else x_cond.astype(jnp.float32)
        if cond is not None:
            h = h + cond
        return h, cond

    def __call__(self, tokens: Array, x_cond: Optional[Array] = None, y_cond: Optional[Array] = None,
                 encoder_kv: Optional[Array] = None, return_attn: bool = False):
        h, cond = self._embed(tokens, x_cond, y_cond)
        h, weights = self.transformer(h, encoder_kv, return_attn)
        out = self._head(h, cond)
        return (out, weights) if return_attn else out

    def features(self, tokens: Array, x_cond: Optional[Array] = None, y_cond: Optional[Array] = None,
                 encoder_kv: Optional[Array] = None, layers: tuple[int, ...] = (), stop_early: bool = True
                 ) -> dict[int, Array]:
        """Teacher-forced residual stream after the first n layers, for each n in ``layers``
        (0 = the transformer's input, ``depth`` = its output; as ``__call__``, before the x_cond
        re-add and the head): {n: float32 [B, T, w]}. ``stop_early`` runs no layer past max(layers)."""
        layers = tuple(sorted(set(int(n) for n in layers)))
        if not layers or layers[0] < 0 or layers[-1] > self.depth:
            raise PriorInputError(f"layers must be a non-empty set of layer counts in 0..{self.depth}, got {layers}")
        h, _ = self._embed(tokens, x_cond, y_cond)
        stop = layers[-1] if stop_early else self.depth
        _, feats = self.transformer(h, encoder_kv, collect=layers, stop=stop)
        return feats

    # -- incremental decoding -----------------------------------------------------------------
    def init_cache(self, batch: int, dtype: Any = None) -> dict:
        """Zero KV caches, sized per attention type (see the module docstring)."""
        return Transformer(tuple(self.layout), self.spec, parent=None).init_cache(batch, dtype or self.dtype)

    def cache_bytes(self, batch: int = 1, dtype: Any = None) -> int:
        cache = jax.eval_shape(lambda: self.init_cache(batch, dtype))
        return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(cache)))

    def decode(self, inputs: Array, start: Array, cache: dict, x_cond: Optional[Array] = None,
               y_cond: Optional[Array] = None, encoder_kv: Optional[Array] = None) -> tuple[Array, dict]:
        if inputs.ndim != 2:
            raise PriorInputError(f"inputs must be [batch, chunk], got shape {inputs.shape}")
        batch, chunk = inputs.shape
        self._check_cond(x_cond, batch, self.n_ctx)
        start = jnp.asarray(start, jnp.int32)
        pos = start + jnp.arange(chunk)
        emb = self.x_emb.embedding.astype(jnp.float32)[inputs]
        first = self._start_embedding(batch, y_cond)
        h = jnp.where((pos == 0)[None, :, None], first[:, None, :], emb)
        h = h + lax.dynamic_slice_in_dim(self.pos_emb, start, chunk, axis=0).astype(jnp.float32)
        cond = None
        if x_cond is not None:
            cond = x_cond.astype(jnp.float32)
            if cond.shape[1] != 1:
                cond = lax.dynamic_slice_in_dim(cond, start, chunk, axis=1)
            h = h + cond
        h, cache = self.transformer(h, encoder_kv, start=start, cache=cache)
        return self._head(h, cond), cache
