"""Where the time of a train step goes: per-op times of the compiled step, with the matmul FLOPs of each.

    python benchmarks/profile_train_step.py [--steps 3] [--top 25] [--out benchmarks/results/train_step_profile.json]

Same model, batch and optimizer as ``benchmarks/train_step.py`` (design §19).  Traces ``--steps`` steps
with ``jax.profiler``, reads the per-op durations from the trace and joins them by name with the
optimised HLO of the step, where every matmul (``dot``) gives its FLOPs.  Prints the slowest ops with
their achieved GFLOP/s and totals per kind (projections/FFN, local attention, global attention, and
everything that is not a matmul).  Op times add up across threads, so their sum can exceed the wall
time of a step.  Op names are XLA:CPU's; on GPU the join finds fewer ops.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_step import spec19_setup  # noqa: E402


def _dims(shape: str) -> list[int]:
    m = re.match(r"\w+\[([\d,]*)\]", shape)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def hlo_ops(hlo: str) -> dict[str, dict]:
    """``{op name: {shape, called computation, dots: [(flops, description, output rank)]}}`` of an HLO
    module."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if m:
            current = comps.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    shapes, ops = {}, {}
    for lines in comps.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(", line)
            if m:
                shapes[m.group(1)] = m.group(2)
                called = re.search(r"calls=%([\w.-]+)", line)
                ops[m.group(1)] = {"shape": m.group(2), "calls": called.group(1) if called else None}

    def dots(comp: str) -> list[tuple[int, str, int]]:
        out = []
        for line in comps.get(comp, []):
            m = re.match(r"\s*(?:ROOT )?%\S+ = (\S+) dot\(%(\S+), %(\S+)\)", line)
            if not m:
                continue
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
            lhs = _dims(shapes[m.group(2)])
            k = 1
            for d in (int(x) for x in contracting.split(",") if x):
                k *= lhs[d]
            n = 1
            for d in _dims(m.group(1)):
                n *= d
            desc = f"{shapes[m.group(2)]} x {shapes[m.group(3)]} -> {m.group(1)}"
            out.append((2 * n * k, re.sub(r"\{[\d,]*\}", "", desc), len(_dims(m.group(1)))))
        return out

    for op in ops.values():
        op["dots"] = dots(op["calls"]) if op["calls"] else []
    return ops


def trace_events(trace_dir: str) -> tuple[dict[str, float], dict[str, int]]:
    """Total microseconds and number of events per event name in the trace under ``trace_dir``."""
    path = next(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))
    micros: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for event in json.load(gzip.open(path))["traceEvents"]:
        if event.get("ph") == "X" and "dur" in event:
            micros[event["name"]] += event["dur"]
            counts[event["name"]] += 1
    return micros, counts


def kind_of(dots: list[tuple[int, str, int]], n_patches: int) -> str:
    """Projections are 2-D matmuls (``layers.linear`` flattens); attention matmuls are batched."""
    if not dots:
        return "not a matmul"
    if all(rank == 2 for _, _, rank in dots):
        return "projections / FFN / head"
    global_attn = any(f"{n_patches},{n_patches}" in desc for _, desc, _ in dots)
    return "attention (global)" if global_attn else "attention (local, cross)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "train_step_profile.json"))
    args = ap.parse_args(argv)

    setup = spec19_setup(batch=4, seq_len=1024, precision="float32")
    with jax.set_mesh(setup.mesh):
        for _ in range(3):  # compile and warm up
            jax.block_until_ready(setup.train_once())
        hlo = setup.steps.train.lower(setup.state, setup.batch, None).compile().as_text()
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir)
            for _ in range(args.steps):
                jax.block_until_ready(setup.train_once())
            jax.profiler.stop_trace()
            micros, counts = trace_events(trace_dir)

    ops = hlo_ops(hlo)
    n_patches = 1 + 1024 // 4
    rows = []
    kind_ms, kind_gflop = collections.Counter(), collections.Counter()
    for name, total in micros.items():
        op = ops.get(name)
        if op is None:
            continue
        calls = counts[name] / args.steps  # ops in the scanned global layers run once per layer
        row = {"op": name, "ms": total / 1e3 / args.steps, "calls": calls, "shape": op["shape"],
               "gflop": sum(f for f, _, _ in op["dots"]) * calls / 1e9, "kind": kind_of(op["dots"], n_patches),
               "dots": "; ".join(d for _, d, _ in op["dots"])}
        rows.append(row)
        kind_ms[row["kind"]] += row["ms"]
        kind_gflop[row["kind"]] += row["gflop"]
    rows.sort(key=lambda r: -r["ms"])
    print(f"{'ms/step':>8} {'GFLOP/s':>8}  op, output shape, matmuls")
    for r in rows[: args.top]:
        rate = f"{r['gflop'] / (r['ms'] / 1e3):8.1f}" if r["gflop"] else " " * 8
        print(f"{r['ms']:8.1f} {rate}  {r['op']} {re.sub(r'{[0-9,]*}', '', r['shape'])} {r['dots'][:90]}")
    print("\nper kind (op time per step; ops on both threads add up):")
    summary = {}
    for kind, ms in kind_ms.most_common():
        gflop = kind_gflop[kind]
        summary[kind] = {"op_ms_per_step": ms, "gflop_per_step": gflop}
        rate = f"{gflop / (ms / 1e3):6.1f} GFLOP/s" if gflop else ""
        print(f"  {kind:26s} {ms:8.1f} ms  {gflop:6.2f} GFLOP  {rate}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "ops": rows[: args.top], "steps": args.steps}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from bltjax import hugepages

    hugepages.reexec()
    sys.exit(main())
