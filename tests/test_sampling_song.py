"""Window / level orchestration replayed against the original's 3-level sampling trace.

A fake sampler stands in for the priors: for every call it checks what the orchestration passes
(level, prime tokens, upper codes slice, label vector, number of new tokens) against the original
``prior.sample`` call logged in ``pipeline_trace`` and returns the logged output. So the windowing,
per-window labels and upper-code slicing are checked independently of the model.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import hps, load_npz

from jukebox_flax.sampling.errors import SamplingError
from jukebox_flax.sampling.song import LevelLabels, LevelSettings, RunDir, sample_song
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps

TRACE = load_npz("openai/pipeline_trace")
N_CALLS = len({k.split("/")[1] for k in TRACE if k.startswith("trace/")})
SAMPLE_LENGTH = int(hps("pipeline_trace")["sample_length"])
HOP_FRACTION = tuple(hps("pipeline_trace")["hop_fraction"])
VQ = vqvae_config_from_hps(hps("vqvae_tiny"))
CONFIGS = {
    0: prior_config_from_hps(hps("prior_up0"), VQ),
    1: prior_config_from_hps(hps("prior_up1"), VQ),
    2: prior_config_from_hps(hps("prior_top1b"), VQ),
}


class ConfigOnly:
    def __init__(self, config):
        self.config = config


def trace_labels() -> dict[int, LevelLabels]:
    labels = {}
    for level, c in CONFIGS.items():
        y = TRACE[f"labels_y/{level}"]
        # the trace's lyrics fit one window, so the song's lyric window is its full lyric tokens
        full = [list(row[-c.n_tokens :]) for row in y] if c.n_tokens else []
        labels[level] = LevelLabels(y=y, full_tokens=full)
    return labels


class TraceReplay:
    """sample_window stand-in that checks each call against the trace and returns its output."""

    def __init__(self, first: int = 0):
        self.i = first
        self.keys = []

    def __call__(
        self,
        prior,
        key,
        n,
        y=None,
        upper=None,
        prime=None,
        *,
        temperature,
        top_k,
        top_p,
        chunk_size,
        row_offset,
        batch,
        cache,
    ):
        t = f"trace/{self.i}/"
        assert prior.config.level == TRACE[t + "level"], self.i
        np.testing.assert_array_equal(prime, TRACE[t + "z_prefix"], err_msg=f"prime of call {self.i}")
        if prior.config.is_upsampler:
            np.testing.assert_array_equal(upper, TRACE[t + "z_conds/0"], err_msg=f"upper codes of call {self.i}")
        else:
            assert upper is None
        np.testing.assert_array_equal(y, TRACE[t + "y"], err_msg=f"labels of call {self.i}")
        out = TRACE[t + "out"]
        assert n == out.shape[1] - prime.shape[1]
        assert (row_offset, batch, top_k, temperature) == (0, 2, 1, 0.99)
        self.keys.append(np.asarray(jax.random.key_data(key)).tobytes())
        self.i += 1
        return out.astype(np.int32), cache


SETTINGS = {level: LevelSettings(temperature=0.99, top_k=1, chunk_size=16) for level in range(3)}
PRIORS = {level: ConfigOnly(c) for level, c in CONFIGS.items()}


def _empty():
    return [np.zeros((2, 0), np.int32) for _ in range(3)]


def test_trace_replay_all_levels():
    replay = TraceReplay()
    zs = sample_song(
        PRIORS,
        _empty(),
        [0, 1, 2],
        SAMPLE_LENGTH,
        trace_labels(),
        SETTINGS,
        jax.random.key(0),
        HOP_FRACTION,
        sample_fn=replay,
    )
    assert replay.i == N_CALLS
    for level in range(3):
        np.testing.assert_array_equal(zs[level], TRACE[f"zs/{level}"])
    assert len(set(replay.keys)) == N_CALLS  # every window has its own key


def test_upsampling_alone_from_saved_top_codes():
    first_upsampler_call = next(i for i in range(N_CALLS) if TRACE[f"trace/{i}/level"] == 1)
    replay = TraceReplay(first_upsampler_call)
    zs = _empty()
    zs[2] = TRACE["zs/2"].astype(np.int32)
    zs = sample_song(
        PRIORS, zs, [0, 1], SAMPLE_LENGTH, trace_labels(), SETTINGS, jax.random.key(0), HOP_FRACTION, sample_fn=replay
    )
    assert replay.i == N_CALLS
    np.testing.assert_array_equal(zs[0], TRACE["zs/0"])


def test_resume_after_a_kill_loses_at_most_one_window(tmp_path):
    run = RunDir(tmp_path)
    run.start({"seed": 0})
    saved = []

    def save(level, window, zs):
        run.save_codes(level, zs[level])
        saved.append((level, window.start))
        if len(saved) == 13:  # killed during the 14th window (level 1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_song(
            PRIORS,
            _empty(),
            [0, 1, 2],
            SAMPLE_LENGTH,
            trace_labels(),
            SETTINGS,
            jax.random.key(0),
            HOP_FRACTION,
            sample_fn=TraceReplay(),
            on_window=save,
        )
    zs = run.load_codes(2, 3)
    assert zs[2].shape[1] == 96 and zs[1].shape[1] == 64 + 7 * 32
    replay = TraceReplay(13)  # picks up exactly at the first unfinished window
    zs = sample_song(
        PRIORS,
        zs,
        [0, 1, 2],
        SAMPLE_LENGTH,
        trace_labels(),
        SETTINGS,
        jax.random.key(0),
        HOP_FRACTION,
        sample_fn=replay,
        on_window=lambda level, w, z: run.save_codes(level, z[level]),
    )
    assert replay.i == N_CALLS
    for level in range(3):
        np.testing.assert_array_equal(run.load_codes(2, 3)[level], TRACE[f"zs/{level}"])
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture(scope="module")
def real_priors():
    from sampling_fixtures import fixture_prior

    return {0: fixture_prior("prior_up0")[0], 1: fixture_prior("prior_up1")[0], 2: fixture_prior("prior_top1b")[0]}


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_greedy_pipeline_with_real_priors_matches_trace_and_audio(real_priors):
    """The whole 3-level windowed sampling with the fixture priors and VQ-VAE: codes token for token,
    decoded audio per level within 1e-4."""
    from sampling_fixtures import fixture_vqvae

    priors = real_priors
    vq = fixture_vqvae()
    audio = {}
    zs = sample_song(
        priors,
        _empty(),
        [0, 1, 2],
        SAMPLE_LENGTH,
        trace_labels(),
        SETTINGS,
        jax.random.key(0),
        HOP_FRACTION,
        decode=lambda z, level: vq.decode(z, start_level=level),
        on_level=lambda level, z, a: audio.__setitem__(level, np.asarray(a)),
    )
    for level in (2, 1, 0):
        np.testing.assert_array_equal(zs[level], TRACE[f"zs/{level}"], err_msg=f"level {level}")
        want = TRACE[f"decoded/{level}"]
        np.testing.assert_allclose(audio[level], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow
def test_partial_windows_with_the_real_top_prior(real_priors):
    """The original's sample_partial_window: 20 tokens, then 24 more (shorter than one context)."""
    from jukebox_flax.sampling.song import sample_level

    zs, labels = _empty(), trace_labels()
    for total, name in ((20, "partial_top_first"), (44, "partial_top_second")):
        zs = sample_level(real_priors[2], zs, 2, total, 8, labels[2], SETTINGS[2], jax.random.key(0))
        np.testing.assert_array_equal(zs[2], TRACE[name])


def test_batch_split_follows_max_batch_size_or_the_memory_plan(monkeypatch):
    """Rows per sampler call: max_batch_size when set, else memory.pick_batch_chunk for the prior's
    config, batch and activation dtype; each part carries its row offset (row keys stay the same)."""
    import jax.numpy as jnp

    from jukebox_flax.sampling import song
    from jukebox_flax.sampling.song import rows_per_call, sample_level

    c = CONFIGS[2]
    calls = []

    def fake_sample(prior, key, n, y=None, upper=None, prime=None, *, row_offset, batch, cache, **kw):
        calls.append((row_offset, batch))
        return np.zeros((batch, prime.shape[1] + n), np.int32), cache

    def run(settings):
        calls.clear()
        zs = [np.zeros((5, 0), np.int32) for _ in range(3)]
        labels = LevelLabels(
            y=np.repeat(TRACE["labels_y/2"][:1], 5, 0), full_tokens=[list(TRACE["labels_y/2"][0][-c.n_tokens :])] * 5
        )
        zs = sample_level(
            PRIORS[2], zs, 2, c.n_ctx, c.n_ctx, labels, settings, jax.random.key(0), sample_fn=fake_sample
        )
        assert zs[2].shape == (5, c.n_ctx)
        return list(calls)

    assert run(LevelSettings(max_batch_size=2)) == [(0, 2), (2, 2), (4, 1)]
    picked = []

    def fake_pick(config, n_samples, dtype, released, chunk_size):
        picked.append((config, n_samples, jnp.dtype(dtype), released, chunk_size))
        return 3

    monkeypatch.setattr(song, "pick_batch_chunk", fake_pick)
    assert run(LevelSettings(chunk_size=8)) == [(0, 3), (3, 2)]
    assert picked == [(c, 5, jnp.dtype(jnp.float32), False, 8)]  # once per level, not per window
    monkeypatch.undo()
    # on a CPU (no memory limit) the plan takes every row at once
    assert rows_per_call(PRIORS[2], 5, LevelSettings()) == 5
    with pytest.raises(SamplingError, match="max_batch_size"):
        rows_per_call(PRIORS[2], 5, LevelSettings(max_batch_size=0))
