"""Training data without metadata (every audio file of a folder, unknown labels), the held-out
split, the VQ-VAE's evaluation, and ``jukebox-flax train prior`` on such a folder with --holdout."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import training_toy as toy
from training_toy import TINY_PRIOR, TINY_VQVAE, read_csv

from jukebox_flax import training
from jukebox_flax.config import PriorConfig, VQVAEConfig
from jukebox_flax.data import (
    AudioDataset,
    DataError,
    audio_extensions,
    holdout_split,
    labeller_for_songs,
    read_metadata,
    songs_in_folder,
)


@pytest.fixture(scope="module")
def audio_only(data) -> Path:
    """The synthetic dataset's audio folder: twelve wav files and no metadata file."""
    folder = data / "audio"
    assert not list(folder.glob("metadata.*")) and len(list(folder.glob("*.wav"))) == 12
    return folder


def test_songs_in_folder_lists_every_audio_file_sorted(tmp_path):
    tone = (0.1 * np.sin(np.arange(800) / 5)).astype(np.float32)
    for name in ("b/z.wav", "b/a.FLAC", "a.ogg", "c/d/e.aiff", ".hidden/x.wav", "c/.y.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(
            tmp_path / name,
            tone,
            8000,
            format={"flac": "FLAC", "ogg": "OGG", "aiff": "AIFF"}.get(name.rsplit(".", 1)[1].lower(), "WAV"),
        )
    (tmp_path / "notes.txt").write_text("not audio")
    songs = songs_in_folder(tmp_path)
    assert [s.path.relative_to(tmp_path).as_posix() for s in songs] == ["a.ogg", "b/a.FLAC", "b/z.wav", "c/d/e.aiff"]
    assert {(s.artist, s.genre, s.lyrics) for s in songs} == {("unknown", "unknown", "")}
    assert {".wav", ".flac", ".ogg", ".aiff"} <= set(audio_extensions())
    ds = AudioDataset.from_folder(tmp_path, 1000, sr=8000)  # no metadata file: the same songs
    assert ds.songs == songs and ds.lengths.tolist() == [800] * 4

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="holds no audio files"):
        songs_in_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="holds no audio files"):
        AudioDataset.from_folder(tmp_path / "empty", 100)
    with pytest.raises(DataError, match="data folder not found"):
        songs_in_folder(tmp_path / "missing")


def test_holdout_split_is_deterministic_and_disjoint(data):
    songs = read_metadata(data / "metadata.csv")
    train, held = holdout_split(songs, 0.25, seed=5)
    assert (train, held) == holdout_split(songs, 0.25, seed=5)
    assert len(held) == 3 and len(train) == 9
    assert not set(train) & set(held) and set(train) | set(held) == set(songs)
    assert train == [s for s in songs if s in set(train)]  # the metadata order is kept
    others = {tuple(s.path.name for s in holdout_split(songs, 0.25, seed=k)[1]) for k in range(6)}
    assert len(others) > 1  # the seed chooses the songs
    assert holdout_split(songs, 0.0) == (songs, [])
    assert len(holdout_split(songs, 0.01)[1]) == 1  # any fraction > 0 holds out at least one song
    with pytest.raises(DataError, match="leaves none to train on"):
        holdout_split(songs[:1], 0.5)
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        holdout_split(songs, 1.0)


def test_a_labelled_toy_trains_on_a_folder_without_metadata(audio_only, tmp_path):
    songs = songs_in_folder(audio_only)
    labeller = labeller_for_songs(songs).for_config(PriorConfig.from_dict(TINY_PRIOR))
    assert labeller.artists == {"unknown": 0} and labeller.genres == {"unknown": 0}
    ds = AudioDataset(songs, toy.SAMPLE_LENGTH, labeller)
    batch = ds.batch(0, 4, seed=2)
    assert batch.y.shape == (4, 4 + 1 + 8)
    assert (batch.y[:, 3:] == 0).all()  # artist 0, genre 0, and the lyrics' padding tokens
    assert batch.y[:, 0].tolist() == [44100] * 4 and batch.y[:, 2].tolist() == [toy.SAMPLE_LENGTH] * 4
    training.train(toy.task(), lambda i: ds.batch(i, 4, 2), 6, tmp_path, log_every=1, progress=False)
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "metrics.csv")]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_an_unconditioned_toy_trains_on_a_folder_without_metadata(audio_only, tmp_path):
    ds = AudioDataset.from_folder(audio_only, toy.SAMPLE_LENGTH)
    assert ds.batch(0, 2).y is None

    def loss_fn(params, audio, key):
        loss = jnp.mean((audio[:, 1:, 0] * params["w"] - audio[:, :-1, 0]) ** 2)
        return loss, {}

    task = training.gradient_task(
        lambda k, b: {"w": jnp.zeros(())},
        loss_fn,
        training.OptimConfig(lr=0.1, warmup_steps=1),
        prepare=lambda b: jnp.asarray(b.audio),
    )
    state, _ = training.train(task, lambda i: ds.batch(i, 4), 5, tmp_path, log_every=1, progress=False)
    losses = [float(r["loss"]) for r in read_csv(tmp_path / "metrics.csv")]
    assert losses[-1] < losses[0] and float(state.params["w"]) > 0.1  # neighbouring samples correlate


@pytest.mark.slow  # compiles the tiny VQ-VAE's init, evaluation and loss
def test_vqvae_evaluate_is_the_training_loss_without_an_update(data):
    from jukebox_flax.vqvae.train import loss_and_aux

    config = VQVAEConfig.from_dict(TINY_VQVAE)
    bandwidth = {"l1": 0.1, "l2": 0.05, "spec": 2.0}
    ds = AudioDataset.from_folder(data, 64)
    batch = ds.batch(0, 2)
    task = training.vqvae_task(config, training.OptimConfig(), bandwidth=bandwidth)
    state = task.init(jax.random.PRNGKey(0), batch)
    before = jax.tree.map(np.asarray, state)
    metrics = task.evaluate(state, ds.batch(1, 2))
    expected, aux = loss_and_aux(
        state.net_params, state.codebooks, jnp.asarray(ds.batch(1, 2).audio), config, bandwidth
    )
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(metrics["recons_loss"]) == pytest.approx(float(aux["metrics"]["recons_loss"]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state)):  # nothing updated or donated
        np.testing.assert_array_equal(a, np.asarray(b))
    assert float(task.evaluate(state, ds.batch(1, 2))["loss"]) == float(metrics["loss"])


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory) -> Path:
    """An untrained tiny VQ-VAE model directory: a prior only needs its codes."""
    from jukebox_flax.vqvae.api import init_vqvae_params

    config = VQVAEConfig.from_dict(TINY_VQVAE)
    out = tmp_path_factory.mktemp("vq") / "model"
    return training.export_model(out, init_vqvae_params(config, jax.random.PRNGKey(0)), config)


@pytest.mark.slow  # two tiny priors compiled and trained through the command line
def test_cli_trains_priors_on_a_folder_without_metadata_with_holdout(audio_only, vqvae_dir, tmp_path, capsys):
    from jukebox_flax.cli import main
    from jukebox_flax.prior.api import load_prior

    def train(config: dict, out: Path) -> int:
        path = tmp_path / f"{out.name}.json"
        path.write_text(json.dumps(config))
        return main(
            ["train", "prior", "--data", str(audio_only), "--vqvae", str(vqvae_dir), "--out", str(out)]
            + ["--config", str(path), "--steps", "5", "--batch", "2", "--log-every", "1", "--no-progress"]
            + ["--holdout", "0.25", "--holdout-every", "2", "--lr", "1e-2", "--warmup", "1"]
        )

    assert train(TINY_PRIOR, tmp_path / "labelled") == 0
    out = capsys.readouterr().out
    assert "has no metadata file: every song gets the artist and genre 'unknown' and no lyrics" in out
    assert "holding out 3 of 12 songs: holdout_loss on 8 of their crops every 2 steps" in out
    rows = read_csv(tmp_path / "labelled" / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["step"] for r in rows if r["holdout_loss"]] == ["2", "4", "5"]
    assert all(np.isfinite(float(r["holdout_loss"])) for r in rows if r["holdout_loss"])
    prior = load_prior(tmp_path / "labelled" / "model")
    assert prior.vocab["artists"] == {"unknown": 0} and prior.vocab["genres"] == {"unknown": 0}
    if importlib.util.find_spec("tensorboardX") and importlib.util.find_spec("matplotlib"):  # the train extra
        assert list((tmp_path / "labelled" / "tensorboard").glob("events.out.tfevents.*"))
        assert (tmp_path / "labelled" / "loss.png").stat().st_size > 1000

    unconditioned = {k: v for k, v in TINY_PRIOR.items() if k not in ("lyrics", "n_tokens", "attn_order")}
    unconditioned.update(labels=False, attn_order=1)
    assert train(unconditioned, tmp_path / "plain") == 0
    out = capsys.readouterr().out
    assert "no metadata file" not in out
    assert load_prior(tmp_path / "plain" / "model").vocab is None
    assert len([r for r in read_csv(tmp_path / "plain" / "metrics.csv") if r["holdout_loss"]]) == 3


def test_cli_refuses_an_empty_folder_and_a_split_without_training_songs(tmp_path, capsys, audio_only):
    from jukebox_flax.cli import main

    (tmp_path / "empty").mkdir()
    config = tmp_path / "vq.json"
    config.write_text(json.dumps(TINY_VQVAE))
    args = ["train", "vqvae", "--out", str(tmp_path / "run"), "--config", str(config), "--steps", "1"]
    assert main(args + ["--data", str(tmp_path / "empty")]) == 2
    assert "holds no audio files" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(audio_only.glob("*.wav")), one)
    assert main(args + ["--data", str(one), "--holdout", "0.5"]) == 2
    assert "holding out 1 of 1 songs leaves none to train on" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
