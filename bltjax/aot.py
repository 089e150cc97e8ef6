"""``python -m bltjax.aot``: compile the real train step (or the cached decoder) for a TPU topology
from a CPU machine and report its memory, FLOPs, collectives and a step-time estimate per chip;
``python -m bltjax.aot sweep`` compiles a grid of ``--set`` values.  The command line only: the
compiling and reporting live in :mod:`bltjax.aot_report` (whose names are re-exported here), the
sweep in :mod:`bltjax.aot_sweep`.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Optional

from bltjax.aot_report import (  # noqa: F401 -- re-exported
    EXIT_NO_FIT,
    EXIT_OK,
    EXIT_USAGE,
    DoesNotFit,
    _common_args,
    _gib,
    _oom_line,
    build_parser,
    format_report,
    load_target,
    no_fit_line,
    prepare_platform,
    roofline,
    run_one,
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from bltjax import aot_sweep

        return aot_sweep.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.grid or args.out:
        print("error: --grid / --out belong to 'python -m bltjax.aot sweep'", file=sys.stderr)
        return EXIT_USAGE
    prepare_platform(args.topology)
    from bltjax.train_loop import UsageError, one_line

    try:
        report = run_one(args, args.hlo)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except DoesNotFit as e:
        known = ", ".join(f"{k} {_gib(v)}" for k, v in e.parts.items())
        if known:
            print(f"per device, known before compiling: {known}", flush=True)
        print(f"does not fit: {e}", file=sys.stderr, flush=True)
        if args.json:
            no_fit = {"fits": False, "reason": str(e), "parts": e.parts}
            pathlib.Path(args.json).write_text(json.dumps(no_fit, indent=2))
        return EXIT_NO_FIT
    print(format_report(report), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
    if report["memory"]["fits"] is False:
        print(no_fit_line(report), file=sys.stderr, flush=True)
        return EXIT_NO_FIT
    return EXIT_OK


if __name__ == "__main__":
    from bltjax.cli import run_cli

    sys.exit(run_cli(main))
