"""The bundled demo model (jukebox_flax/assets/demo_model): it loads, is small, is the default of
`jukebox-flax sample`, and has learned its synthetic dataset (reconstruction SNR on an unseen song;
the top prior tells the genres apart and its samples follow the genre's note rate)."""

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


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_sample_without_model_uses_the_bundled_one(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        ["sample", "--seconds", "1", "--levels", "1", "--artist", "Ben High", "--genre", "chiptune", "--out", str(out)]
    )
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


GENRES = ("ambient", "chiptune", "breakbeat")


def test_top_prior_names_the_genre_of_unseen_songs():
    """Teacher-forced on one window of an unseen song per genre, the top prior gives the fewest bits
    under the song's own genre label (evaluate_demo_model.py: 100% of 24 held-out crops)."""
    from jukebox_flax.labels import Labeller
    from jukebox_flax.prior.api import load_prior
    from jukebox_flax.vqvae.api import load_vqvae

    synthetic = load_script("make_synthetic_dataset")
    model = default_model()
    vq, prior = load_vqvae(model), load_prior(model, level=2)
    c = prior.config
    labeller = Labeller.from_vocab_dict(prior.vocab).for_config(c)
    for g, genre in enumerate(GENRES):
        audio = synthetic.render_song("Cleo Minor", genre, 1.0, np.random.default_rng([99, 2, g]))
        tokens = np.asarray(vq.encode(audio[None, : c.n_ctx * c.hop_length, None])[2])
        ys = np.stack([labeller.get_y("Cleo Minor", name, "", 8 * 44100, 0) for name in GENRES])
        bits = [float(prior.loss(tokens, ys[i : i + 1])[1]["bpd"]) for i in range(len(GENRES))]
        assert int(np.argmin(bits)) == g, (genre, bits)


@pytest.mark.slow
def test_samples_follow_the_genre_rhythm(tmp_path, capsys):
    """Top-level samples of ambient (long notes) and chiptune (5 notes/s plus arpeggio) differ in
    note rate as the genres do (evaluate_demo_model.py, 16 clips each at temperature 0.8: 0.3 vs 6.9
    pitch changes per second)."""
    evaluate = load_script("evaluate_demo_model")
    rate = {}
    for genre in ("ambient", "chiptune"):
        out = tmp_path / genre
        rc = main(
            [
                "sample",
                "--seconds",
                "2",
                "--levels",
                "1",
                "--batch",
                "2",
                "--artist",
                "Ada Low",
                "--genre",
                genre,
                "--temperature",
                "0.8",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        clips = [sf.read(str(f), dtype="float32")[0] for f in sorted((out / "level_2").glob("*.wav"))]
        rate[genre] = np.mean([evaluate.features(c, 44100)["note_changes_per_s"] for c in clips])
    assert rate["chiptune"] > rate["ambient"] + 2.0, rate


def test_lyrics_for_a_model_without_lyrics_get_a_note(tmp_path):
    """The demo model has no lyrics conditioning: --lyrics is accepted but announced as ignored."""
    from jukebox_flax.cli import build_parser
    from jukebox_flax.sampling.command import plan_sample

    base = ["sample", "--seconds", "8", "--artist", "Ben High", "--genre", "chiptune", "--out", str(tmp_path / "r")]
    notes = plan_sample(build_parser().parse_args(base + ["--lyrics", "sky light"])).notes
    assert any("--lyrics is ignored" in n for n in notes), notes
    assert not any("lyrics" in n for n in plan_sample(build_parser().parse_args(base)).notes)
