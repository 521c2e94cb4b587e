"""``jukebox-flax embed``: windows, pooling, batching, failures, the command (tiny demo model)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import load_script

from jukebox_flax.cli import main
from jukebox_flax.embed import EmbedError, Window, embed_files, plan_windows
from jukebox_flax.labels import Labeller, window_y
from jukebox_flax.prior.api import load_prior
from jukebox_flax.vqvae.api import load_vqvae

LAYER = 24  # of the fixture 1b-style top prior's 48: stops in the middle of a scanned run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The demo whole model (fixture weights: VQ-VAE hops 8/32/128, top prior n_ctx 64 = 8192 samples)."""
    mod = load_script("make_demo_model")
    out = tmp_path_factory.mktemp("embed") / "model"
    argv, sys.argv = sys.argv, ["make_demo_model", str(out)]
    try:
        mod.main()
    finally:
        sys.argv = argv
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_prior(model_dir), load_vqvae(model_dir)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    short = d / "short.wav"  # 0.1 s: less than one window, padded
    sf.write(short, 0.3 * rng.standard_normal(4410).astype(np.float32), 44100)
    long = d / "long.flac"  # 0.5 s stereo at 22.05 kHz: resampled, mixed, 3 windows (last right-aligned)
    sf.write(long, 0.3 * rng.standard_normal((11025, 2)).astype(np.float32), 22050)
    bad = d / "bad.wav"
    bad.write_text("not audio")
    return short, long, bad, d / "missing.wav"


def test_plan_windows():
    assert plan_windows(10, 64) == [Window(0, 10, 0)]
    assert plan_windows(128, 64) == [Window(0, 64, 0), Window(64, 64, 0)]
    assert plan_windows(173, 64) == [Window(0, 64, 0), Window(64, 64, 0), Window(109, 64, 19)]
    with pytest.raises(EmbedError):
        plan_windows(0, 64)


def _reference(prior, vq, path, layer):
    """The recipe spelled out: encode, windows, per-window labels, features, mean over counted positions."""
    from jukebox_flax.audio import load_audio

    c = prior.config
    audio = load_audio(path, sr=44100)
    n = audio.shape[0]
    padded = np.zeros((1, -(-n // c.sample_length) * c.sample_length, 1), np.float32)
    padded[0, :n, 0] = audio
    codes = np.asarray(vq.encode(padded)[c.level][0])
    n_tok = -(-n // c.hop_length)
    labeller = Labeller.from_vocab_dict(prior.vocab).for_config(c)
    label = labeller.get_label("unknown", "unknown", "", max(n, int(np.ceil(c.min_duration * 44100))), 0)
    total, count, per_window = 0.0, 0, []
    for w in plan_windows(n_tok, c.n_ctx):
        tokens = np.zeros((1, c.n_ctx), np.int32)
        tokens[0, : w.valid] = codes[w.start : w.start + w.valid]
        y = window_y(label.y, label.full_tokens, c.n_tokens, w.start, c.hop_length, c.sample_length)[None]
        h = np.asarray(prior.features(tokens, y=y, layers=layer)[layer])[0]
        total = total + h[w.count_from : w.valid].sum(0)
        count += w.valid - w.count_from
        per_window.append(h[: w.valid].mean(0))
    return total / count, np.stack(per_window)


@pytest.mark.slow
def test_embed_matches_the_recipe_and_skips_bad_files(loaded, audio_files, tmp_path):
    prior, vq = loaded
    short, long, bad, missing = audio_files
    out = tmp_path / "emb.npz"
    res = embed_files(
        None,
        [short, bad, long, missing],
        [LAYER],
        batch=2,
        per_window=True,
        prior=prior,
        vqvae=vq,
        progress=False,
        out=out,
    )
    assert res.files == [str(short), str(long)]
    assert res.failed == [str(bad), str(missing)] and len(res.errors) == 2
    assert res.embeddings.shape == (2, 1, prior.config.width)
    for i, path in enumerate([short, long]):
        want, want_windows = _reference(prior, vq, path, LAYER)
        np.testing.assert_allclose(res.embeddings[i, 0], want, rtol=0, atol=1e-5)
        got_windows = res.window_embeddings[res.window_file == i, 0]
        np.testing.assert_allclose(got_windows, want_windows, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(res.window_file, [0, 1, 1, 1])
    np.testing.assert_array_equal(res.window_tokens, [35, 64, 64, 64])
    np.testing.assert_allclose(res.window_start, np.array([0, 0, 64, 109]) * 128 / 44100, rtol=1e-6)

    with np.load(out) as f:
        assert f["embeddings"].shape == (2, prior.config.width)
        np.testing.assert_array_equal(f["embeddings"], res.embeddings[:, 0])
        assert list(f["files"]) == res.files and list(f["failed"]) == res.failed
        assert f["layers"].tolist() == [LAYER] and int(f["level"]) == 2 and str(f["pool"]) == "mean"
        assert f["window_embeddings"].shape == (4, prior.config.width)


@pytest.mark.slow
def test_batching_and_max_pool(loaded, audio_files):
    """Batch size changes nothing; max pooling is the max over the windows' counted positions."""
    prior, vq = loaded
    short, long, _, _ = audio_files
    one = embed_files(None, [long, short], [LAYER, 2], batch=1, prior=prior, vqvae=vq, progress=False)
    three = embed_files(None, [long, short], [LAYER, 2], batch=3, prior=prior, vqvae=vq, progress=False)
    assert one.embeddings.shape == (2, 2, prior.config.width) and one.layers == (2, LAYER)
    np.testing.assert_allclose(one.embeddings, three.embeddings, rtol=0, atol=1e-6)
    mx = embed_files(None, [short], [LAYER], pool="max", prior=prior, vqvae=vq, progress=False)
    mean = one.embeddings[1, 1]
    assert (mx.embeddings[0, 0] >= mean - 1e-6).all() and (mx.embeddings[0, 0] > mean).any()


@pytest.mark.slow
def test_embed_command(model_dir, audio_files, tmp_path, capsys):
    short, _, bad, _ = audio_files
    out = tmp_path / "cli.npz"
    assert (
        main(
            [
                "embed",
                "--model",
                str(model_dir),
                "--layer",
                str(LAYER),
                "--quiet",
                str(short),
                str(bad),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "skipped 1 unreadable" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["embeddings"].shape == (1, 32) and list(f["failed"]) == [str(bad)]

    assert main(["embed", "--model", str(model_dir), "--layer", "49", str(short), "--out", str(out)]) == 2
    assert "between 1 and 48" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                "--model",
                str(model_dir),
                "--layer",
                "3",
                "--quiet",
                str(bad),
                "--out",
                str(tmp_path / "none.npz"),
            ]
        )
        == 2
    )
    assert "none of the 1 files" in capsys.readouterr().err
    assert not (tmp_path / "none.npz").exists()
    assert (
        main(
            [
                "embed",
                "--model",
                str(model_dir),
                "--layer",
                "3",
                "--artist",
                "Nobody At All",
                str(short),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "unknown artist" in capsys.readouterr().err


def test_songs_longer_than_the_timing_range_are_cut(loaded, audio_files):
    """Past max_duration the timing signal has no bins: the song is cut there (labels stay valid)."""
    from jukebox_flax.prior.api import Prior

    prior, vq = loaded
    c = prior.config.replace(min_duration=0.1, max_duration=0.4)
    short_lived = Prior(config=c, params=prior.params, vocab=prior.vocab)
    res = embed_files(None, [audio_files[1]], [2], prior=short_lived, vqvae=vq, per_window=True, progress=False)
    max_tokens = (int(np.ceil(0.4 * 44100)) - 1) // 128  # 137 of the song's 173 tokens
    assert res.seconds[0] == pytest.approx(max_tokens * 128 / 44100)
    np.testing.assert_allclose(res.window_start * 44100 / 128, [0, 64, max_tokens - 64], atol=1e-3)
