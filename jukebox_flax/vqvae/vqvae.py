"""The hierarchical VQ-VAE as one Flax Linen module (openai/jukebox ``vqvae/vqvae.py``).

Three independent encoder/decoder pairs (``encoders_L`` / ``decoders_L``, L = 0 finest .. 2 top)
and one codebook per level (``bottleneck/level_blocks_L/k``). Audio is ``[N, T, 1]``; latents are
``[N, T / hop_L, emb_width]``; codes are int32 ``[N, T / hop_L]``.

Use it as a pure function: ``VQVAEModule(config).apply({'params': p}, x, method='encode')``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..config import VQVAEConfig
from . import bottleneck as bn
from .encdec import Decoder, Encoder

__all__ = ["VQVAEModule", "BottleneckBlock", "Bottleneck"]


class BottleneckBlock(nn.Module):
    """Holds one level's codebook ``k [bins, emb_width]`` (zeros until training's ``init_codebook``)."""

    bins: int
    emb_width: int

    def setup(self) -> None:
        self.k = self.param("k", nn.initializers.zeros, (self.bins, self.emb_width), jnp.float32)

    def __call__(self) -> jax.Array:
        return self.k


class Bottleneck(nn.Module):
    bins: int
    emb_width: int
    levels: int

    def setup(self) -> None:
        self.level_blocks = [BottleneckBlock(self.bins, self.emb_width) for _ in range(self.levels)]

    def __call__(self) -> list[jax.Array]:
        return [block() for block in self.level_blocks]


class VQVAEModule(nn.Module):
    """Encoders, decoders and codebooks of all levels."""

    config: VQVAEConfig

    def setup(self) -> None:
        c = self.config
        self.encoders = [
            Encoder(
                c.emb_width,
                c.downs_t[: L + 1],
                c.strides_t[: L + 1],
                c.level_width(L),
                c.level_depth(L),
                c.m_conv,
                c.dilation_growth_rate,
                c.dilation_cycle,
                c.zero_out,
                c.res_scale,
            )
            for L in range(c.levels)
        ]
        self.decoders = [
            Decoder(
                c.input_channels,
                c.downs_t[: L + 1],
                c.strides_t[: L + 1],
                c.level_width(L),
                c.level_depth(L),
                c.m_conv,
                c.dilation_growth_rate,
                c.dilation_cycle,
                c.zero_out,
                c.res_scale,
                c.reverse_decoder_dilation,
            )
            for L in range(c.levels)
        ]
        self.bottleneck = Bottleneck(c.l_bins, c.emb_width, c.levels)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        """Reconstructions from every level ``[N, T, 1]`` (eval mode; used to build the params)."""
        codes = self.encode(x)
        return [self.decode(codes[L:], start_level=L) for L in range(self.config.levels)]

    # -- pieces ----------------------------------------------------------------------------------
    def encoder_block_outputs(self, x: jax.Array, level: int) -> list[jax.Array]:
        """Every level block's output of encoder ``level`` (the last one is the latent)."""
        return self.encoders[level](x)

    def encode_latents(self, x: jax.Array, levels: Sequence[int] | None = None) -> list[jax.Array]:
        """Pre-quantisation latents ``[N, T / hop_L, emb_width]`` of the requested levels."""
        levels = range(self.config.levels) if levels is None else levels
        return [self.encoders[L](x)[-1] for L in levels]

    def codebooks(self) -> list[jax.Array]:
        return self.bottleneck()

    # -- public ----------------------------------------------------------------------------------
    def encode(self, x: jax.Array, start_level: int = 0, end_level: int | None = None) -> list[jax.Array]:
        """Audio ``[N, T, 1]`` -> codes int32 ``[N, T / hop_L]`` for levels start..end-1."""
        end_level = self.config.levels if end_level is None else end_level
        levels = list(range(start_level, end_level))
        ks = self.codebooks()
        return [bn.quantise(z, ks[L])[0] for L, z in zip(levels, self.encode_latents(x, levels))]

    def decode(self, codes: Sequence[jax.Array], start_level: int = 0) -> jax.Array:
        """Decode ``codes[0]`` (level ``start_level``) to audio ``[N, T, 1]``.

        Like the original, codes of the levels above are accepted and ignored.
        """
        k = self.codebooks()[start_level]
        return self.decoders[start_level](bn.dequantise(codes[0], k))

    def decode_latent(self, latent: jax.Array, level: int) -> jax.Array:
        """Decoder ``level`` applied to (de)quantised latents ``[N, T / hop, emb_width]``."""
        return self.decoders[level](latent)

    def forward(self, x: jax.Array) -> dict:
        """The training forward: reconstructions of every level through the straight-through VQ.

        Returns ``x_outs`` (list per level), ``latents``, ``codes``, ``commit_losses`` (per level)
        and ``fits``. Codebooks get no gradient; see ``train.py`` for the EMA update.
        """
        ks = [jax.lax.stop_gradient(k) for k in self.codebooks()]
        latents = self.encode_latents(x)
        x_outs, codes, commits, fits = [], [], [], []
        for L, z in enumerate(latents):
            z_codes, fit = bn.quantise(z, ks[L])
            z_q = bn.dequantise(z_codes, ks[L])
            commits.append(bn.commit_loss(z, z_q))
            x_outs.append(self.decoders[L](bn.straight_through(z, z_q)))
            codes.append(z_codes)
            fits.append(fit)
        return dict(x_outs=x_outs, latents=latents, codes=codes, commit_losses=commits, fits=fits)
