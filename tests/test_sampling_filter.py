"""filter_logits / get_starts / lyric windows against the original code's outputs (misc_oracle)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import OPENAI, load_npz

from jukebox_flax.sampling.errors import SamplingError
from jukebox_flax.sampling.filter import check_filter_args, filter_logits, sample_token
from jukebox_flax.sampling.windows import Window, get_starts, level_windows, partial_window, upper_codes

ORACLE = load_npz("openai/misc_oracle")
ORACLE_JSON = json.loads((OPENAI / "misc_oracle.json").read_text())


@pytest.mark.parametrize(
    "name,kwargs", [("top_k5", dict(top_k=5)), ("top_k1", dict(top_k=1)), ("top_p09", dict(top_p=0.9))]
)
def test_filter_logits_matches_original(name, kwargs):
    logits = ORACLE["filter_logits/logits"]
    want = ORACLE[f"filter_logits/{name}"]
    got = np.asarray(jax.jit(filter_logits)(logits, **kwargs))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(got[np.isfinite(want)], want[np.isfinite(want)])


def test_filter_off_and_oversized_k_keep_everything():
    logits = ORACLE["filter_logits/logits"]
    np.testing.assert_array_equal(np.asarray(filter_logits(logits)), logits)
    np.testing.assert_array_equal(np.asarray(filter_logits(logits, top_k=10_000)), logits)


def test_top_k1_samples_the_argmax_and_top_p_stays_in_nucleus():
    logits = jnp.asarray(ORACLE["filter_logits/logits"][:, 0])  # [3, 50]
    keys = jax.random.split(jax.random.key(0), 64)
    greedy = jax.vmap(lambda k: sample_token(k, logits, 0.7, top_k=1))(keys)
    assert (np.asarray(greedy) == np.argmax(np.asarray(logits), -1)).all()
    nucleus = np.isfinite(ORACLE["filter_logits/top_p09"][:, 0])
    drawn = np.asarray(jax.vmap(lambda k: sample_token(k, logits, 1.0, top_p=0.9))(keys))
    assert all(nucleus[r, drawn[:, r]].all() for r in range(3))


def test_filter_args_are_checked():
    with pytest.raises(SamplingError):
        check_filter_args(5, 0.9)
    with pytest.raises(SamplingError):
        check_filter_args(-1, 0.0)
    with pytest.raises(SamplingError):
        check_filter_args(0, 1.5)


def test_get_starts_matches_original():
    for case, want in ORACLE_JSON["get_starts"].items():
        kw = dict(part.split("=") for part in case.split(","))
        assert get_starts(int(kw["total"]), int(kw["n_ctx"]), int(kw["hop"])) == want, case


def test_level_windows_prime_with_the_overlap_and_skip_existing_tokens():
    # the pipeline trace's level-1 plan: 384 tokens, n_ctx 64, hop 32
    windows = level_windows(384, 0, 64, 32)
    assert [w.start for w in windows] == get_starts(384, 64, 32)
    assert windows[0] == Window(0, 64, 0) and all(w == Window(w.start, 64, 32) for w in windows[1:])
    # a right-aligned last window primes with more than the overlap
    assert level_windows(10000, 0, 8192, 1024)[-1] == Window(1808, 8192, 9216 - 1808)
    # resuming after 3 windows skips them; a prompt covering the first window skips it
    assert level_windows(384, 128, 64, 32) == windows[3:]
    assert level_windows(384, 70, 64, 32)[0] == Window(32, 64, 38)
    assert level_windows(384, 384, 64, 32) == []


def test_partial_windows_as_the_original():
    assert partial_window(0, 64, 20) == Window(0, 20, 0)
    assert partial_window(20, 64, 24) == Window(0, 44, 20)
    assert partial_window(50, 64, 24) == Window(10, 64, 40)
    assert level_windows(44, 20, 64, 8) == [Window(0, 44, 20)]


def test_upper_codes_are_sliced_per_window():
    z = np.arange(2 * 96).reshape(2, 96)
    np.testing.assert_array_equal(upper_codes(z, 64, 64, 4), z[:, 16:32])
    with pytest.raises(SamplingError, match="aligned"):
        upper_codes(z, 2, 64, 4)
    with pytest.raises(SamplingError, match="cover"):
        upper_codes(z, 384, 64, 4)
