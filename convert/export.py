"""A jukebox-flax model directory -> official-format PyTorch checkpoints (for weights trained in JAX).

    export(model_dir, out)

A component directory becomes one ``*.pth.tar`` holding ``{'hps': ..., 'model': state_dict}``, as
the original ``save_checkpoint`` writes it (the ``hps`` use the original names, so the file
converts back without ``--hps``). A whole-model directory becomes a directory of
``vqvae.pth.tar`` and ``prior_level_{0,1,2}.pth.tar``. Tensors keep the stored dtype, so
official -> jukebox-flax -> official is bit-exact; the tied ``prior.x_out.weight`` shares the
token embedding's storage, as in the released files.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jukebox_flax.atomic import atomic_write
from jukebox_flax.checkpoint import load_config, load_params
from jukebox_flax.config import JukeboxConfig, VQVAEConfig
from jukebox_flax.errors import ConvertError

from .hps import hps_from_config
from .prior_keys import prior_state_dict_from_params
from .vqvae_keys import vqvae_state_dict_from_params

__all__ = ["export", "hps_from_config", "state_dict_from_params"]  # hps_from_config: from .hps


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
    _save_atomic({"hps": hps_from_config(config, vqvae), "model": _to_torch(sd)}, out)


def export(model_dir: Any, out: Any, overwrite: bool = True, mappings=None) -> Path:
    """Write official-format checkpoint(s) from a model directory. Returns ``out``."""
    model_dir, out = Path(model_dir), Path(out)
    config = load_config(model_dir)
    if not isinstance(config, JukeboxConfig):
        _export_component(model_dir, out, config, None, mappings)
        return out
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{model_dir} is a whole model: OUT must be a directory, and {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    _export_component(model_dir / "vqvae", out / "vqvae.pth.tar", config.vqvae, None, mappings)
    for prior in config.priors:
        name = f"prior_level_{prior.level}"
        _export_component(model_dir / name, out / f"{name}.pth.tar", prior, config.vqvae, mappings)
    return out
