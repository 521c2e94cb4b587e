"""Label and upper-level conditioners against the original code (fixtures) and an exact float32 model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hps, load_npz, state_dict

from jukebox_flax.config import PriorConfig
from jukebox_flax.prior.conditioners import LabelConditioner, LabelError, UpperConditioner, check_labels, range_bins
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.prior_keys import prior_params_from_state_dict

PRIORS = ["prior_up0", "prior_up1", "prior_top5b", "prior_top5b_lyrics", "prior_top1b"]


def _config(name: str) -> PriorConfig:
    return prior_config_from_hps(hps(name), vqvae_config_from_hps(hps("vqvae_tiny")))


@pytest.mark.parametrize("name", PRIORS)
def test_conditioners_match_original(name):
    c, a = _config(name), load_npz(f"openai/{name}")
    params = prior_params_from_state_dict(state_dict(a), c)
    labels = jnp.asarray(a["inputs/y"][:, : 4 + c.max_bow_genre_size].astype(np.int32))
    start, timing = LabelConditioner(c).apply({"params": params["label_conditioner"]}, labels)
    np.testing.assert_allclose(np.asarray(start), a["outputs/y_cond"], rtol=0, atol=1e-5)
    if c.is_upsampler:
        assert timing is None
        upper = jnp.asarray(a["outputs/zs/1"].astype(np.int32))
        x_cond = UpperConditioner(c).apply({"params": params["upper_conditioner"]}, upper)
    else:
        x_cond = timing
    np.testing.assert_allclose(np.asarray(x_cond), a["outputs/x_cond"], rtol=0, atol=1e-5)


def _torch_cpu_bins(start, end, n_time, bins, lo, hi, clamp=False):
    """RangeEmbedding's binning with numpy float32 (IEEE, every step rounded), as torch on CPU."""
    f = np.float32
    start = start.astype(f)
    if n_time == 1:
        pos = start
    else:
        end = end.astype(f)
        if clamp:
            end = np.clip(end, f(lo), f(hi))
        pos = start + (end - start) * (np.arange(n_time, dtype=f)[None] / f(n_time))
    return np.floor(f(bins) * ((pos - f(lo)) / f(hi - lo))).astype(np.int64)


def test_range_bins_exact_float32():
    rng = np.random.default_rng(0)
    sr, hi, length, n_time = 44100, 600.0 * 44100, 786432, 6144  # 1b_lyrics: n_ctx 6144 (not a power of 2)
    lo = 17.84 * sr
    total = rng.integers(int(lo) + 1, int(hi), 512)
    offset = (rng.random(512) * np.minimum(total, hi - length)).astype(np.int64)
    s, e, t = (v[:, None].astype(np.float32) for v in (offset, offset + length, total))
    absolute = jax.jit(lambda s, e: range_bins(s, e, n_time, 64, 0.0, hi))(s, e)
    np.testing.assert_array_equal(np.asarray(absolute), _torch_cpu_bins(s, e, n_time, 64, 0.0, hi))
    relative = jax.jit(lambda s, e, t: range_bins(s / t, e / t, n_time, 64, 0.0, 1.0, clamp=True))(s, e, t)
    ref = _torch_cpu_bins(s / t, e / t, n_time, 64, 0.0, 1.0, clamp=True)
    valid = ref < 64  # a position rounding to exactly 1.0 is an IndexError in the original
    np.testing.assert_array_equal(np.asarray(relative)[valid], ref[valid])
    # totals on and around every bin edge (XLA's reciprocal multiply would move some of them)
    edges = np.array([lo + j * (hi - lo) / 64 for j in range(64)])
    totals = np.concatenate([np.floor(edges), np.ceil(edges), np.ceil(edges) + 1])[:, None].astype(np.float32)
    got = jax.jit(lambda t: range_bins(t, None, 1, 64, lo, hi))(totals)
    np.testing.assert_array_equal(np.asarray(got), _torch_cpu_bins(totals, None, 1, 64, lo, hi))


def test_empty_genre_slots_are_masked():
    c = _config("prior_up0")
    params = prior_params_from_state_dict(state_dict(load_npz("openai/prior_up0")), c)["label_conditioner"]
    labels = jnp.asarray([[0, 0, 0, 7, 3, -1, -1, -1, -1], [0, 0, 0, 7, 3, 5, -1, -1, -1]], jnp.int32)
    start, _ = LabelConditioner(c).apply({"params": params}, labels)
    artist, genre = params["artist_emb"]["embedding"], params["genre_emb"]["embedding"]
    np.testing.assert_allclose(
        np.asarray(start[:, 0]), [artist[7] + genre[3], artist[7] + genre[3] + genre[5]], atol=1e-7
    )


def test_check_labels_errors():
    c = _config("prior_top5b")
    good = load_npz("openai/prior_top5b")["inputs/y"]
    check_labels(good, c)
    with pytest.raises(LabelError, match="shape"):
        check_labels(good[:, :-1], c)
    bad = good.copy()
    bad[0, 3] = c.artist_bins
    with pytest.raises(LabelError, match="artist"):
        check_labels(bad, c)
    bad = good.copy()
    bad[0, 0] = 10 * 44100  # 10 s < min_duration 60 s
    with pytest.raises(LabelError, match="total_length"):
        check_labels(bad, c)
