"""Configuration of the VQ-VAE, the priors and a whole Jukebox model.

Configs are frozen dataclasses. They round-trip through JSON (``to_json`` / ``from_json``), can be
built from the original code's hyperparameter dicts (``from_hps``, names as in openai/jukebox
``hparams.py``) or from a Hugging Face Jukebox ``config.json`` (``from_hf``), and ``preset(name)``
returns every released configuration exactly.

Levels follow the original code: level 0 is the finest (hop 8), level 2 the top (hop 128).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .errors import ConfigError

__all__ = [
    "ConfigError",
    "VQVAEConfig",
    "LyricEncoderConfig",
    "PriorConfig",
    "JukeboxConfig",
    "ATTENTION_NAMES",
    "attention_layout",
    "preset",
    "PRESETS",
    "config_from_dict",
]


# The original code numbers its attention functions; this is the one place those ids appear.
ATTENTION_NAMES: dict[int, str] = {
    0: "dense",
    1: "block",
    2: "transpose_block",
    3: "prev_block",
    4: "summary",
    5: "summary_spread",
    6: "cross",  # lyric encoder-decoder attention (5b_lyrics)
    7: "prime",  # attention over the lyric prefix of a single encoder-decoder (1b_lyrics)
}


def _order_10(d: int) -> int:
    pattern = [1, 2, 3] * 3 + ([1, 2, 3] * 3 + [6]) * 7
    return pattern[d % 79]


# attn_order -> (layer index -> attention id), as the original Transformer's ``attn_order`` table.
_ATTN_ORDERS: dict[int, Callable[[int], int]] = {
    0: lambda d: 0,
    1: lambda d: [1, 2][d % 2],
    2: lambda d: [1, 2, 3][d % 3],
    3: lambda d: [1, 4][d % 2],
    4: lambda d: [1, 5][d % 2],
    5: lambda d: [1, 4, 1, 1][d % 4],
    6: lambda d: [1, 2, 3, 6][d % 4],
    7: lambda d: ([1, 2, 3] * 5 + [6])[d % 16],
    8: lambda d: [1, 2, 3, 1, 2, 3, 1, 2, 3, 6][d % 10],
    9: lambda d: [1, 2, 3, 0][d % 4],
    10: _order_10,
    11: lambda d: [6, 6, 0][d % 3] if d % 16 == 15 else [1, 2, 3][d % 3],
    12: lambda d: [7, 7, 0][d % 3] if d % 16 == 15 else [1, 2, 3][d % 3],
}

# Hugging Face ``attention_pattern`` names -> original attn_order.
_HF_PATTERNS: dict[str, int] = {
    "full_dense_attention": 0,
    "raw_column_previous_row_attention": 2,
    "large_separated_enc_dec_w_lyrics": 10,
    "enc_dec_with_lyrics": 12,
}


def attention_layout(attn_order: int, depth: int) -> tuple[str, ...]:
    """The attention type of every layer (names from ``ATTENTION_NAMES``) for an ``attn_order``."""
    if attn_order not in _ATTN_ORDERS:
        raise ConfigError(f"unknown attn_order {attn_order}; known: {sorted(_ATTN_ORDERS)}")
    return tuple(ATTENTION_NAMES[_ATTN_ORDERS[attn_order](d)] for d in range(depth))


class _JsonMixin:
    """JSON round trip for the frozen config dataclasses (tuples survive as tuples)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND}  # type: ignore[attr-defined]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _JsonMixin):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, _JsonMixin) else v for v in value]
            out[f.name] = value
        return out

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        data = dict(data)
        kind = data.pop("kind", cls.KIND)  # type: ignore[attr-defined]
        if kind != cls.KIND:  # type: ignore[attr-defined]
            raise ConfigError(f"expected a {cls.KIND} config, got {kind!r}")  # type: ignore[attr-defined]
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} config fields: {sorted(unknown)}")  # type: ignore[attr-defined]
        return cls(**{k: _tuplify(v) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


# ----------------------------------------------------------------------------------------------
# VQ-VAE


@dataclass(frozen=True)
class VQVAEConfig(_JsonMixin):
    """The hierarchical VQ-VAE (three independent encoder/decoder pairs and EMA codebooks)."""

    KIND = "vqvae"

    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    width: int = 32
    depth: int = 4
    multipliers: tuple[int, ...] = (2, 1, 1)  # original `hvqvae_multipliers`
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: Optional[int] = None
    reverse_decoder_dilation: bool = True
    zero_out: bool = False
    res_scale: bool = False
    input_channels: int = 1
    # training
    l_mu: float = 0.99
    commit: float = 0.02
    revival_threshold: float = 1.0
    loss_fn: str = "lmix"
    lmix_l1: float = 0.0
    lmix_l2: float = 1.0
    lmix_linf: float = 0.02
    linf_k: int = 2048
    spectral: float = 0.0
    multispectral: float = 1.0
    multispec_n_fft: tuple[int, ...] = (2048, 1024, 512)
    multispec_hop_length: tuple[int, ...] = (240, 120, 50)
    multispec_window_size: tuple[int, ...] = (1200, 600, 240)
    sr: int = 44100

    def __post_init__(self) -> None:
        n = self.levels
        for name in ("downs_t", "strides_t", "multipliers"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"vqvae {name} must have {n} entries (levels), got {getattr(self, name)}")
        if self.loss_fn not in ("l1", "l2", "linf", "lmix"):
            raise ConfigError(f"unknown vqvae loss_fn {self.loss_fn!r}")
        if min(self.emb_width, self.l_bins, self.width, self.depth) <= 0:
            raise ConfigError("vqvae emb_width, l_bins, width and depth must be positive")

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Audio samples per token at each level (8, 32, 128 for the released model)."""
        hops, hop = [], 1
        for down, stride in zip(self.downs_t, self.strides_t):
            hop *= stride**down
            hops.append(hop)
        return tuple(hops)

    @property
    def hop_length(self) -> int:
        """Samples per token at the top level: input lengths must be a multiple of this."""
        return self.hop_lengths[-1]

    def level_width(self, level: int) -> int:
        return self.width * self.multipliers[level]

    def level_depth(self, level: int) -> int:
        return self.depth * self.multipliers[level]

    @classmethod
    def from_hps(cls, hps: Mapping[str, Any]) -> "VQVAEConfig":
        """From an original hyperparameter dict (``hparams.py`` names)."""
        levels = int(hps["levels"])
        mult = hps.get("hvqvae_multipliers") or [1] * levels
        return cls(
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

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "VQVAEConfig":
        """From a Hugging Face ``JukeboxVQVAEConfig`` dict."""
        return cls(
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


# ----------------------------------------------------------------------------------------------
# Priors


@dataclass(frozen=True)
class LyricEncoderConfig(_JsonMixin):
    """The separate lyric encoder of a 5b_lyrics-style prior (original ``prime_*`` hyperparameters)."""

    KIND = "lyric_encoder"

    width: int = 1280
    depth: int = 18
    heads: int = 4
    attn_order: int = 2
    blocks: int = 32
    init_scale: float = 0.7
    m_attn: float = 0.25
    m_mlp: float = 1.0
    zero_out: bool = False
    res_scale: bool = False


@dataclass(frozen=True)
class PriorConfig(_JsonMixin):
    """One transformer prior: the top level (with or without lyrics) or an upsampler.

    ``lyrics`` selects the lyric path: ``"none"``, ``"separate"`` (a lyric encoder feeding cross
    attention, 5b_lyrics) or ``"single"`` (one transformer over [lyrics ; music], 1b_lyrics).
    """

    KIND = "prior"

    level: int
    n_ctx: int  # music tokens per window
    width: int
    depth: int
    heads: int
    attn_order: int
    blocks: int
    init_scale: float = 1.0
    m_attn: float = 0.25
    m_mlp: float = 1.0
    zero_out: bool = False
    res_scale: bool = False
    spread: Optional[int] = None
    bins: int = 2048  # music codebook size (the VQ-VAE's l_bins)
    # the VQ-VAE's down-sampling (sets hop length and the upsampler's x4 conditioning)
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    # upsampler conditioner on the level above
    cond_width: int = 128  # defaults are the original DEFAULTS; the released upsamplers use 1024/16/3/8
    cond_depth: int = 3
    cond_m_conv: float = 1.0
    cond_dilation_growth_rate: int = 1
    cond_dilation_cycle: Optional[int] = None
    cond_res_scale: bool = False
    cond_zero_out: bool = False
    # labels: artist, genre and (top level) timing
    labels: bool = True
    labels_v3: bool = False
    genre_bins: int = 120
    artist_bins: int = 4111
    t_bins: int = 128
    max_bow_genre_size: int = 5
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None
    sr: int = 44100
    # lyrics
    lyrics: str = "none"
    n_tokens: int = 0
    n_vocab: int = 80
    encoder: Optional[LyricEncoderConfig] = None
    prime_loss_fraction: float = 0.0
    # output head
    merged_decoder: bool = False  # True: untied x_out and no conditioning re-added after the transformer
    fp16_params: bool = False
    alignment_layer: Optional[int] = None
    alignment_head: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.encoder, Mapping):
            object.__setattr__(self, "encoder", LyricEncoderConfig.from_dict(self.encoder))
        if self.level < 0 or self.level >= len(self.downs_t):
            raise ConfigError(f"prior level {self.level} outside 0..{len(self.downs_t) - 1}")
        if self.lyrics not in ("none", "separate", "single"):
            raise ConfigError(f"unknown lyrics mode {self.lyrics!r}: use 'none', 'separate' or 'single'")
        if self.lyrics != "none" and self.n_tokens <= 0:
            raise ConfigError(f"lyrics={self.lyrics!r} needs n_tokens > 0")
        if self.lyrics == "separate" and self.encoder is None:
            raise ConfigError("lyrics='separate' needs an encoder config")
        if self.lyrics != "none" and self.is_upsampler:
            raise ConfigError("upsamplers (levels below the top) take no lyrics")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if int(self.m_attn * self.width) % self.heads:
            raise ConfigError(f"attention width {int(self.m_attn * self.width)} is not divisible by heads {self.heads}")
        if self.total_ctx % self.blocks:
            raise ConfigError(f"n_ctx {self.total_ctx} is not divisible by blocks {self.blocks}")
        attention_layout(self.attn_order, self.depth)  # validates attn_order
        if self.encoder is not None:
            attention_layout(self.encoder.attn_order, self.encoder.depth)
            if self.n_tokens % self.encoder.blocks:
                raise ConfigError(f"n_tokens {self.n_tokens} is not divisible by encoder blocks {self.encoder.blocks}")
        layout = self.attention_layout
        if "cross" in layout and self.lyrics != "separate":
            raise ConfigError(f"attn_order {self.attn_order} has cross attention, which needs lyrics='separate'")
        if "prime" in layout and self.lyrics != "single":
            raise ConfigError(f"attn_order {self.attn_order} has prime attention, which needs lyrics='single'")
        if self.has_timing and (self.min_duration is None or self.max_duration is None):
            raise ConfigError("a top-level prior with labels needs min_duration and max_duration")

    # -- derived quantities ------------------------------------------------------------------
    @property
    def is_upsampler(self) -> bool:
        """Upsamplers condition on the codes of the level above (original ``x_cond``)."""
        return self.level != len(self.downs_t) - 1

    @property
    def has_timing(self) -> bool:
        """The top level adds total-length / position timing signals (original ``include_time_signal``)."""
        return self.labels and not self.is_upsampler

    @property
    def hop_length(self) -> int:
        """Audio samples per token at this level (original ``raw_to_tokens``)."""
        hop = 1
        for down, stride in zip(self.downs_t[: self.level + 1], self.strides_t[: self.level + 1]):
            hop *= stride**down
        return hop

    @property
    def sample_length(self) -> int:
        """Audio samples covered by one window of n_ctx tokens."""
        return self.n_ctx * self.hop_length

    @property
    def cond_downsample(self) -> int:
        """Tokens of this level per token of the level above (upsamplers)."""
        return self.strides_t[self.level + 1] ** self.downs_t[self.level + 1]

    @property
    def cond_down_t(self) -> int:
        return self.downs_t[self.level + 1]

    @property
    def cond_stride_t(self) -> int:
        return self.strides_t[self.level + 1]

    @property
    def prime_len(self) -> int:
        """Lyric positions in front of the music (single encoder-decoder), else 0."""
        return self.n_tokens if self.lyrics == "single" else 0

    @property
    def total_ctx(self) -> int:
        """Sequence length the transformer sees (lyrics + music for a single encoder-decoder)."""
        return self.n_ctx + self.prime_len

    @property
    def block_ctx(self) -> int:
        return self.total_ctx // self.blocks

    @property
    def n_state(self) -> int:
        """Attention width (original ``m_attn * width``)."""
        return int(self.m_attn * self.width)

    @property
    def total_bins(self) -> int:
        """Vocabulary of the token embedding / output head (merged lyrics + music for 'single')."""
        return self.n_vocab + self.bins if self.lyrics == "single" else self.bins

    @property
    def attention_layout(self) -> tuple[str, ...]:
        return attention_layout(self.attn_order, self.depth)

    @property
    def y_length(self) -> int:
        """Length of the label vector y: 4 + max_bow_genre_size + n_tokens (0 without labels)."""
        if not self.labels:
            return 0
        return 4 + self.max_bow_genre_size + self.n_tokens

    @property
    def labeller_version(self) -> str:
        return "v3" if self.labels_v3 else "v2"

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_hps(cls, hps: Mapping[str, Any], vqvae: Optional[VQVAEConfig] = None) -> "PriorConfig":
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
        return cls(
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

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], vqvae: VQVAEConfig) -> "PriorConfig":
        """From one Hugging Face ``JukeboxPriorConfig`` dict (an entry of ``prior_config_list``).

        HF numbers priors top-first (HF level 0 = original level 2); we use the original levels.
        """
        n_levels = len(vqvae.downs_t)
        level = n_levels - 1 - int(cfg["level"])
        pattern = cfg["attention_pattern"]
        if pattern not in _HF_PATTERNS:
            raise ConfigError(f"unknown HF attention_pattern {pattern!r}")
        n_tokens = int(cfg.get("nb_relevant_lyric_tokens", 0))
        single = bool(cfg.get("is_encoder_decoder", False)) and n_tokens > 0
        enc = cfg.get("encoder_config")
        lyrics = "single" if single else ("separate" if enc and n_tokens > 0 else "none")
        encoder = None
        if lyrics == "separate":
            encoder = LyricEncoderConfig(
                width=int(enc["hidden_size"]),
                depth=int(enc["num_layers"]),
                heads=int(enc["n_heads"]),
                attn_order=_HF_PATTERNS[enc["attention_pattern"]],
                blocks=int(enc["blocks"]),
                init_scale=float(enc.get("init_scale", 1.0)),
                m_attn=float(enc.get("attention_multiplier", 0.25)),
                m_mlp=float(enc.get("mlp_multiplier", 1.0)),
                zero_out=bool(enc.get("zero_out", False)),
                res_scale=bool(enc.get("attn_res_scale", False)),
            )
        dims = cfg.get("metadata_dims") or (0, 0)
        upsampler = level != n_levels - 1
        return cls(
            level=level,
            n_ctx=int(cfg["n_ctx"]),
            width=int(cfg["hidden_size"]),
            depth=int(cfg["num_layers"]),
            heads=int(cfg["n_heads"]),
            attn_order=_HF_PATTERNS[pattern],
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


# ----------------------------------------------------------------------------------------------
# Whole model


@dataclass(frozen=True)
class JukeboxConfig(_JsonMixin):
    """A whole model: the VQ-VAE and one prior per level (``priors[l]`` is level l; 0 = finest)."""

    KIND = "jukebox"

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    priors: tuple[PriorConfig, ...] = ()
    hop_fraction: tuple[float, ...] = (0.5, 0.5, 0.125)

    def __post_init__(self) -> None:
        if isinstance(self.vqvae, Mapping):
            object.__setattr__(self, "vqvae", VQVAEConfig.from_dict(self.vqvae))
        priors = tuple(PriorConfig.from_dict(p) if isinstance(p, Mapping) else p for p in self.priors)
        object.__setattr__(self, "priors", priors)
        if len(priors) != self.vqvae.levels:
            raise ConfigError(f"a whole model needs {self.vqvae.levels} priors, got {len(priors)}")
        for level, prior in enumerate(priors):
            if prior.level != level:
                raise ConfigError(f"priors[{level}] has level {prior.level}")
            if prior.bins != self.vqvae.l_bins:
                raise ConfigError(f"prior level {level} has {prior.bins} bins, the VQ-VAE {self.vqvae.l_bins}")
        if len(self.hop_fraction) != self.vqvae.levels:
            raise ConfigError(f"hop_fraction needs {self.vqvae.levels} entries")

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "JukeboxConfig":
        """From a Hugging Face ``JukeboxConfig`` dict (a ``config.json`` of model_type 'jukebox')."""
        vq = VQVAEConfig.from_hf(cfg["vqvae_config"])
        shared = {
            k: cfg[k]
            for k in ("sampling_rate", "timing_dims", "min_duration", "max_duration", "max_nb_genres",
                      "metadata_conditioning")
            if k in cfg
        }
        priors = [PriorConfig.from_hf({**p, **shared}, vq) for p in cfg["prior_config_list"]]
        priors.sort(key=lambda p: p.level)
        hop = cfg.get("hop_fraction") or cfg["vqvae_config"].get("hop_fraction", [0.125, 0.5, 0.5])
        return cls(vqvae=vq, priors=tuple(priors), hop_fraction=tuple(reversed(hop)))


def config_from_dict(data: Mapping[str, Any]):
    """Rebuild any config from its ``to_dict`` form, dispatching on its ``kind``."""
    kinds = {c.KIND: c for c in (VQVAEConfig, PriorConfig, JukeboxConfig, LyricEncoderConfig)}
    kind = data.get("kind")
    if kind not in kinds:
        raise ConfigError(f"unknown config kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_dict(data)


# ----------------------------------------------------------------------------------------------
# Released presets (openai/jukebox hparams.py)

_V2_LABELS = dict(labels_v3=False, genre_bins=120, artist_bins=4111, t_bins=128, max_bow_genre_size=5, n_vocab=80)
_V3_LABELS = dict(labels_v3=True, genre_bins=604, artist_bins=7898, t_bins=64, max_bow_genre_size=1, n_vocab=79)


def _upsampler(level: int) -> PriorConfig:
    return PriorConfig(
        level=level, n_ctx=8192, width=1920, depth=72, heads=1, attn_order=2, blocks=128, init_scale=0.4,
        cond_width=1024, cond_depth=16, cond_dilation_growth_rate=3, cond_dilation_cycle=8,
        cond_res_scale=(level == 1), **_V2_LABELS,
    )


def _prior_5b() -> PriorConfig:
    return PriorConfig(
        level=2, n_ctx=8192, width=4800, depth=72, heads=8, attn_order=2, blocks=128, init_scale=0.1,
        min_duration=60.0, max_duration=600.0, merged_decoder=True, fp16_params=True, **_V2_LABELS,
    )


def _prior_5b_lyrics() -> PriorConfig:
    return PriorConfig(
        level=2, n_ctx=8192, width=4800, depth=79, heads=8, attn_order=10, blocks=128, init_scale=0.1,
        min_duration=23.8, max_duration=600.0, merged_decoder=True, fp16_params=True,
        lyrics="separate", n_tokens=512, encoder=LyricEncoderConfig(), prime_loss_fraction=0.4,
        alignment_layer=68, alignment_head=2, **_V2_LABELS,
    )


def _prior_1b_lyrics() -> PriorConfig:
    return PriorConfig(
        level=2, n_ctx=6144, width=2048, depth=72, heads=2, attn_order=12, blocks=64, init_scale=0.2,
        min_duration=17.84, max_duration=600.0, lyrics="single", n_tokens=384, prime_loss_fraction=0.4,
        alignment_layer=63, alignment_head=0, **_V3_LABELS,
    )


def _whole(top: Callable[[], PriorConfig]) -> JukeboxConfig:
    return JukeboxConfig(vqvae=VQVAEConfig(), priors=(_upsampler(0), _upsampler(1), top()))


PRESETS: dict[str, Callable[[], Any]] = {
    "vqvae": VQVAEConfig,
    "upsampler_level_0": lambda: _upsampler(0),
    "upsampler_level_1": lambda: _upsampler(1),
    "prior_5b": _prior_5b,
    "prior_5b_lyrics": _prior_5b_lyrics,
    "prior_1b_lyrics": _prior_1b_lyrics,
    "1b_lyrics": lambda: _whole(_prior_1b_lyrics),
    "5b": lambda: _whole(_prior_5b),
    "5b_lyrics": lambda: _whole(_prior_5b_lyrics),
}


def preset(name: str):
    """A released configuration by name (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
