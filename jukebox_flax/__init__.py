"""jukebox-flax: OpenAI Jukebox in JAX/Flax.

    import jukebox_flax as jf
    vq = jf.load_vqvae(DIR); prior = jf.load_prior(DIR); labeller = jf.Labeller.from_ids_dir(...)

Public names are imported lazily so ``import jukebox_flax`` stays fast and a broken optional part
cannot break the rest.
"""

from importlib import import_module
from typing import Any

from . import errors as _errors

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    **{name: ".errors" for name in _errors.__all__},  # every error class, one list (errors.py)
    "VQVAEConfig": ".config",
    "PriorConfig": ".config",
    "LyricEncoderConfig": ".config",
    "JukeboxConfig": ".config",
    "preset": ".config",
    "PRESETS": ".config",
    "save_model_dir": ".checkpoint",
    "load_config": ".checkpoint",
    "load_params": ".checkpoint",
    "Labeller": ".labels",
    "load_audio": ".audio",
    "save_wav": ".audio",
    "load_vqvae": ".vqvae.api",
    "VQVAE": ".vqvae.api",
    "load_prior": ".prior.api",
    "Prior": ".prior.api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jukebox_flax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
