"""Model directories: an Orbax checkpoint of the params, ``config.json`` and optional ``vocab.json``.

A directory holds one component (a VQ-VAE or one prior) or a whole model with the subdirectories
``vqvae/`` and ``prior_level_{0,1,2}/``. Every Orbax call of the project lives here, so a move to
another checkpoint API is a one-file change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import future, type_handlers

from .atomic import atomic_dir, atomic_write
from .config import JukeboxConfig, config_from_dict
from .errors import CheckpointError, ConfigError, JukeboxError
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
    "check_replaceable",
    "verify_checksums",
    "CHECKSUMS_FILE",
]

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
PARAMS_DIR = "params"
# SHA-256 of every file the writer made, checked before the params are read (absent in older dirs).
CHECKSUMS_FILE = "checksums.json"
COMPONENT_NAMES = ("vqvae", "prior_level_0", "prior_level_1", "prior_level_2")
# What a directory written by save_model_dir / save_whole_model_dir may hold; --overwrite replaces
# nothing else.
_OWN_ENTRIES = frozenset({CONFIG_FILE, VOCAB_FILE, PARAMS_DIR, CHECKSUMS_FILE, *COMPONENT_NAMES})
_HASH_CHUNK = 4 * 2**20
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
    verify_checksums(path)  # a whole model's own config.json / vocab.json (its components: load_params)
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
        _write_json(tmp / CONFIG_FILE, config.to_json())
        if vocab is not None:
            _write_json(tmp / VOCAB_FILE, json.dumps(vocab, indent=1))
        write_checksums(tmp)

    return _atomic_write(path, overwrite, write)


def _atomic_write(path: PathLike, overwrite: bool, write: Callable[[Path], None]) -> Path:
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it)")
        check_replaceable(path)
    with atomic_dir(path) as tmp:
        write(tmp)
    return path


def _write_json(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_replaceable(path: PathLike, protect: tuple[PathLike, ...] = ()) -> None:
    """Raise CheckpointError unless ``path`` is something ``overwrite`` may replace: absent, an
    empty directory, or a model directory jukebox-flax wrote (only its own files). Never the
    current directory or a folder that holds it, nor one that holds any path of ``protect``
    (the source of a conversion)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink():
        raise CheckpointError(f"refusing to replace {path}: it is a symlink, not a model directory")
    if not path.is_dir():
        raise CheckpointError(f"refusing to replace {path}: it is a file, not a model directory")
    real = path.resolve()
    if _inside(Path.cwd().resolve(), real):
        raise CheckpointError(f"refusing to replace {path}: it is the current directory or holds it")
    for source in protect:
        if _inside(Path(source).resolve(), real):
            raise CheckpointError(f"refusing to replace {path}: it holds the source {source}")
    if not any(path.iterdir()):
        return
    if not _is_own_model_dir(path):
        raise CheckpointError(
            f"refusing to replace {path}: it is not a model directory jukebox-flax wrote "
            f"(only {', '.join(sorted(_OWN_ENTRIES))} may be there)"
        )


def _is_own_model_dir(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    if not names <= _OWN_ENTRIES or CONFIG_FILE not in names or not (path / CONFIG_FILE).is_file():
        return False
    if PARAMS_DIR in names:
        return (path / PARAMS_DIR).is_dir() and not names & set(COMPONENT_NAMES)
    parts = names & set(COMPONENT_NAMES)
    return bool(parts) and all((path / p).is_dir() and _is_own_model_dir(path / p) for p in parts)


# ------------------------------------------------------------------------------------------------
# Checksums


def _own_files(path: Path) -> list[Path]:
    """The files of one directory level (a component's params/ included, sub-components not)."""
    files = [p for p in sorted(path.iterdir()) if p.is_file() and p.name != CHECKSUMS_FILE]
    if (path / PARAMS_DIR).is_dir():
        files += sorted(p for p in (path / PARAMS_DIR).rglob("*") if p.is_file() and not p.is_symlink())
    return files


def _sha256(file: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
        if sync:  # the directory is renamed into place next: its files must be on disk first
            os.fsync(f.fileno())
    return digest.hexdigest()


def write_checksums(path: Path) -> None:
    """Write ``checksums.json`` (SHA-256 of every file of ``path``, see _own_files) and flush them."""
    sums = {p.relative_to(path).as_posix(): _sha256(p, sync=True) for p in _own_files(path)}
    _write_json(path / CHECKSUMS_FILE, json.dumps({"sha256": sums}, indent=1, sort_keys=True))


def verify_checksums(path: PathLike) -> None:
    """Raise CheckpointError naming the first damaged or missing file of a directory that has a
    ``checksums.json``; directories without one (older conversions) are accepted as they are."""
    path = Path(path)
    file = path / CHECKSUMS_FILE
    if not file.is_file():
        return
    try:
        sums = json.loads(file.read_text())["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{file} is damaged (not a checksum list)") from None
    root = path.resolve()
    for name, want in sorted(sums.items()):
        target = path / name
        if Path(name).is_absolute() or not _inside(target.resolve(), root):
            raise CheckpointError(f"{file} names {name!r}, outside {path}")
        if not target.is_file():
            raise CheckpointError(f"{target} is missing (listed in {file})")
        if _sha256(target) != want:
            raise CheckpointError(f"{target} is damaged: its SHA-256 differs from the one in {file}")


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


def _host_checkpointer(failures: list[BaseException]):
    """An Orbax checkpointer that writes numpy leaves without copying them and LazyArray leaves
    one at a time (Orbax's default deep-copies every host array first, doubling memory).

    A leaf whose ``load()`` raises (a damaged source tensor) is appended to ``failures`` and the
    remaining leaves are skipped: the caller raises it once Orbax has finished, since an
    exception inside Orbax's writer threads is logged as a traceback per array and can leave
    files behind.
    """

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
                    if failures:
                        return
                    try:
                        array = value.load() if isinstance(value, LazyArray) else value
                        if array.shape != tuple(value.shape) or array.dtype != value.dtype:
                            raise CheckpointError(
                                f"{info.name}: produced {array.dtype}{list(array.shape)}, "
                                f"declared {value.dtype}{list(value.shape)}"
                            )
                    except Exception as e:
                        failures.append(e)
                        return
                    try:
                        await type_handlers.NumpyHandler._background_serialize(self, [array], [info], [arg])
                    except Exception as e:  # a full or read-only disk
                        failures.append(e)
                        return
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
        failures: list[BaseException] = []
        try:
            with _orbax_errors_unlogged(), _host_checkpointer(failures) as ckptr:
                ckptr.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(params))  # synchronous
        except Exception as e:
            raise _write_error(failures[0] if failures else e, path) from None
        if failures:
            raise _write_error(failures[0], path) from None
    else:
        try:
            with _orbax_errors_unlogged(), ocp.StandardCheckpointer() as ckptr:
                ckptr.save(path / PARAMS_DIR, params)
                ckptr.wait_until_finished()
        except Exception as e:
            raise _write_error(e, path) from None
    _write_json(path / CONFIG_FILE, config.to_json())
    if vocab is not None:
        _write_json(path / VOCAB_FILE, json.dumps(vocab, indent=1))
    write_checksums(path)


@contextlib.contextmanager
def _orbax_errors_unlogged() -> Iterator[None]:
    """Orbax logs a failure of its writer threads with a traceback before raising it; the error
    is raised to the caller anyway (a full disk is one line on the command line, not a page)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write_error(error: BaseException, path: Path) -> BaseException:
    """What a failed Orbax write raised, as the error a user can act on: Tensorstore reports a full
    or read-only disk as a ValueError that carries the errno."""
    if isinstance(error, (JukeboxError, OSError)):
        return error
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))
    return CheckpointError(f"cannot write the checkpoint {path}: {_one_line(error)}")


def load_config(path: PathLike):
    """The config stored in a model directory (VQVAEConfig, PriorConfig or JukeboxConfig)."""
    if not Path(path).is_dir():
        what = "does not exist" if not Path(path).exists() else "is a file"
        raise CheckpointError(f"{path} {what}: expected a jukebox-flax model directory")
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} is not a jukebox-flax model directory (no {CONFIG_FILE})")
    data = _read_json(file)
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is damaged: expected a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(data)
    except (ConfigError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is damaged (not valid JSON: {e})") from None


def load_vocab(path: PathLike) -> dict | None:
    """The ``vocab.json`` of a directory, or None when it has none."""
    file = Path(path) / VOCAB_FILE
    if not file.is_file():
        return None
    data = _read_json(file)
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is damaged: expected a JSON object, got {type(data).__name__}")
    return data


def param_metadata(path: PathLike) -> Any:
    """The stored params tree of a component directory, with shape/dtype leaves (nothing is read)."""
    ckpt = Path(path).absolute() / PARAMS_DIR
    if not ckpt.is_dir():
        raise CheckpointError(f"{path} has no {PARAMS_DIR}/ checkpoint")
    # Orbax reads an incomplete checkpoint as an empty tree: check its index files first.
    if not (ckpt / "_METADATA").is_file():
        raise CheckpointError(f"{ckpt} is damaged: _METADATA is missing")
    stored = _read_json(ckpt / "_METADATA")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{ckpt / '_METADATA'} is damaged: expected a JSON object")
    if stored.get("use_ocdbt", True) and not (ckpt / "manifest.ocdbt").is_file():
        raise CheckpointError(f"{ckpt} is damaged: manifest.ocdbt is missing")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(ckpt)
        except Exception as e:  # orbax raises several types for unreadable checkpoints
            raise CheckpointError(f"cannot read the checkpoint in {ckpt}: {_one_line(e)}") from None
    meta = getattr(meta, "item_metadata", meta)
    if not jax.tree_util.tree_leaves(getattr(meta, "tree", meta), is_leaf=_is_array_metadata):
        raise CheckpointError(f"{ckpt} is damaged: it holds no arrays")
    return meta


def _is_array_metadata(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_params(
    path: PathLike,
    dtype: Any = None,
    sharding: Callable[[tuple[str, ...], tuple[int, ...]], Any] | None = None,
    expected: Any = None,
) -> Any:
    """Restore the params of a component directory.

    Arrays are restored straight into ``dtype`` (when given; or ``dtype(path_tuple, stored_dtype)``
    per leaf, for mixed layouts such as the released fp16 one) and into the sharding returned by
    ``sharding(path_tuple, shape)`` (when given), so no full-precision host copy is made.
    ``expected`` (a pytree of arrays or ShapeDtypeStructs, e.g. from ``jax.eval_shape`` of the
    module's init) is checked against the stored tree: a missing, extra or mis-shaped entry is an
    error that names it.
    """
    verify_checksums(path)
    meta = param_metadata(path)
    if expected is not None:
        check_tree(meta, expected, where=str(path))
    ckpt = Path(path).absolute() / PARAMS_DIR
    with ocp.StandardCheckpointer() as ckptr:

        def target(keypath, m):
            shard = sharding(path_names(keypath), tuple(m.shape)) if sharding is not None else None
            if shard is None:
                shard = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            per_leaf = callable(dtype) and not isinstance(dtype, type)  # jnp.float16 etc. are classes
            want = dtype(path_names(keypath), m.dtype) if per_leaf else dtype
            return jax.ShapeDtypeStruct(tuple(m.shape), want or m.dtype, sharding=shard)

        abstract = jax.tree_util.tree_map_with_path(target, meta)
        try:
            return ckptr.restore(ckpt, abstract)
        except Exception as e:
            raise CheckpointError(f"cannot restore the checkpoint in {ckpt}: {_one_line(e)}") from None


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
