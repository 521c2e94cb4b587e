"""Song workflows of the original ``sample.py`` from the command line: the song length and metas of
the labels, prompts, ``continue`` and ``upsample`` from our runs and from the original's ``data.pth.tar``.

Ground truth: the original's label vectors (``misc_oracle.json``: 240 s songs, its hparams default)
and its 3-level greedy sampling trace (``pipeline_trace``), replayed through the fixture priors.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import OPENAI, load_npz
from test_sampling_command import _write_model

from jukebox_flax.cli import build_parser, main
from jukebox_flax.config import JukeboxConfig, preset
from jukebox_flax.labels import V3_ALPHABET, Labeller, textise
from jukebox_flax.sampling import song
from jukebox_flax.sampling.command import plan_continue, plan_sample, plan_upsample
from jukebox_flax.sampling.song import seed_key
from jukebox_flax.sampling.sources import level_labels, load_source

TRACE = load_npz("openai/pipeline_trace")
ORACLE = json.loads((OPENAI / "misc_oracle.json").read_text())
TRACE_SECONDS = "0.2787"  # 12288 samples: the trace's 96 top tokens
TOP = load_npz("openai/prior_top1b")
TRACE_LYRICS = [textise(TOP[f"inputs/full_tokens/{i}"], V3_ALPHABET) for i in range(2)]
TRACE_SONGS = [
    dict(artist="Alan Jackson", genre="Country", lyrics=TRACE_LYRICS[0], total_length=2646000),
    dict(artist="Joe Bonamassa", genre="Blues Rock", lyrics=TRACE_LYRICS[1], total_length=3969000),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, ids_dir):
    root = tmp_path_factory.mktemp("models")
    return {
        "1b": _write_model(root / "tiny_1b", "prior_top1b", ids_dir),
        "5b": _write_model(root / "tiny_5b", "prior_top5b", ids_dir),
    }


def _config_only_model(path: Path, name: str, ids_dir: Path) -> Path:
    """A whole-model directory of a released preset with configs and vocabularies but no weights:
    enough for every check ``sample`` makes before loading anything."""
    config: JukeboxConfig = preset(name)
    path.mkdir()
    (path / "config.json").write_text(config.to_json())
    for prior in config.priors:
        sub = path / f"prior_level_{prior.level}"
        sub.mkdir()
        (sub / "config.json").write_text(prior.to_json())
        vocab = Labeller.from_ids_dir(ids_dir, prior.labeller_version).for_config(prior).vocab_dict()
        (sub / "vocab.json").write_text(json.dumps(vocab))
    return path


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def _one_line_error(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()  # drop earlier output (progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------
# Labels: the song length, metas, hop fractions


@pytest.mark.parametrize("name, key", [("5b_lyrics", "labeller_v2_y"), ("1b_lyrics", "labeller_v3_y")])
def test_default_song_length_gives_the_original_labels(tmp_path, ids_dir, name, key):
    """The original's labels.py case (Alan Jackson / Country Rock / "old town road", 240 s, its
    hparams default): `sample` of a released model builds that y without --total-seconds."""
    model = _config_only_model(tmp_path / name, name, ids_dir)
    argv = ["sample", "--model", str(model), "--artist", "Alan Jackson", "--genre", "Country Rock"]
    argv += ["--lyrics", "old town road", "--seconds", "20", "--out", str(tmp_path / "out"), "--batch", "2"]
    plan = plan_sample(_parse(*argv))
    np.testing.assert_array_equal(plan.labels[2].y, np.tile(ORACLE[key], (2, 1)))
    assert plan.record["total_length"] == 240 * 44100 and plan.notes == []
    for level in (0, 1):  # the upsamplers' y carry the same song length
        assert plan.labels[level].y[:, 0].tolist() == [240 * 44100] * 2
    shorter = plan_sample(_parse(*argv, "--total-seconds", "60"))
    assert shorter.labels[2].y[0, 0] == 60 * 44100 and shorter.record["total_length"] == 2646000
    assert plan.hop_fraction == (0.5, 0.5, 0.125)


def test_sample_metas_and_hop_fraction_rebuild_every_window_label_of_the_trace(tmp_path, models):
    """--metas (one row per song, with its own total_length as the original's metas) and
    --hop-fraction: the song labels per level are the trace's, and replaying the windows against
    the original's logged prior calls checks the y, prime and upper codes of every window."""
    from test_sampling_song import N_CALLS, PRIORS, SETTINGS, TraceReplay

    metas = tmp_path / "metas.jsonl"
    metas.write_text("\n".join(json.dumps(m) for m in TRACE_SONGS))
    argv = ["sample", "--model", str(models["1b"]), "--metas", str(metas), "--seconds", TRACE_SECONDS]
    argv += ["--batch", "2", "--hop-fraction", "0.5", "0.5", "0.125", "--out", str(tmp_path / "out")]
    plan = plan_sample(_parse(*argv))
    for level in range(3):
        np.testing.assert_array_equal(plan.labels[level].y, TRACE[f"labels_y/{level}"], err_msg=f"level {level}")
    assert plan.sample_length == 12288 and plan.record["metas"][1]["total_length"] == 3969000
    replay = TraceReplay()
    empty = [np.zeros((2, 0), np.int32) for _ in range(3)]
    zs = song.sample_song(
        PRIORS,
        empty,
        plan.levels,
        plan.sample_length,
        plan.labels,
        SETTINGS,
        jax.random.key(0),
        plan.hop_fraction,
        sample_fn=replay,
    )
    assert replay.i == N_CALLS
    np.testing.assert_array_equal(zs[0], TRACE["zs/0"])

    # rows cycle over --batch; a JSON list works as JSON lines do; --metas replaces --artist
    as_list = tmp_path / "metas.json"
    as_list.write_text(json.dumps(TRACE_SONGS))
    base = ["sample", "--model", str(models["1b"]), "--seconds", TRACE_SECONDS, "--batch", "3"]
    for i, file in enumerate((metas, as_list)):
        three = plan_sample(
            _parse(*base, "--metas", str(file), "--artist", "Nobody XYZ", "--out", str(tmp_path / f"o{i}"))
        )
        for level in range(3):
            np.testing.assert_array_equal(three.labels[level].y, TRACE[f"labels_y/{level}"][[0, 1, 0]])
    other = plan_sample(_parse(*base, "--hop-fraction", "0.5", "0.5", "0.25", "--out", str(tmp_path / "o5")))
    assert other.hop_fraction == (0.5, 0.5, 0.25)


def test_prime_files_cycle_over_the_batch_and_prompt_seconds_cut_them(tmp_path, models, capsys):
    from jukebox_flax.audio import save_wav

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    rng = np.random.default_rng(0)
    save_wav(a, rng.uniform(-0.5, 0.5, 20000).astype(np.float32), 44100)
    save_wav(b, rng.uniform(-0.5, 0.5, 30000).astype(np.float32), 44100)
    base = ["sample", "--model", str(models["5b"]), "--seconds", "0.56", "--batch", "3", "--out", str(tmp_path / "o")]
    plan = plan_sample(_parse(*base, "--prime", f"{a},{b}", "--prompt-seconds", "0.1"))
    assert plan.prime.shape == (3, 4352)  # int(0.1 * 44100) = 4410 -> 34 top tokens of 128 samples
    np.testing.assert_array_equal(plan.prime[0], plan.prime[2])
    assert not np.array_equal(plan.prime[0], plan.prime[1])
    assert plan.record["initial_tokens"] == [4352 // 8, 4352 // 32, 34]
    whole = plan_sample(_parse(*base, "--prime", f"{a},{b}"))
    assert whole.prime.shape == (3, 20000 // 128 * 128)  # the shorter file sets the prompt length
    _one_line_error(capsys, base + ["--prime", str(a), "--prompt-seconds", "0.6"], "not shorter than the song")
    _one_line_error(capsys, base + ["--prompt-seconds", "0.1"], "--prompt-seconds needs --prime")
    _one_line_error(capsys, base + ["--total-seconds", "0.3"], "shorter than the")
    _one_line_error(capsys, base + ["--total-seconds", "30"], "outside what this model was trained on")
    _one_line_error(capsys, base + ["--hop-fraction", "0.5", "0.5"], "one value per level")
    _one_line_error(capsys, base + ["--seed", str(2**63)], "--seed")
    _one_line_error(capsys, base + ["--seed", "-1"], "--seed")


def test_seeds_beyond_32_bits_give_their_own_streams():
    def data(seed):
        return np.asarray(jax.random.key_data(seed_key(seed)))

    np.testing.assert_array_equal(data(7), np.asarray(jax.random.key_data(jax.random.key(7))))
    seeds = [0, 1, 2**32, 2**32 + 1, 2**40, 2**63 - 1]
    assert len({data(s).tobytes() for s in seeds}) == len(seeds)
    with pytest.raises(ValueError):
        seed_key(2**63)


# ---------------------------------------------------------------------------------------------
# upsample from the original's data.pth.tar


def _write_original_run(path: Path, levels_held=(2,)) -> Path:
    """The original's level_2/data.pth.tar of the trace: top codes, the labels of every level
    (y and info as its Labeller.get_batch_labels), sampling_kwargs, the decoded audio."""
    torch = pytest.importorskip("torch")
    zs = [
        torch.from_numpy(TRACE[f"zs/{level}"]) if level in levels_held else torch.zeros(2, 0, dtype=torch.long)
        for level in range(3)
    ]
    labels = []
    for level in range(3):
        info = [
            dict(
                artist=m["artist"],
                genre=m["genre"],
                lyrics=m["lyrics"],
                full_tokens=TOP[f"inputs/full_tokens/{i}"].tolist(),
            )
            for i, m in enumerate(TRACE_SONGS)
        ]
        labels.append(dict(y=torch.from_numpy(TRACE[f"labels_y/{level}"]), info=info))
    kwargs = [dict(temp=0.99, fp16=False, chunk_size=16, max_batch_size=16, top_k=1) for _ in range(3)]
    torch.save(dict(zs=zs, labels=labels, sampling_kwargs=kwargs, x=torch.from_numpy(TRACE["decoded/2"])), path)
    return path


@pytest.mark.slow
def test_upsample_of_the_original_top_codes_reproduces_its_levels(tmp_path, models):
    """The trace's top codes, saved as the original does, upsampled greedily through `upsample`:
    levels 1 and 0 equal the original's token for token."""
    src = _write_original_run(tmp_path / "data.pth.tar")
    out = tmp_path / "up"
    argv = ["upsample", str(src), "--model", str(models["1b"]), "--out", str(out), "--top-k", "1", "--chunk-size", "16"]
    assert main(argv) == 0
    codes = np.load(out / "codes.npz")
    for level in (2, 1, 0):
        np.testing.assert_array_equal(codes[f"level_{level}"], TRACE[f"zs/{level}"], err_msg=f"level {level}")
    record = json.loads((out / "run.json").read_text())
    assert record["parent"] == {"path": str(src.resolve()), "rows": [0, 1]} and record["mode"] == "upsample"
    assert [m["total_length"] for m in record["metas"]] == [2646000, 3969000]
    assert sorted(p.name for p in (out / "level_0").iterdir()) == ["item_0.wav", "item_1.wav"]
    # the new run is itself a source: its labels rebuild from run.json alone
    source = load_source(out)
    for level in range(3):
        np.testing.assert_array_equal(
            level_labels(source.config, source.model, source.metas, source.total_length, level).y,
            TRACE[f"labels_y/{level}"],
        )


def test_original_run_source_and_its_checks(tmp_path, models, capsys):
    torch = pytest.importorskip("torch")
    src = _write_original_run(tmp_path / "data.pth.tar")
    source = load_source(src, models["1b"])
    assert source.kind == "original" and source.sampled_levels == [2] and source.zs[2].dtype == np.int32
    assert source.total_length == 2646000 and source.metas[1]["total_length"] == 3969000
    plan = plan_upsample(
        _parse("upsample", str(src), "--model", str(models["1b"]), "--rows", "1,0", "--out", str(tmp_path / "u"))
    )
    np.testing.assert_array_equal(plan.zs[2], TRACE["zs/2"][[1, 0]])
    np.testing.assert_array_equal(plan.labels[0].y, TRACE["labels_y/0"][[1, 0]])
    assert plan.levels == [0, 1] and plan.sample_length == 12288

    up = ["upsample", str(src), "--model", str(models["1b"]), "--out", str(tmp_path / "x")]
    _one_line_error(capsys, up + ["--rows", "2"], "out of range")
    _one_line_error(capsys, ["upsample", str(src), "--out", str(tmp_path / "x")], "pass --model")
    _one_line_error(
        capsys, ["upsample", str(src), "--model", str(models["5b"]), "--out", str(tmp_path / "x")], "another model"
    )
    ckpt = tmp_path / "prior_level_2.pth.tar"
    torch.save({"model": {"w": torch.zeros(2)}}, ckpt)
    _one_line_error(
        capsys,
        ["upsample", str(ckpt), "--model", str(models["1b"]), "--out", str(tmp_path / "x")],
        "is not a data.pth.tar",
    )
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a pickle at all")
    _one_line_error(
        capsys,
        ["upsample", str(junk), "--model", str(models["1b"]), "--out", str(tmp_path / "x")],
        "is not a data.pth.tar",
    )
    cont = ["continue", str(src), "--model", str(models["1b"]), "--out", str(tmp_path / "x")]
    _one_line_error(capsys, cont + ["--seconds", "0.2"], "shorter than the 0.28 s")
    _one_line_error(capsys, cont + ["--seconds", "0.5", "--prompt-seconds", "0.4"], "longer than the 0.28 s")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# continue: co-composition from our own runs


SHORT, LONG = "0.2787", "0.56"  # 96 and 192 top tokens: the short run's windows start where the long run's do


def _sample_top(model, out, seconds, *extra):
    argv = ["sample", "--model", str(model), "--seconds", seconds, "--levels", "1", "--batch", "2", "--seed", "3"]
    argv += ["--temperature", "1.0", "--artist", "Alan Jackson", "--genre", "Country", "--out", str(out), *extra]
    assert main(argv) == 0
    return np.load(out / "codes.npz")["level_2"]


@pytest.mark.slow
def test_continue_of_a_run_equals_one_run_of_that_length(tmp_path, models, capsys):
    """Window keys depend on (seed, level, start) and the labels on the song, not on the run: a run
    continued to 192 tokens equals a 192-token run (the source's seed is the default)."""
    short = _sample_top(models["5b"], tmp_path / "short", SHORT)
    long = _sample_top(models["5b"], tmp_path / "long", LONG)
    np.testing.assert_array_equal(long[:, :96], short)
    assert len(np.unique(long[:, 96:])) > 3  # real music tokens, not a constant

    out = tmp_path / "cont"
    assert (
        main(["continue", str(tmp_path / "short"), "--seconds", LONG, "--temperature", "1.0", "--out", str(out)]) == 0
    )
    np.testing.assert_array_equal(np.load(out / "codes.npz")["level_2"], long)
    record = json.loads((out / "run.json").read_text())
    assert record["parent"] == {"path": str((tmp_path / "short").resolve()), "rows": [0, 1]}
    assert record["seed"] == 3 and record["levels"] == [2] and record["total_length"] == 240 * 44100

    # co-composition: row 1 taken three times gives three continuations of the same start
    three = tmp_path / "three"
    assert (
        main(
            [
                "continue",
                str(out / "codes.npz"),
                "--rows",
                "1",
                "--batch",
                "3",
                "--seconds",
                "0.75",
                "--out",
                str(three),
            ]
        )
        == 0
    )
    z = np.load(three / "codes.npz")["level_2"]
    assert z.shape == (3, 258)  # 0.75 s = 33075 samples: 258 top tokens of 128
    np.testing.assert_array_equal(z[:, :192], np.tile(long[1], (3, 1)))
    assert len({row.tobytes() for row in z[:, 192:]}) == 3

    # bad input: one line, nothing written
    _one_line_error(capsys, ["continue", str(out), "--seconds", "0.3", "--out", str(tmp_path / "x")], "already holds")
    _one_line_error(
        capsys, ["continue", str(out), "--rows", "0,5", "--seconds", "1", "--out", str(tmp_path / "x")], "out of range"
    )
    _one_line_error(
        capsys,
        ["continue", str(out), "--model", str(models["1b"]), "--seconds", "1", "--out", str(tmp_path / "x")],
        "different model",
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_killed_continue_resumes_and_failed_starts_rerun(tmp_path, models, capsys, monkeypatch):
    short = tmp_path / "short"
    _sample_top(models["5b"], short, SHORT)
    argv = ["continue", str(short), "--seconds", LONG, "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    want = np.load(tmp_path / "c" / "codes.npz")["level_2"]

    # a run that fails before its first window (here: loading the priors) reruns with the same command
    import jukebox_flax.sampling.command as command

    def broken(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "load_prior_at", broken)
    killed = ["continue", str(short), "--seconds", LONG, "--out", str(tmp_path / "k")]
    assert main(killed) == 130 and (tmp_path / "k" / "run.json").is_file()
    assert main(killed) == 130  # not refused: nothing was sampled
    monkeypatch.undo()

    # killed after two windows: refused without --resume, then resumed to the uninterrupted result
    save, calls = song.RunDir.save_codes, []

    def save_then_die(self, level, z):
        save(self, level, z)
        calls.append(level)
        if len(calls) == 3:  # the source codes, then two windows
            raise KeyboardInterrupt

    monkeypatch.setattr(song.RunDir, "save_codes", save_then_die)
    assert main(killed) == 130
    monkeypatch.undo()
    assert 96 < np.load(tmp_path / "k" / "codes" / "level_2.npy").shape[1] < 192
    _one_line_error(capsys, killed, "pass --resume")
    assert main(killed + ["--resume"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "k" / "codes.npz")["level_2"], want)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 10), np.float32), "not integer codes"),
        (np.zeros((3, 10), np.int32), "shape"),
        (np.zeros((2, 200), np.int32), "more than level 2's 96"),
        (np.full((2, 10), 99, np.int32), "outside the codebook"),
    ],
)
def test_resume_checks_every_saved_codes_array(tmp_path, models, capsys, monkeypatch, bad, message):
    import jukebox_flax.vqvae.api as vqvae_api

    monkeypatch.setattr(vqvae_api, "load_vqvae", lambda *a, **k: pytest.fail("loaded a model before checking"))
    argv = ["sample", "--model", str(models["5b"]), "--seconds", SHORT, "--levels", "1", "--batch", "2"]
    argv += ["--out", str(tmp_path / "r")]
    plan = plan_sample(_parse(*argv))
    song.RunDir(plan.out).start(plan.record)
    np.save(plan.out / "codes" / "level_2.npy", bad)
    _one_line_error(capsys, argv + ["--resume"], message)


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_load_source_of_a_run_dir_and_of_its_codes(tmp_path, models, capsys):
    out = tmp_path / "run"
    _sample_top(models["5b"], out, SHORT, "--total-seconds", "61")
    for src in (out, out / "codes.npz"):
        source = load_source(src)
        assert source.model == models["5b"].resolve() or source.model == Path(str(models["5b"].resolve()))
        assert source.total_length == 61 * 44100 and source.hop_fraction == (0.5, 0.5, 0.125)
        assert source.metas == [{"artist": "Alan Jackson", "genre": "Country", "lyrics": ""}] * 2
        assert source.zs[2].shape == (2, 96) and source.zs[0].shape == (2, 0) and source.sampled_levels == [2]
    plan = plan_continue(
        _parse("continue", str(out), "--seconds", "0.56", "--genre", "Blues Rock", "--out", str(tmp_path / "c"))
    )
    assert [m["genre"] for m in plan.record["metas"]] == ["Blues Rock"] * 2
    assert plan.labels[2].y[0, 0] == 61 * 44100  # the source's song length carries over
    bare = tmp_path / "bare.npz"
    np.savez(bare, level_2=np.zeros((1, 96), np.int32))
    _one_line_error(capsys, ["upsample", str(bare), "--out", str(tmp_path / "x")], "pass --model")
