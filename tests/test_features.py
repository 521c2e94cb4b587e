"""Prior.features: the residual stream after any layer, against the original (fixture priors).

Per-layer reference: the fixtures record every layer's attention weights, which the original computes
from ln_0 of the stream entering that layer. So running layer i alone (unrolled, its params sliced
out of the scanned stack) on our features[i] must give the original's weights for layer i and our
features[i + 1]; and the output head on features[depth] must give the original's logits. That pins
every layer's activations to the original without any scan machinery in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hps, load_npz, state_dict

from jukebox_flax.errors import JukeboxError
from jukebox_flax.prior.api import Prior
from jukebox_flax.prior.autoregressive import Autoregressive
from jukebox_flax.prior.prior import JukeboxPrior
from jukebox_flax.prior.transformer import ResAttnBlock, TransformerConfig, layer_location, layer_segments
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.prior_keys import prior_params_from_state_dict

PRIORS = ["prior_up0", "prior_up1", "prior_top5b", "prior_top5b_lyrics", "prior_top1b"]


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _setup(name: str):
    c = prior_config_from_hps(hps(name), vqvae_config_from_hps(hps("vqvae_tiny")))
    a = load_npz(f"openai/{name}")
    params = prior_params_from_state_dict(state_dict(a), c)
    tokens = jnp.asarray(a["outputs/zs/0"].astype(np.int32))
    y = jnp.asarray(a["inputs/y"].astype(np.int32))
    upper = jnp.asarray(a["outputs/zs/1"].astype(np.int32)) if c.is_upsampler else None
    return c, a, params, tokens, y, upper


@pytest.fixture(scope="module", params=PRIORS)
def every_layer(request):
    """All layers' features (joint positions for 'single'), logits and conditioning in one compilation."""
    c, a, params, tokens, y, upper = _setup(request.param)
    module = JukeboxPrior(c)

    def run(p, t, y, u):
        feats = module.apply(
            {"params": p},
            t,
            y,
            u,
            layers=tuple(range(c.depth + 1)),
            stop_early=False,
            music_only=False,
            method=JukeboxPrior.features,
        )
        logits = module.apply({"params": p}, t, y, u)
        _, x_cond, cond = module.apply({"params": p}, t, y, u, method=JukeboxPrior._inputs)
        return feats, logits, x_cond, cond["encoder_kv"]

    return (c, a, params) + tuple(jax.jit(run)(params, tokens, y, upper))


def _layer_params(tree: dict, layout, i: int) -> dict:
    key, unit, r = layer_location(layer_segments(layout), i)
    return tree[key] if unit is None else jax.tree_util.tree_map(lambda x: x[r], tree[key][unit])


def test_every_layer_matches_original(every_layer):
    c, a, params, feats, logits, x_cond, encoder_kv = every_layer
    ar = Autoregressive(TransformerConfig.from_prior(c))
    assert sorted(feats) == list(range(c.depth + 1))
    for n, f in feats.items():
        assert f.shape == (a["outputs/zs/0"].shape[0], ar.config.n_ctx, c.width) and f.dtype == jnp.float32, n

    # the head on the last layer's features is the logits path: equal to ours, and to the original's
    head = ar.apply({"params": params["prior"]}, feats[c.depth], x_cond, method=Autoregressive.head)
    np.testing.assert_allclose(np.asarray(head), np.asarray(logits), rtol=0, atol=1e-5)
    assert _rel(head, a["outputs/logits"]) < 1e-4

    # each layer alone, unrolled: original attention weights from features[i], and features[i + 1]
    runs = {}
    for i, attn_type in enumerate(c.attention_layout):
        if attn_type not in runs:
            block = ResAttnBlock(attn_type, ar.config)
            runs[attn_type] = jax.jit(
                lambda p, x, kv, block=block: block.apply({"params": p}, x, kv, method=ResAttnBlock.attention_weights)
            )
        p_i = _layer_params(params["prior"]["transformer"], c.attention_layout, i)
        out, w = runs[attn_type](p_i, feats[i], encoder_kv)
        np.testing.assert_allclose(
            np.asarray(w), a[f"outputs/attn_weights/{i}"], rtol=0, atol=1e-5, err_msg=f"layer {i} ({attn_type})"
        )
        assert _rel(out, feats[i + 1]) < 1e-5, i


@pytest.fixture(scope="module")
def top1b():
    c, a, params, tokens, y, upper = _setup("prior_top1b")
    return Prior(config=c, params=params), a, tokens, y


@pytest.mark.slow
def test_stop_early_equals_full_run_mid_unit(top1b):
    """Stopping inside a scanned unit (partial repeat) or a segment gives the full run's values."""
    prior, _, tokens, y = top1b
    c = prior.config
    full = prior.features(tokens, y=y, layers=range(c.depth + 1), stop_early=False)
    for layers in [(4,), (2, 17), (24, 33)]:  # inside unit 1 of a repeat; across segments; mid-repeat
        got = prior.features(tokens, y=y, layers=layers)
        assert sorted(got) == sorted(layers)
        for n in layers:
            np.testing.assert_array_equal(np.asarray(got[n]), np.asarray(full[n]), err_msg=str(n))


@pytest.mark.slow
def test_stop_early_does_no_work_past_the_layer(top1b):
    """Layers past the deepest one asked for are never read: poisoning their params changes nothing."""
    prior, _, tokens, y = top1b
    c = prior.config
    stop = 20  # inside the second scanned run (layers 16..30), mid-repeat
    want = prior.features(tokens, y=y, layers=(stop,))[stop]
    poisoned = jax.tree_util.tree_map(lambda x: np.array(x), prior.params)  # writable copies
    tr = poisoned["prior"]["transformer"]
    for key in list(tr):
        for i in range(stop, c.depth):
            k, unit, r = layer_location(layer_segments(c.attention_layout), i)
            if k != key:
                continue
            if unit is None:
                for leaf in jax.tree_util.tree_leaves(tr[key]):
                    leaf[...] = np.nan
            else:
                for leaf in jax.tree_util.tree_leaves(tr[key][unit]):
                    leaf[r] = np.nan
    bad = Prior(config=c, params=poisoned)
    got = bad.features(tokens, y=y, layers=(stop,))[stop]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.isfinite(np.asarray(bad.logits(tokens, y=y))).all()  # the poison is real


@pytest.mark.slow
def test_single_music_positions_and_head(top1b):
    """'single' priors: features cover the music positions; the head on them = the music logits."""
    prior, a, tokens, y = top1b
    c = prior.config
    feats = prior.features(tokens, y=y, layers=[c.depth, 0])
    assert sorted(feats) == [0, c.depth]
    assert feats[c.depth].shape == (tokens.shape[0], tokens.shape[1], c.width)
    x_cond = prior.condition(y)["x_cond"][:, c.n_tokens :]
    ar = Autoregressive(TransformerConfig.from_prior(c))
    logits = ar.apply({"params": prior.params["prior"]}, feats[c.depth], x_cond, method=Autoregressive.head)
    assert _rel(logits, a["outputs/logits"][:, c.n_tokens :]) < 1e-4


def test_bad_layers_are_clear_errors(top1b):
    prior, _, tokens, y = top1b
    for layers in [(), (-1,), (prior.config.depth + 1,)]:
        with pytest.raises(JukeboxError, match="layers"):
            prior.features(tokens, y=y, layers=layers)
    with pytest.raises(JukeboxError, match="labels"):
        prior.features(tokens, layers=(1,))
