"""Entropy-threshold calibration: the threshold whose mean patch size on a data sample hits a target.

Run it as ``python -m bltjax.entropy_tools calibrate`` (see ``bltjax.entropy_tools``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

from bltjax.data.documents import read_documents, sample_documents, stream_windows
from bltjax.entropy_scoring import (
    DEFAULT_THRESHOLD,
    PatchStats,
    ThresholdMode,
    patch_stats,
    row_entropies,
    rows_patch_lengths,
    threshold_patcher,
)
from bltjax.pretrained import EntropyModel, load_entropy_model

# ============================================================================ calibration


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Outcome of ``calibrate_threshold``.

    ``threshold`` (with ``mode``) is the value to put in ``model.patcher``; ``bytes_per_patch`` is
    what the real patcher achieves with it on the sample (tokens per patch, BOS/EOS included),
    ``target`` the requested size.  ``trace`` lists every ``(threshold, bytes_per_patch)`` probed.
    """

    threshold: float
    mode: str
    target: float
    bytes_per_patch: float
    n_tokens: int
    n_patches: int
    n_documents: int
    n_rows: int
    seq_len: int
    sample_bytes: int
    reset_at_newline: bool
    max_patch_length: Optional[int]
    histogram: dict[int, int]
    achievable: tuple[float, float]  # smallest and largest mean patch size any threshold gives
    trace: tuple[tuple[float, float], ...]
    entropy_model: str = ""

    @property
    def error(self) -> float:
        return self.bytes_per_patch - self.target

    def config_overrides(self) -> list[str]:
        """``--set`` arguments that make a training config use this threshold."""
        out = ["model.patcher.mode=entropy", f"model.patcher.threshold={self.threshold!r}"]
        out.append(f"model.patcher.monotonicity={self.mode == 'monotonic'}")
        if self.reset_at_newline:
            out.append("model.patcher.reset_context_at_newline=True")
        if self.max_patch_length is not None:
            out.append(f"model.patcher.max_patch_length={self.max_patch_length}")
        return out

    def config_line(self) -> str:
        return " ".join(f"--set {o}" for o in self.config_overrides())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["histogram"] = {str(k): v for k, v in self.histogram.items()}
        d["error"] = self.error
        d["config_overrides"] = self.config_overrides()
        return d


def threshold_candidates(entropies_rn: np.ndarray, lengths_r: np.ndarray, mode: ThresholdMode) -> np.ndarray:
    """Sorted distinct float32 values the patcher compares with the threshold in these rows
    (``H_{j-1}`` for ``2 <= j < S``, or ``H_{j-1} - H_{j-2}`` for ``3 <= j < S``).  The patching only
    changes when the threshold crosses one of them."""
    ent = np.asarray(entropies_rn, np.float32)
    n = ent.shape[1]
    j = np.arange(n)[None, :]
    lengths = np.asarray(lengths_r)[:, None]
    if mode == "global":
        vals = ent[:, 1:n - 1]  # H_{j-1}, j = 2..n-1
        keep = (j[:, 2:] < lengths)
    else:
        vals = ent[:, 2:n - 1] - ent[:, 1:n - 2]  # float32 difference, as the patcher computes it
        keep = (j[:, 3:] < lengths)
    return np.unique(vals[keep].astype(np.float32))


def _threshold_between(lo: float, hi: float) -> float:
    """A threshold t with float32(lo) <= float32(t) < float32(hi) (strict-'>' semantics: values equal
    to lo do not start a patch, values equal to hi do), as a short-ish Python float."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    mid = float((np.float64(lo32) + np.float64(hi32)) / 2)
    if not (lo32 <= np.float32(mid) < hi32):
        mid = float(lo32)
    for digits in range(4, 18):  # shortest decimal that still lands in [lo, hi)
        t = float(f"{mid:.{digits}g}")
        if lo32 <= np.float32(t) < hi32:
            return t
    return mid


def calibrate_threshold(model: EntropyModel | str | pathlib.Path,
                        data: str | Sequence[bytes] | Sequence[str],
                        *, target: float = 4.5, mode: ThresholdMode = "global",
                        sample_bytes: Optional[int] = 1_000_000, seq_len: int = 8192,
                        reset_at_newline: bool = False, max_patch_length: Optional[int] = None,
                        batch_size: int = 8, seed: int = 0, progress: bool = False) -> CalibrationResult:
    """Find the entropy threshold whose average patch size on a data sample is closest to ``target``.

    1. sample about ``sample_bytes`` bytes (``sample_documents``), encode every document as
       ``[BOS] bytes [EOS]``, concatenate and cut into rows of ``seq_len`` tokens;
    2. compute the entropies once (each row its own context, optional newline resets);
    3. bisect over the sorted distinct values the patcher compares with the threshold, running the
       real patcher (``include_next_token=False``) on the whole sample at every probe: the mean
       size is non-decreasing in the threshold, so ~log2(#values) probes find the two thresholds
       whose sizes bracket the target; the closer one wins.

    ``data`` is a path/glob spec (``read_documents``) or a list of documents (bytes or str).
    """
    if target <= 0:
        raise ValueError(f"target bytes per patch must be > 0, got {target}")
    if isinstance(model, (str, pathlib.Path)):
        model = load_entropy_model(model)
    if isinstance(data, str):
        docs = read_documents(data)
    else:
        docs = [d.encode("utf-8") if isinstance(d, str) else bytes(d) for d in data]
    docs = sample_documents(docs, sample_bytes, seed=seed)
    tokens, lengths = stream_windows(docs, seq_len)
    ent = row_entropies(model, tokens, batch_size=batch_size, reset_at_newline=reset_at_newline,
                        progress=progress)
    base = threshold_patcher(model.patcher, DEFAULT_THRESHOLD, mode, max_patch_length)
    cands = threshold_candidates(ent, lengths, mode)
    cache: dict[float, PatchStats] = {}

    def stats_at(t: float) -> PatchStats:
        if t not in cache:
            pcfg = dataclasses.replace(base, threshold=float(t))
            cache[t] = patch_stats(rows_patch_lengths(pcfg, tokens, ent, lengths))
        return cache[t]

    # Thresholds: k = 0 below every candidate, k in 1..K-1 between candidates k-1 and k, K at the max.
    k_count = len(cands)

    def threshold_at(k: int) -> float:
        if k_count == 0:
            return float(DEFAULT_THRESHOLD)
        if k == 0:
            return float(np.nextafter(cands[0], np.float32(-np.inf)))
        if k >= k_count:
            return float(cands[-1])
        return _threshold_between(float(cands[k - 1]), float(cands[k]))

    lo, hi = 0, k_count  # invariant: size(lo) < target <= size(hi) unless at the ends
    size_lo = stats_at(threshold_at(lo)).bytes_per_patch
    size_hi = stats_at(threshold_at(hi)).bytes_per_patch
    if size_lo >= target:
        best = lo
    elif size_hi < target:
        best = hi
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if stats_at(threshold_at(mid)).bytes_per_patch >= target:
                hi = mid
            else:
                lo = mid
        d_lo = abs(stats_at(threshold_at(lo)).bytes_per_patch - target)
        d_hi = abs(stats_at(threshold_at(hi)).bytes_per_patch - target)
        best = lo if d_lo < d_hi else hi
    theta = threshold_at(best)
    final = stats_at(theta)
    trace = tuple((t, s.bytes_per_patch) for t, s in cache.items())
    return CalibrationResult(
        threshold=theta, mode=mode, target=float(target), bytes_per_patch=final.bytes_per_patch,
        n_tokens=final.n_tokens, n_patches=final.n_patches, n_documents=len(docs), n_rows=int(tokens.shape[0]),
        seq_len=int(seq_len), sample_bytes=int(sum(len(d) for d in docs)), reset_at_newline=bool(reset_at_newline),
        max_patch_length=base.max_patch_length, histogram=final.histogram,
        achievable=(size_lo, size_hi), trace=trace, entropy_model=model.path)


def format_histogram(histogram: dict[int, int], *, max_length: int = 16, width: int = 40) -> str:
    """Text histogram of patch lengths (lengths >= ``max_length`` share one bucket)."""
    buckets: dict[str, int] = {}
    for length in range(1, max_length):
        buckets[str(length)] = histogram.get(length, 0)
    buckets[f">={max_length}"] = sum(c for l, c in histogram.items() if l >= max_length)
    total = max(sum(buckets.values()), 1)
    top = max(max(buckets.values()), 1)
    lines = []
    for name, count in buckets.items():
        bar = "#" * int(round(width * count / top))
        lines.append(f"  {name:>4} | {bar:<{width}} {100 * count / total:5.1f}%  {count:,}")
    return "\n".join(lines)


def format_calibration(res: CalibrationResult) -> str:
    what = "H(x_i)" if res.mode == "global" else "H(x_i) - H(x_{i-1})"
    lines = [
        f"calibrated {res.mode} entropy threshold ({what}) on {res.sample_bytes:,} bytes "
        f"({res.n_documents} documents, {res.n_rows} rows of {res.seq_len} tokens"
        f"{', context reset at newlines' if res.reset_at_newline else ''})",
        f"  threshold        {res.threshold!r}",
        f"  bytes per patch  {res.bytes_per_patch:.4f}  (target {res.target:g}, error {res.error:+.4f})",
        f"  patches          {res.n_patches:,} over {res.n_tokens:,} tokens",
        f"  achievable range {res.achievable[0]:.3f} .. {res.achievable[1]:.3f} bytes per patch "
        f"({len(res.trace)} thresholds probed)",
    ]
    if not res.achievable[0] <= res.target <= res.achievable[1]:
        lines.append("  WARNING: the target is outside what any threshold achieves on this sample")
    lines += ["patch length histogram:", format_histogram(res.histogram),
              "config (paste into the training command):", "  " + res.config_line()]
    return "\n".join(lines)


__all__ = ["CalibrationResult", "threshold_candidates", "calibrate_threshold", "format_histogram",
           "format_calibration"]
