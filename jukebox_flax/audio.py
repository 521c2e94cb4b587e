"""Audio files in and out: mono float32 at 44.1 kHz, the rate every Jukebox model works at.

``load_audio`` reads anything libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1,
...), mixes to mono by averaging the channels, resamples with soxr (high quality) and returns
float32 samples in [-1, 1] of shape [T] (mono) or [T, C]. The models take [B, T, 1]:
``audio[None, :, None]``.

``save_wav`` writes 16-bit PCM (default) or 32-bit float WAV, clamped to [-1, 1], atomically
(``atomic.atomic_write``: a temporary file in the same directory, then renamed), so a crash never leaves
half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .atomic import atomic_write
from .errors import AudioError

__all__ = ["AudioError", "SAMPLE_RATE", "load_audio", "save_wav", "resample"]

PathLike = str | os.PathLike
SAMPLE_RATE = 44100
SOXR_QUALITY = "HQ"  # soxr's "high quality" preset
_SUBTYPES = {"PCM_16": "PCM_16", "FLOAT": "FLOAT", "PCM_24": "PCM_24"}


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample [T] or [T, C] float32 audio with soxr."""
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality=SOXR_QUALITY).astype(np.float32, copy=False)


def load_audio(
    path: PathLike,
    sr: int = SAMPLE_RATE,
    mono: bool = True,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read an audio file as float32 in [-1, 1] at ``sr``: [T] when ``mono`` else [T, C].

    ``offset`` and ``duration`` (seconds, optional) read only part of the file, e.g. a prime.
    Raises AudioError for a missing, unreadable, non-audio or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as f:
            native_sr = f.samplerate
            start = int(round(offset * native_sr))
            if start < 0 or (f.frames and start > f.frames):
                raise AudioError(f"{path}: offset {offset}s is outside the file ({f.frames / native_sr:.2f}s)")
            if start:
                f.seek(start)
            frames = -1 if duration is None else int(round(duration * native_sr))
            audio = f.read(frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot read {path} as audio: {_one_line(e)}") from None
    if audio.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path} holds NaN or infinite samples")
    if mono:
        audio = audio.mean(axis=1, dtype=np.float32)
    audio = resample(audio, native_sr, sr)
    # Float files may exceed full scale and resampling can overshoot; the models expect [-1, 1].
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def save_wav(path: PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """Write ``audio`` ([T], [T, C] or [1, T, C]) as a WAV file, clamped to [-1, 1], atomically.

    ``subtype``: "PCM_16" (default), "PCM_24" or "FLOAT" (32-bit float). Returns the path.
    """
    if subtype not in _SUBTYPES:
        raise AudioError(f"unsupported WAV subtype {subtype!r} (choose from {', '.join(_SUBTYPES)})")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 3 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim not in (1, 2) or audio.shape[0] == 0:
        raise AudioError(f"cannot save audio of shape {audio.shape} (expected [T] or [T, C] with T > 0)")
    if not np.isfinite(audio).all():
        raise AudioError(f"refusing to write {path}: the audio holds NaN or infinite values")
    audio = np.clip(audio, -1.0, 1.0)
    path = Path(path)
    try:
        with atomic_write(path) as f:
            sf.write(f, audio, sr, subtype=subtype, format="WAV")
    except sf.LibsndfileError as e:  # an OSError (a full disk, a file in the way) names its file already
        raise AudioError(f"cannot write {path}: {_one_line(e)}") from None
    return path


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
