"""Train or fine-tune a Jukebox VQ-VAE: ``jukebox-flax train vqvae`` (see ``jukebox_flax.train_command``).

python scripts/train_vqvae.py --data DATA --out RUN --config vqvae.json --steps 20000 --batch 8
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jukebox_flax.train_command import parse_vqvae_args, run_script, run_train_vqvae


def main(argv: Sequence[str] | None = None) -> None:
    run_train_vqvae(parse_vqvae_args(argv))


if __name__ == "__main__":
    sys.exit(run_script(main))
