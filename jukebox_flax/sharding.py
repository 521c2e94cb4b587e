"""Running on many devices: a named device mesh and sharding rules for params, KV caches and batches.

JAX's SPMD machinery does the work: arrays are placed with ``NamedSharding`` and the jitted model,
sampler and training step are compiled for those placements (GSPMD propagation; the mesh uses
``AxisType.Auto`` so no sharding annotations are needed inside the model).

    mesh = make_mesh(data=4, model=2)                 # 8 devices: 4-way batch x 2-way tensor parallel
    prior = load_prior(DIR, mesh=mesh)                # Orbax restores every param straight into its shard
    tokens = sample_prior(prior, key, n, y=y, mesh=mesh)   # batch rows split over 'data'

Mesh axes: ``data`` splits the batch (tokens, conditioning, KV caches); ``model`` splits the
attention projections' q/k/v width and the MLP width (Megatron style: c_attn / c_fc column-split,
c_proj row-split), the KV caches' feature width, and optionally the vocabulary.

Rules work as in MaxText: every param is created with *logical* axis names
(``nn.with_logical_partitioning`` where the module creates it, e.g. ('embed', 'mlp') for c_fc;
scanned runs add 'layers' in front), ``logical_axes`` reads them from an abstract init
(``jax.eval_shape``) into a ``ParamAxes`` table {param path: names}, and ``RULES`` maps logical
names to mesh axes. A dimension is split only when the mesh axis divides it. A leaf without axes is
an error, not silently replicated. Trees that mirror the params (optimizer moments, gradients) find
their leaves' axes by the param path their own path ends with; scalars (step counts) are replicated.

Multi-host: call :func:`initialize_distributed` first thing in every process (see README "Scale").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .errors import ShardingError
from .tree import path_names

__all__ = [
    "ShardingError",
    "RULES",
    "make_mesh",
    "ParamAxes",
    "CONV_AXES",
    "logical_axes",
    "axes_of",
    "logical_spec",
    "param_specs",
    "param_shardings",
    "shard_params",
    "checkpoint_sharding",
    "cache_shardings",
    "shard_cache",
    "batch_sharding",
    "shard_batch",
    "initialize_distributed",
    "to_host",
]

DATA, MODEL = "data", "model"

# logical axis -> mesh axis (None: replicated). 'vocab' stays replicated: the logits are small and
# sampling reads a whole row.
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("heads", MODEL),  # q/k/v width (heads x head dim): c_attn / c_enc_kv columns, c_proj rows
    ("mlp", MODEL),  # MLP hidden width: c_fc columns, c_proj rows
    ("kv", MODEL),  # KV cache feature width (= the heads axis of k/v)
    ("vocab", None),
    ("embed", None),
    ("ctx", None),
    ("cache_len", None),
    ("layers", None),
    ("labels", None),  # artist / genre / timing bins
    ("conv_window", None),
    ("conv_in", None),
    ("conv_out", None),
)

# The VQ-VAE's convolutions (vqvae/encdec.py; also the upsamplers' conditioner) carry no axis
# metadata: leaf name -> logical axes (all replicated: they are small).
CONV_AXES: dict[str, tuple[str, ...]] = {"kernel": ("conv_window", "conv_in", "conv_out"), "bias": ("conv_out",)}

# {param path: logical axis name (or None) of every dimension}
ParamAxes = dict[tuple[str, ...], tuple[str | None, ...]]

# a KV cache leaf [R, B, S, n_state] (prior/transformer.py)
CACHE_AXES = ("layers", "batch", "cache_len", "kv")


# ------------------------------------------------------------------------------------------------
# Mesh


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all devices of all processes).

    ``data`` defaults to ``len(devices) // model``. Axis types are ``Auto`` (classic GSPMD
    propagation; jax 0.10 defaults to ``Explicit``, which would require annotations in the model).
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ShardingError(f"model={model} must divide the {len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data < 1 or data * model > len(devices):
        raise ShardingError(f"a {data} x {model} mesh needs {data * model} devices, {len(devices)} available")
    return jax.make_mesh(
        (data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[: data * model]
    )


# ------------------------------------------------------------------------------------------------
# Logical axes -> PartitionSpec


def logical_axes(boxed: Any, conv_subtrees: Sequence[tuple[str, ...]] = ()) -> ParamAxes:
    """The ``ParamAxes`` of an init's params with their metadata (``jax.eval_shape(module.init)``,
    leaves ``nn.LogicallyPartitioned``). Leaves under a path of ``conv_subtrees`` are VQ-VAE
    convolutions (``CONV_AXES``); any other leaf without names is a ShardingError."""
    out: ParamAxes = {}
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for keypath, leaf in leaves:
        path = path_names(keypath)
        if isinstance(leaf, nn.Partitioned):
            names = tuple(leaf.names)
        elif any(path[: len(sub)] == tuple(sub) for sub in conv_subtrees) and path[-1] in CONV_AXES:
            names = CONV_AXES[path[-1]]
        else:
            raise ShardingError(
                f"param {'/'.join(path)} has no logical axes (create it with nn.with_logical_partitioning)"
            )
        shape = np.shape(leaf.value if isinstance(leaf, nn.Partitioned) else leaf)
        if len(names) != len(shape):
            raise ShardingError(f"param {'/'.join(path)} of shape {shape} has axes {names}")
        out[path] = names
    return out


def axes_of(path: Sequence[str], ndim: int, axes: ParamAxes) -> tuple[str | None, ...]:
    """The logical axes of the leaf at ``path``: the param's own, or those of the param path it ends
    with (a tree mirroring the params: optimizer moments); rank 0 (a step count): none."""
    path = tuple(path)
    for i in range(len(path)):
        names = axes.get(path[i:])
        if names is not None and len(names) == ndim:
            return names
    if ndim == 0:
        return ()
    raise ShardingError(f"no logical axes for {'/'.join(path)} (rank {ndim}): not a param of this model")


def logical_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES
) -> PartitionSpec:
    """The PartitionSpec of an array with logical ``axes``: a dimension is split over its rule's
    mesh axis when that axis has more than one device and divides the dimension (and is not used
    by an earlier dimension); otherwise it is replicated."""
    table, used = dict(rules), set()
    spec: list[str | None] = []
    for name, size in zip(axes, shape):
        axis = table.get(name) if name is not None else None
        n = mesh.shape.get(axis, 1) if axis is not None else 1
        if axis is None or n == 1 or size % n or axis in used:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return PartitionSpec(*spec)


def param_specs(params: Any, axes: ParamAxes, mesh: Any, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
    """A tree of ``PartitionSpec`` matching ``params`` (arrays or ShapeDtypeStructs); ``mesh`` only
    needs its ``shape``."""

    def one(keypath, leaf):
        shape = tuple(np.shape(leaf))
        return logical_spec(axes_of(path_names(keypath), len(shape), axes), shape, mesh, rules)

    return jax.tree_util.tree_map_with_path(one, params)


def param_shardings(params: Any, mesh: Mesh, axes: ParamAxes, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
    """A tree of ``NamedSharding`` matching ``params`` (or a tree mirroring them)."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        param_specs(params, axes, mesh, rules),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard_params(params: Any, mesh: Mesh, axes: ParamAxes, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
    """``params`` placed on ``mesh`` by their axes (a no-op for arrays already placed so)."""
    return jax.device_put(params, param_shardings(params, mesh, axes, rules))


def checkpoint_sharding(
    mesh: Mesh, axes: ParamAxes, rules: Sequence[tuple[str, str | None]] = RULES
) -> Callable[[tuple[str, ...], tuple[int, ...]], NamedSharding]:
    """The ``sharding=`` callable of ``checkpoint.load_params``: Orbax then reads every param
    straight into its shards (each process reads only what its devices hold)."""

    def sharding(path: tuple[str, ...], shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(mesh, logical_spec(axes_of(path, len(shape), axes), shape, mesh, rules))

    return sharding


def cache_shardings(cache: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
    """Shardings of a KV cache tree (leaves [R, B, S, n_state]): batch over 'data', width over 'model'."""
    return jax.tree.map(lambda x: NamedSharding(mesh, logical_spec(CACHE_AXES, x.shape, mesh, rules)), cache)


def shard_cache(cache: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES) -> Any:
    return jax.device_put(cache, cache_shardings(cache, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over 'data', the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (None leaves stay None) split over 'data' along its first axis.
    The batch must be a multiple of the data axis (a clear error otherwise). Host (numpy) inputs
    must be the whole global batch, identical on every process."""
    n = mesh.shape[DATA]

    def one(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        if x.shape[0] % n:
            raise ShardingError(f"batch {x.shape[0]} is not a multiple of the mesh's data axis ({n})")
        return jax.device_put(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(one, tree)


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) array as one numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# Multi-host


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    auto: bool = False,
) -> bool:
    """Connect the processes of a multi-host job (call once, before any other JAX call).

    - explicit: ``coordinator_address='host0:1234', num_processes=N, process_id=i`` (several GPU
      hosts), or the same through the environment variables ``JAX_COORDINATOR_ADDRESS``,
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
    - ``auto=True``: JAX detects the cluster itself (Cloud TPU pod slices, SLURM, Open MPI).

    Returns True if it initialised, False for a single-process run (nothing to do) or when already
    initialised. Afterwards ``jax.devices()`` lists the devices of every host, so ``make_mesh()``
    spans the whole job.
    """
    if jax.distributed.is_initialized():
        return False
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator_address is None and num_processes is None and not auto:
        return False
    if not auto and (coordinator_address is None or num_processes is None or process_id is None):
        raise ShardingError(
            "multi-host needs coordinator_address, num_processes and process_id "
            "(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), or auto=True"
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids)
    return True
