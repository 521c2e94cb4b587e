"""Sharded == single-device on 8 (CPU) devices: logits, greedy samples, a training step, and Orbax
restoring params straight into their shards; plus the sharding rules themselves (no devices needed).

The 8-device checks run in a subprocess: ``--xla_force_host_platform_device_count=8`` must be set
before jax starts, and conftest has already imported jax in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jukebox_flax.config import preset
from jukebox_flax.prior.api import abstract_prior_params, prior_param_axes
from jukebox_flax.sharding import ShardingError, axes_of, logical_spec, make_mesh, param_shardings, param_specs

TESTS = Path(__file__).resolve().parent

# The worker: prior_top5b_lyrics (block / transpose / prev-block / cross layers, separate lyric
# encoder, merged decoder) on a 2 (data) x 4 (model) mesh, batch 2; a training step of prior_top5b.
WORKER = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    sys.path.insert(0, sys.argv[1])
    from sampling_fixtures import fixture_prior
    from jukebox_flax.checkpoint import save_model_dir
    from jukebox_flax.prior.api import load_prior
    from jukebox_flax.prior.prior import JukeboxPrior
    from jukebox_flax.sampling.sampler import sample_prior
    from jukebox_flax.sharding import make_mesh, param_shardings, shard_batch
    from jukebox_flax.training import OptimConfig, gradient_task

    out = {"devices": jax.device_count()}
    prior, a = fixture_prior("prior_top5b_lyrics")
    mesh = make_mesh(data=2, model=4)
    tokens, y = a["outputs/zs/0"].astype(np.int32), a["inputs/y"].astype(np.int32)
    module = prior.module

    # Orbax: every param restored straight into its NamedSharding
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(Path(tmp) / "p", prior.params, prior.config)
        loaded = load_prior(Path(tmp) / "p", mesh=mesh)
        unrolled = load_prior(Path(tmp) / "p", mesh=mesh, scan_layers=False)
    want = param_shardings(prior.params, mesh, prior.module.param_axes())
    flat = jax.tree_util.tree_leaves_with_path(loaded.params)
    out["restore_sharding_ok"] = all(
        leaf.sharding.is_equivalent_to(s, leaf.ndim) for (_, leaf), s in zip(flat, jax.tree.leaves(want)))
    out["restore_split_leaves"] = sum(
        leaf.addressable_shards[0].data.size < leaf.size for _, leaf in flat)
    out["restore_values_equal"] = all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(loaded.params),
                                                                      jax.tree.leaves(prior.params)))

    # teacher-forced logits: single device vs data x model
    fn = jax.jit(lambda p, t, y: module.apply({"params": p}, t, y))
    single = np.asarray(fn(prior.params, tokens, y))
    st, sy = shard_batch((tokens, y), mesh)
    sharded_out = fn(loaded.params, st, sy)
    sharded = np.asarray(sharded_out)
    out["logits_max_abs_diff"] = float(np.abs(sharded - single).max())
    out["logits_max_abs"] = float(np.abs(single).max())
    out["logits_fixture_rel"] = float(np.abs(single - a["outputs/logits"]).max() / np.abs(single).max())
    out["logits_devices"] = len(sharded_out.sharding.device_set)

    # greedy sampling, sharded (the single-device sampler equals the fixture exactly: test_sampling_prior)
    greedy = sample_prior(loaded, jax.random.key(0), prior.config.n_ctx, y=y, top_k=1, chunk_size=16, mesh=mesh)
    out["greedy_equal_fixture"] = bool(np.array_equal(greedy, a["outputs/greedy_sample_top_k1"]))
    # the same with the layers unrolled at load time, each layer's weights in their shards
    kernel = unrolled.params["prior"]["transformer"]["layer_0"]["mlp"]["c_fc"]["kernel"]
    out["unrolled_param_spec"] = str(kernel.sharding.spec)
    greedy = sample_prior(unrolled, jax.random.key(0), prior.config.n_ctx, y=y, top_k=1, chunk_size=16, mesh=mesh)
    out["unrolled_greedy_equal_fixture"] = bool(np.array_equal(greedy, a["outputs/greedy_sample_top_k1"]))

    # one training step (AdamW, clipping): single device vs sharded; the 6-layer prior_top5b keeps
    # the two gradient compilations short
    prior, a = fixture_prior("prior_top5b")
    tokens, y, module = a["outputs/zs/0"].astype(np.int32), a["inputs/y"].astype(np.int32), prior.module

    def loss_fn(p, inputs, key):
        return module.apply({"params": p}, *inputs, method=JukeboxPrior.loss)

    optim = OptimConfig(lr=1e-2, warmup_steps=1)
    states = {}
    for name, m in (("single", None), ("sharded", mesh)):
        task = gradient_task(lambda k, b: prior.params, loss_fn, optim, mesh=m, param_axes=module.param_axes())
        state = task.init(jax.random.key(0), (tokens, y))
        state, metrics = task.step(state, (tokens, y), jax.random.key(1))
        states[name] = (state, float(metrics["loss"]))
    (s1, l1), (s2, l2) = states["single"], states["sharded"]
    out["train_loss_diff"] = abs(l1 - l2)
    out["train_param_max_diff"] = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                                      for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)))
    kernel = s2.params["prior"]["transformer"]["layers_0_5"]["unit_0"]["mlp"]["c_fc"]["kernel"]
    out["train_param_spec"] = str(kernel.sharding.spec)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(TESTS)], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_sharded_logits_equal_single_device(eight_devices):
    r = eight_devices
    assert r["devices"] == 8 and r["logits_devices"] == 8
    assert r["logits_fixture_rel"] < 1e-4
    assert r["logits_max_abs_diff"] <= 1e-5 * max(1.0, r["logits_max_abs"])


@pytest.mark.slow
def test_sharded_greedy_samples_equal(eight_devices):
    assert eight_devices["greedy_equal_fixture"]
    assert eight_devices["unrolled_greedy_equal_fixture"]
    assert eight_devices["unrolled_param_spec"] == str(P(None, "model"))


@pytest.mark.slow
def test_orbax_restores_into_shards(eight_devices):
    r = eight_devices
    assert r["restore_sharding_ok"] and r["restore_values_equal"]
    assert r["restore_split_leaves"] >= 10  # the attention / MLP kernels and biases of every layer group


@pytest.mark.slow
def test_sharded_training_step(eight_devices):
    r = eight_devices
    assert r["train_loss_diff"] < 1e-5
    assert r["train_param_max_diff"] < 1e-5
    assert r["train_param_spec"] == str(P(None, None, "model"))


# ------------------------------------------------------------------------------------------------
# The rules (one device is enough)


def test_param_axes_from_metadata():
    """The axes come from the params' own metadata; a tree mirroring the params (optimizer moments)
    finds them by path; a leaf that is no param is an error, not silently replicated."""
    axes = prior_param_axes(preset("prior_5b_lyrics"))
    stacked = ("prior", "transformer", "layers_18_77", "unit_0")
    assert axes[stacked + ("attn", "c_attn", "kernel")] == ("layers", "embed", "heads")
    assert axes[stacked + ("attn", "c_enc_kv", "kernel")] == ("layers", "embed", "heads")
    assert axes[stacked + ("mlp", "c_proj", "kernel")] == ("layers", "mlp", "embed")
    assert axes[("prior", "transformer", "layer_78", "attn", "c_proj", "bias")] == ("embed",)
    assert axes[("prior", "x_emb", "embedding")] == ("vocab", "embed")
    assert axes[("label_conditioner", "artist_emb", "embedding")] == ("labels", "embed")
    moment = ("0", "mu") + stacked + ("mlp", "c_fc", "kernel")
    assert axes_of(moment, 3, axes) == ("layers", "embed", "mlp")
    assert axes_of(("0", "count"), 0, axes) == ()
    with pytest.raises(ShardingError):
        axes_of(("prior", "transformer", "nonsense", "kernel"), 2, axes)
    up = prior_param_axes(preset("upsampler_level_0"))  # the conditioner's VQ-VAE convolutions: a table
    assert up[("upper_conditioner", "cond", "model_0", "kernel")] == ("conv_window", "conv_in", "conv_out")


class FakeMesh:  # logical_spec only reads mesh.shape
    shape = {"data": 4, "model": 8}


@pytest.mark.parametrize(
    "name", ["prior_1b_lyrics", "prior_5b", "prior_5b_lyrics", "upsampler_level_0", "upsampler_level_1"]
)
@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_transformer_kernel_splits_over_model(name, scan_layers):
    """Abstract shapes only: every transformer kernel (music model and lyric encoder) of a released
    preset is split over 'model' on an 8-way model axis."""
    config = preset(name)
    tree = abstract_prior_params(config, scan_layers=scan_layers)
    specs = param_specs(tree, prior_param_axes(config, scan_layers), FakeMesh)
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    kernels = [
        (jax.tree_util.keystr(k), spec)
        for k, spec in flat
        if "transformer" in jax.tree_util.keystr(k) and jax.tree_util.keystr(k).endswith("['kernel']")
    ]
    assert len(kernels) >= (4 * config.depth if not scan_layers else 4)
    replicated = [k for k, spec in kernels if "model" not in tuple(spec)]
    assert not replicated, replicated[:5]


def test_every_released_param_gets_a_spec():
    """Released 5b_lyrics on a 1 x 1 mesh: every leaf gets a spec; on a would-be 4 x 8 mesh the
    rules split the right dimensions (checked with logical_spec on a fake mesh shape)."""
    mesh = make_mesh(data=1, model=1)
    config = preset("prior_5b_lyrics")
    tree = abstract_prior_params(config)
    shardings = param_shardings(tree, mesh, prior_param_axes(config))
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(tree))

    c_attn = (6, 4800, 3600)
    assert logical_spec(("layers", "embed", "heads"), c_attn, FakeMesh) == P(None, None, "model")
    assert logical_spec(("layers", "batch", "cache_len", "kv"), (6, 16, 8192, 1200), FakeMesh) == P(
        None, "data", None, "model"
    )
    assert logical_spec(("layers", "batch", "cache_len", "kv"), (6, 3, 8192, 1200), FakeMesh) == P(
        None, None, None, "model"
    )  # 3 rows do not split over 4: replicated, still correct


def test_mesh_errors():
    with pytest.raises(ShardingError):
        make_mesh(data=2 * jax.device_count(), model=1)
    with pytest.raises(ShardingError):
        make_mesh(model=jax.device_count() + 1)
