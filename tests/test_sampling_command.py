"""``jukebox-flax sample``: input checks before any compute, outputs, and resuming a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, load_npz, state_dict
from sampling_fixtures import VQ_CONFIG, fixture_prior

from jukebox_flax.checkpoint import save_whole_model_dir
from jukebox_flax.cli import main
from jukebox_flax.config import JukeboxConfig
from jukebox_flax.labels import Labeller
from jukebox_flax_convert.vqvae_keys import vqvae_params_from_state_dict

SECONDS = "0.56"  # 24576 samples: 192 top tokens (17 windows), 768 level-1 tokens (23 windows)


def _write_model(path: Path, top: str, ids_dir: Path) -> Path:
    priors = [fixture_prior(name)[0] for name in ("prior_up0", "prior_up1", top)]
    config = JukeboxConfig(vqvae=VQ_CONFIG, priors=tuple(p.config for p in priors))
    vq = vqvae_params_from_state_dict(state_dict(load_npz("openai/vqvae_tiny")), VQ_CONFIG)
    components = {"vqvae": (vq, VQ_CONFIG, None)}
    for p in priors:
        vocab = Labeller.from_ids_dir(ids_dir, p.config.labeller_version).for_config(p.config).vocab_dict()
        components[f"prior_level_{p.config.level}"] = (p.params, p.config, vocab)
    return save_whole_model_dir(path, components, config)


@pytest.fixture(scope="module")
def models(tmp_path_factory, ids_dir):
    root = tmp_path_factory.mktemp("models")
    return {
        "1b": _write_model(root / "tiny_1b", "prior_top1b", ids_dir),
        "5b": _write_model(root / "tiny_5b", "prior_top5b", ids_dir),
    }


def _argv(model, out, *extra, seconds=SECONDS, artist="Alan Jackson", genre="Country", lyrics="Hello world"):
    return [
        "sample",
        "--model",
        str(model),
        "--artist",
        artist,
        "--genre",
        genre,
        "--lyrics",
        lyrics,
        "--seconds",
        seconds,
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(artist="Nobody Known XYZ"), "artist"),
        (dict(genre="not a genre at all"), "genre"),
        (dict(seconds="900"), "longest song"),
        (dict(lyrics="la la \U0001f600"), "cannot write"),
        (dict(seconds="0.04"), "upsampling level 1 needs"),
    ],
)
def test_bad_input_is_one_clear_line_before_any_compute(models, tmp_path, capsys, monkeypatch, change, message):
    import jukebox_flax.prior.api as prior_api

    monkeypatch.setattr(prior_api, "load_prior", lambda *a, **k: pytest.fail("loaded a prior before checking"))
    kw = dict(seconds=SECONDS) | change
    seconds = kw.pop("seconds")
    assert main(_argv(models["1b"], tmp_path / "out", seconds=seconds, **kw)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_settings_and_run_directories(models, tmp_path, capsys):
    assert main(_argv(models["1b"], tmp_path / "a", "--top-k", "3", "--top-p", "0.5")) == 2
    assert main(_argv(models["1b"], tmp_path / "a", "--temperature", "0.9", "0.8")) == 2
    assert main(_argv(models["1b"], tmp_path / "a", "--resume")) == 2
    assert main(_argv(models["1b"], tmp_path / "a", "--prime", str(tmp_path / "missing.wav"))) == 2
    err = capsys.readouterr().err.splitlines()
    assert "both" in err[0] and "one per sampled level" in err[1] and "resume" in err[2] and "not found" in err[3]


# Runs the CLI in a child process that SIGKILLs itself right after it has saved the top level's
# codes with at least MIN_TOKENS per row: a real kill at a deterministic point (no timing race).
_KILLER = """
import os, signal, sys
from jukebox_flax.sampling import song
MIN_TOKENS = int(sys.argv[1])
save = song.RunDir.save_codes
def save_then_die(self, level, z):
    save(self, level, z)
    if level == 2 and z.shape[1] >= MIN_TOKENS:
        os.kill(os.getpid(), signal.SIGKILL)
song.RunDir.save_codes = save_then_die
from jukebox_flax.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run_killed_after(argv: list[str], min_tokens: int) -> None:
    """Run the CLI in a subprocess that is SIGKILLed once the top level holds ``min_tokens`` per row."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(min_tokens), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (exit {proc.returncode})"


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(models, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    extra = ("--levels", "2", "--batch", "2", "--seed", "7", "--temperature", "1.0")
    assert main(_argv(models["5b"], full, *extra)) == 0
    want = np.load(full / "codes.npz")
    assert want["level_2"].shape == (2, 192) and want["level_1"].shape == (2, 768)
    assert "level_0" not in want.files
    for level in (1, 2):
        assert sorted(p.name for p in (full / f"level_{level}").iterdir()) == ["item_0.wav", "item_1.wav"]

    _run_killed_after(_argv(models["5b"], killed, *extra), 100)
    partial = np.load(killed / "codes" / "level_2.npy")
    assert 100 <= partial.shape[1] < 192 and not (killed / "codes.npz").exists()
    np.testing.assert_array_equal(partial, want["level_2"][:, : partial.shape[1]])
    assert main(_argv(models["5b"], killed, *extra, "--resume")) == 0
    got = np.load(killed / "codes.npz")
    for level in (1, 2):
        np.testing.assert_array_equal(got[f"level_{level}"], want[f"level_{level}"])
    # a different seed gives different music
    assert main(_argv(models["5b"], tmp_path / "other", "--levels", "1", "--batch", "2", "--seed", "8")) == 0
    assert (np.load(tmp_path / "other" / "codes.npz")["level_2"] != want["level_2"]).any()


@pytest.mark.slow
def test_sample_then_align_a_lyrics_run(models, tmp_path, capsys):
    """``sample`` of a lyrics top prior writes alignment.npz when the model's alignment layer fits
    (else a note), and ``align`` writes the library's ``get_alignment`` of the run's codes:
    [top tokens, full lyric tokens] per row, each row's weights a distribution over the lyrics."""
    from jukebox_flax.alignment import LYRIC_ATTENTION, alignment_settings, get_alignment
    from jukebox_flax.errors import SamplingError
    from jukebox_flax.prior.api import load_prior
    from jukebox_flax.sampling.sources import level_labels, load_source

    out = tmp_path / "run"
    assert main(_argv(models["1b"], out, "--levels", "1", "--batch", "2")) == 0
    source = load_source(out)
    config = source.config.priors[-1]
    try:
        alignment_settings(config)
        assert (out / "alignment.npz").is_file()
    except SamplingError:
        assert "no alignment.npz" in capsys.readouterr().out
    layer = [i for i, kind in enumerate(config.attention_layout) if kind in LYRIC_ATTENTION][0]
    assert main(["align", str(out), "--layer", str(layer), "--head", "1", "--out", str(tmp_path / "al")]) == 0
    with np.load(tmp_path / "al" / "alignment.npz") as f:
        got = [f[f"item_{i}"] for i in range(2)]
    labels = level_labels(source.config, source.model, source.metas, source.total_length, config.level)
    prior = load_prior(source.model, level=config.level, scan_layers=False)
    want = get_alignment(prior, source.zs[-1], labels, source.hop_fraction, layer, 1)
    for g, w, tokens in zip(got, want, labels.full_tokens):
        assert g.dtype == np.float32 and g.shape == (source.zs[-1].shape[1], len(tokens))
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
        assert np.all(g >= 0) and np.all(g.sum(axis=1) <= 1 + 1e-5)
