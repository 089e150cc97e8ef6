"""Entropy patching tools: threshold calibration, patching figures, precomputed entropies (CLI + API).

The command line over ``bltjax.calibration`` (thresholds), ``bltjax.entropy_scoring`` (entropies
of rows and texts, patch statistics) and ``bltjax.data.entropy_file`` (the precomputed format),
plus the plot data and the ``precompute`` writer; the library names are re-exported here.

    python -m bltjax.entropy_tools calibrate  --entropy-model DIR --data PATH_OR_GLOB [--target-bytes-per-patch 4.5]
                                         [--mode global|monotonic] [--sample-bytes N] [--seq-len L]
                                         [--reset-at-newline] [--max-patch-length M] [--json OUT]
    python -m bltjax.entropy_tools plot       --entropy-model DIR (--text "..." | --file PATH) --out fig.png
                                         [--threshold T] [--mode global|monotonic] [--html]
    python -m bltjax.entropy_tools precompute --entropy-model DIR --data PATH_OR_GLOB --out DIR
                                         [--dtype float16|float32] [--chunk-len 8192] [--overlap N]

``--entropy-model`` is anything ``bltjax.pretrained.load_entropy_model`` reads:
an entropy-only release / training directory, or a BLT checkpoint that carries its entropy model.

Conventions (design §1-§3).  Documents are token streams ``[BOS] bytes [EOS]`` (BOS=1, EOS=2, byte
b -> b+4).  ``H_i`` is the entropy model's uncertainty about token ``i+1``; position ``j >= 2``
starts a patch iff ``H_{j-1} > θ`` (global mode) or ``H_{j-1} - H_{j-2} > θ`` (monotonic mode,
``j >= 3``).  Patch statistics here use ``include_next_token=False`` (the training convention: a
row of ``S`` tokens is cut into patches summing to ``S``), and "bytes per patch" counts tokens
(BOS/EOS included), which is what the trainer's patch budget sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from bltjax.calibration import (  # noqa: F401
    CalibrationResult,
    calibrate_threshold,
    format_calibration,
    format_histogram,
    threshold_candidates,
)
from bltjax.data.entropy_file import PRECOMPUTE_FORMAT, PrecomputedEntropies, load_precomputed  # noqa: F401
from bltjax.entropy_scoring import (  # noqa: F401
    DEFAULT_THRESHOLD,
    PatchStats,
    ThresholdMode,
    context_config,
    patch_stats,
    row_entropies,
    rows_patch_lengths,
    text_entropies,
    threshold_patcher,
)
from bltjax.patcher import trim_lengths
from bltjax.pretrained import EntropyModel, load_entropy_model

# ============================================================================ plot data


def patch_plot_data(model: EntropyModel | str | pathlib.Path, text: str | bytes, *,
                    threshold: Optional[float] = None, mode: Optional[ThresholdMode] = None,
                    reset_at_newline: Optional[bool] = None, max_patch_length: Optional[int] = None,
                    add_bos: bool = True, add_eos: bool = False):
    """Entropies, scores and patch boundaries of one text, as drawn by ``bltjax.viz``.

    ``threshold`` / ``mode`` default to the checkpoint's patcher (its threshold, monotonic if it
    says so).  Boundaries come from ``bltjax.patcher.patch_lengths`` (``include_next_token=False``)
    on the same entropies, so they are exactly the patcher's.
    """
    from bltjax import viz

    if isinstance(model, (str, pathlib.Path)):
        model = load_entropy_model(model)
    stored = model.patcher
    mode = mode or ("monotonic" if stored.monotonicity else "global")
    if threshold is None:
        threshold = stored.threshold if stored.threshold is not None else DEFAULT_THRESHOLD
    pcfg = threshold_patcher(stored, float(threshold), mode, max_patch_length)
    tokens, ent = text_entropies(model, text, add_bos=add_bos, add_eos=add_eos,
                                 reset_at_newline=reset_at_newline)
    lengths = rows_patch_lengths(pcfg, tokens[None], ent[None], np.array([len(tokens)]), jit=True)
    lengths = trim_lengths(lengths)[0]
    lengths = lengths[lengths > 0].astype(np.int32)
    starts = (np.cumsum(lengths) - lengths).astype(np.int32)
    n = len(tokens)
    scores = np.full(n, np.nan, np.float32)
    if mode == "global":
        scores[2:] = ent[1:n - 1]
    else:
        scores[3:] = ent[2:n - 1] - ent[1:n - 2]
    return viz.PatchPlotData(tokens=tokens, labels=tuple(viz.token_labels(tokens)), entropies=ent,
                             scores=scores, threshold=float(threshold), mode=mode,
                             patch_lengths=lengths, boundaries=starts)


def plot_text(model: EntropyModel | str | pathlib.Path, text: str | bytes, out: str | pathlib.Path, *,
              html_out: Optional[str | pathlib.Path] = None, dpi: int = 100, title: Optional[str] = None,
              **kwargs):
    """Compute ``patch_plot_data`` and write the PNG (and optionally the HTML page); return the data."""
    from bltjax import viz

    data = patch_plot_data(model, text, **kwargs)
    fig = viz.plot_patches(data, out, title=title, dpi=dpi)
    del fig
    if html_out is not None:
        pathlib.Path(html_out).write_text(viz.patches_html(data), encoding="utf-8")
    return data


# ============================================================================ precomputed entropies


def _chunk_plan(n_tokens: int, chunk_len: int, overlap: int) -> list[tuple[int, int, int]]:
    """Rows ``(input_start, output_start, output_end)`` covering a document of ``n_tokens``: the
    first row outputs ``[0, chunk_len)``, later rows output ``chunk_len - overlap`` new positions
    after ``overlap`` positions of warm-up context."""
    plan = [(0, 0, min(chunk_len, n_tokens))]
    stride = chunk_len - overlap
    out = plan[0][2]
    while out < n_tokens:
        end = min(out + stride, n_tokens)
        plan.append((out - overlap, out, end))
        out = end
    return plan


def precompute_entropies(model: EntropyModel | str | pathlib.Path, data, out_dir: str | pathlib.Path, *,
                         chunk_len: int = 8192, overlap: Optional[int] = None, batch_size: int = 8,
                         dtype: str = "float16", reset_at_newline: Optional[bool] = None,
                         progress: bool = False) -> dict[str, PrecomputedEntropies]:
    """Compute per-token entropies of a corpus once and store them for training.

    ``data`` is a ``bltjax.data.DataConfig`` or a path/glob spec (-> text files, one document per
    file, invalid UTF-8 allowed).  For every split whose stream the pipeline cuts from (one file for
    split rules stream/document, train and validation for rule "source") writes
    ``out_dir/entropies_<split>.npy`` (1-D, ``dtype``, one value per token of the full stream, as
    ``DataConfig.entropies_path = "out_dir/entropies_{split}.npy"`` expects), ``offsets_<split>.npy``
    (int64 document starts) and one ``index.json``.

    Context: each document is its own context; documents longer than ``chunk_len`` tokens are run
    in rows of ``chunk_len`` whose first ``overlap`` positions (default: the model's sliding window,
    at most half a chunk) only provide context, so values beyond the first chunk are close to, but
    not bit-identical with, a whole-document pass.
    """
    from bltjax.data import DataConfig
    from bltjax.data.pipeline import open_source, resolved_split_rule
    from bltjax.tokenizer import encode_document

    if isinstance(model, (str, pathlib.Path)):
        model = load_entropy_model(model)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if chunk_len < 2:
        raise ValueError(f"chunk_len must be >= 2, got {chunk_len}")
    if overlap is None:
        overlap = min(model.config.sliding_window or 0, chunk_len // 2)
    if not 0 <= overlap < chunk_len:
        raise ValueError(f"overlap must be in [0, chunk_len), got {overlap}")
    cfg = data if isinstance(data, DataConfig) else DataConfig(source="text", path=str(data),
                                                                allow_invalid_utf8=True)
    splits = ("train", "validation") if resolved_split_rule(cfg) == "source" else ("train",)
    from bltjax.storage import LocalMirror, display, is_remote

    remote = is_remote(out_dir)
    mirror = LocalMirror(out_dir) if remote else None  # gs://: written locally, uploaded when complete
    out = mirror.local if remote else pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = "entropies_{split}.npy"
    shown = f"{display(out_dir).rstrip('/')}/{template}" if remote else str(out / template)
    ctx = context_config(model.patcher, reset_at_newline)
    index: dict[str, Any] = {
        "format": PRECOMPUTE_FORMAT, "entropy_model": model.path,
        "entropy_config": dataclasses.asdict(model.config), "dtype": dtype, "chunk_len": chunk_len,
        "overlap": overlap, "reset_context_at_newline": ctx.reset_context_at_newline,
        "entropy_dtype": ctx.entropy_dtype, "data_config": dataclasses.asdict(cfg),
        "entropies_path": shown, "splits": {},
    }
    results = {}
    for split in splits:
        source = open_source(cfg, split)
        n_docs = len(source)
        lengths = np.array([len(source[i]) + 2 for i in range(n_docs)], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arr = np.lib.format.open_memmap(out / f"entropies_{split}.npy", mode="w+", dtype=np.dtype(dtype),
                                        shape=(int(offsets[-1]),))
        digest = hashlib.blake2b(digest_size=16)
        rows: list[np.ndarray] = []
        targets: list[tuple[int, int, int]] = []  # (stream position, row offset, count)

        def flush():
            toks = np.zeros((len(rows), chunk_len), np.int32)
            for k, r in enumerate(rows):
                toks[k, :len(r)] = r
            ent = row_entropies(model, toks, batch_size=batch_size,
                                reset_at_newline=ctx.reset_context_at_newline)
            for k, (pos, off, cnt) in enumerate(targets):
                arr[pos:pos + cnt] = ent[k, off:off + cnt].astype(dtype)  # noqa: F821  (bound before every call)
            rows.clear()
            targets.clear()

        from bltjax.metrics import progress_bar

        for d in progress_bar(range(n_docs), desc=f"entropies ({split})", unit="doc", enabled=progress):
            doc = source[d]
            digest.update(len(doc).to_bytes(8, "little"))
            digest.update(doc)
            toks = encode_document(doc)
            for in_lo, out_lo, out_hi in _chunk_plan(len(toks), chunk_len, overlap):
                rows.append(toks[in_lo:in_lo + chunk_len])
                targets.append((int(offsets[d]) + out_lo, out_lo - in_lo, out_hi - out_lo))
                if len(rows) >= batch_size * 16:
                    flush()
        if rows:
            flush()
        arr.flush()
        del arr
        np.save(out / f"offsets_{split}.npy", offsets)
        index["splits"][split] = {"entropies": f"entropies_{split}.npy", "offsets": f"offsets_{split}.npy",
                                  "n_documents": n_docs, "n_tokens": int(offsets[-1]),
                                  "content_digest": digest.hexdigest()}
        (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        results[split] = load_precomputed(out, split)
    if mirror is not None:
        mirror.close()  # uploads every file, then removes the local copy (the results stay mapped)
        results = {split: dataclasses.replace(r, path=display(out_dir)) for split, r in results.items()}
    return results


# ============================================================================ CLI


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entropy-model", required=True, help="checkpoint directory holding an entropy model")
    p.add_argument("--reset-at-newline", action="store_true",
                   help="restart the entropy context after every newline (paper §4.4)")
    p.add_argument("--batch", type=int, default=8, help="rows per entropy-model call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bltjax.entropy_tools", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("calibrate", help="find the threshold for a target bytes-per-patch")
    _add_model_args(c)
    c.add_argument("--data", required=True, help="files / directories / globs (comma-separated)")
    c.add_argument("--target-bytes-per-patch", type=float, default=4.5)
    c.add_argument("--mode", choices=("global", "monotonic"), default="global")
    c.add_argument("--sample-bytes", type=int, default=1_000_000, help="bytes of data to sample (0: all)")
    c.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: min(8192, model max))")
    c.add_argument("--max-patch-length", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", default=None, help="write the result as JSON here")

    pl = sub.add_parser("plot", help="draw entropies and patch boundaries of a text (paper Figure 4)")
    _add_model_args(pl)
    src = pl.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to patch")
    src.add_argument("--file", help="read the bytes to patch from this file")
    pl.add_argument("--out", required=True, help="PNG path")
    pl.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's")
    pl.add_argument("--mode", choices=("global", "monotonic"), default=None)
    pl.add_argument("--max-patch-length", type=int, default=None)
    pl.add_argument("--html", action="store_true", help="also write OUT with .html: a self-contained page")
    pl.add_argument("--eos", action="store_true", help="append EOS to the text")
    pl.add_argument("--dpi", type=int, default=100)
    pl.add_argument("--title", default=None)

    pr = sub.add_parser("precompute", help="store per-token entropies of a corpus for training")
    _add_model_args(pr)
    pr.add_argument("--data", required=True, help="text files / directories / globs (one document per file)")
    pr.add_argument("--source", choices=("text", "jsonl", "array_record"), default="text")
    pr.add_argument("--val-data", default="", help="separate validation files (split rule 'source')")
    pr.add_argument("--text-split", choices=("file", "blank_lines"), default="file")
    pr.add_argument("--jsonl-field", default="text")
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    pr.add_argument("--chunk-len", type=int, default=8192)
    pr.add_argument("--overlap", type=int, default=None)
    return parser


def _cmd_calibrate(args) -> int:
    model = load_entropy_model(args.entropy_model)
    seq_len = args.seq_len or min(8192, model.config.max_seqlen)
    t0 = time.time()
    res = calibrate_threshold(model, args.data, target=args.target_bytes_per_patch, mode=args.mode,
                              sample_bytes=args.sample_bytes or None, seq_len=seq_len,
                              reset_at_newline=args.reset_at_newline, max_patch_length=args.max_patch_length,
                              batch_size=args.batch, seed=args.seed, progress=True)
    print(format_calibration(res))
    print(f"({time.time() - t0:.1f} s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_plot(args) -> int:
    model = load_entropy_model(args.entropy_model)
    text: str | bytes = args.text if args.text is not None else pathlib.Path(args.file).read_bytes()
    html_out = pathlib.Path(args.out).with_suffix(".html") if args.html else None
    data = plot_text(model, text, args.out, html_out=html_out, dpi=args.dpi, title=args.title,
                     threshold=args.threshold, mode=args.mode, max_patch_length=args.max_patch_length,
                     reset_at_newline=args.reset_at_newline or None, add_eos=args.eos)
    from bltjax.viz import figure_size_px

    w, h = figure_size_px(data.n_positions, args.dpi)
    n, p = data.n_positions, len(data.patch_lengths)
    print(f"{n} tokens -> {p} patches ({n / p:.2f} tokens/patch) at {data.mode} threshold {data.threshold:.6g}")
    print("patch lengths: " + " ".join(str(int(x)) for x in data.patch_lengths))
    print(f"wrote {args.out} ({w}x{h} px)" + (f" and {html_out}" if html_out else ""))
    return 0


def _cmd_precompute(args) -> int:
    from bltjax.data import DataConfig

    model = load_entropy_model(args.entropy_model)
    cfg = DataConfig(source=args.source, path=args.data, val_path=args.val_data, text_split=args.text_split,
                     jsonl_field=args.jsonl_field, allow_invalid_utf8=True)
    t0 = time.time()
    res = precompute_entropies(model, cfg, args.out, chunk_len=args.chunk_len, overlap=args.overlap,
                               batch_size=args.batch, dtype=args.dtype,
                               reset_at_newline=args.reset_at_newline or None, progress=True)
    for split, pre in res.items():
        print(f"{split}: {len(pre)} documents, {pre.entropies.shape[0]:,} tokens -> "
              f"{pathlib.Path(pre.path) / pre.meta['splits'][split]['entropies']}")
    pattern = pathlib.Path(args.out) / "entropies_{split}.npy"
    print(f"({time.time() - t0:.1f} s)  train with: --set data.entropies_path={pattern}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"calibrate": _cmd_calibrate, "plot": _cmd_plot, "precompute": _cmd_precompute}[args.command](args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from bltjax import hugepages
    from bltjax.cli import run_cli

    hugepages.reexec()
    sys.exit(run_cli(main))


__all__ = ["EntropyModel", "load_entropy_model", "context_config", "row_entropies", "text_entropies",
           "threshold_patcher", "rows_patch_lengths", "PatchStats", "patch_stats", "CalibrationResult",
           "threshold_candidates", "calibrate_threshold", "format_histogram", "format_calibration",
           "patch_plot_data", "plot_text", "PrecomputedEntropies", "precompute_entropies", "load_precomputed",
           "main"]
