"""One writer per run directory: a second process is refused with one line while the first
holds the lock, and gets it once the first exits (even killed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jukebox_flax.errors import JukeboxError, RunLockError
from jukebox_flax.runlock import run_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from jukebox_flax.runlock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _holder(run_dir, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_then_admitted(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run, 60)
    try:
        with pytest.raises(RunLockError) as e:
            with run_lock(run):
                pass
        message = str(e.value)
        assert str(run) in message and "another process" in message and "\n" not in message
        assert isinstance(e.value, JukeboxError)
    finally:
        proc.kill()  # a killed holder leaves no stale lock
        proc.wait()
    with run_lock(run) as held:
        assert held == run and (run / ".lock").is_file()


def test_the_lock_is_released_after_the_block(tmp_path):
    with run_lock(tmp_path / "r"):
        pass
    proc = _holder(tmp_path / "r", 0)
    assert proc.wait() == 0


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLockError):
            with run_lock(tmp_path):
                pass


@pytest.mark.parametrize("resume", [False, True])
def test_sample_into_a_run_being_written_is_refused(tmp_path, capsys, resume):
    """``sample`` (and ``--resume``) of an ``--out`` that another writer holds: one line, exit 2,
    and the run's files untouched."""
    from jukebox_flax.cli import main

    out = tmp_path / "run"
    argv = ["sample", "--seconds", "0.5", "--levels", "1", "--out", str(out)]
    if resume:  # a run that was started (its run.json, no codes yet) and is still being written
        from jukebox_flax.cli import build_parser
        from jukebox_flax.sampling.command import plan_sample
        from jukebox_flax.sampling.song import RunDir

        RunDir(out).start(plan_sample(build_parser().parse_args(argv)).record)
    with run_lock(out):
        before = sorted(p.name for p in out.iterdir())
        assert main(argv + (["--resume"] if resume else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "being written by another process" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == before
