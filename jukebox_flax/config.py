"""Configuration of the VQ-VAE, the priors and a whole Jukebox model.

Configs are frozen dataclasses. They round-trip through JSON (``to_json`` / ``from_json``, the
``config.json`` of a model directory) and ``preset(name)`` returns every released configuration
exactly. The converter builds them from the original code's hyperparameter dicts and from Hugging
Face ``config.json`` files (``jukebox_flax_convert.hps`` / ``.hf_config``).

Fields that only steer training (loss weights, the codebook EMA rate, the original's fp16 storage)
carry ``metadata={"training_only": True}`` (see ``training_only_fields``): two configs that differ
only in those describe the same model.

Levels follow the original code: level 0 is the finest (hop 8), level 2 the top (hop 128).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "vqvae_mismatch",
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
    "training_only_fields",
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


def attention_layout(attn_order: int, depth: int) -> tuple[str, ...]:
    """The attention type of every layer (names from ``ATTENTION_NAMES``) for an ``attn_order``."""
    if attn_order not in _ATTN_ORDERS:
        raise ConfigError(f"unknown attn_order {attn_order}; known: {sorted(_ATTN_ORDERS)}")
    return tuple(ATTENTION_NAMES[_ATTN_ORDERS[attn_order](d)] for d in range(depth))


def _training_only(default: Any) -> Any:
    """A field that steers training only: the model's params and outputs do not depend on it."""
    return field(default=default, metadata={"training_only": True})


def training_only_fields(config: Any) -> frozenset[str]:
    """Names of the fields of a config (class or instance) marked ``training_only``."""
    return frozenset(f.name for f in dataclasses.fields(config) if f.metadata.get("training_only"))


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
    dilation_cycle: int | None = None
    reverse_decoder_dilation: bool = True
    zero_out: bool = False
    res_scale: bool = False
    input_channels: int = 1
    # training: the codebook EMA rate and revival, the loss and its weights
    l_mu: float = _training_only(0.99)
    commit: float = _training_only(0.02)
    revival_threshold: float = _training_only(1.0)
    loss_fn: str = _training_only("lmix")
    lmix_l1: float = _training_only(0.0)
    lmix_l2: float = _training_only(1.0)
    lmix_linf: float = _training_only(0.02)
    linf_k: int = _training_only(2048)
    spectral: float = _training_only(0.0)
    multispectral: float = _training_only(1.0)
    multispec_n_fft: tuple[int, ...] = _training_only((2048, 1024, 512))
    multispec_hop_length: tuple[int, ...] = _training_only((240, 120, 50))
    multispec_window_size: tuple[int, ...] = _training_only((1200, 600, 240))
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
    spread: int | None = None
    bins: int = 2048  # music codebook size (the VQ-VAE's l_bins)
    # the VQ-VAE's down-sampling (sets hop length and the upsampler's x4 conditioning)
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    # upsampler conditioner on the level above
    cond_width: int = 128  # defaults are the original DEFAULTS; the released upsamplers use 1024/16/3/8
    cond_depth: int = 3
    cond_m_conv: float = 1.0
    cond_dilation_growth_rate: int = 1
    cond_dilation_cycle: int | None = None
    cond_res_scale: bool = False
    cond_zero_out: bool = False
    # labels: artist, genre and (top level) timing
    labels: bool = True
    labels_v3: bool = False
    genre_bins: int = 120
    artist_bins: int = 4111
    t_bins: int = 128
    max_bow_genre_size: int = 5
    min_duration: float | None = None
    max_duration: float | None = None
    sr: int = 44100
    # lyrics
    lyrics: str = "none"
    n_tokens: int = 0
    n_vocab: int = 80
    encoder: LyricEncoderConfig | None = None
    prime_loss_fraction: float = _training_only(0.0)  # weight of the lyric encoder's loss
    # output head
    merged_decoder: bool = False  # True: untied x_out and no conditioning re-added after the transformer
    fp16_params: bool = _training_only(False)  # the original stored these params in fp16 while training
    alignment_layer: int | None = None
    alignment_head: int | None = None

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


def vqvae_mismatch(prior: PriorConfig, vqvae: VQVAEConfig) -> str | None:
    """Why ``prior`` cannot model ``vqvae``'s codes (hop lengths, codebook size, sample rate), as a
    phrase after the prior's name ("has 64 bins, the VQ-VAE's codebook 128"), or None when it can."""
    if tuple(prior.downs_t) != tuple(vqvae.downs_t) or tuple(prior.strides_t) != tuple(vqvae.strides_t):
        return (
            f"has downs_t/strides_t {list(prior.downs_t)}/{list(prior.strides_t)}, "
            f"the VQ-VAE {list(vqvae.downs_t)}/{list(vqvae.strides_t)} (hop lengths differ)"
        )
    if prior.bins != vqvae.l_bins:
        return f"has {prior.bins} bins, the VQ-VAE's codebook {vqvae.l_bins}"
    if prior.sr != vqvae.sr:
        return f"works at {prior.sr} Hz, the VQ-VAE at {vqvae.sr} Hz"
    return None


def config_from_dict(data: Mapping[str, Any]):
    """Rebuild any config from its ``to_dict`` form, dispatching on its ``kind``."""
    kinds = {c.KIND: c for c in (VQVAEConfig, PriorConfig, JukeboxConfig, LyricEncoderConfig)}
    kind = data.get("kind")
    if kind not in kinds:
        raise ConfigError(f"unknown config kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_dict(data)


# ----------------------------------------------------------------------------------------------
# Released presets (openai/jukebox hparams.py)

_V2_LABELS: dict[str, Any] = dict(
    labels_v3=False, genre_bins=120, artist_bins=4111, t_bins=128, max_bow_genre_size=5, n_vocab=80
)
_V3_LABELS: dict[str, Any] = dict(
    labels_v3=True, genre_bins=604, artist_bins=7898, t_bins=64, max_bow_genre_size=1, n_vocab=79
)


def _upsampler(level: int) -> PriorConfig:
    return PriorConfig(
        level=level,
        n_ctx=8192,
        width=1920,
        depth=72,
        heads=1,
        attn_order=2,
        blocks=128,
        init_scale=0.4,
        cond_width=1024,
        cond_depth=16,
        cond_dilation_growth_rate=3,
        cond_dilation_cycle=8,
        cond_res_scale=(level == 1),
        **_V2_LABELS,
    )


def _prior_5b() -> PriorConfig:
    return PriorConfig(
        level=2,
        n_ctx=8192,
        width=4800,
        depth=72,
        heads=8,
        attn_order=2,
        blocks=128,
        init_scale=0.1,
        min_duration=60.0,
        max_duration=600.0,
        merged_decoder=True,
        fp16_params=True,
        **_V2_LABELS,
    )


def _prior_5b_lyrics() -> PriorConfig:
    return PriorConfig(
        level=2,
        n_ctx=8192,
        width=4800,
        depth=79,
        heads=8,
        attn_order=10,
        blocks=128,
        init_scale=0.1,
        min_duration=23.8,
        max_duration=600.0,
        merged_decoder=True,
        fp16_params=True,
        lyrics="separate",
        n_tokens=512,
        encoder=LyricEncoderConfig(),
        prime_loss_fraction=0.4,
        alignment_layer=68,
        alignment_head=2,
        **_V2_LABELS,
    )


def _prior_1b_lyrics() -> PriorConfig:
    return PriorConfig(
        level=2,
        n_ctx=6144,
        width=2048,
        depth=72,
        heads=2,
        attn_order=12,
        blocks=64,
        init_scale=0.2,
        min_duration=17.84,
        max_duration=600.0,
        lyrics="single",
        n_tokens=384,
        prime_loss_fraction=0.4,
        alignment_layer=63,
        alignment_head=0,
        **_V3_LABELS,
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
