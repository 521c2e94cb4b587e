"""The atomic file / directory writers and the tree-path names."""

from __future__ import annotations

import os
import stat
import tempfile

import jax
import numpy as np
import pytest

from jukebox_flax.atomic import atomic_dir, atomic_write
from jukebox_flax.tree import named_leaves, path_name, tree_paths


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_atomic_write_replaces_the_file_with_umask_permissions(tmp_path, umask_027):
    path = tmp_path / "sub" / "out.bin"
    with atomic_write(path) as f:
        f.write(b"one")
    with atomic_write(path, "w") as f:
        f.write("two")
    assert path.read_text() == "two"
    assert _mode(path) == 0o640  # 0666 & ~umask, as open() would make it (mkstemp alone: 0600)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "a"):
            pass


def test_atomic_write_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "out.txt"
    planted = tmp_path / ".out.txt.fixed.tmp"  # the first temporary name mkstemp will try
    planted.symlink_to(victim)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["fixed", "other"]))
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new" and not path.is_symlink()
    assert victim.read_text() == "precious"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)


def test_atomic_write_replaces_a_symlink_at_the_destination_not_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "out.txt"
    path.symlink_to(victim)
    with atomic_write(path, "w") as f:
        f.write("new")
    assert not path.is_symlink() and path.read_text() == "new"
    assert victim.read_text() == "precious"


def test_atomic_dir_commits_whole_directories(tmp_path, umask_027):
    path = tmp_path / "model"
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (path / "a.txt").read_text() == "1"
    assert _mode(path) == 0o750
    with atomic_dir(path) as tmp:  # replaces the old directory
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["b.txt"]
    with pytest.raises(RuntimeError):
        with atomic_dir(path) as tmp:
            (tmp / "c.txt").write_text("3")
            raise RuntimeError("killed")
    assert sorted(p.name for p in path.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_tree_paths_name_every_leaf():
    tree = {"prior": {"x_emb": {"embedding": np.zeros(2)}, "layers": [np.ones(1), np.ones(3)]}}
    assert list(tree_paths(tree)) == ["prior/layers/0", "prior/layers/1", "prior/x_emb/embedding"]
    assert ("prior", "x_emb", "embedding") in named_leaves(tree)
    keypath, _ = jax.tree_util.tree_flatten_with_path(tree)[0][-1]
    assert path_name(keypath) == "prior/x_emb/embedding"


def test_a_failed_write_names_the_destination(tmp_path, monkeypatch):
    # a write to an open file that fails (ENOSPC, EIO) carries no file name; the error names the target
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"x")
    assert caught.value.errno == 28 and caught.value.filename == str(tmp_path / "out.bin")
    with pytest.raises(OSError) as caught:
        with atomic_dir(tmp_path / "model") as tmp:
            raise OSError(28, "No space left on device", str(tmp / "params" / "chunk"))
    assert caught.value.filename == str(tmp_path / "model")  # not the temporary name
    assert list(tmp_path.iterdir()) == []


def test_a_file_or_folder_in_the_way_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(NotADirectoryError) as error, atomic_write(tmp_path / "file" / "sub" / "out.txt", "w"):
        pass
    assert error.value.filename == str(tmp_path / "file")
    with pytest.raises(NotADirectoryError), atomic_dir(tmp_path / "file" / "model"):
        pass
    with pytest.raises(IsADirectoryError) as error, atomic_write(tmp_path / "folder", "w"):
        pass
    assert error.value.filename == str(tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]
