"""Convert a released / Hugging Face BLT checkpoint into a bltjax checkpoint directory.

    python -m bltjax.convert hf-weights/blt_1b --out checkpoints/blt-1b [--force]
        [--param-dtype bfloat16] [--official-realtime] [--entropy-model-dir DIR]

The output holds ``{"blt": params, "entropy": params}`` (Orbax, via ``bltjax.checkpoint.save_params``)
and metadata ``{"format": "bltjax", "format_version", "config": BLTConfig.to_dict(), "source": ...}``;
``bltjax.load_pretrained(out)`` reads it back.  The config carries every semantic flag (patching
convention, masks, entropy-model context), so the converted model behaves like its source.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np

from bltjax.pretrained import FORMAT, FORMAT_VERSION, read_checkpoint


def convert(src: str | pathlib.Path, out: str | pathlib.Path, *, force: bool = False,
            param_dtype: str = "float32", official_realtime: bool = False,
            entropy_model_dir: Optional[str] = None) -> dict:
    """Read ``src`` (any layout :func:`bltjax.load_pretrained` accepts), write ``out``; return a summary."""
    from bltjax.checkpoint import save_params

    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty (pass --force to overwrite it)")
    layout, cfg, params, entropy = read_checkpoint(src, official_realtime=official_realtime,
                                                   param_dtype=param_dtype, entropy_model_dir=entropy_model_dir)
    bundle = {"blt": params}
    if entropy is not None:
        bundle["entropy"] = entropy
    count = lambda tree: int(sum(np.prod(np.shape(x)) for x in _leaves(tree)))  # noqa: E731
    summary = {
        "source": str(src), "source_layout": layout, "patching_mode": cfg.patcher.mode,
        "patch_convention": "hf (sum N)" if cfg.patcher.patches_sum_to_n else "official (sum N+1)",
        "threshold": cfg.patcher.threshold, "param_dtype": param_dtype,
        "params_blt": count(params), "params_entropy_model": count(entropy) if entropy is not None else 0,
    }
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
                "source": {"path": str(src), "layout": layout, "official_realtime": official_realtime}}
    save_params(out, bundle, metadata, overwrite=out.exists())
    return summary


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bltjax.convert", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="release dir (params.json + consolidated.pth), HF dir, or bltjax dir")
    ap.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    ap.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    ap.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--official-realtime", action="store_true",
                    help="reproduce the official realtime patcher (bf16, 8192-byte flattened chunks)")
    ap.add_argument("--entropy-model-dir", default=None, help="entropy model directory (release layout)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = convert(args.src, args.out, force=args.force, param_dtype=args.param_dtype,
                          official_realtime=args.official_realtime, entropy_model_dir=args.entropy_model_dir)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in summary)
    print(f"wrote {args.out}")
    for k, v in summary.items():
        print(f"  {k:<{width}}  {v:,}" if isinstance(v, int) else f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    from bltjax.cli import run_cli

    sys.exit(run_cli(main))
