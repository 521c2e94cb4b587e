"""Assemble the bundled demo model from the training runs of ``scripts/demo_configs/``.

Reads the exported models of one VQ-VAE run and three prior runs (``RUN/model`` directories written
by ``scripts/train_vqvae.py`` and ``scripts/train_prior.py``) and writes one whole-model directory
(``config.json`` + ``vqvae/`` + ``prior_level_{0,1,2}/`` with ``vocab.json``), by default into the
package as ``jukebox_flax/assets/demo_model`` (the default model of ``jukebox-flax sample``).

    python scripts/build_demo_model.py --vqvae runs/vq/model \\
        --priors runs/p0/model runs/p1/model runs/p2/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jukebox_flax import training
from jukebox_flax.checkpoint import save_whole_model_dir
from jukebox_flax.config import JukeboxConfig
from jukebox_flax.train_command import run_script

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "jukebox_flax" / "assets" / "demo_model"
MAX_BYTES = 20 * 2**20  # the package must stay small


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
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
    args = parser.parse_args()

    vq_params, vq_config, _ = training.load_component(args.vqvae, "vqvae")
    components = {"vqvae": (vq_params, vq_config, None)}
    priors = []
    for level, path in enumerate(args.priors):
        params, config, vocab = training.load_component(path, f"prior_level_{level}")
        if config.level != level:
            raise training.TrainingError(f"{path} holds the level-{config.level} prior, expected level {level}")
        components[f"prior_level_{level}"] = (params, config, vocab)
        priors.append(config)
    whole = JukeboxConfig(vqvae=vq_config, priors=tuple(priors), hop_fraction=tuple(args.hop_fraction))
    top_vocab = components[f"prior_level_{len(priors) - 1}"][2]
    path = save_whole_model_dir(args.out, components, whole, vocab=top_vocab, overwrite=True)
    # Orbax's commit marker records this machine's temporary path; a bundled asset should not.
    for marker in path.rglob("commit_success.txt"):
        marker.unlink()
    size = dir_bytes(path)
    print(f"wrote {path} ({size / 2**20:.2f} MiB)")
    if size > MAX_BYTES:
        raise training.TrainingError(f"the model takes {size / 2**20:.1f} MiB, more than the 20 MiB budget")


if __name__ == "__main__":
    sys.exit(run_script(main))
