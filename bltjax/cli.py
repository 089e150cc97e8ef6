"""Console entry points (``bltjax-train``, ``bltjax-eval``, ...), the same commands as ``python -m``.

Each runs the module's ``main()`` (its exit code is the process's); the heavy ones first re-execute
themselves once with huge-page malloc (``bltjax.hugepages``), as ``python -m`` does.  The table
``COMMANDS`` is the single list; ``setup.cfg``'s ``console_scripts`` name these functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# console script -> (module whose main() it runs, re-exec with huge pages first)
COMMANDS: dict[str, tuple[str, bool]] = {
    "bltjax-train": ("bltjax.train", True),
    "bltjax-eval": ("bltjax.eval", True),
    "bltjax-generate": ("bltjax.generation", True),
    "bltjax-convert": ("bltjax.convert", False),
    "bltjax-entropy": ("bltjax.entropy_tools", True),
    "bltjax-fetch": ("bltjax.data.fetch", False),
}


def _run(command: str) -> int:
    module, hugepages = COMMANDS[command]
    if hugepages:
        from bltjax import hugepages as hp

        hp.reexec()
    return importlib.import_module(module).main()


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

__all__ = ["COMMANDS", "train", "eval", "generate", "convert", "entropy", "fetch"]
