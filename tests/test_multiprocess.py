"""A real 2-process ``jax.distributed`` run on loopback (gloo), 4 fake CPU devices per process.

The work happens in ``tests/helpers/mp_child.py``; this test starts both processes, enforces a hard timeout
and then restores their checkpoint in this (single, 8-device) process: a process-count change.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax import distributed
from bltjax import sharding as sh
from bltjax.checkpoint import CheckpointManager

REPO = pathlib.Path(__file__).resolve().parent.parent
CHILD = REPO / "tests" / "helpers" / "mp_child.py"
NUM_PROCESSES = 2
TIMEOUT_S = 120


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=4"])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run_children(workdir: pathlib.Path) -> list[dict]:
    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), "--coordinator", f"127.0.0.1:{port}", "--process-id", str(i),
             "--num-processes", str(NUM_PROCESSES), "--workdir", str(workdir)],
            cwd=REPO, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(NUM_PROCESSES)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"multi-process children did not finish within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}\n{err[-6000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_batch_compute_checkpoint(tmp_path):
    results = _run_children(tmp_path)
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["ok"] and r["devices"] == 8 for r in results)
    assert sorted(os.listdir(tmp_path / "ckpt" / "7" / "data")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]

    # the same checkpoint, restored by ONE process onto an (8, 1, 1) mesh
    mesh = sh.make_mesh(sh.MeshConfig(ici_data=8, ici_fsdp=1, ici_tensor=1))
    abstract = {"w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P("data", None))),
                "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    with CheckpointManager(tmp_path / "ckpt", save_every=1, keep_latest=2) as m:
        step, state, meta = m.restore(abstract_state=abstract)
    assert step == 7 and meta == {"processes": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]),
                                  np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 100.0)
    assert state["w"].sharding.is_equivalent_to(abstract["w"].sharding, 2)


def test_single_process_helpers():
    """In the (already started) test process: no cluster, so initialize() stays single-process."""
    assert distributed.initialize() is False
    info = distributed.process_info()
    assert (info.process_index, info.process_count, info.device_count) == (0, 1, 8)
    assert info.platform == "cpu" and not info.distributed
    assert distributed.is_main_process()
    assert info.as_dict()["local_device_count"] == 8
