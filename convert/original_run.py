"""Reading a sampling run of the original ``sample.py``: its ``level_L/data.pth.tar``.

The original saves ``dict(zs=zs, labels=labels, sampling_kwargs=sampling_kwargs, x=x)`` after every
level: ``zs`` one int64 tensor [B, T_l] per level (level 0 first, empty where not sampled yet),
``labels`` one dict per level with ``y`` [B, Y] and ``info`` (per row: artist, genre, lyrics,
full_tokens), ``sampling_kwargs`` one dict per level. The file is a pickle: it is read with the
converter's weights-only unpickler and allow-list, so nothing in it executes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jukebox_flax.errors import ConvertError, SamplingError

from .sources import _torch_load, tensor_to_numpy

__all__ = ["load_original_run"]


def _plain(value: Any) -> Any:
    """Tensors become numpy arrays, containers plain lists / dicts, numpy scalars Python numbers."""
    import torch

    if isinstance(value, torch.Tensor):
        return tensor_to_numpy(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_original_run(path: Path | str) -> dict[str, Any]:
    """``{"zs": [int64 [B, T_l] per level], "labels": [{"y": [B, Y], "info": [dict per row]}],
    "sampling_kwargs": [dict per level]}`` of an original ``data.pth.tar`` (``x`` is dropped: it is
    the decoded audio, rebuilt from the codes). Anything else is a ``SamplingError``."""
    path = Path(path)
    not_one = f"{path} is not a data.pth.tar of the original sample.py"
    try:
        data = _torch_load(path, trust_pickle=False)
    except ConvertError as e:
        raise SamplingError(f"{not_one} ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("zs"), (list, tuple)) or "labels" not in data:
        what = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise SamplingError(f"{not_one} (expected a dict with 'zs' and 'labels', found {what})")
    zs = _plain(list(data["zs"]))
    if not zs or any(not isinstance(z, np.ndarray) or z.ndim != 2 for z in zs):
        raise SamplingError(f"{not_one}: 'zs' must be a list of [batch, tokens] tensors, one per level")
    if any(not np.issubdtype(z.dtype, np.integer) for z in zs):
        raise SamplingError(f"{not_one}: 'zs' holds {sorted({str(z.dtype) for z in zs})} tensors, not integer codes")
    labels = _plain(data["labels"])
    if not isinstance(labels, list) or len(labels) != len(zs):
        raise SamplingError(f"{not_one}: 'labels' must be a list with one dict per level ({len(zs)})")
    for level, label in enumerate(labels):
        if not isinstance(label, dict) or "y" not in label or not isinstance(label.get("info"), list):
            raise SamplingError(f"{not_one}: labels[{level}] must be a dict with 'y' and 'info'")
        y = label["y"]
        if not isinstance(y, np.ndarray) or y.ndim != 2 or y.shape[0] != zs[0].shape[0]:
            raise SamplingError(f"{not_one}: labels[{level}]['y'] must be a [batch, Y] tensor")
        if len(label["info"]) != y.shape[0] or not all(isinstance(i, dict) for i in label["info"]):
            raise SamplingError(f"{not_one}: labels[{level}]['info'] must hold one dict per row")
    kwargs = _plain(data.get("sampling_kwargs") or [])
    return {"zs": [np.ascontiguousarray(z, np.int64) for z in zs], "labels": labels, "sampling_kwargs": kwargs}
