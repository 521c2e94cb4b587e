"""Whole priors (conditioning + autoregressive model) against the original code and the HF port."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF, hps, load_npz, state_dict

from jukebox_flax.checkpoint import save_model_dir
from jukebox_flax.config import PriorConfig
from jukebox_flax.prior.api import Prior, PriorCallError, init_prior_params, load_prior
from jukebox_flax.prior.prior import JukeboxPrior, stack_layers
from jukebox_flax.sampling.sampler import sample_prior
from jukebox_flax.training import OptimConfig, gradient_task
from jukebox_flax_convert.hf_config import jukebox_config_from_hf
from jukebox_flax_convert.hf_keys import split_hf_state_dict
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.prior_keys import PriorKeyError, prior_params_from_state_dict, prior_state_dict_from_params

PRIORS = ["prior_up0", "prior_up1", "prior_top5b", "prior_top5b_lyrics", "prior_top1b"]


def _config(name: str) -> PriorConfig:
    return prior_config_from_hps(hps(name), vqvae_config_from_hps(hps("vqvae_tiny")))


def _outputs(module: JukeboxPrior, params, tokens, y, upper):
    """condition, logits and loss in one compilation."""

    def run(p, t, y, u):
        cond = module.apply({"params": p}, y, u, method=JukeboxPrior.condition)
        logits = module.apply({"params": p}, t, y, u)
        loss, metrics = module.apply({"params": p}, t, y, u, method=JukeboxPrior.loss)
        return cond, logits, loss, metrics

    return jax.jit(run)(params, tokens, y, upper)


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", PRIORS)
def test_prior_matches_original(name):
    c, a = _config(name), load_npz(f"openai/{name}")
    sd = state_dict(a)
    params = prior_params_from_state_dict(sd, c)
    back = prior_state_dict_from_params(params, c)
    assert set(back) == set(sd)
    for k in sd:
        assert np.array_equal(back[k], sd[k]), k

    tokens = jnp.asarray(a["outputs/zs/0"].astype(np.int32))
    y = jnp.asarray(a["inputs/y"].astype(np.int32))
    upper = jnp.asarray(a["outputs/zs/1"].astype(np.int32)) if c.is_upsampler else None
    cond, logits, loss, metrics = _outputs(JukeboxPrior(c), params, tokens, y, upper)

    x_cond = np.asarray(cond["x_cond"])
    if c.lyrics == "single":  # [zeros for lyric positions ; timing]
        np.testing.assert_allclose(x_cond, a["outputs/kv/cond_full"], rtol=0, atol=1e-5)
        x_cond = x_cond[:, c.n_tokens :]
    np.testing.assert_allclose(x_cond, a["outputs/x_cond"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cond["y_cond"]), a["outputs/y_cond"], rtol=0, atol=1e-5)
    if c.lyrics != "none":
        np.testing.assert_array_equal(np.asarray(cond["prime"]), a["outputs/prime"])
    if c.lyrics == "separate":
        np.testing.assert_allclose(np.asarray(cond["encoder_kv"]), a["outputs/encoder_kv"], rtol=0, atol=1e-5)
    else:
        assert cond["encoder_kv"] is None
    assert logits.shape == a["outputs/logits"].shape and logits.dtype == jnp.float32
    assert _rel(logits, a["outputs/logits"]) < 1e-4
    assert abs(float(loss) - float(a["outputs/loss"])) < 1e-5
    for k in ("bpd", "prime_loss", "gen_loss"):
        assert abs(float(metrics[k]) - float(a[f"outputs/{k}"])) < 1e-5, k


@pytest.mark.parametrize("hf_index", [0, 1, 2])
def test_prior_matches_hf(hf_index):
    """HF tiny_1b_style: priors.0 is the top (single encoder-decoder), priors.1/2 the upsamplers."""
    d = HF / "tiny_1b_style"
    hf_config = json.loads((d / "config.json").read_text())
    config = jukebox_config_from_hf(hf_config)
    with np.load(d / "state_dict.npz") as f:
        sd = {k: f[k] for k in f.files}
    with np.load(d / "oracle.npz") as f:
        o = {k: f[k] for k in f.files if k.startswith(f"prior{hf_index}/")}
    level = config.vqvae.levels - 1 - hf_index
    c = config.priors[level]
    params = prior_params_from_state_dict(split_hf_state_dict(sd, hf_config)[f"prior_level_{level}"], c)
    pre = f"prior{hf_index}/"
    tokens = jnp.asarray(o[pre + "music_tokens"].astype(np.int32))
    y = jnp.asarray(o[pre + "metadata"].astype(np.int32))
    upper = jnp.asarray(o[pre + "music_tokens_cond"].astype(np.int32)) if c.is_upsampler else None
    cond, logits, loss, metrics = _outputs(JukeboxPrior(c), params, tokens, y, upper)
    x_cond = np.asarray(cond["x_cond"])[:, c.prime_len :]
    np.testing.assert_allclose(x_cond, o[pre + "audio_conditioning"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cond["y_cond"]), o[pre + "metadata_conditioning"], rtol=0, atol=1e-5)
    assert _rel(logits, o[pre + "logits"]) < 1e-4
    assert abs(float(loss) - float(o[pre + "loss"])) < 1e-5
    assert abs(float(metrics["gen_loss"]) - float(o[pre + "next_token_prediction_loss"])) < 1e-5
    assert abs(float(metrics["prime_loss"]) - float(o[pre + "encoder_loss"])) < 1e-5


def test_state_dict_errors_name_keys():
    c = _config("prior_up0")
    sd = state_dict(load_npz("openai/prior_up0"))
    missing = {k: v for k, v in sd.items() if k != "y_emb.artist_emb.emb.weight"}
    with pytest.raises(PriorKeyError, match="missing y_emb.artist_emb.emb.weight"):
        prior_params_from_state_dict(missing, c)
    with pytest.raises(PriorKeyError, match="unexpected prime_state_ln.weight"):
        prior_params_from_state_dict({**sd, "prime_state_ln.weight": np.zeros(32, np.float32)}, c)
    shaped = dict(sd, **{"conditioner_blocks.0.ln.weight": np.zeros(31, np.float32)})
    with pytest.raises(PriorKeyError, match=r"conditioner_blocks.0.ln.weight has shape \(31,\)"):
        prior_params_from_state_dict(shaped, c)
    shaped = dict(sd, **{"prior.pos_emb.pos_emb": np.zeros((63, 32), np.float32)})
    with pytest.raises(PriorKeyError, match="pos_emb"):
        prior_params_from_state_dict(shaped, c)
    # the non-checkpointed spelling of the conditioner's res blocks is accepted too
    plain = {k.replace(".0.blocks.", ".0.model."): v for k, v in sd.items()}
    assert set(prior_params_from_state_dict(plain, c)) == set(prior_params_from_state_dict(sd, c))


def test_unrolled_copy_is_made_once_and_holds_the_same_weights():
    """Prior.sample decodes with ``unrolled()``: one copy per prior, kept, with the stored weights."""
    c = _config("prior_up0")
    prior = Prior(config=c, params=prior_params_from_state_dict(state_dict(load_npz("openai/prior_up0")), c))
    unrolled = prior.unrolled()
    assert unrolled is prior.unrolled() and not unrolled.module.scan_layers
    assert unrolled.unrolled() is unrolled
    back = stack_layers(unrolled.params, c)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(prior.params)
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(prior.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_prior_api_roundtrip_and_decode(tmp_path):
    """save -> load_prior -> Prior.logits == module; decode (pass-through) == teacher forcing."""
    c, a = _config("prior_top5b"), load_npz("openai/prior_top5b")
    params = prior_params_from_state_dict(state_dict(a), c)
    save_model_dir(tmp_path / "p", params, c)
    prior = load_prior(tmp_path / "p")
    assert isinstance(prior, Prior) and prior.config == c and prior.level == 2
    tokens, y = a["outputs/zs/0"].astype(np.int32), a["inputs/y"].astype(np.int32)
    logits = prior.logits(tokens, y=y)
    assert _rel(logits, a["outputs/logits"]) < 1e-4
    with pytest.raises(PriorCallError, match="labels"):
        prior.logits(tokens)
    with pytest.raises(PriorCallError, match=r"\[0, 32\)"):
        prior.logits(tokens + 32, y=y)

    module, cond = prior.module, prior.condition(y)
    cache = module.init_cache(2, jnp.float32)
    step = jax.jit(
        lambda p, x, s, cache: module.apply(
            {"params": p}, x, s, cache, cond["x_cond"], cond["y_cond"], cond["encoder_kv"], method=JukeboxPrior.decode
        )
    )
    # inputs[:, i] is the token at position start + i - 1 (position 0 takes the start embedding)
    shifted = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
    first, cache = step(prior.params, jnp.asarray(shifted[:, :9]), jnp.int32(0), cache)  # chunked prime 0..8
    nxt, cache = step(prior.params, jnp.asarray(shifted[:, 9:18]), jnp.int32(9), cache)  # positions 9..17
    got = np.concatenate([np.asarray(first), np.asarray(nxt)], axis=1)
    np.testing.assert_allclose(got, np.asarray(logits)[:, :18], rtol=0, atol=1e-4)

    # loaded for sampling with the layers unrolled: the same logits, samples and features
    flat = load_prior(tmp_path / "p", scan_layers=False)
    assert not flat.module.scan_layers and "layer_5" in flat.params["prior"]["transformer"]
    np.testing.assert_allclose(np.asarray(flat.logits(tokens, y=y)), np.asarray(logits), rtol=0, atol=1e-5)
    key = jax.random.key(3)
    scanned = sample_prior(prior, key, 24, y=y, chunk_size=8)  # decodes through the scan stacks
    np.testing.assert_array_equal(flat.sample(key, 24, y=y, chunk_size=8), scanned)
    # Prior.sample decodes with its unrolled copy, made once and kept
    np.testing.assert_array_equal(prior.sample(key, 24, y=y, chunk_size=8), scanned)
    assert flat.unrolled() is flat
    np.testing.assert_allclose(
        np.asarray(flat.features(tokens, y=y, layers=4)[4]),
        np.asarray(prior.features(tokens, y=y, layers=4)[4]),
        rtol=0,
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        np.asarray(
            stack_layers(flat.params, c)["prior"]["transformer"]["layers_0_5"]["unit_1"]["attn"]["c_attn"]["kernel"]
        ),
        np.asarray(params["prior"]["transformer"]["layers_0_5"]["unit_1"]["attn"]["c_attn"]["kernel"]),
    )


@pytest.mark.slow
def test_train_step_reduces_loss():
    """A few Adam steps on one fixed toy batch lower the loss (memorisation)."""
    c = _config("prior_up0").replace(depth=2, width=16, heads=1, cond_depth=1, cond_width=8, n_ctx=16, blocks=4)
    params = init_prior_params(c, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, c.bins, (2, c.n_ctx)), jnp.int32)
    upper = jnp.asarray(rng.integers(0, c.bins, (2, c.n_ctx // c.cond_downsample)), jnp.int32)
    y = jnp.asarray([[0, 0, 0, 1, 2, -1, -1, -1, -1]] * 2, jnp.int32)
    loss_fn = lambda p, inputs, key: JukeboxPrior(c).apply({"params": p}, *inputs, method=JukeboxPrior.loss)  # noqa: E731
    task = gradient_task(params, loss_fn, OptimConfig(lr=3e-3, warmup_steps=0))
    state, losses = task.init(jax.random.key(0), None), []
    for _ in range(30):
        state, metrics = task.step(state, (tokens, y, upper), jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and float(metrics["grad_norm"]) > 0
    assert losses[-1] < 0.7 * losses[0], losses
