"""``python -m bltjax.aot sweep``: compile a grid of ``--set`` overrides, one point per worker process.

    python -m bltjax.aot sweep --config experiments/blt_paper.py:1b --topology v5p-128 \\
        --grid mesh.ici_fsdp=64,32 --grid model.remat=dots,full --grid global_batch_size=256,512 \\
        --out sweeps/blt_1b --workers 2

Writes ``OUT/sweep.md`` (table), ``OUT/sweep.json`` (every report) and ``OUT/sweep.png`` (HBM per
device and estimated step time / MFU per point; points that do not fit are marked), rewritten after
every finished point, so an interrupted sweep keeps what it compiled.  A point that fails (does not
fit, bad mesh or batch) is recorded with its one-line reason; the sweep goes on.
Exit code 0 when at least one point fits, 3 otherwise, 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

from bltjax import aot_report as aot


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bltjax.aot sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    aot._common_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to try for one config field (repeatable: the grid is their product)")
    p.add_argument("--out", required=True, help="directory for sweep.md / sweep.json / sweep.png")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="compiles in parallel, one process each (default: a compile keeps about two cores busy, "
                        "so half the cores, at most 4)")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)  # accepted, unused (sweep.json is written)
    p.add_argument("--hlo", default=None, help=argparse.SUPPRESS)
    return p


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def parse_grid(items: Sequence[str]) -> list[list[str]]:
    """``["a=1,2", "b=x,y"]`` -> every combination as ``--set`` lists (``[["a=1", "b=x"], ...]``)."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer (Linux): the kernel ends a worker whose sweep process is gone, so a killed
    sweep leaves no compile running (each holds gigabytes of RAM and the CPU for minutes)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers end when their current compile does
        return
    if os.getppid() != parent_pid:  # the sweep died while this worker was starting
        os._exit(1)


def run_point(argv: list[str], point: list[str]) -> dict:
    """Worker: compile one point; a dict with ``status`` "fits" / "no fit" / "error" and the report."""
    args = aot.build_parser().parse_args(argv)
    aot.prepare_platform(args.topology)
    from bltjax.train_loop import UsageError, one_line

    args.overrides = list(args.overrides) + point
    t0 = time.perf_counter()
    try:
        report = aot.run_one(args)
    except UsageError as e:
        return {"point": point, "status": "error", "reason": one_line(e)}
    except aot.DoesNotFit as e:
        return {"point": point, "status": "no fit", "reason": str(e), "parts": e.parts, "needed": e.needed_bytes}
    except Exception as e:  # noqa: BLE001 -- one broken point must not end the sweep
        return {"point": point, "status": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    fits = report["memory"]["fits"]
    status = "no fit" if fits is False else "fits"
    return {"point": point, "status": status, "report": report, "wall_s": round(time.perf_counter() - t0, 1),
            "reason": aot.no_fit_line(report) if fits is False else ""}


def _row(res: dict) -> dict[str, Any]:
    r = res.get("report")
    est = (r or {}).get("estimate") or {}
    mem = (r or {}).get("memory") or {}
    return {"point": ", ".join(res["point"]) or "(config as is)", "status": res["status"],
            "gib": mem["total"] / (1 << 30) if mem else (res["needed"] / (1 << 30) if res.get("needed") else None),
            "step_ms": est["step_s"] * 1e3 if "step_s" in est else None,
            "mfu": est.get("mfu"), "coll_gib": r["collective_bytes"] / (1 << 30) if r else None,
            "reason": res.get("reason", "")}


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def write_markdown(results: list[dict], header: str, path: pathlib.Path) -> None:
    lines = [header, "",
             "| point | fits | GiB / device | est. step (ms) | est. MFU | collectives GiB / device | note |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        r = _row(res)
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        fits = {"fits": "yes", "no fit": "NO"}.get(r["status"], "error")
        mfu_s = _fmt(mfu, ".1f") + ("" if mfu is None else " %")
        lines.append(f"| {r['point']} | {fits} | {_fmt(r['gib'], '.1f')} | {_fmt(r['step_ms'], '.0f')} | {mfu_s} "
                     f"| {_fmt(r['coll_gib'], '.1f')} | {r['reason']} |")
    lines += ["", "Step time and MFU are roofline estimates (peak FLOP/s, HBM and ICI bandwidth, perfect overlap), "
              "not measurements."]
    path.write_text("\n".join(lines) + "\n")


def write_chart(results: list[dict], hbm_gib: Optional[float], title: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [_row(r) for r in results]
    labels = [short_label(r["point"]) for r in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 1.7 * len(rows) + 2), 7), sharex=True)
    colors = ["tab:blue" if r["status"] == "fits" else "tab:red" for r in rows]
    ax1.bar(x, [r["gib"] or 0 for r in rows], color=colors)
    for i, r in enumerate(rows):
        if r["status"] != "fits":
            ax1.text(i, (r["gib"] or 0) + 0.5, "does not fit" if r["status"] == "no fit" else "error",
                     ha="center", color="tab:red", fontsize=8, rotation=90, va="bottom")
    if hbm_gib:
        ax1.axhline(hbm_gib, color="k", ls="--", lw=1, label=f"HBM {hbm_gib:.1f} GiB")
        ax1.legend(loc="upper left")
    ax1.set_ylabel("GiB per device")
    ax1.set_title(title)
    ax2.bar(x, [r["step_ms"] or 0 for r in rows], color=colors)
    ax2.set_ylabel("est. step time (ms)")
    ax3 = ax2.twinx()
    ax3.plot(list(x), [100 * r["mfu"] if r["mfu"] is not None else float("nan") for r in rows], "ko-")
    ax3.set_ylabel("est. MFU (%)")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(labels, fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def short_label(point: str) -> str:
    """``"model.remat=dots, global_batch_size=256"`` -> ``"remat=dots\nglobal_batch_size=256"`` (chart ticks)."""
    return "\n".join(item.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + item.split("=", 1)[1] if "=" in item else item
                     for item in point.split(", "))


def write_outputs(results: list[Optional[dict]], argv: list[str], args, out: pathlib.Path, elapsed_s: float) -> list:
    """(Re)write sweep.json / sweep.md / sweep.png from the points finished so far; returns them."""
    done = [r for r in results if r is not None]
    first = next((r["report"] for r in done if "report" in r), None)
    hbm = first["memory"]["hbm"] / (1 << 30) if first and first["memory"]["hbm"] else args.hbm_gib
    header = f"# bltjax.aot sweep: {args.config or 'default'} on {args.topology}" + \
             (f" x {args.num_slices} slices" if args.num_slices > 1 else "") + f" ({args.mode})"
    summary = (f"{len(done)} of {len(results)} points in {elapsed_s / 60:.1f} minutes of wall time, "
               f"{args.workers} worker(s), on {os.cpu_count()} CPU cores.")
    (out / "sweep.json").write_text(json.dumps({"argv": argv, "points": len(results), "wall_s": round(elapsed_s, 1),
                                                "workers": args.workers, "results": done}, indent=2))
    write_markdown(done, header + "\n\n" + summary, out / "sweep.md")
    write_chart(done, hbm, header.lstrip("# "), out / "sweep.png")
    return done


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="compiling", unit="point", file=sys.stderr)
    except ImportError:  # pragma: no cover -- tqdm is a dependency
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    try:
        points = parse_grid(args.grid)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return aot.EXIT_USAGE
    worker_argv = [a for a in _strip(argv, {"--grid", "--out", "--workers"})]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    aot.prepare_platform(args.topology)  # spawned workers inherit the environment
    results: list[Optional[dict]] = [None] * len(points)
    bar = _progress(len(points))
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=ctx,
                                initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_point, worker_argv, pt): i for i, pt in enumerate(points)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as e:  # noqa: BLE001 -- a crashed worker
                results[i] = {"point": points[i], "status": "error", "reason": f"worker: {type(e).__name__}: {e}"}
            write_outputs(results, argv, args, out, time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{', '.join(points[i])}: {results[i]['status']}")
    if bar is not None:
        bar.close()
    done = write_outputs(results, argv, args, out, time.perf_counter() - t0)
    print((out / "sweep.md").read_text(), end="")
    return aot.EXIT_OK if any(r["status"] == "fits" for r in done) else aot.EXIT_NO_FIT


def _strip(argv: Sequence[str], options: set[str]) -> list[str]:
    """``argv`` without the sweep-only options (``--opt value`` and ``--opt=value`` forms)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in options:
            skip = "=" not in a
            continue
        out.append(a)
    return out


__all__ = ["parse_grid", "run_point", "write_markdown", "write_chart", "write_outputs", "short_label", "main"]
