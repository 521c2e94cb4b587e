"""The public VQ-VAE: ``load_vqvae(DIR)`` -> :class:`VQVAE` with ``encode`` / ``decode``.

Also the ``jukebox-flax encode`` / ``decode`` commands (:func:`encode_file`, :func:`decode_file`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..atomic import atomic_write
from ..audio import load_audio, save_wav
from ..checkpoint import component_dir, load_config, load_params
from ..config import VQVAEConfig
from ..errors import VQVAEInputError
from ..tree import named_leaves
from .chunked import decode_chunked, encode_chunked
from .vqvae import VQVAEModule

__all__ = [
    "VQVAEInputError",
    "VQVAE",
    "load_vqvae",
    "init_vqvae_params",
    "vqvae_param_shapes",
    "count_params",
    "encode_file",
    "decode_file",
    "check_codes_file",
]

PathLike = str | os.PathLike

# Longer inputs are processed in windows (bounded memory); ~24 s of audio per window.
DEFAULT_CHUNK_SAMPLES = 1 << 20


def init_vqvae_params(config: VQVAEConfig, key: jax.Array) -> dict:
    """Freshly initialised params (PyTorch's default conv init; zero codebooks, as the original)."""
    # Deliberately op by op, not jitted: one program would hold one inlined threefry draw per conv
    # weight and bias, each compiled on its own, where eager dispatch compiles each distinct shape once.
    x = jnp.zeros((1, config.hop_length, config.input_channels), jnp.float32)
    return VQVAEModule(config).init(key, x)["params"]


def _abstract_params(config: VQVAEConfig) -> Any:
    return jax.eval_shape(lambda: init_vqvae_params(config, jax.random.PRNGKey(0)))


def vqvae_param_shapes(config: VQVAEConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{path: shape}`` of every param (codebooks included), without allocating memory."""
    return {names: tuple(leaf.shape) for names, leaf in named_leaves(_abstract_params(config)).items()}


def count_params(params: Any, include_codebooks: bool = False) -> int:
    """Number of trainable parameters (the released VQ-VAE has 1,485,763); codebooks on request."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not include_codebooks and getattr(path[-1], "key", None) == "k":
            continue
        total += int(np.prod(leaf.shape))
    return total


@partial(jax.jit, static_argnames="config")
def _encode(config: VQVAEConfig, params: Any, audio: jax.Array) -> Any:
    """Jitted with the config static: jit's cache is shared by every VQVAE of one config (per shape)."""
    return VQVAEModule(config).apply({"params": params}, audio, method=VQVAEModule.encode)


@partial(jax.jit, static_argnames=("config", "start_level"))
def _decode(config: VQVAEConfig, params: Any, codes: list, start_level: int) -> Any:
    return VQVAEModule(config).apply({"params": params}, codes, start_level=start_level, method=VQVAEModule.decode)


class VQVAE:
    """A VQ-VAE with its params: ``encode`` audio to codes and ``decode`` codes to audio.

    Compiled functions are cached by jax per input shape. Inputs longer than ``chunk_samples``
    go through windows that respect the receptive field, so the result equals the whole pass.
    """

    def __init__(
        self, config: VQVAEConfig, params: Any, chunk_samples: int = DEFAULT_CHUNK_SAMPLES, progress: bool = False
    ):
        self.config = config
        self.params = params
        self.chunk_samples = chunk_samples
        self.progress = progress
        self.module = VQVAEModule(config)

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        return self.config.hop_lengths

    @property
    def dtype(self) -> Any:
        return jax.tree_util.tree_leaves(self.params)[0].dtype

    def _check_audio(self, audio: Any) -> np.ndarray | jax.Array:
        shape = tuple(np.shape(audio))
        if len(shape) != 3 or shape[-1] != self.config.input_channels:
            raise VQVAEInputError(f"audio must be [batch, time, {self.config.input_channels}], got {shape}")
        hop = self.config.hop_length
        if shape[1] == 0 or shape[1] % hop:
            raise VQVAEInputError(f"audio length {shape[1]} must be a positive multiple of {hop} samples")
        return audio

    def encode(self, audio: Any, chunk_samples: int | None = None, progress: bool | None = None) -> list[jax.Array]:
        """float32 audio ``[B, T, 1]`` (T a multiple of the top hop) -> codes int32 ``[B, T // hop_l]``
        for every level, ``codes[0]`` the finest."""
        audio = self._check_audio(audio)
        chunk = chunk_samples or self.chunk_samples
        run = lambda x: _encode(self.config, self.params, jnp.asarray(x, self.dtype))
        if audio.shape[1] <= chunk:
            return list(run(audio))
        codes = encode_chunked(
            run, np.asarray(audio), self.config, chunk, self.progress if progress is None else progress
        )
        return [jnp.asarray(z) for z in codes]

    def decode(
        self, codes: Sequence[Any], start_level: int = 0, chunk_samples: int | None = None, progress: bool | None = None
    ) -> jax.Array:
        """Audio float32 ``[B, T, 1]`` from ``codes[0]``, the codes of ``start_level``.

        As the original, codes of higher levels may follow in the list and are ignored.
        """
        if not 0 <= start_level < self.config.levels:
            raise VQVAEInputError(f"start_level must be in 0..{self.config.levels - 1}, got {start_level}")
        if len(codes) == 0:
            raise VQVAEInputError("decode needs at least the codes of start_level")
        z = codes[0]
        if np.ndim(z) != 2:
            raise VQVAEInputError(f"codes must be [batch, time], got shape {tuple(np.shape(z))}")
        hop = self.config.hop_lengths[start_level]
        chunk_tokens = max(1, (chunk_samples or self.chunk_samples) // hop)
        run = lambda c: _decode(self.config, self.params, [jnp.asarray(c, jnp.int32)], start_level)
        if np.shape(z)[1] <= chunk_tokens:
            return run(z).astype(jnp.float32)
        audio = decode_chunked(
            run, np.asarray(z), self.config, start_level, chunk_tokens, self.progress if progress is None else progress
        )
        return jnp.asarray(audio, jnp.float32)


def load_vqvae(path: PathLike, dtype: Any = None, **kwargs: Any) -> VQVAE:
    """Load a VQ-VAE from a model directory (a ``vqvae`` component or a whole model).

    ``dtype`` casts the params (e.g. ``jnp.bfloat16``); codes are always chosen in float32.
    """
    path = component_dir(path, "vqvae")
    config = load_config(path)
    if not isinstance(config, VQVAEConfig):
        raise VQVAEInputError(f"{path} holds a {type(config).__name__}, not a VQ-VAE")
    params = load_params(path, dtype=dtype, expected=_abstract_params(config))
    return VQVAE(config, params, **kwargs)


# ------------------------------------------------------------------------------------------------
# Command line


def encode_file(model_dir: PathLike, audio_path: PathLike, out_npz: PathLike) -> Path:
    """Encode an audio file into ``out_npz`` (``level_0``, ``level_1``, ``level_2`` int32 codes).

    The audio is resampled to the model's rate, mixed to mono and zero-padded at the end to a
    multiple of the top hop; ``n_samples`` records the original length so decode can trim.
    The file is written atomically (a crash or a full disk leaves no partial ``.npz``).
    """
    out = Path(out_npz)
    if out.is_dir():
        raise VQVAEInputError(f"{out} is a directory; give the .npz file to write")
    vq = load_vqvae(model_dir, progress=True)
    audio = np.asarray(load_audio(audio_path, sr=vq.config.sr), np.float32)
    audio = audio.reshape(-1) if audio.ndim == 1 or 1 in audio.shape else audio.mean(axis=-1)
    n_samples = audio.shape[0]
    if n_samples == 0:
        raise VQVAEInputError(f"{audio_path} holds no audio")
    hop = vq.config.hop_length
    padded = np.zeros((1, -(-n_samples // hop) * hop, 1), np.float32)
    padded[0, :n_samples, 0] = audio
    codes = vq.encode(padded)
    arrays: dict[str, Any] = {f"level_{L}": np.asarray(z[0], np.int32) for L, z in enumerate(codes)}
    with atomic_write(out) as f:  # an open file keeps numpy from appending '.npz' to the name
        np.savez(
            f,
            **arrays,
            sr=np.int32(vq.config.sr),
            hop_lengths=np.asarray(vq.hop_lengths, np.int32),
            n_samples=np.int64(n_samples),
        )
    return out


def _read_codes_file(path: Path) -> dict[str, np.ndarray]:
    """Every array of a codes ``.npz``; a missing, damaged or foreign file is one VQVAEInputError."""
    if not path.is_file():
        raise VQVAEInputError(f"codes file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise VQVAEInputError(f"{path} is a single .npy array; decode reads the .npz that encode writes")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except VQVAEInputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:  # not npz, pickled, truncated
        raise VQVAEInputError(f"{path} is not a readable codes .npz ({' '.join(str(e).split())})") from None


def _scalar_int(data: dict[str, np.ndarray], key: str, path: Path) -> int | None:
    if key not in data:
        return None
    value = data[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise VQVAEInputError(f"{path}: {key} must be one integer, got {value.dtype.name}{list(value.shape)}")
    return int(value)


def check_codes_file(
    data: dict[str, np.ndarray], config: VQVAEConfig, path: Path
) -> tuple[int, np.ndarray, int | None]:
    """(level, codes [B, T], n_samples or None) of the finest level in a codes file, checked
    against the model: names, dtype, shape, range, and the metadata ``sr`` / ``hop_lengths`` /
    ``n_samples``."""
    names = [k for k in data if k.startswith("level_")]
    bad = [k for k in names if not k[6:].isdigit() or int(k[6:]) >= config.levels]
    if bad:
        raise VQVAEInputError(
            f"{path}: {bad[0]} is not a level of this model (it has level_0..level_{config.levels - 1})"
        )
    if not names:
        raise VQVAEInputError(f"{path} has no level_0/level_1/level_2 codes")
    level = min(int(k[6:]) for k in names)
    codes = data[f"level_{level}"]
    if codes.dtype.kind not in "iu":
        raise VQVAEInputError(f"{path}: level_{level} codes are {codes.dtype.name}; codes are integers")
    if codes.ndim == 1:
        codes = codes[None]
    if codes.ndim != 2:
        raise VQVAEInputError(
            f"{path}: level_{level} codes must be [T] or [B, T], got shape {list(data[f'level_{level}'].shape)}"
        )
    if codes.size == 0:
        raise VQVAEInputError(f"{path}: level_{level} codes are empty (shape {list(codes.shape)})")
    if codes.min() < 0 or codes.max() >= config.l_bins:
        raise VQVAEInputError(
            f"{path}: level_{level} codes must lie in 0..{config.l_bins - 1}, found {codes.min()}..{codes.max()}"
        )
    sr = _scalar_int(data, "sr", path)
    if sr is not None and sr != config.sr:
        raise VQVAEInputError(f"{path} was encoded at {sr} Hz; this model works at {config.sr} Hz")
    hops = np.asarray(data.get("hop_lengths", config.hop_lengths)).tolist()
    if hops != list(config.hop_lengths):
        raise VQVAEInputError(f"{path} has hop lengths {hops}; the model's are {list(config.hop_lengths)}")
    n_samples = _scalar_int(data, "n_samples", path)
    length = codes.shape[1] * config.hop_lengths[level]
    if n_samples is not None and not 0 < n_samples <= length:
        raise VQVAEInputError(f"{path}: n_samples {n_samples} must lie in 1..{length} for these codes")
    return level, codes.astype(np.int32), n_samples


def decode_file(model_dir: PathLike, npz_path: PathLike, out_wav: PathLike) -> Path:
    """Decode the lowest level of codes in ``npz_path`` (as written by :func:`encode_file`) to a WAV.

    Codes may be ``[T]`` (one song) or ``[B, T]``; a batch writes ``OUT_0.wav``, ``OUT_1.wav``, ...
    The file is checked against the model first (integer codes in range, known levels, the
    model's sample rate, a sane ``n_samples``); the WAVs are written at the model's rate.
    """
    path, out = Path(npz_path), Path(out_wav)
    if out.is_dir():
        raise VQVAEInputError(f"{out} is a directory; give the .wav file to write")
    data = _read_codes_file(path)
    config = load_config(component_dir(model_dir, "vqvae"))
    if not isinstance(config, VQVAEConfig):
        raise VQVAEInputError(f"{model_dir} holds a {type(config).__name__}, not a VQ-VAE")
    level, codes, n_samples = check_codes_file(data, config, path)  # before any weight is read
    vq = load_vqvae(model_dir, progress=True)
    audio = np.asarray(vq.decode([codes], start_level=level))[..., 0]
    if n_samples is not None:
        audio = audio[:, :n_samples]
    sr = vq.config.sr
    if len(audio) == 1:
        save_wav(out, audio[0], sr)
        return out
    written: list[Path] = []
    try:
        for i, item in enumerate(audio):
            written.append(save_wav(out.with_name(f"{out.stem}_{i}{out.suffix}"), item, sr))
    except BaseException:
        for file in written:  # all of the batch or none of it
            file.unlink(missing_ok=True)
        raise
    return out
