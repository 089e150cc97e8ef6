"""The precomputed-entropies format written by ``python -m bltjax.entropy_tools precompute``.

One output directory holds, per split, ``entropies_<split>.npy`` (1-D float16/float32, one value per
token of the source's full stream: every document as ``[BOS] bytes [EOS]`` in source order; the
layout ``DataConfig.entropies_path`` expects), ``offsets_<split>.npy`` (int64 document starts) and
one ``index.json`` whose ``format`` tag is :data:`PRECOMPUTE_FORMAT`.

:func:`open_entropies` is the one reader of an entropies array (the training pipeline uses it too):
it memory-maps the array and, when an ``index.json`` sits beside it, checks the format tag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

PRECOMPUTE_FORMAT = "bltjax-entropies-v1"
INDEX_FILE = "index.json"


def read_index(index_path: str | os.PathLike) -> dict:
    """The ``index.json`` of a precompute output directory; ValueError on another format tag."""
    from bltjax.storage import as_path

    index_path = as_path(index_path)
    meta = json.loads(index_path.read_text())
    if meta.get("format") != PRECOMPUTE_FORMAT:
        raise ValueError(f"{index_path}: unknown format {meta.get('format')!r} (expected {PRECOMPUTE_FORMAT!r})")
    return meta


def open_entropies(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a 1-D entropies ``.npy``; if it lies in a precompute directory, check its format tag.
    A remote (``gs://``) file is copied to the local cache once (``bltjax.storage.stage_local``)."""
    from bltjax.storage import as_path, stage_local

    path = as_path(path)
    index = path.parent / INDEX_FILE
    if index.is_file():
        read_index(index)
    return np.load(stage_local(path, what="entropies file"), mmap_mode="r")


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


def load_precomputed(path: str | pathlib.Path, split: str = "train") -> PrecomputedEntropies:
    """Open entropies written by ``precompute_entropies``: ``path`` is the output directory (or its
    ``index.json``); the array is memory-mapped."""
    from bltjax.storage import as_path, is_remote

    p = as_path(path) if is_remote(path) else pathlib.Path(path)
    index_path = p if p.name == "index.json" else p / "index.json"
    if not index_path.is_file():
        raise ValueError(f"{path}: no index.json (not a precompute output directory)")
    meta = read_index(index_path)
    if split not in meta["splits"]:
        raise ValueError(f"{index_path}: no split {split!r} (has {sorted(meta['splits'])})")
    info = meta["splits"][split]
    ent = open_entropies(index_path.parent / info["entropies"])
    with (index_path.parent / info["offsets"]).open("rb") as f:
        offsets = np.load(f)
    if ent.ndim != 1 or ent.shape[0] != offsets[-1]:
        raise ValueError(f"{index_path.parent}: entropies ({ent.shape}) do not match the offsets ({offsets[-1]})")
    return PrecomputedEntropies(path=str(index_path.parent), entropies=ent, offsets=offsets, meta=meta)


__all__ = ["PRECOMPUTE_FORMAT", "INDEX_FILE", "read_index", "open_entropies", "PrecomputedEntropies",
           "load_precomputed"]
