"""Training the VQ-VAE: the original loss, an optax step for the conv params and EMA codebooks.

The codebooks live in the param tree (``params['bottleneck']['level_blocks_L']['k']``) so a model
directory holds them, but they are EMA state, not gradient params: :func:`split_codebooks` takes
them out, the optimizer only ever sees the rest, and after each step every codebook is replaced by
:func:`bottleneck.ema_update` on the latents and codes of that step's forward (as the original,
which quantises with the old codebook and then updates it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from ..config import VQVAEConfig
from . import bottleneck as bn
from .losses import vqvae_loss
from .vqvae import VQVAEModule

__all__ = [
    "TrainState",
    "split_codebooks",
    "merge_codebooks",
    "init_train_state",
    "loss_and_aux",
    "make_train_step",
    "make_eval_step",
]


class TrainState(NamedTuple):
    net_params: Any  # everything but the codebooks (trained by the optimizer)
    codebooks: tuple  # one [bins, emb_width] per level (EMA)
    ema: tuple  # one bottleneck.EMAState per level
    opt_state: Any
    step: jax.Array

    @property
    def params(self) -> dict:
        """The full param tree (what ``save_model_dir`` stores)."""
        return merge_codebooks(self.net_params, self.codebooks)


def split_codebooks(params: Mapping) -> tuple[dict, tuple]:
    """``params`` -> (params without ``bottleneck``, codebooks per level)."""
    net = {k: v for k, v in params.items() if k != "bottleneck"}
    blocks = params["bottleneck"]
    codebooks = tuple(blocks[f"level_blocks_{L}"]["k"] for L in range(len(blocks)))
    return net, codebooks


def merge_codebooks(net_params: Mapping, codebooks: tuple) -> dict:
    """The inverse of :func:`split_codebooks`."""
    return {**net_params, "bottleneck": {f"level_blocks_{L}": {"k": k} for L, k in enumerate(codebooks)}}


def init_train_state(
    config: VQVAEConfig,
    params: Mapping,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    x: jax.Array | None = None,
    samples_per_batch: int | None = None,
) -> TrainState:
    """Start training from ``params``.

    With a first batch ``x`` the codebooks are initialised from its latents (the original
    ``init_k``, for training from scratch); without it the stored codebooks are kept and their
    EMA sums restored (the original ``restore_k``): level L assumes ``samples_per_batch // hop_L``
    tokens per batch (``samples_per_batch``: audio samples per step, all devices; None: usage 1).
    """
    net, codebooks = split_codebooks(params)
    if x is not None:
        latents = VQVAEModule(config).apply({"params": dict(params)}, x, method=VQVAEModule.encode_latents)
        pairs = [bn.init_codebook(k, z, config.l_bins) for k, z in zip(jax.random.split(key, config.levels), latents)]
        codebooks = tuple(k for k, _ in pairs)
        ema = tuple(state for _, state in pairs)
    else:
        tokens = [None if samples_per_batch is None else samples_per_batch // hop for hop in config.hop_lengths]
        ema = tuple(bn.restore_ema_state(k, n) for k, n in zip(codebooks, tokens))
    state = TrainState(net, codebooks, ema, optimizer.init(net), jnp.zeros((), jnp.int32))
    # The train step donates its state, so every leaf gets its own buffer (init_codebook's k and
    # k_sum are one array, and ``params`` are the caller's).
    return jax.tree.map(jnp.copy, state)


def loss_and_aux(
    net_params: Mapping,
    codebooks: tuple,
    x: jax.Array,
    config: VQVAEConfig,
    bandwidth: Mapping[str, float],
    dtype: Any = jnp.float32,
) -> tuple[jax.Array, dict]:
    """The original ``VQVAE.forward`` loss; aux holds the metrics, latents and codes per level.

    ``dtype`` (mixed precision): the forward and backward run on a copy of the params, codebooks
    and audio in that dtype (the quantiser's distances and the loss stay float32); the gradients
    come back in the params' dtype."""
    if dtype != jnp.float32:
        net_params = jax.tree.map(lambda p: p.astype(dtype), net_params)
        codebooks = tuple(k.astype(dtype) for k in codebooks)
        x = x.astype(dtype)
    params = merge_codebooks(net_params, tuple(jax.lax.stop_gradient(k) for k in codebooks))
    out = cast(dict, VQVAEModule(config).apply({"params": params}, x, method=VQVAEModule.forward))
    loss, metrics = vqvae_loss(x, out["x_outs"], out["commit_losses"], config, bandwidth)
    return loss, dict(metrics=metrics, latents=out["latents"], codes=out["codes"], fits=out["fits"])


def make_train_step(
    config: VQVAEConfig,
    optimizer: optax.GradientTransformation,
    bandwidth: Mapping[str, float],
    dtype: Any = jnp.float32,
    accumulate: int = 1,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """A jitted ``step(state, x [N, T, 1], key) -> (state, metrics)``: gradient step, then EMA codebooks.

    ``state`` is donated (updated in place): use the returned state only. ``optimizer``: see
    :func:`jukebox_flax.optim.make_optimizer`. ``dtype``: the compute dtype of the forward and
    backward (:func:`loss_and_aux`; the state stays float32). ``accumulate``: the batch is run as
    that many micro-batches (``lax.scan``) with their gradients averaged; the EMA codebook update
    sees the latents and codes of the whole batch, as without.
    """
    bandwidth = {k: float(v) for k, v in bandwidth.items()}
    grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)

    def gradients(state: TrainState, x: jax.Array) -> tuple[jax.Array, dict, Any]:
        if accumulate == 1:
            (loss, aux), grads = grad_fn(state.net_params, state.codebooks, x, config, bandwidth, dtype)
            return loss, aux, grads
        if x.shape[0] % accumulate:
            raise ValueError(f"the batch of {x.shape[0]} does not split into {accumulate} equal micro-batches")

        def body(total: Any, micro: jax.Array) -> tuple[Any, tuple]:
            (loss, aux), grads = grad_fn(state.net_params, state.codebooks, micro, config, bandwidth, dtype)
            return jax.tree.map(jnp.add, total, grads), (loss, aux)

        micro = x.reshape(accumulate, x.shape[0] // accumulate, *x.shape[1:])
        zeros = jax.tree.map(jnp.zeros_like, state.net_params)
        grads, (losses, aux) = jax.lax.scan(body, zeros, micro)
        whole = lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])  # noqa: E731
        aux = dict(
            metrics=jax.tree.map(lambda m: m.mean(0), aux["metrics"]),
            latents=[whole(z) for z in aux["latents"]],
            codes=[whole(c) for c in aux["codes"]],
            fits=[f.mean(0) for f in aux["fits"]],
        )
        return losses.mean(), aux, jax.tree.map(lambda g: g / accumulate, grads)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state: TrainState, x: jax.Array, key: jax.Array) -> tuple[TrainState, dict]:
        loss, aux, grads = gradients(state, x)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.net_params)
        net = optax.apply_updates(state.net_params, updates)
        codebooks, ema = [], []
        metrics = dict(aux["metrics"], loss=loss)
        for L, level_key in enumerate(jax.random.split(key, config.levels)):
            k, s, m = bn.ema_update(
                level_key,
                state.codebooks[L],
                state.ema[L],
                aux["latents"][L],
                aux["codes"][L],
                config.l_mu,
                config.revival_threshold,
            )
            codebooks.append(k)
            ema.append(s)
            metrics.update({f"{name}_l{L + 1}": value for name, value in m.items()})
            metrics[f"fit_l{L + 1}"] = aux["fits"][L]
        return TrainState(net, tuple(codebooks), tuple(ema), opt_state, state.step + 1), metrics

    return step


def make_eval_step(config: VQVAEConfig, bandwidth: Mapping[str, float]) -> Callable[[TrainState, jax.Array], dict]:
    """A jitted ``evaluate(state, x [N, T, 1]) -> metrics``: the loss and metrics of
    :func:`make_train_step` on ``x`` with nothing updated (no gradients, no EMA codebook step; the
    state is not donated)."""
    bandwidth = {k: float(v) for k, v in bandwidth.items()}

    @jax.jit
    def evaluate(state: TrainState, x: jax.Array) -> dict:
        loss, aux = loss_and_aux(state.net_params, state.codebooks, x, config, bandwidth)
        return dict(aux["metrics"], loss=loss)

    return evaluate
