"""A jukebox-flax model directory -> official-format PyTorch checkpoints (for weights trained in JAX).

    export(model_dir, out)

A component directory becomes one ``*.pth.tar`` holding ``{'hps': ..., 'model': state_dict}``, as
the original ``save_checkpoint`` writes it (the ``hps`` use the original names, so the file
converts back without ``--hps``). A whole-model directory becomes a directory of
``vqvae.pth.tar`` and ``prior_level_{0,1,2}.pth.tar``. Tensors keep the stored dtype, so
official -> jukebox-flax -> official is bit-exact; the tied ``prior.x_out.weight`` shares the
token embedding's storage, as in the released files.

Every file carries an ``exported_by`` entry, which is how ``overwrite=True`` recognises what it may
replace: a file or folder of such exports, never another file (the downloaded originals, say), the
model directory itself or a folder that holds it. A whole model is written into a temporary folder
renamed into place at the end, so a failed export leaves nothing.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jukebox_flax import __version__
from jukebox_flax.atomic import atomic_dir, atomic_write
from jukebox_flax.checkpoint import load_config, load_params
from jukebox_flax.config import JukeboxConfig, VQVAEConfig
from jukebox_flax.errors import ConvertError

from .hps import hps_from_config
from .prior_keys import prior_state_dict_from_params
from .vqvae_keys import vqvae_state_dict_from_params

__all__ = ["export", "hps_from_config", "state_dict_from_params", "is_export"]  # hps_from_config: from .hps

EXPORT_MARK = "exported_by"
EXPORT_NAMES = ("vqvae.pth.tar", "prior_level_0.pth.tar", "prior_level_1.pth.tar", "prior_level_2.pth.tar")


def state_dict_from_params(params: Any, config: Any) -> dict[str, np.ndarray]:
    """Original keys -> numpy arrays (torch layouts) through the module owners' inverse mappings."""
    if isinstance(config, VQVAEConfig):
        return vqvae_state_dict_from_params(params, config)
    return prior_state_dict_from_params(params, config)


def _to_torch(sd: dict[str, Any]) -> OrderedDict[str, Any]:
    import torch

    out: OrderedDict = OrderedDict()
    made: dict[int, Any] = {}  # one tensor per array object: tied keys share a storage, as in torch
    for key, value in sd.items():
        if id(value) not in made:
            array = np.array(value, order="C")  # a writable copy: torch wants writable memory
            if array.dtype.name == "bfloat16":
                tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            else:
                tensor = torch.from_numpy(array)
            made[id(value)] = tensor
        out[key] = made[id(value)]
    return out


def _save_atomic(obj: Any, out: Path) -> None:
    import torch

    with atomic_write(out) as f:
        torch.save(obj, f)


def _export_component(model_dir: Path, out: Path, config: Any, vqvae: VQVAEConfig | None, mappings=None) -> None:
    params = jax.tree_util.tree_map(np.asarray, load_params(model_dir))
    sd = (mappings or state_dict_from_params)(params, config)
    mark = f"jukebox-flax {__version__}"
    _save_atomic({"hps": hps_from_config(config, vqvae), "model": _to_torch(sd), EXPORT_MARK: mark}, out)


def is_export(path: Path) -> bool:
    """Whether ``path`` is a ``*.pth.tar`` written by :func:`export` (its pickle names ``exported_by``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > 64 * 2**20:
                return False
            return EXPORT_MARK.encode() in zf.read(pickles[0])
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_target(model_dir: Path, out: Path, whole: bool, overwrite: bool) -> None:
    real, model = out.resolve(), model_dir.resolve()
    if _inside(model, real) or _inside(real, model):
        raise ConvertError(f"refusing to write {out}: OUT must lie outside the model directory {model_dir}")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ConvertError(f"{out} already exists (pass --overwrite to replace it)")
    if out.is_symlink():
        raise ConvertError(f"refusing to replace {out}: it is a symlink")
    if not whole:
        if out.is_dir() or not is_export(out):
            raise ConvertError(f"refusing to replace {out}: --overwrite replaces only a file jukebox-flax exported")
        return
    if not out.is_dir():
        raise ConvertError(f"{model_dir} is a whole model: OUT must be a directory, and {out} is a file")
    if _inside(Path.cwd().resolve(), real):
        raise ConvertError(f"refusing to replace {out}: it is the current directory or holds it")
    entries = list(out.iterdir())
    if not all(p.name in EXPORT_NAMES and p.is_file() and not p.is_symlink() and is_export(p) for p in entries):
        raise ConvertError(
            f"refusing to replace {out}: --overwrite replaces only a folder of files jukebox-flax exported"
        )


def export(model_dir: Any, out: Any, overwrite: bool = False, mappings=None) -> Path:
    """Write official-format checkpoint(s) from a model directory. Returns ``out``.

    A component becomes the file ``out``, a whole model the folder ``out``. An existing ``out`` is
    an error, or with ``overwrite`` replaced if it is an earlier export (see the module docstring).
    """
    model_dir, out = Path(model_dir), Path(out)
    config = load_config(model_dir)
    whole = isinstance(config, JukeboxConfig)
    _check_target(model_dir, out, whole, overwrite)
    if not whole:
        _export_component(model_dir, out, config, None, mappings)
        return out
    with atomic_dir(out) as tmp:
        _export_component(model_dir / "vqvae", tmp / "vqvae.pth.tar", config.vqvae, None, mappings)
        for prior in config.priors:
            name = f"prior_level_{prior.level}"
            _export_component(model_dir / name, tmp / f"{name}.pth.tar", prior, config.vqvae, mappings)
    return out
