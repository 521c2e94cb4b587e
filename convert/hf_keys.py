"""Hugging Face Jukebox key names <-> the original openai/jukebox key names.

HF's own converter (``convert_jukebox.py``) only renamed keys (no tensor was transposed or
reshaped), so going back is renaming too. HF numbers its priors top-first (``priors.0`` is the
original ``prior_level_2``); the VQ-VAE keeps the original level order. Renames, HF -> original:

  VQ-VAE  encoders.L.level_blocks.I.downsample_block.{2J+K}        -> ...model.J.K
          ...downsample_block.{2J+1}.resnet_block.D.conv1d_{1,2}   -> ...model.J.1.model.D.model.{1,3}
          ...proj_out                                              -> ...model.{down_t}
          decoders.L.level_blocks.I.proj_in                        -> ...model.0
          ...upsample_block.{2J+K-2}                               -> ...model.J.K  (J >= 1)
          ...upsample_block.{2J-2}.resnet_block.D.conv1d_{1,2}     -> ...model.J.0.model.D.model.{1,3}
          bottleneck.level_blocks.L.codebook                       -> ...k
  prior   metadata_embedding.{bow_genre,artist}_emb                -> y_emb.{...}_emb.emb
          metadata_embedding.*                                     -> y_emb.*
          prior.embed_tokens / prior.fc_proj_out                   -> prior.x_emb / prior.x_out
          transformer layers: layer_norm_{0,1} -> ln_{0,1}; Conv1D weight/bias -> w/b
          conditioner_blocks.embed_tokens / .layer_norm            -> conditioner_blocks.0.x_emb / .ln
          conditioner_blocks.upsampler.proj_in                     -> conditioner_blocks.0.cond.model.0
          ...upsampler.upsample_block.{2J+K-2}                     -> ...cond.model.J.K
          ...resnet_block.D.conv1d_{1,2}                           -> ...cond.model.J.0.blocks.D.model.{1,3}
                                                                      (the released upsamplers' '.blocks.')
          encoder.{start_token,embed_tokens,pos_emb,transformer}   -> prime_prior.{start_token,x_emb,...}
          encoder.proj_in / final_layer_norm / lm_head
              -> prime_state_proj (w/b) / prime_state_ln / prime_x_out
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jukebox_flax.errors import ConvertError

__all__ = ["hf_to_original", "original_to_hf", "split_hf_state_dict", "hf_prefix"]

_CONV1D = r"(attn\.c_attn|attn\.c_enc_kv|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
_WB_TO_HF = {"w": "weight", "b": "bias"}
_HF_TO_WB = {"weight": "w", "bias": "b"}
_RES = {"1": "1", "2": "3"}  # HF conv1d_{1,2} <-> original model.{1,3}
_RES_BACK = {"1": "1", "3": "2"}


def hf_prefix(component: str, n_levels: int = 3) -> str:
    """The HF key prefix of a component ('vqvae.' or 'priors.{p}.' with p = n_levels-1-level)."""
    if component == "vqvae":
        return "vqvae."
    level = int(component.rsplit("_", 1)[1])
    return f"priors.{n_levels - 1 - level}."


# ------------------------------------------------------------------------------------------------
# HF -> original


def _conv_stack_to_original(head: str, rest: str, block: str, first: int, res: str) -> str | None:
    """HF ``{block}.N[.resnet_block.D.conv1d_{1,2}].(weight|bias)`` below an original ``head``:
    ``{head}.{N // 2 + first}.{N % 2}[.{res}.D.model.{1,3}]`` (res: 'model', or the upsamplers' 'blocks')."""
    r = re.fullmatch(rf"{block}\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.(weight|bias)", rest)
    if r:
        n = int(r[1])
        return f"{head}.{n // 2 + first}.{n % 2}.{res}.{r[2]}.model.{_RES[r[3]]}.{r[4]}"
    r = re.fullmatch(rf"{block}\.(\d+)\.(weight|bias)", rest)
    if r:
        n = int(r[1])
        return f"{head}.{n // 2 + first}.{n % 2}.{r[2]}"
    return None


def _vqvae_to_original(key: str, downs_t: Sequence[int]) -> str:
    m = re.fullmatch(r"encoders\.(\d+)\.level_blocks\.(\d+)\.(.*)", key)
    if m:
        head, rest = f"encoders.{m[1]}.level_blocks.{m[2]}.model", m[3]
        r = re.fullmatch(r"proj_out\.(weight|bias)", rest)
        if r:
            return f"{head}.{downs_t[int(m[2])]}.{r[1]}"
        found = _conv_stack_to_original(head, rest, "downsample_block", 0, "model")
        if found:
            return found
    m = re.fullmatch(r"decoders\.(\d+)\.level_blocks\.(\d+)\.(.*)", key)
    if m:
        head, rest = f"decoders.{m[1]}.level_blocks.{m[2]}.model", m[3]
        r = re.fullmatch(r"proj_in\.(weight|bias)", rest)
        if r:
            return f"{head}.0.{r[1]}"
        found = _conv_stack_to_original(head, rest, "upsample_block", 1, "model")
        if found:
            return found
    m = re.fullmatch(r"bottleneck\.level_blocks\.(\d+)\.codebook", key)
    if m:
        return f"bottleneck.level_blocks.{m[1]}.k"
    if re.fullmatch(r"decoders\.\d+\.out\.(weight|bias)", key):
        return key
    raise ConvertError(f"unexpected tensor vqvae.{key} in the Hugging Face checkpoint")


def _transformer_to_original(rest: str) -> str:
    """Keys below ``transformer._attn_mods.I.``."""
    m = re.fullmatch(rf"{_CONV1D}\.(weight|bias)", rest)
    if m:
        return f"{m[1]}.{_HF_TO_WB[m[2]]}"
    m = re.fullmatch(r"layer_norm_([01])\.(weight|bias)", rest)
    if m:
        return f"ln_{m[1]}.{m[2]}"
    raise KeyError(rest)


# HF prior keys renamed one to one (HF -> original); original_to_hf uses the inverse
_PRIOR_FIXED = {
    "metadata_embedding.bow_genre_emb.weight": "y_emb.bow_genre_emb.emb.weight",
    "metadata_embedding.artist_emb.weight": "y_emb.artist_emb.emb.weight",
    "prior.embed_tokens.weight": "prior.x_emb.weight",
    "prior.fc_proj_out.weight": "prior.x_out.weight",
    "prior.pos_emb.pos_emb": "prior.pos_emb.pos_emb",
    "prior.start_token": "prior.start_token",
    "conditioner_blocks.embed_tokens.weight": "conditioner_blocks.0.x_emb.weight",
    "conditioner_blocks.layer_norm.weight": "conditioner_blocks.0.ln.weight",
    "conditioner_blocks.layer_norm.bias": "conditioner_blocks.0.ln.bias",
    "encoder.start_token": "prime_prior.start_token",
    "encoder.embed_tokens.weight": "prime_prior.x_emb.weight",
    "encoder.pos_emb.pos_emb": "prime_prior.pos_emb.pos_emb",
    "encoder.proj_in.weight": "prime_state_proj.w",
    "encoder.proj_in.bias": "prime_state_proj.b",
    "encoder.final_layer_norm.weight": "prime_state_ln.weight",
    "encoder.final_layer_norm.bias": "prime_state_ln.bias",
    "encoder.lm_head.weight": "prime_x_out.weight",
}
_PRIOR_FIXED_TO_HF = {original: hf for hf, original in _PRIOR_FIXED.items()}
_TIMING_EMB = r"((total_length|absolute_pos|relative_pos)_emb\.emb\.weight)"


def _prior_to_original(key: str) -> str:
    if key in _PRIOR_FIXED:
        return _PRIOR_FIXED[key]
    m = re.fullmatch(rf"metadata_embedding\.{_TIMING_EMB}", key)
    if m:
        return f"y_emb.{m[1]}"
    m = re.fullmatch(r"(prior|encoder)\.transformer\._attn_mods\.(\d+)\.(.*)", key)
    if m:
        owner = "prior" if m[1] == "prior" else "prime_prior"
        try:
            return f"{owner}.transformer._attn_mods.{m[2]}.{_transformer_to_original(m[3])}"
        except KeyError:
            pass
    m = re.fullmatch(r"conditioner_blocks\.upsampler\.(.*)", key)
    if m:
        head, rest = "conditioner_blocks.0.cond.model", m[1]
        r = re.fullmatch(r"proj_in\.(weight|bias)", rest)
        if r:
            return f"{head}.0.{r[1]}"
        found = _conv_stack_to_original(head, rest, "upsample_block", 1, "blocks")
        if found:
            return found
    raise ConvertError(f"unexpected tensor {key} in a Hugging Face prior")


def hf_to_original(key: str, downs_t: Sequence[int] = (3, 2, 2)) -> tuple[str, str]:
    """(component, original key) of one HF key, e.g.
    'priors.0.prior.embed_tokens.weight' -> ('prior_level_2', 'prior.x_emb.weight')."""
    n_levels = len(downs_t)
    if key.startswith("vqvae."):
        return "vqvae", _vqvae_to_original(key[len("vqvae.") :], downs_t)
    m = re.match(r"priors\.(\d+)\.(.*)", key)
    if m and int(m[1]) < n_levels:
        return f"prior_level_{n_levels - 1 - int(m[1])}", _prior_to_original(m[2])
    raise ConvertError(f"unexpected tensor {key} in the Hugging Face checkpoint")


def split_hf_state_dict(sd: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """{component: {original key: array}} of a whole HF Jukebox state dict."""
    vq = hf_config.get("vqvae_config", hf_config)
    downs_t = tuple(vq.get("res_downs_t", (3, 2, 2)))
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in sd.items():
        component, original = hf_to_original(key, downs_t)
        out.setdefault(component, {})[original] = value
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# original -> HF (HF's own converter rules; used by tests and for writing HF-style files)


def _conv_stack_to_hf(head: str, rest: str, block: str, first: int, res: str) -> str | None:
    """The inverse of ``_conv_stack_to_original``: ``J.K[.{res}.D.model.{1,3}].(weight|bias)`` below
    an original conv stack -> ``{head}.{block}.{2(J - first) + K}[.resnet_block.D.conv1d_{1,2}]...``."""
    r = re.fullmatch(rf"(\d+)\.(\d+)\.{res}\.(\d+)\.model\.([13])\.(weight|bias)", rest)
    if r:
        n = 2 * (int(r[1]) - first) + int(r[2])
        return f"{head}.{block}.{n}.resnet_block.{r[3]}.conv1d_{_RES_BACK[r[4]]}.{r[5]}"
    r = re.fullmatch(r"(\d+)\.(\d+)\.(weight|bias)", rest)
    if r:
        return f"{head}.{block}.{2 * (int(r[1]) - first) + int(r[2])}.{r[3]}"
    return None


def _original_vqvae_to_hf(key: str) -> str:
    m = re.fullmatch(r"encoders\.(\d+)\.level_blocks\.(\d+)\.model\.(.*)", key)
    if m:
        head = f"encoders.{m[1]}.level_blocks.{m[2]}"
        found = _conv_stack_to_hf(head, m[3], "downsample_block", 0, "model")
        if found:
            return found
        r = re.fullmatch(r"\d+\.(weight|bias)", m[3])
        if r:
            return f"{head}.proj_out.{r[1]}"
    m = re.fullmatch(r"decoders\.(\d+)\.level_blocks\.(\d+)\.model\.(.*)", key)
    if m:
        head = f"decoders.{m[1]}.level_blocks.{m[2]}"
        found = _conv_stack_to_hf(head, m[3], "upsample_block", 1, "model")
        if found:
            return found
        r = re.fullmatch(r"0\.(weight|bias)", m[3])
        if r:
            return f"{head}.proj_in.{r[1]}"
    m = re.fullmatch(r"bottleneck\.level_blocks\.(\d+)\.k", key)
    if m:
        return f"bottleneck.level_blocks.{m[1]}.codebook"
    if re.fullmatch(r"decoders\.\d+\.out\.(weight|bias)", key):
        return key
    raise ConvertError(f"no Hugging Face name for VQ-VAE tensor {key}")


def _original_prior_to_hf(key: str) -> str:
    m = re.fullmatch(r"(prior|prime_prior)\.transformer\._attn_mods\.(\d+)\.(.*)", key)
    if m:
        owner = "prior" if m[1] == "prior" else "encoder"
        rest = m[3]
        r = re.fullmatch(rf"{_CONV1D}\.([wb])", rest)
        if r:
            return f"{owner}.transformer._attn_mods.{m[2]}.{r[1]}.{_WB_TO_HF[r[2]]}"
        r = re.fullmatch(r"ln_([01])\.(weight|bias)", rest)
        if r:
            return f"{owner}.transformer._attn_mods.{m[2]}.layer_norm_{r[1]}.{r[2]}"
    m = re.fullmatch(r"conditioner_blocks\.0\.cond\.model\.(.*)", key)
    if m:
        head = "conditioner_blocks.upsampler"
        found = _conv_stack_to_hf(head, m[1], "upsample_block", 1, "(?:blocks|model)")
        if found:
            return found
        r = re.fullmatch(r"0\.(weight|bias)", m[1])
        if r:
            return f"{head}.proj_in.{r[1]}"
    if key in _PRIOR_FIXED_TO_HF:
        return _PRIOR_FIXED_TO_HF[key]
    m = re.fullmatch(rf"y_emb\.{_TIMING_EMB}", key)
    if m:
        return f"metadata_embedding.{m[1]}"
    raise ConvertError(f"no Hugging Face name for prior tensor {key}")


def original_to_hf(component: str, key: str, n_levels: int = 3) -> str:
    """The HF key of an original key of ``component`` ('vqvae' or 'prior_level_L')."""
    if component == "vqvae":
        return hf_prefix(component, n_levels) + _original_vqvae_to_hf(key)
    return hf_prefix(component, n_levels) + _original_prior_to_hf(key)
