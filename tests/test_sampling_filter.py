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
from jukebox_flax.sampling.windows import get_starts, relevant_lyric_tokens

ORACLE = load_npz("openai/misc_oracle")
ORACLE_JSON = json.loads((OPENAI / "misc_oracle.json").read_text())


@pytest.mark.parametrize("name,kwargs", [("top_k5", dict(top_k=5)), ("top_k1", dict(top_k=1)),
                                         ("top_p09", dict(top_p=0.9))])
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


def test_relevant_lyric_tokens_matches_original():
    full = list(range(1, 301))
    for case, want in ORACLE_JSON["lyric_windows"].items():
        if case == "short_full_tokens":
            got = relevant_lyric_tokens([5, 6, 7], 6, 1000, 0, 100)
        else:
            kw = {k: int(v) for k, v in (part.split("=") for part in case.split(","))}
            got = relevant_lyric_tokens(full, kw["n"], kw["total"], kw["offset"], kw["dur"])
            assert relevant_lyric_tokens(full, kw["n"], kw["total"], kw["offset"], kw["dur"], float32=True) == got
        assert got == (want["tokens"], want["indices"]), case
