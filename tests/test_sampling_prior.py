"""The window sampler with the real priors built from the original code's fixtures."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sampling_fixtures import fixture_prior

from jukebox_flax.prior.api import Prior
from jukebox_flax.sampling.sampler import sample_prior, score_tokens

NAMES = ["prior_up0", "prior_up1", "prior_top5b", "prior_top5b_lyrics", "prior_top1b"]


def _upper(prior: Prior, arrays: dict):
    return arrays["outputs/zs/1"] if prior.config.is_upsampler else None  # zs from this level up


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    return fixture_prior(request.param)


def test_greedy_sample_matches_original(loaded):
    prior, arrays = loaded
    want = arrays["outputs/greedy_sample_top_k1"]
    got = sample_prior(
        prior,
        jax.random.key(0),
        prior.config.n_ctx,
        y=arrays["inputs/y"],
        upper=_upper(prior, arrays),
        top_k=1,
        chunk_size=16,
    )
    np.testing.assert_array_equal(got, want)


# One upsampler and the joint-vocabulary prior through the sampler; tests/test_kv_cache.py checks the
# same chunk-primed logits of every fixture prior's transformer (prior_up1 shares prior_up0's).
@pytest.mark.parametrize("loaded", ["prior_up0", "prior_top1b"], indirect=True)
def test_cached_logits_match_original(loaded):
    """The original's chunk-primed (chunk 7) sampling logits, through the same compiled loop."""
    prior, arrays = loaded
    tokens = arrays["outputs/kv/primed_chunked_tokens"]  # joint [lyrics ; music] for 1b style
    logits = score_tokens(
        prior,
        tokens,
        y=arrays["inputs/y"],
        upper=_upper(prior, arrays),
        chunk_size=7,
        joint=prior.config.lyrics == "single",
    )
    want = arrays["outputs/kv/primed_chunked_logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
