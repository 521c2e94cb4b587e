"""The public prior API: ``load_prior(DIR)`` -> ``Prior`` (config, params, module) with jitted methods.

    prior = jf.load_prior(DIR)                      # a prior directory, or a whole model (+ level=)
    prior = jf.load_prior(DIR, mesh=mesh)           # params restored straight into their shards
    prior = jf.load_prior(DIR, scan_layers=False)   # layers unrolled once, for sampling
    logits = prior.logits(tokens, y=y, upper=upper) # float32 [B, T, bins] (joint for 1b_lyrics style)
    acts = prior.features(tokens, y=y, layers=36)   # {36: float32 [B, T, width]}: after layer 36 (1-based)
    tokens = prior.sample(key, n, y=y, upper=upper)

Inputs are checked on the host first (shapes, id ranges, timing range) so a user mistake is a
``JukeboxError`` with a clear message rather than NaNs from inside jit. The methods run module-level
functions jitted with the module as a static argument: jit's own cache is the only cache, shared by
every ``Prior`` of an equal module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..checkpoint import CheckpointError, component_dir, load_config, load_params, load_vocab
from ..config import JukeboxConfig, PriorConfig
from ..sampling.sampler import sample_prior
from ..sharding import checkpoint_sharding, param_shardings
from .conditioners import check_labels
from .prior import (
    JukeboxPrior,
    PriorCallError,
    abstract_prior_params,
    init_prior_params,
    prior_param_axes,
    released_dtype,
    unroll_layers,
)

__all__ = ["Prior", "load_prior", "init_prior_params", "abstract_prior_params", "prior_param_axes", "PriorCallError"]

PathLike = str | os.PathLike


def _int_array(name: str, x: Any, ndim: int = 2) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.integer):
        raise PriorCallError(f"{name} must be an integer array with {ndim} dims, got {arr.dtype} {list(arr.shape)}")
    return arr.astype(np.int32)


@partial(jax.jit, static_argnames="module")
def _logits(module: JukeboxPrior, params: Any, tokens: Any, y: Any, upper: Any) -> Any:
    return module.apply({"params": params}, tokens, y, upper)


@partial(jax.jit, static_argnames=("module", "layers", "stop_early", "music_only"))
def _features(
    module: JukeboxPrior,
    params: Any,
    tokens: Any,
    y: Any,
    upper: Any,
    layers: tuple[int, ...],
    stop_early: bool,
    music_only: bool,
) -> Any:
    return module.apply(
        {"params": params},
        tokens,
        y,
        upper,
        layers=layers,
        stop_early=stop_early,
        music_only=music_only,
        method=JukeboxPrior.features,
    )


@partial(jax.jit, static_argnames="module")
def _condition(module: JukeboxPrior, params: Any, y: Any, upper: Any) -> Any:
    return module.apply({"params": params}, y, upper, method=JukeboxPrior.condition)


@partial(jax.jit, static_argnames="module")
def _loss(module: JukeboxPrior, params: Any, tokens: Any, y: Any, upper: Any) -> Any:
    return module.apply({"params": params}, tokens, y, upper, method=JukeboxPrior.loss)


@dataclass
class Prior:
    """A loaded prior: ``config`` (PriorConfig), ``params`` (nested dict), ``module`` (JukeboxPrior),
    ``vocab`` (dict or None, from the model directory)."""

    config: PriorConfig
    params: Any
    module: JukeboxPrior = None  # type: ignore[assignment]
    vocab: dict | None = None
    _unrolled: Prior | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = JukeboxPrior(self.config)

    @property
    def level(self) -> int:
        return self.config.level

    # -- input checks --------------------------------------------------------------------------
    def check_inputs(self, tokens: Any = None, y: Any = None, upper: Any = None) -> tuple:
        """Validate and convert (tokens, y, upper) to int32 numpy arrays (None stays None)."""
        c = self.config
        batch = None
        if tokens is not None:
            tokens = _int_array("tokens", tokens)
            batch = tokens.shape[0]
            if tokens.shape[1] > c.n_ctx:
                raise PriorCallError(f"{tokens.shape[1]} tokens exceed this prior's window of {c.n_ctx}")
            if tokens.size and (tokens.min() < 0 or tokens.max() >= c.bins):
                raise PriorCallError(f"tokens must lie in [0, {c.bins}), got [{tokens.min()}, {tokens.max()}]")
        if c.labels:
            if y is None:
                raise PriorCallError(f"this prior needs labels y [batch, {c.y_length}] (see Labeller.get_y)")
            y = _int_array("y", y)
            check_labels(y, c)
            if batch is not None and y.shape[0] != batch:
                raise PriorCallError(f"y has batch {y.shape[0]}, tokens {batch}")
        elif y is not None and np.size(y):
            raise PriorCallError("this prior takes no labels (y)")
        else:
            y = None
        if c.is_upsampler:
            if upper is None:
                raise PriorCallError("an upsampler needs the codes of the level above (upper)")
            upper = _int_array("upper", upper)
            want = c.n_ctx // c.cond_downsample
            if upper.shape[1] != want:
                raise PriorCallError(f"upper must hold {want} codes of level {c.level + 1}, got {upper.shape[1]}")
            if upper.min() < 0 or upper.max() >= c.bins:
                raise PriorCallError(f"upper codes must lie in [0, {c.bins})")
            if batch is not None and upper.shape[0] != batch:
                raise PriorCallError(f"upper has batch {upper.shape[0]}, tokens {batch}")
        elif upper is not None:
            raise PriorCallError("only upsamplers take upper codes")
        return tokens, y, upper

    # -- teacher forcing ---------------------------------------------------------------------------
    def logits(self, tokens: Any, y: Any = None, upper: Any = None) -> jax.Array:
        """float32 logits [B, T, bins] of the original ``z_forward`` (teacher forcing).

        tokens int [B, T] codes of this level; y int [B, Y] (original label layout); upper int
        [B, T_upper] codes of the level above (upsamplers). A single encoder-decoder prior
        (1b_lyrics style) returns [B, n_tokens + T, n_vocab + bins]: lyric positions first, joint vocab.
        """
        tokens, y, upper = self.check_inputs(tokens, y, upper)
        return _logits(self.module, self.params, tokens, y, upper)

    def features(
        self,
        tokens: Any,
        y: Any = None,
        upper: Any = None,
        layers: Any = None,
        stop_early: bool = True,
        music_only: bool = True,
    ) -> dict[int, jax.Array]:
        """Teacher-forced activations for representation learning: {n: float32 [B, T, width]}.

        ``layers``: layer counts n in 0..depth (an int or a sequence): the residual stream after the
        first n layers, i.e. the output of layer n (1-based; n = 0 is the transformer's input). The
        MIR recipe "layer 36 of 72" is ``layers=36``. Same forward as ``logits``, which is the output
        head on ``features(..., layers=depth)``: the stream is taken before the x_cond re-add that the
        original applies after the transformer when not ``merged_decoder``. ``stop_early`` runs no
        layer past the deepest one asked for. A single encoder-decoder prior (1b_lyrics style)
        returns the T music positions (``music_only=False``: all n_tokens + T, lyrics first).
        """
        depth = self.config.depth
        if layers is None:
            raise PriorCallError(f"pass layers: layer counts in 0..{depth} (e.g. {depth // 2})")
        wanted = (layers,) if np.ndim(layers) == 0 else tuple(layers)
        try:
            wanted = tuple(sorted({int(n) for n in wanted}))
        except (TypeError, ValueError):
            raise PriorCallError(f"layers must be integers in 0..{depth}, got {layers!r}") from None
        if not wanted or wanted[0] < 0 or wanted[-1] > depth:
            raise PriorCallError(f"layers must be layer counts in 0..{depth}, got {list(wanted)}")
        tokens, y, upper = self.check_inputs(tokens, y, upper)
        return _features(self.module, self.params, tokens, y, upper, wanted, bool(stop_early), bool(music_only))

    def condition(self, y: Any = None, upper: Any = None) -> dict:
        """{'x_cond', 'y_cond', 'encoder_kv', 'prime'} (see ``JukeboxPrior.condition``)."""
        _, y, upper = self.check_inputs(None, y, upper)
        return _condition(self.module, self.params, y, upper)

    def loss(self, tokens: Any, y: Any = None, upper: Any = None) -> tuple[jax.Array, dict]:
        """(loss, {'bpd', 'prime_loss', 'gen_loss'}) as the original ``z_forward``."""
        tokens, y, upper = self.check_inputs(tokens, y, upper)
        return _loss(self.module, self.params, tokens, y, upper)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(
        self,
        key: jax.Array,
        n: int,
        y: Any = None,
        upper: Any = None,
        prime: Any = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        **kw: Any,
    ) -> np.ndarray:
        """``n`` new tokens after the optional ``prime`` int32 [B, T_prime] (see ``sampling.sampler``).

        Samples with ``unrolled()``: a prior loaded with the scanned layers (``load_prior``'s
        default) makes its unrolled copy of the layer weights at the first call and keeps it, so
        the params are held twice; load with ``scan_layers=False`` to hold them once."""
        return sample_prior(
            self.unrolled(),
            key,
            n,
            y=y,
            upper=upper,
            prime=prime,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            **kw,
        )

    def unrolled(self) -> Prior:
        """This prior with every transformer layer unrolled (``load_prior(..., scan_layers=False)``):
        the layout to sample with, since a decode step of the scanned layout copies each layer's
        weights out of their stacks (two extra passes over the weights per token). Itself when
        already unrolled; made once (params on a mesh stay on it)."""
        if not self.module.scan_layers:
            return self
        if self._unrolled is None:
            mesh = getattr(jax.tree_util.tree_leaves(self.params)[0], "sharding", None)
            mesh = mesh.mesh if isinstance(mesh, jax.sharding.NamedSharding) else None
            module = self.module.clone(scan_layers=False)
            params = _unroll(self.params, self.config, mesh)
            self._unrolled = Prior(config=self.config, params=params, module=module, vocab=self.vocab)
        return self._unrolled

    def num_params(self) -> int:
        return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(self.params)))


def _unroll(params: Any, config: PriorConfig, mesh: Any = None) -> Any:
    """``unroll_layers`` as one program; on a mesh, the unrolled leaves land in their shards."""
    shardings = None
    if mesh is not None:
        unrolled = abstract_prior_params(config, scan_layers=False)
        shardings = param_shardings(unrolled, mesh, prior_param_axes(config, False))
    return jax.jit(unroll_layers, out_shardings=shardings)(params)


def load_prior(
    path: PathLike,
    level: int | None = None,
    dtype: Any = None,
    *,
    released: bool = False,
    mesh: Any = None,
    scan_layers: bool = True,
) -> Prior:
    """Load a prior from a prior directory, or from a whole-model directory (``level``: 0 = finest,
    default the top level).

    ``dtype`` casts the params on restore (e.g. jnp.bfloat16) and the module then computes in it
    (float32 LayerNorm, softmax and logits; see ``precision.py``). ``released=True``: only the
    transformers' matmul kernels are restored in ``dtype``, every other float in float32 (the
    released models' fp16 layout, read leaf by leaf: no float32 copy of the kernels). ``mesh`` (``sharding.make_mesh``):
    Orbax restores every param straight into its shard by the sharding rules (no full host copy).
    ``scan_layers=False``: the layers unrolled once (``unroll_layers``), for sampling: a decode step
    then reads every layer's weights in place instead of copying them out of the scan stacks.
    """
    config = load_config(path)
    if isinstance(config, JukeboxConfig):
        level = len(config.priors) - 1 if level is None else level
        if not 0 <= level < len(config.priors):
            raise CheckpointError(f"{path} has prior levels 0..{len(config.priors) - 1}, not {level}")
    sub = component_dir(path, f"prior_level_{level}") if isinstance(config, JukeboxConfig) else path
    config = load_config(sub)
    if not isinstance(config, PriorConfig):
        raise CheckpointError(f"{sub} holds a {type(config).__name__}, not a prior")
    if level is not None and config.level != level:
        raise CheckpointError(f"{sub} holds the level-{config.level} prior, not level {level}")
    sharding = None if mesh is None else checkpoint_sharding(mesh, prior_param_axes(config))
    leaf_dtype = dtype
    if released and dtype is not None:
        leaf_dtype = lambda names, stored: released_dtype(names, stored, dtype)  # noqa: E731
    params = load_params(sub, dtype=leaf_dtype, sharding=sharding, expected=abstract_prior_params(config))
    if not scan_layers:
        params = _unroll(params, config, mesh)
    dtypes = {} if dtype is None else {"dtype": dtype, "param_dtype": jnp.float32 if released else dtype}
    module = JukeboxPrior(config, scan_layers=scan_layers, **dtypes)
    return Prior(config=config, params=params, module=module, vocab=load_vocab(sub))
