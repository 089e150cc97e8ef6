"""Crash safety of the trainer: SIGKILL during an async save and during a step, SIGTERM, resume
(and gradient accumulation, checked against the same single-device reference run).

Every run is a subprocess on one CPU device (``tests/helpers/train_child_tiny.py``, 9 steps, checkpoints
every 3 steps).  After each kill the run is restarted on the same workdir; the per-step losses, gradient
norms and parameter norms in metrics.jsonl
(the last record of a step wins) must equal those of an uninterrupted run exactly: same data in the
same order, same state.
"""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys

import chex
import pytest
from helpers.subprocess_env import env_with_devices

from bltjax.metrics import read_jsonl

REPO = pathlib.Path(__file__).parent.parent
TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
KILLER = str(REPO / "tests" / "helpers" / "train_child_kill.py")
ONE_DEVICE = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=1", "--set", "mesh.ici_tensor=1"]
STEPS = 9


def train_cmd(workdir: pathlib.Path, *extra: str, killer: list[str] | None = None) -> list[str]:
    args = ["--config", TINY, "--workdir", str(workdir), *ONE_DEVICE, "--set", f"steps={STEPS}", *extra]
    if killer is not None:
        return [sys.executable, KILLER, *killer, "--", *args]
    return [sys.executable, "-m", "bltjax.train", *args]


def run(cmd: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env_with_devices(1), cwd=REPO, capture_output=True, text=True, timeout=timeout)


KEYS = ("loss", "grad_norm", "param_norm")  # the gradient and the update, not only the forward


def losses(workdir: pathlib.Path) -> dict[int, tuple[float, float, float]]:
    """Per step ``(loss, grad_norm, param_norm)`` from metrics.jsonl (the last record of a step wins)."""
    return {r["step"]: tuple(r[k] for k in KEYS) for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r}


def committed_steps(workdir: pathlib.Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    workdir = tmp_path_factory.mktemp("ref") / "run"
    proc = run(train_cmd(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = losses(workdir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    return ref


def test_sigkill_during_async_save_and_during_step_then_resume_is_identical(reference, tmp_path):
    workdir = tmp_path / "run"
    # 1. killed while the async save of step 6 is being written: step 6 never commits
    proc = run(train_cmd(workdir, killer=["--after-save-start", "6"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "KILL after starting the save of step 6" in proc.stdout
    committed = committed_steps(workdir)
    assert committed in ([3], [3, 6])  # [3, 6] only if the background write beat the kill (not seen so far)
    # 2. restart (resumes from 3), killed right after dispatching its 5th step
    proc = run(train_cmd(workdir, killer=["--in-step", "5"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert f"resuming from step {committed[-1]}" in proc.stdout and "KILL during train step call 5" in proc.stdout
    # 3. restart and finish
    proc = run(train_cmd(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(re.search(r"resuming from step (\d+)", proc.stdout).group(1))
    assert resumed_from in (3, 6)  # 6 only if its async save committed before the kill
    chex.assert_trees_all_equal(losses(workdir), reference)  # bitwise: same batches, same order, same state
    assert STEPS in committed_steps(workdir)


def test_sigterm_saves_and_exits_zero_corrupt_latest_falls_back_and_resumes_identically(reference, tmp_path):
    workdir = tmp_path / "run"
    # SIGTERM (delivered to the process by itself) while step 4 runs: save step 4 at the boundary, exit 0
    proc = run(train_cmd(workdir, killer=["--sigterm-in-step", "4"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGTERM: saved step 4, exiting" in proc.stdout
    assert committed_steps(workdir) == [3, 4]
    # corrupt step 4 (its array files truncated): the restart warns, falls back to step 3, moves 4 aside
    for f in (workdir / "checkpoints" / "4" / "state").rglob("d/*"):
        f.write_bytes(b"")
    proc = run(train_cmd(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 4" in proc.stderr and "is skipped" in proc.stderr
    assert "resuming from step 3" in proc.stdout
    chex.assert_trees_all_equal(losses(workdir), reference)
    assert any(p.name.startswith("4.corrupt-") for p in (workdir / "checkpoints").iterdir())


def test_gradient_accumulation_matches_the_full_batch(reference, tmp_path):
    """2 micro-batches of 4 rows per step give the losses of the 8-row steps (stopped after step 3)."""
    workdir = tmp_path / "accum"
    proc = run(train_cmd(workdir, "--set", "optim.grad_accum_steps=2", killer=["--sigterm-in-step", "3"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = losses(workdir)
    assert sorted(got) == [1, 2, 3]
    for s in (1, 2, 3):  # float32 sums of two halves vs one batch: agree to ~1e-6 relative
        for key, g, r in zip(KEYS, got[s], reference[s]):
            assert g == pytest.approx(r, rel=2e-5), (s, key, g, r)
