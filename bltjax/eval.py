"""Evaluation: bits per byte, patch sizes and FLOPs per byte of a checkpoint on text files.

    python -m bltjax.eval --checkpoint DIR --data PATH_OR_GLOB [--seq-len L] [--batch B]
                          [--max-bytes N] [--threshold T] [--mode global|monotonic] [--json OUT]
    python -m bltjax.eval --checkpoint runs/default        # a training run: its whole validation split
    python -m bltjax.eval --checkpoint DIR --data udhr/txt --report --out-dir OUT

Without ``--data``: the trainer's validation split of a training workdir, in windows of the run's seq_len.

Works for BLT checkpoints (patched with the checkpoint's own patcher and entropy model) and for
entropy-only checkpoints (bits per byte of the entropy LM itself; patch statistics from entropy
patching at the checkpoint's threshold, or ``--threshold``).

Metric (paper Eq. 18, official ``eval_ppl_on_path``, design §11): every file is its own token stream
(each document ``[BOS] bytes [EOS]``), cut into windows of ``seq_len + 1`` tokens that overlap by
one (``x = w[:-1]``, ``y = w[1:]``: every token after the first is predicted exactly once);
``bpb = Σ CE(logits, y) / ln 2 / n`` where the sum and ``n`` run over all non-padding targets
(bytes and EOS; padding id 0 excluded).  Patch statistics count the patches that start inside the
``x`` tokens (the BLT input), "bytes per patch" = ``x`` tokens / patches (BOS/EOS included).

``--report`` adds, per file, bytes per character (UTF-8 characters; an invalid byte counts as one
character) and patches per character, written as ``report.md``, ``report.png`` and
``report.json`` in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import (
    BLTConfig,
    PatcherConfig,
    TransformerConfig,
    mean_causal_context,  # noqa: F401  (re-exported)
)
from bltjax.data.documents import encode_document, read_files
from bltjax.data.pipeline import BYTE_OFFSET, split_tokens, token_windows
from bltjax.entropy_scoring import DEFAULT_THRESHOLD, context_config, threshold_patcher
from bltjax.model import blt as blt_model
from bltjax.model import entropy_model as entropy_lm
from bltjax.patcher import patch_lengths
from bltjax.pretrained import LoadedCheckpoint, open_checkpoint
from bltjax.storage import LocalMirror, as_path

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class FileEval:
    """Sums for one file (or the total): everything else is derived from them."""

    name: str
    file_bytes: int = 0  # raw bytes of the documents
    n_chars: int = 0  # UTF-8 characters (invalid bytes count one each)
    n_targets: int = 0  # predicted tokens counted in bpb (non-padding targets)
    ce_nats: float = 0.0  # summed cross-entropy (natural log)
    n_tokens: int = 0  # input tokens (x) covered by patch statistics
    n_patches: int = 0  # patches starting inside those tokens (0: no patch statistics)
    overflow_rows: int = 0  # windows that needed more than max_patches patches (BLT)
    flops_per_byte: Optional[float] = None  # inference (forward) FLOPs per byte at this patch size

    @property
    def bits_per_byte(self) -> float:
        return self.ce_nats / LN2 / max(self.n_targets, 1)

    @property
    def avg_patch_size(self) -> Optional[float]:
        return self.n_tokens / self.n_patches if self.n_patches else None

    @property
    def bytes_per_char(self) -> float:
        return self.file_bytes / max(self.n_chars, 1)

    @property
    def patches_per_char(self) -> Optional[float]:
        return self.n_patches / max(self.n_chars, 1) if self.n_patches else None

    def add(self, other: FileEval) -> None:
        for f in ("file_bytes", "n_chars", "n_targets", "ce_nats", "n_tokens", "n_patches", "overflow_rows"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(bits_per_byte=self.bits_per_byte, avg_patch_size=self.avg_patch_size,
                 bytes_per_char=self.bytes_per_char, patches_per_char=self.patches_per_char)
        return d


@dataclasses.dataclass
class EvalReport:
    """Per-file results and their total for one checkpoint."""

    checkpoint: str
    kind: str  # "blt" | "entropy"
    seq_len: int
    batch: int
    patcher: Optional[dict]
    files: list[FileEval]
    total: FileEval
    train_flops_per_byte: Optional[float] = None
    entropy_flops_per_byte: Optional[float] = None  # forward cost of the entropy model per byte
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(checkpoint=self.checkpoint, kind=self.kind, seq_len=self.seq_len, batch=self.batch,
                    patcher=self.patcher, total=self.total.to_dict(), files=[f.to_dict() for f in self.files],
                    train_flops_per_byte=self.train_flops_per_byte,
                    entropy_flops_per_byte=self.entropy_flops_per_byte, seconds=self.seconds)


# ----------------------------------------------------------------------------- FLOPs


def lm_flops_per_byte(cfg: TransformerConfig, seq_len: int, training: bool = False) -> float:
    """Forward (or training, 3x) FLOPs per byte of a plain byte LM: ``cfg.flops_per_byte`` (bltjax.config)."""
    return cfg.flops_per_byte(seq_len, training=training)


# ----------------------------------------------------------------------------- windows


def count_chars(data: bytes) -> int:
    """UTF-8 characters in ``data``; a byte that is not part of a valid character counts as one."""
    try:
        return len(data.decode("utf-8"))
    except UnicodeDecodeError:
        from bltjax.viz import split_utf8

        return len(split_utf8(data))


def file_windows(docs: Sequence[bytes], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of one file's token stream: ``(x int32 [W, L], y int32 [W, L], n_x int32 [W])``.

    Window ``i`` is ``stream[i*L : i*L + L + 1]`` (overlap of one token), right-padded with 0;
    ``n_x`` = real tokens in ``x``.  Same layout as the training pipeline's windows.
    """
    return token_windows(np.concatenate([encode_document(d) for d in docs]), seq_len)


# ----------------------------------------------------------------------------- scoring (jit)


def _ce_per_row(logits_blv: jax.Array, targets_bl: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy and target count per row; padding targets (id 0) excluded."""
    logp = jax.nn.log_softmax(logits_blv.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, targets_bl[..., None], axis=-1)[..., 0]
    mask = targets_bl != 0
    return jnp.sum(jnp.where(mask, ce, 0.0), axis=1), jnp.sum(mask, axis=1, dtype=jnp.int32)


def _patches_per_row(lengths_bp: jax.Array, n_x_b: jax.Array) -> jax.Array:
    """Patches that start inside the first ``n_x`` tokens of each row."""
    starts = jnp.cumsum(lengths_bp, axis=1) - lengths_bp
    return jnp.sum((lengths_bp > 0) & (starts < n_x_b[:, None]), axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "ecfg", "pcfg", "ctx", "max_patches"))
def score_blt(params, entropy_params, x_bl, y_bl, n_x_b, *, cfg: BLTConfig, ecfg: Optional[TransformerConfig],
              pcfg: PatcherConfig, ctx: PatcherConfig, max_patches: int):
    """One batch through a BLT: patch as the trainer does, forward, score.

    Patching is the model layout of training (``patcher.model_patch_lengths``: rows cover ``N + 1``
    positions, first patch 1, static mode ``[1, ps, ps, ...]``); the padding of a file's last window is
    kept out of the patches (``lengths_b``), which cannot change any real position's logits since the
    model is causal.  Returns per-row ``(ce_sum, n_targets, n_patches, overflow)``.
    """
    model = dataclasses.replace(cfg, entropy_model=ecfg) if pcfg.mode == "entropy" else cfg
    lengths, overflow = blt_model.patch_lengths(model, entropy_params, x_bl, patcher_cfg=pcfg, context=ctx,
                                                max_patches=max_patches, lengths_b=n_x_b)
    logits = blt_model.forward(params, cfg, x_bl, lengths)
    ce, n = _ce_per_row(logits, y_bl)
    return ce, n, _patches_per_row(lengths, n_x_b), overflow


@functools.partial(jax.jit, static_argnames=("ecfg", "pcfg", "ctx"))
def score_entropy_lm(params, x_bl, y_bl, n_x_b, *, ecfg: TransformerConfig, pcfg: Optional[PatcherConfig],
                     ctx: PatcherConfig):
    """One batch through an entropy (byte) LM: score, and patch statistics when ``pcfg`` is given."""
    logits = entropy_lm.forward(params, ecfg, x_bl)
    ce, n = _ce_per_row(logits, y_bl)
    if pcfg is None:
        return ce, n, jnp.zeros_like(n), jnp.zeros(n.shape, bool)
    if ctx == context_config(PatcherConfig()):  # same context as the forward pass: reuse its logits
        ent = entropy_lm.entropies_from_logits(logits)
    else:
        ent = entropy_lm.compute_entropies(params, ecfg, ctx, x_bl)
    lengths, overflow = patch_lengths(pcfg, x_bl, ent, include_next_token=False, lengths_b=n_x_b)
    return ce, n, _patches_per_row(lengths, n_x_b), overflow


# ----------------------------------------------------------------------------- evaluation


def resolve_patcher(ck: LoadedCheckpoint, threshold: Optional[float] = None,
                    mode: Optional[str] = None) -> Optional[PatcherConfig]:
    """The patcher to evaluate with: the checkpoint's, with an optional threshold / mode override.

    For an entropy-only checkpoint whose stored patcher is not entropy-based (entropy models are
    trained with byte patching), entropy patching at the stored (else default) threshold is used
    for the statistics.
    """
    pcfg = ck.patcher
    if ck.is_blt and pcfg.mode != "entropy":
        if threshold is not None or mode is not None:
            raise ValueError(f"--threshold/--mode need an entropy patcher; this checkpoint uses {pcfg.mode!r}")
        return pcfg
    if ck.entropy_params is None:
        raise ValueError(f"{ck.path}: entropy patching needs an entropy model, none found in the checkpoint")
    if pcfg.mode == "entropy" and threshold is None and mode is None:
        return pcfg
    if pcfg.mode == "entropy" and pcfg.threshold is None and threshold is None:
        return pcfg  # fixed patch count: nothing to override
    stored_mode = "monotonic" if (pcfg.mode == "entropy" and pcfg.monotonicity) else "global"
    theta = threshold if threshold is not None else (pcfg.threshold if pcfg.threshold is not None
                                                     else DEFAULT_THRESHOLD)
    return threshold_patcher(pcfg, theta, mode or stored_mode)


def evaluate(ck: LoadedCheckpoint, files: Sequence[tuple[str, Sequence[bytes] | np.ndarray]], *, seq_len: int,
             batch: int = 8, threshold: Optional[float] = None, mode: Optional[str] = None,
             max_patches: Optional[int] = None, progress: bool = False) -> EvalReport:
    """Evaluate ``ck`` on ``files`` = ``[(name, [document bytes, ...] or a token array), ...]`` (module doc)."""
    t0 = time.time()
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not files:
        raise ValueError("nothing to evaluate (no files)")
    pcfg = resolve_patcher(ck, threshold, mode)
    ctx = context_config(pcfg if pcfg is not None else PatcherConfig())
    if ck.is_blt:
        cfg = ck.config
        if seq_len > cfg.max_encoder_seq_length:
            raise ValueError(f"seq_len {seq_len} exceeds the model's max_encoder_seq_length "
                             f"{cfg.max_encoder_seq_length}")
        # As many patches as the global model takes (training caps them lower for speed and counts
        # overflows; an evaluation should see the patcher's real output).  Static: the exact count.
        from bltjax.train_step import max_patches_for

        p_max = max_patches or pcfg.max_patches or (
            max_patches_for(dataclasses.replace(cfg, patcher=pcfg), seq_len) if pcfg.mode == "static"
            else min(seq_len + 1, cfg.max_seqlen + 1))
        fn = functools.partial(score_blt, ck.params, ck.entropy_params, cfg=cfg, ecfg=ck.entropy_config,
                               pcfg=pcfg, ctx=ctx, max_patches=int(p_max))
        kind = "blt"
    else:
        if ck.entropy_params is None or ck.entropy_config is None:
            raise ValueError(f"{ck.path}: neither a BLT nor an entropy model found")
        fn = functools.partial(score_entropy_lm, ck.entropy_params, ecfg=ck.entropy_config, pcfg=pcfg, ctx=ctx)
        kind = "entropy"

    xs, ys, nxs, owner = [], [], [], []
    results = []
    for k, (name, docs) in enumerate(files):
        if isinstance(docs, np.ndarray):  # a ready token stream (e.g. a training run's validation split)
            stream, docs = docs.astype(np.int32), [(docs[docs >= BYTE_OFFSET] - BYTE_OFFSET).astype(np.uint8).tobytes()]
        else:
            docs = [bytes(d) for d in docs]
            stream = np.concatenate([encode_document(d) for d in docs])
        results.append(FileEval(name=name, file_bytes=sum(len(d) for d in docs),
                                n_chars=sum(count_chars(d) for d in docs)))
        x, y, n_x = token_windows(stream, seq_len)
        xs.append(x), ys.append(y), nxs.append(n_x), owner.append(np.full(len(x), k))
    x_all, y_all, nx_all, own = (np.concatenate(a) for a in (xs, ys, nxs, owner))
    sums = np.zeros((len(files), 5), np.float64)  # ce, n_targets, n_tokens, n_patches, overflow
    from bltjax.metrics import progress_bar

    rows = len(x_all)
    with progress_bar(total=rows, desc=f"eval ({kind})", unit="window", enabled=progress) as bar:
        for lo in range(0, rows, batch):
            hi = min(lo + batch, rows)
            pad = batch - (hi - lo)

            def take(a):
                part = a[lo:hi]
                return np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)]) if pad else part

            ce, n, npatch, over = jax.device_get(fn(jnp.asarray(take(x_all)), jnp.asarray(take(y_all)),
                                                    jnp.asarray(take(nx_all))))
            m = hi - lo
            contrib = np.stack([ce[:m], n[:m], nx_all[lo:hi], npatch[:m], over[:m]], axis=1).astype(np.float64)
            np.add.at(sums, own[lo:hi], contrib)
            bar.update(m)
    for r, s in zip(results, sums):
        r.ce_nats, r.n_targets, r.n_tokens = float(s[0]), int(s[1]), int(s[2])
        r.n_patches, r.overflow_rows = (int(s[3]), int(s[4])) if pcfg is not None else (0, 0)
    total = FileEval(name="TOTAL")
    for r in results:
        total.add(r)
    report = EvalReport(checkpoint=ck.path, kind=kind, seq_len=seq_len, batch=batch,
                        patcher=dataclasses.asdict(pcfg) if pcfg is not None else None, files=results, total=total)
    _fill_flops(report, ck)
    report.seconds = time.time() - t0
    return report


def _fill_flops(report: EvalReport, ck: LoadedCheckpoint) -> None:
    ecfg = ck.entropy_config
    uses_entropy = report.patcher is not None and report.patcher.get("mode") == "entropy" and ecfg is not None
    if uses_entropy:
        report.entropy_flops_per_byte = lm_flops_per_byte(ecfg, report.seq_len)
    for r in report.files + [report.total]:
        if report.kind == "blt":
            ps = r.avg_patch_size
            if ps:
                r.flops_per_byte = ck.config.flops_per_byte(ps, report.seq_len, training=False)
        else:
            r.flops_per_byte = lm_flops_per_byte(ecfg, report.seq_len)
    if report.kind == "blt" and report.total.avg_patch_size:
        report.train_flops_per_byte = ck.config.flops_per_byte(report.total.avg_patch_size, report.seq_len,
                                                               training=True)
    elif report.kind == "entropy":
        report.train_flops_per_byte = lm_flops_per_byte(ecfg, report.seq_len, training=True)


def evaluate_paths(checkpoint: str | pathlib.Path | LoadedCheckpoint, data: str, *, seq_len: Optional[int] = None,
                   batch: int = 8, max_bytes: Optional[int] = None, **kwargs) -> EvalReport:
    """``evaluate`` on files named by ``data`` (files / directories / globs, comma-separated); each
    file is reported separately (``max_bytes`` keeps only the first bytes of every document)."""
    ck = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else open_checkpoint(checkpoint)
    files = read_files(data)
    if max_bytes:
        files = [(name, [d[:max_bytes] for d in docs]) for name, docs in files]
    if seq_len is None:
        cap = ck.config.max_encoder_seq_length if ck.is_blt else ck.entropy_config.max_seqlen
        seq_len = min(4096, cap)
    return evaluate(ck, files, seq_len=seq_len, batch=batch, **kwargs)


def evaluate_run(workdir: str | pathlib.Path, *, seq_len: Optional[int] = None, max_bytes: Optional[int] = None,
                 **kwargs) -> EvalReport:
    """``evaluate`` a training workdir on its own validation split (``config.json``'s data section and split
    rule; windows of the run's ``seq_len`` by default); ``max_bytes`` keeps the first tokens of the split."""
    from bltjax.workdir import read_config

    try:
        cfg = read_config(workdir)
    except FileNotFoundError as e:
        raise ValueError(f"{e}; pass --data FILES") from None
    tokens = split_tokens(cfg.data, "validation")[:max_bytes or None]
    name = f"validation split ({cfg.data.source}{': ' + cfg.data.path if cfg.data.path else ''})"
    return evaluate(open_checkpoint(workdir), [(name, tokens)], seq_len=seq_len or cfg.seq_len, **kwargs)


# ----------------------------------------------------------------------------- output


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def short_name(name: str) -> str:
    if name == "TOTAL" or name.startswith("validation split"):
        return name.split(" (")[0]
    return pathlib.Path(name.split(":")[0]).stem


def format_table(report: EvalReport, markdown: bool = False) -> str:
    """The per-file results (and total) as an aligned text table or a Markdown table."""
    head = ["file", "bytes", "chars", "bytes/char", "bits/byte", "bytes/patch", "patches/char", "FLOP/byte"]
    rows = []
    for r in report.files + [report.total]:
        rows.append([short_name(r.name), f"{r.file_bytes:,}", f"{r.n_chars:,}", f"{r.bytes_per_char:.3f}",
                     f"{r.bits_per_byte:.4f}", _fmt(r.avg_patch_size, ".3f"), _fmt(r.patches_per_char, ".3f"),
                     _fmt(r.flops_per_byte, ".3e")])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for i, row in enumerate(rows):
            cells = [f"**{c}**" for c in row] if i == len(rows) - 1 else row
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt_row(head), "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), fmt_row(rows[-1])]
    return "\n".join(lines)


def summary(report: EvalReport) -> str:
    t = report.total
    p = report.patcher or {}
    if p.get("mode") == "entropy":
        how = ("monotonic" if p.get("monotonicity") else "global") + f" entropy threshold {p.get('threshold')}"
    else:
        how = f"{p.get('mode')} patching" if p else "no patching"
    lines = [f"{report.kind} checkpoint {report.checkpoint}: {len(report.files)} files, {t.n_targets:,} predicted "
             f"bytes, seq_len {report.seq_len}, {how} ({report.seconds:.1f} s)",
             f"bits per byte {t.bits_per_byte:.4f}"
             + (f", bytes per patch {t.avg_patch_size:.3f}" if t.avg_patch_size else "")
             + (f", inference {t.flops_per_byte:.3e} FLOP/byte" if t.flops_per_byte else "")
             + (f" (+ entropy model {report.entropy_flops_per_byte:.3e})"
                if report.entropy_flops_per_byte and report.kind == "blt" else "")]
    if t.overflow_rows:
        lines.append(f"WARNING: {t.overflow_rows} windows needed more than max_patches patches (their last "
                     "patch absorbed the rest); raise model.max_seqlen / patcher.max_patches or lower --seq-len")
    return "\n".join(lines)


def write_report(report: EvalReport, out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """``report.md`` (Markdown table), ``report.png`` (bar charts), ``report.json`` in ``out_dir``
    (a local directory or ``gs://...``: then written locally first and uploaded)."""
    from bltjax import viz

    mirror = LocalMirror(out_dir)
    out = mirror.local
    paths = {"markdown": out / "report.md", "png": out / "report.png", "json": out / "report.json"}
    md = [f"# Evaluation report: `{pathlib.Path(report.checkpoint).name}`", "", summary(report).replace("\n", "  \n"),
          "", format_table(report, markdown=True), "",
          "bytes/char: UTF-8 bytes per character; bits/byte: Σ CE / ln 2 / predicted bytes (EOS included); "
          "bytes/patch: input tokens per patch (BOS/EOS included); patches/char: patches per character.", ""]
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")
    rows = [dict(name=short_name(r.name), bits_per_byte=r.bits_per_byte, avg_patch_size=r.avg_patch_size,
                 patches_per_char=r.patches_per_char) for r in report.files]
    viz.plot_report(rows, paths["png"], title=f"{report.kind} checkpoint {pathlib.Path(report.checkpoint).name}")
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2))
    mirror.close()  # uploads a remote report (and drops its local copy)
    return {k: mirror.remote / p.name for k, p in paths.items()}


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bltjax.eval", description="Bits per byte, patch sizes and "
                                "FLOPs per byte of a BLT or entropy-model checkpoint on text files.")
    p.add_argument("--checkpoint", required=True, help="BLT or entropy-model checkpoint directory")
    p.add_argument("--data", default=None, help="files / directories / globs (comma-separated; fetch:NAME: a "
                   "known corpus); default for a training workdir: its validation split")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per window (default: the run's seq_len without --data, else min(4096, model cap))")
    p.add_argument("--batch", type=int, default=8, help="windows per step")
    p.add_argument("--max-bytes", type=int, default=None, help="evaluate only the first N bytes of each document")
    p.add_argument("--threshold", type=float, default=None, help="override the entropy threshold")
    p.add_argument("--mode", choices=("global", "monotonic"), default=None, help="override the threshold mode")
    p.add_argument("--max-patches", type=int, default=None, help="static patch budget per window (BLT)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--report", action="store_true", help="write report.md / report.png / report.json")
    p.add_argument("--out-dir", default="eval_report", help="where --report writes")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kwargs = dict(seq_len=args.seq_len, batch=args.batch, max_bytes=args.max_bytes, threshold=args.threshold,
                      mode=args.mode, max_patches=args.max_patches, progress=not args.no_progress)
        if args.data is None:
            report = evaluate_run(args.checkpoint, **kwargs)
        else:
            report = evaluate_paths(args.checkpoint, args.data, **kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(report))
    print(format_table(report))
    if args.json:
        as_path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.report:
        paths = write_report(report, args.out_dir)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    from bltjax import hugepages
    from bltjax.cli import run_cli

    hugepages.reexec()
    sys.exit(run_cli(main))


__all__ = ["FileEval", "EvalReport", "mean_causal_context", "lm_flops_per_byte", "count_chars", "file_windows",
           "score_blt", "score_entropy_lm", "resolve_patcher", "evaluate", "evaluate_paths", "evaluate_run",
           "format_table", "summary", "write_report", "main"]
