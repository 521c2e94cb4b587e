"""The weight converter: official files, directories of them and HF checkpoints -> model directories,
errors that name the problem, and export back to the official format (bit-exact)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import HF, hps, load_npz, state_dict  # noqa: E402

from jukebox_flax.checkpoint import load_config, load_params  # noqa: E402
from jukebox_flax.config import JukeboxConfig, PriorConfig, VQVAEConfig  # noqa: E402
from jukebox_flax_convert import ConvertError, convert, export  # noqa: E402
from jukebox_flax_convert.export import hps_from_config  # noqa: E402
from jukebox_flax_convert.hf_keys import original_to_hf, split_hf_state_dict  # noqa: E402
from jukebox_flax_convert.hps import prior_config_from_hps, vqvae_config_from_hps  # noqa: E402

VQVAE_KEYS = (
    "levels",
    "downs_t",
    "strides_t",
    "hvqvae_multipliers",
    "emb_width",
    "l_bins",
    "width",
    "depth",
    "dilation_growth_rate",
    "dilation_cycle",
    "vqvae_reverse_decoder_dilation",
)


def standin_mapping(sd, config) -> dict:
    """A trivial mapping (key path -> nested dict), for priors until the real one is importable."""
    params: dict = {}
    for key, value in sd.items():
        if key == "prior.x_out.weight" and not getattr(config, "merged_decoder", True):
            continue
        *path, leaf = key.split(".")
        node = params
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = value
    return params


def _real_prior_mapping_available() -> bool:
    try:
        from jukebox_flax_convert.prior_keys import prior_params_from_state_dict  # noqa: F401
    except ImportError:
        return False
    return True


REAL_PRIOR = _real_prior_mapping_available()


@pytest.fixture(scope="module")
def mappings():
    from jukebox_flax_convert.convert import default_mappings

    real = default_mappings()
    return {"vqvae": real["vqvae"], "prior": real["prior"] if REAL_PRIOR else standin_mapping}


def prior_hps(name: str) -> dict:
    """A fixture prior's hps with the tiny VQ-VAE it was built with (its own vqvae entries are unused defaults)."""
    vq = hps("vqvae_tiny")
    return {**hps(name), **{k: vq[k] for k in VQVAE_KEYS}}


def save_official(path, sd: dict, hps_dict=None, **extra) -> None:
    ckpt = {"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, **extra}
    if (
        "prior.x_out.weight" in sd
        and "prior.x_emb.weight" in sd
        and np.array_equal(sd["prior.x_out.weight"], sd["prior.x_emb.weight"])
    ):
        ckpt["model"]["prior.x_out.weight"] = ckpt["model"]["prior.x_emb.weight"]  # tied storage, as released
    if hps_dict is not None:
        ckpt["hps"] = hps_dict
    torch.save(ckpt, path)


def flat(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = np.asarray(v)
    return out


def assert_same_tree(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert np.array_equal(np.ascontiguousarray(fa[k]).view(np.uint8), np.ascontiguousarray(fb[k]).view(np.uint8)), k


# ------------------------------------------------------------------------------------------------
# Official files


@pytest.fixture(scope="module")
def vqvae_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "vqvae.pth.tar"
    save_official(path, state_dict(load_npz("openai/vqvae_tiny")), hps("vqvae_tiny"), step=7, opt=None)
    return path


@pytest.fixture(scope="module")
def vqvae_dir(vqvae_file, tmp_path_factory):
    return convert(vqvae_file, tmp_path_factory.mktemp("out") / "vq")


def test_vqvae_file_converts_to_the_mapped_params(vqvae_dir):
    from jukebox_flax_convert.vqvae_keys import vqvae_params_from_state_dict

    config = load_config(vqvae_dir)
    assert config == vqvae_config_from_hps(hps("vqvae_tiny"))
    expected = vqvae_params_from_state_dict(state_dict(load_npz("openai/vqvae_tiny")), config)
    assert_same_tree(load_params(vqvae_dir), expected)


def test_converted_vqvae_reproduces_the_oracle_codes(vqvae_dir):
    api = pytest.importorskip("jukebox_flax.vqvae.api")
    oracle = load_npz("openai/vqvae_tiny")
    vq = api.load_vqvae(vqvae_dir)
    codes = vq.encode(oracle["inputs/x"])
    for level in range(3):
        want = oracle[f"outputs/zs/{level}"]
        got = np.asarray(codes[level])
        # codes are exact except at recorded near-ties (tiny quantisation margins)
        near_tie = oracle[f"outputs/quant_margin/{level}"] < 1e-4
        assert np.array_equal(got[~near_tie], want[~near_tie])


@pytest.mark.slow
def test_dtype_is_cast_explicitly(vqvae_file, vqvae_dir, tmp_path):
    import ml_dtypes

    out = convert(vqvae_file, tmp_path / "bf16", dtype="bfloat16")
    params = flat(load_params(out))
    assert {a.dtype for a in params.values()} == {np.dtype(ml_dtypes.bfloat16)}
    ref = flat(load_params(vqvae_dir))  # the float32 conversion
    k = next(iter(ref))
    assert np.array_equal(params[k], ref[k].astype(ml_dtypes.bfloat16))


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_export_round_trip_is_bit_exact(vqvae_file, vqvae_dir, tmp_path):
    out = export(vqvae_dir, tmp_path / "back.pth.tar")
    back = torch.load(out, weights_only=True)
    original = torch.load(vqvae_file, weights_only=True)["model"]
    assert list(back["model"]) == sorted(original) or set(back["model"]) == set(original)
    for key, tensor in original.items():
        assert back["model"][key].dtype == tensor.dtype and torch.equal(back["model"][key], tensor), key
    # the exported hps describe the same model, so the file converts back without --hps
    assert vqvae_config_from_hps(back["hps"]) == load_config(vqvae_dir)
    again = convert(out, tmp_path / "again")
    assert_same_tree(load_params(again), load_params(vqvae_dir))


@pytest.mark.slow
def test_module_prefix_is_stripped(tmp_path):
    sd = {"module." + k: v for k, v in state_dict(load_npz("openai/vqvae_tiny")).items()}
    save_official(tmp_path / "ddp.pth.tar", sd, hps("vqvae_tiny"))
    out = convert(tmp_path / "ddp.pth.tar", tmp_path / "vq")
    assert len(flat(load_params(out))) == len(sd)


@pytest.mark.parametrize("name,level", [("prior_up0", 0), ("prior_top1b", 2)])
def test_prior_file(name, level, tmp_path, mappings):
    sd = state_dict(load_npz(f"openai/{name}"))
    save_official(tmp_path / "p.pth.tar", sd, prior_hps(name))
    out = convert(tmp_path / "p.pth.tar", tmp_path / "p", mappings=mappings)
    config = load_config(out)
    assert isinstance(config, PriorConfig) and config.level == level and config.bins == 32
    n = sum(a.size for a in flat(load_params(out)).values())
    tied = sd["prior.x_out.weight"].size if not config.merged_decoder else 0
    assert n == sum(a.size for a in sd.values()) - tied
    if REAL_PRIOR:  # the converter stacks scanned layers lazily (StackedRows); same tree as np.stack
        from jukebox_flax_convert.prior_keys import prior_params_from_state_dict

        assert_same_tree(load_params(out), prior_params_from_state_dict(sd, config))


def test_stacked_rows_stack_only_when_loaded_and_cast_like_astype():
    import ml_dtypes

    from jukebox_flax_convert.convert import StackedRows

    rows = [np.random.default_rng(i).normal(size=(3, 5)).astype(np.float32) for i in range(4)]
    lazy = StackedRows(rows)
    assert lazy.shape == (4, 3, 5) and lazy.dtype == np.float32 and all(r is not None for r in lazy.rows)
    assert np.array_equal(lazy.load(), np.stack(rows))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert np.array_equal(lazy.load_as(bf16).view(np.uint16), np.stack(rows).astype(bf16).view(np.uint16))
    with pytest.raises(ValueError, match="different shapes"):
        StackedRows([rows[0], rows[1][:2]])


def test_hps_from_config_round_trips_every_preset():
    from jukebox_flax.config import PRESETS, preset

    for name in PRESETS:
        config = preset(name)
        parts = [config] if not isinstance(config, JukeboxConfig) else [config.vqvae, *config.priors]
        for part in parts:
            from_hps = vqvae_config_from_hps if isinstance(part, VQVAEConfig) else prior_config_from_hps
            back = from_hps(hps_from_config(part))
            assert back == part, name


# ------------------------------------------------------------------------------------------------
# Whole models: an official directory and HF checkpoints


@pytest.fixture(scope="module")
def hf_parts():
    sd = dict(np.load(HF / "tiny_1b_style" / "state_dict.npz"))
    config = json.loads((HF / "tiny_1b_style" / "config.json").read_text())
    return sd, config


def write_hf(path, sd: dict, config: dict, fmt: str) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path / "pytorch_model.bin")
        return
    from safetensors.numpy import save_file

    keys = sorted(sd)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: np.ascontiguousarray(sd[k]) for k in shard}, str(path / name))
        weight_map.update({k: name for k in shard})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def hf_converted(hf_parts, tmp_path_factory, mappings):
    sd, config = hf_parts
    root = tmp_path_factory.mktemp("hf")
    write_hf(root / "bin", sd, config, "bin")
    # safetensors files drop tied weights (fc_proj_out == embed_tokens of non-merged priors)
    untied = {k: v for k, v in sd.items() if not k.endswith("prior.fc_proj_out.weight")}
    write_hf(root / "st", untied, config, "safetensors")
    return {fmt: convert(root / fmt, root / f"out_{fmt}", mappings=mappings) for fmt in ("bin", "st")}


def test_hf_bin_and_sharded_safetensors_give_identical_trees(hf_converted):
    config = load_config(hf_converted["bin"])
    assert isinstance(config, JukeboxConfig)
    for name in ("vqvae", "prior_level_0", "prior_level_1", "prior_level_2"):
        assert_same_tree(load_params(hf_converted["bin"] / name), load_params(hf_converted["st"] / name))
    assert load_config(hf_converted["st"]) == config


def test_official_and_hf_formats_give_identical_trees(hf_parts, hf_converted, tmp_path, mappings):
    sd, hf_config = hf_parts
    whole = load_config(hf_converted["bin"])
    official = tmp_path / "official"
    official.mkdir()
    for name, part in split_hf_state_dict(sd, hf_config).items():
        config = whole.vqvae if name == "vqvae" else whole.priors[int(name[-1])]
        save_official(official / f"{name}.pth.tar", part, hps_from_config(config, whole.vqvae))
    out = convert(official, tmp_path / "out", mappings=mappings)
    assert load_config(out).priors == whole.priors
    for name in ("vqvae", "prior_level_0", "prior_level_1", "prior_level_2"):
        assert_same_tree(load_params(out / name), load_params(hf_converted["bin"] / name))


def test_hf_renames_invert_and_match_the_original_layout(hf_parts):
    sd, config = hf_parts
    parts = split_hf_state_dict(sd, config)
    for name, part in parts.items():
        assert {original_to_hf(name, k) for k in part} == {
            k for k in sd if k.startswith("vqvae." if name == "vqvae" else f"priors.{2 - int(name[-1])}.")
        }
    # same VQ-VAE topology as the official tiny fixture: every key and conv shape agrees
    official = state_dict(load_npz("openai/vqvae_tiny"))
    assert set(parts["vqvae"]) == set(official)
    assert all(parts["vqvae"][k].shape == official[k].shape for k in official if not k.endswith(".k"))


# ------------------------------------------------------------------------------------------------
# Errors: one clear line, nothing left behind


def test_truncated_file_is_a_clear_error(vqvae_file, tmp_path):
    broken = tmp_path / "vqvae.pth.tar"
    broken.write_bytes(vqvae_file.read_bytes()[: vqvae_file.stat().st_size // 2])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_corrupt_safetensors_is_a_clear_error(hf_parts, tmp_path):
    sd, config = hf_parts
    write_hf(tmp_path / "hf", sd, config, "safetensors")
    shard = tmp_path / "hf" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ("drop", "missing decoders.0.out.weight"),
        ("extra", "unexpected"),
        ("reshape", "decoders.0.out.weight"),
    ],
)
def test_missing_unexpected_or_misshaped_tensors_are_named(change, message, tmp_path):
    sd = state_dict(load_npz("openai/vqvae_tiny"))
    if change == "drop":
        del sd["decoders.0.out.weight"]
    elif change == "extra":
        sd["decoders.0.extra.weight"] = np.zeros((3, 3, 3), np.float32)
    else:
        sd["decoders.0.out.weight"] = sd["decoders.0.out.weight"][:, :4]
    save_official(tmp_path / "v.pth.tar", sd, hps("vqvae_tiny"))
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / "v.pth.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "hps": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(ConvertError, match="not a Jukebox VQ-VAE or prior"):
        convert(tmp_path / "other.pth.tar", tmp_path / "out")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConvertError, match="not a Jukebox model"):
        convert(tmp_path / "hf", tmp_path / "out")


def test_wrong_kind_of_preset_is_rejected(vqvae_file, tmp_path):
    with pytest.raises(ConvertError, match="vqvae checkpoint but the given config is a prior"):
        convert(vqvae_file, tmp_path / "out", preset="prior_5b")


def test_the_files_own_hps_win_and_a_contradicting_preset_is_named(vqvae_file, tmp_path, capsys):
    # the tiny file's hps differ from the released VQ-VAE preset in its shape: an error naming them
    with pytest.raises(ConvertError, match=r"differ from --preset vqvae in .*emb_width \(16 vs 64\)") as e:
        convert(vqvae_file, tmp_path / "out", preset="vqvae")
    assert "width (8 vs 32)" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    from jukebox_flax.cli import main

    assert main(["convert", str(vqvae_file), str(tmp_path / "out"), "--preset", "vqvae"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_given_hps_that_agree_with_the_file_are_accepted_but_the_files_are_used(vqvae_file, tmp_path):
    # training-only fields (loss weights, EMA rate) may differ; the file's values are kept
    given = tmp_path / "hps.json"
    given.write_text(json.dumps({**hps("vqvae_tiny"), "l_mu": 0.5, "commit": 1.0}))
    out = convert(vqvae_file, tmp_path / "out", hps=given)
    assert load_config(out) == vqvae_config_from_hps(hps("vqvae_tiny"))


def test_hps_or_preset_are_used_when_the_file_has_none(tmp_path):
    save_official(tmp_path / "v.pth.tar", state_dict(load_npz("openai/vqvae_tiny")))
    with pytest.raises(ConvertError, match="has no 'hps' entry"):
        convert(tmp_path / "v.pth.tar", tmp_path / "out")
    given = tmp_path / "hps.json"
    given.write_text(json.dumps(hps("vqvae_tiny")))
    out = convert(tmp_path / "v.pth.tar", tmp_path / "out", hps=given)
    assert load_config(out) == vqvae_config_from_hps(hps("vqvae_tiny"))


def test_differing_tied_weights_are_an_error(tmp_path, mappings):
    sd = state_dict(load_npz("openai/prior_up0"))
    sd["prior.x_out.weight"] = sd["prior.x_out.weight"] + 1.0
    save_official(tmp_path / "p.pth.tar", sd, prior_hps("prior_up0"))
    with pytest.raises(ConvertError, match="differs from prior.x_emb.weight"):
        convert(tmp_path / "p.pth.tar", tmp_path / "out", mappings=mappings)


def test_existing_destination_needs_overwrite(vqvae_file, vqvae_dir):
    with pytest.raises(ConvertError, match="already exists"):
        convert(vqvae_file, vqvae_dir)
    assert convert(vqvae_file, vqvae_dir, overwrite=True) == vqvae_dir


# ------------------------------------------------------------------------------------------------
# Pickle safety


class Opaque:  # anything outside the allow-list
    pass


def test_unknown_pickled_objects_need_trust_pickle(tmp_path):
    sd = state_dict(load_npz("openai/vqvae_tiny"))
    save_official(tmp_path / "v.pth.tar", sd, hps("vqvae_tiny"), extra=Opaque())
    with pytest.raises(ConvertError, match="--trust-pickle"):
        convert(tmp_path / "v.pth.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    convert(tmp_path / "v.pth.tar", tmp_path / "out", trust_pickle=True)


def test_hps_pickled_as_the_original_hyperparams_class_loads_safely(tmp_path, monkeypatch):
    # the original hparams.Hyperparams is a dict subclass; a file pickling it loads without trust
    module = types.ModuleType("jukebox.hparams")

    class Hyperparams(dict):
        pass

    Hyperparams.__module__ = "jukebox.hparams"
    Hyperparams.__qualname__ = "Hyperparams"
    module.Hyperparams = Hyperparams
    monkeypatch.setitem(sys.modules, "jukebox", types.ModuleType("jukebox"))
    monkeypatch.setitem(sys.modules, "jukebox.hparams", module)
    sd = state_dict(load_npz("openai/vqvae_tiny"))
    save_official(tmp_path / "v.pth.tar", sd, Hyperparams(hps("vqvae_tiny")), metric=np.float64(0.5))
    monkeypatch.delitem(sys.modules, "jukebox.hparams")
    monkeypatch.delitem(sys.modules, "jukebox")
    out = convert(tmp_path / "v.pth.tar", tmp_path / "out")
    assert load_config(out) == vqvae_config_from_hps(hps("vqvae_tiny"))


# ------------------------------------------------------------------------------------------------
# Command line


def test_cli_convert_and_errors(vqvae_file, tmp_path, capsys):
    from jukebox_flax.cli import main

    assert main(["convert", str(vqvae_file), str(tmp_path / "vq"), "--dtype", "float16"]) == 0
    assert "VQ-VAE" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "nope.pth.tar"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert main(["export", str(tmp_path / "vq"), str(tmp_path / "vq.pth.tar")]) == 0
    assert (
        torch.load(tmp_path / "vq.pth.tar", weights_only=True)["model"]["decoders.0.out.weight"].dtype == torch.float16
    )
