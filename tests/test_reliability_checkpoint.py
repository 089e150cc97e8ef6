"""Disk full during a save, a half-written save, a corrupt checkpoint: one line each, nothing lost.

One real ``bltjax.train`` run on a 6 MB tmpfs workdir (room for two checkpoints of the tiny model, not
three) fails its third save; the workdir then holds two complete steps and a half-written one.  After
emptying the newest complete step's OCDBT manifest, a restart must discard the half-written step and
skip the corrupt one with one warning line each, and resume from the oldest step, with no traceback.
Where no tmpfs can be mounted (not root, no sudo), a file-size limit set after the second save stands
in for the full disk (``tests/helpers/train_child_kill.py --file-size-limit-after-step``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

from helpers.subprocess_env import REPO, env_with_devices

TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
KILLER = str(REPO / "tests" / "helpers" / "train_child_kill.py")
ONE_DEVICE = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=1", "--set", "mesh.ici_tensor=1"]


@contextlib.contextmanager
def small_disk(path: pathlib.Path, size: str = "6m"):
    """Mount a tmpfs of ``size`` on ``path``; yields False (nothing mounted) where that is not allowed."""
    path.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    try:
        ok = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    try:
        yield ok
    finally:
        if ok:
            subprocess.run([*sudo, "umount", "-l", str(path)], capture_output=True)


def train(workdir: pathlib.Path, *extra: str, fault: list[str] | None = None) -> subprocess.CompletedProcess:
    args = ["--config", TINY, "--workdir", str(workdir), *ONE_DEVICE, *extra]
    cmd = [sys.executable, KILLER, *fault, "--", *args] if fault else [sys.executable, "-m", "bltjax.train", *args]
    return subprocess.run(cmd, env=env_with_devices(1), cwd=REPO, capture_output=True, text=True, timeout=400)


def steps_on_disk(ckpt: pathlib.Path) -> tuple[list[int], list[str]]:
    done = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())
    return done, sorted(p.name for p in ckpt.iterdir() if not p.name.isdigit())


def test_disk_full_save_then_half_written_and_corrupt_steps_resume_quietly(tmp_path):
    with small_disk(tmp_path / "disk") as mounted:
        workdir = tmp_path / "disk" / "run"
        fault = None if mounted else ["--file-size-limit-after-step", "6"]
        proc = train(workdir, "--set", "steps=9", fault=fault)
        assert proc.returncode == 2, proc.stderr[-3000:]
        err = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in err if line.startswith("error: ")]
        assert len(errors) == 1 and len(err) <= 2, proc.stderr  # (+ at most one Orbax timing warning)
        assert "saving checkpoint step 9 failed" in errors[0] and "newest complete checkpoint: step 6" in errors[0]
        if mounted:
            assert "no space left on device" in errors[0]
        ckpt = workdir / "checkpoints"
        done, other = steps_on_disk(ckpt)
        assert done == [3, 6] and other and all(n.startswith("9.") for n in other), (done, other)

        (ckpt / "6" / "state" / "manifest.ocdbt").write_bytes(b"")  # newest complete step now unreadable
        proc = train(workdir, "--set", "steps=3")  # restore only: the run is already at step >= 3
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "resuming from step 3" in proc.stdout and "nothing to do" in proc.stdout
        err = proc.stderr.strip().splitlines()
        assert len(err) == 2, proc.stderr[-3000:]  # one line per discarded step, nothing else
        assert err[0].startswith("warning: checkpoint step 9") and "half-written" in err[0], err
        assert err[1].startswith("warning: checkpoint step 6") and "manifest.ocdbt" in err[1], err
        assert all(len(line) < 400 for line in err)
        done, other = steps_on_disk(ckpt)
        assert done == [3] and any(n.startswith("6.corrupt-") for n in other), (done, other)
