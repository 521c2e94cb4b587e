"""The original code's hyperparameter dicts (names as in openai/jukebox ``hparams.py``) <-> our configs.

    vqvae_config_from_hps(hps) -> VQVAEConfig
    prior_config_from_hps(hps, vqvae=None) -> PriorConfig
    hps_from_config(config, vqvae=None) -> hps   (the inverse, written into exported checkpoints)

The official checkpoints carry their ``hps``; the core library reads only model directories.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jukebox_flax.config import LyricEncoderConfig, PriorConfig, VQVAEConfig
from jukebox_flax.errors import ConvertError

__all__ = ["vqvae_config_from_hps", "prior_config_from_hps", "hps_from_config", "ORIGINAL_DEFAULTS"]

# The original hparams.py DEFAULTS that its make_vqvae / make_prior read (values as there), so an
# exported checkpoint's hps build the model without keys filled by hand.
ORIGINAL_DEFAULTS: dict[str, Any] = dict(
    train=False,
    prior=False,
    restore_vqvae="",
    restore_prior="",
    sr=44100,
    sample_length=0,
    sample_length_in_seconds=24,
    total_sample_length_in_seconds=240,
    use_bottleneck=True,
    attn_dropout=0.0,
    resid_dropout=0.0,
    emb_dropout=0.0,
    pos_init=False,
    c_res=0,
    c_attn=0,
    c_mlp=0,
    copy_input=False,
    cond_c_res=0,
    prime_spread=None,
    prime_attn_dropout=0.0,
    prime_resid_dropout=0.0,
    prime_emb_dropout=0.0,
    prime_pos_init=False,
    prime_c_res=0,
    prime_c_attn=0,
    prime_c_mlp=0,
    fp16=False,
    cond_levels=None,
    t_ranges=None,
    y_cond_as_bias=False,
)


def vqvae_config_from_hps(hps: Mapping[str, Any]) -> VQVAEConfig:
    """From an original hyperparameter dict (``hparams.py`` names)."""
    levels = int(hps["levels"])
    mult = hps.get("hvqvae_multipliers") or [1] * levels
    return VQVAEConfig(
        levels=levels,
        downs_t=tuple(hps["downs_t"]),
        strides_t=tuple(hps["strides_t"]),
        emb_width=int(hps["emb_width"]),
        l_bins=int(hps["l_bins"]),
        width=int(hps["width"]),
        depth=int(hps["depth"]),
        multipliers=tuple(mult),
        m_conv=float(hps.get("m_conv", 1.0)),
        dilation_growth_rate=int(hps.get("dilation_growth_rate", 1)),
        dilation_cycle=hps.get("dilation_cycle"),
        reverse_decoder_dilation=bool(hps.get("vqvae_reverse_decoder_dilation", True)),
        zero_out=bool(hps.get("zero_out", False)),
        res_scale=bool(hps.get("res_scale", False)),
        l_mu=float(hps.get("l_mu", 0.99)),
        commit=float(hps.get("commit", 0.02)),
        revival_threshold=float(hps.get("revival_threshold", 1.0)),
        loss_fn=hps.get("loss_fn", "lmix"),
        lmix_l1=float(hps.get("lmix_l1", 0.0)),
        lmix_l2=float(hps.get("lmix_l2", 0.0)),
        lmix_linf=float(hps.get("lmix_linf", 0.0)),
        linf_k=int(hps.get("linf_k", 2048)),
        spectral=float(hps.get("spectral", 0.0)),
        multispectral=float(hps.get("multispectral", 1.0)),
        multispec_n_fft=tuple(hps.get("multispec_loss_n_fft", (2048, 1024, 512))),
        multispec_hop_length=tuple(hps.get("multispec_loss_hop_length", (240, 120, 50))),
        multispec_window_size=tuple(hps.get("multispec_loss_window_size", (1200, 600, 240))),
        sr=int(hps.get("sr", 44100)),
    )


def prior_config_from_hps(hps: Mapping[str, Any], vqvae: VQVAEConfig | None = None) -> PriorConfig:
    """From an original prior hyperparameter dict (names as in ``fixtures/openai/hps_index.json``).

    ``vqvae`` supplies the codebook size and down-sampling (the original takes them from the
    VQ-VAE it is built with); it defaults to the released VQ-VAE.
    """
    vq = vqvae or VQVAEConfig()
    single = bool(hps.get("single_enc_dec", False))
    use_tokens = bool(hps.get("use_tokens", False))
    lyrics = "single" if single else ("separate" if use_tokens else "none")
    encoder = None
    if lyrics == "separate":
        encoder = LyricEncoderConfig(
            width=int(hps["prime_width"]),
            depth=int(hps["prime_depth"]),
            heads=int(hps["prime_heads"]),
            attn_order=int(hps["prime_attn_order"]),
            blocks=int(hps["prime_blocks"]),
            init_scale=float(hps.get("prime_init_scale", 1.0)),
            m_attn=float(hps.get("prime_m_attn", 0.25)),
            m_mlp=float(hps.get("prime_m_mlp", 1.0)),
            zero_out=bool(hps.get("prime_zero_out", False)),
            res_scale=bool(hps.get("prime_res_scale", False)),
        )
    y_bins = hps.get("y_bins") or (0, 0)
    return PriorConfig(
        level=int(hps["level"]),
        n_ctx=int(hps["n_ctx"]),
        width=int(hps["prior_width"]),
        depth=int(hps["prior_depth"]),
        heads=int(hps["heads"]),
        attn_order=int(hps["attn_order"]),
        blocks=int(hps["blocks"]),
        init_scale=float(hps.get("init_scale", 1.0)),
        m_attn=float(hps.get("m_attn", 0.25)),
        m_mlp=float(hps.get("m_mlp", 1.0)),
        zero_out=bool(hps.get("zero_out", False)),
        res_scale=bool(hps.get("res_scale", False)),
        spread=hps.get("spread"),
        bins=vq.l_bins,
        downs_t=vq.downs_t,
        strides_t=vq.strides_t,
        cond_width=int(hps.get("cond_width", 128)),
        cond_depth=int(hps.get("cond_depth", 3)),
        cond_m_conv=float(hps.get("cond_m_conv", 1.0)),
        cond_dilation_growth_rate=int(hps.get("cond_dilation_growth_rate", 1)),
        cond_dilation_cycle=hps.get("cond_dilation_cycle"),
        cond_res_scale=bool(hps.get("cond_res_scale", False)),
        cond_zero_out=bool(hps.get("cond_zero_out", False)),
        labels=bool(hps.get("labels", True)),
        labels_v3=bool(hps.get("labels_v3", False)),
        genre_bins=int(y_bins[0]),
        artist_bins=int(y_bins[1]),
        t_bins=int(hps.get("t_bins", 128)),
        max_bow_genre_size=int(hps.get("max_bow_genre_size", 5)),
        min_duration=hps.get("min_duration"),
        max_duration=hps.get("max_duration"),
        sr=int(hps.get("sr", vq.sr)),
        lyrics=lyrics,
        n_tokens=int(hps.get("n_tokens", 0)) if lyrics != "none" else 0,
        n_vocab=int(hps.get("n_vocab", 80)),
        encoder=encoder,
        prime_loss_fraction=float(hps.get("prime_loss_fraction", 0.0)),
        merged_decoder=bool(hps.get("merged_decoder", False)),
        fp16_params=bool(hps.get("fp16_params", False)),
        alignment_layer=hps.get("alignment_layer"),
        alignment_head=hps.get("alignment_head"),
    )


def hps_from_config(config: Any, vqvae: VQVAEConfig | None = None) -> dict:
    """Original-style hyperparameters (``hparams.py`` names) that ``prior_config_from_hps`` /
    ``vqvae_config_from_hps`` turn back into ``config``."""
    if isinstance(config, VQVAEConfig):
        v = config
        return dict(
            ORIGINAL_DEFAULTS,
            levels=v.levels,
            downs_t=list(v.downs_t),
            strides_t=list(v.strides_t),
            emb_width=v.emb_width,
            l_bins=v.l_bins,
            width=v.width,
            depth=v.depth,
            hvqvae_multipliers=list(v.multipliers),
            m_conv=v.m_conv,
            dilation_growth_rate=v.dilation_growth_rate,
            dilation_cycle=v.dilation_cycle,
            vqvae_reverse_decoder_dilation=v.reverse_decoder_dilation,
            zero_out=v.zero_out,
            res_scale=v.res_scale,
            l_mu=v.l_mu,
            commit=v.commit,
            revival_threshold=v.revival_threshold,
            loss_fn=v.loss_fn,
            lmix_l1=v.lmix_l1,
            lmix_l2=v.lmix_l2,
            lmix_linf=v.lmix_linf,
            linf_k=v.linf_k,
            spectral=v.spectral,
            multispectral=v.multispectral,
            multispec_loss_n_fft=list(v.multispec_n_fft),
            multispec_loss_hop_length=list(v.multispec_hop_length),
            multispec_loss_window_size=list(v.multispec_window_size),
            sr=v.sr,
        )
    if not isinstance(config, PriorConfig):
        raise ConvertError(f"cannot export a {type(config).__name__}")
    c = config
    vq = vqvae or VQVAEConfig(
        levels=len(c.downs_t),
        downs_t=c.downs_t,
        strides_t=c.strides_t,
        l_bins=c.bins,
        multipliers=(1,) * len(c.downs_t),
    )
    hps = hps_from_config(vq.replace(l_bins=c.bins, downs_t=c.downs_t, strides_t=c.strides_t))
    hps.update(
        level=c.level,
        n_ctx=c.n_ctx,
        prior_width=c.width,
        prior_depth=c.depth,
        heads=c.heads,
        attn_order=c.attn_order,
        blocks=c.blocks,
        init_scale=c.init_scale,
        m_attn=c.m_attn,
        m_mlp=c.m_mlp,
        zero_out=c.zero_out,
        res_scale=c.res_scale,
        spread=c.spread,
        cond_width=c.cond_width,
        cond_depth=c.cond_depth,
        cond_m_conv=c.cond_m_conv,
        cond_dilation_growth_rate=c.cond_dilation_growth_rate,
        cond_dilation_cycle=c.cond_dilation_cycle,
        cond_res_scale=c.cond_res_scale,
        cond_zero_out=c.cond_zero_out,
        labels=c.labels,
        labels_v3=c.labels_v3,
        y_bins=[c.genre_bins, c.artist_bins],
        t_bins=c.t_bins,
        max_bow_genre_size=c.max_bow_genre_size,
        min_duration=c.min_duration,
        max_duration=c.max_duration,
        sr=c.sr,
        single_enc_dec=c.lyrics == "single",
        use_tokens=c.lyrics != "none",
        n_tokens=c.n_tokens,
        n_vocab=c.n_vocab,
        prime_loss_fraction=c.prime_loss_fraction,
        merged_decoder=c.merged_decoder,
        fp16_params=c.fp16_params,
        alignment_layer=c.alignment_layer,
        alignment_head=c.alignment_head,
    )
    if c.encoder is not None:
        e = c.encoder
        hps.update(
            prime_width=e.width,
            prime_depth=e.depth,
            prime_heads=e.heads,
            prime_attn_order=e.attn_order,
            prime_blocks=e.blocks,
            prime_init_scale=e.init_scale,
            prime_m_attn=e.m_attn,
            prime_m_mlp=e.m_mlp,
            prime_zero_out=e.zero_out,
            prime_res_scale=e.res_scale,
        )
    if c.is_upsampler:
        hps["cond_c_res"] = 1  # export writes the conditioner's res blocks as `.blocks.` (checkpoint_res=1)
    return hps
