"""Released PyTorch weights -> a jukebox-flax model directory.

    convert(src, dst, hps=None, preset=None, dtype="float32", ids=None, vocab=None)

1. ``sources.open_source`` memory-maps the official file(s) or the HF checkpoint and renames HF
   keys to the original ones, so everything below speaks the original key names.
2. Each component's config comes from the file's own ``hps`` entry when present, else from
   ``--hps`` / ``--preset``, else from the HF ``config.json``. When a file has hps and the user
   also passes ``--hps`` / ``--preset``, the two must agree in every field that shapes the model
   (training-only fields aside): a disagreement is an error naming the fields, never a silent
   choice. A prior's codebook size is read from its token embedding (the hps of a prior may carry
   a stale ``l_bins``).
3. The module owners' key mappings (``vqvae_keys`` / ``prior_keys``) turn the state dict into our
   params tree; they check every key and shape against the config. Their leaves are views of the
   memory-mapped file, so nothing is read yet; the per-layer tensors of a scanned layer group
   become one ``StackedRows`` leaf, stacked only when it is written.
4. Every leaf becomes a ``LazyArray``: it is cast to ``dtype`` only when Orbax writes it, and the
   file's pages are released after each tensor, so memory stays at about one tensor.
5. The directory is written atomically (a temporary sibling, then renamed).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jukebox_flax import config as cfg
from jukebox_flax.checkpoint import LazyArray, check_replaceable, save_model_dir, save_whole_model_dir
from jukebox_flax.config import JukeboxConfig, PriorConfig, VQVAEConfig, training_only_fields
from jukebox_flax.errors import ConfigError, ConvertError, JukeboxError
from jukebox_flax.labels import Labeller

from .hf_config import jukebox_config_from_hf
from .hps import prior_config_from_hps, vqvae_config_from_hps
from .prior_keys import prior_params_from_state_dict
from .sources import COMPONENTS, Source, open_source, release_pages
from .vqvae_keys import vqvae_params_from_state_dict

__all__ = ["convert", "Mappings", "DTYPES", "StackedRows", "component_kind", "configs_for", "params_for"]

DTYPES = ("float32", "bfloat16", "float16")

# kind -> function(state_dict, config) -> params; tests may inject stand-ins.
Mappings = Mapping[str, Callable[[Mapping[str, np.ndarray], Any], dict]]


def _vqvae_mapping(sd, config):
    return vqvae_params_from_state_dict(sd, config)


def _prior_mapping(sd, config):
    return prior_params_from_state_dict(sd, config, stack=StackedRows)


class StackedRows(LazyArray):
    """Per-layer tensors of a scanned layer group (views of the memory-mapped file), joined on a
    new axis 0 only when the leaf is written: the whole transformer is never in memory at once."""

    def __init__(self, rows: list):
        self.rows = [np.asarray(r) for r in rows]  # views: nothing is read yet
        shapes = sorted({r.shape for r in self.rows})
        if len(shapes) != 1:
            raise ValueError(f"the layers of a scanned group have different shapes {shapes}")
        dtype = np.result_type(*(r.dtype for r in self.rows))
        super().__init__((len(self.rows), *shapes[0]), dtype, lambda: self.load_as(self.dtype))

    def load_as(self, dtype: np.dtype) -> np.ndarray:
        """The stacked array in ``dtype``, cast row by row (no full-size intermediate)."""
        out = np.empty(self.shape, dtype)
        for i, row in enumerate(self.rows):
            out[i] = row
        return out


def default_mappings() -> dict[str, Callable]:
    return {"vqvae": _vqvae_mapping, "prior": _prior_mapping}


def np_dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise ConvertError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ------------------------------------------------------------------------------------------------
# What is in the file


def component_kind(sd: Mapping[str, Any], where: str) -> str:
    """'vqvae' or 'prior', from the state dict's keys."""
    if any(k.startswith(("encoders.", "decoders.", "bottleneck.")) for k in sd):
        return "vqvae"
    if any(k.startswith(("prior.", "prime_prior.", "y_emb.", "conditioner_blocks.")) for k in sd):
        return "prior"
    first = ", ".join(list(sd)[:3]) or "no tensors"
    raise ConvertError(f"{where} is not a Jukebox VQ-VAE or prior checkpoint (keys: {first}, ...)")


def _read_hps(hps: None | str | Path | Mapping) -> dict | None:
    if hps is None or isinstance(hps, Mapping):
        return dict(hps) if hps is not None else None
    try:
        data = json.loads(Path(hps).read_text())
    except FileNotFoundError:
        raise ConvertError(f"--hps file {hps} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"--hps file {hps} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConvertError(f"--hps file {hps} must hold a JSON object of hyperparameters")
    return data


def _config_from_hps(kind: str, hps: Mapping[str, Any], where: str, vqvae: VQVAEConfig | None = None):
    try:
        if kind == "vqvae":
            return vqvae_config_from_hps(hps)
        if vqvae is None:
            try:
                vqvae = vqvae_config_from_hps(hps)
            except (KeyError, TypeError, ValueError):
                vqvae = VQVAEConfig()
        return prior_config_from_hps(hps, vqvae)
    except KeyError as e:
        raise ConvertError(f"{where}: hyperparameter {e} is missing") from None
    except (ConfigError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: bad hyperparameters: {e}") from None


def _with_bins_from_weights(config: PriorConfig, sd: Mapping[str, np.ndarray]) -> PriorConfig:
    """The codebook size the prior was built with, read from its token embedding."""
    emb = sd.get("prior.x_emb.weight")
    if emb is None:
        return config
    bins = emb.shape[0] - (config.n_vocab if config.lyrics == "single" else 0)
    return config.replace(bins=bins) if bins != config.bins and bins > 0 else config


def _check_kind(component_config: Any, kind: str, where: str) -> None:
    want = VQVAEConfig if kind == "vqvae" else PriorConfig
    if not isinstance(component_config, want):
        got = "a VQ-VAE" if isinstance(component_config, VQVAEConfig) else "a prior"
        raise ConvertError(f"{where} is a {kind} checkpoint but the given config is {got}")


# A file's hps and the user's --hps / --preset may differ in the fields marked training-only and in
# a prior's ``bins`` (read from its weights).
_READ_FROM_WEIGHTS = frozenset({"bins"})


def _differing_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    """'name (a vs b)' for every field that shapes the model and differs between configs a and b."""
    if type(a) is not type(b):
        return [f"{prefix.rstrip('.') or 'kind'} ({type(a).__name__} vs {type(b).__name__})"]
    out = []
    ignored = training_only_fields(a) | _READ_FROM_WEIGHTS
    for f in dataclasses.fields(a):
        if f.name in ignored:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            out += _differing_fields(x, y, f"{prefix}{f.name}.")
        elif x != y:
            out.append(f"{prefix}{f.name} ({x!r} vs {y!r})")
    return out


def _agreed(file_config: Any, user_config: Any, where: str, given: str) -> Any:
    """The file's own config, after checking that the user's ``given`` one does not contradict it."""
    if file_config is None:
        return user_config
    if user_config is not None:
        differ = _differing_fields(file_config, user_config)
        if differ:
            shown = ", ".join(differ[:6]) + (f", ... ({len(differ)} fields)" if len(differ) > 6 else "")
            raise ConvertError(
                f"{where}: its own hps differ from {given} in {shown} (file vs given); "
                f"the file's hps are used, so drop {given.split()[0]}"
            )
    return file_config


def configs_for(
    source: Source, hps: Any = None, preset: str | None = None
) -> tuple[dict[str, Any], JukeboxConfig | None]:
    """({component name: config}, whole-model config or None) for everything in ``source``.

    Precedence: the file's own ``hps``, else ``hps`` / ``preset``, else the HF ``config.json``.
    """
    given = f"--hps {hps}" if isinstance(hps, (str, Path)) else "--hps" if hps is not None else f"--preset {preset}"
    hps = _read_hps(hps)
    chosen = None
    if preset is not None:
        try:
            chosen = cfg.preset(preset)
        except ConfigError as e:
            raise ConvertError(str(e)) from None

    if source.kind == "official_file":
        sd = source.state_dicts["unknown"]
        where = str(source.path)
        kind = component_kind(sd, where)
        if isinstance(chosen, JukeboxConfig):
            raise ConvertError(
                f"--preset {preset} is a whole model; {source.path} is one component "
                "(use vqvae, upsampler_level_0/1 or prior_*)"
            )
        if chosen is None and hps is not None:
            chosen = _config_from_hps(kind, hps, given)
        if chosen is not None:
            _check_kind(chosen, kind, where)
        file_hps = source.hps.get("unknown")
        if file_hps is None and chosen is None:
            raise ConvertError(f"{source.path} has no 'hps' entry: pass --hps FILE.json or --preset NAME")
        file_config = _config_from_hps(kind, file_hps, where) if file_hps is not None else None
        config = _agreed(file_config, chosen, where, given)
        if kind == "prior":
            config = _with_bins_from_weights(config, sd)
        name = "vqvae" if kind == "vqvae" else f"prior_level_{config.level}"
        source.state_dicts = {name: sd}
        return {name: config}, None

    if source.kind == "official_dir":
        missing = [c for c in COMPONENTS if c not in source.state_dicts]
        if missing:
            raise ConvertError(
                f"{source.path} lacks {', '.join(m + '.pth.tar' for m in missing)}: a directory "
                "is converted as a whole model; convert single files one at a time"
            )
        for name, sd in source.state_dicts.items():
            kind = component_kind(sd, str(source.path / f"{name}.pth.tar"))
            if kind != ("vqvae" if name == "vqvae" else "prior"):
                raise ConvertError(f"{source.path / (name + '.pth.tar')} holds a {kind}, not a {name}")
        if chosen is not None and not isinstance(chosen, JukeboxConfig):
            raise ConvertError(
                f"--preset {preset} is one component; {source.path} is a whole model (use 1b_lyrics, 5b or 5b_lyrics)"
            )
        if hps is not None and not all(isinstance(hps.get(n, {}), Mapping) for n in COMPONENTS):
            raise ConvertError(f"{given} must hold a JSON object {{component: hps}} for a directory")
        configs: dict[str, Any] = {}
        for name in COMPONENTS:
            where = str(source.path / f"{name}.pth.tar")
            kind = "vqvae" if name == "vqvae" else "prior"
            file_hps, user_hps = source.hps.get(name), (hps or {}).get(name)
            user: Any
            if chosen is not None:
                user = chosen.vqvae if kind == "vqvae" else chosen.priors[int(name[-1])]
            else:
                user = (
                    _config_from_hps(kind, user_hps, f"{given} ({name})", configs.get("vqvae"))
                    if user_hps is not None
                    else None
                )
            if file_hps is None and user is None:
                raise ConvertError(
                    f"{where} has no 'hps' entry: pass --preset, or --hps with a JSON object {{component: hps}}"
                )
            file_config = (
                _config_from_hps(kind, file_hps, where, configs.get("vqvae")) if file_hps is not None else None
            )
            configs[name] = _agreed(file_config, user, where, given)
            if kind == "prior" and configs[name].level != int(name[-1]):
                raise ConvertError(f"{where}: its hps say level {configs[name].level}")
    else:  # Hugging Face: no hps in the files; --hps / --preset come before config.json
        if chosen is not None and not isinstance(chosen, JukeboxConfig):
            raise ConvertError(f"--preset {preset} is one component; a Hugging Face checkpoint is a whole model")
        if chosen is None and hps is not None:
            configs = {}
            for name in COMPONENTS:
                if not isinstance(hps.get(name), Mapping):
                    raise ConvertError(f"{given} must hold a JSON object {{component: hps}} with an entry for {name}")
                kind = "vqvae" if name == "vqvae" else "prior"
                configs[name] = _config_from_hps(kind, hps[name], f"{given} ({name})", configs.get("vqvae"))
            try:
                chosen = JukeboxConfig(
                    vqvae=configs["vqvae"], priors=tuple(configs[f"prior_level_{l}"] for l in range(3))
                )
            except ConfigError as e:
                raise ConvertError(f"{given}: the components do not form one model: {e}") from None
        if chosen is None:
            try:
                chosen = jukebox_config_from_hf(source.hf_config or {})
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                raise ConvertError(f"{source.path / 'config.json'}: cannot read the model config ({e})") from None
        configs = {"vqvae": chosen.vqvae, **{f"prior_level_{p.level}": p for p in chosen.priors}}
        missing = [c for c in configs if c not in source.state_dicts]
        if missing:
            raise ConvertError(f"{source.path} has no weights for {', '.join(missing)}")

    for name in list(configs):
        if name != "vqvae":
            configs[name] = _with_bins_from_weights(configs[name], source.state_dicts[name])
    try:
        whole = JukeboxConfig(
            vqvae=configs["vqvae"],
            priors=tuple(configs[f"prior_level_{l}"] for l in range(3)),
            **({"hop_fraction": chosen.hop_fraction} if isinstance(chosen, JukeboxConfig) else {}),
        )
    except ConfigError as e:
        raise ConvertError(f"{source.path}: the components do not form one model: {e}") from None
    return configs, whole


# ------------------------------------------------------------------------------------------------
# Weights


def _check_tied(sd: Mapping[str, np.ndarray], config: PriorConfig, where: str) -> None:
    """A non-merged decoder reuses the token embedding as output head; the checkpoint stores it
    twice (torch keeps one storage). A copy that differs would be silently lost."""
    if config.merged_decoder or "prior.x_out.weight" not in sd or "prior.x_emb.weight" not in sd:
        return
    out, emb = sd["prior.x_out.weight"], sd["prior.x_emb.weight"]
    if out.shape != emb.shape or not (np.shares_memory(out, emb) or np.array_equal(out, emb)):
        raise ConvertError(
            f"{where}: prior.x_out.weight differs from prior.x_emb.weight, but this prior "
            "ties them (merged_decoder=False)"
        )


def params_for(
    name: str, sd: Mapping[str, np.ndarray], config: Any, where: str, mappings: Mappings | None = None
) -> dict:
    """Our params tree (views of ``sd``) for one component."""
    mappings = mappings or default_mappings()
    kind = "vqvae" if name == "vqvae" else "prior"
    if kind == "prior":
        _check_tied(sd, config, where)
    try:
        return mappings[kind](sd, config)
    except ConvertError:
        raise
    except JukeboxError as e:  # the mappings' own errors name the missing / unexpected / mis-shaped key
        raise ConvertError(f"{where}: {e}") from None


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def check_float_tensors(sd: Mapping[str, Any], where: str) -> None:
    """Every weight of a Jukebox model is floating point: an int / bool / complex tensor means a
    damaged or foreign file, and casting it would silently invent weights."""
    for key, value in sd.items():
        dtype = np.dtype(value.dtype)
        if not _is_float(dtype):
            raise ConvertError(f"{where}: tensor {key!r} is {dtype.name}, but Jukebox weights are floating point")


def _lazy(tree: Any, dtype: np.dtype, files: list[Path], allow_nonfinite: bool = False, name: str = "") -> Any:
    if isinstance(tree, Mapping):
        return {k: _lazy(v, dtype, files, allow_nonfinite, f"{name}/{k}" if name else str(k)) for k, v in tree.items()}
    leaf = tree
    target = dtype if _is_float(np.dtype(leaf.dtype)) else np.dtype(leaf.dtype)

    def load(leaf=leaf, target=target) -> np.ndarray:
        with np.errstate(over="ignore"):  # an overflowing cast is reported below, by name
            if isinstance(leaf, StackedRows):
                array = leaf.load_as(target)
            else:  # a mapping may return other LazyArrays itself
                array = leaf.load() if isinstance(leaf, LazyArray) else np.asarray(leaf)
                array = np.ascontiguousarray(array.astype(target, copy=False))
        if not allow_nonfinite and _is_float(array.dtype) and not np.isfinite(array).all():
            raise ConvertError(
                f"{name} holds NaN or infinite values in {array.dtype.name} (a damaged checkpoint, or values "
                f"beyond the range of --dtype); pass --allow-nonfinite to keep them"
            )
        return array

    return LazyArray(leaf.shape, target, load, release=lambda: release_pages(files))


# ------------------------------------------------------------------------------------------------
# Vocabulary


def _vocab_for(config: PriorConfig, ids: Any, vocab: Any) -> dict | None:
    if not config.labels or (ids is None and vocab is None):
        return None
    shape: dict[str, Any] = dict(
        n_tokens=config.n_tokens, max_bow_genre_size=config.max_bow_genre_size, sample_length=config.sample_length
    )
    if ids is not None:
        labeller = Labeller.from_ids_dir(ids, version=config.labeller_version, **shape)
    else:
        labeller = Labeller.from_vocab(vocab, version=config.labeller_version, **shape)
    return labeller.vocab_dict()


# ------------------------------------------------------------------------------------------------


def convert(
    src: Any,
    dst: Any,
    *,
    hps: Any = None,
    preset: str | None = None,
    dtype: str = "float32",
    ids: Any = None,
    vocab: Any = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    mappings: Mappings | None = None,
) -> Path:
    """Convert ``src`` (official file, directory of them, or HF checkpoint) into the model
    directory ``dst``. Returns ``dst``. Raises ConvertError (or another JukeboxError) naming the
    problem; ``dst`` is then left as it was.

    ``overwrite`` replaces only a model directory jukebox-flax wrote (never ``src`` or a folder
    holding it, nor the current directory). Weights that are not floating point are refused, and
    NaN / Inf weights too unless ``allow_nonfinite``."""
    target = np_dtype(dtype)
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise ConvertError(f"{dst} already exists (pass --overwrite to replace it)")
        try:
            check_replaceable(dst, protect=(src,))
        except JukeboxError as e:
            raise ConvertError(str(e)) from None
    if ids is not None and not Path(ids).is_dir():
        raise ConvertError(f"--ids {ids} is not a directory")
    source = open_source(src, trust_pickle)
    if source.kind == "hf" and vocab is None and ids is None and (source.path / "artists.json").is_file():
        vocab = source.path  # the HF tokenizer files next to the weights
    configs, whole = configs_for(source, hps, preset)

    components = {}
    for name, config in configs.items():
        where = f"{source.path} ({name})" if len(configs) > 1 else str(source.path)
        check_float_tensors(source.state_dicts[name], where)
        params = params_for(name, source.state_dicts[name], config, where, mappings)
        component_vocab = _vocab_for(config, ids, vocab) if name != "vqvae" else None
        lazy = _lazy(params, target, source.files, allow_nonfinite, f"{where}: {name}")
        components[name] = (lazy, config, component_vocab)

    if whole is None:
        ((name, (params, config, component_vocab)),) = components.items()
        return save_model_dir(dst, params, config, component_vocab, overwrite=overwrite)
    top_vocab = components[f"prior_level_{len(whole.priors) - 1}"][2]
    return save_whole_model_dir(dst, components, whole, top_vocab, overwrite=overwrite)
