"""Reading released PyTorch weights without copying them: official ``*.pth.tar`` files, a directory
of them, or a Hugging Face Jukebox checkpoint (``pytorch_model*.bin`` / ``*.safetensors``, sharded
or not).

Every tensor comes back as a numpy array that is a view of a memory-mapped file (no data is read
until it is used), so a multi-GB checkpoint costs almost nothing to open. The official files are
pickles: they are unpickled with torch's weights-only unpickler and an allow-list of what those
files contain; anything else needs ``trust_pickle=True``.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

try:
    from numpy._core.multiarray import scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar  # type: ignore[no-redef]

from jukebox_flax.errors import ConvertError

from .hf_keys import split_hf_state_dict

__all__ = [
    "ConvertError",
    "Source",
    "open_source",
    "load_official_file",
    "load_hf_state_dict",
    "release_pages",
    "verify_zip_crc",
    "COMPONENTS",
]

COMPONENTS = ("vqvae", "prior_level_0", "prior_level_1", "prior_level_2")
OFFICIAL_FILES = {name: f"{name}.pth.tar" for name in COMPONENTS}


@dataclass
class Source:
    """What was found at the source path.

    ``state_dicts`` maps a component name ('vqvae', 'prior_level_L', or 'unknown' for a single
    official file whose kind is decided from its keys later) to {original key: array}; HF keys are
    already renamed to the original ones. ``hps`` holds each official file's own hyperparameters.
    """

    kind: str  # 'official_file' | 'official_dir' | 'hf'
    path: Path
    state_dicts: dict[str, dict[str, np.ndarray]]
    hps: dict[str, dict | None] = field(default_factory=dict)
    hf_config: dict | None = None
    files: list[Path] = field(default_factory=list)  # memory-mapped files (see release_pages)


# ------------------------------------------------------------------------------------------------
# Official files


class Hyperparams:
    """Stand-in for ``jukebox.hparams.Hyperparams`` (a dict subclass with attribute access), so an
    ``hps`` entry pickled as that class loads under the weights-only unpickler: unpickling
    "creates" one, which gives a plain dict (the weights-only unpickler fills only real dicts)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:  # type: ignore[misc]
        return dict(*args, **kwargs)


def _safe_globals() -> list:
    """What the official files may pickle besides tensors and plain containers."""
    allowed: list = [(Hyperparams, "jukebox.hparams.Hyperparams")]
    # numpy scalars / dtypes (metrics and some hps values may be numpy numbers)
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    return allowed


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    import torch

    mmap_ok = zipfile.is_zipfile(path)  # torch's zip format; the legacy format cannot be mapped
    if mmap_ok:
        verify_zip_crc(path)  # torch reads the members without checking their CRC-32
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", mmap=mmap_ok, weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", mmap=mmap_ok, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            raise ConvertError(
                f"{path} pickles {what.group(1) if what else 'objects'} outside the allow-list of the "
                f"official checkpoints; pass --trust-pickle only if you trust this file"
            ) from None
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise ConvertError(f"{path} is truncated or corrupt ({_first_line(e)})") from None


_CRC_CHUNK = 8 * 2**20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version .. sizes), name and extra lengths


def verify_zip_crc(path: Path) -> None:
    """Check the CRC-32 of every member of a zip checkpoint (torch's format), streaming the file
    once through a small buffer: a flipped bit is an error, never a silently different weight."""
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            buffer = memoryview(bytearray(_CRC_CHUNK))
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:  # zipfile checks the CRC as it inflates
                    with zf.open(info) as member:
                        while member.read(_CRC_CHUNK):
                            pass
                    continue
                raw.seek(info.header_offset)
                header = raw.read(_LOCAL_HEADER.size)
                if len(header) != _LOCAL_HEADER.size:
                    raise zipfile.BadZipFile(f"member {info.filename} is cut off")
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
                if signature != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"bad local header of member {info.filename}")
                raw.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
                crc, left = 0, info.compress_size
                while left:
                    n = raw.readinto(buffer[: min(left, _CRC_CHUNK)])
                    if not n:
                        raise zipfile.BadZipFile(f"member {info.filename} is cut off")
                    crc = zlib.crc32(buffer[:n], crc)
                    left -= n
                if crc != info.CRC:
                    raise ConvertError(
                        f"{path} is corrupt: {info.filename} fails its CRC-32 check (the file was damaged)"
                    )
    except zipfile.BadZipFile as e:
        raise ConvertError(f"{path} is truncated or corrupt ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A numpy view of a CPU tensor (bfloat16 through ml_dtypes), without copying."""
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _state_dict_to_numpy(sd: Any, where: Path) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ConvertError(f"{where}: entry {key!r} of the state dict is a {type(value).__name__}, not a tensor")
        # DataParallel / DistributedDataParallel checkpoints prefix every key with 'module.'
        out[key[len("module.") :] if key.startswith("module.") else key] = tensor_to_numpy(value)
    return out


def load_official_file(path: Path, trust_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, hps) of one official checkpoint (a dict with 'model' and usually 'hps')."""
    ckpt = _torch_load(path, trust_pickle)
    if isinstance(ckpt, dict) and "model" in ckpt:
        sd, hps = ckpt["model"], ckpt.get("hps")
    elif isinstance(ckpt, dict) and ckpt and all(hasattr(v, "shape") for v in ckpt.values()):
        sd, hps = ckpt, None  # a bare state dict
    else:
        raise ConvertError(f"{path} is not a Jukebox checkpoint (expected a dict with a 'model' state dict)")
    if hps is not None and not isinstance(hps, dict):
        raise ConvertError(f"{path}: its 'hps' entry is a {type(hps).__name__}, not a dict")
    return _state_dict_to_numpy(sd, path), (dict(hps) if hps is not None else None)


# ------------------------------------------------------------------------------------------------
# Hugging Face checkpoints

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped views of every tensor of a .safetensors file (the format is an 8-byte header
    length, a JSON header of dtype/shape/offsets, then raw little-endian data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise ConvertError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConvertError(f"{path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path} has a corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start = 8 + n
    out: dict[str, np.ndarray] = {}
    if not header:
        return out
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for key, info in header.items():
        try:
            dtype = _np_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            if begin < 0 or end < begin or any(d < 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path}: bad header entry for {key!r}") from None
        if data_start + end > size or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ConvertError(f"{path} is truncated or corrupt (tensor {key!r} runs past the end)")
        out[key] = mm[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return out


def _hf_weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ConvertError(f"{index} is not a valid shard index (not JSON)") from None
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ConvertError(f"{index} is not a valid shard index (no weight_map of tensor -> file)")
            files = sorted(set(weight_map.values()))
            for name in files:
                # lexically: a Hugging Face cache links shards to blobs elsewhere, which is fine
                normal = os.path.normpath(name)
                if not name or os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
                    raise ConvertError(f"{index} names the shard {name!r}, outside {path}")
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise ConvertError(f"{path} is missing shard(s) listed in {index_name}: {', '.join(missing)}")
            return [path / f for f in files]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "pytorch_model*.bin"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise ConvertError(f"{path} has a config.json but no pytorch_model*.bin or *.safetensors weights")


def load_hf_state_dict(path: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    """The whole HF state dict (HF key names) of a checkpoint directory, memory-mapped."""
    files = _hf_weight_files(path)
    sd: dict[str, np.ndarray] = {}
    for file in files:
        if file.suffix == ".safetensors":
            part = _load_safetensors(file)
        else:
            obj = _torch_load(file, trust_pickle=False)
            if not isinstance(obj, dict):
                raise ConvertError(f"{file} is not a state dict")
            part = _state_dict_to_numpy(obj, file)
        clash = set(part) & set(sd)
        if clash:
            raise ConvertError(f"tensor {sorted(clash)[0]!r} appears in more than one shard of {path}")
        sd.update(part)
    return sd, files


# ------------------------------------------------------------------------------------------------
# Detection


def open_source(path: Any, trust_pickle: bool = False) -> Source:
    """Open one official file, a directory of official files, or a HF checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if path.is_file():
        sd, hps = load_official_file(path, trust_pickle)
        return Source("official_file", path, {"unknown": sd}, {"unknown": hps}, files=[path])
    if (path / "config.json").is_file():
        try:
            hf_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path / 'config.json'} is not valid JSON: {e}") from None
        if not isinstance(hf_config, dict):
            raise ConvertError(f"{path / 'config.json'} is not a model config (expected a JSON object)")
        if hf_config.get("model_type") not in ("jukebox", "jukebox_vqvae", "jukebox_prior"):
            raise ConvertError(
                f"{path} is a Hugging Face checkpoint of model_type "
                f"{hf_config.get('model_type')!r}, not a Jukebox model"
            )
        sd, files = load_hf_state_dict(path)
        state_dicts = split_hf_state_dict(sd, hf_config)
        return Source("hf", path, state_dicts, {k: None for k in state_dicts}, hf_config, files)
    found = {name: path / file for name, file in OFFICIAL_FILES.items() if (path / file).is_file()}
    if not found:
        raise ConvertError(
            f"{path} holds neither official checkpoints ({', '.join(OFFICIAL_FILES.values())}) "
            "nor a Hugging Face checkpoint (config.json + weights)"
        )
    state_dicts, hps = {}, {}
    for name, file in found.items():
        state_dicts[name], hps[name] = load_official_file(file, trust_pickle)
    return Source("official_dir", path, state_dicts, hps, files=list(found.values()))


# ------------------------------------------------------------------------------------------------
# Memory


_MADV_DONTNEED = 4


def release_pages(files: list[Path]) -> None:
    """Drop the resident pages of our read-only memory maps of ``files`` (Linux).

    Reading a tensor from a memory-mapped file keeps its pages in this process's resident set
    until the kernel needs them; dropping them after each tensor is written keeps the converter's
    footprint at about one tensor. The pages are unmodified copies of the file, so they are simply
    read again if touched later. Elsewhere this does nothing.
    """
    if not files or not os.path.exists("/proc/self/maps"):
        return
    targets = {str(Path(f).resolve()) for f in files}
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(maxsplit=5)
        # Only our own maps of the checkpoint files, which nothing writes to.
        if len(parts) < 6 or parts[5] not in targets:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)
