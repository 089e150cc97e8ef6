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
_INSTR = re.compile(r"^\s+(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
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
    root: bool = False  # the computation's ROOT instruction


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
            comps[current].append(Instr(m.group(2), m.group(3), m.group(4), m.group(5), bool(m.group(1))))
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


# ---------------------------------------------------------------------------------------------- HBM traffic
_LAYOUT_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_NAME_REF = re.compile(r"%([\w.\-]+)")
_CONTROL_REFS = re.compile(r"\b(condition|body|true_computation|false_computation)=%?([\w.\-]+)")
# Instructions that move no data of their own (views, control flow, the "done" half of async pairs).
_NO_TRAFFIC = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "add-dependency", "opt-barrier", "copy-done", "call-done",
               "async-done", "all-gather-done", "all-reduce-done", "collective-permute-done", "send-done",
               "recv-done"}


def hbm_bytes(shape_text: str) -> float:
    """Bytes of the arrays of a shape string that live in HBM (a TPU layout's ``S(n)``, n > 0, is on-chip),
    with the two most-minor dimensions padded to the layout's first tile (``T(8,128)``: TPU arrays are
    stored in whole tiles, so ``f32[500002,16]`` takes 8 times its element count)."""
    total = 0.0
    for dtype, dims, layout in _LAYOUT_ARRAY.findall(shape_text):
        if dtype not in DTYPE_BYTES or re.search(r"S\([1-9]", layout or ""):
            continue
        shape = [int(d) for d in dims.split(",") if d]
        tile = re.search(r":T\(([\d,]+)\)", layout or "")
        order = re.match(r"\{([\d,]*)", layout or "")
        if tile and order and order.group(1):
            minor_first = [int(i) for i in order.group(1).split(",")]
            for t, axis in zip(reversed([int(x) for x in tile.group(1).split(",")]), minor_first):
                shape[axis] = -(-shape[axis] // t) * t
        n = 1
        for d in shape:
            n *= d
        total += n * DTYPE_BYTES[dtype]
    return total


def _control_computations(comps: dict[str, list[Instr]], entry: str) -> set[str]:
    """The entry computation and those it runs as control flow (loop bodies and conditions, called
    computations, conditional branches): not fused computations, whose values stay on chip."""
    seen, todo = set(), [entry]
    while todo:
        comp = todo.pop()
        if comp in seen or comp not in comps:
            continue
        seen.add(comp)
        for ins in comps[comp]:
            todo += [c for _, c in _CONTROL_REFS.findall(ins.rest)]
            if ins.op == "call":
                todo += re.findall(r"to_apply=%?([\w.\-]+)", ins.rest)
            for group in _BRANCHES.findall(ins.rest):
                todo += [c.strip().lstrip("%") for c in group.split(",")]
    return seen


def _operands(ins: Instr) -> list[str]:
    return _NAME_REF.findall(ins.rest.split("), ", 1)[0])


_IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}  # op: index of the operand holding the update
_PARTIAL_READS = ("slice", "dynamic-slice", "gather")  # read only what they return of their first operand


class _Fusions:
    """HBM bytes of fusions, from a look inside their computations (nested fusions included): an operand
    the fusion only slices (or gathers from) is read for the slices only, and a result built by an in-place
    ``dynamic-update-slice`` (a scan writing one layer into a stacked buffer) writes the update only."""

    def __init__(self, comps: dict[str, list[Instr]], sizes: dict[str, float]) -> None:
        self.comps, self.sizes = comps, sizes
        self.users: dict[str, dict[str, list[Instr]]] = {}
        self.params: dict[str, dict[int, str]] = {}

    def _index(self, comp: str) -> None:
        if comp in self.users:
            return
        users: dict[str, list[Instr]] = defaultdict(list)
        params: dict[int, str] = {}
        for i in self.comps.get(comp, []):
            if i.op == "parameter":
                params[int(re.match(r"(\d+)", i.rest).group(1))] = i.name
            for name in _operands(i):
                users[name].append(i)
        self.users[comp], self.params[comp] = users, params

    def read(self, comp: str, name: str, full: float, depth: int = 0) -> float:
        """Bytes of value ``name`` (``full`` bytes) that computation ``comp`` reads."""
        self._index(comp)
        total = 0.0
        for u in self.users[comp].get(name, []):
            ops = _operands(u)
            if u.op in _PARTIAL_READS and ops[0] == name:  # reads the slice / rows it takes
                total += self.sizes.get(u.name, 0.0)
            elif u.op == "bitcast" and depth < 16:
                total += self.read(comp, u.name, full, depth + 1)
            elif u.op == "fusion" and depth < 16:
                inner = _called(u)
                self._index(inner)
                total += sum(self.read(inner, self.params[inner].get(j, ""), full, depth + 1)
                             for j, n in enumerate(ops) if n == name)
            elif u.op in _IN_PLACE and ops[0] == name and u.name in self.outputs(comp):
                continue  # the buffer updated in place
            else:
                return full
        return min(total, full)

    def outputs(self, comp: str) -> dict[str, Instr]:
        """The instructions a fusion writes out: its ROOT, or the elements of a ROOT tuple."""
        by_name = {i.name: i for i in self.comps.get(comp, [])}
        root = next((i for i in self.comps.get(comp, []) if i.root), None)
        if root is None:
            return {}
        names = _operands(root) if root.op == "tuple" else [root.name]
        return {n: by_name[n] for n in names if n in by_name}

    def traffic(self, ins: Instr) -> float:
        comp = _called(ins)
        self._index(comp)
        outs = self.outputs(comp)
        if any(o.op in _IN_PLACE for o in outs.values()):  # written: the updates, and the other outputs
            total = sum(self.sizes.get(_operands(o)[_IN_PLACE[o.op]], 0.0) if o.op in _IN_PLACE else
                        self.sizes.get(o.name, 0.0) for o in outs.values())
        else:
            total = self.sizes[ins.name]
        for j, name in enumerate(_operands(ins)):
            full = self.sizes.get(name, 0.0)
            total += self.read(comp, self.params[comp].get(j, ""), full) if full else 0.0
        return total


def _called(ins: Instr) -> str:
    m = re.search(r"calls=%?([\w.\-]+)", ins.rest)
    return m.group(1) if m else ""


def hbm_traffic(text: str, loops: bool = True) -> float:
    """Bytes read and written in HBM per execution of the module, per device: every top-level
    instruction (a fusion, a matmul, a copy, a collective...) reads its operands and writes its result,
    times the trip counts of the loops around it (``loops=False``: each loop body once, as XLA's own
    cost analysis counts).  Slicing reads only the slice and an in-place update writes only the update
    (:class:`_Fusions`); on-chip buffers (``S(1)`` layouts) are left out."""
    comps, entry = parse_module(text)
    mult = multipliers(comps, entry) if loops else {}
    sizes = {ins.name: hbm_bytes(ins.shape) for instrs in comps.values() for ins in instrs}
    fusions = _Fusions(comps, sizes)
    total = 0.0
    for comp in _control_computations(comps, entry):
        m = mult.get(comp, 1)
        for ins in comps[comp]:
            if ins.op in _NO_TRAFFIC:
                continue
            ops = _operands(ins)
            if ins.op == "fusion":
                total += m * fusions.traffic(ins)
            elif ins.op in _PARTIAL_READS:  # the slice / rows taken, and the indices
                total += m * (2 * sizes[ins.name] + sum(sizes.get(n, 0.0) for n in ops[1:]))
            elif ins.op in _IN_PLACE and len(ops) > _IN_PLACE[ins.op]:  # the update, read and written
                total += m * (2 * sizes.get(ops[_IN_PLACE[ins.op]], 0.0) + sum(sizes.get(n, 0.0) for n in ops[1:]))
            else:
                total += m * (sizes[ins.name] + sum(sizes.get(n, 0.0) for n in ops))
    return total


# ---------------------------------------------------------------------------------------------- matmul FLOPs
_DIMS = re.compile(r"[a-z][a-z0-9]*\[([0-9,]*)\]")


def _shape_dims(shape_text: str) -> list[int]:
    m = _DIMS.search(shape_text)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _matmul_flops(ins: Instr, shapes: dict[str, str]) -> float:
    """2 x output elements x contracted size of a ``dot`` or a ``convolution`` (XLA's TPU backend
    prints matmuls as convolutions: ``dim_labels=bf_io->bf``)."""
    ops = _operands(ins)
    out = 1
    for d in _shape_dims(ins.shape):
        out *= d
    if ins.op == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.rest)
        lhs = _shape_dims(shapes.get(ops[0], "")) if ops else []
        k = 1
        for d in (int(x) for x in (contracting.group(1) if contracting else "").split(",") if x):
            k *= lhs[d] if d < len(lhs) else 1
        return 2.0 * out * k
    labels = re.search(r"dim_labels=\w+_(\w+)->\w+", ins.rest)
    rhs = _shape_dims(shapes.get(ops[1], "")) if len(ops) > 1 else []
    if not labels or len(labels.group(1)) != len(rhs):
        return 0.0
    k = 1
    for label, d in zip(labels.group(1), rhs):
        k *= 1 if label == "o" else d  # input features x window
    return 2.0 * out * k


def matmul_flops(text: str, loops: bool = True) -> float:
    """FLOPs of every matmul (``dot`` / ``convolution``) of the module, fused or not, per device, times
    the trip counts of the loops around it.  Pallas kernels (``custom-call``) are not seen."""
    comps, entry = parse_module(text)
    mult = multipliers(comps, entry) if loops else {}
    shapes = {ins.name: ins.shape for instrs in comps.values() for ins in instrs}
    return float(sum(mult.get(comp, 1) * _matmul_flops(ins, shapes)
                     for comp, instrs in comps.items() for ins in instrs if ins.op in ("dot", "convolution")))


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
           "largest_buffers", "hbm_traffic", "hbm_bytes",
           "matmul_flops"]
