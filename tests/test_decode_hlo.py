"""What a compiled decode step writes (scripts/decode_hlo.py), on a tiny prior of the 5b_lyrics kind.

A token step should write the new token's activations, one KV entry per layer and the logits:
nothing as large as a stacked KV cache (the cross-attention caches were copied at every step while
the step still checked whether to fill them) and nothing as large as a layer's weights (the
scanned layout copies them out of their stacks, which is why sampling unrolls the layers).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jukebox_flax.config import preset

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hlo():
    return _script("decode_hlo")


@pytest.fixture(scope="module")
def config():
    # 29 layers: two cross-attention layers that share a stacked cache (where the copies showed)
    config = _script("bench_gpu").tiny_config(preset("5b_lyrics").priors[2]).replace(depth=29)
    assert config.attention_layout.count("cross") == 2
    return config


def _cache_shapes(config, rows: int) -> set[str]:
    """The KV cache arrays of a float16 prior as HLO shapes ("f16[R,B,S,d]")."""
    from jukebox_flax.prior.prior import JukeboxPrior

    cache = jax.eval_shape(lambda: JukeboxPrior(config, dtype=np.float16).init_cache(rows))
    return {f"f16[{','.join(map(str, a.shape))}]" for a in jax.tree_util.tree_leaves(cache)}


def test_a_token_step_copies_no_cache_and_no_weights(hlo, config):
    rows = 2
    result = hlo.audit(config, rows, "float16", scan_layers=False, chunk=16)
    caches = _cache_shapes(config, rows)
    copies = [w for w in result["writes"] if w[2] in caches and w[0] >= hlo.shape_bytes(w[2]) * w[1]]
    assert not copies, copies[:3]  # in-place updates write only their entry
    assert any(w[2] in caches for w in result["writes"])  # the updates are seen
    # the stored (scanned) layout does copy the weights: the reason sampling unrolls
    scanned = hlo.audit(config, rows, "float16", scan_layers=True, chunk=16)
    assert scanned["written_per_step"] > max(0.5 * scanned["param_bytes"], 2 * result["written_per_step"])
