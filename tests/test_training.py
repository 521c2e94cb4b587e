"""The training loop: schedule, resume after a kill (exactly as an uninterrupted run), Ctrl-C,
metrics CSV, and the VQ-VAE / prior scripts end to end on tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import training_toy as toy
from conftest import load_script
from training_toy import TINY_PRIOR, TINY_VQVAE, read_csv

from jukebox_flax import training
from jukebox_flax.train_command import run_script

ROOT = Path(__file__).resolve().parents[1]


# One level (hop 4) keeps compilation short; the prior is that level's (top) prior, with lyrics.
def test_schedule_warmup_and_decay():
    s = training.make_schedule(training.OptimConfig(lr=1.0, warmup_steps=4, decay_steps=10, final_lr_fraction=0.1))
    assert [float(s(i)) for i in (0, 2, 4)] == pytest.approx([0.0, 0.5, 1.0])
    assert float(s(9)) == pytest.approx(1.0 - 0.9 * 5 / 10)
    assert float(s(100)) == pytest.approx(0.1)
    assert float(training.make_schedule(training.OptimConfig(lr=2.0, warmup_steps=2))(50)) == 2.0


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_resume_after_kill_continues_exactly(data, tmp_path, capsys):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(toy.__file__)),
            str(data),
            str(killed),
            "--steps",
            "10",
            "--every",
            "3",
            "--kill-at",
            "8",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = training.TrainCheckpoints(killed / "checkpoints").latest_step()
    assert saved in (3, 6)  # 6 unless its asynchronous save was still running at the kill
    assert len(read_csv(killed / "metrics.csv")) == 8  # logged past the checkpoint before dying

    state, step = toy.run(data, killed, steps=10, every=3)
    assert f"resumed from {killed / 'checkpoints' / str(saved)}" in capsys.readouterr().out
    ref_state, ref_step = toy.run(data, reference, steps=10, every=3)
    assert step == ref_step == 10
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows, ref_rows = read_csv(killed / "metrics.csv"), read_csv(reference / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert float(ref_rows[-1]["loss"]) < float(ref_rows[0]["loss"])
    ckpt = training.TrainCheckpoints(killed / "checkpoints")
    assert ckpt.latest_step() == 10
    _, meta = ckpt.restore(10, state)
    assert meta["step"] == meta["data_position"] == 10 and meta["seed"] == 3


def test_ctrl_c_saves_a_checkpoint(data, tmp_path):
    ds = toy.dataset(data)

    def interrupt(step, state):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.train(
            toy.task(),
            lambda i: ds.batch(i, 2),
            50,
            tmp_path,
            checkpoint_every=100,
            progress=False,
            after_step=interrupt,
        )
    assert training.TrainCheckpoints(tmp_path / "checkpoints").latest_step() == 4
    with pytest.raises(training.TrainingError, match="already holds checkpoints"):
        training.train(toy.task(), lambda i: ds.batch(i, 2), 50, tmp_path, resume=False, progress=False)


def test_param_ema_averages_the_params_and_resumes_exactly(data, tmp_path):
    """with_param_ema: ema_t = d * ema_{t-1} + (1 - d) * params_t from the initial params, next to an
    unchanged inner run; a run stopped at a checkpoint and resumed ends with the same average."""
    ds, decay, steps = toy.dataset(data), 0.8, 6
    batch_at = lambda i: ds.batch(i, 2, 3)  # noqa: E731
    plain, history = toy.task(), []
    state = plain.init(jax.random.split(jax.random.PRNGKey(3))[0], batch_at(0))
    ema = jax.tree.map(np.asarray, plain.params(state))
    for i in range(steps):
        state, _ = plain.step(state, batch_at(i), jax.random.fold_in(jax.random.split(jax.random.PRNGKey(3))[1], i))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), ema, plain.params(state))
        history.append(plain.params(state))

    task = training.with_param_ema(toy.task(), decay)
    got, _ = training.train(task, batch_at, steps, tmp_path / "a", seed=3, progress=False, log_every=1)
    for a, b in zip(jax.tree.leaves(task.params(got)), jax.tree.leaves(ema)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(got.inner.params), jax.tree.leaves(history[-1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the inner training is untouched
    assert not np.allclose(np.asarray(task.params(got)["w"]), np.asarray(got.inner.params["w"]))

    training.train(task, batch_at, 3, tmp_path / "b", seed=3, progress=False, checkpoint_every=3)
    resumed, _ = training.train(task, batch_at, steps, tmp_path / "b", seed=3, progress=False)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(training.TrainingError, match="decay"):
        training.with_param_ema(toy.task(), 1.0)


@pytest.fixture(scope="module")
def vqvae_run(data, tmp_path_factory) -> Path:
    """A tiny VQ-VAE trained by scripts/train_vqvae.py (8 steps)."""
    tmp = tmp_path_factory.mktemp("vqvae")
    config = tmp / "vq.json"
    config.write_text(json.dumps(TINY_VQVAE))
    out = tmp / "run"
    load_script("train_vqvae").main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--config",
            str(config),
            "--steps",
            "8",
            "--batch",
            "4",
            "--sample-length",
            "256",
            "--lr",
            "3e-3",
            "--warmup",
            "1",
            "--checkpoint-every",
            "4",
            "--log-every",
            "2",
            "--bandwidth-examples",
            "8",
            "--no-progress",
        ]
    )
    return out


@pytest.mark.slow
def test_vqvae_script_trains_and_exports(vqvae_run, data):
    from jukebox_flax.config import VQVAEConfig
    from jukebox_flax.data import AudioDataset
    from jukebox_flax.vqvae.api import load_vqvae

    rows = read_csv(vqvae_run / "metrics.csv")
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert "usage_l1" in rows[0] and "commit_loss" in rows[0]  # EMA codebook and loss terms are logged
    assert training.TrainCheckpoints(vqvae_run / "checkpoints").manager.all_steps() == [4, 8]
    vq = load_vqvae(vqvae_run / "model")
    assert vq.config == VQVAEConfig.from_dict(TINY_VQVAE)
    assert [c.shape for c in vq.encode(np.zeros((1, 64, 1), np.float32))] == [(1, 16)]
    codebook = np.asarray(vq.params["bottleneck"]["level_blocks_0"]["k"])
    assert np.abs(codebook).sum() > 0  # the EMA-trained codebook, not the zeros of a fresh init

    # Fine-tuning keeps the stored codebook and restores its EMA counts (the original restore_k):
    # batch 4 x 256 samples / hop 4 = 256 tokens per step over 16 codes = 16 per code.
    params, config, _ = training.load_component(vqvae_run / "model", "vqvae")
    task = training.vqvae_task(
        config, training.OptimConfig(), init_params=params, bandwidth={"l1": 1, "l2": 1, "spec": 1}
    )
    state = task.init(jax.random.PRNGKey(0), AudioDataset.from_folder(data, 256).batch(0, 4))
    np.testing.assert_array_equal(np.asarray(state.codebooks[0]), codebook)
    np.testing.assert_allclose(np.asarray(state.ema[0].k_elem), 16.0)


@pytest.mark.slow
def test_prior_script_trains_exports_and_fine_tunes(vqvae_run, data, tmp_path):
    from jukebox_flax.config import PriorConfig
    from jukebox_flax.prior.api import load_prior

    config = tmp_path / "prior.json"
    config.write_text(json.dumps(TINY_PRIOR))
    out = tmp_path / "run"
    common = [
        "--data",
        str(data),
        "--vqvae",
        str(vqvae_run / "model"),
        "--batch",
        "4",
        "--lr",
        "1e-2",
        "--warmup",
        "1",
        "--log-every",
        "4",
        "--no-progress",
    ]
    script = load_script("train_prior")
    script.main(common + ["--out", str(out), "--config", str(config), "--steps", "8"])
    losses = [float(r["loss"]) for r in read_csv(out / "metrics.csv")]
    assert losses[-1] < losses[0], losses
    prior = load_prior(out / "model")
    assert prior.config == PriorConfig.from_dict(TINY_PRIOR)
    assert set(prior.vocab["artists"]) == {"unknown", "ada_low", "ben_high", "cleo_minor", "dev_tritone"}

    # --init-from: config, params and vocab come from the model directory (0 steps: a pure round trip;
    # the params' moving average of --ema starts from them).
    tuned = tmp_path / "tuned"
    script.main(common + ["--out", str(tuned), "--init-from", str(out / "model"), "--steps", "0", "--ema", "0.99"])
    again = load_prior(tuned / "model")
    assert again.config == prior.config and again.vocab == prior.vocab
    for a, b in zip(jax.tree_util.tree_leaves(again.params), jax.tree_util.tree_leaves(prior.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_script_errors_are_one_line(data, tmp_path, capsys):
    script = load_script("train_vqvae")
    code = run_script(
        lambda: script.main(["--data", str(data), "--out", str(tmp_path), "--preset", "prior_5b", "--steps", "1"])
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: the chosen config is a PriorConfig, this command trains a VQVAEConfig"
    ]
