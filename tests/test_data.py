"""The dataset: metadata files, random crops with labels in samples, deterministic batches,
and the synthetic dataset's label-dependent audio."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import load_script

from jukebox_flax.audio import load_audio
from jukebox_flax.data import AudioDataset, DataError, labeller_for_songs, read_metadata
from jukebox_flax.labels import LabelError


def test_metadata_csv_and_jsonl_agree(data, tmp_path):
    songs = read_metadata(data / "metadata.csv")
    assert len(songs) == 12 and {s.genre for s in songs} == {"ambient", "chiptune", "breakbeat"}
    assert songs[0].path == data / "audio" / "ada_ambient_00.wav" and "\n" in songs[0].lyrics
    jsonl = data / "metadata.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"file": f"audio/{s.path.name}", "artist": s.artist, "genre": s.genre, "lyrics": s.lyrics})
            for s in songs
        )
        + "\n"
    )
    assert read_metadata(jsonl) == songs


def test_metadata_errors(data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,artist\nx.wav,someone\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_metadata(bad)
    bad.write_text("file,artist,genre,lyrics\nmissing.wav,a,b,\n")
    with pytest.raises(DataError, match="audio file not found"):
        AudioDataset(read_metadata(bad), 100)
    with pytest.raises(DataError, match="metadata file not found"):
        read_metadata(tmp_path / "nope.csv")
    songs = read_metadata(data / "metadata.csv")
    labeller = labeller_for_songs(songs[:3])  # knows only the first artist
    with pytest.raises(LabelError):
        AudioDataset(songs, 100, labeller)


def test_crops_and_labels_in_samples(data):
    songs = read_metadata(data / "metadata.csv")
    labeller = labeller_for_songs(songs, n_tokens=16)
    assert labeller.artists == {"unknown": 0, "ada_low": 1, "ben_high": 2, "cleo_minor": 3, "dev_tritone": 4}
    assert labeller.genres == {"unknown": 0, "ambient": 1, "breakbeat": 2, "chiptune": 3}
    ds = AudioDataset(songs, 4096, labeller)
    batch = ds.batch(0, 8, seed=1)
    assert batch.audio.shape == (8, 4096, 1) and batch.audio.dtype == np.float32
    assert batch.y.shape == (8, 4 + 1 + 16) and batch.y.dtype == np.int32
    for i in range(8):
        song, offset = songs[batch.song[i]], int(batch.offset[i])
        audio = load_audio(song.path)
        assert 0 <= offset <= len(audio) - 4096
        np.testing.assert_array_equal(batch.audio[i, :, 0], audio[offset : offset + 4096])
        expected = labeller.with_shape(sample_length=4096).get_y(
            song.artist, song.genre, song.lyrics, len(audio), offset
        )
        np.testing.assert_array_equal(batch.y[i], expected)
        assert batch.y[i, :3].tolist() == [44100, offset, 4096]  # total_length, offset, sample_length


def test_short_songs_are_padded_and_resampled(tmp_path):
    tone = np.sin(np.arange(11025) / 10).astype(np.float32) * 0.5
    sf.write(tmp_path / "short.wav", tone, 22050)  # 0.5 s at 22.05 kHz -> 22050 samples at 44.1 kHz
    (tmp_path / "metadata.csv").write_text("file,artist,genre,lyrics\nshort.wav,Someone,pop,la la\n")
    ds = AudioDataset.from_folder(
        tmp_path, 30000, labeller=labeller_for_songs(read_metadata(tmp_path / "metadata.csv"))
    )
    batch = ds.batch(3, 2)
    assert batch.offset.tolist() == [0, 0]
    assert np.abs(batch.audio[:, 22050:]).max() == 0 and np.abs(batch.audio[:, :22050]).max() > 0.4
    assert batch.y[0, :3].tolist() == [22050, 0, 30000]


def test_batches_are_deterministic_per_position(data):
    ds = AudioDataset.from_folder(data, 1024)
    a, b = ds.batch(5, 4, seed=2), ds.batch(5, 4, seed=2)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.y is None
    assert not np.array_equal(a.offset, ds.batch(5, 4, seed=3).offset)
    stream = ds.batches(4, seed=2, start=5)
    np.testing.assert_array_equal(next(stream).offset, a.offset)
    np.testing.assert_array_equal(next(stream).offset, ds.batch(6, 4, seed=2).offset)
    # Every song is drawn (12 songs, 240 draws, weights by length).
    drawn = np.concatenate([ds.batch(i, 8).song for i in range(30)])
    assert set(drawn.tolist()) == set(range(12))


def test_synthetic_labels_are_audible(data):
    """Artist sets the register, genre the rhythm: both show in simple statistics."""
    songs = read_metadata(data / "metadata.csv")

    def centroid(path):  # spectral centroid in Hz
        x = load_audio(path)
        mag = np.abs(np.fft.rfft(x))
        return float((np.fft.rfftfreq(len(x), 1 / 44100) * mag).sum() / mag.sum())

    def onsets(path):  # rises of the 10 ms envelope: note / drum attacks per second
        x = np.abs(load_audio(path)).reshape(-1, 441).max(axis=1)
        return int(np.sum(x[1:] > 2 * x[:-1] + 0.05))

    ambient = {s.artist: centroid(s.path) for s in songs if s.genre == "ambient"}
    assert ambient["Ada Low"] < ambient["Cleo Minor"] < ambient["Dev Tritone"] < ambient["Ben High"]
    attacks = {s.genre: onsets(s.path) for s in songs if s.artist == "Ben High"}
    assert attacks["ambient"] < attacks["chiptune"], attacks
    with open(data / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(len(r["lyrics"].splitlines()) == 8 for r in rows)
    # Lyrics carry the label too: each artist has its own words, each genre its chorus word.
    assert "drift" in rows[0]["lyrics"].lower() and "river" in " ".join(r["lyrics"].lower() for r in rows[:3])


def test_synthetic_dataset_is_deterministic(tmp_path):
    make = load_script("make_synthetic_dataset").make_dataset
    make(tmp_path / "a", songs_per_pair=1, seconds=0.25, seed=7)
    make(tmp_path / "b", songs_per_pair=1, seconds=0.25, seed=7)
    assert (tmp_path / "a/metadata.csv").read_text() == (tmp_path / "b/metadata.csv").read_text()
    for f in (tmp_path / "a/audio").iterdir():
        assert f.read_bytes() == (tmp_path / "b/audio" / f.name).read_bytes()
