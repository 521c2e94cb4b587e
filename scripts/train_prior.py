"""Train or fine-tune one Jukebox prior level on a folder of audio files with labels.

    python scripts/train_prior.py --data DATA --vqvae VQ_DIR --out RUN --config prior.json --steps 20000
    python scripts/train_prior.py --data DATA --vqvae MODEL --out RUN --init-from MODEL --level 2   # fine-tune

The audio is encoded on the fly by the frozen VQ-VAE (``--vqvae``: a VQ-VAE or whole-model
directory); tokens are the codes of the prior's level, and an upsampler also sees the codes of
the level above. Labels (artist, genre, lyrics) come from the metadata file; their vocabulary is
the --init-from model's ``vocab.json``, or ``--vocab FILE``, or else built from the dataset (ids in
sorted order). Killed or interrupted, the same command resumes from the latest checkpoint in RUN.
The trained prior is written to RUN/model with its ``vocab.json`` (with ``--ema DECAY``: the moving
average of the params, as the original's ``--ema``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp

from jukebox_flax import training
from jukebox_flax.config import PriorConfig
from jukebox_flax.data import AudioDataset, labeller_for_songs, read_metadata
from jukebox_flax.labels import Labeller
from jukebox_flax.prior.api import load_prior
from jukebox_flax.vqvae.api import load_vqvae


def _labeller(args, config: PriorConfig, songs, vocab: dict | None) -> Labeller | None:
    if not config.labels:
        return None
    if args.vocab:
        labeller = Labeller.from_vocab(args.vocab)
    elif vocab is not None:
        labeller = Labeller.from_vocab_dict(vocab)
    else:
        labeller = labeller_for_songs(songs, version=config.labeller_version)
    labeller = labeller.for_config(config)
    if max(labeller.artists.values()) >= config.artist_bins or max(labeller.genres.values()) >= config.genre_bins:
        raise training.TrainingError(
            f"the vocabulary has {max(labeller.artists.values()) + 1} artist and {max(labeller.genres.values()) + 1}"
            f" genre ids; the prior takes {config.artist_bins} and {config.genre_bins} (artist_bins / genre_bins)"
        )
    return labeller


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training.add_training_args(parser)
    parser.add_argument("--vqvae", required=True, help="the VQ-VAE (a vqvae or whole-model directory)")
    parser.add_argument("--level", type=int, help="with --init-from a whole model: the prior level (default top)")
    parser.add_argument("--vocab", help="labels vocabulary (vocab.json) to use instead of the default")
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep a moving average of the params with this decay (the original: 0.9999) "
        "and export it instead of the last params",
    )
    args = parser.parse_args(argv)

    init_params, vocab = None, None
    config = training.config_from_args(args, PriorConfig)
    if config is None:  # --init-from
        prior = load_prior(args.init_from, args.level, dtype=jnp.float32)  # a whole model: the top level unless --level
        init_params, config, vocab = prior.params, prior.config, prior.vocab

    songs = read_metadata(args.metadata or _find_metadata(args.data))
    labeller = _labeller(args, config, songs, vocab)
    vqvae = load_vqvae(args.vqvae)
    dataset = AudioDataset(songs, config.sample_length, labeller, sr=config.sr)
    print(
        f"{len(dataset)} songs, {dataset.lengths.sum() / config.sr:.0f} s; level {config.level}, "
        f"{config.n_ctx} tokens = {config.sample_length} samples per crop"
    )
    task = training.prior_task(config, training.optim_from_args(args), vqvae, init_params=init_params)
    if args.ema:
        task = training.with_param_ema(task, args.ema)
    state, step = training.train(
        task,
        lambda i: dataset.batch(i, args.batch, args.seed),
        args.steps,
        args.out,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep,
        log_every=args.log_every,
        progress=not args.no_progress,
    )
    vocab_out = labeller.vocab_dict() if labeller is not None else None
    path = training.export_model(f"{args.out}/model", task.params(state), config, vocab_out)
    print(f"step {step}: wrote {path}")


def _find_metadata(folder: str) -> Path:
    for name in ("metadata.csv", "metadata.jsonl"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise training.TrainingError(f"{folder} has no metadata.csv or metadata.jsonl; pass --metadata")


if __name__ == "__main__":
    sys.exit(training.run_script(main))
