"""Shared test setup: fp32 parity precision, fixture locations, optional ../shared."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

# The tests run tiny models, so their time is mostly XLA compiling, and most of that is LLVM's
# optimisation passes: level 0 skips them (floating-point semantics are the same at every level).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Parity needs full fp32 matmuls (GPUs and TPUs otherwise use reduced precision).
jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPENAI = FIXTURES / "openai"
HF = FIXTURES / "hf"
SHARED = Path(os.environ.get("JUKEBOX_SHARED", ROOT.parent / "shared"))  # the shared reference folder
IDS_DIR = SHARED / "jukebox_ids"


def load_npz(name: str) -> dict[str, np.ndarray]:
    """A fixture npz (e.g. 'openai/prior_up0') as a plain dict."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def state_dict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The `sd/<key>` entries of a fixture, keyed by their original state-dict key."""
    return {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}


def hps(name: str) -> dict:
    return json.loads((OPENAI / "hps_index.json").read_text())[name]


@pytest.fixture(scope="session")
def ids_dir() -> Path:
    """The released artist/genre id lists; tests that need them skip when ../shared is absent."""
    if not IDS_DIR.is_dir():
        pytest.skip("../shared/jukebox_ids not available")
    return IDS_DIR


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """The synthetic dataset (one 1 s song per artist/genre pair), written once; tests only read it."""
    out = tmp_path_factory.mktemp("synthetic")
    load_script("make_synthetic_dataset").make_dataset(out, songs_per_pair=1, seconds=1.0, seed=0)
    return out
