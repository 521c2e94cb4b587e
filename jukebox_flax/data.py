"""Training data: a folder of audio files, a metadata file, random crops with their labels.

The metadata file lists one song per row with the columns ``file, artist, genre, lyrics``:

* CSV with a header row (lyrics may span several lines inside quotes), or
* JSON Lines, one object per line with those keys.

``file`` is relative to the metadata file's folder (or absolute). ``lyrics`` may be empty.

A folder without a metadata file is a dataset too (the original's ``--labels=False``): every audio
file under it (:func:`songs_in_folder`), each with the artist and genre ``unknown`` and no lyrics.
:func:`holdout_split` keeps a fraction of the songs out of training (for a held-out loss).

A crop is ``sample_length`` samples of one song at a random offset; as the original
``FilesAudioDataset``, songs are drawn in proportion to their length (every sample of the dataset
is equally likely to start a crop), and the label's ``offset`` and ``total_length`` are in samples
of that song. Songs shorter than a crop are zero-padded at the end.

Batches are a pure function of ``(seed, batch index)``: resuming a run at batch ``i`` replays
exactly the batches an uninterrupted run would have seen, with no iterator state to save.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE, load_audio
from .errors import DataError
from .labels import V2_ALPHABET, V3_ALPHABET, Labeller, artist_key, genre_keys

__all__ = [
    "DataError",
    "Song",
    "Batch",
    "read_metadata",
    "find_metadata",
    "songs_in_folder",
    "holdout_split",
    "labeller_for_songs",
    "AudioDataset",
]

PathLike = str | os.PathLike
COLUMNS = ("file", "artist", "genre", "lyrics")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
UNKNOWN = "unknown"  # the artist and genre of a song without metadata (id 0 of every vocabulary)
# File name endings of the libsndfile formats (soundfile.available_formats() names) that hold music.
AUDIO_EXTENSIONS = {
    ".wav": "WAV",
    ".wave": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aiff": "AIFF",
    ".aif": "AIFF",
    ".aifc": "AIFF",
    ".au": "AU",
    ".snd": "AU",
    ".caf": "CAF",
    ".w64": "W64",
    ".rf64": "RF64",
}


@dataclass(frozen=True)
class Song:
    """One row of the metadata file."""

    path: Path
    artist: str
    genre: str
    lyrics: str = ""


@dataclass(frozen=True)
class Batch:
    """A batch of crops: ``audio`` float32 [B, T, 1]; ``y`` int32 [B, Y] (None without a labeller);
    ``song`` the song index and ``offset`` the crop start in samples, int64 [B]."""

    audio: np.ndarray
    y: np.ndarray | None
    song: np.ndarray
    offset: np.ndarray


def read_metadata(path: PathLike) -> list[Song]:
    """The songs of a CSV or JSONL metadata file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON: {e}") from None
    else:
        reader = csv.DictReader(text.splitlines(keepends=True))
        missing = [c for c in COLUMNS[:3] if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: the header lacks the column(s) {missing} (need {', '.join(COLUMNS)})")
        rows = [(reader.line_num, row) for row in reader]
    songs = []
    for number, row in rows:
        if not isinstance(row, dict) or any(not isinstance(row.get(c), str) or not row[c] for c in COLUMNS[:3]):
            raise DataError(f"{path}:{number}: every row needs non-empty 'file', 'artist' and 'genre'")
        file = Path(row["file"])
        songs.append(
            Song(
                file if file.is_absolute() else path.parent / file, row["artist"], row["genre"], row.get("lyrics") or ""
            )
        )
    if not songs:
        raise DataError(f"{path} lists no songs")
    return songs


def find_metadata(folder: PathLike) -> Path | None:
    """``folder``'s ``metadata.csv`` or ``metadata.jsonl`` (in that order), or None."""
    for name in METADATA_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def audio_extensions() -> list[str]:
    """The file name endings :func:`songs_in_folder` takes: those of :data:`AUDIO_EXTENSIONS` whose
    format this libsndfile reads (MP3 needs libsndfile 1.1 or newer)."""
    formats = set(sf.available_formats())
    return sorted(ext for ext, fmt in AUDIO_EXTENSIONS.items() if fmt in formats)


def songs_in_folder(folder: PathLike) -> list[Song]:
    """Every audio file under ``folder`` (recursively, hidden files and folders skipped) as a song
    with the artist and genre ``unknown`` and no lyrics, sorted by path (the same order on every
    machine). A folder with no audio file is a :class:`DataError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    extensions = set(audio_extensions())
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in extensions
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise DataError(
            f"{folder} holds no audio files ({', '.join(e[1:] for e in sorted(extensions))}) and no "
            f"{' or '.join(METADATA_NAMES)}"
        )
    return [Song(path, UNKNOWN, UNKNOWN, "") for path in files]


def holdout_split(songs: Sequence[Song], fraction: float, seed: int = 0) -> tuple[list[Song], list[Song]]:
    """(training songs, held-out songs): ``round(fraction * len(songs))`` songs, at least one when
    ``fraction > 0``, chosen at random by ``seed`` (the same split on every run). Both lists keep
    the order of ``songs``. A split that leaves no training song is a :class:`DataError`."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"the held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(songs), []
    count = max(1, round(fraction * len(songs)))
    if count >= len(songs):
        raise DataError(
            f"holding out {count} of {len(songs)} songs leaves none to train on: use a smaller fraction or more songs"
        )
    chosen = set(np.random.default_rng([seed, 104729]).permutation(len(songs))[:count].tolist())
    return (
        [s for i, s in enumerate(songs) if i not in chosen],
        [s for i, s in enumerate(songs) if i in chosen],
    )


def labeller_for_songs(
    songs: Sequence[Song],
    version: str = "v2",
    n_tokens: int = 0,
    max_bow_genre_size: int | None = None,
    sample_length: int = 0,
) -> Labeller:
    """A new vocabulary for training from scratch: ids 1.. for the dataset's artists and genre words
    in sorted order, 0 for ``unknown``, and the original lyric alphabet of ``version``."""
    artists = sorted({artist_key(s.artist, version) for s in songs})
    genres = sorted({word for s in songs for word in genre_keys(s.genre, version)})
    if max_bow_genre_size is None:
        max_bow_genre_size = max(len(genre_keys(s.genre, version)) for s in songs)
    return Labeller(
        version=version,
        artists={"unknown": 0, **{name: i + 1 for i, name in enumerate(a for a in artists if a != "unknown")}},
        genres={"unknown": 0, **{name: i + 1 for i, name in enumerate(g for g in genres if g != "unknown")}},
        alphabet=V2_ALPHABET if version == "v2" else V3_ALPHABET,
        n_tokens=n_tokens,
        max_bow_genre_size=max_bow_genre_size,
        sample_length=sample_length,
    )


class AudioDataset:
    """Random crops of ``sample_length`` samples from a list of songs, with labels.

    Audio is loaded with :func:`jukebox_flax.audio.load_audio` (mono, resampled to ``sr``) on first
    use and kept in memory when ``cache`` (the default; a dataset of an hour at 44.1 kHz takes
    about 635 MB). ``labeller`` (optional) builds ``y`` for every crop; its ``sample_length`` is
    set to the crop length, so the lyric window matches the audio.
    """

    def __init__(
        self,
        songs: Sequence[Song],
        sample_length: int,
        labeller: Labeller | None = None,
        sr: int = SAMPLE_RATE,
        cache: bool = True,
    ):
        if sample_length <= 0:
            raise DataError(f"sample_length must be positive, got {sample_length}")
        if not songs:
            raise DataError("the dataset has no songs")
        self.songs = list(songs)
        self.sample_length = int(sample_length)
        self.sr = sr
        self.cache = cache
        self.labeller = labeller.with_shape(sample_length=self.sample_length) if labeller is not None else None
        self._audio: dict[int, np.ndarray] = {}
        self.lengths = np.array([self._length(song) for song in self.songs], np.int64)
        if self.labeller is not None:  # fail now, not at step 10,000, on an unknown name
            for song in self.songs:
                self.labeller.get_label(song.artist, song.genre, song.lyrics, 1, 0)
        # A song of length n offers max(1, n - sample_length + 1) crop starts.
        starts = np.maximum(1, self.lengths - self.sample_length + 1).astype(np.float64)
        self._weights = starts / starts.sum()

    @classmethod
    def from_folder(
        cls,
        folder: PathLike,
        sample_length: int,
        metadata: PathLike | None = None,
        labeller: Labeller | None = None,
        **kwargs,
    ) -> AudioDataset:
        """The dataset of ``folder``: ``metadata`` defaults to its ``metadata.csv`` or ``metadata.jsonl``;
        without either, every audio file under ``folder`` (:func:`songs_in_folder`: no labels)."""
        metadata = metadata if metadata is not None else find_metadata(folder)
        songs = read_metadata(metadata) if metadata is not None else songs_in_folder(folder)
        return cls(songs, sample_length, labeller, **kwargs)

    def __len__(self) -> int:
        return len(self.songs)

    def _length(self, song: Song) -> int:
        """Length in samples at ``sr`` (from the file header; exact once loaded)."""

        if not song.path.is_file():
            raise DataError(f"audio file not found: {song.path}")
        try:
            info = sf.info(str(song.path))
        except Exception as e:  # libsndfile raises several types for non-audio files
            raise DataError(f"cannot read {song.path} as audio: {e}") from None
        return max(1, int(round(info.frames * self.sr / info.samplerate)))

    def audio(self, index: int) -> np.ndarray:
        """The whole song ``index`` as float32 [T] at ``sr``."""
        if index in self._audio:
            return self._audio[index]
        audio = load_audio(self.songs[index].path, sr=self.sr)
        self.lengths[index] = len(audio)  # resampling may differ from the header estimate by a sample
        if self.cache:
            self._audio[index] = audio
        return audio

    def crop(self, index: int, offset: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``sample_length`` samples of song ``index`` from ``offset`` (zero-padded) and its label."""
        audio = self.audio(index)
        out = np.zeros(self.sample_length, np.float32)
        piece = audio[offset : offset + self.sample_length]
        out[: len(piece)] = piece
        y = None
        if self.labeller is not None:
            song = self.songs[index]
            y = self.labeller.get_y(song.artist, song.genre, song.lyrics, len(audio), offset)
        return out, y

    def batch(self, position: int, batch_size: int, seed: int = 0) -> Batch:
        """Batch number ``position`` of the stream for ``seed`` (independent of earlier batches)."""
        rng = np.random.default_rng([seed, position])
        songs = rng.choice(len(self.songs), size=batch_size, p=self._weights)
        offsets = np.zeros(batch_size, np.int64)
        audio, ys = [], []
        for i, index in enumerate(songs):
            length = len(self.audio(int(index)))
            offsets[i] = rng.integers(0, max(1, length - self.sample_length + 1))
            x, y = self.crop(int(index), int(offsets[i]))
            audio.append(x)
            ys.append(y)
        y = np.stack([np.asarray(v) for v in ys]).astype(np.int32) if self.labeller is not None else None
        return Batch(np.stack(audio)[:, :, None], y, songs.astype(np.int64), offsets)

    def batches(self, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[Batch]:
        """The endless stream of batches for ``seed`` from batch number ``start``."""
        position = start
        while True:
            yield self.batch(position, batch_size, seed)
            position += 1
