"""Real priors and the tiny VQ-VAE built from the original code's fixture state dicts."""

from __future__ import annotations

from conftest import hps, load_npz, state_dict

from jukebox_flax.prior.api import Prior
from jukebox_flax.vqvae.api import VQVAE
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.prior_keys import prior_params_from_state_dict
from jukebox_flax_convert.vqvae_keys import vqvae_params_from_state_dict

VQ_CONFIG = vqvae_config_from_hps(hps("vqvae_tiny"))


def fixture_prior(name: str) -> tuple[Prior, dict]:
    arrays = load_npz(f"openai/{name}")
    config = prior_config_from_hps(hps(name), VQ_CONFIG)
    return Prior(config=config, params=prior_params_from_state_dict(state_dict(arrays), config)), arrays


def fixture_vqvae() -> VQVAE:
    return VQVAE(VQ_CONFIG, vqvae_params_from_state_dict(state_dict(load_npz("openai/vqvae_tiny")), VQ_CONFIG))
