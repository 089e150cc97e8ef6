"""A peer that dies ends every other process of a multi-process run within 30 s, with one line.

Two processes on loopback (``tests/helpers/mp_fault_child.py``: ``bltjax.distributed.initialize``, a sharded
checkpoint saved by both, then a loop of cross-process all-gathers inside the ``bltjax.cli`` error
boundary, as in a training loop); one SIGKILLs itself.  The survivor must exit non-zero within 30 s
with ``error: lost contact with process N`` as its only stderr line (no Python or C++ trace), and the
checkpoint must restore.  Killed: the worker, the coordinator (process 0, host of the coordination
service), and the worker while the survivor runs no collective (found by the heartbeat timeout).
"""

from __future__ import annotations

import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest
from helpers.subprocess_env import REPO, env_with_devices

from bltjax.checkpoint import CheckpointManager

CHILD = str(REPO / "tests" / "helpers" / "mp_fault_child.py")


@pytest.mark.parametrize("victim,idle", [(1, False), (0, False), (1, True)])
def test_peer_death_stops_the_survivor_with_one_line(tmp_path, victim, idle):
    port = portpicker.pick_unused_port()
    env = env_with_devices(1)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell (importing jax here set it to 1)
    procs = {}
    for pid in range(2):
        cmd = [sys.executable, CHILD, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
               "--process-id", str(pid), "--workdir", str(tmp_path)]
        cmd += (["--die-after", "20"] if pid == victim else []) + (["--idle"] if idle else [])
        procs[pid] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    survivor = procs[1 - victim]
    try:
        _, err_v = procs[victim].communicate(timeout=300)
        died_at = time.time()
        assert procs[victim].returncode == -9, err_v[-3000:]
        out, err = survivor.communicate(timeout=60)
        elapsed = time.time() - died_at
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert "saved step 1" in out, err[-3000:]
    assert survivor.returncode not in (0, None), err[-3000:]
    assert elapsed < 30, elapsed
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: lost contact with process {victim} "), lines

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {"w": jax.ShapeDtypeStruct((8, 4), np.float32, sharding=device)}
    with CheckpointManager(tmp_path / "ckpt", save_every=1, keep_latest=2, read_only=True) as mngr:
        step, state, _ = mngr.restore(abstract_state=abstract)
    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32, dtype=np.float32).reshape(8, 4))
