"""Compiling against a topology: per-device bytes of abstract inputs, and a compile whose HBM
out-of-memory becomes :class:`DoesNotFit` (shared by the train and generate modes of ``bltjax.aot``)."""

from __future__ import annotations

import re
import time
from typing import Any, Optional


class DoesNotFit(RuntimeError):
    """The program needs more HBM per device than the chip has (message: one line).

    ``parts``: per-device sizes known without compiling (parameters, optimizer state, inputs)."""

    def __init__(self, message: str, parts: Optional[dict] = None) -> None:
        super().__init__(message)
        self.parts = parts or {}

    @property
    def needed_bytes(self) -> Optional[float]:
        """XLA's temporaries figure plus the parts known before compiling (None when not given)."""
        m = re.search(r"needs ([\d.]+)([KMGTP]?)iB of HLO temporaries", str(self))
        if not m:
            return None
        scale = 1 << (10 * " KMGTP".index(m.group(2) or " "))
        return float(m.group(1)) * scale + sum(self.parts.values())


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


_OOM = re.compile(r"required for (.+?) \(([\d.]+[KMGTP]?)\) exceeds available HBM \(([\d.]+[KMGTP]?)\)")


def _oom_line(e: BaseException) -> Optional[str]:
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
        return None
    m = _OOM.search(text)
    if m:
        return (f"needs {m.group(2)}iB of {m.group(1)} per device, {m.group(3)}iB of HBM available "
                "(XLA compile-time check)")
    return text.strip().splitlines()[0][:300]


def compile_lowered(lower) -> tuple[Any, float]:
    """``lower()`` then compile; XLA's compile-time HBM out-of-memory becomes :class:`DoesNotFit`."""
    t0 = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001 -- XlaRuntimeError / JaxRuntimeError
        line = _oom_line(e)
        if line is None:
            raise
        raise DoesNotFit(line) from e
    return compiled, time.perf_counter() - t0
