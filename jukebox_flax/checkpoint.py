"""Model directories: an Orbax checkpoint of the params, ``config.json`` and optional ``vocab.json``.

A directory holds one component (a VQ-VAE or one prior) or a whole model with the subdirectories
``vqvae/`` and ``prior_level_{0,1,2}/``. Every Orbax call of the project lives here, so a move to
another checkpoint API is a one-file change.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import future, type_handlers

from .atomic import atomic_dir
from .config import JukeboxConfig, config_from_dict
from .errors import CheckpointError, ConfigError
from .tree import path_names, tree_paths

__all__ = [
    "CheckpointError",
    "save_model_dir",
    "load_config",
    "load_params",
    "param_metadata",
    "load_vocab",
    "component_dir",
    "is_model_dir",
    "LazyArray",
    "save_whole_model_dir",
]

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
PARAMS_DIR = "params"
# Host memory the writer may hold in produced-but-unwritten arrays (see _host_checkpointer).
WRITE_BUDGET_BYTES = 256 * 2**20


def is_model_dir(path: PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def component_dir(path: PathLike, component: str) -> Path:
    """The directory of ``component`` ('vqvae' or 'prior_level_L') inside ``path``.

    ``path`` may be the component's own directory or a whole-model directory.
    """
    path = Path(path)
    if not is_model_dir(path):
        raise CheckpointError(f"{path} is not a jukebox-flax model directory (no {CONFIG_FILE})")
    config = load_config(path)
    if isinstance(config, JukeboxConfig):
        sub = path / component
        if not is_model_dir(sub):
            raise CheckpointError(f"whole-model directory {path} has no {component}/")
        return sub
    return path


def save_model_dir(
    path: PathLike,
    params: Any,
    config: Any,
    vocab: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a component directory atomically (into a temporary sibling, then renamed).

    A crash leaves either the old directory or the complete new one, never a partial one.
    Leaves may be numpy/jax arrays or ``LazyArray``s (produced one at a time while writing).
    """
    return _atomic_write(path, overwrite, lambda tmp: write_component(tmp, params, config, vocab))


def save_whole_model_dir(
    path: PathLike,
    components: dict[str, tuple[Any, Any, dict | None]],
    config: JukeboxConfig,
    vocab: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a whole-model directory atomically: ``config.json`` (a JukeboxConfig), optional
    ``vocab.json`` (the top prior's), and one component directory per entry of ``components``
    (``{'vqvae': (params, VQVAEConfig, None), 'prior_level_0': (params, PriorConfig, vocab), ...}``).
    """

    def write(tmp: Path) -> None:
        for name, (params, component_config, component_vocab) in components.items():
            sub = tmp / name
            sub.mkdir()
            write_component(sub, params, component_config, component_vocab)
        (tmp / CONFIG_FILE).write_text(config.to_json())
        if vocab is not None:
            (tmp / VOCAB_FILE).write_text(json.dumps(vocab, indent=1))

    return _atomic_write(path, overwrite, write)


def _atomic_write(path: PathLike, overwrite: bool, write: Callable[[Path], None]) -> Path:
    path = Path(path).absolute()
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it)")
    with atomic_dir(path) as tmp:
        write(tmp)
    return path


class LazyArray:
    """A checkpoint leaf whose data is produced only when it is written.

    ``load()`` returns a numpy array of ``shape`` and ``dtype``; ``release()`` (optional) runs
    once that array is on disk. Writing a tree of these holds about one array in memory at a
    time, which is how the converter streams multi-GB checkpoints.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        load: Callable[[], np.ndarray],
        release: Callable[[], None] | None = None,
    ):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.load = load
        self.release = release or (lambda: None)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"LazyArray({self.shape}, {self.dtype})"


def _host_checkpointer():
    """An Orbax checkpointer that writes numpy leaves without copying them and LazyArray leaves
    one at a time (Orbax's default deep-copies every host array first, doubling memory)."""

    class HostArrayHandler(type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__(deepcopy_host_arrays=False)

        async def _background_serialize(self, values, infos, args=None):
            # Several small arrays at once (one Tensorstore write each is slow), but never more
            # than WRITE_BUDGET_BYTES of produced arrays in flight: memory stays bounded.
            in_flight = 0
            ready = asyncio.Condition()

            async def write_one(value, info, arg):
                nonlocal in_flight
                size = int(value.nbytes)
                async with ready:
                    await ready.wait_for(lambda: in_flight == 0 or in_flight + size <= WRITE_BUDGET_BYTES)
                    in_flight += size
                try:
                    array = value.load() if isinstance(value, LazyArray) else value
                    if array.shape != tuple(value.shape) or array.dtype != value.dtype:
                        raise CheckpointError(
                            f"{info.name}: produced {array.dtype}{list(array.shape)}, "
                            f"declared {value.dtype}{list(value.shape)}"
                        )
                    await type_handlers.NumpyHandler._background_serialize(self, [array], [info], [arg])
                    del array
                    if isinstance(value, LazyArray):
                        value.release()
                finally:
                    async with ready:
                        in_flight -= size
                        ready.notify_all()

            await asyncio.gather(*(write_one(v, i, a) for v, i, a in zip(values, infos, args)))

        async def serialize(self, values, infos, args=None):
            args = args or [ocp.SaveArgs()] * len(values)
            return [
                future.CommitFutureAwaitingContractedSignals(
                    self._background_serialize(values, infos, args), name="host_array_writer"
                )
            ]

    handler = HostArrayHandler()
    registry = type_handlers.create_type_handler_registry(
        (LazyArray, handler), (np.ndarray, handler), (jax.Array, type_handlers.ArrayHandler())
    )
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))


def write_component(path: Path, params: Any, config: Any, vocab: dict | None = None) -> None:
    """Write params, config and vocab into an existing (empty) directory ``path``."""
    path = Path(path).absolute()
    leaves = jax.tree_util.tree_leaves(params)
    if leaves and all(isinstance(leaf, (np.ndarray, LazyArray)) for leaf in leaves):
        with _host_checkpointer() as ckptr:
            ckptr.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(params))  # synchronous
    else:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path / PARAMS_DIR, params)
            ckptr.wait_until_finished()
    (path / CONFIG_FILE).write_text(config.to_json())
    if vocab is not None:
        (path / VOCAB_FILE).write_text(json.dumps(vocab, indent=1))


def load_config(path: PathLike):
    """The config stored in a model directory (VQVAEConfig, PriorConfig or JukeboxConfig)."""
    file = Path(path) / CONFIG_FILE
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a jukebox-flax model directory (no {CONFIG_FILE})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    try:
        return config_from_dict(data)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def load_vocab(path: PathLike) -> dict | None:
    file = Path(path) / VOCAB_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def param_metadata(path: PathLike) -> Any:
    """The stored params tree of a component directory, with shape/dtype leaves (nothing is read)."""
    ckpt = Path(path).absolute() / PARAMS_DIR
    if not ckpt.is_dir():
        raise CheckpointError(f"{path} has no {PARAMS_DIR}/ checkpoint")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(ckpt)
        except Exception as e:  # orbax raises several types for unreadable checkpoints
            raise CheckpointError(f"cannot read the checkpoint in {ckpt}: {e}") from None
    return getattr(meta, "item_metadata", meta)


def load_params(
    path: PathLike,
    dtype: Any = None,
    sharding: Callable[[tuple[str, ...], tuple[int, ...]], Any] | None = None,
    expected: Any = None,
) -> Any:
    """Restore the params of a component directory.

    Arrays are restored straight into ``dtype`` (when given) and into the sharding returned by
    ``sharding(path_tuple, shape)`` (when given), so no full-precision host copy is made.
    ``expected`` (a pytree of arrays or ShapeDtypeStructs, e.g. from ``jax.eval_shape`` of the
    module's init) is checked against the stored tree: a missing, extra or mis-shaped entry is an
    error that names it.
    """
    meta = param_metadata(path)
    if expected is not None:
        check_tree(meta, expected, where=str(path))
    ckpt = Path(path).absolute() / PARAMS_DIR
    with ocp.StandardCheckpointer() as ckptr:

        def target(keypath, m):
            shard = sharding(path_names(keypath), tuple(m.shape)) if sharding is not None else None
            if shard is None:
                shard = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.ShapeDtypeStruct(tuple(m.shape), dtype or m.dtype, sharding=shard)

        abstract = jax.tree_util.tree_map_with_path(target, meta)
        try:
            return ckptr.restore(ckpt, abstract)
        except Exception as e:
            raise CheckpointError(f"cannot restore the checkpoint in {ckpt}: {e}") from None


def check_tree(stored: Any, expected: Any, where: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped entry."""

    def flat(tree):
        return {
            name: tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
            for name, leaf in tree_paths(tree).items()
        }

    have, want = flat(stored), flat(expected)
    problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [
        f"{k} has shape {have[k]}, expected {want[k]}" for k in sorted(set(have) & set(want)) if have[k] != want[k]
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise CheckpointError(f"{where} does not match the model: {shown}")
