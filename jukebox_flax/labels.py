"""Labels: the artist / genre / lyrics conditioning vector ``y`` of the original Jukebox.

Layout of ``y`` (int32, as the original ``Labeller``)::

    [total_length, offset, sample_length, artist_id, genre_id x max_bow_genre_size (pad -1),
     lyric_token x n_tokens]

``total_length``, ``offset`` and ``sample_length`` are in audio samples (44.1 kHz). Two conventions:

* ``"v2"`` (5b, 5b_lyrics and every upsampler): artist and genre names are normalised (lower case,
  every character outside ``[a-z0-9]`` becomes ``_``, runs of ``_`` collapse, ends stripped); the
  genre string is a *bag of words*: the normalised string split on ``_``, each word one genre id
  (``"Blues Rock"``, ``"blues_rock"`` and ``"blues,rock"`` all give ``[blues, rock]``). Lyric
  alphabet of 79 characters (with ``+``).
* ``"v3"`` (1b_lyrics top prior): artist and genre are looked up lower-cased as whole strings
  (one genre, e.g. ``"country rock"``). Lyric alphabet of 78 characters (no ``+``).

Lyrics are cleaned as the original does: ``unidecode`` to ASCII, ``\\`` becomes a newline, every
character outside the alphabet is dropped (``labeller.check_lyrics`` lists what would be dropped).
Token ``i + 1`` is ``alphabet[i]``; 0 is padding. The lyric part of ``y`` is a window of
``n_tokens`` characters chosen by a linear alignment of characters to time
(``relevant_lyric_tokens``); sampling rebuilds it per window with ``window_y``.

Unknown artists or genres are an error (``LabelError``, naming the closest known names) unless the
name is ``"unknown"``; ``strict=False`` gives the original behaviour (silently id 0).

``vocab.json`` (in a model directory, written by ``convert --ids/--vocab``, read by
``Labeller.from_vocab`` / ``Labeller.from_vocab_dict``)::

    {"format": "jukebox-flax-vocab", "format_version": 1,
     "version": "v2" | "v3",
     "artists": {lookup name: id, ...},   # names as looked up: v2 normalised, v3 lower-cased;
     "genres":  {lookup name: id, ...},   # several names may share an id
     "lyrics":  ["A", "B", ..., "\\n"],   # the lyric alphabet; token = index + 1, 0 = padding
     "n_tokens": 512, "max_bow_genre_size": 5, "sample_length": 1048576}   # optional defaults

``Labeller.from_ids_dir`` (the released id lists) and ``Labeller.from_vocab`` on Hugging Face
tokenizer files (``artists.json``, ``genres.json``, ``lyrics.json``: one dict per file holding the v3
names and the v2 names with a ``.v2`` suffix, or a single HF ``vocab.json`` with those three dicts)
use the converter's readers (``jukebox_flax_convert.vocab_files``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from unidecode import unidecode

from .errors import LabelError

__all__ = [
    "LabelError",
    "Label",
    "Labeller",
    "V2_ALPHABET",
    "V3_ALPHABET",
    "VERSIONS",
    "clean_lyrics",
    "tokenise",
    "textise",
    "normalise_v2",
    "artist_key",
    "genre_keys",
    "relevant_lyric_tokens",
    "window_y",
]

PathLike = str | os.PathLike

VERSIONS = ("v2", "v3")
# The original TextProcessor vocabularies; "in v3 we missed +" (original README).
V2_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:;!?-+'\"()[] \t\n"
V3_ALPHABET = V2_ALPHABET.replace("+", "")
_DEFAULT_GENRE_SIZE = {"v2": 5, "v3": 1}
UNKNOWN = "unknown"
VOCAB_FORMAT = "jukebox-flax-vocab"
VOCAB_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Text


def clean_lyrics(text: str, alphabet: str) -> str:
    """The original cleaning: unidecode to ASCII, '\\' -> newline, drop characters outside ``alphabet``."""
    allowed = frozenset(alphabet)
    text = unidecode(text).replace("\\", "\n")
    return "".join(c for c in text if c in allowed)


def tokenise(text: str, alphabet: str) -> list[int]:
    """Characters of cleaned text -> token ids (``alphabet[i]`` -> ``i + 1``)."""
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    try:
        return [index[c] for c in text]
    except KeyError as e:
        raise LabelError(f"character {e.args[0]!r} is not in the lyric alphabet (clean the text first)") from None


def textise(tokens: Iterable[int], alphabet: str) -> str:
    """Token ids -> text; 0 (padding) becomes ''."""
    return "".join(alphabet[t - 1] if t > 0 else "" for t in (int(t) for t in tokens))


# ---------------------------------------------------------------------------------------------
# Artist and genre names

_UNDERSCORES = re.compile(r"_+")
_V2_ACCEPTED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def normalise_v2(name: str) -> str:
    """The original v2 ``norm``: lower case, non-[a-z0-9] -> '_', collapse '_' runs, strip '_'."""
    s = "".join(c if c in _V2_ACCEPTED else "_" for c in name.lower())
    return _UNDERSCORES.sub("_", s).strip("_")


def artist_key(artist: str, version: str) -> str:
    """The name the original looks an artist up by."""
    return normalise_v2(artist) if version == "v2" else artist.lower()


def genre_keys(genre: str, version: str) -> list[str]:
    """The names the original looks genres up by: v2 a bag of words, v3 the whole string."""
    return normalise_v2(genre).split("_") if version == "v2" else [genre.lower()]


def _lookup(key: str, table: Mapping[str, int], what: str, given: str, version: str, strict: bool) -> int:
    if key in table:
        return table[key]
    if not strict:
        return 0  # the original: unknown names silently become id 0
    if key == UNKNOWN:
        return 0
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    hint = f"closest known: {', '.join(repr(c) for c in close)}" if close else "no close match"
    looked = f" (looked up as {key!r})" if key != given else ""
    raise LabelError(
        f"unknown {what} {given!r}{looked} in the {version} list; {hint}; pass '{UNKNOWN}' to leave it unset"
    )


# ---------------------------------------------------------------------------------------------
# Lyric windows


def relevant_lyric_tokens(
    full_tokens: Sequence[int],
    n_tokens: int,
    total_length: int,
    offset: int,
    duration: int,
    float32: bool = False,
) -> tuple[list[int], list[int]]:
    """The ``n_tokens`` lyric tokens for the audio ``[offset, offset + duration)`` of a song.

    Characters are aligned linearly to time: the window is centred on character
    ``int(len * (offset + duration / 2) / total_length)``, clamped so it stays inside the lyrics.
    Shorter lyrics are left-padded with 0 (index -1). Returns (tokens, indices into full_tokens).

    ``float32=False`` computes the midpoint in float64, as the original ``get_label`` does;
    ``float32=True`` in float32, as the original does per sampling window (its y values are torch
    integer tensors, so ``duration / 2.0`` and everything after it is float32).
    """
    full = [int(t) for t in full_tokens]
    half = n_tokens // 2
    if len(full) < n_tokens:
        pad = n_tokens - len(full)
        return [0] * pad + full, [-1] * pad + list(range(len(full)))
    if not 0 <= offset < total_length:
        raise LabelError(f"offset {offset} is outside the song (total_length {total_length})")
    position: Any
    if float32:
        f = np.float32
        position = f(len(full)) * (f(offset) + f(duration) / f(2.0)) / f(total_length)
    else:
        position = len(full) * (offset + duration / 2.0) / total_length
    midpoint = min(max(int(position), half), len(full) - half)
    indices = list(range(midpoint - half, midpoint + half))
    return full[midpoint - half : midpoint + half], indices


def window_y(
    y: np.ndarray,
    full_tokens: Sequence[int] | Sequence[Sequence[int]],
    n_tokens: int,
    start: int,
    hop_length: int,
    sample_length: int,
    float32: bool = True,
) -> np.ndarray:
    """The original ``SimplePrior.get_y(labels, start)``: y for the window starting at token ``start``.

    ``y`` is the song's label ([Y] or [B, Y], offset of the first window); ``hop_length`` is the
    number of audio samples per token at this level; ``sample_length`` the prior's window in samples.
    Sets y[2] = sample_length, adds ``start * hop_length`` to the offset y[1] and re-selects the lyric
    window from each row's ``full_tokens`` (one list for [Y], one per row for [B, Y]).
    """
    y = np.array(y, dtype=np.int64)  # a copy; int64 while computing, int32 out
    single = y.ndim == 1
    rows = y[None] if single else y
    full: list[Any] = [full_tokens] if single else list(full_tokens)
    if len(full) != rows.shape[0]:
        raise LabelError(f"{len(full)} full_tokens lists for {rows.shape[0]} label rows")
    rows[:, 2] = int(sample_length)
    rows[:, 1] += int(start * hop_length)
    if n_tokens > 0:
        for row, tokens in zip(rows, full):
            total, offset, duration = (int(v) for v in row[:3])
            row[-n_tokens:] = relevant_lyric_tokens(tokens, n_tokens, total, offset, duration, float32=float32)[0]
    return _int32(rows[0] if single else rows)


def _int32(y: np.ndarray) -> np.ndarray:
    if y.size and (y.max() > np.iinfo(np.int32).max or y.min() < np.iinfo(np.int32).min):
        raise LabelError("label values do not fit in int32 (is total_length in samples and below 13 hours?)")
    return y.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Labeller


@dataclass(frozen=True)
class Label:
    """A song's label: ``y`` for its first window plus what rebuilding later windows needs."""

    y: np.ndarray  # int32 [4 + max_bow_genre_size + n_tokens]
    full_tokens: tuple[int, ...]  # every lyric token of the song
    artist: str  # as given
    genre: str  # as given
    lyrics: str  # cleaned


def _reverse(table: Mapping[str, int]) -> dict[int, str]:
    # Several names may share an id; the original joins them, sorted, with '_'.
    names: dict[int, list[str]] = {}
    for name, i in table.items():
        names.setdefault(i, []).append(name)
    return {i: "_".join(sorted(n)) for i, n in names.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LabelError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise LabelError(f"{path} is not valid JSON: {e}") from None


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise LabelError(f"label version must be 'v2' or 'v3', got {version!r}")
    return version


@dataclass(frozen=True)
class Labeller:
    """Builds the original label vector ``y`` from artist, genre and lyrics.

    ``n_tokens``, ``max_bow_genre_size`` and ``sample_length`` come from the prior the labels are
    for (``for_config``); ``strict=False`` maps unknown names silently to 0 as the original does.
    """

    version: str
    artists: Mapping[str, int] = dataclasses.field(repr=False)
    genres: Mapping[str, int] = dataclasses.field(repr=False)
    alphabet: str = dataclasses.field(repr=False)
    n_tokens: int = 0
    max_bow_genre_size: int = 5
    sample_length: int = 0
    strict: bool = True

    def __post_init__(self) -> None:
        _check_version(self.version)
        if len(set(self.alphabet)) != len(self.alphabet):
            raise LabelError("the lyric alphabet has repeated characters")
        if self.n_tokens < 0 or self.max_bow_genre_size < 0 or self.sample_length < 0:
            raise LabelError("n_tokens, max_bow_genre_size and sample_length must be >= 0")

    # ----- construction

    @classmethod
    def from_ids_dir(
        cls,
        ids_dir: PathLike,
        version: str = "v2",
        n_tokens: int = 0,
        max_bow_genre_size: int | None = None,
        sample_length: int = 0,
        strict: bool = True,
    ) -> Labeller:
        """From the released id lists ``{version}_artist_ids.txt`` / ``{version}_genre_ids.txt``
        (read by ``jukebox_flax_convert.vocab_files``)."""
        # The one reader of release files the library keeps: imported here so the converter stays
        # out of the library's import graph (a model directory's vocab.json needs no converter).
        from jukebox_flax_convert.vocab_files import read_ids_dir

        _check_version(version)
        return cls._from_tables(read_ids_dir(ids_dir, version), n_tokens, max_bow_genre_size, sample_length, strict)

    @classmethod
    def from_vocab(
        cls,
        path: PathLike,
        version: str | None = None,
        n_tokens: int | None = None,
        max_bow_genre_size: int | None = None,
        sample_length: int | None = None,
        strict: bool = True,
    ) -> Labeller:
        """From our ``vocab.json`` (a file or a model directory) or Hugging Face tokenizer files.

        HF (read by ``jukebox_flax_convert.vocab_files.read_hf_vocab``): a directory with
        ``artists.json``, ``genres.json``, ``lyrics.json`` (one of those files may be given), or a
        single JSON with ``artists``/``genres``/``lyrics`` dicts. Their tables hold both versions;
        ``version`` picks one (default: ``version[0]`` of the directory's ``tokenizer_config.json``,
        or the only version present). Lyrics follow the original alphabets (HF's lyric regex
        differs, see tests/test_labels.py).
        """
        path = Path(path)
        shape = dict(n_tokens=n_tokens, max_bow_genre_size=max_bow_genre_size, sample_length=sample_length)
        if path.is_dir() and (path / "vocab.json").is_file() and not (path / "artists.json").is_file():
            path = path / "vocab.json"
        if path.is_file() and path.name not in ("artists.json", "genres.json", "lyrics.json"):
            data = _read_json(path)
            if isinstance(data, dict) and data.get("format") == VOCAB_FORMAT:
                if version is not None and version != data.get("version"):
                    raise LabelError(f"{path} holds {data.get('version')} labels, not {version}")
                return cls.from_vocab_dict(data, strict=strict, **shape)
        from jukebox_flax_convert.vocab_files import read_hf_vocab  # see from_ids_dir

        return cls._from_tables(read_hf_vocab(path, version), strict=strict, **shape)

    @classmethod
    def _from_tables(
        cls,
        tables: Mapping[str, Any],
        n_tokens: int | None = None,
        max_bow_genre_size: int | None = None,
        sample_length: int | None = None,
        strict: bool = True,
    ) -> Labeller:
        """From a reader's ``{"version", "artists", "genres", "lyrics"}`` (lyrics None: the built-in alphabet)."""
        version = _check_version(tables["version"])
        alphabet = tables["lyrics"] or (V2_ALPHABET if version == "v2" else V3_ALPHABET)
        return cls(
            version=version,
            artists=tables["artists"],
            genres=tables["genres"],
            alphabet=alphabet,
            n_tokens=n_tokens or 0,
            max_bow_genre_size=_DEFAULT_GENRE_SIZE[version] if max_bow_genre_size is None else max_bow_genre_size,
            sample_length=sample_length or 0,
            strict=strict,
        )

    def vocab_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``vocab.json`` format in the module docstring)."""
        return {
            "format": VOCAB_FORMAT,
            "format_version": VOCAB_FORMAT_VERSION,
            "version": self.version,
            "artists": dict(self.artists),
            "genres": dict(self.genres),
            "lyrics": list(self.alphabet),
            "n_tokens": self.n_tokens,
            "max_bow_genre_size": self.max_bow_genre_size,
            "sample_length": self.sample_length,
        }

    @classmethod
    def from_vocab_dict(
        cls,
        data: Mapping[str, Any],
        n_tokens: int | None = None,
        max_bow_genre_size: int | None = None,
        sample_length: int | None = None,
        strict: bool = True,
    ) -> Labeller:
        """The inverse of ``vocab_dict``; explicit arguments override the stored defaults."""
        if data.get("format") != VOCAB_FORMAT:
            raise LabelError(f"not a {VOCAB_FORMAT} dict (format {data.get('format')!r})")
        if int(data.get("format_version", 0)) > VOCAB_FORMAT_VERSION:
            raise LabelError(f"vocab format_version {data['format_version']} is newer than this jukebox-flax")
        try:
            version = _check_version(data["version"])
            stored_genre_size = data.get("max_bow_genre_size", _DEFAULT_GENRE_SIZE[version])
            return cls(
                version=version,
                artists={str(k): int(v) for k, v in data["artists"].items()},
                genres={str(k): int(v) for k, v in data["genres"].items()},
                alphabet="".join(data["lyrics"]),
                n_tokens=int(data.get("n_tokens", 0) if n_tokens is None else n_tokens),
                max_bow_genre_size=int(stored_genre_size if max_bow_genre_size is None else max_bow_genre_size),
                sample_length=int(data.get("sample_length", 0) if sample_length is None else sample_length),
                strict=strict,
            )
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            if isinstance(e, LabelError):
                raise
            raise LabelError(f"malformed vocab dict: {type(e).__name__}: {e}") from None

    def with_shape(
        self,
        n_tokens: int | None = None,
        max_bow_genre_size: int | None = None,
        sample_length: int | None = None,
    ) -> Labeller:
        """A copy for another prior of the same label version."""
        changes: dict[str, Any] = dict(
            n_tokens=n_tokens, max_bow_genre_size=max_bow_genre_size, sample_length=sample_length
        )
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def for_config(self, config: Any) -> Labeller:
        """A copy shaped for a ``PriorConfig`` (its n_tokens, max_bow_genre_size, sample_length)."""
        if not config.labels:
            raise LabelError("this prior takes no labels (labels=False): sample it with y=None")
        if config.labeller_version != self.version:
            raise LabelError(f"this prior uses {config.labeller_version} labels but the vocabulary is {self.version}")
        return self.with_shape(config.n_tokens, config.max_bow_genre_size, config.sample_length)

    # ----- properties

    @property
    def n_vocab(self) -> int:
        """Lyric vocabulary size including the padding token 0."""
        return len(self.alphabet) + 1

    @property
    def y_length(self) -> int:
        return 4 + self.max_bow_genre_size + self.n_tokens

    # ----- the pieces

    def clean(self, lyrics: str) -> str:
        return clean_lyrics(lyrics, self.alphabet)

    def tokenise(self, text: str) -> list[int]:
        return tokenise(text, self.alphabet)

    def textise(self, tokens: Iterable[int]) -> str:
        return textise(tokens, self.alphabet)

    def check_lyrics(self, lyrics: str) -> list[str]:
        """The characters of ``lyrics`` that cleaning drops (wholly or partly), once each, in order.

        ``unidecode`` works character by character, so each is checked on its own; characters it
        transliterates into the alphabet (``é`` -> ``e``, ``—`` -> ``--``) are kept and not listed;
        characters it has no transliteration for (emoji) are listed.
        """
        dropped: list[str] = []
        for c in dict.fromkeys(lyrics):
            kept = self.clean(c)
            if not kept or kept != unidecode(c).replace("\\", "\n"):
                dropped.append(c)
        return dropped

    def artist_id(self, artist: str) -> int:
        return _lookup(artist_key(artist, self.version), self.artists, "artist", artist, self.version, self.strict)

    def genre_ids(self, genre: str) -> list[int]:
        """Genre ids (v2: one per word of the normalised string; v3: one for the whole string)."""
        keys = genre_keys(genre, self.version)
        if self.strict and keys == [""]:
            raise LabelError(f"empty genre; pass '{UNKNOWN}' to leave it unset")
        return [_lookup(k, self.genres, "genre", genre, self.version, self.strict) for k in keys]

    # ----- labels

    def get_label(self, artist: str, genre: str, lyrics: str | None, total_length: int, offset: int = 0) -> Label:
        """The song's label (``y`` for the window at ``offset``) with its full lyric tokens."""
        total_length, offset = int(total_length), int(offset)
        if total_length <= 0 or not 0 <= offset < total_length:
            raise LabelError(f"need 0 <= offset < total_length, got offset {offset}, total_length {total_length}")
        artist_id = self.artist_id(artist)
        genre_ids = self.genre_ids(genre)
        if len(genre_ids) > self.max_bow_genre_size:
            raise LabelError(
                f"genre {genre!r} has {len(genre_ids)} words, this model takes at most {self.max_bow_genre_size}"
            )
        cleaned = self.clean(lyrics or "")  # models without lyrics take None or ""
        full_tokens = self.tokenise(cleaned)
        tokens = []
        if self.n_tokens > 0:
            tokens = relevant_lyric_tokens(full_tokens, self.n_tokens, total_length, offset, self.sample_length)[0]
        genre_ids = genre_ids + [-1] * (self.max_bow_genre_size - len(genre_ids))
        y = np.array([total_length, offset, self.sample_length, artist_id, *genre_ids, *tokens], dtype=np.int64)
        return Label(y=_int32(y), full_tokens=tuple(full_tokens), artist=artist, genre=genre, lyrics=cleaned)

    def get_y(self, artist: str, genre: str, lyrics: str | None, total_length: int, offset: int = 0) -> np.ndarray:
        """The original label vector (int32 [y_length]) with the lyric window for ``offset``."""
        return self.get_label(artist, genre, lyrics, total_length, offset).y

    def get_window_y(
        self,
        labels: Label | Sequence[Label],
        start: int,
        hop_length: int,
        sample_length: int | None = None,
        float32: bool = True,
    ) -> np.ndarray:
        """y for the sampling window starting at token ``start`` (see ``window_y``): [Y] or [B, Y].

        ``hop_length``: audio samples per token at this level; ``sample_length`` defaults to this
        labeller's. ``float32=True`` reproduces the original's per-window arithmetic.
        """
        length = self.sample_length if sample_length is None else sample_length
        if isinstance(labels, Label):
            return window_y(labels.y, labels.full_tokens, self.n_tokens, start, hop_length, length, float32)
        ys = np.stack([label.y for label in labels])
        full = [label.full_tokens for label in labels]
        return window_y(ys, full, self.n_tokens, start, hop_length, length, float32)

    def describe_y(self, y: np.ndarray) -> dict[str, Any]:
        """Artist, genre and lyrics a label vector stands for (names sharing an id joined with '_')."""
        values = [int(v) for v in np.asarray(y).reshape(-1)]
        if len(values) != self.y_length:
            raise LabelError(f"label has length {len(values)}, expected {self.y_length}")
        artists, genres = _reverse(self.artists), _reverse(self.genres)
        genre_ids = [g for g in values[4 : 4 + self.max_bow_genre_size] if g >= 0]
        return dict(
            total_length=values[0],
            offset=values[1],
            sample_length=values[2],
            artist=artists.get(values[3], f"<id {values[3]}>"),
            genre="_".join(genres.get(g, f"<id {g}>") for g in genre_ids),
            lyrics=self.textise(values[4 + self.max_bow_genre_size :]),
        )
