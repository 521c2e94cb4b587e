"""jukebox-flax assemble: a whole model from parts (the demo model's own parts round trip), one-line
consistency errors, the vocabulary merge for a top prior with new artists, the demo build's budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import load_script

from jukebox_flax.assemble import assemble, merge_vocab
from jukebox_flax.checkpoint import load_config, load_vocab, write_checksums
from jukebox_flax.cli import main
from jukebox_flax.errors import CheckpointError, TrainingError
from jukebox_flax.prior.api import load_prior
from jukebox_flax.sampling.command import default_model
from jukebox_flax.sampling.sources import level_labels
from jukebox_flax.vqvae.api import load_vqvae

DEMO = default_model()


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "checksums.json"
    }


def _edited_part(src: Path, dst: Path, config: dict | None = None, vocab: dict | None = None) -> Path:
    """A copy of the component ``src`` with config / vocab entries changed (checksums rewritten)."""
    shutil.copytree(src, dst)
    if config:
        (dst / "config.json").write_text(json.dumps({**json.loads((dst / "config.json").read_text()), **config}))
    if vocab is not None:
        (dst / "vocab.json").write_text(json.dumps(vocab))
    write_checksums(dst)
    return dst


def _assemble_argv(out: Path, priors: list[Path], vqvae: Path = DEMO) -> list[str]:
    argv = ["assemble", "--vqvae", str(vqvae)]
    for level, path in enumerate(priors):
        argv += [f"--prior-level-{level}", str(path)]
    return argv + [str(out)]


def test_assembling_the_demo_models_own_parts_gives_it_back(tmp_path, capsys):
    out = tmp_path / "again"
    assert main(_assemble_argv(out, [DEMO] * 3)) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out.absolute()}"
    assert load_config(out) == load_config(DEMO)
    assert _files(out) == _files(DEMO)  # params, configs and vocabularies byte for byte
    a, b = load_prior(out, 0), load_prior(DEMO, 0)  # checksums valid, params equal
    assert a.config == b.config
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert load_vqvae(out).config == load_vqvae(DEMO).config

    # components given as their own directories, and OUT replaced only with --overwrite
    parts = [DEMO / f"prior_level_{level}" for level in range(3)]
    assert main(_assemble_argv(out, parts, DEMO / "vqvae")) == 2
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(_assemble_argv(out, parts, DEMO / "vqvae") + ["--overwrite"]) == 0
    assert _files(out) == _files(DEMO)
    with pytest.raises(CheckpointError, match="holds the source"):
        assemble(out, out, [out] * 3, overwrite=True)  # never replaces one of its own parts


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(level=0, config={"bins": 64}), "--prior-level-0 {path} has 64 bins, the VQ-VAE's codebook 128"),
        (
            dict(level=1, config={"downs_t": [3, 3, 2]}),
            "--prior-level-1 {path} has downs_t/strides_t [3, 3, 2]/[2, 2, 2], the VQ-VAE [3, 2, 2]/[2, 2, 2]"
            " (hop lengths differ)",
        ),
        (
            dict(level=0, config={"n_ctx": 250, "blocks": 10}),
            "--prior-level-0 {path}: n_ctx 250 is not a whole number of level-1",
        ),
        (dict(level=1, source=0), "--prior-level-1 {path} holds the level-0 prior, not level 1"),
        (dict(level=2, vocab={}), "--prior-level-2 {path} takes labels but has no vocab.json"),
    ],
    ids=["bins", "hop", "n_ctx", "level", "vocab"],
)
def test_inconsistent_parts_are_one_line_errors(tmp_path, capsys, change, message):
    level = change["level"]
    src = DEMO / f"prior_level_{change.get('source', level)}"
    part = _edited_part(src, tmp_path / "part", change.get("config"))
    if change.get("vocab") == {}:
        (part / "vocab.json").unlink()
        write_checksums(part)
    priors: list[Path] = [DEMO / f"prior_level_{i}" for i in range(3)]
    priors[level] = part
    out = tmp_path / "out"
    assert main(_assemble_argv(out, priors)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(path=part) in err[0], err
    assert not out.exists()


def _new_artist_top(tmp_path: Path) -> Path:
    """The demo top prior fine-tuned (here: only renamed) with a new artist and a new genre word."""
    vocab = load_vocab(DEMO / "prior_level_2")
    vocab = {**vocab, "artists": {**vocab["artists"], "zed_new": 2}, "genres": {**vocab["genres"], "vaporwave": 3}}
    return _edited_part(DEMO / "prior_level_2", tmp_path / "top", vocab=vocab)


def test_new_artists_of_the_top_prior_get_unknown_at_the_upsamplers(tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(_assemble_argv(out, [DEMO, DEMO, _new_artist_top(tmp_path)])) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "artist 'zed_new' is not in the upsamplers' vocabulary: they get 'unknown'",
        "genre 'vaporwave' is not in the upsamplers' vocabulary: they get 'unknown'",
    ]
    for level in (0, 1):
        vocab = load_vocab(out / f"prior_level_{level}")
        assert vocab["artists"]["zed_new"] == vocab["artists"]["unknown"] == 0
        assert vocab["genres"]["vaporwave"] == 0
        assert {k: v for k, v in vocab["artists"].items() if k != "zed_new"} == load_vocab(DEMO / "prior_level_0")[
            "artists"
        ]
    # what sampling gives each level for the new artist: its id at the top, 'unknown' below
    config = load_config(out)
    metas = [{"artist": "Zed New", "genre": "vaporwave"}]
    ys = [level_labels(config, out, metas, 44100 * 4, level).y[0] for level in range(3)]
    assert [int(y[3]) for y in ys] == [0, 0, 2]
    assert [int(y[4]) for y in ys] == [0, 0, 3]


def test_merge_vocab_looks_names_up_as_the_upsampler_does():
    top = {"version": "v3", "artists": {"alan jackson": 5, "new one!": 9}, "genres": {"hip hop": 2}}
    lower = {"version": "v2", "artists": {"unknown": 0, "alan_jackson": 7}, "genres": {"unknown": 0, "hip": 4}}
    merged, artists, genres = merge_vocab(top, lower)
    assert merged["artists"] == {"unknown": 0, "alan_jackson": 7, "new_one": 0}
    assert merged["genres"] == {"unknown": 0, "hip": 4, "hop": 0}
    assert (artists, genres) == (["new_one"], ["hop"])


@pytest.mark.slow  # three levels of sampling
def test_sampling_a_new_artist_runs_through_every_level(tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(_assemble_argv(out, [DEMO, DEMO, _new_artist_top(tmp_path)])) == 0
    run = tmp_path / "run"
    argv = ["sample", "--model", str(out), "--artist", "Zed New", "--genre", "chiptune", "--seconds", "0.4"]
    assert main(argv + ["--out", str(run)]) == 0, capsys.readouterr().err
    assert all((run / f"level_{level}" / "item_0.wav").is_file() for level in range(3))


def test_demo_build_checks_its_budget_before_writing(tmp_path, monkeypatch):
    script = load_script("build_demo_model")
    monkeypatch.setattr(script, "MAX_BYTES", 2**20)
    out = tmp_path / "demo"
    parts = ["--priors"] + [str(DEMO / f"prior_level_{level}") for level in range(3)]
    with pytest.raises(TrainingError, match=r"would take 4\.\d MiB, more than the 1 MiB budget"):
        script.main(["--vqvae", str(DEMO), *parts, "--out", str(out)])
    assert not out.exists()
    monkeypatch.setattr(script, "MAX_BYTES", 20 * 2**20)
    script.main(["--vqvae", str(DEMO), *parts, "--out", str(out)])
    assert _files(out) == _files(DEMO)
