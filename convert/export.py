"""A jukebox-flax model directory -> official-format PyTorch checkpoints (for weights trained in JAX).

    export(model_dir, out)

A component directory becomes one ``*.pth.tar`` holding ``{'hps': ..., 'model': state_dict}``, as
the original ``save_checkpoint`` writes it (the ``hps`` use the original names, so the file
converts back without ``--hps``). A whole-model directory becomes a directory of
``vqvae.pth.tar`` and ``prior_level_{0,1,2}.pth.tar``. Tensors keep the stored dtype, so
official -> jukebox-flax -> official is bit-exact; the tied ``prior.x_out.weight`` shares the
token embedding's storage, as in the released files.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jukebox_flax.atomic import atomic_write
from jukebox_flax.checkpoint import load_config, load_params
from jukebox_flax.config import JukeboxConfig, PriorConfig, VQVAEConfig
from jukebox_flax.errors import ConvertError

__all__ = ["export", "hps_from_config", "state_dict_from_params"]


def hps_from_config(config: Any, vqvae: Optional[VQVAEConfig] = None) -> dict:
    """Original-style hyperparameters (``hparams.py`` names) that ``from_hps`` turns back into ``config``."""
    if isinstance(config, VQVAEConfig):
        c = config
        return dict(
            levels=c.levels, downs_t=list(c.downs_t), strides_t=list(c.strides_t), emb_width=c.emb_width,
            l_bins=c.l_bins, width=c.width, depth=c.depth, hvqvae_multipliers=list(c.multipliers),
            m_conv=c.m_conv, dilation_growth_rate=c.dilation_growth_rate, dilation_cycle=c.dilation_cycle,
            vqvae_reverse_decoder_dilation=c.reverse_decoder_dilation, zero_out=c.zero_out,
            res_scale=c.res_scale, l_mu=c.l_mu, commit=c.commit, revival_threshold=c.revival_threshold,
            loss_fn=c.loss_fn, lmix_l1=c.lmix_l1, lmix_l2=c.lmix_l2, lmix_linf=c.lmix_linf, linf_k=c.linf_k,
            spectral=c.spectral, multispectral=c.multispectral,
            multispec_loss_n_fft=list(c.multispec_n_fft), multispec_loss_hop_length=list(c.multispec_hop_length),
            multispec_loss_window_size=list(c.multispec_window_size), sr=c.sr,
        )
    if not isinstance(config, PriorConfig):
        raise ConvertError(f"cannot export a {type(config).__name__}")
    c = config
    vq = vqvae or VQVAEConfig(levels=len(c.downs_t), downs_t=c.downs_t, strides_t=c.strides_t, l_bins=c.bins,
                              multipliers=(1,) * len(c.downs_t))
    hps = hps_from_config(vq.replace(l_bins=c.bins, downs_t=c.downs_t, strides_t=c.strides_t))
    hps.update(
        level=c.level, n_ctx=c.n_ctx, prior_width=c.width, prior_depth=c.depth, heads=c.heads,
        attn_order=c.attn_order, blocks=c.blocks, init_scale=c.init_scale, m_attn=c.m_attn, m_mlp=c.m_mlp,
        zero_out=c.zero_out, res_scale=c.res_scale, spread=c.spread,
        cond_width=c.cond_width, cond_depth=c.cond_depth, cond_m_conv=c.cond_m_conv,
        cond_dilation_growth_rate=c.cond_dilation_growth_rate, cond_dilation_cycle=c.cond_dilation_cycle,
        cond_res_scale=c.cond_res_scale, cond_zero_out=c.cond_zero_out,
        labels=c.labels, labels_v3=c.labels_v3, y_bins=[c.genre_bins, c.artist_bins], t_bins=c.t_bins,
        max_bow_genre_size=c.max_bow_genre_size, min_duration=c.min_duration, max_duration=c.max_duration,
        sr=c.sr, single_enc_dec=c.lyrics == "single", use_tokens=c.lyrics != "none",
        n_tokens=c.n_tokens, n_vocab=c.n_vocab, prime_loss_fraction=c.prime_loss_fraction,
        merged_decoder=c.merged_decoder, fp16_params=c.fp16_params,
        alignment_layer=c.alignment_layer, alignment_head=c.alignment_head,
    )
    if c.encoder is not None:
        e = c.encoder
        hps.update(prime_width=e.width, prime_depth=e.depth, prime_heads=e.heads, prime_attn_order=e.attn_order,
                   prime_blocks=e.blocks, prime_init_scale=e.init_scale, prime_m_attn=e.m_attn,
                   prime_m_mlp=e.m_mlp, prime_zero_out=e.zero_out, prime_res_scale=e.res_scale)
    return hps


def state_dict_from_params(params: Any, config: Any) -> dict[str, np.ndarray]:
    """Original keys -> numpy arrays (torch layouts) through the module owners' inverse mappings."""
    if isinstance(config, VQVAEConfig):
        from .vqvae_keys import vqvae_state_dict_from_params

        return vqvae_state_dict_from_params(params, config)
    from .prior_keys import prior_state_dict_from_params

    return prior_state_dict_from_params(params, config)


def _to_torch(sd: dict[str, Any]) -> "OrderedDict[str, Any]":
    import torch

    out: OrderedDict = OrderedDict()
    made: dict[int, Any] = {}  # one tensor per array object: tied keys share a storage, as in torch
    for key, value in sd.items():
        if id(value) not in made:
            array = np.array(value, order="C")  # a writable copy: torch wants writable memory
            if array.dtype.name == "bfloat16":
                tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            else:
                tensor = torch.from_numpy(array)
            made[id(value)] = tensor
        out[key] = made[id(value)]
    return out


def _save_atomic(obj: Any, out: Path) -> None:
    import torch

    with atomic_write(out) as f:
        torch.save(obj, f)


def _export_component(model_dir: Path, out: Path, config: Any, vqvae: Optional[VQVAEConfig], mappings=None) -> None:
    import jax

    params = jax.tree_util.tree_map(np.asarray, load_params(model_dir))
    sd = (mappings or state_dict_from_params)(params, config)
    _save_atomic({"hps": hps_from_config(config, vqvae), "model": _to_torch(sd)}, out)


def export(model_dir: Any, out: Any, overwrite: bool = True, mappings=None) -> Path:
    """Write official-format checkpoint(s) from a model directory. Returns ``out``."""
    model_dir, out = Path(model_dir), Path(out)
    config = load_config(model_dir)
    if not isinstance(config, JukeboxConfig):
        _export_component(model_dir, out, config, None, mappings)
        return out
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{model_dir} is a whole model: OUT must be a directory, and {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    _export_component(model_dir / "vqvae", out / "vqvae.pth.tar", config.vqvae, None, mappings)
    for prior in config.priors:
        name = f"prior_level_{prior.level}"
        _export_component(model_dir / name, out / f"{name}.pth.tar", prior, config.vqvae, mappings)
    return out
