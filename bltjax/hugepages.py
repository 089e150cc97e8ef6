"""Back XLA:CPU's per-step buffers with transparent huge pages (a process-level setting).

XLA:CPU allocates its temporary buffers afresh for every execution.  glibc serves allocations of more
than 32 MiB with fresh ``mmap``s, so every train step first-touches hundreds of MiB of new 4 KiB pages:
on the design §19 benchmark model that page-faulting was a quarter of the step (1.48 s -> 1.10 s per
step with huge pages, ``benchmarks/train_step.py``).  glibc >= 2.35 can ask for transparent huge pages
on those mappings (tunable ``glibc.malloc.hugetlb=1``; effective when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always``), but tunables are read
only at process start.  The command-line entry points therefore re-execute themselves once with the
tunable set (same pid, same arguments).  ``BLTJAX_HUGEPAGES=0`` turns this off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def wanted(environ=os.environ) -> bool:
    """True when a re-exec would add the tunable: Linux, glibc >= 2.35, not set yet, not opted out."""
    if environ.get("BLTJAX_HUGEPAGES", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False
    libc, version = platform.libc_ver()
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return libc == "glibc" and major_minor >= (2, 35)


def environment(environ=os.environ) -> dict[str, str]:
    """``environ`` with the tunable appended to ``GLIBC_TUNABLES``."""
    current = environ.get("GLIBC_TUNABLES", "")
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE}


def reexec() -> None:
    """Re-execute this process with the tunable (once; a no-op when not :func:`wanted`)."""
    if not wanted():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment())
