"""Lyric alignment (``jukebox_flax.alignment``) against the original ``get_alignment``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import load_npz
from sampling_fixtures import fixture_prior

from jukebox_flax.alignment import alignment_settings, get_alignment, load_alignment, save_alignment
from jukebox_flax.errors import SamplingError
from jukebox_flax.sampling.song import LevelLabels

TRACE = load_npz("openai/alignment_trace")
CASES = {  # trace name -> fixture prior
    "pipeline_trace": "prior_top1b",
    "pipeline_trace_short": "prior_top1b",
    "pipeline_trace_codes_top5b_lyrics": "prior_top5b_lyrics",
}
_PRIORS: dict = {}


def _prior(name: str):
    if name not in _PRIORS:
        _PRIORS[name] = fixture_prior(name)[0]
    return _PRIORS[name]


def _case(trace: str):
    t = {k[len(trace) + 1 :]: v for k, v in TRACE.items() if k.startswith(trace + "/")}
    batch = t["zs_top"].shape[0]
    labels = LevelLabels(y=t["labels_y"], full_tokens=[t[f"full_tokens/{i}"].tolist() for i in range(batch)])
    return t, labels


@pytest.mark.slow  # compiles two 20- and 48-layer priors
@pytest.mark.parametrize("trace", list(CASES))
def test_alignment_matches_original(trace):
    t, labels = _case(trace)
    prior = _prior(CASES[trace])
    layer, head = int(t["alignment_layer"]), int(t["alignment_head"])
    out = get_alignment(prior, t["zs_top"], labels, t["hop_fraction"], layer=layer, head=head)
    batch, total = t["zs_top"].shape
    assert len(out) == batch
    for i, a in enumerate(out):
        want = t[f"alignment/{i}"]
        assert a.dtype == np.float32 and a.shape == want.shape == (total, len(labels.full_tokens[i]))
        err = float(np.abs(a - want).max())
        assert err < 1e-5, (trace, i, err)
        assert want.max() > 0.01  # the case carries real attention mass
    # rows split over calls give the same result
    split = get_alignment(prior, t["zs_top"], labels, float(t["hop_fraction"][2]), layer, head, max_batch=1)
    for a, b in zip(out, split):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_alignment_defaults_and_errors():
    prior = _prior("prior_top1b")
    # the fixture's hps are the released ones (63 / 0), which do not fit the tiny model
    with pytest.raises(SamplingError, match="layer 63 does not attend to the lyrics; lyric layers: \\[15, 31\\]"):
        alignment_settings(prior.config)
    # a config that names none: its last lyric layer, head 0
    unnamed = dataclasses.replace(prior.config, alignment_layer=None, alignment_head=None)
    assert alignment_settings(unnamed) == (31, 0)
    assert alignment_settings(prior.config, 15, 1) == (15, 1)
    with pytest.raises(SamplingError, match="does not attend to the lyrics"):
        alignment_settings(prior.config, 14, 0)
    with pytest.raises(SamplingError, match="head must be"):
        alignment_settings(prior.config, 31, 2)
    with pytest.raises(SamplingError, match="not conditioned on lyrics"):
        alignment_settings(fixture_prior("prior_top5b")[0].config)


def test_combine_keeps_the_originals_quirks(monkeypatch):
    """A moving lyric window and short lyrics on a fake prior: the reversed writes (earliest window
    wins on its columns), the dropped padding column and the padded short case."""
    import jukebox_flax.alignment as alignment

    t, labels = _case("pipeline_trace")
    prior = _prior("prior_top1b")
    rng = np.random.default_rng(0)
    calls = []

    def fake(module, params, tokens, y, layer, head):
        w = rng.random((tokens.shape[0], tokens.shape[1], prior.config.n_tokens), dtype=np.float32)
        calls.append((y.copy(), w))
        return w

    monkeypatch.setattr(alignment, "_window_weights", fake)
    # the shortest song the model takes, with long lyrics: the lyric window moves from window to window
    y = t["labels_y"].copy()
    y[:, 0] = int(np.ceil(prior.config.min_duration * prior.config.sr))
    long = [1 + i % 40 for i in range(3000)]
    short = [5, 6, 7, 8, 9]  # fewer than n_tokens: left-padded slots of index -1
    full = [long, short]
    out = alignment.get_alignment(prior, t["zs_top"], LevelLabels(y=y, full_tokens=full), 0.125, 31, 1)
    assert len(calls) == 5 and out[1].shape == (96, 5)

    n_ctx, n_tok = prior.config.n_ctx, prior.config.n_tokens
    for item, tokens in enumerate(full):  # the original's combine, written out
        ref = np.zeros((96, len(tokens) + 1))
        for k, start in reversed(list(enumerate([0, 8, 16, 24, 32]))):
            wy, w = calls[k]
            n = len(tokens)
            if n < n_tok:
                idx = [-1] * (n_tok - n) + list(range(n))
            else:
                mid = int(
                    np.float32(n) * (np.float32(wy[item, 1]) + np.float32(wy[item, 2]) / 2) / np.float32(wy[item, 0])
                )
                mid = min(max(mid, n_tok // 2), n - n_tok // 2)
                idx = list(range(mid - n_tok // 2, mid + n_tok // 2))
            ref[start : start + n_ctx, idx] = w[item]
        np.testing.assert_array_equal(out[item], ref[:, :-1].astype(np.float32))
    # row 10 is in windows 0 (lyrics 7..22) and 8 (lyrics 11..26): window 0 wins on its columns,
    # window 8 keeps the columns only it has
    w0, w8 = calls[0][1][0], calls[1][1][0]
    np.testing.assert_array_equal(out[0][10, 7:23], w0[10])
    np.testing.assert_array_equal(out[0][10, 23:27], w8[2, 12:16])
    assert not out[0][10, 27:].any() and not out[0][10, :7].any()
    calls.clear()
    cut = alignment.get_alignment(prior, t["zs_top"][:, :40], LevelLabels(y=y, full_tokens=full), 0.125, 31, 1)
    assert len(calls) == 1 and cut[0].shape == (40, len(full[0]))
    np.testing.assert_array_equal(cut[1], calls[0][1][1][:40, n_tok - 5 :])


def test_save_and_load_alignment(tmp_path):
    arrays = [np.arange(6, dtype=np.float64).reshape(3, 2), np.zeros((3, 0))]
    path = save_alignment(tmp_path, arrays)
    assert path == tmp_path / "alignment.npz"
    back = load_alignment(tmp_path)
    assert back is not None and [a.dtype for a in back] == [np.float32] * 2
    np.testing.assert_array_equal(back[0], arrays[0])
    assert back[1].shape == (3, 0)
    assert load_alignment(tmp_path / "nothing") is None


def test_align_command_errors(tmp_path, capsys):
    from jukebox_flax.cli import main
    from jukebox_flax.sampling.command import default_model

    assert main(["align", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a run of the bundled demo model, whose top prior has no lyrics
    record = dict(model=str(default_model()), artist="Ben High", genre="chiptune", lyrics="", seconds=0.75, batch=1)
    (tmp_path / "run.json").write_text(__import__("json").dumps(record))
    (tmp_path / "codes").mkdir()
    for level, n in ((0, 4096), (1, 1024), (2, 256)):
        np.save(tmp_path / "codes" / f"level_{level}.npy", np.zeros((1, n), np.int32))
    assert main(["align", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not conditioned on lyrics" in err, err
