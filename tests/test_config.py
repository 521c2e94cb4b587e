"""Configs: released presets, JSON round trip, training-only fields; the converter's constructors from
original hps and HF config.json."""

import json

import pytest
from conftest import HF, hps

from jukebox_flax.config import (
    PRESETS,
    ConfigError,
    JukeboxConfig,
    LyricEncoderConfig,
    VQVAEConfig,
    attention_layout,
    config_from_dict,
    preset,
    training_only_fields,
)
from jukebox_flax_convert.hf_config import jukebox_config_from_hf
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_json(name):
    config = preset(name)
    assert type(config).from_json(config.to_json()) == config
    assert config_from_dict(json.loads(config.to_json())) == config


def test_released_vqvae_preset():
    vq = preset("vqvae")
    assert vq.hop_lengths == (8, 32, 128)
    assert (vq.level_width(0), vq.level_depth(0), vq.level_width(2), vq.level_depth(2)) == (64, 8, 32, 4)
    assert (vq.emb_width, vq.l_bins, vq.commit, vq.l_mu) == (64, 2048, 0.02, 0.99)


def test_released_prior_presets():
    up0, up1 = preset("upsampler_level_0"), preset("upsampler_level_1")
    assert (up0.hop_length, up1.hop_length) == (8, 32)
    assert (up0.sample_length, up1.sample_length) == (65536, 262144)
    assert up0.is_upsampler and not up0.has_timing and up0.cond_downsample == 4
    assert (up0.cond_res_scale, up1.cond_res_scale) == (False, True)
    assert up0.attention_layout[:3] == ("block", "transpose_block", "prev_block")

    p5 = preset("prior_5b")
    assert (p5.width, p5.depth, p5.heads, p5.n_state, p5.block_ctx, p5.y_length) == (4800, 72, 8, 1200, 64, 9)
    assert p5.merged_decoder and p5.fp16_params and p5.sample_length == 1048576

    p5l = preset("prior_5b_lyrics")
    cross = [i for i, a in enumerate(p5l.attention_layout) if a == "cross"]
    assert cross == [18, 28, 38, 48, 58, 68, 78]
    assert p5l.y_length == 521 and p5l.encoder == LyricEncoderConfig()
    assert (p5l.min_duration, p5l.alignment_layer, p5l.alignment_head) == (23.8, 68, 2)

    p1 = preset("prior_1b_lyrics")
    layout = p1.attention_layout
    assert [i for i, a in enumerate(layout) if a == "prime"] == [15, 31, 63]
    assert [i for i, a in enumerate(layout) if a == "dense"] == [47]
    assert (p1.total_ctx, p1.block_ctx, p1.total_bins, p1.y_length) == (6528, 102, 2127, 389)
    assert p1.labeller_version == "v3" and p1.sample_length == 786432


def test_whole_model_presets_share_vqvae_and_upsamplers():
    models = {n: preset(n) for n in ("1b_lyrics", "5b", "5b_lyrics")}
    for m in models.values():
        assert m.vqvae == preset("vqvae")
        assert m.priors[0] == preset("upsampler_level_0") and m.priors[1] == preset("upsampler_level_1")
        assert m.hop_fraction == (0.5, 0.5, 0.125)
    assert models["1b_lyrics"].priors[2] == preset("prior_1b_lyrics")


def test_from_hps_matches_fixture_models():
    vq = vqvae_config_from_hps(hps("vqvae_tiny"))
    assert vq.hop_lengths == (8, 32, 128) and vq.emb_width == 16 and vq.l_bins == 32
    top1b = prior_config_from_hps(hps("prior_top1b"), vq)
    assert top1b.lyrics == "single" and top1b.total_ctx == 80 and top1b.total_bins == 32 + 79
    assert [i for i, a in enumerate(top1b.attention_layout) if a in ("prime", "dense")] == [15, 31, 47]
    top5l = prior_config_from_hps(hps("prior_top5b_lyrics"), vq)
    assert top5l.lyrics == "separate" and top5l.encoder.width == 24 and top5l.encoder.blocks == 4
    assert [i for i, a in enumerate(top5l.attention_layout) if a == "cross"] == [18]
    up1 = prior_config_from_hps(hps("prior_up1"), vq)
    assert up1.is_upsampler and up1.cond_res_scale and up1.cond_dilation_cycle == 2 and up1.bins == 32


def test_released_hps_reproduce_presets():
    """Original hparams.py values (as far as hps_index keeps them) give the presets."""
    base = dict(hps("prior_top5b"))
    base.update(n_ctx=8192, prior_width=4800, prior_depth=72, heads=8, blocks=128, fp16_params=True)
    assert prior_config_from_hps(base) == preset("prior_5b")


def test_from_hf_tiny_model():
    cfg = jukebox_config_from_hf(json.loads((HF / "tiny_1b_style" / "config.json").read_text()))
    top = cfg.priors[2]
    assert top.lyrics == "single" and top.n_tokens == 8 and top.n_ctx == 32 and top.labels_v3
    assert cfg.priors[0].n_ctx == 128 and cfg.priors[0].is_upsampler
    assert cfg.vqvae.l_bins == 64 and cfg.hop_fraction == (0.5, 0.5, 0.125)
    assert JukeboxConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(blocks=7), "not divisible by blocks"),
        (dict(attn_order=99), "unknown attn_order"),
        (dict(heads=7), "not divisible by heads"),
        (dict(lyrics="sideways"), "unknown lyrics mode"),
    ],
)
def test_invalid_settings_raise_clear_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("prior_5b").replace(**changes)


def test_unknown_preset_and_kind():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("6b")
    with pytest.raises(ConfigError, match="unknown config kind"):
        config_from_dict({"kind": "banana"})
    with pytest.raises(ConfigError, match="unknown vqvae config fields"):
        VQVAEConfig.from_dict({"levels": 3, "colour": "red"})


def test_attention_layout_orders():
    assert attention_layout(2, 6) == ("block", "transpose_block", "prev_block") * 2
    assert attention_layout(9, 4) == ("block", "transpose_block", "prev_block", "dense")


def test_training_only_fields_are_marked_by_field_metadata():
    assert training_only_fields(VQVAEConfig) == {
        "l_mu",
        "commit",
        "revival_threshold",
        "loss_fn",
        "lmix_l1",
        "lmix_l2",
        "lmix_linf",
        "linf_k",
        "spectral",
        "multispectral",
        "multispec_n_fft",
        "multispec_hop_length",
        "multispec_window_size",
    }
    assert training_only_fields(preset("prior_5b_lyrics")) == {"prime_loss_fraction", "fp16_params"}
    assert training_only_fields(LyricEncoderConfig()) == frozenset()
    assert training_only_fields(preset("5b")) == frozenset()
