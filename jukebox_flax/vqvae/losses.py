"""VQ-VAE training losses of the original (``vqvae/vqvae.py`` and ``utils/audio_utils.py``).

Audio is ``[N, T, C]``. ``bandwidth`` is the original's dataset statistics dict
(``l1``: mean |x|, ``l2``: variance, ``spec``: mean STFT-magnitude norm); see
:func:`estimate_bandwidth`. The STFT matches ``torch.stft(center=True, pad_mode='reflect')`` with a
periodic Hann window of ``win_length`` zero-padded (centred) to ``n_fft``, unnormalised, one-sided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..config import VQVAEConfig

__all__ = [
    "stft_magnitude",
    "reconstruction_loss",
    "spectral_loss",
    "multispectral_loss",
    "spectral_convergence",
    "vqvae_loss",
    "estimate_bandwidth",
    "DEFAULT_STFT",
]

# The original's DefaultSTFTValues: used by the (single) spectral loss, spectral convergence and
# the bandwidth estimate.
DEFAULT_STFT = (2048, 256, 6 * 256)


def _safe_sqrt(sq: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN) gradient at 0, as torch.norm's backward."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _hann_window(win_length: int, n_fft: int) -> np.ndarray:
    n = np.arange(win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)  # periodic, as torch.hann_window
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left)).astype(np.float32)


def stft_magnitude(x: jax.Array, n_fft: int, hop_length: int, win_length: int) -> jax.Array:
    """``|STFT|`` of ``x [N, T]`` -> ``[N, frames, n_fft // 2 + 1]`` (frames = 1 + T // hop)."""
    pad = n_fft // 2
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = 1 + (x.shape[1] - n_fft) // hop_length
    idx = np.arange(n_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    frames = x[:, idx] * _hann_window(win_length, n_fft)
    spec = jnp.fft.rfft(frames, axis=-1)
    return _safe_sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2)


def _mono(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(jnp.float32), axis=-1) if x.ndim == 3 else x.astype(jnp.float32)


def _norm(x: jax.Array) -> jax.Array:
    """Per-item Frobenius norm."""
    return _safe_sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1))


def _spec_diff_norm(x: jax.Array, x_hat: jax.Array, n_fft: int, hop: int, win: int) -> jax.Array:
    return _norm(stft_magnitude(_mono(x), n_fft, hop, win) - stft_magnitude(_mono(x_hat), n_fft, hop, win))


def spectral_loss(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-item ``|S(x) - S(x_hat)|`` with the default STFT (original ``spectral_loss``)."""
    return _spec_diff_norm(x, x_hat, *DEFAULT_STFT)


def multispectral_loss(
    x: jax.Array, x_hat: jax.Array, n_ffts: Sequence[int], hops: Sequence[int], windows: Sequence[int]
) -> jax.Array:
    """Per-item mean over STFT configs of ``|S(x) - S(x_hat)|``."""
    losses = [_spec_diff_norm(x, x_hat, n, h, w) for n, h, w in zip(n_ffts, hops, windows)]
    total = losses[0]
    for one in losses[1:]:
        total = total + one
    return total / len(losses)


def spectral_convergence(x: jax.Array, x_hat: jax.Array, epsilon: float = 2e-3) -> jax.Array:
    """Per-item ``|S(x) - S(x_hat)| / |S(x)|``, zero where ``|S(x)| <= epsilon``."""
    spec_in = stft_magnitude(_mono(x), *DEFAULT_STFT)
    spec_out = stft_magnitude(_mono(x_hat), *DEFAULT_STFT)
    gt = _norm(spec_in)
    return _norm(spec_in - spec_out) * (gt > epsilon) / jnp.maximum(gt, epsilon)


def reconstruction_loss(
    kind: str, x: jax.Array, x_hat: jax.Array, config: VQVAEConfig, bandwidth: Mapping[str, float]
) -> jax.Array:
    """The original ``_loss_fn``: 'l1', 'l2', 'linf' (mean of the top ``linf_k`` squared errors per
    item) or 'lmix' (their weighted sum with ``lmix_l1/l2/linf``)."""
    if kind == "l1":
        return jnp.mean(jnp.abs(x_hat - x)) / bandwidth["l1"]
    if kind == "l2":
        return jnp.mean((x_hat - x) ** 2) / bandwidth["l2"]
    if kind == "linf":
        residual = ((x_hat - x) ** 2).reshape(x.shape[0], -1)
        k = min(config.linf_k, residual.shape[1])  # the original would fail on shorter inputs
        return jnp.mean(jax.lax.top_k(residual, k)[0]) / bandwidth["l2"]
    if kind == "lmix":
        loss = jnp.zeros((), jnp.float32)
        for weight, name in ((config.lmix_l1, "l1"), (config.lmix_l2, "l2"), (config.lmix_linf, "linf")):
            if weight:
                loss = loss + weight * reconstruction_loss(name, x, x_hat, config, bandwidth)
        return loss
    raise ValueError(f"unknown loss_fn {kind!r}")


def vqvae_loss(
    x: jax.Array,
    x_outs: Sequence[jax.Array],
    commit_losses: Sequence[jax.Array],
    config: VQVAEConfig,
    bandwidth: Mapping[str, float],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and the original's metrics (names as ``VQVAE.forward``: ``recons_loss_l{L+1}``, ...).

    ``x_outs[L]`` is the reconstruction from level ``L``. The l1/l2/linf/spectral_convergence
    metrics use level 0's reconstruction, as the original (the last one of its loop).
    """
    x = x.astype(jnp.float32)
    metrics: dict[str, jax.Array] = {}
    recons = spec = multispec = jnp.zeros((), jnp.float32)
    for level in reversed(range(len(x_outs))):
        x_hat = x_outs[level].astype(jnp.float32)
        r = reconstruction_loss(config.loss_fn, x, x_hat, config, bandwidth)
        s = jnp.mean(spectral_loss(x, x_hat) / bandwidth["spec"])
        m = jnp.mean(
            multispectral_loss(
                x, x_hat, config.multispec_n_fft, config.multispec_hop_length, config.multispec_window_size
            )
            / bandwidth["spec"]
        )
        metrics[f"recons_loss_l{level + 1}"] = r
        metrics[f"spectral_loss_l{level + 1}"] = s
        metrics[f"multispectral_loss_l{level + 1}"] = m
        recons, spec, multispec = recons + r, spec + s, multispec + m
    commit = jnp.asarray(sum(commit_losses))
    loss = recons + config.spectral * spec + config.multispectral * multispec + config.commit * commit
    x_hat = jax.lax.stop_gradient(x_outs[0].astype(jnp.float32))
    metrics.update(
        recons_loss=recons,
        spectral_loss=spec,
        multispectral_loss=multispec,
        spectral_convergence=jnp.mean(spectral_convergence(x, x_hat)),
        l2_loss=reconstruction_loss("l2", x, x_hat, config, bandwidth),
        l1_loss=reconstruction_loss("l1", x, x_hat, config, bandwidth),
        linf_loss=reconstruction_loss("linf", x, x_hat, config, bandwidth),
        commit_loss=commit,
    )
    return loss, metrics


def estimate_bandwidth(audio: np.ndarray) -> dict[str, float]:
    """The original ``calculate_bandwidth`` on a batch of examples ``[N, T, C]`` (numpy, float64).

    l2 = variance of all samples, l1 = mean |x|, spec = mean over examples of the norm of the
    STFT magnitude (n_fft 2048, hop 256, window 1536). The original reads ~600 s of its dataset
    with librosa; pass a representative batch.
    """
    audio = np.asarray(audio, np.float64)
    spec = np.asarray(_norm(stft_magnitude(jnp.asarray(audio.mean(axis=-1), jnp.float32), *DEFAULT_STFT)))
    return dict(l2=float(audio.var()), l1=float(np.abs(audio).mean()), spec=float(spec.mean()))
