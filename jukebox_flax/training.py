"""Training and fine-tuning: checkpoints with resume, metrics, and the two tasks (the optimizer: ``optim.py``).

The loop is generic over a :class:`Task`:

* ``task.init(key, first_batch) -> state`` builds the training state (any pytree: params,
  optimizer state, EMA codebooks ...);
* ``task.step(state, batch, key) -> (state, metrics)`` is one (jitted) update;
* ``task.params(state)`` is the param tree a model directory stores.

:func:`train` runs ``steps`` updates on ``batch_at(i)`` (batch number ``i``: a pure function of
``i``, so the data position is just the step), with the key ``fold_in(PRNGKey(seed), i)``, saving an
Orbax checkpoint (state + step + data position) every ``checkpoint_every`` steps. Killed at any
point, the same call resumes from the latest complete checkpoint and continues exactly as an
uninterrupted run would. Metrics (averaged over ``log_every`` steps) go to stdout and
``OUT/metrics.csv``; a tqdm bar shows progress.

:func:`vqvae_task` trains a VQ-VAE (the original loss, EMA codebooks with random restarts;
``jukebox_flax.vqvae.train``); :func:`prior_task` trains one prior level on codes of a frozen
VQ-VAE computed on the fly, as the original. Both start from scratch or from a model directory
(fine-tuning); :func:`with_param_ema` adds a moving average of the params (the original's
``--ema``); :func:`export_model` writes the result as a model directory.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from .checkpoint import save_model_dir
from .errors import TrainingError
from .optim import OptimConfig, make_optimizer, make_schedule
from .prior.api import init_prior_params, load_prior
from .prior.conditioners import check_labels
from .prior.prior import JukeboxPrior
from .sharding import param_shardings, shard_batch
from .vqvae.api import init_vqvae_params, load_vqvae
from .vqvae.losses import estimate_bandwidth
from .vqvae.train import init_train_state, make_train_step
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
    "gradient_task",
    "EMAState",
    "with_param_ema",
    "vqvae_task",
    "prior_task",
    "data_bandwidth",
    "load_component",
    "export_model",
]

PathLike = str | os.PathLike
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.csv"


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
# Metrics


class MetricsLog:
    """Scalar metrics averaged over each logging interval, to stdout and a CSV file.

    On resume the CSV keeps the rows up to the restored step (rows written after the last
    checkpoint by a killed run are replayed, not duplicated).
    """

    def __init__(self, path: PathLike, resume_step: int = 0, echo: Callable[[str], None] = print):
        self.path = Path(path)
        self.echo = echo
        self.columns: list[str] | None = None
        self._pending: dict[str, list] = {}
        self._start = time.time()
        rows: list[list[str]] = []
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header:
                    self.columns = header
                    rows = [r for r in reader if r and int(r[0]) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.writer(self._file)
        if self.columns:
            self._writer.writerow(self.columns)
            self._writer.writerows(rows)
            self._file.flush()

    def add(self, metrics: Mapping[str, Any]) -> None:
        """Keep one step's metrics (device arrays are only fetched at :meth:`write`)."""
        for name, value in metrics.items():
            if np.ndim(value) == 0:
                self._pending.setdefault(name, []).append(value)

    def write(self, step: int, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Average what was added since the last write and log it under ``step``."""
        values = {name: float(np.mean(jax.device_get(v))) for name, v in self._pending.items()}
        values.update(extra or {})
        self._pending = {}
        if not values:
            return values
        if self.columns is None:
            self.columns = ["step", "seconds"] + sorted(values)
            self._writer.writerow(self.columns)
        row = {"step": step, "seconds": round(time.time() - self._start, 3), **values}
        self._writer.writerow([_csv_value(row.get(c, "")) for c in self.columns])
        self._file.flush()
        shown = " | ".join(f"{k} {_fmt(values[k])}" for k in _display_order(values))
        self.echo(f"step {step} | {shown}")
        return values

    def close(self) -> None:
        self._file.close()


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _display_order(values: Mapping[str, float]) -> list[str]:
    first = [k for k in ("loss", "lr") if k in values]
    return first + sorted(k for k in values if k not in first)


# ------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Task:
    """What :func:`train` trains: see the module docstring. ``meta`` is stored with every
    checkpoint (JSON); ``schedule`` (optional) is logged as ``lr``. ``step`` may donate its state
    (every task here does), so only the state it returns is valid afterwards. ``abstract``
    (optional): ``(key, first_batch) ->`` the state as ``jax.ShapeDtypeStruct`` leaves with their
    shardings, what a resumed run restores into; by default ``jax.eval_shape`` of ``init``."""

    init: Callable[[jax.Array, Any], Any]
    step: Callable[[Any, Any, jax.Array], tuple[Any, dict]]
    params: Callable[[Any], Any]
    meta: dict = field(default_factory=dict)
    schedule: optax.Schedule | None = None
    abstract: Callable[[jax.Array, Any], Any] | None = None

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
) -> tuple[Any, int]:
    """Train ``task`` up to ``steps`` total steps; returns (state, steps done).

    Writes ``out_dir/checkpoints/<step>/`` and ``out_dir/metrics.csv``. With ``resume`` (default)
    a run restarts from the latest checkpoint in ``out_dir``; ``resume=False`` refuses to touch an
    existing one. A Ctrl-C saves a checkpoint before stopping. ``after_step(step, state)`` (optional)
    runs after every step, its logging and checkpointing (e.g. evaluation hooks).
    """
    if steps < 0 or checkpoint_every < 1 or log_every < 1:
        raise TrainingError("steps must be >= 0, checkpoint_every and log_every >= 1")
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
    log = MetricsLog(out_dir / METRICS_FILE, resume_step=start, echo=tqdm.write)
    meta = dict(task.meta, seed=seed)

    saved = start

    def save(step: int) -> None:
        nonlocal saved
        checkpoints.save(step, state, dict(meta, step=step, data_position=step))
        saved = step

    step = start
    bar = tqdm(total=steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        while step < steps:
            state, metrics = task.step(state, batch_at(step), jax.random.fold_in(step_key, step))
            step += 1
            log.add(metrics)
            bar.update(1)
            if step % log_every == 0 or step == steps:
                extra = {"lr": float(task.schedule(step - 1))} if task.schedule is not None else None
                values = log.write(step, extra)
                if "loss" in values:
                    bar.set_postfix(loss=f"{values['loss']:.4g}")
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


def gradient_task(
    init_params: Any,
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]],
    optim: OptimConfig,
    prepare: Callable[[Any], Any] = lambda batch: batch,
    meta: dict | None = None,
    mesh: Any = None,
    param_axes: Any = None,
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
    params' ``sharding.ParamAxes`` (needed with a mesh).
    """
    optimizer = make_optimizer(optim)
    if mesh is not None:
        prepare_one = prepare
        prepare = lambda batch: shard_batch(prepare_one(batch), mesh)  # noqa: E731

    given = None if callable(init_params) else init_params

    def initializer(key: jax.Array, batch: Any) -> Callable[[jax.Array, Any], GradState]:
        """The init as one jitted function of (key, given params), placed by the rules on a mesh."""

        def new_state(key: jax.Array, given: Any) -> GradState:
            params = init_params(key, batch) if given is None else given
            return GradState(params, optimizer.init(params))

        if mesh is None:
            return jax.jit(new_state)
        shapes = jax.eval_shape(new_state, key, given)
        # the moments' leaf paths end like the params', so the same rules place them
        shardings = GradState(
            param_shardings(shapes.params, mesh, param_axes), param_shardings(shapes.opt_state, mesh, param_axes)
        )
        return jax.jit(new_state, out_shardings=shardings)

    def init(key: jax.Array, batch: Any) -> GradState:
        return initializer(key, batch)(key, given)

    def abstract(key: jax.Array, batch: Any) -> GradState:
        return jax.eval_shape(initializer(key, batch), key, given)

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state: GradState, inputs: Any, key: jax.Array) -> tuple[GradState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, inputs, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return GradState(params, opt_state), dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))

    return Task(
        init=init,
        step=lambda state, batch, key: update(state, prepare(batch), key),
        params=lambda state: state.params,
        meta=dict(meta or {}),
        schedule=make_schedule(optim),
        abstract=abstract,
    )


class EMAState(NamedTuple):
    """A task's state and the moving average of its params (:func:`with_param_ema`)."""

    inner: Any
    params_ema: Any


def with_param_ema(task: Task, decay: float) -> Task:
    """``task`` that also keeps an exponential moving average of its params, as the original's
    ``--ema`` (decay 0.9999 there): after every step ``ema = decay * ema + (1 - decay) * params``,
    starting from the initial (or fine-tuned) params. The new task's ``params`` are the average (what
    a model directory gets); its metrics are the inner task's; the average is checkpointed with the
    state, so a resumed run continues it exactly.
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
    )


def vqvae_task(
    config: Any,
    optim: OptimConfig,
    *,
    init_params: Mapping | None = None,
    bandwidth: Mapping[str, float] | None = None,
    samples_per_batch: int | None = None,
) -> Task:
    """Train a VQ-VAE (``VQVAEConfig``) on batches of audio.

    From scratch (``init_params=None``) the codebooks start from the first batch's latents (the
    original ``init_k``); from ``init_params`` (fine-tuning) they are kept and their EMA counts
    set to ``samples_per_batch // hop_L / bins`` per level (the original ``restore_k``;
    ``samples_per_batch`` defaults to batch size x crop samples). ``bandwidth``: the dataset statistics that
    scale the losses (``data_bandwidth``).
    """
    if bandwidth is None:
        raise TrainingError("vqvae_task needs the dataset bandwidth (see data_bandwidth)")
    optimizer = make_optimizer(optim)
    step_fn = make_train_step(config, optimizer, bandwidth)

    def init(key: jax.Array, batch: Any) -> Any:
        init_key, code_key = jax.random.split(key)
        if init_params is None:
            params = init_vqvae_params(config, init_key)
            return init_train_state(config, params, optimizer, code_key, x=jnp.asarray(batch.audio))
        samples = samples_per_batch or batch.audio.shape[0] * batch.audio.shape[1]
        return init_train_state(config, init_params, optimizer, code_key, samples_per_batch=samples)

    return Task(
        init=init,
        step=lambda state, batch, key: step_fn(state, jnp.asarray(batch.audio), key),
        params=lambda state: state.params,
        meta={"bandwidth": dict(bandwidth)},
        schedule=make_schedule(optim),
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
) -> Task:
    """Train one prior level (``PriorConfig``) on batches of audio and labels (``mesh``: see
    :func:`gradient_task`).

    ``vqvae``: a loaded :class:`jukebox_flax.vqvae.api.VQVAE` (frozen). Every step encodes the
    batch's audio, takes the codes of ``config.level`` as tokens and, for an upsampler, those of the
    level above as ``upper`` (the original ``SimplePrior.forward``), and minimises the prior's loss
    (``JukeboxPrior.loss``: bits per token, plus the lyric loss of lyric models).
    ``vqvae=None``: the batches are codes already (``codes_dataset.CodesBatch``: tokens, upper, y),
    and the same loss is minimised without the VQ-VAE in the step.
    """
    if vqvae is not None:
        vq_config = vqvae.config
        if tuple(vq_config.downs_t) != tuple(config.downs_t) or tuple(vq_config.strides_t) != tuple(config.strides_t):
            raise TrainingError("the prior's downs_t/strides_t differ from the VQ-VAE's")
        if vq_config.l_bins != config.bins:
            raise TrainingError(f"the prior has {config.bins} bins, the VQ-VAE {vq_config.l_bins}")
        vq_module = VQVAEModule(vq_config)
        vq_params = vqvae.params
    module = JukeboxPrior(config)

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
        init if init_params is None else init_params, loss_fn, optim, prepare=prepare, mesh=mesh, param_axes=axes
    )


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
