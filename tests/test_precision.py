"""Mixed precision against the original's float32 logits (fixture prior_top5b).

bfloat16 (params and activations) and the released priors' float16 mode (fp16 transformer kernels,
fp16 activations) keep float32 LayerNorm, softmax and logits; the test bounds the logit error
relative to the largest logit and the greedy next-token agreement (argmax of teacher-forced
logits = what greedy decoding picks after the same prefix).
"""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_fixtures import fixture_prior

from jukebox_flax.errors import CheckpointError, ConfigError
from jukebox_flax.precision import cast_params, load_prior_at, resolve_precision, with_precision
from jukebox_flax.prior.api import load_prior
from jukebox_flax.sampling.command import default_model

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


# ------------------------------------------------------------------------------------------------
# --precision names and loading straight into them


@pytest.mark.parametrize(
    "name,platform,dtype,released",
    [
        ("auto", "gpu", jnp.float16, True),
        ("auto", "cuda", jnp.float16, True),
        ("auto", "tpu", jnp.bfloat16, False),
        ("auto", "cpu", jnp.float32, False),
        ("float16", "cpu", jnp.float16, True),
        ("bfloat16", "gpu", jnp.bfloat16, False),
        ("float32", "tpu", jnp.float32, False),
    ],
)
def test_resolve_precision(name, platform, dtype, released):
    assert resolve_precision(name, platform) == (dtype, released)


def test_resolve_precision_rejects_unknown_names():
    with pytest.raises(ConfigError, match="float8"):
        resolve_precision("float8")
    assert resolve_precision("auto") == resolve_precision("auto", jax.default_backend())


@pytest.mark.parametrize("level", [2, 0])
def test_load_prior_at_float16_is_the_released_layout_without_a_float32_copy(level):
    """Restored straight into fp16 kernels / fp32 rest: the same params and logits as loading in
    float32 and casting, and nothing else left on the device."""
    gc.collect()
    before = {id(x) for x in jax.live_arrays()}
    half = load_prior_at(default_model(), "float16", level=level)
    new = [x for x in jax.live_arrays() if id(x) not in before]
    leaves = jax.tree.leaves(half.params)
    assert sum(x.nbytes for x in new) == sum(x.nbytes for x in leaves)  # no hidden float32 copy
    ref = with_precision(load_prior(default_model(), level), jnp.float16, released=True)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(half.params), jax.tree.leaves(ref.params)):
        assert got.dtype == want.dtype, path
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)}
    assert half.module.dtype == jnp.float16 and half.module.param_dtype == jnp.float32
    assert half.config.level == level and half.vocab == ref.vocab


def test_load_prior_at_bfloat16_and_float32():
    bf = load_prior_at(default_model(), "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf.params)} == {jnp.dtype(jnp.bfloat16)}
    f32 = load_prior_at(default_model(), "float32", level=1)
    assert {x.dtype for x in jax.tree.leaves(f32.params)} == {jnp.dtype(jnp.float32)}
    with pytest.raises(CheckpointError, match="levels 0..2"):
        load_prior_at(default_model(), "float16", level=5)
