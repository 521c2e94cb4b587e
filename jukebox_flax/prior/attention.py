"""Jukebox's factored (sparse) attention: the attention types, their masks and their KV caches.

A sequence of ``n_ctx`` positions is viewed as ``blocks`` rows of ``block_ctx = n_ctx // blocks``
positions (original ``FactoredAttention``). Every layer uses one type:

=================  ===========================================================  =====================
type               keys a query at position t sees                              cache kept (entries)
=================  ===========================================================  =====================
dense              every position <= t                                          n_ctx
block              positions of t's own row (block), <= t                       block_ctx (a ring)
transpose_block    positions t' <= t in t's column (t' = t mod block_ctx)       n_ctx, column-major
prev_block         every position of the previous row; row 0 sees zero k/v      2 * block_ctx (a ring)
cross              all encoder positions (k, v = c_enc_kv(encoder_kv))          encoder_len, filled once
prime              the first prime_keys(prime_len, blocks) positions, <= t      prime_keys(...)
=================  ===========================================================  =====================

Cache sizes are the original's largest ``_suff_cache_len``. The cache of a layer is a pair of arrays
``k, v`` of shape ``[R, B, S, n_state]`` (R = layers sharing a scanned stack; the layer is picked by
index ``r``). Slot of position p: ``p`` (dense, prime; positions >= S are not kept), ``p % S``
(block, prev_block rings) and ``(p % block_ctx) * blocks + p // block_ctx`` (transpose_block, so a
column is contiguous).

A single-token step (the sampling loop) writes its key / value into the cache first, with
``dynamic_update_slice``, and then attends to the cache under a position mask, so the stacked
caches carried through the layer loop are updated in place; a chunk of a ring layer attends to
(old ring ; chunk) and writes afterwards, since its own entries may overwrite keys it still needs.

Numerics follow the original exactly: scores ``(q . k) * hd^-1/2`` in the activation dtype, cast to
float32, masked entries set to -1e9 (not -inf), softmax in float32, cast back, then ``@ v``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "ATTENTION_TYPES",
    "prime_keys",
    "cache_length",
    "attend",
    "full_attention",
    "decode_attention",
]

ATTENTION_TYPES = ("dense", "block", "transpose_block", "prev_block", "cross", "prime")

Array = jax.Array


def prime_keys(prime_len: int, blocks: int) -> int:
    """Keys of a prime-attention layer: the original's ``_prime_len`` quirk.

    ``(prime_len // blocks + 1) * blocks``: for 1b_lyrics (384 lyric tokens, 64 blocks) 448 keys,
    i.e. the lyrics plus the first 64 music positions, under a causal mask.
    """
    return (prime_len // blocks + 1) * blocks


def cache_length(attn_type: str, n_ctx: int, blocks: int | None, prime_len: int = 0, encoder_len: int = 0) -> int:
    """Entries the KV cache of one layer of ``attn_type`` keeps (see the module table)."""
    if attn_type in ("dense", "transpose_block"):
        return n_ctx
    if attn_type == "cross":
        return encoder_len
    if blocks is None:
        raise ValueError(f"{attn_type} attention needs blocks")
    if attn_type == "block":
        return n_ctx // blocks
    if attn_type == "prev_block":
        return 2 * (n_ctx // blocks)
    if attn_type == "prime":
        return prime_keys(prime_len, blocks)
    raise ValueError(f"attention type {attn_type!r} has no sampling support (known: {ATTENTION_TYPES})")


# ----------------------------------------------------------------------------------------------
# The attention product


def _split_heads(x: Array, heads: int) -> Array:
    n, l, d = x.shape
    return x.reshape(n, l, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: Array) -> Array:
    n, h, l, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, l, h * hd)


def _scores_scale(head_dim: int) -> float:
    scale = 1.0 / math.sqrt(math.sqrt(head_dim))  # as the original (eval path multiplies by scale**2)
    return scale * scale


def _softmax(w: Array, mask: Array | None, dtype) -> Array:
    w = w.astype(jnp.float32)
    if mask is not None:
        w = jnp.where(mask, w, -1e9)
    return jax.nn.softmax(w, axis=-1).astype(dtype)


def attend(q: Array, k: Array, v: Array, heads: int, mask: Array | None = None) -> tuple[Array, Array]:
    """Multi-head softmax attention. q [N, Lq, d], k/v [N, Lk, d], mask broadcastable to [N, H, Lq, Lk].

    Returns the output [N, Lq, d] and the softmax weights [N, H, Lq, Lk] (in q's dtype).
    """
    dtype = q.dtype
    qh, kh, vh = (_split_heads(x.astype(dtype), heads) for x in (q, k, v))
    w = jnp.einsum("nhqd,nhkd->nhqk", qh, kh) * jnp.asarray(_scores_scale(qh.shape[-1]), dtype)
    w = _softmax(w, mask, dtype)
    return _merge_heads(jnp.einsum("nhqk,nhkd->nhqd", w, vh)), w


def _causal(q_len: int, k_len: int) -> Array:
    """The original ``tril(offset)`` mask with offset max(k_len - q_len, 0)."""
    offset = max(k_len - q_len, 0)
    return jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + offset


# ----------------------------------------------------------------------------------------------
# Full (teacher-forced) forward


def full_attention(
    attn_type: str, q: Array, k: Array, v: Array, heads: int, block_ctx: int | None = None, n_prime_keys: int = 0
) -> tuple[Array, Array]:
    """Attention over a whole sequence q, k, v [B, L, d] (L a multiple of block_ctx).

    ``n_prime_keys`` is ``prime_keys(prime_len, blocks)`` for a prime layer. The weights come back in
    the layout the original records: block / prev_block [B * rows, H, block_ctx, block_ctx],
    transpose_block [B * block_ctx, H, rows, rows], the others [B, H, L, keys] (cross: the encoder
    positions; prime: the first ``n_prime_keys`` positions).
    """
    b, l, d = q.shape
    if attn_type == "dense":
        return attend(q, k, v, heads, _causal(l, l))
    if attn_type == "cross":
        return attend(q, k, v, heads, None)
    if attn_type == "prime":
        k, v = k[:, :n_prime_keys], v[:, :n_prime_keys]
        return attend(q, k, v, heads, _causal(l, k.shape[1]))
    assert block_ctx is not None, "block attention types need block_ctx"
    rows = l // block_ctx
    if attn_type == "block":
        as_rows = lambda x: x.reshape(b * rows, block_ctx, d)
        out, w = attend(as_rows(q), as_rows(k), as_rows(v), heads, _causal(block_ctx, block_ctx))
        return out.reshape(b, l, d), w
    if attn_type == "transpose_block":
        as_cols = lambda x: x.reshape(b, rows, block_ctx, d).transpose(0, 2, 1, 3).reshape(b * block_ctx, rows, d)
        out, w = attend(as_cols(q), as_cols(k), as_cols(v), heads, _causal(rows, rows))
        return out.reshape(b, block_ctx, rows, d).transpose(0, 2, 1, 3).reshape(b, l, d), w
    if attn_type == "prev_block":
        # each row attends to the whole previous row; row 0 to a zero row (zero keys and values)
        def previous_rows(x):
            x = x.reshape(b, rows, block_ctx, d)[:, :-1]
            return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0))).reshape(b * rows, block_ctx, d)

        out, w = attend(q.reshape(b * rows, block_ctx, d), previous_rows(k), previous_rows(v), heads, None)
        return out.reshape(b, l, d), w
    raise ValueError(f"unknown attention type {attn_type!r}; known: {ATTENTION_TYPES}")


# ----------------------------------------------------------------------------------------------
# Incremental decoding with the KV cache


def _write(cache: Array, r: Array, slots: Array, new: Array) -> Array:
    """cache[r, :, slots[i]] = new[:, i]; slots outside the cache are dropped."""
    return cache.at[r, :, slots].set(jnp.swapaxes(new, 0, 1).astype(cache.dtype), mode="drop")


def _write_one(cache: Array, r: Array, slot: Array, new: Array) -> Array:
    """cache[r, :, slot] = new[:, 0] for one slot inside the cache, as an in-place dynamic_update_slice."""
    zero = jnp.zeros((), jnp.int32)
    update = new[None, :, :1].astype(cache.dtype)  # [1, B, 1, d]
    return lax.dynamic_update_slice(
        cache, update, (jnp.asarray(r, jnp.int32), zero, jnp.asarray(slot, jnp.int32), zero)
    )


def _layer(cache: Array, r: Array) -> Array:
    return lax.dynamic_index_in_dim(cache, r, axis=0, keepdims=False)


def decode_attention(
    attn_type: str,
    q: Array,
    k_new: Array | None,
    v_new: Array | None,
    cache_k: Array,
    cache_v: Array,
    r: Array,
    start: Array,
    heads: int,
    n_ctx: int,
    block_ctx: int | None,
) -> tuple[Array, Array, Array]:
    """Attention for C new positions ``start .. start+C-1`` (q [B, C, d]) against the cache.

    ``k_new, v_new`` [B, C, d] are the chunk's own keys/values (None for cross attention, whose cache
    already holds the encoder's). The chunk is written into layer ``r`` of ``cache_k, cache_v``
    [R, B, S, d]; returns (output [B, C, d], cache_k, cache_v). Gives the same result as the full
    forward at those positions, for any C (the original's chunked priming) and any traced ``start``.
    """
    c = q.shape[1]
    dtype = q.dtype
    pos = start + jnp.arange(c)
    size = cache_k.shape[2]
    k_new = None if k_new is None else k_new.astype(cache_k.dtype)
    v_new = None if v_new is None else v_new.astype(cache_v.dtype)

    if attn_type == "cross":
        out, _ = attend(q, _layer(cache_k, r), _layer(cache_v, r), heads, None)
        return out, cache_k, cache_v
    assert k_new is not None and v_new is not None, "only cross attention decodes without new keys"

    if attn_type in ("dense", "prime"):
        # never wraps: write first, then attend to every kept position <= t
        if c == 1 and attn_type == "dense":  # a step's slot is always inside a dense cache
            cache_k, cache_v = _write_one(cache_k, r, pos[0], k_new), _write_one(cache_v, r, pos[0], v_new)
        else:  # a prime cache drops positions past its keys
            cache_k, cache_v = _write(cache_k, r, pos, k_new), _write(cache_v, r, pos, v_new)
        mask = jnp.arange(size)[None, :] <= pos[:, None]
        out, _ = attend(q, _layer(cache_k, r), _layer(cache_v, r), heads, mask)
        return out, cache_k, cache_v
    assert block_ctx is not None, "block attention types need block_ctx"

    if attn_type == "transpose_block":
        rows = n_ctx // block_ctx
        slot = (pos % block_ctx) * rows + pos // block_ctx
        if c == 1:
            cache_k, cache_v = _write_one(cache_k, r, slot[0], k_new), _write_one(cache_v, r, slot[0], v_new)
        else:
            cache_k, cache_v = _write(cache_k, r, slot, k_new), _write(cache_v, r, slot, v_new)
        # each query reads its own column: slots col*rows .. col*rows + rows - 1 (row j = position j*bc+col)
        idx = (pos % block_ctx)[:, None] * rows + jnp.arange(rows)[None, :]  # [C, rows]
        keys = jnp.moveaxis(cache_k[r, :, idx], 2, 0)  # [B, C, rows, d]
        vals = jnp.moveaxis(cache_v[r, :, idx], 2, 0)
        b, _, d = q.shape
        hd = d // heads
        qh = q.reshape(b, c, heads, hd)
        kh = keys.astype(dtype).reshape(b, c, rows, heads, hd)
        vh = vals.astype(dtype).reshape(b, c, rows, heads, hd)
        w = jnp.einsum("bchd,bcjhd->bhcj", qh, kh) * jnp.asarray(_scores_scale(hd), dtype)
        mask = jnp.arange(rows)[None, :] <= (pos // block_ctx)[:, None]  # [C, rows]
        w = _softmax(w, mask, dtype)
        return jnp.einsum("bhcj,bcjhd->bchd", w, vh).reshape(b, c, d), cache_k, cache_v

    if attn_type in ("block", "prev_block"):
        slots = jnp.arange(size)
        if c == 1:
            # a sampling step: write the new entry into its ring slot first (in place), then attend to
            # the ring. Reading the old ring and appending the entry, as for chunks below, makes XLA
            # copy the stacked ring caches of the layer loop on every step.
            cache_k = _write_one(cache_k, r, pos[0] % size, k_new)
            cache_v = _write_one(cache_v, r, pos[0] % size, v_new)
            key_pos = slots + size * jnp.floor_divide(start - slots, size)  # newest position <= start in a slot
            key_ok = key_pos >= 0
            keys, vals = _layer(cache_k, r), _layer(cache_v, r)
        else:
            # chunks: attend to (old ring ; chunk) with positions, then keep the newest entries
            old_pos = slots + size * jnp.floor_divide(start - 1 - slots, size)  # last position < start in a slot
            key_pos = jnp.concatenate([old_pos, pos])
            key_ok = jnp.concatenate([old_pos >= 0, jnp.ones((c,), bool)])
            keys = jnp.concatenate([_layer(cache_k, r), k_new], axis=1)
            vals = jnp.concatenate([_layer(cache_v, r), v_new], axis=1)
        row_start = (pos // block_ctx) * block_ctx
        if attn_type == "block":
            lo, hi = row_start, pos + 1
        else:
            lo, hi = row_start - block_ctx, row_start
        mask = key_ok[None, :] & (key_pos[None, :] >= lo[:, None]) & (key_pos[None, :] < hi[:, None])
        out, _ = attend(q, keys, vals, heads, mask)
        if attn_type == "prev_block":
            # the original's row 0 attends to zero keys and values: output exactly 0
            out = jnp.where((pos < block_ctx)[None, :, None], jnp.zeros((), out.dtype), out)
        if c == 1:
            return out, cache_k, cache_v
        keep = min(c, size)
        cache_k = _write(cache_k, r, pos[c - keep :] % size, k_new[:, c - keep :])
        cache_v = _write(cache_v, r, pos[c - keep :] % size, v_new[:, c - keep :])
        return out, cache_k, cache_v

    raise ValueError(f"attention type {attn_type!r} has no sampling support")
