"""Command-line plumbing: one error boundary for every bltjax CLI, and the console entry points.

``run_cli(main)`` runs a CLI's ``main(argv) -> int`` and turns the failures a user can cause or meet
into one line on stderr and an exit code, keeping tracebacks for genuine bugs:

* bad config, bad input data, unknown fields, unreadable or missing checkpoints, OS errors on
  paths (permissions, disk full, not a directory), a lost peer process: ``error: ...`` naming
  the key or path, exit code 2 (``EXIT_USAGE``);
* Ctrl-C outside a training loop (which handles it itself): ``error: interrupted``, exit 130;
* anything else (a bug): the usual traceback, exit code 1.

``BLTJAX_TRACEBACK=1`` in the environment shows the traceback of handled errors too.  Warnings of
bltjax's own categories (skipped checkpoints, ...) print as one line ``warning: ...``.

Console entry points (``bltjax-train``, ``bltjax-eval``, ...) are the same commands as ``python -m``:
each runs the module's ``main()`` inside ``run_cli`` (its exit code is the process's); the heavy ones
first re-execute themselves once with huge-page malloc (``bltjax.hugepages``), as ``python -m`` does.
The table ``COMMANDS`` is the single list; ``setup.cfg``'s ``console_scripts`` name these functions.
"""


from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Optional

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def error_line(e: BaseException) -> str:
    """The one-line text of an expected failure (without the ``error: `` prefix)."""
    if isinstance(e, OSError) and e.strerror:  # raised by the OS: path + reason
        where = f"{e.filename}: " if e.filename is not None else ""
        hint = " (the disk is full)" if e.errno == errno.ENOSPC and "disk is full" not in e.strerror else ""
        return f"{where}{e.strerror}{hint}"
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0].strip()
    if isinstance(e, (ValueError, OSError)):
        return first
    return f"{type(e).__name__}: {first}"


def expected_error(e: BaseException) -> bool:
    """Failures a user can cause or meet (reported in one line), as opposed to bugs."""
    return isinstance(e, (ValueError, OSError))


def one_line_warnings() -> None:
    """Print warnings of bltjax's own categories as ``warning: <message>`` (one line, no source)."""
    if getattr(warnings.showwarning, "_bltjax", False):
        return
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if getattr(category, "__module__", "").startswith("bltjax"):
            print(f"warning: {message}", file=file or sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    show._bltjax = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def quiet_runtime_logs() -> None:
    """Silence the C++ runtime's own log lines (call before JAX is imported; multi-process runs).

    When a peer of a multi-process run dies, every survivor's runtime logs a screenful of gRPC and
    coordination-service errors; ``bltjax.distributed.report_lost_peer`` prints the one line that
    matters instead.  An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment is kept (0 shows all).
    """
    if "jax" not in sys.modules:  # read once by the runtime, at its first log line
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def report_if_lost_peer(e: BaseException) -> None:
    """If ``e`` comes from a lost peer of a multi-process run: one line, exit at once (no return)."""
    if "jax" in sys.modules:
        from bltjax import distributed

        if distributed.is_lost_peer_error(e):
            distributed.report_lost_peer(str(e))  # exits (skips the shutdown barrier with the dead peer)


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)`` inside the error boundary; returns the exit code (see the module doc)."""
    one_line_warnings()
    try:
        code = main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 -- sorted into expected failures and bugs below
        report_if_lost_peer(e)
        if not expected_error(e):
            raise
        if os.environ.get("BLTJAX_TRACEBACK"):
            traceback.print_exc()
        print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return EXIT_OK if code is None else int(code)


# console script -> (module whose main() it runs, re-exec with huge pages first)
COMMANDS: dict[str, tuple[str, bool]] = {
    "bltjax-train": ("bltjax.train", True),
    "bltjax-eval": ("bltjax.eval", True),
    "bltjax-generate": ("bltjax.generation", True),
    "bltjax-convert": ("bltjax.convert", False),
    "bltjax-entropy": ("bltjax.entropy_tools", True),
    "bltjax-fetch": ("bltjax.data.fetch", False),
    "bltjax-aot": ("bltjax.aot", False),
}


def _run(command: str) -> int:
    module, hugepages = COMMANDS[command]
    if hugepages:
        from bltjax import hugepages as hp

        hp.reexec()
    return run_cli(importlib.import_module(module).main)


def _entry(command: str) -> Callable[[], int]:
    def entry() -> int:
        return _run(command)

    entry.__name__ = entry.__qualname__ = command.removeprefix("bltjax-")
    entry.__doc__ = f"``{command}``: ``python -m {COMMANDS[command][0]}``."
    return entry


train = _entry("bltjax-train")
eval = _entry("bltjax-eval")  # noqa: A001 -- the command's name
generate = _entry("bltjax-generate")
convert = _entry("bltjax-convert")
entropy = _entry("bltjax-entropy")
fetch = _entry("bltjax-fetch")
aot = _entry("bltjax-aot")

__all__ = ["run_cli", "error_line", "expected_error", "one_line_warnings", "quiet_runtime_logs",
           "report_if_lost_peer", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_DIVERGED", "EXIT_INTERRUPTED",
           "COMMANDS", "train", "eval", "generate", "convert", "entropy", "fetch", "aot"]
