"""The sparse transformer of a Jukebox prior: pre-LN residual blocks with factored attention.

As the original ``transformer/{transformer,factored_attention,ops}.py``:

- ``Conv1D``: an affine map with kernel [in, out] (the original ``w``) and bias; kernel and bias are
  cast to the activation dtype (the original ``addmm(b.type_as(x), x, w.type_as(x))``).
- ``LayerNorm``: eps 1e-5, always computed in float32 and cast back.
- ``MLP``: c_fc (width -> m_mlp * width), quick_gelu ``x * sigmoid(1.702 x)``, c_proj.
- ``FactoredAttention``: c_attn gives q, k, v (cross attention: q only, and c_enc_kv(encoder_kv)
  gives k, v), the attention type's sparse pattern (``attention.py``), c_proj.
- ``ResAttnBlock``: ``a = attn(ln_0(x)); m = mlp(ln_1(x + a)); x + a + m``.

Layers are grouped by ``layer_segments``: a run of a repeating unit of attention types (e.g. 24 x
(block, transpose_block, prev_block)) becomes one ``nn.scan`` over stacked parameters, so a 72-layer
prior compiles a few layer bodies instead of 72. Parameter tree of ``Transformer``:

    layers_{a}_{b}/unit_{j}/...   layers a..b (inclusive), a scanned run; every leaf has a leading
                                  axis of length R = (b - a + 1) / len(unit); original layer index
                                  of [r] in unit_{j} is a + r * len(unit) + j
    layer_{i}/...                 an unrolled single layer (no leading axis)

    each layer: attn/{c_attn, c_enc_kv (cross only), c_proj}/{kernel [in, out], bias},
                ln_0/{scale, bias}, mlp/{c_fc, c_proj}/{kernel, bias}, ln_1/{scale, bias}

Features (``collect`` / ``stop``): the residual stream after any layers, and a forward that stops
after the deepest one, without changing the param tree or adding scans. A run that the stop cuts
still scans over all its repeats, but the layers past the stop sit behind ``lax.cond`` and do not
run (slicing the stacked params to scan fewer repeats would copy them: ~10 GB for half the 5B
prior); asked-for outputs of a run are written into a carried buffer [K + 1, B, T, W] at a slot
given by a static (unit, repeat) table (slot K collects the rest), so any number of layers costs
one scan body per run.

The KV cache mirrors it: ``{layers_a_b: {unit_j: {'k', 'v'}}, layer_i: {'k', 'v'}}`` with arrays
[R, B, S, n_state] (R = 1 for a single layer), S from ``attention.cache_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import cache_length, decode_attention, full_attention, prime_keys

__all__ = [
    "Segment",
    "layer_segments",
    "segment_key",
    "layer_location",
    "split_repeats",
    "LayerSpec",
    "Conv1D",
    "LayerNorm",
    "MLP",
    "FactoredAttention",
    "ResAttnBlock",
    "Transformer",
]

Array = jax.Array


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


def layer_location(segments: Sequence[Segment], index: int) -> tuple[str, Optional[str], Optional[int]]:
    """Where original layer ``index`` lives: (segment key, unit key, stack index) or (key, None, None)."""
    for seg in segments:
        if seg.start <= index < seg.stop:
            if not seg.scanned:
                return seg.key, None, None
            r, j = divmod(index - seg.start, len(seg.unit))
            return seg.key, f"unit_{j}", r
    raise IndexError(f"layer {index} outside the transformer ({segments[-1].stop if segments else 0} layers)")


def split_repeats(params: dict) -> dict:
    """Transformer params with every scanned run split per repeat, for sampling.

    ``layers_a_b/unit_j/<leaf [R, ...]>`` becomes ``layers_a_b/unit_j/repeat_r/<leaf [...]>``; single
    layers stay. ``decode`` accepts either form and gives the same result; with split params it runs
    the layers unrolled, so a step's matmuls read every layer's weights where they lie instead of
    copying them out of the stack first (on a CPU, one copy of all weights per token: 2-3x the memory
    traffic of a batch-1 step). Splitting copies the weights once (per sampled window, inside its jit).
    """
    out = {}
    for key, sub in params.items():
        if key.startswith("layers_"):
            repeats = jax.tree.leaves(sub)[0].shape[0]
            sub = {unit: {f"repeat_{r}": jax.tree.map(lambda a: a[r], tree) for r in range(repeats)}
                   for unit, tree in sub.items()}
        out[key] = sub
    return out


# ----------------------------------------------------------------------------------------------
# Building blocks


class Conv1D(nn.Module):
    """The original Conv1D: y = x @ kernel + bias, kernel [in, out], cast to x's dtype."""

    features: int
    init_scale: float = 1.0
    zero_init: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.zero_init else nn.initializers.normal(0.02 * self.init_scale)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class LayerNorm(nn.Module):
    """torch LayerNorm (eps 1e-5, biased variance), computed in float32 and cast back."""

    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
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
        h = quick_gelu(Conv1D(self.hidden, self.init_scale, param_dtype=self.param_dtype, name="c_fc")(x))
        return Conv1D(self.width, self.init_scale, self.zero_out, self.param_dtype, name="c_proj")(h)


@dataclass(frozen=True)
class LayerSpec:
    """What every layer of one transformer shares (hashable, so it can be a module field)."""

    width: int
    heads: int
    n_ctx: int  # positions of the full sequence
    blocks: Optional[int] = None
    m_attn: float = 0.25
    m_mlp: float = 1.0
    zero_out: bool = False
    init_scale: float = 1.0
    res_scale: float = 1.0
    prime_len: int = 0  # lyric positions of a single encoder-decoder (prime layers)
    encoder_len: int = 0  # encoder positions (cross layers)
    dtype: Any = jnp.float32  # activations
    param_dtype: Any = jnp.float32

    @property
    def n_state(self) -> int:
        return int(self.m_attn * self.width)

    @property
    def block_ctx(self) -> Optional[int]:
        return None if self.blocks is None else self.n_ctx // self.blocks

    def cache_length(self, attn_type: str) -> int:
        return cache_length(attn_type, self.n_ctx, self.blocks, self.prime_len, self.encoder_len)


class FactoredAttention(nn.Module):
    attn_type: str
    spec: LayerSpec

    def setup(self) -> None:
        s = self.spec
        cross = self.attn_type == "cross"
        self.c_attn = Conv1D(s.n_state if cross else 3 * s.n_state, s.init_scale, param_dtype=s.param_dtype)
        if cross:
            self.c_enc_kv = Conv1D(2 * s.n_state, s.init_scale, param_dtype=s.param_dtype)
        zero = s.zero_out or cross  # the original forces zero_out for its enc-dec layers
        self.c_proj = Conv1D(s.width, s.init_scale, zero, s.param_dtype)

    def _qkv(self, x: Array, encoder_kv: Optional[Array]):
        h = self.c_attn(x)
        if self.attn_type == "cross":
            if encoder_kv is None:
                raise ValueError("cross attention needs encoder_kv")
            k, v = jnp.split(self.c_enc_kv(encoder_kv.astype(x.dtype)), 2, axis=-1)
            return h, k, v
        return tuple(jnp.split(h, 3, axis=-1))

    def __call__(self, x: Array, encoder_kv: Optional[Array] = None) -> tuple[Array, Array]:
        s = self.spec
        q, k, v = self._qkv(x, encoder_kv)
        n_prime = prime_keys(s.prime_len, s.blocks) if self.attn_type == "prime" else 0
        a, w = full_attention(self.attn_type, q, k, v, s.heads, s.block_ctx, n_prime)
        if self.attn_type == "prime":
            w = w[:, :, s.prime_len :, : s.prime_len]  # what the original records: music queries x lyric keys
        return self.c_proj(a), w

    def decode(self, x: Array, start: Array, cache: dict, r: Array, encoder_kv: Optional[Array]) -> tuple[Array, dict]:
        s = self.spec
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
        a, ck, cv = decode_attention(self.attn_type, q, k, v, ck, cv, r, start, s.heads, s.n_ctx, s.block_ctx)
        return self.c_proj(a), {"k": ck, "v": cv}


class ResAttnBlock(nn.Module):
    attn_type: str
    spec: LayerSpec

    def setup(self) -> None:
        s = self.spec
        self.attn = FactoredAttention(self.attn_type, s)
        self.ln_0 = LayerNorm(param_dtype=s.param_dtype)
        zero = s.zero_out or self.attn_type == "cross"
        self.mlp = MLP(s.width, int(s.m_mlp * s.width), s.init_scale, zero, s.param_dtype)
        self.ln_1 = LayerNorm(param_dtype=s.param_dtype)

    def _residual(self, x: Array, a: Array) -> Array:
        m = self.mlp(self.ln_1(x + a))
        if self.spec.res_scale == 1.0:
            return x + a + m
        return x + self.spec.res_scale * (a + m)

    def __call__(self, x: Array, encoder_kv: Optional[Array] = None) -> tuple[Array, Array]:
        a, w = self.attn(self.ln_0(x), encoder_kv)
        return self._residual(x, a), w

    def decode(self, x: Array, start: Array, cache: dict, r: Array, encoder_kv: Optional[Array]) -> tuple[Array, dict]:
        a, cache = self.attn.decode(self.ln_0(x), start, cache, r, encoder_kv)
        return self._residual(x, a), cache


class _Unit(nn.Module):
    """One copy of a segment's unit of layers: the body of its ``nn.scan``."""

    unit: tuple[str, ...]
    spec: LayerSpec
    decode: bool = False
    return_attn: bool = False
    # Feature collection (full forward only). slots[j][r]: where the output of unit j at repeat r goes
    # in the carried buffer [K + 1, B, T, W] (K = a scratch slot for outputs nobody asked for).
    slots: Optional[tuple[tuple[int, ...], ...]] = None
    # Only the first ``limit`` layers of the run execute (a stop inside it); the rest are skipped
    # by lax.cond. None: all run.
    limit: Optional[int] = None

    @nn.compact
    def __call__(self, carry, r, encoder_kv, start):
        blocks = [ResAttnBlock(t, self.spec, name=f"unit_{j}") for j, t in enumerate(self.unit)]
        if self.decode:
            x, cache = carry
            cache = dict(cache)
            for j, block in enumerate(blocks):
                x, cache[f"unit_{j}"] = block.decode(x, start, cache[f"unit_{j}"], r, encoder_kv)
            return (x, cache), None
        x, buf = carry if self.slots is not None else (carry, None)
        ws = []
        for j, block in enumerate(blocks):
            if self.limit is not None:
                runs = -(-(self.limit - j) // len(self.unit))  # repeats in which unit j is before the stop
                if runs > 0:
                    x = nn.cond(r < runs, lambda mdl, h: mdl(h, encoder_kv)[0], lambda mdl, h: h, block, x)
            else:
                x, w = block(x, encoder_kv)
                ws.append(w)
            if buf is not None and min(self.slots[j]) < buf.shape[0] - 1:
                slot = jnp.asarray(self.slots[j], jnp.int32)[r]
                buf = jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), slot, 0)
        out = x if buf is None else (x, buf)
        return out, (tuple(ws) if self.return_attn else None)


class Transformer(nn.Module):
    """The layer stack. ``layout``: the attention type of every layer (``config.attention_layout``)."""

    layout: tuple[str, ...]
    spec: LayerSpec

    @property
    def segments(self) -> tuple[Segment, ...]:
        return layer_segments(self.layout)

    def init_cache(self, batch: int, dtype: Any) -> dict:
        """Zero KV caches for every layer (see the module docstring for the tree)."""
        s, cache = self.spec, {}
        for seg in self.segments:
            def zeros(t, rep):
                shape = (rep, batch, s.cache_length(t), s.n_state)
                return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

            if seg.scanned:
                cache[seg.key] = {f"unit_{j}": zeros(t, seg.repeat) for j, t in enumerate(seg.unit)}
            else:
                cache[seg.key] = zeros(seg.unit[0], 1)
        return cache

    def _scan(self, seg: Segment, decode: bool, return_attn: bool, slots: Optional[tuple] = None,
              limit: Optional[int] = None):
        scanned = nn.scan(
            _Unit,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast),
            length=seg.repeat,
        )
        return scanned(seg.unit, self.spec, decode, return_attn, slots, limit, name=seg.key)

    def _is_split(self, seg: Segment) -> bool:
        """Whether the run's params come split per repeat (``split_repeats``), not stacked."""
        if self.is_initializing() or not self.has_variable("params", seg.key):
            return False
        return "repeat_0" in self.variables["params"][seg.key]["unit_0"]

    def _decode_split(self, seg: Segment, x: Array, start: Array, cache: dict, encoder_kv: Optional[Array]):
        """Decode through a run whose params are split per repeat: the layers unrolled, each reading
        its own weights in place (the scan would copy every layer's weights out of the stack)."""
        params, cache = self.variables["params"][seg.key], dict(cache)
        for r in range(seg.repeat):
            for j, attn_type in enumerate(seg.unit):
                unit = f"unit_{j}"
                block = ResAttnBlock(attn_type, self.spec, parent=None)
                x, cache[unit] = block.apply({"params": params[unit][f"repeat_{r}"]}, x, start, cache[unit],
                                             jnp.int32(r), encoder_kv, method="decode")
        return x, cache

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoder_kv: Optional[Array] = None,
        return_attn: bool = False,
        start: Optional[Array] = None,
        cache: Optional[dict] = None,
        collect: Optional[Sequence[int]] = None,
        stop: Optional[int] = None,
    ):
        """Full forward (``cache`` None) -> (x, {layer: attention weights} or None);
        decode (``cache`` given, ``start`` the first position of x) -> (x, cache);
        features (``collect`` given: layer counts n in 0..depth) -> (x, {n: float32 residual stream
        after the first n layers}); ``stop``: run only the first ``stop`` layers (x is then the
        stream after them). Collection and stopping keep one scan per segment: the scan runs over
        the repeats it needs (a param slice) and writes the asked-for outputs into a carried buffer."""
        x = x.astype(self.spec.dtype)
        decode = cache is not None
        depth = len(self.layout)
        stop = depth if stop is None else stop
        if not 0 <= stop <= depth:
            raise ValueError(f"stop must be in 0..{depth}, got {stop}")
        if (decode or return_attn) and (collect is not None or stop != depth):
            raise ValueError("collect / stop work only with the plain full forward")
        want = sorted(set(collect or ()))
        if want and not (0 <= want[0] and want[-1] <= stop):
            raise ValueError(f"layers to collect must be in 0..{stop}, got {want}")
        feats = {0: x} if 0 in want else {}
        weights, new_cache = {}, {}
        for seg in self.segments:
            if seg.start >= stop:
                break
            if seg.scanned:
                u, end = len(seg.unit), min(seg.stop, stop)
                limit = None if end == seg.stop else end - seg.start
                inside = [n for n in want if seg.start < n <= end]  # n counts layers: output of layer n - 1
                slots = None
                if inside:
                    table = [[len(inside)] * seg.repeat for _ in seg.unit]
                    for k, n in enumerate(inside):
                        r, j = divmod(n - 1 - seg.start, u)
                        table[j][r] = k
                    slots = tuple(tuple(t) for t in table)
                if decode and self._is_split(seg):
                    x, new_cache[seg.key] = self._decode_split(seg, x, start, cache[seg.key], encoder_kv)
                    continue
                body = self._scan(seg, decode, return_attn and not decode, slots, limit)
                idx = jnp.arange(seg.repeat)
                if decode:
                    (x, new_cache[seg.key]), _ = body((x, cache[seg.key]), idx, encoder_kv, start)
                elif slots is not None:
                    buf = jnp.zeros((len(inside) + 1,) + x.shape, x.dtype)
                    (x, buf), _ = body((x, buf), idx, encoder_kv, start)
                    feats.update({n: buf[k] for k, n in enumerate(inside)})
                else:
                    x, ws = body(x, idx, encoder_kv, start)
                    if return_attn:
                        for j, w in enumerate(ws):
                            for r in range(seg.repeat):
                                weights[seg.start + r * len(seg.unit) + j] = w[r]
            else:
                block = ResAttnBlock(seg.unit[0], self.spec, name=seg.key)
                if decode:
                    x, new_cache[seg.key] = block.decode(x, start, cache[seg.key], jnp.int32(0), encoder_kv)
                else:
                    x, w = block(x, encoder_kv)
                    weights[seg.start] = w
                    if seg.start + 1 in want:
                        feats[seg.start + 1] = x
        x = x.astype(jnp.float32)
        if decode:
            return x, new_cache
        if collect is not None:
            return x, {n: feats[n].astype(jnp.float32) for n in want}
        return x, (weights if return_attn else None)
