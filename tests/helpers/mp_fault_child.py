"""One process of the peer-loss tests in test_reliability_distributed.py (run as a script).

    python tests/helpers/mp_fault_child.py --coordinator 127.0.0.1:PORT --process-id I --num-processes 2 \
        --workdir DIR [--die-after N]

Joins the run through ``bltjax.distributed.initialize``, saves a small sharded checkpoint at step 1
(every process), then loops forever over cross-process all-gathers (a training loop's collectives)
inside the ``bltjax.cli`` error boundary.  ``--die-after N``: SIGKILL itself after N all-gathers.
``--idle``: the loop only sleeps (a peer's death is then noticed by the coordination service).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--die-after", type=int, default=None)
    ap.add_argument("--idle", action="store_true", help="no collectives in the loop (a process busy elsewhere)")
    args = ap.parse_args(argv)

    from bltjax.cli import quiet_runtime_logs

    quiet_runtime_logs()  # as bltjax.train does for multi-process runs
    from bltjax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from bltjax.checkpoint import CheckpointManager

    mesh = jax.make_mesh((jax.device_count(),), ("fsdp",))
    w = jax.make_array_from_callback((8, 4), NamedSharding(mesh, P("fsdp")),
                                     lambda idx: np.arange(32, dtype=np.float32).reshape(8, 4)[idx])
    mngr = CheckpointManager(os.path.join(args.workdir, "ckpt"), save_every=1, keep_latest=2, async_save=False)
    mngr.save(1, {"w": w})
    mngr.wait_until_finished()
    print(f"process {args.process_id}: saved step 1", flush=True)
    n = 0
    while True:
        if not args.idle:
            multihost_utils.process_allgather(np.asarray(n, np.int32))
        n += 1
        if n == args.die_after:
            print(f"process {args.process_id}: SIGKILL after {n} all-gathers", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)


if __name__ == "__main__":
    from bltjax.cli import run_cli

    sys.exit(run_cli(main))
