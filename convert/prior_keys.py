"""Original openai/jukebox prior state-dict keys <-> jukebox-flax prior params (numpy, no torch).

    params = prior_params_from_state_dict(sd, config)      # PriorConfig
    sd = prior_state_dict_from_params(params, config)      # the exact inverse (every key)

Our top-level param names and the original prefixes they come from:

    upper_conditioner  <- conditioner_blocks.0   (upsamplers: codes of the level above;
                                                  `cond.model.J.K` -> cond/model_J_K, res blocks
                                                  `.blocks.D.model.{1,3}` -> blocks_D/model_{1,3})
    label_conditioner  <- y_emb                  (bow_genre_emb -> genre_emb, artist_emb, timing embs)
    lyric_encoder      <- prime_prior            (5b_lyrics lyric transformer, only_encode)
    lyric_proj / lyric_ln / lyric_head <- prime_state_proj / prime_state_ln / prime_x_out
    prior              <- prior                  (the ConditionalAutoregressive2D)

``prior_key_table`` lists the keys outside the two transformers (with layout change and original
shape); ``convert/transformer_keys.py`` maps ``prior.*`` / ``prime_prior.*``. The tied
``prior.x_out.weight`` of non-merged decoders is accepted on input (must equal x_emb) and written
on output. Leaves may also be shape/dtype structs such as ``jax.ShapeDtypeStruct`` (only shapes
move), so the released key sets can be checked on ``jax.eval_shape`` trees without allocating.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jukebox_flax.config import attention_layout
from jukebox_flax.errors import PriorKeyError
from jukebox_flax.prior.api import abstract_prior_params
from jukebox_flax.tree import named_leaves

from .transformer_keys import autoregressive_from_torch, autoregressive_to_torch

__all__ = [
    "PriorKeyError",
    "KeyEntry",
    "prior_key_table",
    "prior_params_from_state_dict",
    "prior_state_dict_from_params",
]

# Layout changes, original -> ours. 'same': as is. 'linear': nn.Linear [out, in] -> kernel [in, out].
# 'conv': Conv1d [out, in, k] -> [k, in, out], and ConvTranspose1d [in, out, k] -> [k, out, in]
# (Flax ConvTranspose with transpose_kernel=True); both reverse the axes.
_PERMUTATIONS = {"same": None, "linear": (1, 0), "conv": (2, 1, 0)}


@dataclass(frozen=True)
class KeyEntry:
    """One original state-dict key: where it lives in our params and how its layout changes."""

    key: str
    path: tuple[str, ...]
    layout: str  # 'same' | 'linear' | 'conv'
    shape: tuple[int, ...]  # the original (torch) shape


def _permute(leaf: Any, layout: str) -> Any:
    axes = _PERMUTATIONS[layout]
    if hasattr(leaf, "__array__"):
        arr = np.asarray(leaf)
        return arr if axes is None else np.transpose(arr, axes)
    # a shape/dtype struct (e.g. jax.ShapeDtypeStruct): permute the shape only
    shape = tuple(leaf.shape)
    if axes is not None:
        shape = tuple(shape[a] for a in axes)
    return type(leaf)(shape, leaf.dtype)


def _shape_after(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    axes = _PERMUTATIONS[layout]
    return shape if axes is None else tuple(shape[a] for a in axes)


def _conditioner_table(c) -> list[KeyEntry]:
    """conditioner_blocks.0.*: x_emb, the decoder-style conv stack (res blocks under `.blocks.`), ln."""
    pre, root = "conditioner_blocks.0.", ("upper_conditioner",)
    w, cw = c.width, c.cond_width
    n_state = int(c.cond_m_conv * cw)
    kernel = 2 * c.cond_stride_t
    out = [
        KeyEntry(pre + "x_emb.weight", root + ("x_emb", "embedding"), "same", (c.bins, w)),
        KeyEntry(pre + "cond.model.0.weight", root + ("cond", "model_0", "kernel"), "conv", (cw, w, 3)),
        KeyEntry(pre + "cond.model.0.bias", root + ("cond", "model_0", "bias"), "same", (cw,)),
    ]
    for i in range(1, c.cond_down_t + 1):
        for d in range(c.cond_depth):
            for conv, shape in (("1", (n_state, cw, 3)), ("3", (cw, n_state, 1))):
                key = f"{pre}cond.model.{i}.0.blocks.{d}.model.{conv}"
                path = root + ("cond", f"model_{i}_0", f"blocks_{d}", f"model_{conv}")
                out.append(KeyEntry(key + ".weight", path + ("kernel",), "conv", shape))
                out.append(KeyEntry(key + ".bias", path + ("bias",), "same", (shape[0],)))
        features = w if i == c.cond_down_t else cw
        head = root + ("cond", f"model_{i}_1")
        out.append(KeyEntry(f"{pre}cond.model.{i}.1.weight", head + ("kernel",), "conv", (cw, features, kernel)))
        out.append(KeyEntry(f"{pre}cond.model.{i}.1.bias", head + ("bias",), "same", (features,)))
    out += [
        KeyEntry(pre + "ln.weight", root + ("ln", "scale"), "same", (w,)),
        KeyEntry(pre + "ln.bias", root + ("ln", "bias"), "same", (w,)),
    ]
    return out


def _label_table(c) -> list[KeyEntry]:
    root, w = ("label_conditioner",), c.width
    names = [("bow_genre_emb", "genre_emb", c.genre_bins), ("artist_emb", "artist_emb", c.artist_bins)]
    if c.has_timing:
        names += [(n, n, c.t_bins) for n in ("total_length_emb", "absolute_pos_emb", "relative_pos_emb")]
    return [
        KeyEntry(f"y_emb.{orig}.emb.weight", root + (ours, "embedding"), "same", (bins, w))
        for orig, ours, bins in names
    ]


def _lyric_head_table(c) -> list[KeyEntry]:
    ew, w = c.encoder.width, c.width
    return [
        KeyEntry("prime_state_proj.w", ("lyric_proj", "kernel"), "same", (ew, w)),
        KeyEntry("prime_state_proj.b", ("lyric_proj", "bias"), "same", (w,)),
        KeyEntry("prime_state_ln.weight", ("lyric_ln", "scale"), "same", (w,)),
        KeyEntry("prime_state_ln.bias", ("lyric_ln", "bias"), "same", (w,)),
        KeyEntry("prime_x_out.weight", ("lyric_head", "kernel"), "linear", (c.n_vocab, w)),
    ]


def prior_key_table(config) -> list[KeyEntry]:
    """Every original key outside the two transformers (``prior.*``, ``prime_prior.*``, which
    ``convert/transformer_keys.py`` maps) of a prior built from ``config`` (a PriorConfig)."""
    c = config
    entries: list[KeyEntry] = []
    if c.is_upsampler:
        entries += _conditioner_table(c)
    if c.labels:
        entries += _label_table(c)
    if c.lyrics == "separate":
        entries += _lyric_head_table(c)
    return entries


_TRANSFORMER_PREFIXES = ("prior.", "prime_prior.")
_PLAIN_RES = re.compile(r"^(conditioner_blocks\.0\.cond\.model\.\d+\.0)\.model\.(\d+\.model\.[13]\.)")


def _problems_message(what: str, problems: list[str]) -> str:
    shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems)" if len(problems) > 10 else "")
    return f"{what}: {shown}"


def _normalise_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Strip a DDP `module.` prefix and accept the conditioner's `.model.{d}` spelling of `.blocks.{d}`."""
    out = {}
    for key, value in sd.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        # checkpoint_res=0 names the res blocks `.0.model.{d}.model.` instead of `.0.blocks.{d}.model.`
        key = _PLAIN_RES.sub(r"\1.blocks.\2", key)
        out[key] = value
    return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _is_array(leaf: Any) -> bool:
    return hasattr(leaf, "__array__")


def _as_view(leaf: Any) -> np.ndarray:
    """An array, or a zero-strided stand-in (no memory) for a shape/dtype struct."""
    if _is_array(leaf):
        return np.asarray(leaf)
    return np.broadcast_to(np.zeros((), leaf.dtype), tuple(leaf.shape))


def prior_params_from_state_dict(sd: Mapping[str, Any], config, stack: Callable[[list], Any] = np.stack) -> dict:
    """Original prior state dict -> our nested params dict (numpy arrays, dtypes kept).

    ``stack`` joins the per-layer tensors of scanned layer groups (see ``autoregressive_from_torch``).
    Raises ``PriorKeyError`` naming every missing, unexpected or mis-shaped key.
    """
    c = config
    sd = _normalise_keys(sd)
    entries = prior_key_table(c)
    own = {e.key for e in entries}
    problems = [f"missing {k}" for k in sorted(own - set(sd))]
    problems += [f"unexpected {k}" for k in sorted(sd) if k not in own and not k.startswith(_TRANSFORMER_PREFIXES)]
    problems += [
        f"{e.key} has shape {tuple(sd[e.key].shape)}, expected {e.shape}"
        for e in entries
        if e.key in sd and tuple(sd[e.key].shape) != e.shape
    ]
    if c.lyrics != "separate":
        problems += [
            f"unexpected {k} (this prior has no lyric encoder)" for k in sorted(sd) if k.startswith("prime_prior.")
        ]
    if problems:
        raise PriorKeyError(_problems_message("state dict does not match the prior config", problems))

    params: dict = {}
    for e in entries:
        _set(params, e.path, _permute(sd[e.key], e.layout))
    try:
        params["prior"] = autoregressive_from_torch(sd, "prior.", c.attention_layout, c.merged_decoder, stack)
        if c.lyrics == "separate":
            layout = _encoder_layout(c)
            params["lyric_encoder"] = autoregressive_from_torch(sd, "prime_prior.", layout, False, stack)
    except (KeyError, ValueError) as e:
        raise PriorKeyError(f"state dict does not match the prior config: {e.args[0] if e.args else e}") from None
    _check_transformer_shapes(params, c)
    return params


def _encoder_layout(c) -> tuple[str, ...]:
    return attention_layout(c.encoder.attn_order, c.encoder.depth)


def _check_transformer_shapes(params: Mapping[str, Any], c) -> None:
    """Compare the transformer parts with the shapes the model expects (``jax.eval_shape``)."""
    want = named_leaves(abstract_prior_params(c))
    have = named_leaves(params)
    problems = [f"missing params/{'/'.join(p)}" for p in sorted(set(want) - set(have))]
    problems += [f"unexpected params/{'/'.join(p)}" for p in sorted(set(have) - set(want))]
    problems += [
        f"params/{'/'.join(p)} has shape {tuple(have[p].shape)}, expected {tuple(want[p].shape)}"
        for p in sorted(set(want) & set(have))
        if tuple(have[p].shape) != tuple(want[p].shape)
    ]
    if problems:
        raise PriorKeyError(_problems_message("state dict does not match the prior config", problems))


def prior_state_dict_from_params(params: Mapping[str, Any], config) -> dict[str, Any]:
    """Our params -> the original state dict (every key, incl. the tied ``prior.x_out.weight``).

    The exact inverse of ``prior_params_from_state_dict``. Leaves may be shape/dtype structs (e.g.
    from ``jax.eval_shape``): the result then holds structs of the same type with the original shapes.
    """
    if "params" in params and len(params) == 1:
        params = params["params"]
    c = config
    flat = named_leaves(params)
    structs = not all(_is_array(v) for v in flat.values())
    make: Any = None
    if structs:
        make = type(next(v for v in flat.values() if not _is_array(v)))
        params = _unflatten({k: _as_view(v) for k, v in flat.items()})
        flat = named_leaves(params)
    entries = prior_key_table(c)
    wanted = {e.path for e in entries}
    roots = {"prior", "lyric_encoder"} if c.lyrics == "separate" else {"prior"}
    problems = [f"missing params/{'/'.join(p)}" for p in sorted(wanted - set(flat))]
    problems += [f"missing params/{r}" for r in sorted(roots - set(params))]
    problems += [f"unexpected params/{'/'.join(p)}" for p in sorted(flat) if p not in wanted and p[0] not in roots]
    problems += [
        f"params/{'/'.join(e.path)} has shape {tuple(flat[e.path].shape)}, expected {_shape_after(e.shape, e.layout)}"
        for e in entries
        if e.path in flat and tuple(flat[e.path].shape) != _shape_after(e.shape, e.layout)
    ]
    if problems:
        raise PriorKeyError(_problems_message("params do not match the prior config", problems))
    sd: dict[str, Any] = {
        e.key: _permute(flat[e.path], e.layout) for e in entries
    }  # each permutation is its own inverse
    try:
        if c.lyrics == "separate":
            sd.update(
                autoregressive_to_torch(params["lyric_encoder"], "prime_prior.", _encoder_layout(c), only_encode=True)
            )
        sd.update(autoregressive_to_torch(params["prior"], "prior.", c.attention_layout))
    except (KeyError, IndexError) as e:
        raise PriorKeyError(f"params do not match the prior config: missing {e}") from None
    if structs:
        sd = {k: make(tuple(v.shape), v.dtype) for k, v in sd.items()}
    return sd


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        _set(out, path, value)
    return out
