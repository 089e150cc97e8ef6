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
from collections.abc import Sequence
from typing import Any, Optional, Union

import jax

log = logging.getLogger(__name__)

_NO_CLUSTER_MESSAGE = "coordinator_address should be defined"


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
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids, **kwargs)
    except ValueError as e:
        if explicit or _NO_CLUSTER_MESSAGE not in str(e):
            raise
        log.info("no cluster environment detected: single process")
        return False
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
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


__all__ = ["initialize", "is_main_process", "process_info", "ProcessInfo"]
