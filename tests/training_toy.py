"""A toy task for the training-loop tests: a linear predictor of the next audio sample, with a
per-artist bias and a little key-dependent noise (so the per-step keys matter).

Run as a script it trains on DATA into OUT and can SIGKILL itself after a given step, which
tests/test_training.py uses to check resuming after a kill.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

jax.config.update("jax_default_matmul_precision", "highest")  # the same numerics as under pytest

from jukebox_flax import training  # noqa: E402
from jukebox_flax.data import AudioDataset, labeller_for_songs, read_metadata  # noqa: E402

TAPS = 16
SAMPLE_LENGTH = 256

# The tiny VQ-VAE and labelled (artist, genre, lyrics) top prior the training tests train.
TINY_VQVAE = {
    "kind": "vqvae",
    "levels": 1,
    "downs_t": [2],
    "strides_t": [2],
    "emb_width": 8,
    "l_bins": 16,
    "width": 8,
    "depth": 1,
    "multipliers": [1],
    "linf_k": 64,
    "multispec_n_fft": [64],
    "multispec_hop_length": [16],
    "multispec_window_size": [64],
}
TINY_PRIOR = {
    "kind": "prior",
    "level": 0,
    "n_ctx": 32,
    "width": 16,
    "depth": 2,
    "heads": 1,
    "attn_order": 2,
    "blocks": 4,
    "bins": 16,
    "downs_t": [2],
    "strides_t": [2],
    "genre_bins": 4,
    "artist_bins": 5,
    "t_bins": 8,
    "max_bow_genre_size": 1,
    "min_duration": 0.5,
    "max_duration": 10.0,
    "lyrics": "single",
    "n_tokens": 8,
    "n_vocab": 80,
    "prime_loss_fraction": 0.4,
}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dataset(data: Path) -> AudioDataset:
    songs = read_metadata(data / "metadata.csv")
    return AudioDataset(songs, SAMPLE_LENGTH, labeller_for_songs(songs))


TOY_OPTIM = training.OptimConfig(lr=1e-2, warmup_steps=2)


def task(optim: training.OptimConfig = TOY_OPTIM) -> training.Task:
    def init_params(key, batch):
        return {"w": jnp.zeros((TAPS,)), "artist_bias": 0.01 * jax.random.normal(key, (8,))}

    def loss_fn(params, inputs, key):
        audio, y = inputs
        x = audio[:, :, 0]
        past = jnp.stack([x[:, k : k + SAMPLE_LENGTH - TAPS] for k in range(TAPS)], axis=-1)
        pred = past @ params["w"] + params["artist_bias"][y[:, 3]][:, None]
        pred = pred + 1e-3 * jax.random.normal(key, pred.shape)
        loss = jnp.mean((pred - x[:, TAPS:]) ** 2)
        return loss, {"mse": loss}

    return training.gradient_task(
        init_params, loss_fn, optim, prepare=lambda b: (jnp.asarray(b.audio), jnp.asarray(b.y))
    )


def run(data: Path, out: Path, steps: int, every: int, kill_at: int = 0, batch: int = 4, seed: int = 3):
    ds = dataset(data)

    def after_step(step, state):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return training.train(
        task(),
        lambda i: ds.batch(i, batch, seed),
        steps,
        out,
        seed=seed,
        checkpoint_every=every,
        log_every=1,
        progress=False,
        after_step=after_step,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--kill-at", type=int, default=0)
    args = parser.parse_args()
    run(args.data, args.out, args.steps, args.every, args.kill_at)
    sys.exit(0)
