"""The bundled demo model (jukebox_flax/assets/demo_model): it loads, is small, is the default of
`jukebox-flax sample`, and has learned its synthetic dataset (reconstruction SNR on an unseen song)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import load_script
from jukebox_flax.checkpoint import load_config
from jukebox_flax.cli import main
from jukebox_flax.config import JukeboxConfig
from jukebox_flax.sampling.command import default_model

# measured: 17.4 dB on this clip (17.7 dB on the held-out songs, scripts/evaluate_demo_model.py); an
# untrained VQ-VAE gives about 0 dB
MIN_LEVEL0_SNR_DB = 10.0


def test_bundled_model_is_a_small_whole_model():
    path = default_model()
    assert path.parent.name == "assets" and path.parent.parent.name == "jukebox_flax"
    config = load_config(path)
    assert isinstance(config, JukeboxConfig) and len(config.priors) == 3
    assert config.vqvae.hop_lengths == (8, 32, 128)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 20 * 2**20


def test_sample_without_model_uses_the_bundled_one(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["sample", "--seconds", "1", "--levels", "1", "--artist", "Ben High", "--genre", "chiptune",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    wav, sr = sf.read(str(out / "level_2" / "item_0.wav"), dtype="float32")
    assert sr == 44100 and wav.shape[0] == 44100 // 128 * 128
    assert np.all(np.isfinite(wav)) and np.abs(wav).max() > 0


def test_vqvae_reconstructs_an_unseen_song():
    from jukebox_flax.vqvae.api import load_vqvae

    synthetic = load_script("make_synthetic_dataset")
    rng = np.random.default_rng([99, 1])  # a seed the training data never used
    audio = synthetic.render_song("Cleo Minor", "chiptune", 0.75, rng)
    n = audio.shape[0] // 128 * 128
    x = audio[None, :n, None]
    vq = load_vqvae(default_model())
    codes = vq.encode(x)
    recon = np.asarray(vq.decode(codes, start_level=0))
    snr = 10 * np.log10(np.sum(x**2) / np.sum((x - recon) ** 2))
    assert snr > MIN_LEVEL0_SNR_DB, snr
