"""Training and fine-tuning: checkpoints with resume, metrics, and the two tasks (the optimizer: ``optim.py``).

The loop is generic over a :class:`Task`:

* ``task.init(key, first_batch) -> state`` builds the training state (any pytree: params,
  optimizer state, EMA codebooks ...);
* ``task.step(state, batch, key) -> (state, metrics)`` is one (jitted) update;
* ``task.params(state)`` is the param tree a model directory stores;
* ``task.evaluate(state, batch) -> metrics`` (optional) is the loss of the state on a batch, with
  nothing updated (a fixed key): the held-out loss.

:func:`train` runs ``steps`` updates on ``batch_at(i)`` (batch number ``i``: a pure function of
``i``, so the data position is just the step), with the key ``fold_in(PRNGKey(seed), i)``, saving an
Orbax checkpoint (state + step + data position) every ``checkpoint_every`` steps. Killed at any
point, the same call resumes from the latest complete checkpoint and continues exactly as an
uninterrupted run would. Metrics (averaged over ``log_every`` steps) go to stdout,
``OUT/metrics.csv``, TensorBoard event files in ``OUT/tensorboard/`` and the plot ``OUT/loss.png``
(``train_log.py``); a tqdm bar shows progress, the rate and the time left. Given held-out batches,
every ``evaluate_every`` steps the loss on them is logged as ``holdout_loss``.

:func:`vqvae_task` trains a VQ-VAE (the original loss, EMA codebooks with random restarts;
``jukebox_flax.vqvae.train``); :func:`prior_task` trains one prior level on codes of a frozen
VQ-VAE computed on the fly, as the original. Both start from scratch or from a model directory
(fine-tuning); :func:`with_param_ema` adds a moving average of the params (the original's
``--ema``); :func:`export_model` writes the result as a model directory.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from .checkpoint import save_model_dir
from .config import vqvae_mismatch
from .errors import TrainingError
from .mixed_precision import (
    LossScaleConfig,
    LossScaleState,
    all_finite,
    cast_floats,
    compute_dtype,
    init_loss_scale,
    select_tree,
    update_loss_scale,
)
from .optim import OptimConfig, make_optimizer, make_schedule
from .precision import cast_params
from .prior.api import init_prior_params, load_prior
from .prior.conditioners import check_labels
from .prior.prior import JukeboxPrior
from .sharding import param_shardings, shard_batch
from .train_log import METRICS_FILE, MetricsLog, TrainLog, progress_bar  # noqa: F401 (METRICS_FILE: re-exported)
from .vqvae.api import init_vqvae_params, load_vqvae
from .vqvae.losses import estimate_bandwidth
from .vqvae.train import init_train_state, make_eval_step, make_train_step
from .vqvae.vqvae import VQVAEModule

__all__ = [
    "TrainingError",
    "OptimConfig",
    "make_schedule",
    "make_optimizer",
    "TrainCheckpoints",
    "MetricsLog",
    "Task",
    "train",
    "GradState",
    "ScaledGradState",
    "split_micro_batches",
    "gradient_task",
    "EMAState",
    "with_param_ema",
    "vqvae_task",
    "prior_task",
    "prior_cast",
    "data_bandwidth",
    "load_component",
    "export_model",
]

PathLike = str | os.PathLike
CHECKPOINT_DIR = "checkpoints"
EVAL_SEED = 0  # the key of every evaluation (held-out loss): the same numbers for the same params


# ------------------------------------------------------------------------------------------------
# Checkpoints (every Orbax call of the training loop is here)


class TrainCheckpoints:
    """Orbax ``CheckpointManager`` over ``directory``: the state pytree plus a JSON ``meta`` dict
    (step, data position, anything the task adds). Saves are asynchronous; a save cut short by a
    kill is never listed, so :meth:`latest_step` is always a complete checkpoint."""

    def __init__(self, directory: PathLike, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state saved at ``step``, with the structure, shapes, dtypes (and shardings, where
        given) of ``like``: arrays or ``jax.ShapeDtypeStruct`` (e.g. :meth:`Task.abstract_state`)."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored.state, dict(restored.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# ------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Task:
    """What :func:`train` trains: see the module docstring. ``meta`` is stored with every
    checkpoint (JSON); ``schedule`` (optional) is logged as ``lr``. ``step`` may donate its state
    (every task here does), so only the state it returns is valid afterwards. ``abstract``
    (optional): ``(key, first_batch) ->`` the state as ``jax.ShapeDtypeStruct`` leaves with their
    shardings, what a resumed run restores into; by default ``jax.eval_shape`` of ``init``.
    ``evaluate`` (optional): ``(state, batch) -> metrics`` with at least ``loss``, computed without
    changing anything (no donation, no update) and the same for the same state and batch.

    ``update`` (optional): the jitted ``(state, inputs, key) -> (state, metrics)`` that ``step``
    runs on ``prepare(batch)``, what ``train_plan`` compiles from shapes alone."""

    init: Callable[[jax.Array, Any], Any]
    step: Callable[[Any, Any, jax.Array], tuple[Any, dict]]
    params: Callable[[Any], Any]
    meta: dict = field(default_factory=dict)
    schedule: optax.Schedule | None = None
    abstract: Callable[[jax.Array, Any], Any] | None = None
    evaluate: Callable[[Any, Any], dict] | None = None
    update: Any = None
    prepare: Callable[[Any], Any] | None = None

    def abstract_state(self, key: jax.Array, batch: Any) -> Any:
        """The state ``init(key, batch)`` would build, as shapes (no memory is allocated)."""
        if self.abstract is not None:
            return self.abstract(key, batch)
        return jax.eval_shape(lambda k: self.init(k, batch), key)


def train(
    task: Task,
    batch_at: Callable[[int], Any],
    steps: int,
    out_dir: PathLike,
    *,
    seed: int = 0,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    log_every: int = 10,
    resume: bool = True,
    progress: bool = True,
    after_step: Callable[[int, Any], None] | None = None,
    holdout_at: Callable[[int], Any] | None = None,
    holdout_batches: int = 0,
    evaluate_every: int = 100,
    tensorboard: bool = True,
    plot: bool = True,
) -> tuple[Any, int]:
    """Train ``task`` up to ``steps`` total steps; returns (state, steps done).

    Writes ``out_dir/checkpoints/<step>/``, ``out_dir/metrics.csv``, ``out_dir/tensorboard/`` and
    ``out_dir/loss.png`` (the last two with the ``train`` extra; ``tensorboard`` / ``plot`` False:
    not at all). With ``resume`` (default) a run restarts from the latest checkpoint in
    ``out_dir``; ``resume=False`` refuses to touch an existing one. A Ctrl-C saves a checkpoint
    before stopping. ``after_step(step, state)`` (optional) runs after every step, its logging and
    checkpointing (e.g. evaluation hooks).

    Held-out loss: with ``holdout_at`` (batch ``j`` of the held-out set, a pure function of ``j``)
    and ``holdout_batches`` > 0, every ``evaluate_every`` steps and at the last step the mean of
    ``task.evaluate(state, holdout_at(j))['loss']`` over ``j < holdout_batches`` is logged as
    ``holdout_loss`` (such a step is always a logged step). The same batches every time, so the
    values are comparable along the run and a resumed run logs the same numbers.
    """
    if steps < 0 or checkpoint_every < 1 or log_every < 1 or evaluate_every < 1:
        raise TrainingError("steps must be >= 0, checkpoint_every, log_every and evaluate_every >= 1")
    holding_out = holdout_at is not None and holdout_batches > 0
    if holding_out and task.evaluate is None:
        raise TrainingError("this task has no evaluate function, so it cannot log a held-out loss")
    out_dir = Path(out_dir)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    checkpoints = TrainCheckpoints(out_dir / CHECKPOINT_DIR, keep=keep_checkpoints)
    latest = checkpoints.latest_step()
    if latest is not None and not resume:
        checkpoints.close()
        raise TrainingError(f"{out_dir} already holds checkpoints (latest step {latest}); resume or pick another --out")

    start = 0
    if latest is None:
        state = task.init(init_key, batch_at(0))
    else:  # restored straight into the shapes (and shards) of the initial state, never built
        state, meta = checkpoints.restore(latest, task.abstract_state(init_key, batch_at(0)))
        start = int(meta["data_position"])
        print(f"resumed from {checkpoints.directory / str(latest)} (step {meta['step']})")
    log = TrainLog(out_dir, resume_step=start, echo=tqdm.write, tensorboard=tensorboard, plot=plot)
    meta = dict(task.meta, seed=seed)

    def holdout_loss() -> float:
        assert task.evaluate is not None and holdout_at is not None
        losses = [task.evaluate(state, holdout_at(j))["loss"] for j in range(holdout_batches)]
        return float(np.mean(jax.device_get(losses)))

    saved = start

    def save(step: int) -> None:
        nonlocal saved
        checkpoints.save(step, state, dict(meta, step=step, data_position=step))
        saved = step

    step = start
    bar = progress_bar(steps, initial=start, disable=not progress)
    try:
        while step < steps:
            state, metrics = task.step(state, batch_at(step), jax.random.fold_in(step_key, step))
            step += 1
            log.add(metrics)
            bar.update(1)
            evaluating = holding_out and (step % evaluate_every == 0 or step == steps)
            if step % log_every == 0 or step == steps or evaluating:
                extra = {"lr": float(task.schedule(step - 1))} if task.schedule is not None else {}
                if evaluating:
                    extra["holdout_loss"] = holdout_loss()
                values = log.write(step, extra)
                if evaluating:
                    log.plot()
                shown = {k: f"{values[k]:.4g}" for k in ("loss", "holdout_loss") if k in values}
                if shown:
                    bar.set_postfix(shown, refresh=False)
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingError(f"non-finite metrics at step {step}: {values}")
            if step % checkpoint_every == 0 or step == steps:
                save(step)
            if after_step is not None:
                after_step(step, state)
    except KeyboardInterrupt:
        if saved != step:
            save(step)
            print(f"\ninterrupted: saved step {step}; run the same command again to resume")
        raise
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
        log.close()
    return state, step


# ------------------------------------------------------------------------------------------------
# Tasks


class GradState(NamedTuple):
    """Params trained by gradients and their optimizer state."""

    params: Any
    opt_state: Any


class ScaledGradState(NamedTuple):
    """:class:`GradState` of float16 training, with its dynamic loss scale (``mixed_precision``)."""

    params: Any
    opt_state: Any
    loss_scale: LossScaleState


def split_micro_batches(inputs: Any, accumulate: int) -> Any:
    """Every leaf [B, ...] of ``inputs`` as [accumulate, B / accumulate, ...] (micro-batch first)."""

    def split(x: Any) -> Any:
        if x.shape[0] % accumulate:
            raise TrainingError(f"the batch of {x.shape[0]} does not split into {accumulate} equal micro-batches")
        return x.reshape(accumulate, x.shape[0] // accumulate, *x.shape[1:])

    return jax.tree.map(split, inputs)


def gradient_task(
    init_params: Any,
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]],
    optim: OptimConfig,
    prepare: Callable[[Any], Any] = lambda batch: batch,
    meta: dict | None = None,
    mesh: Any = None,
    param_axes: Any = None,
    *,
    precision: str = "float32",
    accumulate: int = 1,
    cast: Callable[[Any, Any], Any] = cast_floats,
    loss_scale: LossScaleConfig | None = None,
) -> Task:
    """A task for any model trained by gradients alone.

    ``init_params``: a function ``(key, first_batch) -> params`` (traced inside the jitted init, so
    arrays it closes over are compiled in as constants), or the params themselves (fine-tuning:
    passed to the init as an argument and copied into the state). ``loss_fn(params, inputs, key) ->
    (loss, metrics)`` is differentiated; ``prepare(batch)`` turns a data batch into the jit inputs
    (arrays only). The step is jitted once and donates the state. ``mesh``
    (``sharding.make_mesh``): params and optimizer state are created straight into the shards of
    the sharding rules and every batch is split over 'data' (data parallel, plus tensor parallel
    over 'model'); the gradients' all-reduce is XLA's. ``param_axes``: the
    params' ``sharding.ParamAxes`` (needed with a mesh). The task's ``evaluate`` is ``loss_fn``
    with the key ``PRNGKey(EVAL_SEED)`` (jitted, no gradients).

    ``precision`` (``mixed_precision.TRAIN_PRECISIONS``): the state's params and optimizer state are
    always float32; with 'bfloat16' / 'float16' ``loss_fn`` gets ``cast(params, dtype)`` (its own
    activations in that dtype are the loss function's business), and 'float16' adds dynamic loss
    scaling (``loss_scale``, default the original's; the state is then a :class:`ScaledGradState`
    and the metrics add ``loss_scale`` and ``skipped``: a skipped step logs its non-finite metrics
    as 0). ``accumulate``: every batch (the total batch, leading axis) is split into that many
    micro-batches, run one after another (``lax.scan``) with the gradients averaged, then one
    optimizer step: the same update as the whole batch at a fraction of the activation memory.
    Micro-batch i gets the key ``fold_in(key, i)``.
    """
    if accumulate < 1:
        raise TrainingError(f"accumulate must be >= 1, got {accumulate}")
    dtype = compute_dtype(precision)
    scaled = precision == "float16"
    scale_config = loss_scale or LossScaleConfig()
    optimizer = make_optimizer(optim)
    if mesh is not None:
        prepare_one = prepare
        prepare = lambda batch: shard_batch(prepare_one(batch), mesh)  # noqa: E731

    given = None if callable(init_params) else init_params

    def initializer(key: jax.Array, batch: Any) -> Callable[[jax.Array, Any], Any]:
        """The init as one jitted function of (key, given params), placed by the rules on a mesh."""

        def new_state(key: jax.Array, given: Any) -> Any:
            params = init_params(key, batch) if given is None else given
            if scaled:
                return ScaledGradState(params, optimizer.init(params), init_loss_scale(scale_config))
            return GradState(params, optimizer.init(params))

        if mesh is None:
            return jax.jit(new_state)
        shapes = jax.eval_shape(new_state, key, given)
        # the moments' leaf paths end like the params', so the same rules place them
        shardings = [
            param_shardings(shapes.params, mesh, param_axes),
            param_shardings(shapes.opt_state, mesh, param_axes),
        ]
        if scaled:
            replicated = NamedSharding(mesh, PartitionSpec())
            shardings.append(jax.tree.map(lambda _: replicated, shapes.loss_scale))
        return jax.jit(new_state, out_shardings=type(shapes)(*shardings))

    def init(key: jax.Array, batch: Any) -> Any:
        return initializer(key, batch)(key, given)

    def abstract(key: jax.Array, batch: Any) -> Any:
        return jax.eval_shape(initializer(key, batch), key, given)

    def micro_grads(params: Any, inputs: Any, key: jax.Array, scale: Any) -> tuple[jax.Array, dict, Any]:
        """(loss, metrics, gradients x scale) of one (micro-)batch."""

        def objective(p: Any) -> tuple[jax.Array, tuple[jax.Array, dict]]:
            loss, metrics = loss_fn(p if dtype == jnp.float32 else cast(p, dtype), inputs, key)
            loss = loss.astype(jnp.float32)
            return (loss if scale is None else loss * scale), (loss, metrics)

        (_, (loss, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, metrics, grads

    def gradients(params: Any, inputs: Any, key: jax.Array, scale: Any) -> tuple[jax.Array, dict, Any]:
        """(loss, metrics, gradients) of the whole batch, averaged over the micro-batches, unscaled."""
        if accumulate == 1:
            loss, metrics, grads = micro_grads(params, inputs, key, scale)
        else:

            def body(total: Any, xs: tuple) -> tuple[Any, tuple]:
                micro, i = xs
                loss, metrics, grads = micro_grads(params, micro, jax.random.fold_in(key, i), scale)
                return jax.tree.map(jnp.add, total, grads), (loss, metrics)

            zeros = jax.tree.map(jnp.zeros_like, params)
            micro_batches = (split_micro_batches(inputs, accumulate), jnp.arange(accumulate))
            grads, (losses, metrics) = jax.lax.scan(body, zeros, micro_batches)
            grads = jax.tree.map(lambda g: g / accumulate, grads)
            loss, metrics = losses.mean(), jax.tree.map(lambda m: m.mean(0), metrics)
        if scale is not None:
            grads = jax.tree.map(lambda g: g / scale, grads)
        return loss, metrics, grads

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state: Any, inputs: Any, key: jax.Array) -> tuple[Any, dict]:
        scale = state.loss_scale.scale if scaled else None
        loss, metrics, grads = gradients(state.params, inputs, key, scale)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        if not scaled:
            return GradState(params, opt_state), metrics
        finite = all_finite(grads) & jnp.isfinite(loss)
        params = select_tree(finite, params, state.params)
        opt_state = select_tree(finite, opt_state, state.opt_state)
        new_scale = update_loss_scale(state.loss_scale, finite, scale_config)
        metrics = {k: jnp.where(jnp.isfinite(v), v, 0.0) for k, v in metrics.items()}
        metrics.update(loss_scale=new_scale.scale, skipped=(~finite).astype(jnp.float32))
        return ScaledGradState(params, opt_state, new_scale), metrics

    @jax.jit
    def loss_only(params: Any, inputs: Any) -> dict:
        # the held-out loss in the training's own compute dtype, so the two curves compare
        loss, metrics = loss_fn(
            params if dtype == jnp.float32 else cast(params, dtype), inputs, jax.random.PRNGKey(EVAL_SEED)
        )
        return dict(metrics, loss=loss.astype(jnp.float32))

    return Task(
        init=init,
        step=lambda state, batch, key: update(state, prepare(batch), key),
        params=lambda state: state.params,
        meta=dict(meta or {}),
        schedule=make_schedule(optim),
        abstract=abstract,
        evaluate=lambda state, batch: loss_only(state.params, prepare(batch)),
        update=update,
        prepare=prepare,
    )


class EMAState(NamedTuple):
    """A task's state and the moving average of its params (:func:`with_param_ema`)."""

    inner: Any
    params_ema: Any


def with_param_ema(task: Task, decay: float) -> Task:
    """``task`` that also keeps an exponential moving average of its params, as the original's
    ``--ema`` (decay 0.9999 there): after every step ``ema = decay * ema + (1 - decay) * params``,
    starting from the initial (or fine-tuned) params. The new task's ``params`` are the average (what
    a model directory gets); its metrics, and its held-out loss (``evaluate``), are the inner
    task's: of the params being trained, comparable with the training loss. The average is
    checkpointed with the state, so a resumed run continues it exactly.
    """
    if not 0.0 < decay < 1.0:
        raise TrainingError(f"the EMA decay must be in (0, 1), got {decay}")

    @functools.partial(jax.jit, donate_argnums=0)
    def average(ema: Any, params: Any) -> Any:
        return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)

    def init(key: jax.Array, batch: Any) -> EMAState:
        inner = task.init(key, batch)
        return EMAState(inner, jax.tree.map(jnp.copy, task.params(inner)))

    def step(state: EMAState, batch: Any, key: jax.Array) -> tuple[EMAState, dict]:
        inner, metrics = task.step(state.inner, batch, key)
        return EMAState(inner, average(state.params_ema, task.params(inner))), metrics

    def abstract(key: jax.Array, batch: Any) -> EMAState:
        inner = task.abstract_state(key, batch)
        return EMAState(inner, task.params(inner))  # the average has the params' shapes and shards

    return Task(
        init=init,
        step=step,
        params=lambda state: state.params_ema,
        meta=dict(task.meta, param_ema_decay=decay),
        schedule=task.schedule,
        abstract=abstract,
        evaluate=None if task.evaluate is None else _inner_evaluate(task.evaluate),
    )


def _inner_evaluate(evaluate: Callable[[Any, Any], dict]) -> Callable[[EMAState, Any], dict]:
    return lambda state, batch: evaluate(state.inner, batch)


def vqvae_task(
    config: Any,
    optim: OptimConfig,
    *,
    init_params: Mapping | None = None,
    bandwidth: Mapping[str, float] | None = None,
    samples_per_batch: int | None = None,
    precision: str = "float32",
    accumulate: int = 1,
) -> Task:
    """Train a VQ-VAE (``VQVAEConfig``) on batches of audio.

    From scratch (``init_params=None``) the codebooks start from the first batch's latents (the
    original ``init_k``); from ``init_params`` (fine-tuning) they are kept and their EMA counts
    set to ``samples_per_batch // hop_L / bins`` per level (the original ``restore_k``;
    ``samples_per_batch`` defaults to batch size x crop samples). ``bandwidth``: the dataset statistics that
    scale the losses (``data_bandwidth``). ``evaluate``: the same loss on a batch with no update
    (no gradient step, no EMA codebook step).
    ``precision``: 'float32' or 'bfloat16' (float32 state,
    the forward and backward on a bfloat16 copy: ``vqvae.train.loss_and_aux``); float16 would need
    loss scaling, which only the priors' tasks have. ``accumulate``: micro-batches per step
    (``vqvae.train.make_train_step``).
    """
    if bandwidth is None:
        raise TrainingError("vqvae_task needs the dataset bandwidth (see data_bandwidth)")
    if precision == "float16":
        raise TrainingError("the VQ-VAE trains in float32 or bfloat16 (float16 needs loss scaling: prior tasks only)")
    if accumulate < 1:
        raise TrainingError(f"accumulate must be >= 1, got {accumulate}")
    optimizer = make_optimizer(optim)
    step_fn = make_train_step(config, optimizer, bandwidth, compute_dtype(precision), accumulate)
    eval_fn = make_eval_step(config, bandwidth)

    def prepare(batch: Any) -> jax.Array:
        if batch.audio.shape[0] % accumulate:
            raise TrainingError(f"the batch of {batch.audio.shape[0]} does not split into {accumulate} micro-batches")
        return jnp.asarray(batch.audio)

    def init(key: jax.Array, batch: Any) -> Any:
        init_key, code_key = jax.random.split(key)
        if init_params is None:
            params = init_vqvae_params(config, init_key)
            return init_train_state(config, params, optimizer, code_key, x=jnp.asarray(batch.audio))
        samples = samples_per_batch or batch.audio.shape[0] * batch.audio.shape[1]
        return init_train_state(config, init_params, optimizer, code_key, samples_per_batch=samples)

    return Task(
        init=init,
        step=lambda state, batch, key: step_fn(state, prepare(batch), key),
        params=lambda state: state.params,
        meta={"bandwidth": dict(bandwidth)},
        schedule=make_schedule(optim),
        evaluate=lambda state, batch: eval_fn(state, jnp.asarray(batch.audio)),
        update=step_fn,
        prepare=prepare,
    )


def data_bandwidth(dataset: Any, examples: int = 32, seed: int = 0) -> dict[str, float]:
    """The original ``calculate_bandwidth`` over ``examples`` random crops of ``dataset``."""
    return estimate_bandwidth(dataset.batch(0, examples, seed=seed + 7919).audio)


def prior_task(
    config: Any,
    optim: OptimConfig,
    vqvae: Any,
    *,
    init_params: Mapping | None = None,
    mesh: Any = None,
    precision: str = "float32",
    accumulate: int = 1,
    remat: str = "none",
) -> Task:
    """Train one prior level (``PriorConfig``) on batches of audio and labels (``mesh``,
    ``precision``, ``accumulate``: see :func:`gradient_task`; with bfloat16 / float16 the
    transformers compute in that dtype on a copy of their matmul kernels, the rest in float32, as
    the released sampling mode; ``remat``: 'none', 'attention' or 'block', the transformer layers'
    recomputation in the backward pass, ``transformer.remat_block``).

    ``vqvae``: a loaded :class:`jukebox_flax.vqvae.api.VQVAE` (frozen). Every step encodes the
    batch's audio, takes the codes of ``config.level`` as tokens and, for an upsampler, those of the
    level above as ``upper`` (the original ``SimplePrior.forward``), and minimises the prior's loss
    (``JukeboxPrior.loss``: bits per token, plus the lyric loss of lyric models).
    ``vqvae=None``: the batches are codes already (``codes_dataset.CodesBatch``: tokens, upper, y),
    and the same loss is minimised without the VQ-VAE in the step.
    """
    if vqvae is not None:
        vq_config = vqvae.config
        mismatch = vqvae_mismatch(config, vq_config)
        if mismatch:
            raise TrainingError(f"the prior {mismatch}")
        vq_module = VQVAEModule(vq_config)
        vq_params = vqvae.params
    module = JukeboxPrior(config, dtype=compute_dtype(precision), remat=remat)

    def loss_fn(params: Any, inputs: tuple, key: jax.Array) -> tuple[jax.Array, dict]:
        x, y = inputs
        if vqvae is None:  # pre-encoded: (tokens, upper)
            tokens, upper = x
        else:
            codes = vq_module.apply({"params": vq_params}, x, method=VQVAEModule.encode)
            tokens = codes[config.level]
            upper = codes[config.level + 1] if config.is_upsampler else None
        return cast(tuple, module.apply({"params": params}, tokens, y, upper, method=JukeboxPrior.loss))

    def prepare(batch: Any) -> tuple:
        if vqvae is None:
            return _codes_inputs(batch, config)
        if batch.audio.shape[1] != config.sample_length:
            raise TrainingError(f"crops have {batch.audio.shape[1]} samples; this prior takes {config.sample_length}")
        return jnp.asarray(batch.audio), _checked_labels(batch, config)

    def init(key: jax.Array, batch: Any) -> Any:
        return init_prior_params(config, key)

    axes = None if mesh is None else module.param_axes()
    return gradient_task(
        init if init_params is None else init_params,
        loss_fn,
        optim,
        prepare=prepare,
        mesh=mesh,
        param_axes=axes,
        precision=precision,
        accumulate=accumulate,
        cast=prior_cast,
    )


def prior_cast(params: Any, dtype: Any) -> Any:
    """A prior's params as its mixed-precision training computes on them: the transformers' matmul
    kernels in ``dtype``, every other param float32 (``precision.cast_params(..., released=True)``)."""
    return cast_params(params, dtype, released=True)


def _checked_labels(batch: Any, config: Any) -> jax.Array | None:
    if config.labels and batch.y is None:
        raise TrainingError("this prior takes labels: build the dataset with a labeller")
    if config.labels:
        check_labels(batch.y, config)  # inside jit a bad id would silently give NaNs
    return jnp.asarray(batch.y) if config.labels else None


def _codes_inputs(batch: Any, config: Any) -> tuple:
    """The jit inputs ((tokens, upper), y) of a ``CodesBatch`` for :func:`prior_task` without a VQ-VAE."""
    if batch.tokens.shape[1] != config.n_ctx:
        raise TrainingError(f"code crops have {batch.tokens.shape[1]} tokens; this prior takes {config.n_ctx}")
    if config.is_upsampler and batch.upper is None:
        raise TrainingError("an upsampler trains on the codes of the level above too (upper)")
    upper = jnp.asarray(batch.upper) if config.is_upsampler else None
    return (jnp.asarray(batch.tokens), upper), _checked_labels(batch, config)


# ------------------------------------------------------------------------------------------------
# Model directories


def load_component(path: PathLike, component: str) -> tuple[Any, Any, dict | None]:
    """(params, config, vocab) in float32 of ``component`` ('vqvae' or 'prior_level_L') in a model
    directory (the component's own directory or a whole model): ``load_vqvae`` / ``load_prior``."""
    if component == "vqvae":
        vq = load_vqvae(path, dtype=jnp.float32)
        return vq.params, vq.config, None
    level = component.removeprefix("prior_level_")
    if not level.isdigit():
        raise TrainingError(f"unknown component {component!r}: 'vqvae' or 'prior_level_L'")
    prior = load_prior(path, int(level), dtype=jnp.float32)
    return prior.params, prior.config, prior.vocab


def export_model(path: PathLike, params: Any, config: Any, vocab: dict | None = None) -> Path:
    """Write the trained params as a model directory (replacing an older export)."""
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    return save_model_dir(path, host, config, vocab, overwrite=True)
