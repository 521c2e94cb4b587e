"""Train or fine-tune one Jukebox prior level: ``jukebox-flax train prior`` (see ``jukebox_flax.train_command``).

python scripts/train_prior.py --data DATA --vqvae VQ_DIR --out RUN --config prior.json --steps 20000
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jukebox_flax.train_command import parse_prior_args, run_script, run_train_prior


def main(argv: Sequence[str] | None = None) -> None:
    run_train_prior(parse_prior_args(argv))


if __name__ == "__main__":
    sys.exit(run_script(main))
