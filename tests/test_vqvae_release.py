"""The released VQ-VAE configuration builds (shapes only, no memory) with the exact parameter count
and a param tree that holds every key of the released checkpoint."""

from __future__ import annotations

import json

import numpy as np
from conftest import OPENAI

from jukebox_flax.config import preset
from jukebox_flax.vqvae.api import _abstract_params, count_params, vqvae_param_shapes
from jukebox_flax_convert.vqvae_keys import flax_path, original_key, vqvae_params_from_state_dict


def _released():
    return json.loads((OPENAI / "released_state_dict_keys.json").read_text())["vqvae"]


def test_released_parameter_count():
    config = preset("vqvae")
    abstract = _abstract_params(config)
    assert count_params(abstract) == 1_485_763 == _released()["n_params"]
    assert count_params(abstract, include_codebooks=True) == 1_878_979 == _released()["n_state"]


def test_released_keys_map_one_to_one():
    config = preset("vqvae")
    shapes = vqvae_param_shapes(config)
    released = {key: tuple(shape) for key, shape, _ in _released()["keys"]}
    assert len(released) == len(shapes) == 669
    mapped = {flax_path(key): shape for key, shape in released.items()}
    assert set(mapped) == set(shapes)
    for path, shape in mapped.items():
        assert original_key(path) in released
        flax_shape = shapes[path]
        assert flax_shape == (shape[::-1] if len(shape) == 3 else shape), (path, shape, flax_shape)


def test_converter_accepts_a_released_shaped_state_dict():
    config = preset("vqvae")
    # zero-strided arrays: the right shapes at no memory cost
    sd = {key: np.broadcast_to(np.float32(0), shape) for key, shape, _ in _released()["keys"]}
    params = vqvae_params_from_state_dict(sd, config)
    assert params["decoders_0"]["level_blocks_0"]["model_3_1"]["kernel"].shape == (4, 64, 64)
    assert params["encoders_2"]["level_blocks_2"]["model_2"]["kernel"].shape == (3, 32, 64)
