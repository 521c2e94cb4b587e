"""Convolutional encoder and decoder of one VQ-VAE level, as in openai/jukebox ``vqvae/encdec.py``.

Everything is channels-last (``[batch, time, channels]``); the original runs channels-first.
Submodule names follow the original state-dict keys with dots between a name and its indices
replaced by underscores (``model.0.1`` -> ``model_0_1``), so ``convert/vqvae_keys.py`` is a
mechanical rename. Kernels are Flax layout ``[k, in, out]``; transposed convolutions use
``transpose_kernel=True`` so their kernel is the torch weight ``[in, out, k]`` reversed to
``[k, out, in]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "conv1d",
    "conv_transpose1d",
    "ResConv1DBlock",
    "Resnet1D",
    "EncoderConvBlock",
    "DecoderConvBlock",
    "Encoder",
    "Decoder",
    "resnet_dilations",
]


def _torch_uniform(fan_in: int):
    """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv1d(
    features: int,
    in_features: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    name: str | None = None,
) -> nn.Conv:
    """``torch.nn.Conv1d(in, features, kernel, stride, padding, dilation)`` on channels-last input."""
    init = _torch_uniform(in_features * kernel)
    return nn.Conv(
        features,
        (kernel,),
        strides=(stride,),
        padding=[(padding, padding)],
        kernel_dilation=(dilation,),
        kernel_init=init,
        bias_init=init,
        name=name,
    )


def conv_transpose1d(
    features: int, kernel: int, stride: int, padding: int, name: str | None = None
) -> nn.ConvTranspose:
    """``torch.nn.ConvTranspose1d(in, features, kernel, stride, padding)``: length T -> stride*T.

    With ``transpose_kernel=True`` Flax computes the gradient of a strided conv, which is exactly
    torch's transposed conv once the padding is ``kernel - 1 - padding`` on both sides.
    """
    init = _torch_uniform(features * kernel)  # torch takes fan_in from weight.size(1) = out channels
    pad = kernel - 1 - padding
    return nn.ConvTranspose(
        features,
        (kernel,),
        strides=(stride,),
        padding=[(pad, pad)],
        transpose_kernel=True,
        kernel_init=init,
        bias_init=init,
        name=name,
    )


def resnet_dilations(depth: int, growth_rate: int, cycle: int | None, reverse: bool) -> list[int]:
    """Dilation of each residual block of a ``Resnet1D``, in the order the blocks run."""
    dilations = [growth_rate ** (d if cycle is None else d % cycle) for d in range(depth)]
    return dilations[::-1] if reverse else dilations


class ResConv1DBlock(nn.Module):
    """``x + res_scale * conv1x1(relu(conv3_dilated(relu(x))))``."""

    n_state: int
    dilation: int
    zero_out: bool = False
    res_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[-1]
        h = conv1d(self.n_state, n_in, 3, 1, self.dilation, self.dilation, name="model_1")(nn.relu(x))
        if self.zero_out:  # the original zero-initialises the last conv of every block
            out = nn.Conv(
                n_in,
                (1,),
                padding=[(0, 0)],
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                name="model_3",
            )
        else:
            out = conv1d(n_in, self.n_state, 1, name="model_3")
        h = out(nn.relu(h))
        return x + self.res_scale * h


class Resnet1D(nn.Module):
    """A stack of dilated residual blocks (``model_{d}``; the upsampler conditioner calls it ``blocks_{d}``)."""

    depth: int
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    zero_out: bool = False
    res_scale: bool = False
    reverse_dilation: bool = False
    block_name: str = "model"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[-1]
        scale = 1.0 / math.sqrt(self.depth) if self.res_scale else 1.0
        dilations = resnet_dilations(self.depth, self.dilation_growth_rate, self.dilation_cycle, self.reverse_dilation)
        for d, dilation in enumerate(dilations):
            x = ResConv1DBlock(int(self.m_conv * n_in), dilation, self.zero_out, scale, name=f"{self.block_name}_{d}")(
                x
            )
        return x


class EncoderConvBlock(nn.Module):
    """``down_t`` x [strided conv (k=2s, stride s), Resnet1D], then a k3 conv to ``out_width``."""

    out_width: int
    down_t: int
    stride_t: int
    width: int
    depth: int
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    zero_out: bool = False
    res_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, pad = self.stride_t * 2, self.stride_t // 2
        for i in range(self.down_t):
            in_ch = x.shape[-1]
            x = conv1d(self.width, in_ch, kernel, self.stride_t, pad, name=f"model_{i}_0")(x)
            x = Resnet1D(
                self.depth,
                self.m_conv,
                self.dilation_growth_rate,
                self.dilation_cycle,
                self.zero_out,
                self.res_scale,
                name=f"model_{i}_1",
            )(x)
        return conv1d(self.out_width, self.width, 3, 1, 1, name=f"model_{self.down_t}")(x)


class DecoderConvBlock(nn.Module):
    """A k3 conv to ``width``, then ``down_t`` x [Resnet1D, transposed conv (k=2s, stride s)].

    The last transposed conv outputs ``out_width`` channels (the original ``DecoderConvBock``).
    """

    out_width: int
    down_t: int
    stride_t: int
    width: int
    depth: int
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    zero_out: bool = False
    res_scale: bool = False
    reverse_dilation: bool = True
    res_block_name: str = "model"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, pad = self.stride_t * 2, self.stride_t // 2
        x = conv1d(self.width, x.shape[-1], 3, 1, 1, name="model_0")(x)
        for i in range(1, self.down_t + 1):
            x = Resnet1D(
                self.depth,
                self.m_conv,
                self.dilation_growth_rate,
                self.dilation_cycle,
                self.zero_out,
                self.res_scale,
                self.reverse_dilation,
                block_name=self.res_block_name,
                name=f"model_{i}_0",
            )(x)
            features = self.out_width if i == self.down_t else self.width
            x = conv_transpose1d(features, kernel, self.stride_t, pad, name=f"model_{i}_1")(x)
        return x


class Encoder(nn.Module):
    """The encoder of one level: ``len(downs_t)`` EncoderConvBlocks applied in sequence.

    Returns every block's output; the last one is this level's latent ``[N, T / hop, emb_width]``.
    """

    emb_width: int
    downs_t: Sequence[int]
    strides_t: Sequence[int]
    width: int
    depth: int
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    zero_out: bool = False
    res_scale: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        outs = []
        for j, (down_t, stride_t) in enumerate(zip(self.downs_t, self.strides_t)):
            x = EncoderConvBlock(
                self.emb_width,
                down_t,
                stride_t,
                self.width,
                self.depth,
                self.m_conv,
                self.dilation_growth_rate,
                self.dilation_cycle,
                self.zero_out,
                self.res_scale,
                name=f"level_blocks_{j}",
            )(x)
            outs.append(x)
        return outs


class Decoder(nn.Module):
    """The decoder of one level: its DecoderConvBlocks from the coarsest down, then ``out`` (k3 conv).

    Only the original's ``all_levels=False`` path exists (the one every caller uses).
    """

    out_channels: int
    downs_t: Sequence[int]
    strides_t: Sequence[int]
    width: int
    depth: int
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    zero_out: bool = False
    res_scale: bool = False
    reverse_dilation: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        emb_width = x.shape[-1]
        for j in reversed(range(len(self.downs_t))):
            x = DecoderConvBlock(
                emb_width,
                self.downs_t[j],
                self.strides_t[j],
                self.width,
                self.depth,
                self.m_conv,
                self.dilation_growth_rate,
                self.dilation_cycle,
                self.zero_out,
                self.res_scale,
                self.reverse_dilation,
                name=f"level_blocks_{j}",
            )(x)
        return conv1d(self.out_channels, emb_width, 3, 1, 1, name="out")(x)
