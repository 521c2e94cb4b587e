"""Names of the leaves of a params tree: a key path -> ``('prior', 'x_emb', 'embedding')`` or
``'prior/x_emb/embedding'``, the one spelling every module uses (sharding rules, checkpoint checks,
the converter's key tables, memory plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["key_name", "path_names", "path_name", "named_leaves", "tree_paths"]


def key_name(key: Any) -> str:
    """One entry of a jax key path as text: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(keypath: Sequence[Any]) -> tuple[str, ...]:
    """A jax key path as a tuple of names."""
    return tuple(key_name(k) for k in keypath)


def path_name(keypath: Sequence[Any]) -> str:
    """A jax key path as one '/'-joined name."""
    return "/".join(path_names(keypath))


def named_leaves(tree: Any) -> dict[tuple[str, ...], Any]:
    """``{path names: leaf}`` of every leaf of ``tree``, in jax's flattening order."""
    return {path_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tree_paths(tree: Any) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` of every leaf of ``tree``, in jax's flattening order."""
    return {"/".join(names): leaf for names, leaf in named_leaves(tree).items()}
