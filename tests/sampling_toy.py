"""A tiny causal model with the prior's sampling interface (condition / init_cache / decode), used
to test the sampling engine independently of the real transformer."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class ToyConfig:
    n_ctx: int = 24
    bins: int = 11
    width: int = 16
    n_tokens: int = 0  # > 0: a single encoder-decoder with a lyric prefix
    n_vocab: int = 5
    cond_downsample: int = 4
    level: int = 2
    hop_length: int = 128

    @property
    def prime_len(self) -> int:
        return self.n_tokens

    @property
    def total_ctx(self) -> int:
        return self.n_ctx + self.n_tokens

    @property
    def total_bins(self) -> int:
        return self.bins + (self.n_vocab if self.n_tokens else 0)


class ToyPrior(nn.Module):
    """Embeddings + a causal running mean over a position-indexed cache + an output head."""

    config: ToyConfig

    def setup(self):
        c = self.config
        self.x_emb = nn.Embed(c.total_bins, c.width)
        self.y_emb = nn.Embed(64, c.width)
        self.pos = self.param("pos", nn.initializers.normal(1.0), (c.total_ctx, c.width))
        self.mix = nn.Dense(c.width)
        self.out = nn.Dense(c.total_bins)

    def condition(self, y, upper):
        c = self.config
        b = y.shape[0]
        y_cond = self.y_emb(jnp.abs(y[:, :1]) % 64)  # [B, 1, w]
        x_cond = jnp.zeros((b, c.total_ctx, c.width)) + 0.1 * self.y_emb(jnp.abs(y[:, 1:2]) % 64)
        if upper is not None:
            up = jnp.repeat(self.y_emb(upper % 64), c.cond_downsample, axis=1)
            x_cond = x_cond.at[:, c.n_tokens :].add(up)
        return dict(x_cond=x_cond, y_cond=y_cond, encoder_kv=None)

    def init_cache(self, batch, dtype=None):
        c = self.config
        return {"h": jnp.zeros((batch, c.total_ctx, c.width), dtype or jnp.float32)}

    def decode(self, inputs, start, cache, x_cond=None, y_cond=None, encoder_kv=None):
        c = self.config
        positions = start + jnp.arange(inputs.shape[1])
        h = self.x_emb(inputs)
        h = jnp.where((positions == 0)[None, :, None], y_cond, h)
        h = h + self.pos[positions] + jnp.take(x_cond, positions, axis=1)
        hs = jax.lax.dynamic_update_slice_in_dim(cache["h"], h, start, axis=1)
        mask = (jnp.arange(c.total_ctx)[None, :] <= positions[:, None]).astype(h.dtype)
        ctx = jnp.einsum("cl,bld->bcd", mask / mask.sum(-1, keepdims=True), hs)
        logits = self.out(jnp.tanh(self.mix(ctx)) + h)
        return logits.astype(jnp.float32), {"h": hs}

    def __call__(self, tokens, y, upper=None):
        return self.teacher_forced(tokens, **self.condition(y, upper))

    def teacher_forced(self, tokens, x_cond=None, y_cond=None, encoder_kv=None):
        """Logits of every position of ``tokens [B, T]`` (no cache reuse)."""
        shifted = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
        cache = self.init_cache(tokens.shape[0], jnp.float32)
        return self.decode(shifted, 0, cache, x_cond, y_cond)[0]


@dataclass
class ToyPriorHandle:
    """What sample_prior needs from a loaded prior (``sampler.LoadedModel``): config, params, module
    and input checks (here only the conversion to int32 numpy arrays)."""

    config: ToyConfig
    params: dict
    module: ToyPrior

    def check_inputs(self, tokens=None, y=None, upper=None) -> tuple:
        return tuple(None if x is None else np.asarray(x, np.int32) for x in (tokens, y, upper))


def make_toy(config: ToyConfig = ToyConfig(), seed: int = 0) -> ToyPriorHandle:
    module = ToyPrior(config)
    y = jnp.zeros((2, 9 + config.n_tokens), jnp.int32)
    upper = jnp.zeros((2, config.n_ctx // config.cond_downsample), jnp.int32)
    tokens = jnp.zeros((2, config.total_ctx), jnp.int32)
    params = module.init(jax.random.key(seed), tokens, y, upper)["params"]
    return ToyPriorHandle(config, params, module)


def greedy_reference(handle: ToyPriorHandle, y, upper, prime: np.ndarray, n: int) -> np.ndarray:
    """Greedy decoding by re-running the teacher-forced model for every new token (no KV cache)."""
    c = handle.config
    cond = handle.module.apply(
        {"params": handle.params}, jnp.asarray(y), None if upper is None else jnp.asarray(upper), method="condition"
    )
    forward = jax.jit(
        lambda tokens: handle.module.apply({"params": handle.params}, tokens, method="teacher_forced", **cond)
    )
    seq = np.asarray(prime, np.int64)
    if c.n_tokens:
        seq = np.concatenate([np.asarray(y)[:, -c.n_tokens :], seq + c.n_vocab], axis=1)
    for _ in range(n):
        # a full-length buffer (one compilation); causal, so the padding never matters
        buf = np.zeros((seq.shape[0], c.total_ctx), np.int32)
        buf[:, : seq.shape[1]] = seq
        logits = np.asarray(forward(jnp.asarray(buf)))[:, seq.shape[1]]
        seq = np.concatenate([seq, np.argmax(logits, -1)[:, None]], axis=1)
    if c.n_tokens:
        seq = np.maximum(seq[:, c.n_tokens :] - c.n_vocab, 0)
    return seq
