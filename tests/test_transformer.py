"""The sparse transformer / Autoregressive against the original code (fixtures), plus structure checks.

- teacher-forced logits and every layer's attention weights of the five tiny fixture priors
  (upsamplers, 5b, 5b_lyrics with cross attention, 1b_lyrics single encoder-decoder with prime and
  dense layers), fed with the fixtures' own conditioning tensors;
- the lyric encoder (only_encode) through the fixture's encoder_kv;
- the state-dict mapping round-trips exactly;
- parameter counts of the released presets (abstract shapes only) match the original's;
- the layer grouping of the released layouts.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hps, load_npz, state_dict

from jukebox_flax.config import PriorConfig, preset
from jukebox_flax.prior.autoregressive import Autoregressive, PriorInputError
from jukebox_flax.prior.transformer import TransformerConfig, layer_location, layer_segments
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.transformer_keys import autoregressive_from_torch, autoregressive_to_torch

PRIORS = ["prior_up0", "prior_up1", "prior_top5b", "prior_top5b_lyrics", "prior_top1b"]


def _config(name: str) -> PriorConfig:
    return prior_config_from_hps(hps(name), vqvae_config_from_hps(hps("vqvae_tiny")))


def _inputs(f: dict, cfg: PriorConfig):
    """Tokens and conditioning as the original prior feeds its ConditionalAutoregressive2D."""
    x_cond, y_cond = f["outputs/x_cond"], f["outputs/y_cond"]
    enc = f["outputs/encoder_kv"] if cfg.lyrics == "separate" else None
    if cfg.lyrics == "single":
        # [lyrics ; music] with music tokens shifted by the lyric vocabulary; zero conditioning on lyrics
        tokens = np.concatenate([f["outputs/prime"], f["outputs/zs/0"] + cfg.n_vocab], axis=1)
        zeros = np.zeros((x_cond.shape[0], cfg.n_tokens, cfg.width), np.float32)
        x_cond = np.concatenate([zeros, x_cond], axis=1)
        np.testing.assert_array_equal(x_cond, f["outputs/kv/cond_full"])  # the oracle's own joint cond
    else:
        tokens = f["outputs/zs/0"]  # the fixtures store zs from the prior's own level upwards
    return tokens, x_cond, y_cond, enc


@pytest.mark.parametrize("name", PRIORS)
def test_forward_matches_original(name):
    f = load_npz(f"openai/{name}")
    cfg = _config(name)
    model = Autoregressive(TransformerConfig.from_prior(cfg))
    sd = state_dict(f)
    params = autoregressive_from_torch(sd, "prior.", model.config.layout, model.config.merged_decoder)

    # the mapping is exact both ways (including the tied x_out of non-merged models)
    back = autoregressive_to_torch(params, "prior.", model.config.layout)
    original = {k: v for k, v in sd.items() if k.startswith("prior.")}
    assert set(back) == set(original)
    for k, v in original.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)

    tokens, x_cond, y_cond, enc = _inputs(f, cfg)
    run = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=Autoregressive.attention_weights))
    logits, weights = run(params, tokens, x_cond, y_cond, enc)
    ref = f["outputs/logits"]
    assert logits.shape == ref.shape
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4 * np.abs(ref).max()
    attn_funcs = f["attn_funcs"]
    assert len(weights) == cfg.depth == len(attn_funcs)
    for i in range(cfg.depth):
        w_ref = f[f"outputs/attn_weights/{i}"]
        assert weights[i].shape == w_ref.shape, (i, int(attn_funcs[i]))
        np.testing.assert_allclose(np.asarray(weights[i]), w_ref, atol=1e-5, err_msg=f"layer {i}")


def test_lyric_encoder_matches_original():
    """prime_prior (only_encode) -> prime_state_proj -> prime_state_ln == the fixture's encoder_kv."""
    f = load_npz("openai/prior_top5b_lyrics")
    cfg = _config("prior_top5b_lyrics")
    enc = Autoregressive(TransformerConfig.from_prior(cfg, lyric_encoder=True))
    sd = state_dict(f)
    params = autoregressive_from_torch(sd, "prime_prior.", enc.config.layout, merged_decoder=False)
    back = autoregressive_to_torch(params, "prime_prior.", enc.config.layout, only_encode=True)
    assert set(back) == {k for k in sd if k.startswith("prime_prior.")}
    acts = np.asarray(jax.jit(lambda p, t: enc.apply({"params": p}, t))(params, f["outputs/prime"]), np.float64)
    assert acts.shape == (2, cfg.n_tokens, cfg.encoder.width)
    h = acts @ sd["prime_state_proj.w"] + sd["prime_state_proj.b"]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    h = h * sd["prime_state_ln.weight"] + sd["prime_state_ln.bias"]
    ref = f["outputs/encoder_kv"]
    assert np.abs(h - ref).max() <= 1e-4 * np.abs(ref).max()


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# original parameter counts (openai_jukebox.md §2.8)
TRANSFORMER_PARAMS = {
    "upsampler_level_0": 797_333_760,
    "prior_1b_lyrics": 907_112_448,
    "prior_5b": 4_979_318_400,
    "prior_5b_lyrics": 5_463_418_800,
}


@pytest.mark.parametrize("name", sorted(TRANSFORMER_PARAMS))
def test_released_parameter_counts(name):
    cfg = preset(name)
    model = Autoregressive(TransformerConfig.from_prior(cfg))
    sds = jax.ShapeDtypeStruct
    n, w = cfg.total_ctx, cfg.width
    enc = sds((1, cfg.n_tokens, w), jnp.float32) if cfg.lyrics == "separate" else None
    params = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        sds((1, n), jnp.int32),
        sds((1, n, w), jnp.float32),
        sds((1, 1, w), jnp.float32),
        enc,
    )["params"]
    params = nn.meta.unbox(params)
    assert _count(params["transformer"]) == TRANSFORMER_PARAMS[name]
    assert params["pos_emb"].shape == (n, w)
    assert params["x_emb"]["embedding"].shape == (cfg.total_bins, w)
    assert ("x_out" in params) == cfg.merged_decoder
    if cfg.encoder is not None:
        lyric = Autoregressive(TransformerConfig.from_prior(cfg, lyric_encoder=True))
        p = jax.eval_shape(lyric.init, jax.random.PRNGKey(0), sds((1, cfg.n_tokens), jnp.int32))["params"]
        assert _count(p) == 89_411_200  # incl. x_emb, pos_emb and start_token


def test_released_layer_grouping():
    expect = {
        "prior_5b": [("layers_0_71", 3, 24)],
        "prior_5b_lyrics": [("layers_0_17", 3, 6), ("layers_18_77", 10, 6), ("layer_78", 1, 1)],
    }
    for name, segs in expect.items():
        got = layer_segments(preset(name).attention_layout)
        assert [(s.key, len(s.unit), s.repeat) for s in got] == segs
    layout = preset("prior_1b_lyrics").attention_layout
    segs = layer_segments(layout)
    singles = [s.start for s in segs if not s.scanned]
    assert {15, 31, 47, 63} <= set(singles)  # prime, prime, dense, prime layers stay unrolled
    # every layer has exactly one location, with the right attention type
    for i, t in enumerate(layout):
        key, unit, r = layer_location(segs, i)
        seg = next(s for s in segs if s.key == key)
        assert seg.unit[0 if unit is None else int(unit.split("_")[1])] == t
        assert (r is None) == (not seg.scanned)
    assert sum(len(s.unit) * s.repeat for s in segs) == len(layout)


def test_bad_inputs_raise():
    model = Autoregressive(TransformerConfig(width=8, heads=1, layout=("dense",), n_ctx=4, bins=3, y_cond=True))
    tokens = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(PriorInputError):
        model.init(jax.random.PRNGKey(0), tokens, None, jnp.zeros((2, 2, 8)))
    with pytest.raises(PriorInputError):
        model.init(jax.random.PRNGKey(0), jnp.zeros((2, 5), jnp.int32), None, jnp.zeros((2, 1, 8)))
