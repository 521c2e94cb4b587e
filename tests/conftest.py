"""Shared test setup: fp32 parity precision, fixture locations, optional ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

# Parity needs full fp32 matmuls (GPUs and TPUs otherwise use reduced precision).
jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPENAI = FIXTURES / "openai"
HF = FIXTURES / "hf"
SHARED = ROOT.parent / "shared"
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
