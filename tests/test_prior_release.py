"""The released prior presets: parameter counts and every released state-dict key and shape.

Built abstractly (``jax.eval_shape``) so billions of parameters cost no memory; the key mapping
runs on the ShapeDtypeStruct tree.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import OPENAI

from jukebox_flax.config import preset
from jukebox_flax.prior.api import abstract_prior_params
from jukebox_flax_convert.prior_keys import prior_state_dict_from_params

PARAM_COUNTS = {
    "upsampler_level_0": 981_298_176,
    "upsampler_level_1": 981_298_176,
    "prior_5b": 5_060_452_800,
    "prior_5b_lyrics": 5_640_506_800,
    "prior_1b_lyrics": 942_643_200,
}


@pytest.fixture(scope="module")
def released() -> dict:
    return json.loads((OPENAI / "released_state_dict_keys.json").read_text())


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_released_prior_shapes(name, released):
    config = preset(name)
    tree = abstract_prior_params(config)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
    assert n_params == PARAM_COUNTS[name] == released[name]["n_params"]
    sd = prior_state_dict_from_params(tree, config)
    want = {key: tuple(shape) for key, shape, _ in released[name]["keys"]}
    assert set(sd) == set(want)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
