"""Conditioning of a prior: labels (artist, genre, timing) and the codes of the level above.

Two modules, as the original ``prior/conditioners.py``:

- ``LabelConditioner`` turns the label part of y (total_length, offset, length, artist, genre slots)
  into the start embedding [B, 1, W] (artist + bag of genres) and, at the top level, the timing
  signal [B, n_ctx, W] (three ``RangeEmbedding`` lookups: total length, absolute and relative position).
- ``UpperConditioner`` (the original ``Conditioner``, upsamplers only) embeds the codes of the level
  above and upsamples them x4 with a decoder-style conv stack, giving [B, n_ctx, W].

Both always compute in float32 (the original keeps them in fp32 even when sampling in fp16).
Layout is NTC (time before channels) throughout.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..config import PriorConfig
from ..errors import LabelError
from ..vqvae.encdec import DecoderConvBlock

__all__ = [
    "LabelError",
    "LabelConditioner",
    "UpperConditioner",
    "range_bins",
    "bin_thresholds",
    "timing_ranges",
    "check_labels",
]


def _axes(init, names: tuple[str, ...]):
    """``init`` whose params carry logical axis names (see ``sharding.py``)."""
    return nn.with_logical_partitioning(init, names)


def layer_norm(name: str | None = None) -> nn.LayerNorm:
    """torch.nn.LayerNorm(eps=1e-5) in fp32; exact two-pass variance for parity."""
    return nn.LayerNorm(
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=jnp.float32,
        name=name,
        scale_init=_axes(nn.initializers.ones, ("embed",)),
        bias_init=_axes(nn.initializers.zeros, ("embed",)),
    )


# ----------------------------------------------------------------------------------------------
# Labels


def timing_ranges(config: PriorConfig) -> dict[str, tuple[float, float]]:
    """[min, max) of the three timing signals, in samples (relative position: [0, 1)).

    Python doubles, as the original computes them; they are rounded to float32 where they meet
    the float32 positions, exactly like torch does.
    """
    sr = config.sr
    if config.min_duration is None or config.max_duration is None:
        raise LabelError("timing signals need the prior's min_duration and max_duration")
    return {
        "total_length": (config.min_duration * sr, config.max_duration * sr),
        "absolute_pos": (0.0, config.max_duration * sr),
        "relative_pos": (0.0, 1.0),
    }


@functools.cache
def bin_thresholds(bins: int, lo: float, hi: float) -> np.ndarray:
    """float32 [bins - 1]: entry j-1 is the smallest float32 position whose bin is >= j.

    The original bins a float32 position p as ``floor(bins * ((p - lo) / (hi - lo)))`` with
    float32 operations (``lo``/``hi`` Python doubles rounded to float32, ``hi - lo`` rounded once).
    That map is monotone in p, so the bin equals the number of thresholds <= p. Comparing against
    thresholds computed here with numpy's exact IEEE float32 arithmetic gives the original's bins
    bit for bit on every backend (XLA rewrites a division by a constant into a multiplication by
    its reciprocal, which moves bin edges).
    """
    f = np.float32

    def bin_of(bits: np.ndarray) -> np.ndarray:
        p = bits.astype(np.uint32).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.floor(f(bins) * ((p - f(lo)) / f(hi - lo)))

    # Binary search over the bit patterns of non-negative float32s (ordered like their values).
    want = np.arange(1, bins, dtype=np.float32)
    low = np.zeros(bins - 1, np.int64)
    high = np.full(bins - 1, 0x7F7FFFFF, np.int64)  # the largest finite float32
    while (low < high).any():
        mid = (low + high) // 2
        ok = bin_of(mid) >= want
        high, low = np.where(ok, mid, high), np.where(ok, low, mid + 1)
    return low.astype(np.uint32).view(np.float32)


def _keep_rounding(x: jax.Array) -> jax.Array:
    """Identity that stops XLA fusing a product into the following add as one FMA.

    The original rounds ``(end - start) * i / n`` before adding ``start``; XLA on CPU would
    otherwise contract the two into a fused multiply-add and round once. (NaN -> 0 never happens.)
    """
    return jnp.where(jnp.isnan(x), jnp.float32(0.0), x)


def range_bins(
    start: jax.Array,
    end: jax.Array | None,
    n_time: int,
    bins: int,
    lo: float,
    hi: float,
    clamp: bool = False,
) -> jax.Array:
    """The original ``RangeEmbedding`` binning: int32 bin ids [B, n_time].

    ``start``/``end`` are float32 [B, 1]. Positions interpolate linearly from start towards end,
    ``start + (end - start) * (i / n_time)`` in float32 with each step rounded, then are binned
    (see ``bin_thresholds``). ``clamp`` clamps ``end`` into [lo, hi] first (relative position).
    Positions outside [lo, hi) (which the original rejects) land in the first or last bin.
    """
    start = start.astype(jnp.float32)
    if n_time == 1:
        position = start
    else:
        assert end is not None, "a timing signal over n_time > 1 bins needs its end"
        end = end.astype(jnp.float32)
        if clamp:
            end = jnp.clip(end, np.float32(lo), np.float32(hi))
        interpolation = np.arange(n_time, dtype=np.float32)[None, :] / np.float32(n_time)  # exact, on host
        position = start + _keep_rounding((end - start) * interpolation)
    thresholds = jnp.asarray(bin_thresholds(bins, float(lo), float(hi)))
    return jnp.searchsorted(thresholds, position, side="right").astype(jnp.int32)


def check_labels(y: np.ndarray, config: PriorConfig) -> None:
    """Host-side check of a label batch [B, Y] (the original's asserts), raising ``LabelError``.

    Inside jit an out-of-range id would silently give NaN (``jnp.take``'s fill mode); the public
    API calls this first so a user sees which entry is wrong.
    """
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != config.y_length:
        raise LabelError(
            f"y must have shape [batch, {config.y_length}] (4 + max_bow_genre_size {config.max_bow_genre_size}"
            f" + n_tokens {config.n_tokens}), got {list(y.shape)}"
        )
    g = config.max_bow_genre_size
    artist, genre = y[:, 3], y[:, 4 : 4 + g]
    if ((artist < 0) | (artist >= config.artist_bins)).any():
        raise LabelError(f"artist id outside [0, {config.artist_bins}): {artist.tolist()}")
    if ((genre < -1) | (genre >= config.genre_bins)).any():
        raise LabelError(f"genre id outside [0, {config.genre_bins}) (or -1 for an empty slot): {genre.tolist()}")
    if config.lyrics != "none":
        lyrics = y[:, 4 + g :]
        if ((lyrics < 0) | (lyrics >= config.n_vocab)).any():
            raise LabelError(f"lyric token outside [0, {config.n_vocab})")
    if config.has_timing:
        (t_lo, t_hi), (_, a_hi) = timing_ranges(config)["total_length"], timing_ranges(config)["absolute_pos"]
        total, offset, length = (y[:, i].astype(np.float64) for i in range(3))
        if ((total < t_lo) | (total >= t_hi)).any():
            raise LabelError(
                f"total_length {y[:, 0].tolist()} samples outside [{t_lo:.0f}, {t_hi:.0f}) "
                f"(min_duration {config.min_duration} s, max_duration {config.max_duration} s)"
            )
        if ((offset < 0) | (offset >= a_hi) | (offset + length > a_hi)).any():
            raise LabelError(f"offset/length {y[:, 1:3].tolist()} outside [0, {a_hi:.0f}) samples")
        if (offset >= total).any():
            raise LabelError(f"offset {y[:, 1].tolist()} is not before total_length {y[:, 0].tolist()}")


class LabelConditioner(nn.Module):
    """Artist + bag-of-genre start embedding and (top level) the timing signal.

    Input: the label part of y, int [B, 4 + max_bow_genre_size]. Output: (start [B, 1, W],
    timing [B, n_ctx, W] or None for upsamplers).
    """

    config: PriorConfig

    @nn.compact
    def __call__(self, labels: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        c = self.config
        std = 0.01 * c.init_scale

        def embed(bins: int, name: str) -> nn.Embed:
            init = _axes(nn.initializers.normal(std), ("labels", "embed"))
            return nn.Embed(bins, c.width, dtype=jnp.float32, embedding_init=init, name=name)

        total_length, offset, length = labels[:, 0:1], labels[:, 1:2], labels[:, 2:3]
        artist, genre = labels[:, 3:4], labels[:, 4:]
        # Empty genre slots are -1: look up id 0 and mask it out.
        mask = (genre >= 0).astype(jnp.float32)[..., None]
        genre_emb = (embed(c.genre_bins, "genre_emb")(jnp.maximum(genre, 0)) * mask).sum(axis=1, keepdims=True)
        start = genre_emb + embed(c.artist_bins, "artist_emb")(artist)
        if not c.has_timing:
            return start, None

        ranges = timing_ranges(c)
        total = total_length.astype(jnp.float32)
        begin = offset.astype(jnp.float32)
        end = (offset + length).astype(jnp.float32)
        total_bins = range_bins(total, None, 1, c.t_bins, *ranges["total_length"])
        abs_bins = range_bins(begin, end, c.n_ctx, c.t_bins, *ranges["absolute_pos"])
        rel_bins = range_bins(begin / total, end / total, c.n_ctx, c.t_bins, *ranges["relative_pos"], clamp=True)
        timing = (
            embed(c.t_bins, "total_length_emb")(total_bins)
            + embed(c.t_bins, "absolute_pos_emb")(abs_bins)
            + embed(c.t_bins, "relative_pos_emb")(rel_bins)
        )
        return start, timing


# ----------------------------------------------------------------------------------------------
# Codes of the level above (upsamplers)


class UpperConditioner(nn.Module):
    """Embeds the codes of the level above and upsamples them to this level (original ``Conditioner``).

    int [B, n_ctx / cond_downsample] -> float32 [B, n_ctx, W]:
    x_emb -> conv k3 (W -> cond_width) -> down_t x [Resnet1D (dilation growth ** (d % cycle), not
    reversed; res scale 1/sqrt(depth) when cond_res_scale), ConvTranspose k=2s stride s] -> LayerNorm.
    """

    config: PriorConfig

    @nn.compact
    def __call__(self, upper: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Embed(
            c.bins,
            c.width,
            dtype=jnp.float32,
            name="x_emb",
            embedding_init=_axes(nn.initializers.normal(0.02 * c.init_scale), ("vocab", "embed")),
        )(upper)
        # The VQ-VAE's decoder block, with dilations NOT reversed and res blocks named `blocks`
        # (the original builds it with checkpoint_res=1).
        x = DecoderConvBlock(
            out_width=c.width,
            down_t=c.cond_down_t,
            stride_t=c.cond_stride_t,
            width=c.cond_width,
            depth=c.cond_depth,
            m_conv=c.cond_m_conv,
            dilation_growth_rate=c.cond_dilation_growth_rate,
            dilation_cycle=c.cond_dilation_cycle,
            zero_out=c.cond_zero_out,
            res_scale=c.cond_res_scale,
            reverse_dilation=False,
            res_block_name="blocks",
            name="cond",
        )(x)
        return layer_norm("ln")(x.astype(jnp.float32))
