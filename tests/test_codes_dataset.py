"""encode-dataset and CodesDataset: codes written once equal the VQ-VAE's encode of each song, a
killed encode resumes to the same files, crops of codes follow the audio crops' distribution, and a
prior trained from codes equals one trained from audio step for step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jukebox_flax import codes_dataset, training
from jukebox_flax.audio import save_wav
from jukebox_flax.checkpoint import save_model_dir
from jukebox_flax.cli import main
from jukebox_flax.codes_dataset import CodesDataset, encode_dataset
from jukebox_flax.config import PriorConfig, VQVAEConfig
from jukebox_flax.data import AudioDataset, labeller_for_songs, read_metadata
from jukebox_flax.errors import DataError
from jukebox_flax.vqvae.api import init_vqvae_params, load_vqvae

# Two levels (hops 2 and 4) so an upsampler has upper codes; 64-sample crops at both levels.
VQ = VQVAEConfig.from_dict(
    {
        "kind": "vqvae",
        "levels": 2,
        "downs_t": [1, 1],
        "strides_t": [2, 2],
        "emb_width": 4,
        "l_bins": 16,
        "width": 8,
        "depth": 1,
        "multipliers": [1, 1],
        "linf_k": 64,
        "multispec_n_fft": [64],
        "multispec_hop_length": [16],
        "multispec_window_size": [64],
    }
)
PRIOR = dict(
    kind="prior",
    width=16,
    depth=2,
    heads=1,
    attn_order=2,
    blocks=4,
    bins=16,
    downs_t=[1, 1],
    strides_t=[2, 2],
    genre_bins=4,
    artist_bins=4,
    t_bins=8,
    max_bow_genre_size=1,
    cond_width=8,
    cond_depth=1,
)
TOP = PriorConfig.from_dict({**PRIOR, "level": 1, "n_ctx": 16, "min_duration": 0.0, "max_duration": 1.0})
UP = PriorConfig.from_dict({**PRIOR, "level": 0, "n_ctx": 32})
CROP = 64
ARTISTS = ("Ada Low", "Ben High", "Cleo Minor")


def _vqvae(path: Path, seed: int) -> Path:
    """A fresh tiny VQ-VAE with a random codebook (a fresh one is all zeros: every code 0)."""
    params = jax.tree.map(np.asarray, init_vqvae_params(VQ, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)
    for block in params["bottleneck"].values():
        block["k"] = (0.05 * rng.standard_normal(block["k"].shape)).astype(np.float32)
    return save_model_dir(path, params, VQ)


def _dataset(folder: Path, lengths: list[int], metadata: bool = True) -> Path:
    """Songs of the given lengths (samples), one artist each in turn, a genre each in turn."""
    rng = np.random.default_rng(len(lengths))
    rows = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / 44100
        audio = 0.5 * np.sin(2 * np.pi * (300 + 500 * i) * t) + 0.2 * rng.standard_normal(n)
        save_wav(folder / "audio" / f"song_{i:02d}.wav", np.clip(audio, -1, 1).astype(np.float32))
        rows.append({"file": f"audio/song_{i:02d}.wav", "artist": ARTISTS[i % 3], "genre": "g" + "ab"[i % 2]})
    if metadata:
        with open(folder / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "artist", "genre", "lyrics"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    return {
        "vq": _vqvae(root / "vq", 0),
        "other_vq": _vqvae(root / "vq2", 1),
        "long": _dataset(root / "long", [300, 64, 500, 40, 129]),
        "one_crop": _dataset(root / "one_crop", [CROP] * 5),
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_encode_dataset_writes_the_codes_of_every_whole_song(parts, tmp_path, capsys):
    out = encode_dataset(parts["long"], tmp_path / "codes", parts["vq"], songs_per_shard=2, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"{s:05d}_level_{L}.npy" for s in range(3) for L in range(2)
    ]
    assert [e["shard"] for e in index["songs"]] == [0, 0, 1, 1, 2]
    assert index["hop_lengths"] == [2, 4] and index["sr"] == 44100 and index["dtype"] == "int16"
    vq = load_vqvae(parts["vq"])
    assert index["vqvae_identity"] == codes_dataset.vqvae_identity(vq)
    songs = read_metadata(parts["long"] / "metadata.csv")
    ds = CodesDataset(out, UP)
    assert len(ds) == 5
    distinct = set()
    for i, song in enumerate(songs):
        entry = index["songs"][i]
        assert (entry["file"], entry["artist"], entry["genre"]) == (f"audio/song_{i:02d}.wav", song.artist, song.genre)
        audio = AudioDataset([song], 1).audio(0)
        assert entry["samples"] == len(audio)
        padded = np.zeros((1, -(-len(audio) // 4) * 4, 1), np.float32)
        padded[0, : len(audio), 0] = audio
        want = vq.encode(padded)
        assert entry["lengths"] == [padded.shape[1] // 2, padded.shape[1] // 4]
        for level in range(2):
            np.testing.assert_array_equal(ds.song_codes(i, level), np.asarray(want[level][0]))
            distinct |= set(ds.song_codes(i, level).tolist())
    assert len(distinct) >= 4  # the random codebook gives varied codes (not a constant)
    silence = vq.encode(np.zeros((1, 4, 1), np.float32))
    assert index["silence"] == [int(silence[0][0, 0]), int(silence[1][0, 0])]

    encode_dataset(parts["long"], out, parts["vq"], progress=False)
    assert "all 5 songs are already encoded (nothing to do)" in capsys.readouterr().out
    with pytest.raises(DataError, match="holds codes of another VQ-VAE"):
        encode_dataset(parts["long"], out, parts["other_vq"], progress=False)


def test_killed_encode_resumes_to_identical_files(parts, tmp_path, monkeypatch):
    whole = encode_dataset(parts["long"], tmp_path / "whole", parts["vq"], songs_per_shard=2, progress=False)
    write = codes_dataset._write_json

    def write_then_die(path, data):  # the kill comes right after the first shard is indexed
        write(path, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(codes_dataset, "_write_json", write_then_die)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(parts["long"], out, parts["vq"], songs_per_shard=2, progress=False)
    assert len(json.loads((out / "index.json").read_text())["songs"]) == 2
    (out / "shards" / "00001_level_0.npy").write_bytes(b"half a shard of a later kill")  # never indexed
    monkeypatch.setattr(codes_dataset, "_write_json", write)
    encode_dataset(parts["long"], out, parts["vq"], songs_per_shard=2, progress=False)
    assert _files(out) == _files(whole)


def test_a_folder_without_metadata_is_every_audio_file_with_unknown_labels(parts, tmp_path):
    folder = _dataset(tmp_path / "plain", [64, 80], metadata=False)
    out = encode_dataset(folder, tmp_path / "codes", parts["vq"], progress=False)
    songs = json.loads((out / "index.json").read_text())["songs"]
    assert [(s["file"], s["artist"], s["genre"], s["samples"]) for s in songs] == [
        ("audio/song_00.wav", "unknown", "unknown", 64),
        ("audio/song_01.wav", "unknown", "unknown", 80),
    ]


def test_codes_batches_are_crops_of_the_song_codes_drawn_as_audio_crops(parts, tmp_path):
    out = encode_dataset(parts["long"], tmp_path / "codes", parts["vq"], progress=False)
    songs = read_metadata(parts["long"] / "metadata.csv")
    labeller = labeller_for_songs(songs).for_config(UP)
    ds = CodesDataset(out, UP, labeller)
    audio = AudioDataset(songs, CROP, labeller)
    index = json.loads((out / "index.json").read_text())
    silence = index["silence"]
    seen_offsets = set()
    for position in range(6):
        batch = ds.batch(position, 8, seed=5)
        np.testing.assert_array_equal(batch.song, audio.batch(position, 8, seed=5).song)  # same song draws
        assert batch.tokens.shape == (8, 32) and batch.upper.shape == (8, 16) and batch.tokens.dtype == np.int32
        for row, (song, offset) in enumerate(zip(batch.song, batch.offset)):
            samples = index["songs"][song]["samples"]
            assert offset % 4 == 0 and 0 <= offset <= max(0, samples - CROP)  # top-level token boundary
            for codes, level in ((batch.tokens[row], 0), (batch.upper[row], 1)):
                hop = (2, 4)[level]
                want = ds.song_codes(int(song), level)[offset // hop : (offset + CROP) // hop]
                np.testing.assert_array_equal(codes[: len(want)], want)
                assert (codes[len(want) :] == silence[level]).all()  # a short song padded with silence
            s = songs[song]
            np.testing.assert_array_equal(batch.y[row], labeller.get_y(s.artist, s.genre, "", samples, int(offset)))
            seen_offsets.add(int(offset))
    assert len(seen_offsets) > 3
    top = CodesDataset(out, TOP).batch(0, 3, seed=1)
    assert top.upper is None and top.tokens.shape == (3, 16)


def test_a_prior_that_does_not_fit_the_codes_is_refused(parts, tmp_path):
    out = encode_dataset(parts["long"], tmp_path / "codes", parts["vq"], progress=False)
    with pytest.raises(DataError, match="the prior has 32 bins, the VQ-VAE.s codebook 16 .the codes of "):
        CodesDataset(out, PriorConfig.from_dict({**PRIOR, "level": 0, "n_ctx": 32, "bins": 32}))
    with pytest.raises(DataError, match="downs_t/strides_t"):
        CodesDataset(out, PriorConfig.from_dict({**PRIOR, "level": 0, "n_ctx": 32, "downs_t": [2, 1]}))
    with pytest.raises(DataError, match="holds no index.json"):
        CodesDataset(tmp_path, UP)


def _run(task, batch_at, steps: int):
    key = jax.random.PRNGKey(11)
    state = task.init(key, batch_at(0))
    losses = []
    for i in range(steps):
        state, metrics = task.step(state, batch_at(i), jax.random.fold_in(key, i))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, task.params(state))


@pytest.mark.slow  # two prior compilations per level
@pytest.mark.parametrize("config", [TOP, UP], ids=["top", "upsampler"])
def test_training_from_codes_equals_training_from_audio_step_for_step(parts, tmp_path, config):
    """Songs one crop long: the crop is the whole song, so its codes are the song's codes."""
    out = encode_dataset(parts["one_crop"], tmp_path / "codes", parts["vq"], progress=False)
    songs = read_metadata(parts["one_crop"] / "metadata.csv")
    labeller = labeller_for_songs(songs).for_config(config)
    audio = AudioDataset(songs, CROP, labeller)
    codes = CodesDataset(out, config, labeller)
    optim = training.OptimConfig(lr=3e-3, warmup_steps=1)
    vq = load_vqvae(parts["vq"])
    for i in range(3):  # the same crops and labels
        np.testing.assert_array_equal(codes.batch(i, 4, 2).y, audio.batch(i, 4, 2).y)
    audio_losses, audio_params = _run(training.prior_task(config, optim, vq), lambda i: audio.batch(i, 4, 2), 3)
    codes_losses, codes_params = _run(training.prior_task(config, optim, None), lambda i: codes.batch(i, 4, 2), 3)
    np.testing.assert_allclose(codes_losses, audio_losses, rtol=1e-6)
    assert audio_losses[-1] != audio_losses[0]  # the steps did train
    for a, b in zip(jax.tree.leaves(codes_params), jax.tree.leaves(audio_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # a prior compilation
def test_encode_dataset_and_train_prior_codes_commands(parts, tmp_path, capsys):
    out = tmp_path / "codes"
    assert main(["encode-dataset", str(parts["long"]), str(out), "--model", str(parts["vq"]), "--no-progress"]) == 0
    config = tmp_path / "top.json"
    config.write_text(TOP.to_json())

    def train(run: str, *extra: str) -> int:
        common = ["--codes", str(out), "--out", str(tmp_path / run), "--batch", "2", "--log-every", "1"]
        return main(["train", "prior", *common, "--no-progress", *extra])

    assert train("run", "--config", str(config), "--steps", "2") == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))] == ["1", "2"]

    capsys.readouterr()
    assert train("r2", "--config", str(config), "--steps", "1", "--vqvae", str(parts["other_vq"])) == 2
    assert capsys.readouterr().err.strip() == (
        f"jukebox-flax train: error: {out} holds codes of another VQ-VAE ({parts['vq'].absolute()}) than the one given"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(PriorConfig.from_dict({**json.loads(TOP.to_json()), "bins": 32}).to_json())
    assert train("r3", "--config", str(bad), "--steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the prior has 32 bins, the VQ-VAE's codebook 16 (the codes of" in err[0]
