"""Training memory and precision: remat modes, bfloat16 with float32 master weights, float16 with
dynamic loss scaling, gradient accumulation (tiny priors and a linear model)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jukebox_flax import training
from jukebox_flax.config import PriorConfig
from jukebox_flax.mixed_precision import LossScaleConfig, LossScaleState, update_loss_scale
from jukebox_flax.prior.prior import JukeboxPrior, init_prior_params, unroll_layers
from jukebox_flax.prior.transformer import layer_segments
from jukebox_flax.train_plan import prior_tokens_task

# Four layers of (block, transpose_block): one scanned run of two repeats; no labels (fast init).
TINY = PriorConfig(
    level=0,
    n_ctx=16,
    width=16,
    depth=4,
    heads=2,
    attn_order=1,
    blocks=4,
    bins=16,
    downs_t=(2,),
    strides_t=(2,),
    labels=False,
)


def tokens(batch: int = 2, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, TINY.n_ctx), 0, TINY.bins)


def leaves_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_modes_give_the_same_loss_and_gradients(scan_layers):
    assert layer_segments(TINY.attention_layout)[0].repeat == 2  # the scanned layout has a scanned run
    params = init_prior_params(TINY, jax.random.PRNGKey(0))
    if not scan_layers:
        params = unroll_layers(params)
    x = tokens()
    results, checkpoints = {}, {}
    for remat in ("none", "attention", "block"):
        module = JukeboxPrior(TINY, scan_layers=scan_layers, remat=remat)

        def loss(p, module=module):
            return module.apply({"params": p}, x, method=JukeboxPrior.loss)[0]

        traced = jax.jit(jax.value_and_grad(loss)).trace(params)
        checkpoints[remat] = len(re.findall(r"= (?:checkpoint|remat2?)\[", str(traced.jaxpr)))
        results[remat] = traced.lower().compile()(params)
    # remat is really there: no recomputed region without it, one per layer (scan: per unit) with it
    per_layer = 2 if scan_layers else TINY.depth
    assert checkpoints == {"none": 0, "attention": per_layer, "block": per_layer}
    for remat in ("attention", "block"):
        np.testing.assert_allclose(float(results[remat][0]), float(results["none"][0]), rtol=0, atol=1e-6)
        leaves_close(results[remat][1], results["none"][1], 1e-6)


def test_remat_keeps_the_param_tree():
    x = tokens()
    trees = [
        jax.eval_shape(
            lambda k, r=remat, s=scan: JukeboxPrior(TINY, scan_layers=s, remat=r).init(k, x, method=JukeboxPrior.loss),
            jax.random.PRNGKey(0),
        )
        for scan in (True, False)
        for remat in ("none", "attention", "block")
    ]
    flat = [{jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(t)} for t in trees]
    assert flat[0] == flat[1] == flat[2] and flat[3] == flat[4] == flat[5]
    assert any("layers_0_3" in k for k in flat[0]) and any("layer_3" in k for k in flat[3])


STRUCTURED = (jnp.arange(TINY.n_ctx)[None] * 3 + jnp.arange(4)[:, None]) % TINY.bins  # learnable sequences


def run_steps(task, batch, steps, seed=0):
    state = task.init(jax.random.PRNGKey(seed), None)
    losses = []
    for i in range(steps):
        state, metrics = task.step(state, batch, jax.random.PRNGKey(100 + i))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.slow  # two prior compilations
def test_bfloat16_training_lowers_the_loss_with_float32_master_weights():
    optim = training.OptimConfig(lr=3e-2, warmup_steps=0)
    batch = (STRUCTURED, None, None)
    bf16 = prior_tokens_task(TINY, optim, precision="bfloat16")
    state, losses = run_steps(bf16, batch, 6)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
    fresh = init_prior_params(TINY, jax.random.PRNGKey(0))
    fp32_loss = float(JukeboxPrior(TINY).apply({"params": fresh}, STRUCTURED, method=JukeboxPrior.loss)[0])
    assert losses[0] == pytest.approx(fp32_loss, rel=2e-2)  # bf16 rounding, not another model
    assert losses[0] != fp32_loss  # ... but really computed in bfloat16
    jaxpr = str(jax.make_jaxpr(lambda s, b: bf16.update(s, b, jax.random.PRNGKey(0)))(state, batch))
    assert "bf16" in jaxpr and "dot_general" in jaxpr


def linear_task(precision="float16", loss_scale=None, accumulate=1, optim=None):
    def init(key, batch):
        return {"w": jnp.full((4,), 0.1, jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def loss_fn(p, inputs, key):
        x, t = inputs
        pred = x.astype(p["w"].dtype) @ p["w"] + p["b"]
        loss = jnp.mean(jnp.square(pred - t.astype(pred.dtype)))
        return loss, {"mse": loss}

    optim = optim or training.OptimConfig(lr=1e-2, warmup_steps=0)
    return training.gradient_task(
        init, loss_fn, optim, precision=precision, accumulate=accumulate, loss_scale=loss_scale
    )


def linear_batch(i, overflow=False):
    x = jax.random.normal(jax.random.PRNGKey(i), (8, 4))
    t = x @ jnp.asarray([0.5, -0.3, 0.2, 0.1]) + 0.05
    return (x * 3e3 if overflow else x), t  # 3e3: the float16 squares overflow (> 65504)


SCALE = LossScaleConfig(init_scale=2.0**4, growth_factor=2.0, growth_interval=3)


def host(tree):
    return jax.tree.map(lambda a: np.array(jax.device_get(a)), tree)


def test_float16_loss_scaling_skips_an_overflow_step_and_regrows():
    task = linear_task(loss_scale=SCALE)
    state = task.init(jax.random.PRNGKey(0), None)
    assert isinstance(state, training.ScaledGradState) and float(state.loss_scale.scale) == 16.0

    state, m = task.step(state, linear_batch(0), jax.random.PRNGKey(0))
    assert float(m["skipped"]) == 0.0 and float(m["loss_scale"]) == 16.0 and int(state.loss_scale.good_steps) == 1
    before = host((state.params, state.opt_state))  # the step donates its state: copy first

    state, m = task.step(state, linear_batch(1, overflow=True), jax.random.PRNGKey(1))
    assert float(m["skipped"]) == 1.0 and float(m["loss_scale"]) == 8.0
    assert int(state.loss_scale.good_steps) == 0
    assert all(np.isfinite(float(v)) for v in m.values())  # a skipped step logs 0, not inf
    after = host((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: params, Adam moments and its step count

    state, m = task.step(state, linear_batch(2), jax.random.PRNGKey(2))
    assert float(m["skipped"]) == 0.0 and float(m["loss_scale"]) == 8.0
    assert not np.array_equal(np.asarray(state.params["w"]), before[0]["w"])  # the next step updates
    for i in (3, 4):  # two more good steps: three in a row, the scale doubles
        state, m = task.step(state, linear_batch(i), jax.random.PRNGKey(i))
    assert float(m["loss_scale"]) == 16.0 and int(state.loss_scale.good_steps) == 0


def test_loss_scale_update_rule():
    cfg = LossScaleConfig()  # the original: 2^16, x 2^(1/1000) per good step, at most 2^24
    s = LossScaleState(jnp.float32(2.0**16), jnp.int32(0))
    grown = update_loss_scale(s, jnp.asarray(True), cfg)
    assert float(grown.scale) == pytest.approx(2.0**16 * 2.0 ** (1 / 1000), rel=1e-6)
    assert float(update_loss_scale(s, jnp.asarray(False), cfg).scale) == 2.0**15
    top = update_loss_scale(LossScaleState(jnp.float32(2.0**24), jnp.int32(0)), jnp.asarray(True), cfg)
    assert float(top.scale) == 2.0**24


def test_float16_loss_scale_is_checkpointed_and_resumes_exactly(tmp_path):
    def batch_at(i):
        return linear_batch(i, overflow=i == 1)

    common = dict(seed=0, log_every=1, progress=False)
    ref, _ = training.train(linear_task(loss_scale=SCALE), batch_at, 6, tmp_path / "ref", **common)
    training.train(linear_task(loss_scale=SCALE), batch_at, 3, tmp_path / "cut", checkpoint_every=3, **common)
    got, _ = training.train(linear_task(loss_scale=SCALE), batch_at, 6, tmp_path / "cut", **common)
    # halved at the overflow (step 2), doubled after steps 3-5, one good step since
    assert float(got.loss_scale.scale) == 16.0 and int(got.loss_scale.good_steps) == 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# A huge eps makes AdamW's update lr * m / (sqrt(v) + eps) ~ lr / eps * gradient: the params after
# one step show the gradient itself (Adam's first step alone would be lr * sign(gradient)).
LINEAR_IN_GRAD = training.OptimConfig(lr=1e3, eps=1e3, warmup_steps=0, clip=0.0)


@pytest.mark.slow  # two prior compilations
def test_accumulating_two_micro_batches_equals_the_whole_batch():
    batch = (tokens(4, seed=5), None, None)
    whole, whole_m = prior_tokens_task(TINY, LINEAR_IN_GRAD).step(
        prior_tokens_task(TINY, LINEAR_IN_GRAD).init(jax.random.PRNGKey(0), None), batch, jax.random.PRNGKey(0)
    )
    task = prior_tokens_task(TINY, LINEAR_IN_GRAD, accumulate=2)
    init = task.init(jax.random.PRNGKey(0), None)
    start = host(init.params)
    acc, acc_m = task.step(init, batch, jax.random.PRNGKey(0))
    moves = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(start))]
    moved = float(max(moves))
    assert moved > 1e-4  # the step moved the params by about the gradient
    leaves_close(acc.params, whole.params, 2e-7)
    assert float(acc_m["loss"]) == pytest.approx(float(whole_m["loss"]), abs=1e-6)
    assert float(acc_m["grad_norm"]) == pytest.approx(float(whole_m["grad_norm"]), rel=1e-5)
    with pytest.raises(training.TrainingError, match="micro-batches"):
        task.step(acc, (tokens(3), None, None), jax.random.PRNGKey(0))
