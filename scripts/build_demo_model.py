"""Assemble the bundled demo model from the training runs of ``scripts/demo_configs/``.

Reads the exported models of one VQ-VAE run and three prior runs (``RUN/model`` directories written
by ``scripts/train_vqvae.py`` and ``scripts/train_prior.py``) and writes one whole-model directory
(``config.json`` + ``vqvae/`` + ``prior_level_{0,1,2}/`` with ``vocab.json``), by default into the
package as ``jukebox_flax/assets/demo_model`` (the default model of ``jukebox-flax sample``).
A thin wrapper over :func:`jukebox_flax.assemble.assemble` (``jukebox-flax assemble``: the parts'
consistency checks and vocabulary merge) plus the package's 20 MiB budget, checked before writing.

    python scripts/build_demo_model.py --vqvae runs/vq/model \\
        --priors runs/p0/model runs/p1/model runs/p2/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jukebox_flax.assemble import assemble, assembly_bytes
from jukebox_flax.errors import TrainingError
from jukebox_flax.train_command import run_script

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "jukebox_flax" / "assets" / "demo_model"
MAX_BYTES = 20 * 2**20  # the package must stay small


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_budget(config, parts) -> None:
    """Refuse a model over the budget before anything is written."""
    size = assembly_bytes(config, parts)
    if size > MAX_BYTES:
        raise TrainingError(
            f"the model would take {size / 2**20:.1f} MiB, more than the {MAX_BYTES / 2**20:.0f} MiB budget"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqvae", required=True, help="the VQ-VAE run's model directory")
    parser.add_argument("--priors", nargs="+", required=True, help="the prior runs' model directories, level 0 first")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--hop-fraction",
        type=float,
        nargs="+",
        default=[0.5, 0.5, 0.125],
        help="sampling window hop per level, level 0 first (the released values)",
    )
    args = parser.parse_args(argv)
    path = assemble(
        args.out, args.vqvae, args.priors, hop_fraction=args.hop_fraction, overwrite=True, check=check_budget
    )
    print(f"wrote {path} ({dir_bytes(path) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    sys.exit(run_script(main))
