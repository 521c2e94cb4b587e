"""VQ-VAE weights: original openai/jukebox state dict <-> jukebox-flax param tree (numpy only).

The Flax tree mirrors the original module tree: every ``name.i.j`` run of the key becomes one
tree level ``name_i_j``, and the leaf ``weight`` becomes ``kernel``::

    encoders.0.level_blocks.0.model.0.1.model.3.model.1.weight
    -> params['encoders_0']['level_blocks_0']['model_0_1']['model_3']['model_1']['kernel']
    bottleneck.level_blocks.2.k -> params['bottleneck']['level_blocks_2']['k']

Conv1d weights ``[out, in, k]`` and ConvTranspose1d weights ``[in, out, k]`` both become
``w.transpose(2, 1, 0)`` (Flax ``Conv`` kernel ``[k, in, out]``; the transposed convs use
``transpose_kernel=True`` whose kernel is ``[k, out, in]``). Biases and the codebook are copied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jukebox_flax.errors import VQVAEKeyError
from jukebox_flax.tree import named_leaves
from jukebox_flax.vqvae.api import vqvae_param_shapes

__all__ = [
    "VQVAEKeyError",
    "flax_path",
    "original_key",
    "vqvae_params_from_state_dict",
    "vqvae_state_dict_from_params",
]


_LEAF_TO_FLAX = {"weight": "kernel", "bias": "bias", "k": "k"}
_LEAF_TO_TORCH = {v: k for k, v in _LEAF_TO_FLAX.items()}


def flax_path(key: str) -> tuple[str, ...]:
    """``'encoders.0.level_blocks.0.model.0.1.weight'``
    -> ``('encoders_0', 'level_blocks_0', 'model_0_1', 'kernel')``."""
    parts = key.split(".")
    *body, leaf = parts
    path: list[str] = []
    for part in body:
        if part.isdigit():
            if not path:
                raise VQVAEKeyError(f"key {key!r} starts with an index")
            path[-1] += f"_{part}"
        else:
            path.append(part)
    if leaf not in _LEAF_TO_FLAX:
        raise VQVAEKeyError(f"unexpected VQ-VAE key {key!r} (leaf {leaf!r})")
    return tuple(path) + (_LEAF_TO_FLAX[leaf],)


def original_key(path: tuple[str, ...]) -> str:
    """The inverse of :func:`flax_path`."""
    *body, leaf = path
    parts = []
    for name in body:
        m = re.fullmatch(r"(.*?)((?:_\d+)*)", name)
        assert m is not None
        parts.append(m.group(1))
        parts.extend(i for i in m.group(2).split("_") if i)
    return ".".join(parts + [_LEAF_TO_TORCH[leaf]])


def _to_flax(path: tuple[str, ...], w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 1, 0) if path[-1] == "kernel" else w


def _flax_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``_to_flax`` would give, for any rank (checked before anything is transposed)."""
    return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def _to_torch(path: tuple[str, ...], w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 1, 0) if path[-1] == "kernel" else w


def _expected_shapes(config: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    return vqvae_param_shapes(config)


def _check(
    found: Mapping[tuple[str, ...], tuple[int, ...]], expected: Mapping[tuple[str, ...], tuple[int, ...]], name: Any
) -> None:
    problems = [f"missing {name(p)} {expected[p]}" for p in sorted(set(expected) - set(found))]
    problems += [f"unexpected {name(p)}" for p in sorted(set(found) - set(expected))]
    problems += [
        f"{name(p)} has shape {found[p]}, expected {expected[p]}"
        for p in sorted(set(found) & set(expected))
        if tuple(found[p]) != tuple(expected[p])
    ]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems)" if len(problems) > 10 else "")
        raise VQVAEKeyError(f"VQ-VAE state dict does not match the config: {shown}")


def vqvae_params_from_state_dict(sd: Mapping[str, np.ndarray], config: Any, dtype: Any = None) -> dict:
    """The Flax param tree of a VQ-VAE from its original state dict (keys as in ``vqvae.pth.tar``).

    A leading ``module.`` (DDP) is ignored. Every key must be present with the shape the config
    implies; anything missing, unexpected or mis-shaped is an error that names it.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in sd.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        flat[flax_path(key)] = np.asarray(value)
    # keys and shapes first: an unexpected tensor of another rank is named, not transposed
    expected = _expected_shapes(config)
    _check({p: _flax_shape(p, w.shape) for p, w in flat.items()}, expected, lambda p: original_key(p))
    params: dict = {}
    for path, w in flat.items():
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        w = _to_flax(path, w)
        node[path[-1]] = w.astype(dtype) if dtype is not None else w
    return params


def vqvae_state_dict_from_params(params: Mapping, config: Any) -> dict[str, np.ndarray]:
    """The exact inverse of :func:`vqvae_params_from_state_dict`: original keys, torch layouts, numpy arrays."""
    flat = {names: np.asarray(value) for names, value in named_leaves(params).items()}
    _check({p: w.shape for p, w in flat.items()}, _expected_shapes(config), lambda p: "/".join(p))
    return {original_key(p): np.ascontiguousarray(_to_torch(p, w)) for p, w in sorted(flat.items())}
