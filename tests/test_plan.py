"""The per-level memory plan (`jukebox-flax plan`): what the original is known to fit, the JSON
schema, sizes, and the free-memory batch pick."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from jukebox_flax.cli import main
from jukebox_flax.config import preset
from jukebox_flax.errors import ConfigError
from jukebox_flax.memory import GiB, format_plan, memory_plan, parse_size, pick_batch_chunk, plan_levels
from jukebox_flax.precision import resolve_precision

FP16 = resolve_precision("float16")  # the released models' sampling mode


@pytest.mark.parametrize("model", ["5b", "5b_lyrics", pytest.param("1b_lyrics", marks=pytest.mark.slow)])
def test_what_the_original_fits_on_16_gb(model):
    """The original samples 3 rows of the 5B top priors in fp16 on a 16 GB V100, and 16 rows of
    1b_lyrics and of each upsampler (its sample.py max_batch_size)."""
    plans = plan_levels(preset(model), 60, None, *FP16, device_memory=16 * GiB)
    by_level = {p.level: p for p in plans}
    assert [p.level for p in plans] == [2, 1, 0]
    top = by_level[2]
    assert top.rows_per_call >= (3 if model.startswith("5b") else 16)
    assert top.rows_per_call < (6 if model.startswith("5b") else 40)  # and not wildly more
    assert top.chunk_size == (16 if model.startswith("5b") else 32)
    for level in (0, 1):
        assert by_level[level].rows_per_call >= 16
    for p in plans:
        assert p.fits and p.peak_bytes <= 16 * GiB
        assert p.peak_bytes == p.params_bytes + p.rows_per_call * (p.kv_bytes_per_row + p.activation_bytes_per_row)


def test_more_memory_more_rows_and_a_batch_caps_them():
    c = preset("5b_lyrics")
    rows = [plan_levels(c, 20, None, *FP16, device_memory=g * GiB)[0].rows_per_call for g in (16, 24, 40, 80)]
    assert rows == sorted(rows) and rows[0] < rows[-1]
    capped = plan_levels(c, 20, 2, *FP16, device_memory=80 * GiB)[0]
    assert capped.rows_per_call == 2
    too_small = plan_levels(c, 20, 3, *FP16, device_memory=8 * GiB)[0]
    assert not too_small.fits and too_small.rows_per_call == 1
    assert too_small.params_bytes > 8 * GiB * 0.9


def test_windows_follow_the_seconds_and_hop_fractions():
    c = preset("5b_lyrics")
    short, long = plan_levels(c, 10, 1, *FP16), plan_levels(c, 60, 1, *FP16)
    # 60 s at the top level: 20671 tokens, a first window of 8192 then hops of 8192/8
    assert long[0].windows == 1 + -(-(60 * 44100 // 128 - 8192) // 1024) == 14
    assert short[0].windows == 1 and all(a.windows <= b.windows for a, b in zip(short, long))


def test_precisions_change_the_bytes():
    c = preset("prior_1b_lyrics")
    f32 = memory_plan(c, jnp.float32)
    half = memory_plan(c, *FP16)
    assert f32.cache_per_sample == 2 * half.cache_per_sample
    assert half.params < f32.params < 2 * half.params + 1  # only the transformer kernels halve


def test_sizes():
    assert parse_size("16GiB") == 16 * 2**30 and parse_size("16gb") == 16 * 10**9
    assert parse_size("512MiB") == 2**29 and parse_size("8e9") == 8 * 10**9 and parse_size(1024) == 1024
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_pick_uses_the_free_memory_after_the_params():
    """Without a total, the batch comes from what is free with the params resident: the params
    are not subtracted again, so the same free memory fits the same rows for any params size."""
    c = preset("prior_5b_lyrics")
    plan = memory_plan(c, *FP16, chunk_size=16)
    free = 4.5 * plan.per_sample
    rows = pick_batch_chunk(c, 16, *FP16, chunk_size=16, free_bytes=free)
    assert rows == 4  # 4.5 rows free, less the 10 % headroom of the (unknown: free) limit
    assert pick_batch_chunk(c, 2, *FP16, chunk_size=16, free_bytes=free) == 2
    total = pick_batch_chunk(c, 16, *FP16, chunk_size=16, device_bytes=plan.params + free)
    assert total < rows  # the old reading of the total memory leaves less


def test_cli_plan_json_and_table(capsys):
    assert main(["plan", "--preset", "1b_lyrics", "--seconds", "30", "--precision", "float16",
                 "--device-memory", "24GiB", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    keys = {
        "level",
        "params_bytes",
        "kv_bytes_per_row",
        "activation_bytes_per_row",
        "rows_per_call",
        "peak_bytes",
        "fits",
    }
    assert [lv["level"] for lv in out["levels"]] == [2, 1, 0]
    for lv in out["levels"]:
        assert keys <= set(lv) and lv["fits"] is True and lv["rows_per_call"] >= 16
    assert main(["plan", "--preset", "1b_lyrics", "--seconds", "30", "--batch", "4"]) == 0
    table = capsys.readouterr().out
    assert "level" in table and len(table.strip().splitlines()) == 2 + 3 + 1
    assert main(["plan", "--preset", "nope", "--seconds", "3"]) == 2
    assert "nope" in capsys.readouterr().err


def test_format_plan_one_line_per_level():
    plans = plan_levels(preset("5b"), 20, 3, *FP16, device_memory=16 * GiB)
    text = format_plan(plans, 16 * GiB, 3)
    assert "16.0 GiB" in text and text.count("yes") == 3


@pytest.mark.slow  # compiles the window programs of three priors
def test_plan_of_a_model_directory_and_xla_count(capsys):
    """The bundled demo model (config only) and XLA's compiled count of its windows on CPU:
    the shape-based peak bounds it from above, within 4x."""
    from jukebox_flax.checkpoint import load_config
    from jukebox_flax.sampling.command import default_model

    config = load_config(default_model())
    plans = plan_levels(config, 2, 2, jnp.float32, False, xla=True)
    for p in plans:
        assert p.xla_bytes is not None and p.peak_bytes == p.xla_bytes
        shaped = p.params_bytes + p.rows_per_call * (p.kv_bytes_per_row + p.activation_bytes_per_row)
        assert p.xla_bytes <= shaped <= 4 * p.xla_bytes
