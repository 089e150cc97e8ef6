"""Fault injection for the resume tests: run ``bltjax.train`` in this process and SIGKILL it mid-run.

    python tests/helpers/train_child_kill.py --after-save-start STEP -- [bltjax.train arguments]
    python tests/helpers/train_child_kill.py --in-step CALL -- [bltjax.train arguments]
    python tests/helpers/train_child_kill.py --sigterm-in-step CALL -- [bltjax.train arguments]
    python tests/helpers/train_child_kill.py --file-size-limit-after-step STEP -- [bltjax.train arguments]

``--after-save-start STEP``: kill right after ``CheckpointManager.save`` for STEP returned, i.e. while the
async save is still being written.  ``--in-step CALL``: kill right after the CALL-th train step of this
process was dispatched (its computation still running).  Either way the process dies by SIGKILL, with
no chance to clean up, exactly like a preempted or OOM-killed job.  ``--sigterm-in-step CALL``: process 0
sends itself SIGTERM after the CALL-th step (a polite preemption: save at the step boundary, exit 0);
other processes learn it through the trainer's cross-process stop flag.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--after-save-start", type=int, default=None)
    ap.add_argument("--in-step", type=int, default=None)
    ap.add_argument("--sigterm-in-step", type=int, default=None)
    ap.add_argument("--file-size-limit-after-step", type=int, default=None)
    args, rest = ap.parse_known_args()
    rest = [a for a in rest if a != "--"]

    from bltjax import checkpoint, train, train_loop

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if args.after_save_start is not None:
        original_save = checkpoint.CheckpointManager.save

        def save(self, step, *a, **kw):
            started = original_save(self, step, *a, **kw)
            if step == args.after_save_start:
                print(f"KILL after starting the save of step {step}", flush=True)
                die()
            return started

        checkpoint.CheckpointManager.save = save

    if args.file_size_limit_after_step is not None:
        # A stand-in for a full disk where no small filesystem can be mounted: once the saves up to
        # this step are committed, no file may grow past 100 kB (writes fail with EFBIG).
        import resource

        original_save = checkpoint.CheckpointManager.save

        def save(self, step, *a, **kw):
            if step > args.file_size_limit_after_step:
                self.wait_until_finished()
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return original_save(self, step, *a, **kw)

        checkpoint.CheckpointManager.save = save

    if args.in_step is not None or args.sigterm_in_step is not None:
        original_compile = train_loop.compile_steps
        calls = {"n": 0}

        def compile_steps(*a, **kw):
            train_exec, eval_exec = original_compile(*a, **kw)

            def train_fn(*ta):
                out = train_exec(*ta)
                calls["n"] += 1
                if calls["n"] == args.in_step:
                    print(f"KILL during train step call {calls['n']}", flush=True)
                    die()
                if calls["n"] == args.sigterm_in_step:
                    import jax

                    if jax.process_index() == 0:
                        os.kill(os.getpid(), signal.SIGTERM)
                return out

            return train_fn, eval_exec

        train_loop.compile_steps = compile_steps  # what TrainLoop calls

    from bltjax.cli import run_cli

    sys.exit(run_cli(train.main, rest))


if __name__ == "__main__":
    main()
