"""Original ``ConditionalAutoregressive2D`` state-dict keys <-> our ``Autoregressive`` params (numpy only).

Original keys under a prefix P (``prior.`` or ``prime_prior.``):

    P.x_emb.weight [bins, w]            -> x_emb/embedding
    P.start_token [1, w]                -> start_token                (no y_cond only)
    P.pos_emb.pos_emb [n_ctx, w]        -> pos_emb
    P.x_out.weight [bins, w]            -> x_out/kernel [w, bins]     (merged_decoder; else tied to
                                                                       x_emb: both keys exist, same tensor)
    P.transformer._attn_mods.{i}.S      -> transformer/<segment>/...  with S:
        attn.c_attn.w / .b      -> attn/c_attn/kernel / bias        (Conv1D w is already [in, out])
        attn.c_enc_kv.w / .b    -> attn/c_enc_kv/kernel / bias      (cross layers)
        attn.c_proj.w / .b      -> attn/c_proj/kernel / bias
        ln_0.weight / .bias     -> ln_0/scale / bias
        mlp.c_fc.w / .b, mlp.c_proj.w / .b -> mlp/c_fc/..., mlp/c_proj/...
        ln_1.weight / .bias     -> ln_1/scale / bias

Layer i of a scanned run lives at ``layers_{a}_{b}/unit_{j}`` row r (stacked on axis 0) with
i = a + r * len(unit) + j; a single layer at ``layer_{i}`` (``transformer.layer_location``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jukebox_flax.prior.transformer import layer_location, layer_segments

__all__ = ["LAYER_KEYS", "autoregressive_from_torch", "autoregressive_to_torch"]

# original suffix of a layer key -> path inside our layer params
LAYER_KEYS: dict[str, tuple[str, ...]] = {
    "attn.c_attn.w": ("attn", "c_attn", "kernel"),
    "attn.c_attn.b": ("attn", "c_attn", "bias"),
    "attn.c_enc_kv.w": ("attn", "c_enc_kv", "kernel"),
    "attn.c_enc_kv.b": ("attn", "c_enc_kv", "bias"),
    "attn.c_proj.w": ("attn", "c_proj", "kernel"),
    "attn.c_proj.b": ("attn", "c_proj", "bias"),
    "ln_0.weight": ("ln_0", "scale"),
    "ln_0.bias": ("ln_0", "bias"),
    "mlp.c_fc.w": ("mlp", "c_fc", "kernel"),
    "mlp.c_fc.b": ("mlp", "c_fc", "bias"),
    "mlp.c_proj.w": ("mlp", "c_proj", "kernel"),
    "mlp.c_proj.b": ("mlp", "c_proj", "bias"),
    "ln_1.weight": ("ln_1", "scale"),
    "ln_1.bias": ("ln_1", "bias"),
}
_CROSS_ONLY = ("attn.c_enc_kv.w", "attn.c_enc_kv.b")


def _set(tree: dict, path: Sequence[str], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: Sequence[str]):
    for name in path:
        tree = tree[name]
    return tree


def _layer_suffixes(attn_type: str) -> list[str]:
    return [s for s in LAYER_KEYS if attn_type == "cross" or s not in _CROSS_ONLY]


def autoregressive_from_torch(
    sd: Mapping[str, np.ndarray],
    prefix: str,
    layout: Sequence[str],
    merged_decoder: bool,
    stack: Callable[[list[np.ndarray]], Any] = np.stack,
) -> dict:
    """Params tree of an ``Autoregressive`` from the original state dict entries under ``prefix``.

    ``layout``: the attention type of every layer (``Autoregressive.layout``). ``stack`` joins the
    rows of a scanned layer group on a new axis 0; the converter passes one that defers the copy
    until the leaf is written (``np.stack`` would hold the whole transformer in memory at once).
    Raises KeyError when a key is missing or a key under the prefix is not used.
    """
    p = prefix if prefix.endswith(".") else prefix + "."
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if p + key not in sd:
            raise KeyError(f"missing {p + key} in the state dict")
        used.add(p + key)
        return np.asarray(sd[p + key])

    params: dict = {"x_emb": {"embedding": take("x_emb.weight")}, "pos_emb": take("pos_emb.pos_emb")}
    if p + "start_token" in sd:
        params["start_token"] = take("start_token")
    if p + "x_out.weight" in sd:
        w = take("x_out.weight")
        if merged_decoder:
            params["x_out"] = {"kernel": w.T}
        elif not np.array_equal(w, params["x_emb"]["embedding"]):
            raise ValueError(f"{p}x_out.weight differs from {p}x_emb.weight but the model ties them")

    segments = layer_segments(layout)
    layers: dict = {}
    for seg in segments:
        for r in range(seg.repeat):
            for j, attn_type in enumerate(seg.unit):
                i = seg.start + r * len(seg.unit) + j
                for suffix in _layer_suffixes(attn_type):
                    value = take(f"transformer._attn_mods.{i}.{suffix}")
                    if seg.scanned:
                        slot = layers.setdefault(seg.key, {}).setdefault(f"unit_{j}", {})
                        slot.setdefault(suffix, [None] * seg.repeat)[r] = value
                    else:
                        _set(layers.setdefault(seg.key, {}), LAYER_KEYS[suffix], value)
    transformer: dict = {}
    for seg in segments:
        if seg.scanned:
            for unit_key, entries in layers[seg.key].items():
                for suffix, rows in entries.items():
                    _set(transformer, (seg.key, unit_key, *LAYER_KEYS[suffix]), stack(rows))
        else:
            transformer[seg.key] = layers[seg.key]
    params["transformer"] = transformer

    unused = sorted(k for k in sd if k.startswith(p) and k not in used and k != p + "x_out.weight")
    if unused:
        raise KeyError(f"unused state-dict keys under {p!r}: {unused[:5]}{' ...' if len(unused) > 5 else ''}")
    return params


def autoregressive_to_torch(params: Mapping, prefix: str, layout: Sequence[str], only_encode: bool = False) -> dict:
    """The exact inverse: original state-dict entries (numpy) under ``prefix`` from our params.

    Without ``x_out`` in params (tied head) ``x_out.weight`` is written as a copy of ``x_emb.weight``,
    as the original state dict holds both (unless ``only_encode``: the lyric encoder has no head).
    """
    p = prefix if prefix.endswith(".") else prefix + "."
    out: dict[str, np.ndarray] = {p + "x_emb.weight": np.asarray(params["x_emb"]["embedding"])}
    if "start_token" in params:
        out[p + "start_token"] = np.asarray(params["start_token"])
    out[p + "pos_emb.pos_emb"] = np.asarray(params["pos_emb"])
    if "x_out" in params:
        out[p + "x_out.weight"] = np.asarray(params["x_out"]["kernel"]).T
    elif not only_encode:
        out[p + "x_out.weight"] = out[p + "x_emb.weight"]
    segments = layer_segments(layout)
    for i, attn_type in enumerate(layout):
        seg_key, unit_key, r = layer_location(segments, i)
        for suffix in _layer_suffixes(attn_type):
            if unit_key is None:
                value = _get(params["transformer"][seg_key], LAYER_KEYS[suffix])
            else:
                value = _get(params["transformer"][seg_key][unit_key], LAYER_KEYS[suffix])[r]
            out[f"{p}transformer._attn_mods.{i}.{suffix}"] = np.asarray(value)
    return out
