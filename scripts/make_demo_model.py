"""Write a tiny whole-model directory from the test fixtures' weights (no torch needed).

The weights are the tiny random models the ORIGINAL openai/jukebox code built for our parity
fixtures (VQ-VAE + two upsamplers + a 1b_lyrics-style top prior), so sampling with it exercises
the whole pipeline exactly as the released models would run, but the music is noise: it is a
plumbing demonstration until the trained demo model is bundled.

    python scripts/make_demo_model.py demo_model
    jukebox-flax sample --model demo_model --seconds 2 --out demo_out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jukebox_flax.checkpoint import save_whole_model_dir
from jukebox_flax.config import JukeboxConfig, PriorConfig
from jukebox_flax.labels import V2_ALPHABET, V3_ALPHABET, Labeller
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.prior_keys import prior_params_from_state_dict
from jukebox_flax_convert.vqvae_keys import vqvae_params_from_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openai"
PRIORS = {0: "prior_up0", 1: "prior_up1", 2: "prior_top1b"}  # the models of pipeline_trace


def _state_dict(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k[3:]: f[k] for k in f.files if k.startswith("sd/")}


def _vocab(config: PriorConfig) -> dict:
    """Only the 'unknown' artist and genre: the fixture models were never trained on names."""
    alphabet = V3_ALPHABET if config.labels_v3 else V2_ALPHABET
    labeller = Labeller(
        version=config.labeller_version, artists={"unknown": 0}, genres={"unknown": 0}, alphabet=alphabet
    ).for_config(config)
    return labeller.vocab_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="model directory to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    hps = json.loads((FIXTURES / "hps_index.json").read_text())
    vq_config = vqvae_config_from_hps(hps["vqvae_tiny"])
    components = {"vqvae": (vqvae_params_from_state_dict(_state_dict("vqvae_tiny"), vq_config), vq_config, None)}
    priors = []
    for level, name in PRIORS.items():
        config = prior_config_from_hps(hps[name], vq_config)
        params = prior_params_from_state_dict(_state_dict(name), config)
        components[f"prior_level_{level}"] = (params, config, _vocab(config))
        priors.append(config)
    whole = JukeboxConfig(vqvae=vq_config, priors=tuple(priors), hop_fraction=(0.5, 0.5, 0.125))
    path = save_whole_model_dir(
        args.out, components, whole, vocab=components["prior_level_2"][2], overwrite=args.overwrite
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
