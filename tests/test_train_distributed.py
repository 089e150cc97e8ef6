"""The trainer on several devices and processes gives the losses of a single-device run.

one run moved across meshes and process counts -- a (2, 2, 2) mesh on 8 fake CPU devices stopped
(SIGTERM semantics) at step 6; resumed by two ``jax.distributed`` processes on loopback (gloo, 2 devices
each, mesh (2, 2, 1)) that train, save and stop at step 9; resumed again by one process on a (1, 4, 2)
mesh up to step 12 -- and every step's loss, gradient norm and parameter norm match one device to ~2e-5.
Process-count changes restore the state onto the new shardings and reposition the data iterator from the
step.

Reference: ``tests/helpers/train_child_tiny.py`` for 12 steps on one device (a subprocess).
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import chex
import portpicker
import pytest
from helpers.subprocess_env import env_with_devices

from bltjax import train
from bltjax.metrics import read_jsonl

REPO = pathlib.Path(__file__).parent.parent
TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
CHILD = str(REPO / "tests" / "helpers" / "train_child_kill.py")
STEPS = 12
TOL = dict(rel=2e-5, abs=2e-5)


def mesh_args(data: int, fsdp: int, tensor: int) -> list[str]:
    return ["--set", f"mesh.ici_data={data}", "--set", f"mesh.ici_fsdp={fsdp}", "--set", f"mesh.ici_tensor={tensor}"]


def base_args(workdir: pathlib.Path) -> list[str]:
    return ["--config", TINY, "--workdir", str(workdir), "--set", f"steps={STEPS}"]


KEYS = ("loss", "grad_norm", "param_norm")  # the gradient and the update, not only the forward


def losses(workdir: pathlib.Path) -> dict[int, tuple[float, float, float]]:
    """Per step ``(loss, grad_norm, param_norm)`` from metrics.jsonl (the last record of a step wins)."""
    return {r["step"]: tuple(r[k] for k in KEYS) for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    workdir = tmp_path_factory.mktemp("ref1") / "run"
    proc = subprocess.run([sys.executable, "-m", "bltjax.train", *base_args(workdir), *mesh_args(1, 1, 1)],
                          env=env_with_devices(1), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = losses(workdir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    return ref


def stop_after(monkeypatch, step: int) -> None:
    """Make the in-process trainer behave as if SIGTERM arrived during ``step``."""
    original = train.StopFlag.should_stop

    def should_stop(self, s, mngr, at_log_step):
        return s == step or original(self, s, mngr, at_log_step)

    monkeypatch.setattr(train.StopFlag, "should_stop", should_stop)


def assert_matches(got: dict[int, tuple], reference: dict[int, tuple], steps) -> None:
    """Per step and key (chex names the differing leaf): float32 sums in another order on other meshes."""
    chex.assert_trees_all_close({s: dict(zip(KEYS, got[s])) for s in steps},
                                {s: dict(zip(KEYS, reference[s])) for s in steps}, rtol=TOL["rel"], atol=TOL["abs"])


def _two_processes(workdir: pathlib.Path, devices_each: int, mesh: list[str],
                   sigterm_call: int) -> list[subprocess.CompletedProcess]:
    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, CHILD, "--sigterm-in-step", str(sigterm_call), "--", *base_args(workdir), *mesh,
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, env=env_with_devices(devices_each), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=500)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    return results


def test_mesh_shape_and_process_count_changes_keep_the_losses(reference, tmp_path, monkeypatch, capsys):
    """(2,2,2) x 1 process -> stop at 6 -> (2,2,1) x 2 processes -> stop at 9 -> (1,4,2) x 1 process -> 12."""
    workdir = tmp_path / "run"
    # 1. one process, 8 devices, mesh (2, 2, 2); SIGTERM semantics at step 6
    with monkeypatch.context() as m:
        stop_after(m, 6)
        assert train.main([*base_args(workdir), *mesh_args(2, 2, 2)]) == 0
    assert "SIGTERM: saved step 6" in capsys.readouterr().out
    assert sorted(losses(workdir)) == list(range(1, 7))
    assert_matches(losses(workdir), reference, range(1, 7))
    # 2. two jax.distributed processes (gloo, 2 devices each), mesh (2, 2, 1): resume, train, save at 9
    first, second = _two_processes(workdir, 2, mesh_args(2, 2, 1), sigterm_call=3)
    assert "resuming from step 6" in first.stdout and "SIGTERM: saved step 9" in first.stdout
    assert not [line for line in second.stdout.splitlines() if not line.startswith("[Gloo]")]  # process 0 logs
    data_states = sorted(p.name for p in (workdir / "checkpoints" / "9" / "data").glob("process_*"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]
    assert sorted(losses(workdir)) == list(range(1, 10))
    assert_matches(losses(workdir), reference, range(1, 10))
    # 3. one process again, mesh (1, 4, 2): restores the 2-process checkpoint, data positioned by step
    assert train.main([*base_args(workdir), *mesh_args(1, 4, 2)]) == 0
    assert "resuming from step 9" in capsys.readouterr().out
    assert sorted(losses(workdir)) == list(range(1, STEPS + 1))
    assert_matches(losses(workdir), reference, range(1, STEPS + 1))
