"""Mixed precision against the original's float32 logits (fixture prior_top5b).

bfloat16 (params and activations) and the released priors' float16 mode (fp16 transformer kernels,
fp16 activations) keep float32 LayerNorm, softmax and logits; the test bounds the logit error
relative to the largest logit and the greedy next-token agreement (argmax of teacher-forced
logits = what greedy decoding picks after the same prefix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_fixtures import fixture_prior

from jukebox_flax.precision import cast_params, with_precision

# dtype, released (only transformer kernels cast), max relative logit error, min argmax agreement
CASES = [(jnp.bfloat16, False, 3e-2, 0.95), (jnp.float16, True, 5e-3, 0.98)]


@pytest.fixture(scope="module")
def top5b():
    return fixture_prior("prior_top5b")


@pytest.mark.parametrize("dtype,released,max_rel,min_agree", CASES, ids=["bf16", "fp16_released"])
def test_half_precision_logits(top5b, dtype, released, max_rel, min_agree):
    prior, a = top5b
    want = a["outputs/logits"]  # the original code's float32 logits
    half = with_precision(prior, dtype, released)
    got = np.asarray(half.logits(a["outputs/zs/0"], y=a["inputs/y"]))
    assert got.dtype == np.float32  # logits always float32
    rel = np.abs(got - want).max() / np.abs(want).max()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    assert 1e-5 < rel < max_rel  # really computed in half precision, and close
    assert agree >= min_agree


def test_cast_params_released_layout(top5b):
    prior, _ = top5b
    p = cast_params(prior.params, jnp.float16, released=True)
    layers = p["prior"]["transformer"]["layers_0_5"]["unit_0"]
    assert layers["mlp"]["c_fc"]["kernel"].dtype == jnp.float16
    assert layers["mlp"]["c_fc"]["bias"].dtype == jnp.float32
    assert layers["ln_0"]["scale"].dtype == jnp.float32
    assert p["prior"]["x_emb"]["embedding"].dtype == jnp.float32
    half = with_precision(prior, jnp.bfloat16)
    cache = half.module.init_cache(1)
    assert {x.dtype for x in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
