"""Documents for the entropy tools and evaluation: files -> documents -> token rows.

Files are read as raw bytes (invalid UTF-8 and binary data are fine: the model reads bytes);
documents are encoded as ``[BOS] bytes [EOS]`` (``bltjax.tokenizer.encode_document``, the training
pipeline's encoding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np

from bltjax.data.sources import _jsonl_line_text, expand_paths
from bltjax.tokenizer import encode_document


def read_files(spec: str | Sequence[str], *, jsonl_field: str = "text") -> list[tuple[str, list[bytes]]]:
    """``(path, [document bytes, ...])`` per file named by ``spec`` (files, directories, globs;
    comma-separated).

    Files are read as raw bytes (invalid UTF-8 and binary data are fine: the model reads bytes) and
    are one document each; ``*.jsonl`` files give one document per non-blank line (the string field
    ``jsonl_field``).  Empty files are skipped.
    """
    files: list[tuple[str, list[bytes]]] = []
    for path in expand_paths(spec):
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            docs = [_jsonl_line_text(line, jsonl_field, f"{path}:{lineno}", True)
                    for lineno, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
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


__all__ = ["read_files", "read_documents", "sample_documents", "encode_document", "stream_windows"]
