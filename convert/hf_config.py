"""A Hugging Face Jukebox ``config.json`` (``JukeboxConfig`` / ``JukeboxPriorConfig`` /
``JukeboxVQVAEConfig`` dicts) -> our configs.

    jukebox_config_from_hf(cfg) -> JukeboxConfig
    vqvae_config_from_hf(cfg) -> VQVAEConfig
    prior_config_from_hf(cfg, vqvae) -> PriorConfig

HF numbers priors top-first (HF level 0 = original level 2); our configs use the original levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jukebox_flax.config import JukeboxConfig, LyricEncoderConfig, PriorConfig, VQVAEConfig
from jukebox_flax.errors import ConfigError

__all__ = ["HF_PATTERNS", "jukebox_config_from_hf", "vqvae_config_from_hf", "prior_config_from_hf"]

# Hugging Face ``attention_pattern`` names -> original attn_order.
HF_PATTERNS: dict[str, int] = {
    "full_dense_attention": 0,
    "raw_column_previous_row_attention": 2,
    "large_separated_enc_dec_w_lyrics": 10,
    "enc_dec_with_lyrics": 12,
}


def vqvae_config_from_hf(cfg: Mapping[str, Any]) -> VQVAEConfig:
    """From a Hugging Face ``JukeboxVQVAEConfig`` dict."""
    return VQVAEConfig(
        levels=int(cfg["levels"]),
        downs_t=tuple(cfg["res_downs_t"]),
        strides_t=tuple(cfg["res_strides_t"]),
        emb_width=int(cfg["embed_dim"]),
        l_bins=int(cfg["nb_discrete_codes"]),
        width=int(cfg["res_conv_width"]),
        depth=int(cfg["res_conv_depth"]),
        multipliers=tuple(cfg["multipliers"]),
        m_conv=float(cfg.get("res_convolution_multiplier", 1)),
        dilation_growth_rate=int(cfg.get("res_dilation_growth_rate", 3)),
        dilation_cycle=cfg.get("res_dilation_cycle"),
        zero_out=bool(cfg.get("zero_out", False)),
        res_scale=bool(cfg.get("conv_res_scale", False)),
        input_channels=int(cfg.get("conv_input_shape", 1)),
        l_mu=float(cfg.get("lmu", 0.99)),
        commit=float(cfg.get("commit", 0.02)),
    )


def prior_config_from_hf(cfg: Mapping[str, Any], vqvae: VQVAEConfig) -> PriorConfig:
    """From one Hugging Face ``JukeboxPriorConfig`` dict (an entry of ``prior_config_list``).

    HF numbers priors top-first (HF level 0 = original level 2); we use the original levels.
    """
    n_levels = len(vqvae.downs_t)
    level = n_levels - 1 - int(cfg["level"])
    pattern = cfg["attention_pattern"]
    if pattern not in HF_PATTERNS:
        raise ConfigError(f"unknown HF attention_pattern {pattern!r}")
    n_tokens = int(cfg.get("nb_relevant_lyric_tokens", 0))
    single = bool(cfg.get("is_encoder_decoder", False)) and n_tokens > 0
    enc = cfg.get("encoder_config") or {}
    lyrics = "single" if single else ("separate" if enc and n_tokens > 0 else "none")
    encoder = None
    if lyrics == "separate":
        encoder = LyricEncoderConfig(
            width=int(enc["hidden_size"]),
            depth=int(enc["num_layers"]),
            heads=int(enc["n_heads"]),
            attn_order=HF_PATTERNS[enc["attention_pattern"]],
            blocks=int(enc["blocks"]),
            init_scale=float(enc.get("init_scale", 1.0)),
            m_attn=float(enc.get("attention_multiplier", 0.25)),
            m_mlp=float(enc.get("mlp_multiplier", 1.0)),
            zero_out=bool(enc.get("zero_out", False)),
            res_scale=bool(enc.get("attn_res_scale", False)),
        )
    dims = cfg.get("metadata_dims") or (0, 0)
    upsampler = level != n_levels - 1
    return PriorConfig(
        level=level,
        n_ctx=int(cfg["n_ctx"]),
        width=int(cfg["hidden_size"]),
        depth=int(cfg["num_layers"]),
        heads=int(cfg["n_heads"]),
        attn_order=HF_PATTERNS[pattern],
        blocks=int(cfg["blocks"]),
        init_scale=float(cfg.get("init_scale", 1.0)),
        m_attn=float(cfg.get("attention_multiplier", 0.25)),
        m_mlp=float(cfg.get("mlp_multiplier", 1.0)),
        zero_out=bool(cfg.get("zero_out", False)),
        res_scale=bool(cfg.get("attn_res_scale", False)),
        spread=cfg.get("spread"),
        bins=int(cfg.get("music_vocab_size", vqvae.l_bins)),
        downs_t=vqvae.downs_t,
        strides_t=vqvae.strides_t,
        cond_width=int(cfg.get("res_conv_width", 128)),
        cond_depth=int(cfg.get("res_conv_depth", 3)),
        cond_m_conv=float(cfg.get("res_convolution_multiplier", 1)),
        cond_dilation_growth_rate=int(cfg.get("res_dilation_growth_rate", 1)),
        cond_dilation_cycle=cfg.get("res_dilation_cycle"),
        cond_res_scale=bool(cfg.get("conv_res_scale") or False),
        labels=bool(cfg.get("metadata_conditioning", True)),
        labels_v3=not upsampler and int(cfg.get("lyric_vocab_size", 80)) == 79,
        genre_bins=int(dims[0]),
        artist_bins=int(dims[1]),
        t_bins=int(cfg.get("timing_dims", 64)),
        max_bow_genre_size=int(cfg.get("max_nb_genres", 1)),
        min_duration=None if upsampler else float(cfg.get("min_duration", 0.0)),
        max_duration=None if upsampler else float(cfg.get("max_duration", 600.0)),
        sr=int(cfg.get("sampling_rate", 44100)),
        lyrics=lyrics,
        n_tokens=n_tokens if lyrics != "none" else 0,
        n_vocab=int(cfg.get("lyric_vocab_size", 80)),
        encoder=encoder,
        prime_loss_fraction=float(cfg.get("encoder_loss_fraction", 0.0)) if lyrics != "none" else 0.0,
        merged_decoder=bool(cfg.get("merged_decoder", False)),
        alignment_layer=cfg.get("alignment_layer"),
        alignment_head=cfg.get("alignment_head"),
    )


def jukebox_config_from_hf(cfg: Mapping[str, Any]) -> JukeboxConfig:
    """From a Hugging Face ``JukeboxConfig`` dict (a ``config.json`` of model_type 'jukebox')."""
    vq = vqvae_config_from_hf(cfg["vqvae_config"])
    shared = {
        k: cfg[k]
        for k in (
            "sampling_rate",
            "timing_dims",
            "min_duration",
            "max_duration",
            "max_nb_genres",
            "metadata_conditioning",
        )
        if k in cfg
    }
    priors = [prior_config_from_hf({**p, **shared}, vq) for p in cfg["prior_config_list"]]
    priors.sort(key=lambda p: p.level)
    hop = cfg.get("hop_fraction") or cfg["vqvae_config"].get("hop_fraction", [0.125, 0.5, 0.5])
    return JukeboxConfig(vqvae=vq, priors=tuple(priors), hop_fraction=tuple(reversed(hop)))
