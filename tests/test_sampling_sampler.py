"""The window sampler (prefill + token loop) on a toy model with the prior's decode interface."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sampling_toy import ToyConfig, greedy_reference, make_toy

from jukebox_flax.sampling.errors import SamplingError
from jukebox_flax.sampling.sampler import WindowSampler, sample_prior

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def toy():
    return make_toy(ToyConfig())


@pytest.fixture(scope="module")
def toy_lyrics():
    return make_toy(ToyConfig(n_tokens=6, n_vocab=5), seed=3)


def _inputs(config, batch=3, n_prime=0):
    y = RNG.integers(0, 40, (batch, 9 + config.n_tokens)).astype(np.int32)
    if config.n_tokens:
        y[:, -config.n_tokens :] = RNG.integers(0, config.n_vocab, (batch, config.n_tokens))
    upper = RNG.integers(0, config.bins, (batch, config.n_ctx // config.cond_downsample)).astype(np.int32)
    prime = RNG.integers(0, config.bins, (batch, n_prime)).astype(np.int32)
    return y, upper, prime


@pytest.mark.parametrize("n_prime,chunk_size", [(0, 4), (5, 1), (9, 4), (16, 16), (20, 7), (23, 32)])
def test_greedy_matches_teacher_forced_decoding(toy, n_prime, chunk_size):
    y, upper, prime = _inputs(toy.config, n_prime=n_prime)
    n = toy.config.n_ctx - n_prime
    got = sample_prior(toy, jax.random.key(0), n, y=y, upper=upper, prime=prime, top_k=1, chunk_size=chunk_size)
    assert got.shape == (3, n_prime + n) and got.dtype == np.int32
    np.testing.assert_array_equal(got, greedy_reference(toy, y, upper, prime, n))


def test_single_encoder_decoder_primes_lyrics_and_unshifts(toy_lyrics):
    y, upper, prime = _inputs(toy_lyrics.config, n_prime=7)
    got = sample_prior(toy_lyrics, jax.random.key(0), 10, y=y, prime=prime, top_k=1, chunk_size=4)
    np.testing.assert_array_equal(got, greedy_reference(toy_lyrics, y, None, prime, 10))
    assert got.min() >= 0 and got.max() < toy_lyrics.config.bins
    np.testing.assert_array_equal(got[:, :7], prime)


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_random_samples_do_not_depend_on_chunking_or_batch_split(toy):
    y, upper, prime = _inputs(toy.config, batch=4, n_prime=10)
    key = jax.random.key(42)
    kw = dict(y=y, upper=upper, prime=prime, temperature=1.3)
    a = sample_prior(toy, key, 14, chunk_size=3, **kw)
    b = sample_prior(toy, key, 14, chunk_size=8, **kw)
    np.testing.assert_array_equal(a, b)
    halves = [
        sample_prior(
            toy,
            key,
            14,
            y=y[i : i + 2],
            upper=upper[i : i + 2],
            prime=prime[i : i + 2],
            temperature=1.3,
            row_offset=i,
            chunk_size=3,
        )
        for i in (0, 2)
    ]
    np.testing.assert_array_equal(a, np.concatenate(halves))
    c = sample_prior(toy, jax.random.key(43), 14, chunk_size=3, **kw)
    assert (a[:, 10:] != c[:, 10:]).any()
    np.testing.assert_array_equal(a[:, :10], prime)


@pytest.mark.slow
def test_first_token_follows_the_tempered_softmax(toy):
    batch, temperature = 4000, 0.8
    y = np.tile(np.arange(9, dtype=np.int32) + 3, (batch, 1))
    upper = np.ones((batch, toy.config.n_ctx // 4), np.int32)
    got = sample_prior(toy, jax.random.key(1), 1, y=y, upper=upper, temperature=temperature)[:, 0]
    cond = toy.module.apply({"params": toy.params}, y[:1], upper[:1], method="condition")
    logits = np.asarray(
        toy.module.apply({"params": toy.params}, np.zeros((1, 1), np.int32), method="teacher_forced", **cond)
    )[0, 0]
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    freq = np.bincount(got, minlength=toy.config.bins) / batch
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / batch)


@pytest.mark.slow
def test_top_k_and_top_p_restrict_the_support(toy):
    y, upper, _ = _inputs(toy.config, batch=256)
    cond = toy.module.apply({"params": toy.params}, y, upper, method="condition")
    logits = np.asarray(
        toy.module.apply({"params": toy.params}, np.zeros((256, 1), np.int32), method="teacher_forced", **cond)
    )[:, 0]
    first = sample_prior(toy, jax.random.key(2), 1, y=y, upper=upper, top_k=2)[:, 0]
    top2 = np.argsort(-logits, -1)[:, :2]
    assert (top2 == first[:, None]).any(-1).all()


def test_one_compilation_serves_every_window(toy):
    """One compile of prefill and one of the token loop serve every window and setting of a batch
    size (batch 5 is used by no other test here, so the first window compiles both afresh)."""

    def sizes():
        return WindowSampler.prefill._cache_size(), WindowSampler.sample._cache_size()

    before = sizes()
    y, upper, prime = _inputs(toy.config, batch=5, n_prime=12)
    sample_prior(toy, jax.random.key(0), 12, y=y, upper=upper, prime=prime, chunk_size=4)
    assert sizes() == (before[0] + 1, before[1] + 1)
    # another window: other prime length, other count, other labels and settings
    y2, upper2, prime2 = _inputs(toy.config, batch=5, n_prime=20)
    sample_prior(toy, jax.random.key(5), 3, y=y2, upper=upper2, prime=prime2, chunk_size=4, temperature=0.5, top_p=0.9)
    sample_prior(toy, jax.random.key(5), 24, y=y2, upper=upper2, chunk_size=4, top_k=3)
    assert sizes() == (before[0] + 1, before[1] + 1)


def test_prefill_logits_are_the_teacher_forced_ones(toy):
    """``score_tokens`` is the prefill alone: its logits (full chunks, then the tail one position
    at a time) equal the teacher-forced model's."""
    from jukebox_flax.sampling.sampler import score_tokens

    y, upper, tokens = _inputs(toy.config, n_prime=19)
    got = score_tokens(toy, tokens, y=y, upper=upper, chunk_size=8)
    cond = toy.module.apply({"params": toy.params}, y, upper, method="condition")
    full = np.zeros((3, toy.config.total_ctx), np.int32)
    full[:, :19] = tokens
    want = np.asarray(toy.module.apply({"params": toy.params}, full, method="teacher_forced", **cond))[:, :19]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_requests_are_refused(toy):
    y, upper, prime = _inputs(toy.config, n_prime=20)
    with pytest.raises(SamplingError, match="window holds"):
        sample_prior(toy, jax.random.key(0), 5, y=y, upper=upper, prime=prime)
    with pytest.raises(SamplingError, match="both"):
        sample_prior(toy, jax.random.key(0), 1, y=y, upper=upper, top_k=3, top_p=0.5)
    with pytest.raises(SamplingError, match="prime codes"):
        sample_prior(toy, jax.random.key(0), 1, y=y, upper=upper, prime=prime + 100)
