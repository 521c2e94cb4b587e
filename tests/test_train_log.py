"""The logs of a training run: metrics.csv with the held-out loss, TensorBoard event files (read
back, with resume's purge), loss.png, the progress bar, and training without the train extra."""

from __future__ import annotations

import csv
import io
import struct
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import training_toy as toy
from tqdm import tqdm

from jukebox_flax import train_log, training

TAPS = toy.TAPS


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """The scalars TensorBoard shows for a folder of event files: files in name order, records in
    file order, and a SessionLog START at step s (a resumed writer's purge_step) hides every
    earlier event at steps >= s (TensorBoard's EventAccumulator does the same)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def raw_scalar_steps(directory: Path, tag: str) -> list[int]:
    """Every step ``tag`` was written at, in all files (before any purge)."""
    from tensorboardX.proto import event_pb2

    steps = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


# A deterministic toy (no key in the loss), so the held-out loss can be recomputed in numpy.
def linear_loss(params, inputs, key):
    x = inputs[:, :, 0]
    past = jnp.stack([x[:, k : k + toy.SAMPLE_LENGTH - TAPS] for k in range(TAPS)], axis=-1)
    loss = jnp.mean((past @ params["w"] + params["b"] - x[:, TAPS:]) ** 2)
    return loss, {"mse": loss}


def numpy_loss(params, audio: np.ndarray) -> float:
    x = audio[:, :, 0].astype(np.float64)
    past = np.stack([x[:, k : k + toy.SAMPLE_LENGTH - TAPS] for k in range(TAPS)], axis=-1)
    w, b = np.asarray(params["w"], np.float64), float(params["b"])
    return float(np.mean((past @ w + b - x[:, TAPS:]) ** 2))


def linear_task() -> training.Task:
    return training.gradient_task(
        lambda key, batch: {"w": jnp.zeros((TAPS,)), "b": jnp.zeros(())},
        linear_loss,
        training.OptimConfig(lr=1e-2, warmup_steps=1),
        prepare=lambda b: jnp.asarray(b.audio),
    )


@pytest.fixture(scope="module")
def split(data):
    """The synthetic songs split 9 / 3 and the two datasets (no labels)."""
    from jukebox_flax.data import AudioDataset, holdout_split, read_metadata

    train_songs, held = holdout_split(read_metadata(data / "metadata.csv"), 0.25, seed=0)
    return AudioDataset(train_songs, toy.SAMPLE_LENGTH), AudioDataset(held, toy.SAMPLE_LENGTH)


def run_linear(split, out: Path, steps: int, **kwargs):
    ds, held = split
    args = dict(seed=1, log_every=3, checkpoint_every=2, keep_checkpoints=10, progress=False)
    args.update(kwargs)
    return training.train(
        linear_task(),
        lambda i: ds.batch(i, 2, 1),
        steps,
        out,
        holdout_at=lambda j: held.batch(j, 2, 1),
        holdout_batches=2,
        evaluate_every=2,
        **args,
    )


def test_holdout_loss_is_the_loss_of_the_saved_params_on_fixed_crops(split, tmp_path):
    _, held = split
    state, _ = run_linear(split, tmp_path / "run", 5)
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    # logged at every 3rd step and the last; the held-out loss every 2nd step and the last
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 5]
    assert [r["step"] for r in rows if r["holdout_loss"]] == ["2", "4", "5"]
    assert all(r["loss"] for r in rows)
    crops = [held.batch(j, 2, 1).audio for j in range(2)]
    ckpt = training.TrainCheckpoints(tmp_path / "run" / "checkpoints")
    abstract = linear_task().abstract_state(jax.random.PRNGKey(0), held.batch(0, 2, 1))
    for row in rows:
        if row["holdout_loss"]:
            saved, _ = ckpt.restore(int(row["step"]), abstract)
            expected = np.mean([numpy_loss(saved.params, c) for c in crops])
            assert float(row["holdout_loss"]) == pytest.approx(expected, rel=2e-5)
    ckpt.close()
    # evaluating changes nothing: the same params as a run without held-out losses
    plain, _ = training.train(
        linear_task(), lambda i: split[0].batch(i, 2, 1), 5, tmp_path / "plain", seed=1, progress=False
    )
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class Killed(Exception):
    """Stands in for a kill: the loop stops without a final checkpoint."""


@pytest.mark.slow
def test_resume_with_holdout_gives_the_same_csv_and_tensorboard(split, tmp_path):
    pytest.importorskip("tensorboardX", reason="the train extra")
    run_linear(split, tmp_path / "ref", 7, log_every=1)

    def kill(step, state):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        run_linear(split, tmp_path / "killed", 7, log_every=1, checkpoint_every=3, after_step=kill)
    assert [r["step"] for r in read_csv(tmp_path / "killed" / "metrics.csv")] == ["1", "2", "3", "4", "5"]
    run_linear(split, tmp_path / "killed", 7, log_every=1, checkpoint_every=3)  # resumes from step 3

    ref, got = read_csv(tmp_path / "ref" / "metrics.csv"), read_csv(tmp_path / "killed" / "metrics.csv")
    assert list(got[0]) == list(ref[0]) == ["step", "seconds", "grad_norm", "loss", "lr", "mse", "holdout_loss"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(got) == drop(ref)
    assert [r["step"] for r in got if r["holdout_loss"]] == ["2", "4", "6", "7"]

    events = tmp_path / "killed" / "tensorboard"
    assert len(list(events.glob("events.out.tfevents.*"))) == 2  # one file per start
    assert raw_scalar_steps(events, "loss") == [1, 2, 3, 4, 4, 5, 5, 6, 7]  # 4 and 5 written twice ...
    scalars = read_scalars(events)  # ... and shown once, with the resumed run's values
    assert scalars == read_scalars(tmp_path / "ref" / "tensorboard")
    assert set(scalars) == set(ref[0]) - {"step", "seconds"}
    for row in got:
        for name, value in row.items():
            if name not in ("step", "seconds") and value:
                assert scalars[name][int(row["step"])] == pytest.approx(float(value), rel=1e-5)
    assert sorted(scalars["holdout_loss"]) == [2, 4, 6, 7]


def test_loss_plot_is_a_png(split, tmp_path):
    pytest.importorskip("matplotlib", reason="the train extra")
    from PIL import Image  # a dependency of matplotlib

    run_linear(split, tmp_path, 4)
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (800, 450)
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 < pixels.max()  # something drawn on the white background
    assert not list(tmp_path.glob(".loss.png.*"))  # the atomic write's temporary file is gone


def test_metrics_log_adds_a_late_column_and_keeps_rows_on_resume(tmp_path):
    lines = []
    log = train_log.MetricsLog(tmp_path / "m.csv", echo=lines.append)
    log.add({"loss": np.float32(2.0), "image": np.zeros(3)})
    log.write(1)
    log.add({"loss": 1.0})
    log.add({"loss": 0.5})
    log.write(2, {"holdout_loss": 1.25})
    log.add({"loss": 0.25})
    log.write(3)
    log.close()
    rows = read_csv(tmp_path / "m.csv")
    assert list(rows[0]) == ["step", "seconds", "loss", "holdout_loss"]
    assert [(r["step"], r["loss"], r["holdout_loss"]) for r in rows] == [
        ("1", "2", ""),
        ("2", "0.75", "1.25"),
        ("3", "0.25", ""),
    ]
    assert lines[1] == "step 2 | loss 0.75 | holdout_loss 1.25"
    again = train_log.MetricsLog(tmp_path / "m.csv", resume_step=2, echo=lines.append)
    again.close()
    assert [r["step"] for r in read_csv(tmp_path / "m.csv")] == ["1", "2"]
    assert [r["step"] for r in again.rows] == ["1", "2"]
    assert training.MetricsLog is train_log.MetricsLog  # still importable from training


def test_progress_bar_shows_rate_time_left_and_loss():
    # 20 steps restored, 20 more in 10 s: 2 steps/s, 60 left -> 30 s
    line = tqdm.format_meter(
        40, 100, 10, initial=20, bar_format=train_log.BAR_FORMAT, unit="step", postfix="loss=2.1", ncols=100
    )
    assert line.endswith("40/100 [00:10<00:30,  2.00step/s, loss=2.1]"), line
    out = io.StringIO()
    bar = train_log.progress_bar(100, initial=20, file=out)
    bar.update(1)
    bar.set_postfix({"loss": "2.1", "holdout_loss": "2.3"})
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert " 21/100 [" in last and "step/s, loss=2.1, holdout_loss=2.3]" in last, last


def test_training_without_the_train_extra_writes_the_csv_and_one_hint(split, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    lines = []
    monkeypatch.setattr(tqdm, "write", lambda s, *a, **k: lines.append(s))
    run_linear(split, tmp_path, 2, log_every=1)
    assert [line for line in lines if "pip install" in line] == [train_log.TRAIN_EXTRA_HINT]
    assert [r["step"] for r in read_csv(tmp_path / "metrics.csv")] == ["1", "2"]
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "loss.png").exists()


def test_evaluate_of_the_param_ema_task_is_the_inner_tasks(split):
    ds, held = split
    task = training.with_param_ema(linear_task(), 0.5)
    state = task.init(jax.random.PRNGKey(0), ds.batch(0, 2))
    for i in range(3):  # the first step's learning rate is 0 (warm-up)
        state, _ = task.step(state, ds.batch(i, 2), jax.random.PRNGKey(i))
    got = float(task.evaluate(state, held.batch(0, 2))["loss"])
    assert got == pytest.approx(numpy_loss(jax.device_get(state.inner.params), held.batch(0, 2).audio), rel=1e-5)
    assert got != pytest.approx(numpy_loss(jax.device_get(state.params_ema), held.batch(0, 2).audio), rel=1e-3)


def test_a_task_without_evaluate_refuses_a_holdout(split, tmp_path):
    task = linear_task()
    task.evaluate = None
    with pytest.raises(training.TrainingError, match="no evaluate"):
        training.train(task, lambda i: split[0].batch(i, 2), 1, tmp_path, holdout_at=split[1].batch, holdout_batches=1)
