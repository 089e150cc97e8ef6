"""Stopping a training run cleanly: SIGTERM, Ctrl-C and Orbax preemption notices.

The trainer asks :meth:`StopFlag.should_stop` after every step; when it says so, the run saves at that
step boundary and exits 0.  A second Ctrl-C raises ``KeyboardInterrupt`` at once (exit code 130 from
``bltjax.cli.run_cli``; nothing more is saved, the last checkpoint stays usable).
"""

from __future__ import annotations

import signal
import sys


class StopFlag:
    """Set by SIGTERM or Ctrl-C (SIGINT): the loop saves at the next step boundary and exits 0.
    A second Ctrl-C aborts at once (KeyboardInterrupt: exit code 130, nothing more is saved)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = "SIGTERM"

    def install(self) -> None:
        """Install the SIGTERM / SIGINT handler (main thread only: ``main()`` called from a worker thread,
        as a notebook does to plot while training, runs without it)."""
        import threading

        def handler(signum, frame):  # noqa: ARG001
            if signum == signal.SIGINT and self.requested:
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("\ninterrupted: saving after this step (Ctrl-C again: abort)", file=sys.stderr, flush=True)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    def should_stop(self, step: int, mngr, at_log_step: bool) -> bool:
        """Whether to save and stop after ``step``; the same answer on every process.

        Single process: SIGTERM or an Orbax preemption notice, checked every step.  Several processes:
        the preemption notice every step (an Orbax sync point), the SIGTERM flags OR-ed across processes
        at log steps only (a collective, kept off the per-step path).
        """
        import jax

        stop = bool(mngr.reached_preemption(step))
        if jax.process_count() == 1:
            return stop or self.requested
        if at_log_step:
            import numpy as np
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
            stop = stop or bool(np.any(flags))
        return stop


__all__ = ["StopFlag"]
