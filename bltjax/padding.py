"""Shape buckets: inputs of similar size share one compiled program."""

from __future__ import annotations

from typing import Optional


def bucket(n: int, smallest: int = 16, cap: Optional[int] = None) -> int:
    """The next power-of-two multiple of ``smallest`` that is >= ``n``, capped at ``cap`` (never below ``n``)."""
    b = smallest
    while b < n:
        b *= 2
    return b if cap is None else max(n, min(b, cap))


def round_up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m``."""
    return -(-n // m) * m


__all__ = ["bucket", "round_up"]
