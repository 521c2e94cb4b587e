"""VQ-VAE parity with the original (openai fixture) and the Hugging Face port (HF fixture), losses,
EMA codebooks, training, chunked long-audio processing and the encode/decode commands."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF, hps, load_npz, state_dict

from jukebox_flax.config import VQVAEConfig
from jukebox_flax.vqvae import bottleneck as bn
from jukebox_flax.vqvae.api import VQVAE, VQVAEInputError, init_vqvae_params
from jukebox_flax.vqvae.chunked import decoder_reach, encoder_reach
from jukebox_flax.vqvae.losses import stft_magnitude, vqvae_loss
from jukebox_flax.vqvae.vqvae import VQVAEModule
from jukebox_flax_convert.hf_config import vqvae_config_from_hf
from jukebox_flax_convert.hps import vqvae_config_from_hps
from jukebox_flax_convert.vqvae_keys import (
    VQVAEKeyError,
    vqvae_params_from_state_dict,
    vqvae_state_dict_from_params,
)

BANDWIDTH = dict(l1=0.1, l2=0.01, spec=10.0)  # what the oracle fixed


@pytest.fixture(scope="module")
def tiny():
    f = load_npz("openai/vqvae_tiny")
    config = vqvae_config_from_hps(hps("vqvae_tiny"))
    params = vqvae_params_from_state_dict(state_dict(f), config)
    return f, config, params, VQVAEModule(config)


def _nct(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 1)  # the fixture is channels-first


# ------------------------------------------------------------------------------------------------
# key mapping


def test_state_dict_round_trip_is_exact(tiny):
    f, config, params, _ = tiny
    sd = state_dict(f)
    back = vqvae_state_dict_from_params(params, config)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].shape == value.shape and np.array_equal(back[key], value), key
    assert params["encoders_0"]["level_blocks_0"]["model_0_1"]["model_1"]["model_3"]["kernel"].shape == (1, 16, 16)
    assert params["bottleneck"]["level_blocks_2"]["k"].shape == (32, 16)


@pytest.mark.slow
def test_state_dict_errors_name_the_key(tiny):
    f, config, _, _ = tiny
    sd = state_dict(f)
    missing = {k: v for k, v in sd.items() if k != "decoders.1.out.bias"}
    with pytest.raises(VQVAEKeyError, match="missing decoders.1.out.bias"):
        vqvae_params_from_state_dict(missing, config)
    with pytest.raises(VQVAEKeyError, match="unexpected encoders.0.extra"):
        vqvae_params_from_state_dict({**sd, "encoders.0.extra.weight": np.zeros((1, 1, 1))}, config)
    # tensors of another rank are named too (checked before the conv kernels are transposed)
    for extra in ((4, 4), (2,), (1, 2, 3, 4)):
        with pytest.raises(VQVAEKeyError, match=r"unexpected encoders.0.extra.weight"):
            vqvae_params_from_state_dict({**sd, "encoders.0.extra.weight": np.zeros(extra)}, config)
    flat_kernel = dict(sd, **{"decoders.0.out.weight": sd["decoders.0.out.weight"][..., 0]})
    with pytest.raises(VQVAEKeyError, match=r"decoders.0.out.weight has shape"):
        vqvae_params_from_state_dict(flat_kernel, config)
    bad = dict(sd, **{"bottleneck.level_blocks.0.k": np.zeros((31, 16), np.float32)})
    with pytest.raises(VQVAEKeyError, match=r"bottleneck.level_blocks.0.k has shape \(31, 16\)"):
        vqvae_params_from_state_dict(bad, config)


# ------------------------------------------------------------------------------------------------
# parity with the original


def test_encoder_blocks_and_latents(tiny):
    f, config, params, module = tiny
    v, x = {"params": params}, f["inputs/x"]
    for level in range(config.levels):
        outs = module.apply(v, x, level, method=VQVAEModule.encoder_block_outputs)
        assert len(outs) == level + 1
        for j, out in enumerate(outs):
            ref = _nct(f[f"outputs/encoder_block_outputs/{level}/{j}"])
            np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)
    for level, z in enumerate(module.apply(v, x, method=VQVAEModule.encode_latents)):
        np.testing.assert_allclose(np.asarray(z), _nct(f[f"outputs/latents_prequant/{level}"]), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_codes_dequantised_and_reconstructions(tiny):
    f, config, params, module = tiny
    v = {"params": params}
    codes = module.apply(v, f["inputs/x"], method=VQVAEModule.encode)
    for level, z in enumerate(codes):
        z = np.asarray(z)
        assert z.dtype == np.int32
        ref, margin = f[f"outputs/zs/{level}"], f[f"outputs/quant_margin/{level}"]
        safe = margin > 1e-4  # the tiled init_k codebook has many near-duplicate codes
        np.testing.assert_array_equal(z[safe], ref[safe])
        assert (z != ref).mean() < 0.1
        k = params["bottleneck"][f"level_blocks_{level}"]["k"]
        deq = np.asarray(bn.dequantise(jnp.asarray(ref), k))
        np.testing.assert_array_equal(deq, _nct(f[f"outputs/dequantised/{level}"]))
        margin_ours = np.asarray(
            bn.quantise_margin(module.apply(v, f["inputs/x"], [level], method=VQVAEModule.encode_latents)[0], k)
        )
        np.testing.assert_allclose(margin_ours, margin, atol=1e-4)
    for level in range(config.levels):
        given = [jnp.asarray(f[f"outputs/zs/{L}"]) for L in range(level, config.levels)]
        out = module.apply(v, given, start_level=level, method=VQVAEModule.decode)
        np.testing.assert_allclose(np.asarray(out), f[f"outputs/recon_from_level/{level}"], rtol=0, atol=1e-4)


def test_forward_loss_and_metrics(tiny):
    f, config, params, module = tiny
    x = jnp.asarray(f["inputs/x"])
    out = module.apply({"params": params}, x, method=VQVAEModule.forward)
    loss, metrics = vqvae_loss(x, out["x_outs"], out["commit_losses"], config, BANDWIDTH)
    np.testing.assert_allclose(float(loss), f["outputs/forward_loss"], rtol=1e-4)
    names = {k.split("/")[-1] for k in f if k.startswith("outputs/forward_metrics/")}
    assert names == set(metrics)
    for name in names:
        np.testing.assert_allclose(float(metrics[name]), f[f"outputs/forward_metrics/{name}"], rtol=1e-4, err_msg=name)
    for level in range(config.levels):
        np.testing.assert_allclose(
            float(out["commit_losses"][level]), f[f"outputs/commit_loss_per_level/{level}"], rtol=1e-4
        )
    np.testing.assert_allclose(np.asarray(out["x_outs"][0]), f["outputs/forward_x_out"], atol=1e-4)


def test_stft_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3000)).astype(np.float32)
    for n_fft, hop, win in ((512, 50, 240), (2048, 256, 1536)):
        ref = (
            torch.stft(
                torch.from_numpy(x), n_fft, hop, win_length=win, window=torch.hann_window(win), return_complex=True
            )
            .abs()
            .numpy()
            .transpose(0, 2, 1)
        )
        ours = np.asarray(stft_magnitude(jnp.asarray(x), n_fft, hop, win))
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# parity with the Hugging Face port (same maths, HF key names)


def test_hf_fixture_parity():
    from jukebox_flax_convert.hf_keys import hf_to_original

    root = HF / "tiny_1b_style"
    hf_cfg = json.loads((root / "vqvae_config.json").read_text())
    config = vqvae_config_from_hf(hf_cfg)
    with np.load(root / "state_dict.npz") as sd_file:
        sd = {}
        for key in sd_file.files:
            if key.startswith("vqvae."):
                _, original = hf_to_original(key, config.downs_t)
                sd[original] = sd_file[key]
    with np.load(root / "oracle.npz") as o:
        oracle = {k: o[k] for k in o.files if k.startswith("vqvae/")}
    params = vqvae_params_from_state_dict(sd, config)
    module, v = VQVAEModule(config), {"params": params}
    x = oracle["vqvae/input_audio"]
    latents = module.apply(v, x, method=VQVAEModule.encode_latents)
    codes = module.apply(v, x, method=VQVAEModule.encode)
    for level in range(config.levels):
        np.testing.assert_allclose(np.asarray(latents[level]), _nct(oracle[f"vqvae/latent_level{level}"]), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(codes[level]), oracle[f"vqvae/codes_level{level}"])
        k = params["bottleneck"][f"level_blocks_{level}"]["k"]
        np.testing.assert_array_equal(
            np.asarray(bn.dequantise(codes[level], k)), _nct(oracle[f"vqvae/dequantised_level{level}"])
        )
        out = module.apply(v, codes[level:], start_level=level, method=VQVAEModule.decode)
        np.testing.assert_allclose(np.asarray(out), oracle[f"vqvae/decoded_level{level}"], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# public object, chunking


def test_vqvae_object_matches_fixture_and_checks_input(tiny):
    f, config, params, _ = tiny
    vq = VQVAE(config, params)
    codes = vq.encode(f["inputs/x"])
    assert [c.shape for c in codes] == [(2, 512), (2, 128), (2, 32)]
    assert all(c.dtype == jnp.int32 for c in codes)
    zs = [jnp.asarray(f[f"outputs/zs/{L}"]) for L in range(3)]
    np.testing.assert_allclose(np.asarray(vq.decode(zs[1:], start_level=1)), f["outputs/recon_from_level/1"], atol=1e-4)
    with pytest.raises(VQVAEInputError, match="multiple of 128"):
        vq.encode(np.zeros((1, 100, 1), np.float32))
    with pytest.raises(VQVAEInputError, match=r"\[batch, time, 1\]"):
        vq.encode(np.zeros((100,), np.float32))
    with pytest.raises(VQVAEInputError, match="start_level"):
        vq.decode(zs, start_level=3)


@pytest.mark.slow
def test_receptive_field(tiny):
    # released level-0 encoder: 3 x [conv k4 s2 p1 (1 left, 2 right), 8 res blocks with dilations
    # summing to 3280] at 2, 4, 8 samples per position, then a k3 conv at 8 samples per position
    assert encoder_reach(VQVAEConfig(), 0) == (2 + 4 + 8) + 3280 * (2 + 4 + 8) + 8
    # every input a latent or an output sample depends on lies within the computed reach
    _, config, params, module = tiny
    v = {"params": params}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2048, 1)), jnp.float32)
    for level in (0, 2):  # jitted: one compile each beats dispatching the convs op by op
        hop, t = config.hop_lengths[level], 2048 // config.hop_lengths[level] // 2
        latent = jax.jit(lambda x: module.apply(v, x, [level], method=VQVAEModule.encode_latents)[0])
        grad = jax.jit(jax.grad(lambda x: latent(x)[0, t].sum()))(x)
        support = np.nonzero(np.asarray(grad)[0, :, 0])[0]
        assert np.abs(support - t * hop).max() <= encoder_reach(config, level)
        z = latent(x)
        n = 1024
        grad = jax.jit(jax.grad(lambda z: module.apply(v, z, level, method=VQVAEModule.decode_latent)[0, n].sum()))(z)
        support = np.nonzero(np.abs(np.asarray(grad)[0]).sum(-1))[0]
        assert np.abs(support - n / hop).max() <= decoder_reach(config, level)


@pytest.mark.slow
def test_chunked_equals_whole(tiny):
    _, config, params, _ = tiny
    rng = np.random.default_rng(1)
    # three windows (the first and last have the same length: two compilations)
    x = (0.3 * rng.standard_normal((1, 128 * 60, 1))).astype(np.float32)
    whole = VQVAE(config, params, chunk_samples=1 << 30)
    chunked = VQVAE(config, params, chunk_samples=128 * 20)
    codes_chunked = chunked.encode(x)
    module = VQVAEModule(config)
    # the whole-input codes straight from the latents (what whole.encode computes; one compile less)
    latents = jax.jit(lambda p, x: module.apply({"params": p}, x, method=VQVAEModule.encode_latents))(params, x)
    books = [params["bottleneck"][f"level_blocks_{level}"]["k"] for level in range(config.levels)]
    codes = [bn.quantise(z, k)[0] for z, k in zip(latents, books)]
    for level in range(config.levels):
        safe = np.asarray(bn.quantise_margin(latents[level], books[level])) > 1e-4
        np.testing.assert_array_equal(np.asarray(codes_chunked[level])[safe], np.asarray(codes[level])[safe])
        audio = whole.decode(codes[level:], start_level=level)
        audio_chunked = chunked.decode(codes[level:], start_level=level)
        assert audio_chunked.shape == x.shape
        np.testing.assert_allclose(np.asarray(audio_chunked), np.asarray(audio), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# EMA codebook and training


def test_ema_update_and_dead_code_restart():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, 4))
    k = jnp.concatenate([x[:3], 100.0 + jnp.zeros((2, 4))])  # codes 3, 4 are never chosen
    codes, _ = bn.quantise(x, k)
    state = bn.EMAState(k_sum=k, k_elem=jnp.ones((5,)))
    new_k, new_state, metrics = bn.ema_update(jax.random.PRNGKey(1), k, state, x, codes, mu=0.9, threshold=1.0)
    onehot = np.eye(5)[np.asarray(codes)]
    k_sum = 0.9 * np.asarray(k) + 0.1 * onehot.T @ np.asarray(x)
    k_elem = 0.9 + 0.1 * onehot.sum(0)
    np.testing.assert_allclose(np.asarray(new_state.k_sum), k_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state.k_elem), k_elem, rtol=1e-6)
    used = k_elem >= 1.0
    assert used[:3].all() and not used[3:].any()
    np.testing.assert_allclose(np.asarray(new_k)[used], (k_sum / k_elem[:, None])[used], rtol=1e-5)
    for row in np.asarray(new_k)[~used]:  # restarted from this batch's latents
        assert np.isclose(np.asarray(x), row).all(axis=1).any()
    assert float(metrics["usage"]) == 3
    # a batch smaller than the codebook is tiled and jittered (the original init_k)
    k0, s0 = bn.init_codebook(key, x[:3], 8)
    assert k0.shape == (8, 4) and np.abs(np.asarray(k0)[:, None] - np.asarray(x[:3])[None]).min(1).max() < 0.05


@pytest.mark.slow
def test_train_step_loss_falls():
    from jukebox_flax.optim import OptimConfig, make_optimizer
    from jukebox_flax.vqvae.train import init_train_state, make_train_step

    config = VQVAEConfig(
        levels=2,
        downs_t=(2, 1),
        strides_t=(2, 2),
        emb_width=8,
        l_bins=16,
        width=8,
        depth=1,
        multipliers=(1, 1),
        multispec_n_fft=(256, 128),
        multispec_hop_length=(32, 16),
        multispec_window_size=(128, 64),
        linf_k=64,
    )
    t = np.arange(1024) / 44100.0
    x = np.stack([0.5 * np.sin(2 * np.pi * f0 * t) for f0 in (440.0, 660.0)])[..., None].astype(np.float32)
    key = jax.random.PRNGKey(0)
    params = init_vqvae_params(config, key)
    optimizer = make_optimizer(OptimConfig(lr=1e-3, warmup_steps=1))
    state = init_train_state(config, params, optimizer, key, x=jnp.asarray(x))
    step = make_train_step(config, optimizer, dict(l1=0.3, l2=0.1, spec=10.0))
    losses = []
    for i in range(40):
        state, metrics = step(state, jnp.asarray(x), jax.random.fold_in(key, i))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * losses[0], losses
    assert set(state.params) == set(params)
    # resuming keeps the codebooks; level L's EMA counts assume samples // hop_L tokens (restore_k)
    resumed = init_train_state(config, state.params, optimizer, key, samples_per_batch=2048)
    assert config.hop_lengths == (4, 8)
    for k, ema, new_k, hop in zip(state.codebooks, resumed.ema, resumed.codebooks, config.hop_lengths):
        usage = 2048 // hop / config.l_bins  # 32 and 16 per code
        np.testing.assert_array_equal(np.asarray(new_k), np.asarray(k))
        np.testing.assert_allclose(np.asarray(ema.k_elem), usage)
        np.testing.assert_allclose(np.asarray(ema.k_sum), np.asarray(k) * usage, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# command line


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_cli_encode_decode_round_trip(tiny, tmp_path):
    from jukebox_flax.audio import load_audio, save_wav
    from jukebox_flax.checkpoint import save_model_dir
    from jukebox_flax.cli import main

    f, config, params, _ = tiny
    model = save_model_dir(tmp_path / "vq", params, config)
    x = f["inputs/x"][0, :4000, 0]  # not a multiple of the hop: padded, then trimmed
    save_wav(tmp_path / "in.wav", x, 44100, subtype="FLOAT")
    assert main(["encode", "--model", str(model), str(tmp_path / "in.wav"), str(tmp_path / "codes.npz")]) == 0
    with np.load(tmp_path / "codes.npz") as codes:
        assert codes["level_0"].shape == (4096 // 8,) and codes["level_2"].shape == (32,)
        assert int(codes["n_samples"]) == 4000
        padded = np.zeros((1, 4096, 1), np.float32)
        padded[0, :4000, 0] = x
        ref = VQVAE(config, params).encode(padded)
        np.testing.assert_array_equal(codes["level_0"], np.asarray(ref[0][0]))
    assert main(["decode", "--model", str(model), str(tmp_path / "codes.npz"), str(tmp_path / "out.wav")]) == 0
    audio = load_audio(tmp_path / "out.wav")
    assert audio.shape == (4000,)
    expected = np.asarray(VQVAE(config, params).decode(ref, start_level=0))[0, :4000, 0]
    np.testing.assert_allclose(audio, expected, atol=2e-4)  # 16-bit WAV
    assert main(["decode", "--model", str(model), str(tmp_path / "missing.npz"), str(tmp_path / "o.wav")]) == 2
