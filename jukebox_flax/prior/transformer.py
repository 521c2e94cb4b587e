"""The sparse transformer of a Jukebox prior: pre-LN residual blocks with factored attention.

As the original ``transformer/{transformer,factored_attention,ops}.py``:

- ``Conv1D``: an affine map with kernel [in, out] (the original ``w``) and bias; kernel and bias are
  cast to the activation dtype (the original ``addmm(b.type_as(x), x, w.type_as(x))``).
- ``LayerNorm``: eps 1e-5, always computed in float32 and cast back.
- ``MLP``: c_fc (width -> m_mlp * width), quick_gelu ``x * sigmoid(1.702 x)``, c_proj.
- ``FactoredAttention``: c_attn gives q, k, v (cross attention: q only, and c_enc_kv(encoder_kv)
  gives k, v), the attention type's sparse pattern (``attention.py``), c_proj.
- ``ResAttnBlock``: ``a = attn(ln_0(x)); m = mlp(ln_1(x + a)); x + a + m``.

Every hyperparameter of one decoder (the music model of a prior, or its lyric encoder) is in one
frozen ``TransformerConfig``, built from a ``PriorConfig`` by ``TransformerConfig.from_prior``.

The contract of ``Transformer(config, scan_layers=True)``:

- ``__call__(x, encoder_kv=None, *, cache=None, start=None) -> (x, cache)``: the only forward.
  Without a cache it is the teacher-forced forward and returns (x, None); with one (``init_cache``)
  it decodes positions ``start .. start + C - 1`` and returns the updated cache.
- ``features(x, encoder_kv, layers, stop) -> {n: float32 stream after the first n layers}``, running
  only the first ``stop`` layers;
- ``attention_weights(x, encoder_kv) -> (x, {layer: softmax weights})`` (parity tests, alignment).

Layers are grouped by ``layer_segments``: a run of a repeating unit of attention types (e.g. 24 x
(block, transpose_block, prev_block)) becomes one ``nn.scan`` over stacked parameters, so a 72-layer
prior compiles a few layer bodies instead of 72. This is the stored parameter tree:

    layers_{a}_{b}/unit_{j}/...   layers a..b (inclusive), a scanned run; every leaf has a leading
                                  axis of length R = (b - a + 1) / len(unit); original layer index
                                  of [r] in unit_{j} is a + r * len(unit) + j
    layer_{i}/...                 an unrolled single layer (no leading axis)

    each layer: attn/{c_attn, c_enc_kv (cross only), c_proj}/{kernel [in, out], bias},
                ln_0/{scale, bias}, mlp/{c_fc, c_proj}/{kernel, bias}, ln_1/{scale, bias}

``scan_layers=False`` declares every layer as its own submodule ``layer_{i}`` and takes the tree of
``unroll_params`` (made once, when a prior is loaded for sampling; ``scan_params`` is its inverse):
a decode step's matmuls then read every layer's weights where they lie instead of copying them out
of the stack. Both give the same results.

Every kernel, bias, scale and embedding is created with logical axis names
(``nn.with_logical_partitioning``: 'embed', 'heads', 'mlp', 'vocab', 'ctx'; scanned runs add
'layers' in front); ``sharding.py`` maps them to a device mesh.

Features of a scanned run: a run that the stop cuts still scans over all its repeats, but the layers
past the stop sit behind ``lax.cond`` and do not run (slicing the stacked params to scan fewer
repeats would copy them); asked-for outputs of a run are written into a carried buffer
[K + 1, B, T, W] at a slot given per (repeat, unit) (slot K collects the rest), so any number of
layers costs one scan body per run.

The KV cache is the same for both layouts: ``{layers_a_b: {unit_j: {'k', 'v'}}, layer_i: {'k', 'v'}}``
with arrays [R, B, S, n_state] (R = 1 for a single layer), S from ``attention.cache_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..config import PriorConfig, attention_layout
from .attention import cache_length, decode_attention, full_attention, prime_keys

__all__ = [
    "Segment",
    "layer_segments",
    "segment_key",
    "layer_location",
    "unroll_params",
    "scan_params",
    "TransformerConfig",
    "init_cache",
    "Conv1D",
    "LayerNorm",
    "MLP",
    "FactoredAttention",
    "ResAttnBlock",
    "REMAT_MODES",
    "remat_block",
    "Transformer",
]

Array = jax.Array
Axes = tuple[str | None, ...]
REMAT_MODES = ("none", "attention", "block")  # what the backward pass recomputes per layer (``remat_block``)


# ----------------------------------------------------------------------------------------------
# Grouping of layers into scanned runs


@dataclass(frozen=True)
class Segment:
    """Layers ``start .. start + len(unit) * repeat - 1``: ``repeat`` copies of ``unit`` (attention types)."""

    start: int
    unit: tuple[str, ...]
    repeat: int

    @property
    def stop(self) -> int:
        return self.start + len(self.unit) * self.repeat

    @property
    def scanned(self) -> bool:
        return self.repeat > 1

    @property
    def key(self) -> str:
        return segment_key(self)


def layer_segments(layout: Sequence[str]) -> tuple[Segment, ...]:
    """Split a layer layout into runs of a repeating unit (scanned) and single layers.

    Greedy from the left: at each layer take the unit that repeats over the most layers (at least
    twice; ties go to the shorter unit), else a single layer. Released layouts: upsamplers / 5b
    -> 24 x (block, transpose, prev); 5b_lyrics -> 6 x triple, 6 x (cross + 3 triples), cross;
    1b_lyrics -> runs of 5 triples between its prime / dense layers.
    """
    layout = tuple(layout)
    n, i, out = len(layout), 0, []
    while i < n:
        best_u, best_rep = 1, 1
        for u in range(1, (n - i) // 2 + 1):
            unit, rep = layout[i : i + u], 1
            while layout[i + rep * u : i + (rep + 1) * u] == unit:
                rep += 1
            if rep >= 2 and u * rep > (best_u * best_rep if best_rep > 1 else 0):
                best_u, best_rep = u, rep
        out.append(Segment(i, layout[i : i + best_u], best_rep))
        i += best_u * best_rep
    return tuple(out)


def segment_key(seg: Segment) -> str:
    return f"layers_{seg.start}_{seg.stop - 1}" if seg.scanned else f"layer_{seg.start}"


def layer_location(segments: Sequence[Segment], index: int) -> tuple[str, str | None, int | None]:
    """Where original layer ``index`` lives: (segment key, unit key, stack index) or (key, None, None)."""
    for seg in segments:
        if seg.start <= index < seg.stop:
            if not seg.scanned:
                return seg.key, None, None
            r, j = divmod(index - seg.start, len(seg.unit))
            return seg.key, f"unit_{j}", r
    raise IndexError(f"layer {index} outside the transformer ({segments[-1].stop if segments else 0} layers)")


def _layers(segments: Sequence[Segment]):
    """(layer index, attention type, segment key, unit key or None, stack index) of every layer."""
    for seg in segments:
        for r in range(seg.repeat):
            for j, attn_type in enumerate(seg.unit):
                unit = f"unit_{j}" if seg.scanned else None
                yield seg.start + r * len(seg.unit) + j, attn_type, seg.key, unit, r


def unroll_params(params: dict) -> dict:
    """Transformer params with every scanned run unrolled: ``layers_a_b/unit_j/<leaf [R, ...]>``
    becomes ``layer_{a + r * len(unit) + j}/<leaf [...]>`` (the tree of ``scan_layers=False``).
    Copies the weights once."""
    out = {}
    for key, sub in params.items():
        if not key.startswith("layers_"):
            out[key] = sub
            continue
        first, units = int(key.split("_")[1]), len(sub)
        repeats = jax.tree.leaves(sub)[0].shape[0]
        for r in range(repeats):
            for j in range(units):
                out[f"layer_{first + r * units + j}"] = jax.tree.map(lambda a: a[r], sub[f"unit_{j}"])
    return out


def scan_params(params: dict, layout: Sequence[str]) -> dict:
    """The inverse of ``unroll_params``: per-layer params stacked into the scanned runs of ``layout``."""
    out = {}
    for seg in layer_segments(layout):
        if not seg.scanned:
            out[seg.key] = params[seg.key]
            continue
        u = len(seg.unit)
        out[seg.key] = {
            f"unit_{j}": jax.tree.map(
                lambda *a: jnp.stack(a), *[params[f"layer_{seg.start + r * u + j}"] for r in range(seg.repeat)]
            )
            for j in range(u)
        }
    return out


# ----------------------------------------------------------------------------------------------
# The hyperparameters


@dataclass(frozen=True)
class TransformerConfig:
    """Every hyperparameter of one decoder: the layer stack, its embeddings and its output head."""

    width: int
    heads: int
    layout: tuple[str, ...]  # attention type per layer (``config.attention_layout``)
    n_ctx: int  # positions of the full sequence (lyrics + music for a single encoder-decoder)
    bins: int  # vocabulary of the token embedding and output head
    blocks: int | None = None
    m_attn: float = 0.25
    m_mlp: float = 1.0
    zero_out: bool = False
    init_scale: float = 1.0
    res_scale: bool = False  # scale the residual branches by 1 / depth
    merged_decoder: bool = False  # True: untied x_out, conditioning not re-added after the transformer
    prime_len: int = 0  # lyric positions in front (prime layers)
    encoder_len: int = 0  # lyric encoder positions (cross layers)
    only_encode: bool = False  # no output head: the final activations (the lyric encoder)
    y_cond: bool = False  # start embedding given (y_cond) instead of a learned start_token
    dtype: Any = jnp.float32  # activations
    param_dtype: Any = jnp.float32

    @classmethod
    def from_prior(
        cls, prior: PriorConfig, lyric_encoder: bool = False, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
    ) -> TransformerConfig:
        """The music model of a prior (original ``SimplePrior.prior``) or, with ``lyric_encoder``,
        its separate lyric encoder (``SimplePrior.prime_prior``, over the n_tokens lyric tokens)."""
        if lyric_encoder:
            enc = prior.encoder
            if enc is None:
                raise ValueError("this prior has no separate lyric encoder")
            return cls(
                width=enc.width,
                heads=enc.heads,
                layout=attention_layout(enc.attn_order, enc.depth),
                n_ctx=prior.n_tokens,
                bins=prior.n_vocab,
                blocks=enc.blocks,
                m_attn=enc.m_attn,
                m_mlp=enc.m_mlp,
                zero_out=enc.zero_out,
                init_scale=enc.init_scale,
                res_scale=enc.res_scale,
                only_encode=True,
                dtype=dtype,
                param_dtype=param_dtype,
            )
        return cls(
            width=prior.width,
            heads=prior.heads,
            layout=prior.attention_layout,
            n_ctx=prior.total_ctx,
            bins=prior.total_bins,
            blocks=prior.blocks,
            m_attn=prior.m_attn,
            m_mlp=prior.m_mlp,
            zero_out=prior.zero_out,
            init_scale=prior.init_scale,
            res_scale=prior.res_scale,
            merged_decoder=prior.merged_decoder,
            prime_len=prior.prime_len,
            encoder_len=prior.n_tokens if prior.lyrics == "separate" else 0,
            y_cond=prior.labels or prior.lyrics == "single",
            dtype=dtype,
            param_dtype=param_dtype,
        )

    @property
    def depth(self) -> int:
        return len(self.layout)

    @property
    def n_state(self) -> int:
        return int(self.m_attn * self.width)

    @property
    def block_ctx(self) -> int | None:
        return None if self.blocks is None else self.n_ctx // self.blocks

    @property
    def residual_scale(self) -> float:
        return 1.0 / self.depth if self.res_scale else 1.0

    @property
    def segments(self) -> tuple[Segment, ...]:
        return layer_segments(self.layout)

    def cache_length(self, attn_type: str) -> int:
        return cache_length(attn_type, self.n_ctx, self.blocks, self.prime_len, self.encoder_len)


def init_cache(config: TransformerConfig, batch: int, dtype: Any = None) -> dict:
    """Zero KV caches for every layer (see the module docstring for the tree)."""
    dtype = dtype or config.dtype
    cache: dict = {}
    for seg in config.segments:

        def zeros(attn_type: str, repeat: int) -> dict:
            shape = (repeat, batch, config.cache_length(attn_type), config.n_state)
            return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

        if seg.scanned:
            cache[seg.key] = {f"unit_{j}": zeros(t, seg.repeat) for j, t in enumerate(seg.unit)}
        else:
            cache[seg.key] = zeros(seg.unit[0], 1)
    return cache


def cache_bytes(config: TransformerConfig, batch: int = 1, dtype: Any = None) -> int:
    cache = jax.eval_shape(lambda: init_cache(config, batch, dtype))
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(cache)))


# ----------------------------------------------------------------------------------------------
# Building blocks


def partitioned(init: Any, axes: Axes) -> Any:
    """``init`` whose params carry logical axis names (read by ``sharding.logical_axes``)."""
    return nn.with_logical_partitioning(init, axes)


class Conv1D(nn.Module):
    """The original Conv1D: y = x @ kernel + bias, kernel [in, out], cast to x's dtype.
    ``axes``: the kernel's logical axes (the bias has the output one)."""

    features: int
    axes: tuple[str, str]
    init_scale: float = 1.0
    zero_init: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(0.02 * self.init_scale)
        kernel = self.param("kernel", partitioned(init, self.axes), (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, self.axes[1:]), (self.features,), self.param_dtype)
        return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class LayerNorm(nn.Module):
    """torch LayerNorm (eps 1e-5, biased variance), computed in float32 and cast back."""

    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (x.shape[-1],), self.param_dtype)
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


class MLP(nn.Module):
    width: int
    hidden: int
    init_scale: float = 1.0
    zero_out: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fc = Conv1D(self.hidden, ("embed", "mlp"), self.init_scale, param_dtype=self.param_dtype, name="c_fc")
        proj = Conv1D(self.width, ("mlp", "embed"), self.init_scale, self.zero_out, self.param_dtype, name="c_proj")
        return proj(quick_gelu(fc(x)))


class FactoredAttention(nn.Module):
    attn_type: str
    config: TransformerConfig

    def setup(self) -> None:
        c = self.config
        cross = self.attn_type == "cross"
        width = c.n_state if cross else 3 * c.n_state
        self.c_attn = Conv1D(width, ("embed", "heads"), c.init_scale, param_dtype=c.param_dtype)
        if cross:
            self.c_enc_kv = Conv1D(2 * c.n_state, ("embed", "heads"), c.init_scale, param_dtype=c.param_dtype)
        zero = c.zero_out or cross  # the original forces zero_out for its enc-dec layers
        self.c_proj = Conv1D(c.width, ("heads", "embed"), c.init_scale, zero, c.param_dtype)

    def _qkv(self, x: Array, encoder_kv: Array | None):
        h = self.c_attn(x)
        if self.attn_type == "cross":
            if encoder_kv is None:
                raise ValueError("cross attention needs encoder_kv")
            k, v = jnp.split(self.c_enc_kv(encoder_kv.astype(x.dtype)), 2, axis=-1)
            return h, k, v
        return tuple(jnp.split(h, 3, axis=-1))

    def attention_weights(self, x: Array, encoder_kv: Array | None = None) -> tuple[Array, Array]:
        """Teacher-forced output and the softmax weights, in the layout the original records."""
        c = self.config
        q, k, v = self._qkv(x, encoder_kv)
        n_prime = prime_keys(c.prime_len, c.blocks) if self.attn_type == "prime" and c.blocks else 0
        a, w = full_attention(self.attn_type, q, k, v, c.heads, c.block_ctx, n_prime)
        if self.attn_type == "prime":
            w = w[:, :, c.prime_len :, : c.prime_len]  # what the original records: music queries x lyric keys
        return self.c_proj(a), w

    def __call__(
        self,
        x: Array,
        encoder_kv: Array | None = None,
        cache: dict | None = None,
        start: Array | None = None,
        r: Any = 0,
    ) -> tuple[Array, dict | None]:
        """Without ``cache`` the teacher-forced output; with it, decode positions ``start ..`` against
        layer ``r`` of the cache arrays and return the updated cache."""
        if cache is None:
            return self.attention_weights(x, encoder_kv)[0], None
        assert start is not None, "decoding with a cache needs start"
        c = self.config
        ck, cv = cache["k"], cache["v"]
        if self.attn_type == "cross":
            q = self.c_attn(x)
            if encoder_kv is not None:
                # c_enc_kv(encoder_kv) once, at the first position (the original's sample_t == 0)
                def fill(mdl, ck, cv):
                    k, v = jnp.split(mdl.c_enc_kv(encoder_kv.astype(x.dtype)), 2, axis=-1)
                    return ck.at[r].set(k.astype(ck.dtype)), cv.at[r].set(v.astype(cv.dtype))

                ck, cv = nn.cond(start == 0, fill, lambda mdl, ck, cv: (ck, cv), self, ck, cv)
            k = v = None
        else:
            q, k, v = self._qkv(x, None)
        a, ck, cv = decode_attention(self.attn_type, q, k, v, ck, cv, r, start, c.heads, c.n_ctx, c.block_ctx)
        return self.c_proj(a), {"k": ck, "v": cv}


class ResAttnBlock(nn.Module):
    """``remat='attention'``: the attention (c_attn, the sparse attention, c_proj) is recomputed in the
    backward pass instead of keeping its activations (the original's ``c_attn`` checkpointing); the
    whole block's remat (``c_res``) wraps this module from outside (``remat_block``)."""

    attn_type: str
    config: TransformerConfig
    remat: str = "none"

    def setup(self) -> None:
        c = self.config
        attention = nn.remat(FactoredAttention) if self.remat == "attention" else FactoredAttention
        self.attn = attention(self.attn_type, c)
        self.ln_0 = LayerNorm(param_dtype=c.param_dtype)
        zero = c.zero_out or self.attn_type == "cross"
        self.mlp = MLP(c.width, int(c.m_mlp * c.width), c.init_scale, zero, c.param_dtype)
        self.ln_1 = LayerNorm(param_dtype=c.param_dtype)

    def _residual(self, x: Array, a: Array) -> Array:
        m = self.mlp(self.ln_1(x + a))
        if self.config.residual_scale == 1.0:
            return x + a + m
        return x + self.config.residual_scale * (a + m)

    def __call__(
        self,
        x: Array,
        encoder_kv: Array | None = None,
        cache: dict | None = None,
        start: Array | None = None,
        r: Any = 0,
    ) -> tuple[Array, dict | None]:
        a, cache = self.attn(self.ln_0(x), encoder_kv, cache, start, r)
        return self._residual(x, a), cache

    def attention_weights(self, x: Array, encoder_kv: Array | None = None) -> tuple[Array, Array]:
        a, w = self.attn.attention_weights(self.ln_0(x), encoder_kv)
        return self._residual(x, a), w


def remat_block(remat: str) -> Any:
    """The layer class of a ``remat`` mode (``REMAT_MODES``): 'block' recomputes the whole residual
    block in the backward pass (only its input is kept: the original's ``c_res``), 'attention' its
    attention part, 'none' keeps every activation. Wrapping changes no param name, so the param tree
    is the same in every mode; it only matters under ``jax.grad`` (a forward runs as without)."""
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_MODES)}, got {remat!r}")
    return nn.remat(ResAttnBlock) if remat == "block" else ResAttnBlock


class _Unit(nn.Module):
    """One copy of a scanned run's unit of layers (submodules ``unit_{j}``): the bodies of its
    ``nn.scan``, one per path. Each takes (carry, per-repeat inputs, encoder_kv, start)."""

    unit: tuple[str, ...]
    config: TransformerConfig
    remat: str = "none"

    def setup(self) -> None:
        block = remat_block(self.remat)
        for j, attn_type in enumerate(self.unit):
            setattr(self, f"unit_{j}", block(attn_type, self.config, self.remat))

    def _blocks(self) -> list[ResAttnBlock]:
        return [getattr(self, f"unit_{j}") for j in range(len(self.unit))]

    def __call__(self, carry, r, encoder_kv, start):
        """Forward / decode: carry (x, the run's cache or None), r the repeat."""
        x, cache = carry
        cache = None if cache is None else dict(cache)
        for j, block in enumerate(self._blocks()):
            x, new = block(x, encoder_kv, None if cache is None else cache[f"unit_{j}"], start, r)
            if cache is not None:
                cache[f"unit_{j}"] = new
        return (x, cache), None

    def attention_weights(self, x, r, encoder_kv, start):
        ws = []
        for block in self._blocks():
            x, w = block.attention_weights(x, encoder_kv)
            ws.append(w)
        return x, tuple(ws)

    def features(self, carry, xs, encoder_kv, start):
        """carry (x, buffer [K + 1, B, T, W] or None); xs (r, slots [U] or None, active [U] or None):
        unit j's output goes to buffer slot ``slots[j]``; it runs only where ``active[j]`` (None: all run)."""
        x, buf = carry
        r, slots, active = xs
        for j, block in enumerate(self._blocks()):
            if active is None:
                x = block(x, encoder_kv)[0]
            else:
                x = nn.cond(active[j], lambda mdl, h: mdl(h, encoder_kv)[0], lambda mdl, h: h, block, x)
            if buf is not None:
                buf = jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), slots[j], 0)
        return (x, buf), None


class Transformer(nn.Module):
    """The layer stack of ``config.layout``; ``scan_layers``: scanned runs (the stored tree) or every
    layer unrolled (the tree of ``unroll_params``); ``remat`` (``REMAT_MODES``): activations recomputed
    in the backward pass per layer, see ``remat_block`` (same params, same results)."""

    config: TransformerConfig
    scan_layers: bool = True
    remat: str = "none"

    def setup(self) -> None:
        c = self.config
        block = remat_block(self.remat)
        if not self.scan_layers:
            for i, attn_type in enumerate(c.layout):
                setattr(self, f"layer_{i}", block(attn_type, c, self.remat))
            return
        for seg in c.segments:
            if seg.scanned:
                scanned = nn.scan(
                    _Unit,
                    variable_axes={"params": 0},
                    split_rngs={"params": True},
                    in_axes=(0, nn.broadcast, nn.broadcast),
                    length=seg.repeat,
                    metadata_params={nn.PARTITION_NAME: "layers"},
                    methods=["__call__", "attention_weights", "features"],
                )
                setattr(self, seg.key, scanned(seg.unit, c, self.remat))
            else:
                setattr(self, seg.key, block(seg.unit[0], c, self.remat))

    def __call__(
        self, x: Array, encoder_kv: Array | None = None, *, cache: dict | None = None, start: Array | None = None
    ) -> tuple[Array, dict | None]:
        """Teacher-forced forward (``cache`` None) -> (x, None); decode (``cache`` from ``init_cache``,
        ``start`` the position of x[:, 0], traced) -> (x, new cache). x comes back in float32."""
        x = x.astype(self.config.dtype)
        new = None if cache is None else {key: dict(sub) for key, sub in cache.items()}
        if not self.scan_layers:
            # the layers of a scanned run share its stacked cache arrays (layer r of them each): read
            # them from ``new``, where the previous repeat wrote
            for i, _, key, unit, r in _layers(self.config.segments):
                sub = None if new is None else (new[key] if unit is None else new[key][unit])
                x, sub = getattr(self, f"layer_{i}")(x, encoder_kv, sub, start, jnp.int32(r))
                if new is not None:
                    if unit is None:
                        new[key] = sub
                    else:
                        new[key][unit] = sub
            return x.astype(jnp.float32), new
        for seg in self.config.segments:
            layer = getattr(self, seg.key)
            sub = None if cache is None else cache[seg.key]
            if seg.scanned:
                (x, sub), _ = layer((x, sub), jnp.arange(seg.repeat), encoder_kv, start)
            else:
                x, sub = layer(x, encoder_kv, sub, start, jnp.int32(0))
            if new is not None:
                new[seg.key] = sub
        return x.astype(jnp.float32), new

    def attention_weights(self, x: Array, encoder_kv: Array | None = None) -> tuple[Array, dict[int, Array]]:
        """Teacher-forced forward -> (float32 x, {layer index: softmax weights})."""
        x = x.astype(self.config.dtype)
        weights = {}
        if not self.scan_layers:
            for i in range(self.config.depth):
                x, weights[i] = getattr(self, f"layer_{i}").attention_weights(x, encoder_kv)
            return x.astype(jnp.float32), weights
        for seg in self.config.segments:
            layer = getattr(self, seg.key)
            if seg.scanned:
                x, ws = layer.attention_weights(x, jnp.arange(seg.repeat), encoder_kv, None)
                for j, w in enumerate(ws):
                    for r in range(seg.repeat):
                        weights[seg.start + r * len(seg.unit) + j] = w[r]
            else:
                x, weights[seg.start] = layer.attention_weights(x, encoder_kv)
        return x.astype(jnp.float32), weights

    def features(
        self, x: Array, encoder_kv: Array | None = None, layers: Sequence[int] = (), stop: int | None = None
    ) -> dict[int, Array]:
        """{n: float32 residual stream after the first n layers} for each n in ``layers`` (0..stop),
        running only the first ``stop`` layers (default all)."""
        depth = self.config.depth
        stop = depth if stop is None else stop
        if not 0 <= stop <= depth:
            raise ValueError(f"stop must be in 0..{depth}, got {stop}")
        want = sorted(set(layers))
        if want and not (0 <= want[0] and want[-1] <= stop):
            raise ValueError(f"layers to collect must be in 0..{stop}, got {want}")
        x = x.astype(self.config.dtype)
        feats = {0: x} if 0 in want else {}
        if not self.scan_layers:
            for i in range(stop):
                x = getattr(self, f"layer_{i}")(x, encoder_kv)[0]
                if i + 1 in want:
                    feats[i + 1] = x
            return {n: feats[n].astype(jnp.float32) for n in want}
        for seg in self.config.segments:
            if seg.start >= stop:
                break
            layer = getattr(self, seg.key)
            if not seg.scanned:
                x = layer(x, encoder_kv)[0]
                if seg.start + 1 in want:
                    feats[seg.start + 1] = x
                continue
            u = len(seg.unit)
            index = np.arange(seg.repeat * u).reshape(seg.repeat, u) + seg.start  # layer of (repeat, unit)
            inside = [n for n in want if seg.start < n <= min(seg.stop, stop)]  # n counts layers: output of n - 1
            active = None if seg.stop <= stop else jnp.asarray(index < stop)
            slots, buf = None, None
            if inside:
                table = np.full(index.shape, len(inside), np.int32)  # slot K: outputs nobody asked for
                for k, n in enumerate(inside):
                    table[np.unravel_index(n - 1 - seg.start, index.shape)] = k
                slots, buf = jnp.asarray(table), jnp.zeros((len(inside) + 1,) + x.shape, x.dtype)
            (x, buf), _ = layer.features((x, buf), (jnp.arange(seg.repeat), slots, active), encoder_kv, None)
            feats.update({n: buf[k] for k, n in enumerate(inside)})
        return {n: feats[n].astype(jnp.float32) for n in want}
