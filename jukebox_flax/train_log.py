"""The logs of a training run that people read: ``metrics.csv``, TensorBoard event files, a loss
plot and the progress bar.

:class:`TrainLog` writes each logged step to all three outputs of a run folder:

* ``RUN/metrics.csv`` (:class:`MetricsLog`): a ``step`` and a ``seconds`` column, then one column
  per metric (``loss``, ``lr``, ``holdout_loss`` ...); a column first seen late is added to the
  rows written before it (left empty there).
* ``RUN/tensorboard/`` (:class:`TensorBoardLog`): the same scalars as event files, one per start;
  a resumed run marks every step after the restored one as purged, so TensorBoard shows each step
  once (``tensorboard --logdir RUN/tensorboard``).
* ``RUN/loss.png`` (:func:`plot_losses`): training and held-out loss against the step, redrawn at
  most once a minute, at every held-out loss, and when the run stops (finished, failed or Ctrl-C).

The event files and the plot need the optional ``train`` extra (tensorboardX, matplotlib); without
it the CSV is still written and one line says what to install.
"""

from __future__ import annotations

import csv
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from .atomic import atomic_write

__all__ = [
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "PLOT_FILE",
    "TRAIN_EXTRA_HINT",
    "BAR_FORMAT",
    "MetricsLog",
    "TensorBoardLog",
    "plot_losses",
    "TrainLog",
    "progress_bar",
]

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = "loss.png"
TRAIN_EXTRA_HINT = "TensorBoard logs and loss.png need the train extra: pip install 'jukebox-flax[train]'"
# tqdm's default layout with the loss after the rate: "40%|████  | 400/1000 [05:00<07:30, 1.33step/s, loss=2.1]"
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
PLOT_INTERVAL_S = 60.0  # the plot is redrawn at a log write at most this often


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------------
# metrics.csv


class MetricsLog:
    """Scalar metrics averaged over each logging interval, to stdout and a CSV file.

    On resume the CSV keeps the rows up to the restored step (rows written after the last
    checkpoint by a killed run are replayed, not duplicated). ``rows`` holds every row of the file
    (restored ones included) as strings, as the CSV has them.
    """

    def __init__(self, path: str | Path, resume_step: int = 0, echo: Callable[[str], None] = print):
        self.path = Path(path)
        self.echo = echo
        self.columns: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        self._pending: dict[str, list] = {}
        self._start = time.time()
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames:
                    self.columns = list(reader.fieldnames)
                    self.rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
        self._file: Any = None
        self._rewrite()

    def _rewrite(self) -> None:
        """The whole file again from ``rows`` (atomically: a kill leaves the old file or the new one),
        then open for appending."""
        if self._file is not None:
            self._file.close()
        with atomic_write(self.path, "w") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns, lineterminator="\r\n")
                writer.writeheader()
                writer.writerows(self.rows)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

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
        row = {"step": str(step), "seconds": str(round(time.time() - self._start, 3))}
        row.update({k: str(_csv_value(v)) for k, v in values.items()})
        self.rows.append(row)
        new = sorted(k for k in values if k not in (self.columns or []))
        if self.columns is None or new:
            self.columns = (self.columns or ["step", "seconds"]) + new
            self._rewrite()
        else:
            self._writer.writerow([row.get(c, "") for c in self.columns])
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
    first = [k for k in ("loss", "holdout_loss", "lr") if k in values]
    return first + sorted(k for k in values if k not in first)


# ------------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardLog:
    """Scalars to TensorBoard event files in ``directory`` (tensorboardX, a module given by the
    caller). Each start writes a new file; with ``purge_step`` TensorBoard hides the events of
    earlier files from that step on, so a resumed run (``purge_step`` = restored step + 1) never
    shows a step twice."""

    def __init__(self, tensorboardx: ModuleType, directory: str | Path, purge_step: int):
        # a suffix in start order: two starts within one second would otherwise share a file name (and
        # TensorBoard reads the files of a folder in name order)
        self.writer = tensorboardx.SummaryWriter(
            str(directory), purge_step=purge_step, filename_suffix=f".{time.time_ns()}"
        )

    def write(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------------
# loss.png


def _column(rows: Sequence[Mapping[str, str]], name: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_losses(rows: Sequence[Mapping[str, str]], path: str | Path) -> Path:
    """Draw the ``loss`` and ``holdout_loss`` columns of ``rows`` (:attr:`MetricsLog.rows`) against
    the step into the PNG ``path`` (atomically). Needs matplotlib; no global pyplot state is
    touched, so it is safe in a notebook."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, label, style in (("loss", "training", "-"), ("holdout_loss", "held out", "o-")):
        steps, values = _column(rows, name)
        if steps:
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return path


# ------------------------------------------------------------------------------------------------
# All of them


class TrainLog:
    """``metrics.csv``, TensorBoard and ``loss.png`` of the run folder ``out_dir`` (module docstring).

    ``resume_step``: the restored step (0 for a new run). ``tensorboard`` / ``plot``: write those
    (when the ``train`` extra is installed; otherwise ``echo`` gets :data:`TRAIN_EXTRA_HINT` once).
    """

    def __init__(
        self,
        out_dir: str | Path,
        resume_step: int = 0,
        echo: Callable[[str], None] = print,
        *,
        tensorboard: bool = True,
        plot: bool = True,
    ):
        out_dir = Path(out_dir)
        self.metrics = MetricsLog(out_dir / METRICS_FILE, resume_step=resume_step, echo=echo)
        tensorboardx = _optional("tensorboardX") if tensorboard else None
        self.plot_path = out_dir / PLOT_FILE if plot and _optional("matplotlib") is not None else None
        if (tensorboard and tensorboardx is None) or (plot and self.plot_path is None):
            echo(TRAIN_EXTRA_HINT)
        self.tensorboard = (
            TensorBoardLog(tensorboardx, out_dir / TENSORBOARD_DIR, purge_step=resume_step + 1)
            if tensorboardx is not None
            else None
        )
        self._plotted = time.monotonic()

    def add(self, metrics: Mapping[str, Any]) -> None:
        """Keep one step's metrics (averaged at the next :meth:`write`)."""
        self.metrics.add(metrics)

    def write(self, step: int, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Log the average since the last write (and ``extra``) under ``step`` everywhere."""
        values = self.metrics.write(step, extra)
        if values and self.tensorboard is not None:
            self.tensorboard.write(step, values)
        if values and time.monotonic() - self._plotted >= PLOT_INTERVAL_S:
            self.plot()
        return values

    def plot(self) -> None:
        """Redraw ``loss.png`` now."""
        self._plotted = time.monotonic()
        if self.plot_path is not None and self.metrics.rows:
            plot_losses(self.metrics.rows, self.plot_path)

    def close(self) -> None:
        """Final plot, then close the files."""
        try:
            self.plot()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            self.metrics.close()


def progress_bar(total: int, initial: int = 0, disable: bool = False, **kwargs: Any) -> tqdm:
    """The training progress bar: steps done of ``total``, elapsed and remaining time, steps per
    second and the postfix (the last logged losses). ``initial``: the restored step, so the rate and
    time left count only this start's steps."""
    return tqdm(
        total=total,
        initial=initial,
        disable=disable,
        unit="step",
        dynamic_ncols=True,
        bar_format=BAR_FORMAT,
        **kwargs,
    )
