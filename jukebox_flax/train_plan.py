"""The device memory of one training step, from shapes alone (``jukebox-flax train ... --dry-run``).

The task's jitted step is lowered and compiled on ``jax.ShapeDtypeStruct`` inputs: the training
state from ``jax.eval_shape`` of its init (no weights are read or created) and a batch of the
right shapes (no data). XLA's buffer assignment (``compiled.memory_analysis()``) then gives

* ``argument_bytes``: the step's inputs: params + optimizer state (+ loss scale) + the batch + key;
* ``output_bytes``: the new state and the metrics;
* ``alias_bytes``: outputs written into donated inputs (the state is donated: counted once);
* ``temp_bytes``: everything else live inside the step (activations kept for the backward pass,
  gradients, the compute-dtype copy of the params, workspace);
* ``peak_bytes`` = arguments + outputs + temps - aliased: what the step needs on the device.

Next to them an analytic split of the state (float32 params, Adam moments, float32 gradients, the
compute-dtype copy of the params of mixed precision). The figures are those of the backend the
plan is compiled for (the default one: on a CPU-only machine, XLA:CPU's buffer assignment, whose
fusion differs somewhat from a GPU's).

A prior's plan is the step of the prior's loss on tokens (``prior_tokens_task``: tokens [B, n_ctx],
labels y, upper codes), the step of training from pre-encoded codes: the frozen VQ-VAE that
``prior_task`` runs on audio is not in it (its params and encoder activations come on top).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from .config import PriorConfig, VQVAEConfig
from .errors import TrainingError
from .optim import OptimConfig
from .prior.prior import JukeboxPrior, init_prior_params
from .training import Task, gradient_task, prior_cast, vqvae_task

__all__ = ["StepPlan", "prior_tokens_task", "plan_task_step", "plan_prior_step", "plan_vqvae_step", "tree_bytes"]

GIB = 2.0**30


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ``ShapeDtypeStruct``) leaf of ``tree``."""
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


@dataclass(frozen=True)
class StepPlan:
    """One training step's device memory (bytes); see the module docstring."""

    kind: str  # 'prior' or 'vqvae'
    batch: int
    accumulate: int
    precision: str
    remat: str
    backend: str
    n_params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    state_bytes: int  # the training state (params + optimizer state + loss scale)
    batch_bytes: int
    params_bytes: int  # analytic: the float32 master params
    moments_bytes: int  # analytic: the optimizer state (Adam's two moments)
    grads_bytes: int  # analytic: one float32 gradient per param
    compute_copy_bytes: int  # analytic: the params cast to the compute dtype (0 for float32)
    note: str = ""

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def as_dict(self) -> dict:
        return dict(asdict(self), peak_bytes=self.peak_bytes)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self) -> str:
        """The plan as a few aligned lines (GiB, or MiB / KiB for small models)."""
        rows = [
            ("params (float32)", self.params_bytes),
            ("optimizer state", self.moments_bytes),
            ("gradients (float32)", self.grads_bytes),
            (f"params in {self.precision}", self.compute_copy_bytes),
            ("batch", self.batch_bytes),
            ("XLA arguments", self.argument_bytes),
            ("XLA temporaries", self.temp_bytes),
            ("XLA outputs", self.output_bytes),
            ("XLA aliased (donated)", -self.alias_bytes),
            ("peak", self.peak_bytes),
        ]
        head = (
            f"{self.kind} step: batch {self.batch} (x{self.accumulate} accumulated), {self.precision}, "
            f"remat {self.remat}, {self.n_params / 1e6:.1f} M params, on {self.backend}"
        )
        unit, size = next(
            (u, s) for u, s in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 2.0**10)) if self.peak_bytes >= s or u == "KiB"
        )
        lines = [head] + [f"  {name:<24}{value / size:>10.3f} {unit}" for name, value in rows]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)


def prior_tokens_task(
    config: PriorConfig,
    optim: OptimConfig,
    *,
    precision: str = "float32",
    accumulate: int = 1,
    remat: str = "none",
    scan_layers: bool = True,
) -> Task:
    """A gradient task of the prior's loss (``JukeboxPrior.loss``) on inputs ``(tokens, y, upper)``
    (int32 [B, n_ctx], [B, y_length] or None, [B, n_ctx / cond_downsample] or None), from freshly
    initialised params: what :func:`plan_prior_step` compiles."""
    from .mixed_precision import compute_dtype

    module = JukeboxPrior(config, dtype=compute_dtype(precision), scan_layers=scan_layers, remat=remat)

    def loss_fn(params: Any, inputs: tuple, key: jax.Array) -> tuple[jax.Array, dict]:
        tokens, y, upper = inputs
        return cast(tuple, module.apply({"params": params}, tokens, y, upper, method=JukeboxPrior.loss))

    def init(key: jax.Array, batch: Any) -> Any:
        return init_prior_params(config, key, scan_layers=scan_layers)

    return gradient_task(init, loss_fn, optim, precision=precision, accumulate=accumulate, cast=prior_cast)


def _key_shape() -> Any:
    return jax.eval_shape(lambda: jax.random.PRNGKey(0))


def plan_task_step(
    task: Task, init_batch: Any, inputs: Any, *, kind: str, precision: str, remat: str, accumulate: int, note: str = ""
) -> StepPlan:
    """The plan of ``task.update`` on abstract ``inputs`` (``ShapeDtypeStruct`` leaves), its state
    from ``task.abstract_state(key, init_batch)``."""
    if task.update is None:
        raise TrainingError("this task exposes no jitted update to plan")
    key = _key_shape()
    state = task.abstract_state(key, init_batch)
    compiled = task.update.lower(state, inputs, key).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise TrainingError(f"the {jax.default_backend()} backend reports no memory analysis")
    params = task.params(state)
    n_params = int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))
    params_bytes = tree_bytes(params)
    state_bytes = tree_bytes(state)
    compute_copy = 0
    if precision != "float32":
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float16
        copy = jax.eval_shape(lambda p: prior_cast(p, dtype) if kind == "prior" else p, params)
        compute_copy = sum(
            tree_bytes(c) for c, p in zip(jax.tree.leaves(copy), jax.tree.leaves(params)) if c.dtype != p.dtype
        )
    batch = int(jax.tree.leaves(inputs)[0].shape[0])
    return StepPlan(
        kind=kind,
        batch=batch,
        accumulate=accumulate,
        precision=precision,
        remat=remat,
        backend=jax.default_backend(),
        n_params=n_params,
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        state_bytes=state_bytes,
        batch_bytes=tree_bytes(inputs),
        params_bytes=params_bytes,
        moments_bytes=state_bytes - params_bytes,
        grads_bytes=n_params * 4,
        compute_copy_bytes=compute_copy,
        note=note,
    )


def prior_inputs(config: PriorConfig, batch: int) -> tuple:
    """``ShapeDtypeStruct`` (tokens, y, upper) of a batch of ``batch`` windows."""
    tokens = jax.ShapeDtypeStruct((batch, config.n_ctx), jnp.int32)
    y = jax.ShapeDtypeStruct((batch, config.y_length), jnp.int32) if config.labels else None
    upper = (
        jax.ShapeDtypeStruct((batch, config.n_ctx // config.cond_downsample), jnp.int32)
        if config.is_upsampler
        else None
    )
    return tokens, y, upper


def plan_prior_step(
    config: PriorConfig,
    optim: OptimConfig,
    batch: int,
    *,
    precision: str = "float32",
    remat: str = "none",
    accumulate: int = 1,
    scan_layers: bool = True,
) -> StepPlan:
    """The plan of one step of training ``config`` at ``batch`` windows of n_ctx tokens (no VQ-VAE)."""
    task = prior_tokens_task(
        config, optim, precision=precision, accumulate=accumulate, remat=remat, scan_layers=scan_layers
    )
    return plan_task_step(
        task,
        None,
        prior_inputs(config, batch),
        kind="prior",
        precision=precision,
        remat=remat,
        accumulate=accumulate,
        note="the prior's step on tokens; the frozen VQ-VAE that encodes audio on the fly is not included",
    )


def plan_vqvae_step(
    config: VQVAEConfig,
    optim: OptimConfig,
    batch: int,
    sample_length: int,
    *,
    precision: str = "float32",
    accumulate: int = 1,
) -> StepPlan:
    """The plan of one VQ-VAE step on ``batch`` crops of ``sample_length`` samples."""
    bandwidth = {"l1": 1.0, "l2": 1.0, "spec": 1.0}  # values do not change the memory
    task = vqvae_task(config, optim, bandwidth=bandwidth, precision=precision, accumulate=accumulate)
    audio = jax.ShapeDtypeStruct((batch, sample_length, 1), jnp.float32)

    def abstract(key: jax.Array, _: Any) -> Any:
        return jax.eval_shape(lambda k, x: task.init(k, SimpleNamespace(audio=x)), key, audio)

    task = dataclasses.replace(task, abstract=abstract)
    return plan_task_step(task, None, audio, kind="vqvae", precision=precision, remat="none", accumulate=accumulate)
