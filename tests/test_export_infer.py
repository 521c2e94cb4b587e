"""Exported checkpoints load in the original ecosystem.

Without extra packages: the exported hps hold every key the original ``make_vqvae`` / ``make_prior``
read, with the values of the original's own hps for the same model (``fixtures/openai/hps_index.json``).
With jukebox-infer 0.1.2 (the original's make_vqvae / make_prior with a strict load_state_dict;
an optional test dependency): it builds the bundled demo model from the exported hps alone, and its
logits match ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jukebox_flax_convert.hps import hps_from_config, prior_config_from_hps, vqvae_config_from_hps

HPS_INDEX = Path(__file__).resolve().parent / "fixtures" / "openai" / "hps_index.json"

# `hps.<key>` that openai/jukebox make_models.py reads in make_vqvae / make_prior (eval mode).
VQVAE_READS = set(
    "width depth m_conv dilation_growth_rate dilation_cycle vqvae_reverse_decoder_dilation sample_length "
    "sample_length_in_seconds strides_t downs_t sr levels emb_width l_bins l_mu commit spectral multispectral "
    "hvqvae_multipliers use_bottleneck restore_vqvae train prior".split()
)
PRIOR_READS = set(
    "n_ctx prior_width prior_depth heads attn_order blocks spread attn_dropout resid_dropout emb_dropout zero_out "
    "res_scale pos_init init_scale m_attn m_mlp c_res c_attn c_mlp train cond_width cond_depth cond_m_conv "
    "cond_dilation_growth_rate cond_dilation_cycle cond_zero_out cond_res_scale cond_c_res y_bins t_bins sr "
    "min_duration max_duration max_bow_genre_size use_tokens single_enc_dec prime_loss_fraction n_tokens n_vocab "
    "level labels copy_input labels_v3 merged_decoder fp16_params restore_prior".split()
)
# Read only for a separate lyric encoder (use_tokens and not single_enc_dec).
PRIME_READS = {
    "prime_" + k
    for k in "width depth heads attn_order blocks spread attn_dropout resid_dropout emb_dropout zero_out res_scale "
    "pos_init init_scale m_attn m_mlp c_res c_attn c_mlp".split()
}
# Keys whose value does not shape the eval-mode model: paths, the train-only checkpointing flags,
# and the sample length the original derives from sample_length_in_seconds when it is 0.
NOT_SHAPING = {"restore_vqvae", "restore_prior", "sample_length", "c_res", "c_attn", "c_mlp"} | {
    "prime_c_res",
    "prime_c_attn",
    "prime_c_mlp",
}


def _same(a, b) -> bool:
    norm = lambda x: list(x) if isinstance(x, (tuple, list)) else x
    return norm(a) == norm(b)


def test_exported_hps_hold_every_key_the_original_reads_with_its_values():
    index = json.loads(HPS_INDEX.read_text())
    vq = vqvae_config_from_hps(index["vqvae_tiny"])
    checked = 0
    for name, original in index.items():
        if "level" not in original:  # a trace, not a model's hps
            continue
        if name.startswith("vqvae"):
            ours, reads = hps_from_config(vq), VQVAE_READS
        else:
            config = prior_config_from_hps(original, vq)
            ours, reads = hps_from_config(config, vq), set(PRIOR_READS)
            if config.lyrics == "separate":
                reads |= PRIME_READS
        assert reads <= set(ours), (name, sorted(reads - set(ours)))
        wrong = {k: (ours[k], original[k]) for k in reads - NOT_SHAPING if not _same(ours[k], original[k])}
        assert not wrong, (name, wrong)
        checked += 1
    assert checked == 6


def test_upsampler_hps_name_the_res_layout_export_writes():
    from jukebox_flax.config import preset

    for name in ("1b_lyrics", "5b", "5b_lyrics"):
        whole = preset(name)
        cond = [hps_from_config(p, whole.vqvae)["cond_c_res"] for p in whole.priors]
        assert cond == [1, 1, 0], name


def _infer():
    torch = pytest.importorskip("torch")
    try:
        from jukebox_infer.hparams import Hyperparams
        from jukebox_infer.make_models import make_prior, make_vqvae
    except Exception as e:  # an optional test dependency (pip install jukebox-infer==0.1.2 librosa)
        pytest.skip(f"jukebox-infer is not installed: {e}")
    return torch, Hyperparams, make_vqvae, make_prior


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _infer()
    from jukebox_flax.sampling.command import default_model
    from jukebox_flax_convert.export import export

    return export(default_model(), tmp_path_factory.mktemp("exported"))


def _hps(path, **extra):
    torch, Hyperparams, _, _ = _infer()
    hps = Hyperparams(torch.load(path, map_location="cpu", weights_only=True)["hps"])
    hps.update(extra)
    return hps


@pytest.mark.parametrize("level", [2, 1, 0])
def test_jukebox_infer_loads_the_export_and_agrees(exported, level, monkeypatch):
    torch, _, make_vqvae, make_prior = _infer()
    from jukebox_flax.prior.api import load_prior
    from jukebox_flax.sampling.command import default_model

    monkeypatch.setattr(torch.cuda, "LongTensor", torch.LongTensor)  # its label check asserts CUDA tensors
    vq_file = str(exported / "vqvae.pth.tar")
    vqvae = make_vqvae(_hps(vq_file, restore_vqvae=vq_file), device="cpu", auto_download=False)
    prior_file = str(exported / f"prior_level_{level}.pth.tar")
    theirs = make_prior(_hps(prior_file, restore_prior=prior_file), vqvae, device="cpu", auto_download=False)
    ours = load_prior(default_model(), level)
    c = ours.config
    rng = np.random.default_rng(level)
    z = rng.integers(0, c.bins, (2, c.n_ctx))
    y = np.zeros((2, c.y_length), np.int64)
    y[:, 0] = int(12.0 * c.sr)  # total length inside the demo's duration range
    y[:, 2] = c.sample_length
    y[:, 3] = [1, 2]
    y[:, 4] = [1, 3]
    upper = rng.integers(0, c.bins, (2, c.n_ctx // c.cond_downsample)) if c.is_upsampler else None
    want = np.asarray(
        ours.logits(z.astype(np.int32), y=y.astype(np.int32), upper=None if upper is None else upper.astype(np.int32))
    )
    with torch.no_grad():
        z_conds = [torch.from_numpy(upper)] if upper is not None else []
        _, metrics = theirs.z_forward(torch.from_numpy(z), z_conds, torch.from_numpy(y), get_preds=True)
    got = metrics["preds"].float().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
