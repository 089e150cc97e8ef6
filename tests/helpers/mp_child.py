"""One process of the 2-process test in test_multiprocess.py (run as a script, 4 CPU devices each).

    python tests/helpers/mp_child.py --coordinator 127.0.0.1:PORT --process-id I --num-processes 2 --workdir DIR

Checks, on every process: distributed start-up, global batch assembly from per-process rows, a
jitted sharded matmul, an Orbax save from both processes (with per-process Grain state) and restores
onto two other mesh shapes, one of them a hybrid ICI x DCN mesh with processes as DCN granules.
Prints one JSON line ``{"ok": true, ...}`` on success; any failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GLOBAL_B, SEQ, DIM = 8, 16, 8


def _iterator(process_id: int, num_processes: int):
    import grain

    ds = grain.MapDataset.range(64)[process_id::num_processes].batch(2)
    return iter(ds.to_iter_dataset())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    pid, nproc = args.process_id, args.num_processes

    from bltjax import distributed

    assert distributed.initialize(args.coordinator, nproc, pid, initialization_timeout=60)
    assert distributed.initialize(args.coordinator, nproc, pid)  # idempotent

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from bltjax import sharding as sh
    from bltjax.checkpoint import CheckpointManager

    info = distributed.process_info()
    assert (info.process_index, info.process_count, info.local_device_count, info.device_count) == \
        (pid, nproc, 4, 4 * nproc), info
    assert info.distributed and distributed.is_main_process() == (pid == 0)

    def gather(x):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    # ---- global batch from per-process rows
    mesh = sh.make_mesh(sh.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2))
    global_bytes = np.arange(GLOBAL_B * SEQ, dtype=np.int32).reshape(GLOBAL_B, SEQ) % 251
    per_proc = GLOBAL_B // nproc
    local = {"bytes": global_bytes[pid * per_proc:(pid + 1) * per_proc]}
    batch = sh.shard_batch(local, mesh)
    assert batch["bytes"].shape == (GLOBAL_B, SEQ)
    assert not batch["bytes"].is_fully_addressable
    np.testing.assert_array_equal(gather(batch["bytes"]), global_bytes)
    total = jax.jit(lambda b: b["bytes"].sum())(batch)
    assert int(total) == int(global_bytes.sum()), (int(total), int(global_bytes.sum()))

    # ---- a jitted sharded computation: [B, N] bytes x [N, D] weight (fsdp x tensor)
    w_np = (np.arange(SEQ * DIM, dtype=np.float32).reshape(SEQ, DIM) / 100.0)
    w_sharding = NamedSharding(mesh, P("fsdp", "tensor"))
    w = jax.jit(lambda: jnp.asarray(w_np), out_shardings=w_sharding)()
    y = jax.jit(lambda b, w: sh.constrain(b["bytes"].astype(jnp.float32) @ w, ("batch", "act_embed")))(batch, w)
    np.testing.assert_allclose(gather(y), global_bytes.astype(np.float32) @ w_np, rtol=1e-5)

    # ---- Orbax save from both processes, with per-process Grain state
    ckpt_dir = os.path.join(args.workdir, "ckpt")
    it = _iterator(pid, nproc)
    for _ in range(pid + 1):
        next(it)
    state = {"w": w, "step": jax.device_put(np.int32(7), NamedSharding(mesh, P()))}
    mngr = CheckpointManager(ckpt_dir, save_every=1, keep_latest=2, metadata={"processes": nproc})
    assert mngr.save(7, state, data_iterator=it)
    mngr.wait_until_finished()
    expected_next = np.asarray(next(it))

    def restore_onto(target_mesh, spec):
        abstract = {"w": jax.ShapeDtypeStruct((SEQ, DIM), jnp.float32, sharding=NamedSharding(target_mesh, spec)),
                    "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(target_mesh, P()))}
        fresh = _iterator(pid, nproc)
        step, restored, meta = mngr.restore(abstract_state=abstract, data_iterator=fresh)
        assert step == 7 and meta == {"processes": nproc}, (step, meta)
        assert restored["w"].sharding.is_equivalent_to(abstract["w"].sharding, 2)
        np.testing.assert_array_equal(gather(restored["w"]), w_np)
        assert int(gather(restored["step"])) == 7
        np.testing.assert_array_equal(np.asarray(next(fresh)), expected_next)

    # another mesh shape
    restore_onto(sh.make_mesh(sh.MeshConfig(ici_data=1, ici_fsdp=4, ici_tensor=2)), P("fsdp", "tensor"))
    # hybrid ICI x DCN mesh: the two processes are the DCN granules of the data axis
    hybrid = sh.make_mesh(sh.MeshConfig(ici_fsdp=-1, dcn_data=-1))
    assert dict(hybrid.shape) == {"data": nproc, "fsdp": 4, "tensor": 1}, hybrid.shape
    for i in range(nproc):
        assert {d.process_index for d in hybrid.devices[i].flat} == {i}
    restore_onto(hybrid, P(("data", "fsdp"), None))
    mngr.close()
    print(json.dumps({"ok": True, "process": pid, "devices": info.device_count}), flush=True)


if __name__ == "__main__":
    main()
