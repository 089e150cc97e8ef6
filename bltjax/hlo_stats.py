"""Read an optimised (SPMD-partitioned) HLO module's text: collectives per step and the largest buffers.

``compiled.as_text()`` shows per-device shapes.  A collective inside a ``while`` body (a scanned layer
stack, gradient accumulation) runs once per iteration, so each computation gets a multiplier: the
product of the known trip counts (``backend_config={"known_trip_count":{"n":"25"}}``) of the loops
around it.  Bytes are the per-device size of each collective's result (for ``*-start`` ops the
gathered / permuted output, not the tuple of buffers), times that multiplier.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterable

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "token": 0}

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*)?\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_REFS = re.compile(r"\b(condition|body|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def array_bytes(shape_text: str) -> list[float]:
    """Bytes of each array in a shape string such as ``(bf16[8,128]{1,0}, f32[4]{0})``."""
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * DTYPE_BYTES[dtype])
    return out


@dataclasses.dataclass
class Instr:
    name: str
    shape: str
    op: str
    rest: str


def parse_module(text: str) -> tuple[dict[str, list[Instr]], str]:
    """``({computation: [instructions]}, entry computation name)``."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):
            m = _HEADER.match(line)
            if m:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            elif line.rstrip() == "}":  # (a custom call's multi-line config may start a line with "}}")
                current = None
            continue
        if current is None:
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(Instr(m.group(1), m.group(2), m.group(3), m.group(4)))
    return comps, entry


_COND = re.compile(r"condition=%?([\w.\-]+)")
_CONST = re.compile(r"^s32\[\]")


def _trip_count(ins: Instr, comps: dict[str, list[Instr]]) -> int:
    """A while loop's trip count: XLA's ``known_trip_count``, else the single s32 constant its condition
    compares against (``i < N`` from 0, the form scans and fori loops take); 1 when unknown."""
    trip = _TRIP.search(ins.rest)
    if trip:
        return int(trip.group(1))
    cond = _COND.search(ins.rest)
    body = comps.get(cond.group(1), []) if cond else []
    consts = [re.match(r"(-?\d+)\)", i.rest) for i in body if i.op == "constant" and _CONST.match(i.shape)]
    consts = [int(m.group(1)) for m in consts if m]
    if len(consts) == 1 and any(i.op == "compare" and "direction=LT" in i.rest for i in body) and consts[0] > 0:
        return consts[0]
    return 1


def multipliers(comps: dict[str, list[Instr]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of ``entry`` (loops with known trip counts)."""
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for comp, instrs in comps.items():
        for ins in instrs:
            n = _trip_count(ins, comps) if ins.op == "while" else 1
            for kind, callee in _REFS.findall(ins.rest):
                edges[comp].append((callee, n if kind in ("body", "condition") else 1))
            for group in _BRANCHES.findall(ins.rest):
                for callee in group.split(","):
                    edges[comp].append((callee.strip().lstrip("%"), 1))
    mult: dict[str, int] = {}

    def visit(comp: str, m: int, depth: int = 0) -> None:
        if mult.get(comp, 0) >= m or depth > 64:
            return
        mult[comp] = m
        for callee, n in edges.get(comp, ()):
            visit(callee, m * n, depth + 1)

    visit(entry or next(iter(comps), ""), 1)
    return mult


def _collective_kind(op: str) -> str | None:
    base = op[:-len("-start")] if op.endswith("-start") else op
    return base if base in COLLECTIVES else None


def _op_bytes(ins: Instr) -> float:
    sizes = array_bytes(ins.shape)
    if not sizes:
        return 0.0
    if ins.op.endswith("-start") and ins.op != "all-reduce-start":
        return max(sizes)  # (operand, result[, sync flags]): the moved result
    return float(sum(sizes))


@dataclasses.dataclass
class CollectiveStats:
    """Per collective kind: ops in the HLO, executions per step, result bytes per device per step."""

    ops: dict[str, int]
    executions: dict[str, int]
    bytes: dict[str, float]

    @property
    def total_bytes(self) -> float:
        return float(sum(self.bytes.values()))

    def as_dict(self) -> dict:
        return {k: {"ops": self.ops[k], "executions": self.executions[k], "bytes": self.bytes[k]}
                for k in COLLECTIVES}


def collective_stats(text: str) -> CollectiveStats:
    comps, entry = parse_module(text)
    mult = multipliers(comps, entry)
    ops, execs, nbytes = (dict.fromkeys(COLLECTIVES, 0) for _ in range(3))
    for comp, instrs in comps.items():
        m = mult.get(comp, 1)
        for ins in instrs:
            kind = _collective_kind(ins.op)
            if kind is None:
                continue
            ops[kind] += 1
            execs[kind] += m
            nbytes[kind] += m * _op_bytes(ins)
    return CollectiveStats(ops, execs, {k: float(v) for k, v in nbytes.items()})


_NOT_BUFFERS = ("parameter", "tuple", "get-tuple-element", "bitcast")


def largest_buffers(text: str, top: int = 5,
                    skip_ops: Iterable[str] = _NOT_BUFFERS) -> list[tuple[float, str, str]]:
    """The ``top`` largest per-device instruction results: ``(bytes, shape, opcode)`` (distinct shapes)."""
    comps, _ = parse_module(text)
    seen: dict[str, tuple[float, str, str]] = {}
    skip = set(skip_ops)
    for instrs in comps.values():
        for ins in instrs:
            if ins.op in skip:
                continue
            for dtype, dims in _ARRAY.findall(ins.shape):
                key = f"{dtype}[{dims}]"
                size = sum(array_bytes(key))
                if key not in seen or seen[key][0] < size:
                    seen[key] = (size, key, ins.op)
    return sorted(seen.values(), reverse=True)[:top]


__all__ = ["COLLECTIVES", "array_bytes", "parse_module", "multipliers", "collective_stats", "CollectiveStats",
           "largest_buffers"]
