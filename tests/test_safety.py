"""Hostile and careless input against every command: each case checks the exit code, that stderr
is one line without a traceback, that no file outside the output changed (victims are hashed),
and that nothing partial is left behind. The inputs are built here from the tiny fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, hps, load_npz, state_dict  # noqa: E402

from jukebox_flax.checkpoint import CheckpointError, load_params, load_vocab  # noqa: E402
from jukebox_flax.cli import main  # noqa: E402

DEMO = ROOT / "jukebox_flax" / "assets" / "demo_model"
MARKER_NAME = "pwned"


# ------------------------------------------------------------------------------------------------
# Helpers


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256 or 'link -> target' or 'dir'} of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fails(capsys, *argv, code: int = 2) -> str:
    """Run the CLI in-process; assert the exit code and one stderr line without a traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def fails_cleanly(capsys, root: Path, *argv, changed: tuple[str, ...] = ()) -> str:
    """``fails`` and nothing under ``root`` changed (no partial output, no temporary names)."""
    before = snapshot(root)
    line = fails(capsys, *argv)
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}
    return line


def save_official(path: Path, sd: dict, hps_dict=None, **extra) -> None:
    ckpt = {"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, **extra}
    if hps_dict is not None:
        ckpt["hps"] = hps_dict
    torch.save(ckpt, path)


def vq_sd() -> dict:
    return state_dict(load_npz("openai/vqvae_tiny"))


class Payload:
    """Unpickling this runs a shell command (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload(Payload):
    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """An official tiny VQ-VAE file and its conversion (shared, read-only for the tests)."""
    root = tmp_path_factory.mktemp("safety")
    save_official(root / "vqvae.pth.tar", vq_sd(), hps("vqvae_tiny"))
    assert main(["convert", str(root / "vqvae.pth.tar"), str(root / "vq")]) == 0
    return root


@pytest.fixture
def src(work, tmp_path) -> Path:
    shutil.copy(work / "vqvae.pth.tar", tmp_path / "v.pth.tar")
    return tmp_path / "v.pth.tar"


@pytest.fixture
def model(work, tmp_path) -> Path:
    shutil.copytree(work / "vq", tmp_path / "vq")
    return tmp_path / "vq"


# ------------------------------------------------------------------------------------------------
# Malicious pickles: refused, and the payload never runs


def _hostile_files(folder: Path) -> dict[str, Path]:
    marker = folder / MARKER_NAME
    sd = vq_sd()
    files = {}
    files["zip reduce os.system"] = folder / "a.pth.tar"
    save_official(files["zip reduce os.system"], sd, hps("vqvae_tiny"), extra=Payload(marker))
    files["zip exec inside hps"] = folder / "b.pth.tar"
    save_official(files["zip exec inside hps"], sd, {**hps("vqvae_tiny"), "x": ExecPayload(marker)})
    files["legacy torch format"] = folder / "c.pth.tar"
    ckpt = {"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, "x": Payload(marker)}
    torch.save(ckpt, files["legacy torch format"], _use_new_zipfile_serialization=False)
    files["raw pickle"] = folder / "d.pth.tar"
    files["raw pickle"].write_bytes(pickle.dumps({"model": Payload(marker)}))
    hf = folder / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "jukebox"}))
    torch.save({"vqvae.x": Payload(marker)}, hf / "pytorch_model.bin")
    files["hugging face .bin"] = hf
    return files


def test_malicious_pickles_are_refused_and_never_run(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = _hostile_files(inputs)
    for what, path in files.items():
        line = fails_cleanly(capsys, tmp_path, "convert", path, tmp_path / "out")
        assert not (inputs / MARKER_NAME).exists(), what
        assert "--trust-pickle" in line or "corrupt" in line or "not a readable" in line, (what, line)


# ------------------------------------------------------------------------------------------------
# Corrupt weights


def test_truncated_and_bit_flipped_checkpoints_are_refused(src, tmp_path, capsys):
    data = src.read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in fails_cleanly(
        capsys, tmp_path, "convert", tmp_path / "cut.pth.tar", tmp_path / "o"
    )
    # a flip inside the largest tensor's data: only the zip CRC notices
    import zipfile

    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    flipped = bytearray(data)
    flipped[info.header_offset + 200] ^= 0x10
    (tmp_path / "flip.pth.tar").write_bytes(bytes(flipped))
    line = fails_cleanly(capsys, tmp_path, "convert", tmp_path / "flip.pth.tar", tmp_path / "o")
    assert "CRC-32" in line and info.filename in line


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_weights_that_are_not_floating_point_are_named(dtype, tmp_path, capsys):
    sd = vq_sd()
    key = sorted(sd)[3]
    sd[key] = np.ones(sd[key].shape, dtype)
    save_official(tmp_path / "v.pth.tar", sd, hps("vqvae_tiny"))
    line = fails_cleanly(capsys, tmp_path, "convert", tmp_path / "v.pth.tar", tmp_path / "o")
    assert key in line and np.dtype(dtype).name in line


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_need_allow_nonfinite(bad, tmp_path, capsys):
    sd = vq_sd()
    key = "decoders.0.out.weight"
    sd[key] = sd[key].copy()
    sd[key].flat[5] = bad
    save_official(tmp_path / "v.pth.tar", sd, hps("vqvae_tiny"))
    line = fails_cleanly(capsys, tmp_path, "convert", tmp_path / "v.pth.tar", tmp_path / "o")
    assert "NaN or infinite" in line and "--allow-nonfinite" in line
    if not np.isnan(bad):
        return  # keeping them is checked once, for NaN
    assert main(["convert", str(tmp_path / "v.pth.tar"), str(tmp_path / "o"), "--allow-nonfinite"]) == 0
    capsys.readouterr()
    kept = load_params(tmp_path / "o")
    assert sum(int((~np.isfinite(np.asarray(x))).sum()) for x in jax.tree_util.tree_leaves(kept)) == 1


def test_a_cast_that_overflows_float16_is_refused(tmp_path, capsys):
    sd = vq_sd()
    key = "decoders.0.out.weight"
    sd[key] = np.full(sd[key].shape, 1e6, np.float32)  # finite in float32, inf in float16
    save_official(tmp_path / "v.pth.tar", sd, hps("vqvae_tiny"))
    line = fails_cleanly(capsys, tmp_path, "convert", tmp_path / "v.pth.tar", tmp_path / "o", "--dtype", "float16")
    assert "float16" in line and "NaN or infinite" in line


# ------------------------------------------------------------------------------------------------
# Hugging Face layouts


def _hf_dir(tmp_path: Path, config=None, index=None) -> Path:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "jukebox"} if config is None else config))
    if index is not None:
        (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    return hf


@pytest.mark.parametrize(
    "config, index, expect",
    [
        ([], None, "not a model config"),
        (["model_type", "jukebox"], None, "not a model config"),
        (None, [], "not a valid shard index"),
        (None, {"weight_map": ["a"]}, "not a valid shard index"),
        (None, {"weight_map": {"w": "../../../../etc/passwd"}}, "outside"),
        (None, {"weight_map": {"w": "/etc/passwd"}}, "outside"),
    ],
)
def test_hostile_hugging_face_configs_and_indexes(config, index, expect, tmp_path, capsys):
    hf = _hf_dir(tmp_path, config, index)
    assert expect in fails_cleanly(capsys, tmp_path, "convert", hf, tmp_path / "o")


# ------------------------------------------------------------------------------------------------
# Overwrite traps


def test_overwrite_never_empties_the_current_directory(src, tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    line = fails_cleanly(capsys, tmp_path, "convert", src, ".", "--overwrite")
    assert "refusing" in line


def test_overwrite_never_removes_the_source_or_its_folder(src, tmp_path, capsys):
    line = fails_cleanly(capsys, tmp_path, "convert", src, tmp_path, "--overwrite")
    assert "source" in line
    line = fails_cleanly(capsys, tmp_path, "convert", src, src, "--overwrite")
    assert "refusing" in line


def test_overwrite_replaces_only_a_model_directory(src, model, tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 cat")
    assert "not a model directory jukebox-flax wrote" in fails_cleanly(
        capsys, tmp_path, "convert", src, other, "--overwrite"
    )
    (model / "notes.txt").write_text("mine")  # a model dir the user put a file into
    fails_cleanly(capsys, tmp_path, "convert", src, model, "--overwrite")
    (model / "notes.txt").unlink()
    assert "already exists" in fails_cleanly(capsys, tmp_path, "convert", src, model)
    assert main(["convert", str(src), str(model), "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "v.pth.tar", "vq"]


def test_export_refuses_existing_targets_and_replaces_only_its_own(model, tmp_path, capsys):
    victim = tmp_path / "some_file.txt"
    victim.write_text("do not touch")
    assert "already exists" in fails_cleanly(capsys, tmp_path, "export", model, victim)
    assert "only a file jukebox-flax exported" in fails_cleanly(
        capsys, tmp_path, "export", model, victim, "--overwrite"
    )
    assert "outside the model directory" in fails_cleanly(capsys, tmp_path, "export", model, model / "x.pth.tar")
    fails_cleanly(capsys, tmp_path, "export", model, tmp_path, "--overwrite")
    out = tmp_path / "vq.pth.tar"
    assert main(["export", str(model), str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert main(["export", str(model), str(out), "--overwrite"]) == 0  # an earlier export: replaced
    capsys.readouterr()


def test_whole_model_export_never_replaces_downloaded_originals(tmp_path, capsys):
    originals = tmp_path / "jukebox"
    originals.mkdir()
    for name in ("vqvae", "prior_level_0", "prior_level_1", "prior_level_2"):
        torch.save({"model": {"w": torch.zeros(2)}}, originals / f"{name}.pth.tar")
    assert "only a folder of files jukebox-flax exported" in fails_cleanly(
        capsys, tmp_path, "export", DEMO, originals, "--overwrite"
    )


def test_a_failed_whole_model_export_leaves_nothing(tmp_path, capsys, monkeypatch):
    import importlib

    export_module = importlib.import_module("jukebox_flax_convert.export")
    calls = []
    real = export_module._export_component

    def flaky(model_dir, out, *args, **kwargs):
        calls.append(out)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(out))
        return real(model_dir, out, *args, **kwargs)

    monkeypatch.setattr(export_module, "_export_component", flaky)
    line = fails_cleanly(capsys, tmp_path, "export", DEMO, tmp_path / "exported")
    assert "No space left on device" in line and "exported" in line
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------
# Symlinks at temporary names


@pytest.mark.slow
def test_planted_symlinks_at_temporary_names_are_never_followed(model, src, tmp_path, capsys, monkeypatch):
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("precious")
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("precious")
    for name in ("out.pth.tar", "conv"):
        (tmp_path / f".{name}.fixed.tmp").symlink_to(victim_file if name.endswith("tar") else victim_dir)
    names = iter(["fixed"] * 50 + [f"n{i}" for i in range(1000)])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    before = snapshot(tmp_path)
    assert main(["export", str(model), str(tmp_path / "out.pth.tar")]) == 0
    assert main(["convert", str(src), str(tmp_path / "conv")]) == 0
    capsys.readouterr()
    after = snapshot(tmp_path)
    for key in before:
        assert after[key] == before[key], key  # victims and the planted links themselves
    assert (tmp_path / "conv" / "config.json").is_file() and not (tmp_path / "out.pth.tar").is_symlink()


# ------------------------------------------------------------------------------------------------
# Damaged model directories


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_flipped_byte_in_a_converted_checkpoint_is_named(model, tmp_path, capsys):
    assert json.loads((model / "checksums.json").read_text())["sha256"]
    chunk = max(
        (p for p in (model / "params").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    line = fails_cleanly(capsys, tmp_path, "info", model)
    assert chunk.name in line and "damaged" in line
    with pytest.raises(CheckpointError, match=chunk.name):
        load_params(model)
    np.savez(tmp_path / "c.npz", level_0=np.zeros(16, np.int32))
    assert chunk.name in fails_cleanly(
        capsys, tmp_path, "decode", "--model", model, tmp_path / "c.npz", tmp_path / "o.wav"
    )


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda m: (m / "params" / "_METADATA").unlink(), "_METADATA is missing"),
        (lambda m: (m / "params" / "manifest.ocdbt").unlink(), "manifest.ocdbt is missing"),
        (lambda m: (m / "config.json").unlink(), "no config.json"),
        (lambda m: (m / "config.json").write_text("null"), "expected a JSON object"),
        (lambda m: (m / "config.json").write_text("[]"), "expected a JSON object"),
        (lambda m: (m / "config.json").write_text('{"kind": "vq'), "not valid JSON"),
        (lambda m: (m / "checksums.json").write_text("[1, 2]"), "not a checksum list"),
    ],
)
def test_damaged_model_directories_are_one_line(damage, expect, model, tmp_path, capsys):
    damage(model)
    if (model / "checksums.json").is_file() and expect != "not a checksum list":
        (model / "checksums.json").unlink()  # the structural check alone, as for an older conversion
    assert expect in fails_cleanly(capsys, tmp_path, "info", model)


def test_info_of_a_file_and_directories_without_checksums(model, src, tmp_path, capsys):
    assert "is a file" in fails_cleanly(capsys, tmp_path, "info", src)
    (model / "checksums.json").unlink()  # an older conversion: still loads
    assert main(["info", str(model)]) == 0
    assert main(["info", str(DEMO)]) == 0  # the bundled demo model has no checksums file
    capsys.readouterr()


def test_a_truncated_vocab_is_one_line(tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(DEMO, demo)
    text = (demo / "vocab.json").read_text()
    (demo / "vocab.json").write_text(text[: len(text) // 2])
    assert "vocab.json is damaged" in fails_cleanly(capsys, tmp_path, "info", demo)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_vocab(demo)


# ------------------------------------------------------------------------------------------------
# Bad codes files for decode (checked before any weight is read)


def _codes(**arrays) -> dict:
    base = {"level_0": np.zeros(64, np.int32), "sr": np.int32(44100), "n_samples": np.int64(500)}
    base.update(arrays)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    "arrays, expect",
    [
        (_codes(level_0=np.zeros(64, np.float32)), "integers"),
        (_codes(level_0=np.zeros(64, bool)), "integers"),
        (_codes(level_0=np.full(64, -1, np.int32)), "must lie in 0..31"),
        (_codes(level_0=np.full(64, 32, np.int32)), "must lie in 0..31"),
        (_codes(level_0=np.zeros((1, 2, 64), np.int32)), "[T] or [B, T]"),
        (_codes(level_0=np.zeros(0, np.int32), n_samples=None), "empty"),
        (_codes(level_0=None, level_7=np.zeros(4, np.int32)), "level_7 is not a level"),
        (_codes(level_x=np.zeros(4, np.int32)), "level_x is not a level"),
        (_codes(level_0=None), "has no level_0"),
        (_codes(sr=np.int32(8000)), "8000 Hz"),
        (_codes(sr=np.float32(44100)), "sr must be one integer"),
        (_codes(n_samples=np.int64(-5)), "n_samples -5"),
        (_codes(n_samples=np.int64(10**9)), "n_samples 1000000000"),
        (_codes(hop_lengths=np.array([1, 2, 3])), "hop lengths"),
    ],
)
def test_decode_validates_the_codes_file(arrays, expect, work, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", **arrays)
    line = fails_cleanly(capsys, tmp_path, "decode", "--model", work / "vq", tmp_path / "c.npz", tmp_path / "o.wav")
    assert expect in line


def test_decode_of_non_npz_files(work, tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.zeros(64, np.int32))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "obj.npz", level_0=np.array([{"a": 1}], dtype=object))
    for name, expect in (("c.npy", "single .npy"), ("junk.npz", "not a readable"), ("obj.npz", "not a readable")):
        line = fails_cleanly(capsys, tmp_path, "decode", "--model", work / "vq", tmp_path / name, tmp_path / "o.wav")
        assert expect in line, line
    np.savez(tmp_path / "c.npz", **_codes())
    (tmp_path / "dir.wav").mkdir()
    assert "is a directory" in fails_cleanly(
        capsys, tmp_path, "decode", "--model", work / "vq", tmp_path / "c.npz", tmp_path / "dir.wav"
    )


# ------------------------------------------------------------------------------------------------
# Operating-system errors and bugs: one line each


@pytest.mark.slow
def test_an_output_below_a_file_is_one_line(src, model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    codes = tmp_path / "codes.npz"
    np.savez(codes, **_codes())
    for argv in (
        ("convert", src, tmp_path / "file" / "out"),
        ("decode", "--model", model, codes, tmp_path / "file" / "sub" / "o.wav"),
    ):
        line = fails_cleanly(capsys, tmp_path, *argv)
        assert line.endswith(f"error: {tmp_path / 'file'}: Not a directory"), line


def test_an_unexpected_error_saves_its_traceback(monkeypatch, tmp_path, capsys):
    import jukebox_flax.cli as cli

    def boom(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "describe", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    line = fails(capsys, "info", "x", code=1)
    assert "internal error: RuntimeError: a bug" in line
    saved = Path(line.split("traceback: ")[1].split(";")[0])
    assert saved.parent == tmp_path and "RuntimeError: a bug" in saved.read_text()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert main(["--debug", "info", "x"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.fixture
def small_fs(tmp_path):
    """A 160 KiB tmpfs (root only): smaller than the tiny VQ-VAE's checkpoint."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_file_system(small_fs, src, model, tmp_path, capsys):
    for argv in (("convert", src, small_fs / "vq"), ("export", model, small_fs / "vq.pth.tar")):
        line = fails_cleanly(capsys, tmp_path, *argv)
        assert "No space left on device" in line and str(small_fs) in line
        assert list(small_fs.iterdir()) == []


def test_a_read_only_file_system(small_fs, src, model, tmp_path, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for argv in (("convert", src, small_fs / "vq"), ("export", model, small_fs / "vq.pth.tar")):
        assert "Read-only file system" in fails_cleanly(capsys, tmp_path, *argv)


def test_outputs_respect_the_umask(work):
    mask = _umask()
    assert stat.S_IMODE((work / "vq").stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 0700
    assert stat.S_IMODE((work / "vq" / "config.json").stat().st_mode) == 0o666 & ~mask


def test_the_bundled_demo_model_carries_checksums():
    from jukebox_flax.checkpoint import CHECKSUMS_FILE, verify_checksums

    for sub in ("", "vqvae", "prior_level_0", "prior_level_1", "prior_level_2"):
        assert (DEMO / sub / CHECKSUMS_FILE).is_file()
        verify_checksums(DEMO / sub)


def test_sample_refuses_a_damaged_model_and_an_out_that_is_a_file(tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(DEMO, demo)
    assert main(["info", str(demo)]) == 0
    chunk = sorted((demo / "prior_level_2" / "params").rglob("d/*"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    capsys.readouterr()
    line = fails(capsys, "sample", "--model", demo, "--seconds", "1", "--out", tmp_path / "run")
    assert chunk.name in line and "damaged" in line
    text = (demo / "vocab.json").read_text()
    (demo / "vocab.json").write_text(text.replace('"', "'", 1) if text.startswith('"') else " " + text)
    line = fails(capsys, "sample", "--model", demo, "--seconds", "1", "--out", tmp_path / "run2")
    assert "vocab.json is damaged" in line
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    line = fails(capsys, "sample", "--seconds", "1", "--out", tmp_path / "file")
    assert str(tmp_path / "file") in line
    assert snapshot(tmp_path) == before
