"""`jukebox-flax info`: kind, parameter count, dtype and vocabulary of a model directory."""

import numpy as np

from jukebox_flax.checkpoint import save_model_dir
from jukebox_flax.config import preset
from jukebox_flax.info import describe, param_summary


def test_describe_a_prior_directory(tmp_path):
    config = preset("upsampler_level_1").replace(width=8, depth=1, heads=1, n_ctx=64, blocks=8)
    params = {
        "prior": {"x_emb": {"embedding": np.zeros((2048, 8), np.float32)}},
        "ln": {"scale": np.ones(8, np.float16)},
    }
    vocab = {
        "format": "jukebox-flax-vocab",
        "format_version": 1,
        "version": "v2",
        "artists": {"unknown": 0, "a": 1},
        "genres": {"unknown": 0},
        "lyrics": list("abc"),
    }
    out = save_model_dir(tmp_path / "p", params, config, vocab)
    assert param_summary(out) == (2, 2048 * 8 + 8, {"float32": 2048 * 8, "float16": 8})
    text = describe(out)
    assert "prior level 1 (upsampler" in text
    assert "16,392" in text and "float32" in text and "float16" in text
    assert "v2, 2 artists, 1 genres, 3 lyric characters" in text
