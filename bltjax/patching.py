"""Entropy patching tools: threshold calibration, patching figures, precomputed entropies (CLI + API).

    python -m bltjax.patching calibrate  --entropy-model DIR --data PATH_OR_GLOB [--target-bytes-per-patch 4.5]
                                         [--mode global|monotonic] [--sample-bytes N] [--seq-len L]
                                         [--reset-at-newline] [--max-patch-length M] [--json OUT]
    python -m bltjax.patching plot       --entropy-model DIR (--text "..." | --file PATH) --out fig.png
                                         [--threshold T] [--mode global|monotonic] [--html]
    python -m bltjax.patching precompute --entropy-model DIR --data PATH_OR_GLOB --out DIR
                                         [--dtype float16|float32] [--chunk-len 8192] [--overlap N]

``--entropy-model`` is anything ``bltjax.pretrained.load_pretrained`` reads that holds an entropy model:
an entropy-only release / training directory, or a BLT checkpoint that carries its entropy model.

Conventions (spec §1-§3).  Documents are token streams ``[BOS] bytes [EOS]`` (BOS=1, EOS=2, byte
b -> b+4).  ``H_i`` is the entropy model's uncertainty about token ``i+1``; position ``j >= 2``
starts a patch iff ``H_{j-1} > θ`` (global mode) or ``H_{j-1} - H_{j-2} > θ`` (monotonic mode,
``j >= 3``).  Patch statistics here use ``include_next_token=False`` (the training convention: a
row of ``S`` tokens is cut into patches summing to ``S``), and "bytes per patch" counts tokens
(BOS/EOS included), which is what the trainer's patch budget sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import sys
import time
from typing import Any, Iterable, Literal, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.model import entropy_model as entropy_lm
from bltjax.patcher import patch_lengths, trim_lengths
from bltjax.tokenizer import BOS_ID, EOS_ID, OFFSET

ThresholdMode = Literal["global", "monotonic"]
DEFAULT_THRESHOLD = PatcherConfig().threshold
PRECOMPUTE_FORMAT = "bltjax-entropies-v1"


# ============================================================================ loading


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """What the tools need from a checkpoint directory (see ``open_checkpoint``).

    ``config`` / ``params``: the BLT (None for an entropy-only checkpoint); ``entropy_config`` /
    ``entropy_params``: the entropy model (None if absent); ``patcher``: the patcher settings stored
    with the checkpoint (the BLT's ``config.patcher``, else the release's ``patcher_args``).
    """

    path: str
    config: Optional[BLTConfig]
    params: Any
    entropy_config: Optional[TransformerConfig]
    entropy_params: Any
    patcher: PatcherConfig

    @property
    def is_blt(self) -> bool:
        return self.config is not None and self.params is not None


def _is_entropy_only_release(p: pathlib.Path) -> bool:
    params_json = p / "params.json"
    if not params_json.is_file():
        return False
    try:
        return bool(json.loads(params_json.read_text()).get("train_entropy_model"))
    except (json.JSONDecodeError, AttributeError):
        return False


def _load_entropy_release(p: pathlib.Path) -> LoadedCheckpoint:
    """An entropy-only release directory (``params.json`` with ``train_entropy_model: true``)."""
    from bltjax.io import release
    from bltjax.io.torch_pth import load_torch_pth

    d = json.loads((p / "params.json").read_text())
    ecfg = release.entropy_config_from_params_json(d)
    weights = next((w for w in (p / "consolidated" / "consolidated.pth", p / "consolidated.pth") if w.is_file()),
                   None)
    if weights is None:
        raise ValueError(f"{p}: missing consolidated.pth")
    params = jax.tree.map(jnp.asarray, release.state_dict_to_params(load_torch_pth(weights), ecfg, "float32"))
    return LoadedCheckpoint(path=str(p), config=None, params=None, entropy_config=ecfg, entropy_params=params,
                            patcher=release.patcher_config_from_params_json(d))


def open_checkpoint(path: str | pathlib.Path) -> LoadedCheckpoint:
    """Load any checkpoint ``bltjax.pretrained.load_pretrained`` understands into a ``LoadedCheckpoint``
    (entropy-only release directories are read directly if ``load_pretrained`` refuses them)."""
    from bltjax.pretrained import load_pretrained

    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    run = _entropy_training_run(p)
    if run is not None:
        return run
    try:
        pre = load_pretrained(str(p))
    except (ValueError, FileNotFoundError):
        if _is_entropy_only_release(p):
            return _load_entropy_release(p)
        raise
    cfg = getattr(pre, "config", None)
    params = getattr(pre, "params", None)
    ent_params = getattr(pre, "entropy_params", None)
    ecfg = getattr(pre, "entropy_config", None)
    pcfg = getattr(pre, "patcher", None)
    if isinstance(cfg, TransformerConfig):  # an entropy-only bundle described by its LM config
        ecfg, cfg = cfg, None
        if ent_params is None:
            ent_params, params = params, None
    if isinstance(cfg, BLTConfig):
        ecfg = ecfg or cfg.entropy_model
        pcfg = pcfg if isinstance(pcfg, PatcherConfig) else cfg.patcher
        if isinstance(params, dict) and "blt" in params:  # {"blt": ..., "entropy": ...} bundle
            ent_params = ent_params if ent_params is not None else params.get("entropy")
            params = params.get("blt")
        if not params:  # entropy-only checkpoint wrapped in a BLTConfig
            cfg, params = None, None
    if not isinstance(pcfg, PatcherConfig):
        pcfg = PatcherConfig()
    return LoadedCheckpoint(path=str(p), config=cfg, params=params, entropy_config=ecfg,
                            entropy_params=ent_params, patcher=pcfg)


def _entropy_training_run(path: pathlib.Path) -> Optional[LoadedCheckpoint]:
    """The newest checkpoint of a ``bltjax.train`` workdir that trained an entropy model, else None."""
    from bltjax.train import CHECKPOINT_SUBDIR, load_run

    if not ((path / "config.json").is_file() and (path / CHECKPOINT_SUBDIR).is_dir()):
        return None
    tcfg, params, _ = load_run(path)
    if not tcfg.train_entropy_model:
        return None
    return LoadedCheckpoint(path=str(path), config=None, params=None, entropy_config=tcfg.model.entropy_model,
                            entropy_params=params, patcher=tcfg.model.patcher)


@dataclasses.dataclass(frozen=True, eq=False)
class EntropyModel:
    """An entropy model ready to score bytes: parameters, its config, and the stored patcher config."""

    params: Any
    config: TransformerConfig
    patcher: PatcherConfig
    path: str = ""


def load_entropy_model(path: str | pathlib.Path) -> EntropyModel:
    """The entropy model of a checkpoint directory (entropy-only, or a BLT that carries one)."""
    ck = open_checkpoint(path)
    if ck.entropy_params is None or ck.entropy_config is None:
        raise ValueError(f"{path}: no entropy model found in this checkpoint (need an entropy-model "
                         "directory, e.g. a release's entropy_model/, or a BLT checkpoint that includes one)")
    return EntropyModel(params=ck.entropy_params, config=ck.entropy_config, patcher=ck.patcher, path=ck.path)


# ============================================================================ documents


def read_files(spec: str | Sequence[str], *, jsonl_field: str = "text") -> list[tuple[str, list[bytes]]]:
    """``(path, [document bytes, ...])`` per file named by ``spec`` (files, directories, globs;
    comma-separated).

    Files are read as raw bytes (invalid UTF-8 and binary data are fine: the model reads bytes) and
    are one document each; ``*.jsonl`` files give one document per non-blank line (the string field
    ``jsonl_field``).  Empty files are skipped.
    """
    from bltjax.data.sources import expand_paths

    files: list[tuple[str, list[bytes]]] = []
    for path in expand_paths(spec):
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            docs = []
            for lineno, line in enumerate(data.split(b"\n"), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8", errors="surrogateescape"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get(jsonl_field), str):
                    raise ValueError(f"{path}:{lineno}: no string field {jsonl_field!r}")
                docs.append(record[jsonl_field].encode("utf-8", errors="surrogateescape"))
            if docs:
                files.append((str(path), docs))
        elif data:
            files.append((str(path), [data]))
    if not files:
        raise ValueError(f"no non-empty documents in {spec!r}")
    return files


def read_documents(spec: str | Sequence[str], *, jsonl_field: str = "text") -> list[bytes]:
    """All documents of ``read_files(spec)`` in order."""
    return [d for _, docs in read_files(spec, jsonl_field=jsonl_field) for d in docs]


def sample_documents(docs: Sequence[bytes], sample_bytes: Optional[int], *, seed: int = 0,
                     min_doc_bytes: int = 1024) -> list[bytes]:
    """A deterministic sample of at most ``sample_bytes`` bytes that keeps the corpus' byte mix.

    Every document's share is proportional to its size.  Documents whose share is at least
    ``min_doc_bytes`` contribute their first ``share`` bytes (so a few big files, e.g. the 48 UDHR
    languages, are all represented); the others pool their shares and are drawn as whole documents
    (their first ``min_doc_bytes`` bytes at most) in a seeded random order until the pool is spent
    (so a corpus of many small documents is sampled by documents, not by tiny prefixes).
    Returns the chosen pieces in corpus order; all documents if they fit.
    """
    total = sum(len(d) for d in docs)
    if sample_bytes is None or total <= sample_bytes:
        return list(docs)
    if sample_bytes < 1:
        raise ValueError(f"sample_bytes must be >= 1, got {sample_bytes}")
    shares = [sample_bytes * len(d) / total for d in docs]
    take = {i: int(s) for i, s in enumerate(shares) if s >= min_doc_bytes}
    pool = sample_bytes - sum(take.values())
    small = [i for i, s in enumerate(shares) if s < min_doc_bytes]
    for i in np.random.default_rng(seed).permutation(small) if small else ():
        if pool <= 0:
            break
        n = min(len(docs[int(i)]), min_doc_bytes, pool)
        take[int(i)] = n
        pool -= n
    return [docs[i][:take[i]] for i in sorted(take) if take[i] > 0]


def encode_document(doc: bytes) -> np.ndarray:
    """``[BOS] (bytes + 4) [EOS]`` as int32 (the training pipeline's document encoding)."""
    raw = np.frombuffer(doc, np.uint8).astype(np.int32) + OFFSET
    return np.concatenate([[BOS_ID], raw, [EOS_ID]]).astype(np.int32)


def stream_windows(docs: Iterable[bytes], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The documents' concatenated token stream cut into rows of ``seq_len`` tokens.

    Returns ``(tokens int32 [W, seq_len] zero-padded, lengths int32 [W])``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    parts = [encode_document(d) for d in docs]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    n_rows = max(1, -(-len(stream) // seq_len))
    tokens = np.zeros(n_rows * seq_len, np.int32)
    tokens[:len(stream)] = stream
    lengths = np.clip(len(stream) - seq_len * np.arange(n_rows), 0, seq_len).astype(np.int32)
    return tokens.reshape(n_rows, seq_len), lengths


# ============================================================================ entropies


def context_config(pcfg: PatcherConfig, reset_at_newline: Optional[bool] = None) -> PatcherConfig:
    """Only the entropy-*context* fields of ``pcfg`` (so thresholds never trigger recompiles)."""
    reset = pcfg.reset_context_at_newline if reset_at_newline is None else bool(reset_at_newline)
    return PatcherConfig(mode="entropy", entropy_chunk_len=pcfg.entropy_chunk_len, entropy_flatten_rows=False,
                         entropy_dtype=pcfg.entropy_dtype, reset_context_at_newline=reset)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _entropies_jit(params, ecfg: TransformerConfig, ctx: PatcherConfig, tokens_bn):
    return entropy_lm.compute_entropies(params, ecfg, ctx, tokens_bn)


def _progress(total: int, desc: str, enabled: bool):
    from bltjax.metrics import progress_bar

    return progress_bar(total=total, desc=desc, unit="row", enabled=enabled)


def row_entropies(model: EntropyModel, tokens_rn: np.ndarray, *, batch_size: int = 8,
                  reset_at_newline: Optional[bool] = None, progress: bool = False) -> np.ndarray:
    """Entropies ``float32 [R, N]`` of token rows, each row its own context (padding is harmless:
    attention is causal).  Rows are run ``batch_size`` at a time with one static shape."""
    tokens_rn = np.asarray(tokens_rn, np.int32)
    if tokens_rn.ndim != 2:
        raise ValueError(f"tokens must be [rows, N], got shape {tokens_rn.shape}")
    ctx = context_config(model.patcher, reset_at_newline)
    r, n = tokens_rn.shape
    b = max(1, min(batch_size, r))
    out = np.zeros((r, n), np.float32)
    with _progress(r, "entropies", progress) as bar:
        for lo in range(0, r, b):
            chunk = tokens_rn[lo:lo + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, n), np.int32)])
            ent = _entropies_jit(model.params, model.config, ctx, jnp.asarray(chunk))
            out[lo:lo + b - pad] = np.asarray(ent)[:b - pad]
            bar.update(b - pad)
    return out


def text_entropies(model: EntropyModel, text: str | bytes, *, add_bos: bool = True, add_eos: bool = False,
                   reset_at_newline: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32 [N], entropies float32 [N])`` of one text (str: UTF-8; bytes: as they are)."""
    from bltjax.tokenizer import encode

    tokens = encode(text, add_bos=add_bos, add_eos=add_eos)
    if tokens.size == 0:
        raise ValueError("empty input: nothing to patch")
    ent = row_entropies(model, tokens[None], batch_size=1, reset_at_newline=reset_at_newline)[0]
    return tokens, ent


# ============================================================================ patch statistics


def threshold_patcher(base: PatcherConfig, threshold: float, mode: ThresholdMode,
                      max_patch_length: Optional[int] = None) -> PatcherConfig:
    """``base`` switched to entropy patching with ``threshold`` in global or monotonic mode."""
    if mode not in ("global", "monotonic"):
        raise ValueError(f"mode must be 'global' or 'monotonic', got {mode!r}")
    mpl = base.max_patch_length if max_patch_length is None else max_patch_length
    return dataclasses.replace(base, mode="entropy", threshold=float(threshold), threshold_add=None,
                               monotonicity=(mode == "monotonic"), max_patch_length=mpl,
                               max_patches=None).validate()


_patch_lengths_jit = jax.jit(patch_lengths, static_argnums=0, static_argnames=("include_next_token", "max_patches"))


def rows_patch_lengths(pcfg: PatcherConfig, tokens_rn: np.ndarray, entropies_rn: Optional[np.ndarray],
                       lengths_r: np.ndarray, *, include_next_token: bool = False,
                       block: int = 64, jit: bool = False) -> np.ndarray:
    """The real patcher (``bltjax.patcher.patch_lengths``) over many rows: ``int32 [R, N+1]``.

    ``jit=False`` runs it op by op: every op compiles once per shape and is reused for any threshold
    (what calibration needs); ``jit=True`` compiles the whole patcher once per config (one-off calls).
    """
    fn = _patch_lengths_jit if jit else patch_lengths
    tokens_rn = np.asarray(tokens_rn, np.int32)
    r, n = tokens_rn.shape
    out = np.zeros((r, n + 1), np.int32)
    b = max(1, min(block, r))
    for lo in range(0, r, b):
        hi = min(lo + b, r)
        pad = b - (hi - lo)

        def padded(a, fill=0):
            a = np.asarray(a[lo:hi])
            return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a

        ent = None if entropies_rn is None else jnp.asarray(padded(entropies_rn))
        lens, _ = fn(pcfg, jnp.asarray(padded(tokens_rn)), ent,
                                include_next_token=include_next_token, max_patches=n + 1,
                                lengths_b=jnp.asarray(padded(np.asarray(lengths_r, np.int32))))
        out[lo:hi] = np.asarray(lens)[:hi - lo]
    return out


@dataclasses.dataclass(frozen=True)
class PatchStats:
    """Patch statistics of rows: tokens, patches, mean size, histogram ``{length: count}``."""

    n_tokens: int
    n_patches: int
    histogram: dict[int, int]

    @property
    def bytes_per_patch(self) -> float:
        return self.n_tokens / max(self.n_patches, 1)


def patch_stats(lengths_rp: np.ndarray) -> PatchStats:
    lengths = np.asarray(lengths_rp).ravel()
    lengths = lengths[lengths > 0]
    values, counts = np.unique(lengths, return_counts=True)
    return PatchStats(n_tokens=int(lengths.sum()), n_patches=int(lengths.size),
                      histogram={int(v): int(c) for v, c in zip(values, counts)})


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


@dataclasses.dataclass(frozen=True, eq=False)
class PrecomputedEntropies:
    """Per-token entropies stored by ``precompute_entropies`` (read with ``load_precomputed``).

    ``entropies`` is the memory-mapped 1-D array over the source's full token stream (every document
    as ``[BOS] bytes [EOS]``, in source order) -- the layout ``DataConfig.entropies_path`` expects;
    ``offsets[d]`` is where document ``d`` starts (``offsets[-1]`` = stream length).
    """

    path: str
    entropies: np.ndarray
    offsets: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        """float32 entropies of document ``i`` (``len(bytes) + 2`` values)."""
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range [0, {len(self)})")
        return np.asarray(self.entropies[self.offsets[i]:self.offsets[i + 1]], np.float32)

    def stream(self, lo: int, hi: int) -> np.ndarray:
        """float32 entropies of full-stream positions ``[lo, hi)``."""
        return np.asarray(self.entropies[lo:hi], np.float32)


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
    from bltjax.data.pipeline import encode_document as pipeline_encode
    from bltjax.data.pipeline import open_source, resolved_split_rule

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
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = context_config(model.patcher, reset_at_newline)
    index: dict[str, Any] = {
        "format": PRECOMPUTE_FORMAT, "entropy_model": model.path,
        "entropy_config": dataclasses.asdict(model.config), "dtype": dtype, "chunk_len": chunk_len,
        "overlap": overlap, "reset_context_at_newline": ctx.reset_context_at_newline,
        "entropy_dtype": ctx.entropy_dtype, "data_config": dataclasses.asdict(cfg),
        "entropies_path": str(out / "entropies_{split}.npy"), "splits": {},
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
                arr[pos:pos + cnt] = ent[k, off:off + cnt].astype(dtype)
            rows.clear()
            targets.clear()

        from bltjax.metrics import progress_bar

        for d in progress_bar(range(n_docs), desc=f"entropies ({split})", unit="doc", enabled=progress):
            doc = source[d]
            digest.update(len(doc).to_bytes(8, "little"))
            digest.update(doc)
            toks = pipeline_encode(doc)
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
    return results


def load_precomputed(path: str | pathlib.Path, split: str = "train") -> PrecomputedEntropies:
    """Open entropies written by ``precompute_entropies``: ``path`` is the output directory (or its
    ``index.json``); the array is memory-mapped."""
    p = pathlib.Path(path)
    index_path = p if p.name == "index.json" else p / "index.json"
    if not index_path.is_file():
        raise ValueError(f"{path}: no index.json (not a precompute output directory)")
    meta = json.loads(index_path.read_text())
    if meta.get("format") != PRECOMPUTE_FORMAT:
        raise ValueError(f"{index_path}: unknown format {meta.get('format')!r}")
    if split not in meta["splits"]:
        raise ValueError(f"{index_path}: no split {split!r} (has {sorted(meta['splits'])})")
    info = meta["splits"][split]
    ent = np.load(index_path.parent / info["entropies"], mmap_mode="r")
    offsets = np.load(index_path.parent / info["offsets"])
    if ent.ndim != 1 or ent.shape[0] != offsets[-1]:
        raise ValueError(f"{index_path.parent}: entropies ({ent.shape}) do not match the offsets ({offsets[-1]})")
    return PrecomputedEntropies(path=str(index_path.parent), entropies=ent, offsets=offsets, meta=meta)


# ============================================================================ CLI


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entropy-model", required=True, help="checkpoint directory holding an entropy model")
    p.add_argument("--reset-at-newline", action="store_true",
                   help="restart the entropy context after every newline (paper §4.4)")
    p.add_argument("--batch", type=int, default=8, help="rows per entropy-model call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bltjax.patching", description=__doc__.split("\n\n")[0])
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
    print(f"({time.time() - t0:.1f} s)  train with: --set data.entropies_path={pathlib.Path(args.out) / 'entropies_{split}.npy'}")
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

    hugepages.reexec()
    sys.exit(main())


__all__ = ["LoadedCheckpoint", "open_checkpoint", "EntropyModel", "load_entropy_model", "read_files", "read_documents",
           "sample_documents", "encode_document", "stream_windows", "context_config", "row_entropies",
           "text_entropies", "threshold_patcher", "rows_patch_lengths", "PatchStats", "patch_stats",
           "CalibrationResult", "threshold_candidates", "calibrate_threshold", "format_histogram",
           "format_calibration", "patch_plot_data", "plot_text", "PrecomputedEntropies", "precompute_entropies",
           "load_precomputed", "main"]
