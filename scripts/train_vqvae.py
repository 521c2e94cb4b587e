"""Train or fine-tune a Jukebox VQ-VAE on a folder of audio files.

    python scripts/train_vqvae.py --data DATA --out RUN --config vqvae.json --steps 20000 --batch 8
    python scripts/train_vqvae.py --data DATA --out RUN --init-from MODEL_DIR --steps 2000   # fine-tune

Killed or interrupted, the same command resumes from the latest checkpoint in RUN. The trained
model is written to RUN/model (a model directory for ``jukebox_flax.load_vqvae``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jukebox_flax import training
from jukebox_flax.config import VQVAEConfig
from jukebox_flax.data import AudioDataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training.add_training_args(parser)
    parser.add_argument(
        "--sample-length", type=int, default=32768, help="crop length in samples (a multiple of the top hop length)"
    )
    parser.add_argument(
        "--bandwidth-examples",
        type=int,
        default=32,
        help="crops used to estimate the loss scales (the original's bandwidth)",
    )
    args = parser.parse_args(argv)

    init_params = None
    config = training.config_from_args(args, VQVAEConfig)
    if config is None:  # --init-from
        init_params, config, _ = training.load_component(args.init_from, "vqvae")
    if args.sample_length % config.hop_length:
        raise training.TrainingError(f"--sample-length must be a multiple of {config.hop_length}")

    dataset = AudioDataset.from_folder(args.data, args.sample_length, args.metadata, sr=config.sr)
    bandwidth = training.data_bandwidth(dataset, args.bandwidth_examples, args.seed)
    print(f"{len(dataset)} songs, {dataset.lengths.sum() / config.sr:.0f} s; bandwidth {bandwidth}")
    task = training.vqvae_task(config, training.optim_from_args(args), init_params=init_params, bandwidth=bandwidth)
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
    path = training.export_model(f"{args.out}/model", task.params(state), config)
    print(f"step {step}: wrote {path}")


if __name__ == "__main__":
    sys.exit(training.run_script(main))
