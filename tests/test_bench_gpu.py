"""scripts/bench_gpu.py keeps working while no GPU is lent: its --cpu-smoke mode on tiny presets.

The fast test runs one group (the upsampler) end to end through ``main`` and checks that the
timed token path is the library's ``sample_window`` (same key, weights, prime: same tokens), so the
bench cannot silently time something else; the slow one runs every group of the table.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check_ours(row: dict) -> None:
    for name in ("compile_s", "ms_start", "ms_end", "tokens_per_s", "gb_per_s", "pct_copy_bw", "plan_gib"):
        assert row[name] is not None and math.isfinite(row[name]) and row[name] > 0, (name, row)
    assert row["peak_gib"] is None  # CPU: no peak statistic, printed n/a


@pytest.mark.slow
def test_smoke_upsampler_rows_and_tokens_are_the_librarys(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    bench.main(["--cpu-smoke", "--models", "5b_lyrics level 1", "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["side"], r["model"], r["batch"]) for r in rows] == [
        ("ours", "5b_lyrics level 1", 1),
        ("ours", "5b_lyrics level 1", 16),
    ]
    for r in rows:
        _check_ours(r)
        assert f"| ours | 5b_lyrics level 1 | float16 | {r['batch']} |" in printed
    assert data["meta"]["copy_gb_per_s"] > 0
    assert printed.strip().splitlines()[-1].startswith("ours (float16) tokens/s over theirs")

    # the bench's timed path = sample_window on the same weights, key and prime
    from jukebox_flax.sampling.sampler import sample_window

    group = next(g for g in bench.GROUPS if g.model == "5b_lyrics level 1")
    config = bench.group_config(group, smoke=True)
    ours = bench.Ours(config, group.precision)
    ours.compile(1)
    key = jax.random.key(17)
    half, warm, n = config.n_ctx // 2, 2, 4
    _, tokens = ours.run(1, key, half, warm, n)
    prime = bench.prime_codes(config, 1, half)
    want, _ = sample_window(
        ours.prior,
        key,
        warm + n,
        y=bench.labels(config, 1),
        upper=bench.upper_codes(config, 1),
        prime=prime,
        chunk_size=ours.chunk,
    )
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(tokens[:, :half], prime)
    assert np.array_equal(np.asarray(rows[0]["tokens"]), tokens)  # what main timed for batch 1


def test_step_bytes_counts_the_params_a_step_reads(bench):
    import jax.numpy as jnp

    group = next(g for g in bench.GROUPS if g.model == "5b_lyrics level 1")
    config = bench.group_config(group, smoke=True)
    params = jax.eval_shape(lambda: bench.random_params(config, jnp.float16, True))
    one, two = bench.step_bytes(config, params, 1, jnp.float16), bench.step_bytes(config, params, 2, jnp.float16)
    kv = two - one  # per row: 3 layers (block 8, transpose 8 rows, prev ring 16 entries) x k, v x 16 wide x 2 B
    assert kv == 2 * (8 + 8 + 16) * 16 * 2
    model = {k: v for k, v in params["prior"].items() if k != "pos_emb"}
    assert one - kv == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model))
    kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(p[-1])]
    assert {x.dtype for x in kernels} == {jnp.dtype(jnp.float16), jnp.dtype(jnp.float32)}  # released layout


@pytest.mark.slow
def test_smoke_every_row(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    bench.main(["--cpu-smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    want = [(g.side, g.model, g.precision) for g in bench.GROUPS for _ in g.batches]
    assert [(r["side"], r["model"], r["precision"]) for r in rows] == want
    for r in rows:
        if r["side"] == "ours":
            _check_ours(r)
        else:  # the PyTorch sides run where they import, else say why
            assert r["ms_start"] is not None or r["note"].startswith("skipped:"), r
        assert f"| {r['side']} | {r['model']} | {r['precision']} | {r['batch']} |" in printed
    assert any(str(r["batch"]).endswith("(max)") for r in rows)
