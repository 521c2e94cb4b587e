"""A whole prior of one level (the original ``SimplePrior``): conditioning + the autoregressive model.

``JukeboxPrior(config)`` holds, as the config asks for them:

- ``upper_conditioner`` (upsamplers): the codes of the level above -> x_cond [B, n_ctx, W];
- ``label_conditioner``: artist + genres -> y_cond [B, 1, W] (the start embedding), and at the top
  level the timing signal, which is x_cond there;
- the lyric path: ``lyrics='separate'`` (5b_lyrics) runs ``lyric_encoder`` (a causal transformer over
  the lyric tokens, ``only_encode``) -> ``lyric_proj`` -> ``lyric_ln`` = encoder_kv [B, n_tokens, W]
  for the cross-attention layers, and ``lyric_head`` predicts the lyric tokens for the training
  loss; ``lyrics='single'`` (1b_lyrics) runs one transformer over [lyrics ; music] with a joint
  vocabulary (music token t is t + n_vocab) and x_cond [zeros for the lyrics ; timing];
- ``prior``: the ``Autoregressive`` model.

``JukeboxPrior(config, scan_layers=True)``: ``scan_layers=False`` runs both transformers with every
layer unrolled, on the params of ``unroll_layers`` (see ``transformer.py``; same results).
``remat='attention'|'block'`` recomputes each layer's attention / whole block in the backward pass
(``transformer.remat_block``: training memory; same params, same results).

Methods (use with ``module.apply({'params': p}, ..., method=JukeboxPrior.<name>)``):

- ``condition(y, upper) -> {'x_cond', 'y_cond', 'encoder_kv', 'prime'}`` (absent parts are None;
  ``prime`` = the lyric tokens of y, int32 [B, n_tokens]);
- ``__call__(tokens, y, upper) -> logits`` = the original ``z_forward`` logits: tokens int [B, T]
  music codes of this level; for 'single' the logits cover [lyrics ; music] positions and the joint
  vocabulary, [B, n_tokens + T, n_vocab + bins];
- ``attention_weights(tokens, y, upper) -> (logits, {layer: softmax weights})`` of the music transformer;
- ``features(tokens, y, upper, layers, stop_early=True, music_only=True) -> {n: [B, T, W]}``: the
  residual stream after the first n layers (same forward as ``__call__``; see its docstring);
- ``loss(tokens, y, upper) -> (loss, {'bpd', 'prime_loss', 'gen_loss'})`` exactly as the original;
- ``init_cache(batch, dtype)`` (plain method, no params) and ``decode(inputs, start, cache,
  x_cond, y_cond, encoder_kv) -> (logits, cache)``: pass-throughs to ``Autoregressive`` (for 'single'
  they work on joint positions and tokens: see ``joint_tokens`` / ``music_from_joint``);
- ``param_axes()`` (plain method): the logical axes of every param (``prior_param_axes``).

y is the original label layout (total_length, offset, sample_length, artist, genre x
max_bow_genre_size, lyric tokens x n_tokens); upper int [B, n_ctx / cond_downsample].
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..config import PriorConfig
from ..errors import PriorCallError
from ..sharding import ParamAxes, logical_axes
from .autoregressive import Autoregressive
from .conditioners import LabelConditioner, UpperConditioner, layer_norm
from .transformer import TransformerConfig, init_cache, partitioned, scan_params, unroll_params

__all__ = [
    "JukeboxPrior",
    "PriorCallError",
    "joint_tokens",
    "music_from_joint",
    "cross_entropy_bits",
    "dummy_inputs",
    "init_prior_params",
    "abstract_prior_params",
    "released_dtype",
    "prior_param_axes",
    "unroll_layers",
    "stack_layers",
]

Array = jax.Array


def joint_tokens(config: PriorConfig, prime: Array, music: Array) -> Array:
    """[lyrics ; music + n_vocab] for a single encoder-decoder prior (original ``prior_preprocess``)."""
    return jnp.concatenate([prime.astype(jnp.int32), music.astype(jnp.int32) + config.n_vocab], axis=1)


def music_from_joint(config: PriorConfig, joint: Array) -> Array:
    """Music tokens back from joint ones (original ``prior_postprocess``): drop the lyric positions,
    subtract the shift and clamp at 0 (a sampled lyric id becomes music token 0, as the original)."""
    return jnp.maximum(joint[:, config.n_tokens :] - config.n_vocab, 0)


def dummy_inputs(config: PriorConfig, batch: int = 1) -> tuple[Array, Array | None, Array | None]:
    """Zero (tokens, y, upper) of the shapes the prior takes (for init and shape evaluation)."""
    tokens = jnp.zeros((batch, config.n_ctx), jnp.int32)
    y = jnp.zeros((batch, config.y_length), jnp.int32) if config.labels else None
    upper = jnp.zeros((batch, config.n_ctx // config.cond_downsample), jnp.int32) if config.is_upsampler else None
    return tokens, y, upper


_TRANSFORMERS = ("prior", "lyric_encoder")  # the Autoregressive submodules of a JukeboxPrior


def released_dtype(names: tuple[str, ...], stored: Any, dtype: Any) -> Any:
    """The dtype of the param at ``names`` in the released models' half-precision layout (the
    original ``fp16_params``): ``dtype`` for the transformers' matmul kernels, float32 for every
    other float (biases, embeddings, LayerNorms, heads, conditioners); non-floats as stored."""
    if not jnp.issubdtype(stored, jnp.floating):
        return stored
    return dtype if "transformer" in names and names[-1] == "kernel" else jnp.float32


def unroll_layers(params: dict) -> dict:
    """Prior params with both transformers' scanned runs unrolled (``transformer.unroll_params``):
    the tree of ``JukeboxPrior(config, scan_layers=False)``. Copies the layer weights once."""
    return {
        k: {**v, "transformer": unroll_params(v["transformer"])} if k in _TRANSFORMERS else v for k, v in params.items()
    }


def stack_layers(params: dict, config: PriorConfig) -> dict:
    """The inverse of ``unroll_layers``: the stored (scanned) tree."""
    layouts = {"prior": config.attention_layout}
    if config.lyrics == "separate":
        layouts["lyric_encoder"] = TransformerConfig.from_prior(config, lyric_encoder=True).layout
    return {
        k: {**v, "transformer": scan_params(v["transformer"], layouts[k])} if k in layouts else v
        for k, v in params.items()
    }


@functools.cache
def prior_param_axes(config: PriorConfig, scan_layers: bool = True) -> ParamAxes:
    """Logical axis names of every param of ``JukeboxPrior(config, scan_layers)``, read from the
    metadata its init attaches (abstract shapes only: ``jax.eval_shape``). The upsampler's conditioner
    convolutions are VQ-VAE modules without metadata (``sharding.CONV_AXES``)."""
    if not scan_layers:  # read off the scanned axes: tracing the unrolled init is far slower
        return _unrolled_axes(prior_param_axes(config, True))
    module = JukeboxPrior(config, scan_layers=True)
    boxed = jax.eval_shape(
        lambda k: module.init(k, *dummy_inputs(config), method=JukeboxPrior.loss)["params"], jax.random.key(0)
    )
    return logical_axes(boxed, conv_subtrees=(("upper_conditioner", "cond"),))


def _unrolled_axes(scanned: ParamAxes) -> ParamAxes:
    """``prior_param_axes(config, False)`` from the scanned axes: ``.../layers_a_b/unit_j/leaf``
    (axes ``('layers', ...)``) becomes ``.../layer_{a + r * units + j}/leaf`` for every repeat r."""
    units: dict[tuple[str, ...], set[str]] = {}
    for path in scanned:
        for i, name in enumerate(path[:-1]):
            if name.startswith("layers_"):
                units.setdefault(path[: i + 1], set()).add(path[i + 1])
    out: ParamAxes = {}
    for path, names in scanned.items():
        stacked = [i for i, name in enumerate(path[:-1]) if name.startswith("layers_")]
        if not stacked:
            out[path] = names
            continue
        i = stacked[0]
        first, last = (int(v) for v in path[i].split("_")[1:])
        n_units = len(units[path[: i + 1]])
        j = int(path[i + 1].split("_")[1])
        for r in range((last - first + 1) // n_units):
            out[path[:i] + (f"layer_{first + r * n_units + j}",) + path[i + 2 :]] = names[1:]
    return out


def cross_entropy_bits(logits: Array, targets: Array) -> Array:
    """Mean cross-entropy in bits (the original ``F.cross_entropy(...) / ln 2``), in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return nll.mean() / np.float32(np.log(2.0))


class JukeboxPrior(nn.Module):
    """One level's prior: conditioners, optional lyric encoder, and the autoregressive model."""

    config: PriorConfig
    dtype: Any = jnp.float32  # the transformers' activation dtype (float16/bfloat16 = the original's fp16 mode)
    param_dtype: Any = jnp.float32
    scan_layers: bool = True  # False: every transformer layer unrolled (params from ``unroll_layers``)
    remat: str = "none"  # training memory: 'attention' / 'block' recompute per layer in the backward pass

    def setup(self) -> None:
        c = self.config
        if c.is_upsampler:
            self.upper_conditioner = UpperConditioner(c)
        if c.labels:
            self.label_conditioner = LabelConditioner(c)
        if c.lyrics == "separate":
            enc = TransformerConfig.from_prior(c, True, self.dtype, self.param_dtype)
            self.lyric_encoder = Autoregressive(enc, self.scan_layers, self.remat)
            self.lyric_proj = nn.Dense(
                c.width,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                kernel_init=partitioned(nn.initializers.normal(0.02 * enc.init_scale), ("embed", "embed")),
                bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            )
            self.lyric_ln = layer_norm()
            self.lyric_head = nn.Dense(
                c.n_vocab,
                use_bias=False,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                kernel_init=partitioned(nn.initializers.normal(0.02 * c.init_scale), ("embed", "vocab")),
            )
        self.prior = Autoregressive(self.autoregressive_config(), self.scan_layers, self.remat)

    # -- conditioning --------------------------------------------------------------------------
    def encode_lyrics(self, prime: Array) -> Array:
        """encoder_kv [B, n_tokens, W] of a separate lyric encoder (original ``get_encoder_kv``), float32."""
        acts = self.lyric_encoder(prime.astype(jnp.int32)).astype(jnp.float32)
        return self.lyric_ln(self.lyric_proj(acts))

    def condition(self, y: Array | None = None, upper: Array | None = None) -> dict[str, Array | None]:
        """x_cond, y_cond, encoder_kv and the lyric tokens ``prime`` (original ``get_cond`` + ``get_encoder_kv``)."""
        c = self.config
        x_cond = y_cond = encoder_kv = prime = timing = None
        if c.labels:
            if y is None or y.ndim != 2 or y.shape[1] != c.y_length:
                got = None if y is None else tuple(y.shape)
                raise PriorCallError(f"this prior needs y of shape [batch, {c.y_length}], got {got}")
            n_labels = 4 + c.max_bow_genre_size
            y = y.astype(jnp.int32)
            y_cond, timing = self.label_conditioner(y[:, :n_labels])
            if c.lyrics != "none":
                prime = y[:, n_labels:]
        if c.is_upsampler:
            want = c.n_ctx // c.cond_downsample
            if upper is None or upper.ndim != 2 or upper.shape[1] != want:
                got = None if upper is None else tuple(upper.shape)
                raise PriorCallError(f"this upsampler needs upper codes of shape [batch, {want}], got {got}")
            x_cond = self.upper_conditioner(upper.astype(jnp.int32))
        else:
            x_cond = timing
        if c.lyrics == "separate":
            assert prime is not None, "a lyrics prior has labels"
            encoder_kv = self.encode_lyrics(prime)
        elif c.lyrics == "single" and x_cond is not None:
            lyric_part = jnp.zeros((x_cond.shape[0], c.n_tokens, c.width), x_cond.dtype)
            x_cond = jnp.concatenate([lyric_part, x_cond], axis=1)
        return {"x_cond": x_cond, "y_cond": y_cond, "encoder_kv": encoder_kv, "prime": prime}

    # -- teacher forcing -------------------------------------------------------------------------
    def _inputs(self, tokens: Array, y: Array | None, upper: Array | None):
        """(model tokens, x_cond cut to their length, conditioning) for the autoregressive model."""
        c = self.config
        cond = self.condition(y, upper)
        tokens = tokens.astype(jnp.int32)
        if c.lyrics == "single":
            assert cond["prime"] is not None, "a lyrics prior has labels"
            tokens = joint_tokens(c, cond["prime"], tokens)
        x_cond = cond["x_cond"]
        if x_cond is not None and x_cond.shape[1] != tokens.shape[1]:
            x_cond = x_cond[:, : tokens.shape[1]]  # shorter than a full window (T < n_ctx)
        return tokens, x_cond, cond

    def features(
        self,
        tokens: Array,
        y: Array | None = None,
        upper: Array | None = None,
        layers: tuple[int, ...] = (),
        stop_early: bool = True,
        music_only: bool = True,
    ) -> dict[int, Array]:
        """{n: float32 [B, T, W]}: the residual stream after the first n layers of the music
        transformer (n in 0..depth; the MIR recipe's "layer 36 of 72" is n = 36), teacher-forced
        exactly as ``__call__``. It is the stream itself: before the x_cond re-add that follows the
        transformer when not ``merged_decoder``. A single encoder-decoder ('single') returns the music
        positions only (``music_only=False``: all n_tokens + T joint positions, lyrics first)."""
        tokens, x_cond, cond = self._inputs(tokens, y, upper)
        feats = self.prior.features(tokens, x_cond, cond["y_cond"], cond["encoder_kv"], layers, stop_early)
        if self.config.lyrics == "single" and music_only:
            feats = {n: f[:, self.config.n_tokens :] for n, f in feats.items()}
        return feats

    def __call__(self, tokens: Array, y: Array | None = None, upper: Array | None = None) -> Array:
        """float32 logits [B, T, bins] (joint positions/vocabulary for 'single')."""
        tokens, x_cond, cond = self._inputs(tokens, y, upper)
        return self.prior(tokens, x_cond, cond["y_cond"], cond["encoder_kv"])

    def attention_weights(
        self, tokens: Array, y: Array | None = None, upper: Array | None = None
    ) -> tuple[Array, dict[int, Array]]:
        """(logits, {layer: softmax weights of the music transformer}) (see ``Autoregressive``)."""
        tokens, x_cond, cond = self._inputs(tokens, y, upper)
        return self.prior.attention_weights(tokens, x_cond, cond["y_cond"], cond["encoder_kv"])

    def loss(self, tokens: Array, y: Array | None = None, upper: Array | None = None):
        """(loss, metrics) as the original ``z_forward``: gen_loss (bits/token over music), prime_loss
        (lyrics: the encoder's lm head for 'separate', the lyric positions for 'single'), and
        loss = f * prime_loss * P / (P + N) + gen_loss * N / (P + N), f = prime_loss_fraction,
        P = n_tokens (0 without lyrics), N = n_ctx. metrics: bpd (= gen_loss), prime_loss, gen_loss."""
        c = self.config
        targets, x_cond, cond = self._inputs(tokens, y, upper)
        logits = self.prior(targets, x_cond, cond["y_cond"], cond["encoder_kv"])
        prime_loss = jnp.float32(0.0)
        if c.lyrics == "single":
            prime_loss = cross_entropy_bits(logits[:, : c.n_tokens], targets[:, : c.n_tokens])
            gen_loss = cross_entropy_bits(logits[:, c.n_tokens :], targets[:, c.n_tokens :])
        else:
            gen_loss = cross_entropy_bits(logits, targets)
            if c.lyrics == "separate":
                prime_loss = cross_entropy_bits(self.lyric_head(cond["encoder_kv"]), cond["prime"])
        prime_dims = c.n_tokens if c.lyrics != "none" else 0
        total = prime_dims + c.n_ctx
        loss = c.prime_loss_fraction * prime_loss * prime_dims / total + gen_loss * c.n_ctx / total
        return loss, {"bpd": gen_loss, "prime_loss": prime_loss, "gen_loss": gen_loss}

    # -- incremental decoding (pass-throughs) ---------------------------------------------------
    @nn.nowrap
    def autoregressive_config(self) -> TransformerConfig:
        """The hyperparameters of this prior's music model."""
        return TransformerConfig.from_prior(self.config, False, self.dtype, self.param_dtype)

    @nn.nowrap
    def init_cache(self, batch: int, dtype: Any = None) -> dict:
        """Zero KV caches for ``decode`` (a plain method: no params needed)."""
        return init_cache(self.autoregressive_config(), batch, dtype or self.dtype)

    @nn.nowrap
    def param_axes(self) -> ParamAxes:
        """Logical axis names of every param (``prior_param_axes``)."""
        return prior_param_axes(self.config, self.scan_layers)

    def decode(
        self,
        inputs: Array,
        start: Array,
        cache: dict,
        x_cond: Array | None = None,
        y_cond: Array | None = None,
        encoder_kv: Array | None = None,
    ) -> tuple[Array, dict]:
        """``Autoregressive.decode`` with this prior's params; pass the tensors of ``condition``
        (x_cond full length: [B, total_ctx, W])."""
        return self.prior.decode(inputs, start, cache, x_cond, y_cond, encoder_kv)


@functools.partial(jax.jit, static_argnames=("config", "param_dtype", "scan_layers"))
def init_prior_params(
    config: PriorConfig, key: jax.Array, param_dtype: Any = jnp.float32, scan_layers: bool = True
) -> dict:
    """Freshly initialised params of a prior (the original's inits where they matter), a plain dict.

    One compiled program per (config, dtype): op by op, the init's forward pass (scanned layers
    included) dispatches and compiles every small op on its own, which is slower.
    """
    module = JukeboxPrior(config, param_dtype=param_dtype, scan_layers=scan_layers)
    return nn.meta.unbox(module.init(key, *dummy_inputs(config), method=JukeboxPrior.loss)["params"])


def abstract_prior_params(config: PriorConfig, param_dtype: Any = jnp.float32, scan_layers: bool = True) -> dict:
    """The param tree as ``jax.ShapeDtypeStruct`` leaves (no memory: ``jax.eval_shape``)."""
    scanned = jax.eval_shape(lambda k: init_prior_params(config, k, param_dtype, True), jax.random.key(0))
    # the unrolled tree from the scanned one: tracing the unrolled init layer by layer is far slower
    return scanned if scan_layers else jax.eval_shape(unroll_layers, scanned)
