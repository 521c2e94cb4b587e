"""A dataset encoded once by the VQ-VAE: ``jukebox-flax encode-dataset`` and :class:`CodesDataset`.

Training a prior on audio runs the frozen VQ-VAE's encoder in every step (as the original does);
with the codes written once (openai/jukebox #263) a step holds only the prior.

:func:`encode_dataset` writes, into ``OUT``:

* ``shards/SSSSS_level_L.npy``: the codes of level ``L`` of a group of songs, concatenated
  (int16 when the codebook fits, else int32; read memory-mapped), one file per level per shard;
* ``index.json``: the VQ-VAE (its config and an identity: the SHA-256 of its config and params),
  the code of silence per level (what pads a song shorter than a crop, as the audio path's zeros),
  and per song its file, labels (artist, genre, lyrics), sample count and, per level, its shard,
  start and length.

Each shard is written atomically, then the index (atomically) names it, so a killed run resumes
with the songs not yet done; the songs are the metadata file's (``metadata.csv`` /
``metadata.jsonl``), or every audio file of the folder with unknown labels.

:class:`CodesDataset` draws crops of these codes as :class:`jukebox_flax.data.AudioDataset` draws
crops of audio: songs in proportion to their length, labels of the song's length and the crop's
offset in samples. Crops start on token boundaries of the highest level used (an upsampler's upper
codes align with its tokens); for songs one crop long both datasets give the same batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from .atomic import atomic_write
from .audio import load_audio
from .config import PriorConfig, VQVAEConfig, vqvae_mismatch
from .data import Song, find_metadata, read_metadata, songs_in_folder
from .errors import DataError
from .labels import Labeller
from .tree import named_leaves

__all__ = [
    "CODES_FORMAT",
    "INDEX_FILE",
    "CodesBatch",
    "CodesDataset",
    "encode_dataset",
    "vqvae_identity",
]

PathLike = str | os.PathLike
CODES_FORMAT = "jukebox-flax-codes"
CODES_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
DEFAULT_SONGS_PER_SHARD = 8
# What a folder without a metadata file offers as songs (formats libsndfile reads).


# ------------------------------------------------------------------------------------------------
# Writing


def vqvae_identity(vq: Any) -> str:
    """SHA-256 of a VQ-VAE's config and params (values, shapes and dtypes): the same model has the
    same identity wherever its directory lies (its own, or inside a whole model)."""
    digest = hashlib.sha256(vq.config.to_json().encode())
    for names, leaf in sorted(named_leaves(vq.params).items()):
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{'/'.join(names)}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _songs_of(folder: Path, metadata: PathLike | None) -> list[Song]:
    """The songs to encode: the metadata file's, or every audio file of ``folder`` (unknown labels)."""
    found = metadata if metadata is not None else find_metadata(folder)
    return read_metadata(found) if found is not None else songs_in_folder(folder)


def _song_key(song: Song, folder: Path) -> str:
    """How the index names a song's file: relative to the dataset folder where it lies inside it."""
    path = song.path.absolute()
    try:
        return path.relative_to(folder.absolute()).as_posix()
    except ValueError:
        return path.as_posix()


def _code_dtype(bins: int) -> np.dtype:
    return np.dtype(np.int16) if bins <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def _shard_file(out: Path, shard: int, level: int) -> Path:
    return out / SHARDS_DIR / f"{shard:05d}_level_{level}.npy"


def _write_json(path: Path, data: Any) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=1))


def _read_index(folder: Path) -> dict:
    file = folder / INDEX_FILE
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder} holds no {INDEX_FILE}: not the output of `jukebox-flax encode-dataset`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file} is damaged (not valid JSON: {e})") from None
    if not isinstance(index, dict) or index.get("format") != CODES_FORMAT:
        raise DataError(f"{file} is not a {CODES_FORMAT} index")
    if int(index.get("format_version", 0)) > CODES_FORMAT_VERSION:
        raise DataError(f"{file} has format_version {index['format_version']}, newer than this jukebox-flax")
    return index


def _silence_codes(vq: Any) -> list[int]:
    """Per level the code of silent audio (every position of an all-zero input sees the same zeros)."""
    codes = vq.encode(np.zeros((1, vq.config.hop_length, vq.config.input_channels), np.float32))
    return [int(np.asarray(z)[0, 0]) for z in codes]


def _encode_song(vq: Any, song: Song) -> tuple[list[np.ndarray], int]:
    """Codes of every level of one whole song (zero-padded to a multiple of the top hop; long songs
    go through the VQ-VAE's windows, equal to the whole pass) and its length in samples."""
    audio = load_audio(song.path, sr=vq.config.sr)
    hop = vq.config.hop_length
    padded = np.zeros((1, -(-len(audio) // hop) * hop, 1), np.float32)
    padded[0, : len(audio), 0] = audio
    return [np.asarray(z[0]) for z in vq.encode(padded)], len(audio)


def encode_dataset(
    data: PathLike,
    out: PathLike,
    model: PathLike,
    *,
    metadata: PathLike | None = None,
    songs_per_shard: int = DEFAULT_SONGS_PER_SHARD,
    progress: bool = True,
    echo: Any = print,
) -> Path:
    """Encode every song of ``data`` at every level of the VQ-VAE in ``model`` into ``out``.

    Resumable: songs already in ``out``'s index are kept (their labels refreshed from the metadata)
    and the others encoded; a complete ``out`` is left as it is. ``out`` written with another
    VQ-VAE is an error. Returns ``out``.
    """
    from .vqvae.api import load_vqvae  # the VQ-VAE only where codes are written, not where they are read

    if songs_per_shard < 1:
        raise DataError(f"songs per shard must be >= 1, got {songs_per_shard}")
    folder, out = Path(data), Path(out)
    songs = _songs_of(folder, metadata)
    vq = load_vqvae(model)
    identity = vqvae_identity(vq)
    index: dict[str, Any]
    if (out / INDEX_FILE).is_file():
        index = _read_index(out)
        if index.get("vqvae_identity") != identity:
            raise DataError(
                f"{out} holds codes of another VQ-VAE ({index.get('model')}); "
                f"pass that --model to continue, or choose a new OUT for {model}"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an encode-dataset output; choose a new OUT")
    else:
        index = {
            "format": CODES_FORMAT,
            "format_version": CODES_FORMAT_VERSION,
            "model": str(Path(model).absolute()),
            "vqvae_identity": identity,
            "vqvae": vq.config.to_dict(),
            "sr": vq.config.sr,
            "hop_lengths": list(vq.config.hop_lengths),
            "dtype": _code_dtype(vq.config.l_bins).name,
            "silence": _silence_codes(vq),
            "songs": [],
        }
    done = {entry["file"]: entry for entry in index["songs"]}
    todo = []
    for song in songs:
        key = _song_key(song, folder)
        if key in done:  # labels may have been corrected since; the codes are the audio's
            done[key].update(artist=song.artist, genre=song.genre, lyrics=song.lyrics)
        else:
            todo.append((key, song))
    if not todo:
        echo(f"{out}: all {len(index['songs'])} songs are already encoded (nothing to do)")
        return out
    _remove_unlisted_shards(out, index)
    dtype = np.dtype(index["dtype"])
    shard = 1 + max((entry["shard"] for entry in index["songs"]), default=-1)
    bar = tqdm(total=len(songs), initial=len(songs) - len(todo), unit="song", disable=not progress, desc="encode")
    try:
        for first in range(0, len(todo), songs_per_shard):
            group = todo[first : first + songs_per_shard]
            parts: list[list[np.ndarray]] = [[] for _ in vq.config.hop_lengths]
            entries = []
            for key, song in group:
                codes, samples = _encode_song(vq, song)
                starts = [sum(len(p) for p in parts[L]) for L in range(len(codes))]
                for L, z in enumerate(codes):
                    parts[L].append(z.astype(dtype))
                entries.append(
                    {
                        "file": key,
                        "artist": song.artist,
                        "genre": song.genre,
                        "lyrics": song.lyrics,
                        "samples": int(samples),
                        "shard": shard,
                        "starts": starts,
                        "lengths": [len(z) for z in codes],
                    }
                )
                bar.update(1)
            for L, level_parts in enumerate(parts):
                with atomic_write(_shard_file(out, shard, L)) as f:
                    np.save(f, np.concatenate(level_parts))
            index["songs"].extend(entries)
            _write_json(out / INDEX_FILE, index)  # names the shard only once all its files are there
            shard += 1
    finally:
        bar.close()
    echo(f"wrote {out}: {len(index['songs'])} songs")
    return out


def _remove_unlisted_shards(out: Path, index: dict) -> None:
    """Shard files a killed run wrote before its index named them (they are written again)."""
    listed = {entry["shard"] for entry in index["songs"]}
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return
    for file in folder.glob("*_level_*.npy"):
        number = file.name.split("_", 1)[0]
        if number.isdigit() and int(number) not in listed:
            file.unlink()


# ------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class CodesBatch:
    """A batch of code crops: ``tokens`` int32 [B, n_ctx] of the prior's level; ``upper`` int32
    [B, n_ctx / cond_downsample] of the level above (upsamplers; else None); ``y`` int32 [B, Y]
    (None without a labeller); ``song`` and ``offset`` (crop start in samples) int64 [B]."""

    tokens: np.ndarray
    upper: np.ndarray | None
    y: np.ndarray | None
    song: np.ndarray
    offset: np.ndarray


class CodesDataset:
    """Crops of the codes of ``encode_dataset``'s output for one prior (``PriorConfig``).

    ``labeller`` (optional) builds ``y`` for every crop (its ``sample_length`` is the prior's), as
    :class:`jukebox_flax.data.AudioDataset`. The prior's downsampling and codebook must be the
    encoding VQ-VAE's. Batches are a pure function of ``(seed, batch index)``.
    """

    def __init__(self, folder: PathLike, config: PriorConfig, labeller: Labeller | None = None):
        self.folder = Path(folder)
        self.index = _read_index(self.folder)
        self.config = config
        self.vqvae_config = VQVAEConfig.from_dict(self.index["vqvae"])
        self._check_prior(config)
        self.level = config.level
        self.levels = [config.level, config.level + 1] if config.is_upsampler else [config.level]
        hops = self.vqvae_config.hop_lengths
        self.hop_lengths = hops
        self.grid = hops[self.levels[-1]]  # crop starts: token boundaries of the highest level used
        self.sample_length = config.sample_length
        if self.sample_length % self.grid:
            raise DataError(
                f"the prior's crop ({self.sample_length} samples) is not a whole number of level-"
                f"{self.levels[-1]} tokens ({self.grid} samples each)"
            )
        self.entries = list(self.index["songs"])
        if not self.entries:
            raise DataError(f"{self.folder} holds no encoded songs")
        self.songs = [Song(Path(e["file"]), e["artist"], e["genre"], e["lyrics"]) for e in self.entries]
        self.lengths = np.array([e["samples"] for e in self.entries], np.int64)
        self.silence = [int(c) for c in self.index["silence"]]
        self.labeller = labeller.with_shape(sample_length=self.sample_length) if labeller is not None else None
        if self.labeller is not None:  # fail now, not at step 10,000, on an unknown name
            for song in self.songs:
                self.labeller.get_label(song.artist, song.genre, song.lyrics, 1, 0)
        # The audio dataset's weights: a song of n samples offers max(1, n - sample_length + 1) starts.
        starts = np.maximum(1, self.lengths - self.sample_length + 1).astype(np.float64)
        self._weights = starts / starts.sum()
        self._shards: dict[tuple[int, int], np.ndarray] = {}

    def _check_prior(self, config: PriorConfig) -> None:
        vq = self.vqvae_config
        where = f"{self.folder} (encoded by {self.index.get('model')})"
        mismatch = vqvae_mismatch(config, vq)
        if mismatch:
            raise DataError(f"the prior {mismatch} (the codes of {where})")

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, shard: int, level: int) -> np.ndarray:
        if (shard, level) not in self._shards:
            file = _shard_file(self.folder, shard, level)
            try:
                self._shards[shard, level] = np.load(file, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise DataError(f"{file} is missing (listed in {self.folder / INDEX_FILE})") from None
            except ValueError as e:
                raise DataError(f"{file} is damaged: {e}") from None
        return self._shards[shard, level]

    def song_codes(self, index: int, level: int) -> np.ndarray:
        """All codes of song ``index`` at ``level`` (int32 [T_level], a copy)."""
        entry = self.entries[index]
        start, length = entry["starts"][level], entry["lengths"][level]
        codes = self._shard(entry["shard"], level)[start : start + length]
        if len(codes) != length:
            raise DataError(f"{_shard_file(self.folder, entry['shard'], level)} is shorter than its index says")
        return np.asarray(codes, np.int32)

    def crop(self, index: int, offset: int) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Codes of the levels used (the prior's, then the upper one) for the crop at ``offset``
        samples (padded with the code of silence past the song's end), and its label."""
        out = []
        for level in self.levels:
            hop = self.hop_lengths[level]
            n = self.sample_length // hop
            codes = self.song_codes(index, level)[offset // hop : offset // hop + n]
            piece = np.full(n, self.silence[level], np.int32)
            piece[: len(codes)] = codes
            out.append(piece)
        y = None
        if self.labeller is not None:
            song = self.songs[index]
            y = self.labeller.get_y(song.artist, song.genre, song.lyrics, int(self.lengths[index]), offset)
        return out, y

    def batch(self, position: int, batch_size: int, seed: int = 0) -> CodesBatch:
        """Batch number ``position`` of the stream for ``seed`` (independent of earlier batches)."""
        rng = np.random.default_rng([seed, position])
        songs = rng.choice(len(self.entries), size=batch_size, p=self._weights)
        offsets = np.zeros(batch_size, np.int64)
        crops: list[list[np.ndarray]] = [[] for _ in self.levels]
        ys = []
        for i, index in enumerate(songs):
            starts = max(0, int(self.lengths[index]) - self.sample_length) // self.grid + 1
            offsets[i] = rng.integers(0, starts) * self.grid
            codes, y = self.crop(int(index), int(offsets[i]))
            for k, z in enumerate(codes):
                crops[k].append(z)
            ys.append(y)
        y = np.stack([np.asarray(v) for v in ys]).astype(np.int32) if self.labeller is not None else None
        upper = np.stack(crops[1]) if len(crops) > 1 else None
        return CodesBatch(np.stack(crops[0]), upper, y, songs.astype(np.int64), offsets)

    @staticmethod
    def describe(folder: PathLike) -> dict[str, Any]:
        """The index of an ``encode_dataset`` output (model, VQ-VAE config, songs)."""
        return _read_index(Path(folder))


def check_identity(folder: PathLike, vq: Any) -> None:
    """Raise DataError unless the codes in ``folder`` were written by the VQ-VAE ``vq``."""
    index = _read_index(Path(folder))
    if index.get("vqvae_identity") != vqvae_identity(vq):
        raise DataError(f"{folder} holds codes of another VQ-VAE ({index.get('model')}) than the one given")


def songs_of(folder: PathLike) -> Sequence[Song]:
    """The songs (with their labels) an ``encode_dataset`` output holds."""
    return [Song(Path(e["file"]), e["artist"], e["genre"], e["lyrics"]) for e in _read_index(Path(folder))["songs"]]
