"""Multi-process start-up: a thin, idempotent wrapper around ``jax.distributed.initialize``.

Call :func:`initialize` once at program start, before any JAX computation:

* on Cloud TPU VMs, GKE, Slurm and Open MPI, with no arguments (JAX detects the cluster);
* anywhere else with explicit ``coordinator_address`` / ``num_processes`` / ``process_id``
  (e.g. several CPU processes on one machine talking over loopback with gloo collectives);
* on a single machine with no cluster it does nothing and the run is single-process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional, Union

import jax

log = logging.getLogger(__name__)

_NO_CLUSTER_MESSAGE = "coordinator_address should be defined"
# A process that sends no heartbeat for this long (env BLTJAX_HEARTBEAT_TIMEOUT) is declared dead:
# every other process then stops with one line (instead of JAX's default of 100 s and a SIGABRT
# with a C++ trace).  Heartbeats come from a runtime thread: long compiles or saves do not delay them.
HEARTBEAT_TIMEOUT_S = int(os.environ.get("BLTJAX_HEARTBEAT_TIMEOUT", "20"))
EXIT_LOST_PEER = 2
# Runtime-error texts of collectives and coordination calls whose peer has gone away.
_PEER_GONE = re.compile(r"connection (closed|reset|refused)|broken pipe|socket closed|gloo|"
                        r"heartbeat|UNAVAILABLE|DEADLINE_EXCEEDED|coordination service|barrier|"
                        r"task .* (disconnected|failed|stopped)|failed to connect", re.IGNORECASE)


def _lost_peer_index(detail: str) -> Optional[int]:
    """The other process's index, from the error text or (with two processes) by elimination."""
    found = {int(m) for m in re.findall(r"task[:_ ](\d+)", detail)}
    try:
        me, count = jax.process_index(), jax.process_count()
    except Exception:  # noqa: BLE001 -- called from a runtime thread during shutdown
        me, count = None, None
    found.discard(me)
    if len(found) == 1:
        return found.pop()
    if count == 2 and me is not None:
        return 1 - me
    return None


def report_lost_peer(detail: str) -> NoReturn:
    """Print one ``error: lost contact with process N ...`` line and end this process at once.

    ``os._exit``: the normal interpreter exit would run JAX's shutdown barrier with the dead peer
    (minutes, then SIGABRT).  Checkpoints are safe: only complete steps carry a commit marker.
    """
    n = _lost_peer_index(detail)
    who = f"process {n}" if n is not None else "another process"
    first = " ".join(detail.split())[:160]
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    _write_stderr(f"error: lost contact with {who} of this multi-process run ({first}); stopping. Restart "
                  f"every process to resume from the newest complete checkpoint\n")
    os._exit(EXIT_LOST_PEER)


def is_lost_peer_error(e: BaseException) -> bool:
    """A runtime error of a multi-process run whose cause is a peer that went away."""
    try:
        if not jax.distributed.is_initialized() or jax.process_count() < 2:
            return False
    except Exception:  # noqa: BLE001
        return False
    return bool(_PEER_GONE.search(str(e)))


_STDERR_FD: Optional[int] = None  # the real stderr once the runtime's fatal lines are watched
_FATAL_LINE = re.compile(rb"^F\d{4} [\d:.]+\s+\d+ [^\]]+\] (.*)")


def _write_stderr(text: str) -> None:
    os.write(_STDERR_FD if _STDERR_FD is not None else 2, text.encode("utf-8", "replace"))


def _watch_runtime_fatal_errors() -> None:
    """Relay stderr through a thread that spots the runtime's fatal log line about a lost peer.

    When the coordinator (or, after ``HEARTBEAT_TIMEOUT_S``, any peer) is lost, JAX's coordination
    client logs ``F... Terminating process because the JAX distributed service detected fatal
    errors`` with a gRPC trace and aborts.  Seen here first, that line becomes
    :func:`report_lost_peer`'s one line and exit code.  Everything else passes through unchanged.
    """
    global _STDERR_FD
    if _STDERR_FD is not None:
        return
    import atexit
    import threading

    try:
        real = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
    except OSError:
        return
    _STDERR_FD = real

    def relay() -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                return
            if not chunk:
                if buf:
                    os.write(real, buf)
                return
            buf += chunk
            while buf:
                nl = buf.find(b"\n")
                maybe_fatal = buf[:1] == b"F" and buf[1:5].isdigit() or buf in (b"F", b"F1")
                if maybe_fatal:
                    if nl < 0:
                        break  # wait for the end of the line
                    m = _FATAL_LINE.match(buf[:nl])
                    if m and b"distributed service" in m.group(1):
                        report_lost_peer(m.group(1).decode("utf-8", "replace"))
                if nl < 0:
                    os.write(real, buf)
                    buf = b""
                else:
                    os.write(real, buf[:nl + 1])
                    buf = buf[nl + 1:]

    thread = threading.Thread(target=relay, name="bltjax-stderr-relay", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: give fd 2 back and let the relay drain the pipe
        try:
            sys.stderr.flush()
            os.dup2(real, 2)
        except (OSError, ValueError):
            return
        thread.join(timeout=2.0)

    atexit.register(restore)


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume not, let JAX complain
        return False


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               local_device_ids: Optional[Union[int, Sequence[int]]] = None,
               *, cpu_collectives: Optional[str] = "gloo", **kwargs: Any) -> bool:
    """Join the multi-process JAX runtime; returns True when running distributed.

    Idempotent: a second call (or a call after someone else initialised) returns True at once.
    With no arguments and no detectable cluster it returns False (single process).
    ``cpu_collectives`` selects the CPU cross-process collectives ("gloo"; None leaves JAX's
    setting alone).  Extra keyword arguments go to ``jax.distributed.initialize`` (e.g.
    ``initialization_timeout``).
    """
    if jax.distributed.is_initialized():
        return True
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not explicit and _backends_initialized():
        log.warning("bltjax.distributed.initialize() called after JAX backends were initialised; "
                    "staying single-process (call it before any JAX computation to join a cluster)")
        return False
    if num_processes == 1 and not coordinator_address:
        return False
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs.setdefault("heartbeat_timeout_seconds", HEARTBEAT_TIMEOUT_S)
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids, **kwargs)
    except ValueError as e:
        if explicit or _NO_CLUSTER_MESSAGE not in str(e):
            raise
        log.info("no cluster environment detected: single process")
        return False
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
    if jax.process_count() > 1:
        _watch_runtime_fatal_errors()
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that logs, writes summaries and owns shared files)."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the run."""

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int
    platform: str
    distributed: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def process_info() -> ProcessInfo:
    """Process index/count, local/global device counts, platform, and whether distributed is on."""
    return ProcessInfo(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        device_count=jax.device_count(),
        platform=jax.devices()[0].platform,
        distributed=jax.distributed.is_initialized(),
    )


__all__ = ["initialize", "is_main_process", "process_info", "ProcessInfo", "report_lost_peer",
           "is_lost_peer_error", "HEARTBEAT_TIMEOUT_S"]
