"""Incremental decoding with the KV cache == the teacher-forced forward, and == the original's sampling logits.

- every attention type (dense, block, transpose_block, prev_block, cross, prime) in one random model:
  one token at a time, and chunked priming with chunks that straddle and exceed a block;
- the fixtures' ``kv/*`` logits (ancestral, primed, chunk-primed with chunk 7) of the original code;
- the decode step runs inside ``lax.fori_loop`` with a traced position (one compilation).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hps, load_npz, state_dict

from jukebox_flax.prior.autoregressive import Autoregressive
from jukebox_flax.prior.transformer import TransformerConfig, layer_location, layer_segments, scan_params, unroll_params
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps
from jukebox_flax_convert.transformer_keys import autoregressive_from_torch

# ----------------------------------------------------------------------------------------------
# A random model with every attention type

# a scanned run of (block, transpose, prev, cross) x 2, then single dense / prime / block layers
LAYOUT = ("block", "transpose_block", "prev_block", "cross") * 2 + ("dense", "prime", "block")
N_CTX, BLOCKS, WIDTH, BATCH, ENC = 24, 6, 16, 2, 5  # block_ctx 4, 6 rows; prime keys (6 // 6 + 1) * 6 = 12


@pytest.fixture(scope="module")
def every_type():
    model = Autoregressive(
        TransformerConfig(
            width=WIDTH,
            heads=2,
            layout=LAYOUT,
            blocks=BLOCKS,
            n_ctx=N_CTX,
            bins=11,
            prime_len=6,
            encoder_len=ENC,
            y_cond=True,
        )
    )
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    tokens = jax.random.randint(k1, (BATCH, N_CTX), 0, 11)
    x_cond = jax.random.normal(k2, (BATCH, N_CTX, WIDTH))
    y_cond = jax.random.normal(k3, (BATCH, 1, WIDTH))
    enc = jax.random.normal(k4, (BATCH, ENC, WIDTH))
    shapes = nn.meta.unbox(jax.eval_shape(model.init, key, tokens, x_cond, y_cond, enc)["params"])
    # random parameters (so zero-initialised projections and LayerNorm affines are non-trivial)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), shapes)
    full = jax.jit(lambda p, t: model.apply({"params": p}, t, x_cond, y_cond, enc))(params, tokens)
    return model, params, tokens, (x_cond, y_cond, enc), np.asarray(full)


_STEPS: dict = {}


def _step(model):
    """One jitted decode function per model (compiled once per chunk size, reused across tests)."""
    if model not in _STEPS:
        _STEPS[model] = jax.jit(
            lambda p, inp, start, cache, x_cond, y_cond, enc: model.apply(
                {"params": p}, inp, start, cache, x_cond, y_cond, enc, method=Autoregressive.decode
            ),
            donate_argnums=3,
        )
    return _STEPS[model]


def _decode_in_chunks(model, params, tokens, conds, chunks, cache_dtype=jnp.float32):
    step = _step(model)
    inputs = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)  # token t-1 at t
    cache, pos, out = model.init_cache(tokens.shape[0], cache_dtype), 0, []
    for c in chunks:
        logits, cache = step(params, inputs[:, pos : pos + c], jnp.int32(pos), cache, *conds)
        out.append(logits)
        pos += c
    return np.asarray(jnp.concatenate(out, axis=1))


def test_cache_sizes_per_type(every_type):
    model = every_type[0]
    cache = model.init_cache(BATCH, jnp.float32)
    segments = layer_segments(LAYOUT)
    assert [(s.key, s.repeat) for s in segments] == [("layers_0_7", 2), ("layer_8", 1), ("layer_9", 1), ("layer_10", 1)]
    expected = {"block": 4, "transpose_block": 24, "prev_block": 8, "dense": 24, "prime": 12, "cross": ENC}
    for i, t in enumerate(LAYOUT):
        key, unit, _ = layer_location(segments, i)
        entry = cache[key] if unit is None else cache[key][unit]
        repeat = 1 if unit is None else 2
        assert entry["k"].shape == entry["v"].shape == (repeat, BATCH, expected[t], WIDTH // 4)


def test_token_by_token_equals_forward(every_type):
    model, params, tokens, conds, full = every_type
    got = _decode_in_chunks(model, params, tokens, conds, [1] * N_CTX)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [[7, 7, 7, 3], [24]])  # block_ctx 4: chunks straddle and exceed rows
def test_chunked_priming_equals_forward(every_type, chunks):
    model, params, tokens, conds, full = every_type
    got = _decode_in_chunks(model, params, tokens, conds, chunks)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [[1] * N_CTX, pytest.param([7, 7, 7, 3], marks=pytest.mark.slow)])
def test_unrolled_layers_decode_the_same(every_type, chunks):
    """scan_layers=False on the params of unroll_params (what sampling loads) decodes through
    unrolled layers to the same logits; scan_params gives the stored tree back exactly."""
    model, params, tokens, conds, full = every_type
    unrolled = {**params, "transformer": unroll_params(params["transformer"])}
    assert sorted(unrolled["transformer"]) == sorted(f"layer_{i}" for i in range(len(LAYOUT)))
    np.testing.assert_array_equal(
        unrolled["transformer"]["layer_7"]["attn"]["c_proj"]["kernel"],
        params["transformer"]["layers_0_7"]["unit_3"]["attn"]["c_proj"]["kernel"][1],
    )
    back = scan_params(unrolled["transformer"], LAYOUT)
    assert jax.tree.structure(back) == jax.tree.structure(params["transformer"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params["transformer"])))
    flat = model.clone(scan_layers=False)
    got = _decode_in_chunks(flat, unrolled, tokens, conds, chunks)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_unrolled_layers_teacher_forcing_the_same(every_type):
    """The full forward, the attention weights and the features of scan_layers=False equal the scanned ones."""
    model, params, tokens, (x_cond, y_cond, enc), full = every_type
    flat = model.clone(scan_layers=False)
    unrolled = {**params, "transformer": unroll_params(params["transformer"])}
    args = (tokens, x_cond, y_cond, enc)
    np.testing.assert_allclose(np.asarray(flat.apply({"params": unrolled}, *args)), full, rtol=1e-5, atol=1e-5)
    _, w_scan = model.apply({"params": params}, *args, method=Autoregressive.attention_weights)
    _, w_flat = flat.apply({"params": unrolled}, *args, method=Autoregressive.attention_weights)
    assert sorted(w_flat) == sorted(w_scan) == list(range(len(LAYOUT)))
    for i in w_scan:
        np.testing.assert_allclose(np.asarray(w_flat[i]), np.asarray(w_scan[i]), rtol=1e-5, atol=1e-6, err_msg=str(i))
    layers = (0, 2, 5, 9)  # stops inside the scanned run's second repeat and past it
    for stop_early in (True, False):
        f_scan = model.apply(
            {"params": params}, *args, layers=layers, stop_early=stop_early, method=Autoregressive.features
        )
        f_flat = flat.apply(
            {"params": unrolled}, *args, layers=layers, stop_early=stop_early, method=Autoregressive.features
        )
        for n in layers:
            np.testing.assert_allclose(np.asarray(f_flat[n]), np.asarray(f_scan[n]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_traced_position_in_a_loop(every_type):
    """One compiled step inside lax.fori_loop serves every position (cache carried, not re-traced)."""
    model, params, tokens, (x_cond, y_cond, enc), full = every_type
    inputs = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)

    @jax.jit
    def run(p):
        def body(t, state):
            cache, out = state
            logits, cache = model.apply(
                {"params": p},
                jax.lax.dynamic_slice_in_dim(inputs, t, 1, 1),
                t,
                cache,
                x_cond,
                y_cond,
                enc,
                method=Autoregressive.decode,
            )
            return cache, jax.lax.dynamic_update_slice_in_dim(out, logits, t, axis=1)

        out = jnp.zeros((BATCH, N_CTX, 11))
        return jax.lax.fori_loop(0, N_CTX, body, (model.init_cache(BATCH), out))[1]

    np.testing.assert_allclose(np.asarray(run(params)), full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_half_precision_cache_runs(every_type):
    model, params, tokens, conds, full = every_type
    half = model.clone(config=dataclasses.replace(model.config, dtype=jnp.bfloat16))
    got = _decode_in_chunks(half, params, tokens, conds, [1] * N_CTX, cache_dtype=jnp.bfloat16)
    assert np.isfinite(got).all()
    assert np.abs(got - full).max() < 0.1 * np.abs(full).max()


# ----------------------------------------------------------------------------------------------
# The original's sampling logits (fixtures kv/*)

# prior_up1 has the same transformer as prior_up0 (its conditioner differs; see test_transformer.py)
PRIORS = ["prior_up0", "prior_top5b", "prior_top5b_lyrics", pytest.param("prior_top1b", marks=pytest.mark.slow)]


def _split_chunks(length: int, size: int) -> list[int]:
    """The original ``split_chunks``: full chunks then the remainder."""
    n = (length + size - 1) // size
    return [size] * (n - 1) + [(length - 1) % size + 1]


@pytest.mark.parametrize("name", PRIORS)
def test_fixture_kv_logits(name):
    f = load_npz(f"openai/{name}")
    cfg = prior_config_from_hps(hps(name), vqvae_config_from_hps(hps("vqvae_tiny")))
    model = Autoregressive(TransformerConfig.from_prior(cfg))
    params = autoregressive_from_torch(state_dict(f), "prior.", model.config.layout, model.config.merged_decoder)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    x_cond, y_cond = jnp.asarray(f["outputs/x_cond"]), jnp.asarray(f["outputs/y_cond"])
    enc = jnp.asarray(f["outputs/encoder_kv"]) if cfg.lyrics == "separate" else None
    lyric = 0
    if cfg.lyrics == "single":
        x_cond, lyric = jnp.asarray(f["outputs/kv/cond_full"]), int(f["outputs/kv/lyric_prefix_len"])
    total = cfg.total_ctx
    primed, chunk = int(f["outputs/kv/primed_len"]), int(f["outputs/kv/chunk_size"])
    # Every prefix goes in chunks of the original's chunk-primed sampling (7, the remainder, then
    # single tokens), so each prior compiles three decode steps, not one per prefix length; the
    # logits do not depend on the chunking (one chunk over many blocks: test_chunked_priming_equals_forward).
    plans = {
        # the single enc-dec model always primes with its lyrics
        "ancestral": (_split_chunks(lyric, chunk) if lyric else []) + [1] * (total - lyric),
        "primed": _split_chunks(primed, chunk) + [1] * (total - primed),
        "primed_chunked": _split_chunks(primed, chunk) + [1] * (total - primed),
    }
    for kind, chunks in plans.items():
        tokens = jnp.asarray(f[f"outputs/kv/{kind}_tokens"], jnp.int32)
        got = _decode_in_chunks(model, params, tokens, (x_cond, y_cond, enc), chunks)
        ref = f[f"outputs/kv/{kind}_logits"]
        scale = np.abs(ref).max()
        assert np.abs(got - ref).max() <= 1e-4 * scale, (kind, np.abs(got - ref).max(), scale)
        # and the teacher-forced logits the original computed on the same tokens
        ref_fwd = f[f"outputs/kv/{kind}_forward_logits"]
        assert np.abs(got - ref_fwd).max() <= 1e-4 * scale, kind
