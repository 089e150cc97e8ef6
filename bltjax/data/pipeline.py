"""Training / validation byte pipeline on the Grain Dataset API (random access end to end).

Token stream.  Every document becomes ``[BOS] (bytes + 4) [EOS]`` (BOS=1, EOS=2, design §1); the
documents of a split are concatenated in source order into one stream of ``N`` tokens.

Windows.  Window ``i`` is ``stream[i*L : i*L + L + 1]`` with ``L = seq_len`` (consecutive
windows overlap by one token so every stream token after the first is a target exactly once);
``x = window[:-1]``, ``y = window[1:]``.  There are ``ceil((N - 1) / L)`` windows; the last one
is right-padded with 0.  Document offsets are precomputed with numpy, so window ``i`` is computed
directly from ``i``: the whole pipeline is a ``grain.MapDataset`` (deterministic, indexable).

Example dict (one window; batches stack them on a leading axis):

* ``"tokens"``      int32 [L]: x;
* ``"targets"``     int32 [L]: y (0 where padded);
* ``"segment_ids"`` int32 [L]: document index within the window for each x position, from 0,
  incremented *after* each EOS (the EOS belongs to the document it closes: ``seg[j]`` = number of
  EOS in ``x[:j]``, design §9); padded positions get one more id than the last real token;
* ``"mask"``        bool  [L]: True where ``y`` is a real token (False for padding);
* ``"entropies"``   float32 [L], only with ``DataConfig.entropies_path``: the stored value for
  the stream position of each ``x`` token (0 where padded).

Train / validation split (``DataConfig.split_rule``):

* ``"stream"``: the documents' raw bytes are concatenated in source order (``T`` bytes) and cut
  at byte ``c = int(T * (1 - val_fraction))``.  Documents wholly before ``c`` are train, wholly
  after are validation; the document containing the cut is divided there: its train part keeps
  its BOS but has no EOS, its validation part has no BOS but keeps the EOS.  For a single-file
  corpus such as tiny Shakespeare this gives exactly nanoGPT's "first 90 % / last 10 %" bytes.
* ``"document"``: document ``d`` is validation iff ``blake2b-64(d) / 2**64 < val_fraction``.
* ``"source"``: the source provides both splits (TFDS splits, or ``path`` / ``val_path``).
* ``"auto"``: ``"source"`` for TFDS or with ``val_path``, ``"document"`` for the embedded
  corpus, else ``"stream"``.

Batching, shuffling and hosts.  Training windows are globally shuffled (seeded; a new
permutation each epoch via ``repeat``) and repeated forever; then grouped into per-host batches
of ``B_h = global_batch / process_count`` consecutive windows, and host ``p`` takes batches
``p, p + P, p + 2P, ...`` (``ds[p::P]``).  So global step ``k`` (host batches concatenated in
process order) is exactly windows ``[k*B, (k+1)*B)`` of the shuffled sequence whatever the
process count.  Validation is one unshuffled pass, padded with empty (all-masked) windows to a
multiple of ``global_batch`` so every validation byte is evaluated exactly once.

Optional precomputed entropies: a 1-D ``.npy`` with one value per token of the *full* stream of
the opened source (all its documents, in source order, each ``[BOS] bytes [EOS]``, before any
train/validation cut).  ``full_stream_length(cfg)`` tells the expected length.
"""

import copy
import dataclasses
import functools
import hashlib

import grain
import numpy as np

from bltjax.data import DataConfig
from bltjax.data.embedded import embedded_corpus
from bltjax.data.sources import ArrayRecordSource, DataError, DocumentSource, TfdsSource, jsonl_files, text_files
from bltjax.tokenizer import encode_document  # noqa: F401  (re-exported: the one document encoding)

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 4
SPLITS = ("train", "validation")


# ----------------------------------------------------------------------------- tokens


def doc_token_slice(doc: bytes, lo: int, hi: int) -> np.ndarray:
    """Tokens ``[lo, hi)`` of ``encode_document(doc)`` without building the whole document."""
    n = len(doc)
    if not 0 <= lo <= hi <= n + 2:
        raise IndexError(f"token slice [{lo}, {hi}) out of range for a {n}-byte document")
    out = np.empty(hi - lo, np.int32)
    b_lo, b_hi = max(lo, 1), min(hi, n + 1)  # token positions that hold bytes
    if b_hi > b_lo:
        raw = np.frombuffer(doc, np.uint8, count=b_hi - b_lo, offset=b_lo - 1)
        out[b_lo - lo:b_hi - lo] = raw.astype(np.int32) + BYTE_OFFSET
    if lo == 0 and hi > 0:
        out[0] = BOS_ID
    if hi == n + 2 and hi > lo:
        out[-1] = EOS_ID
    return out


def segment_ids_from_tokens(x_l: np.ndarray, n_real: int) -> np.ndarray:
    """Document index per position: EOS count strictly before it; padding gets last id + 1."""
    is_eos = (x_l == EOS_ID).astype(np.int32)
    seg = np.cumsum(is_eos) - is_eos
    if n_real < len(x_l):
        seg[n_real:] = (seg[n_real - 1] + 1) if n_real > 0 else 0
    return seg.astype(np.int32)


def document_fraction(doc: bytes) -> float:
    """A deterministic pseudo-uniform number in [0, 1) from the document's content."""
    digest = hashlib.blake2b(doc, digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


# ----------------------------------------------------------------------------- sources


def resolved_split_rule(cfg: DataConfig) -> str:
    """The split rule ``cfg.split_rule`` stands for ("auto" resolved)."""
    if cfg.split_rule != "auto":
        return cfg.split_rule
    if cfg.source == "tfds" or cfg.val_path:
        return "source"
    return "document" if cfg.source == "embedded" else "stream"


def _files_source(cfg: DataConfig, spec: str) -> DocumentSource:
    if cfg.source == "text":
        return text_files(spec, split=cfg.text_split, allow_invalid_utf8=cfg.allow_invalid_utf8,
                          allow_binary=cfg.allow_binary)
    if cfg.source == "jsonl":
        return jsonl_files(spec, text_field=cfg.jsonl_field, allow_invalid_utf8=cfg.allow_invalid_utf8,
                           allow_binary=cfg.allow_binary)
    return ArrayRecordSource(spec, allow_invalid_utf8=cfg.allow_invalid_utf8)


def open_source(cfg: DataConfig, split: str = "train") -> DocumentSource:
    """The documents ``split`` is cut from: the split itself for rule "source", else everything."""
    _check_split(split)
    cfg.validate()
    by_source = resolved_split_rule(cfg) == "source"
    if cfg.source == "embedded":
        return embedded_corpus(max_bytes=cfg.embedded_max_bytes)
    if cfg.source == "tfds":
        tfds_split = cfg.tfds_val_split if (by_source and split == "validation") else cfg.tfds_split
        return TfdsSource(cfg.tfds_name, split=tfds_split, data_dir=cfg.tfds_data_dir or None,
                          field=cfg.tfds_field, allow_invalid_utf8=cfg.allow_invalid_utf8)
    spec = cfg.val_path if (by_source and split == "validation") else cfg.path
    return _files_source(cfg, spec)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


# ----------------------------------------------------------------------------- stream index


@dataclasses.dataclass(frozen=True, eq=False)
class StreamIndex:
    """A split's token stream as pieces of documents: piece ``k`` is tokens
    ``[start[k], start[k] + length[k])`` of ``encode_document(source[doc[k]])``."""

    doc: np.ndarray  # int64 [K]
    start: np.ndarray  # int64 [K]
    length: np.ndarray  # int64 [K]
    full_offset: np.ndarray  # int64 [K]: stream position in the source's full stream
    full_length: int  # tokens in the source's full stream (all documents)

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """int64 [K+1]: stream position where each piece starts, then the total."""
        return np.concatenate([[0], np.cumsum(self.length)]).astype(np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])


def _doc_stats(source: DocumentSource, with_fraction: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Byte length of every document (and its ``document_fraction``), reading each once."""
    n = len(source)
    byte_len = np.zeros(n, np.int64)
    fraction = np.zeros(n, np.float64) if with_fraction else None
    for i in range(n):
        doc = source[i]
        byte_len[i] = len(doc)
        if fraction is not None:
            fraction[i] = document_fraction(doc)
    return byte_len, fraction


def stream_cut(byte_len: np.ndarray, fraction: float, split: str) -> tuple[np.ndarray, ...]:
    """Pieces (doc, start, length) of ``split`` under the "stream" rule (see module doc)."""
    byte_start = np.concatenate([[0], np.cumsum(byte_len)[:-1]]).astype(np.int64)
    cut = int(int(byte_len.sum()) * (1.0 - fraction))
    docs = np.arange(len(byte_len), dtype=np.int64)
    n_tok = byte_len + 2
    whole_train = byte_start + byte_len <= cut
    whole_val = (byte_start >= cut) & ~whole_train  # (an empty document at the cut is train)
    straddle = ~(whole_train | whole_val)  # at most one document: 0 < cut - start < len
    k = cut - byte_start  # bytes of a straddling document that stay in train
    if split == "train":
        sel = whole_train | straddle
        length = np.where(straddle, k + 1, n_tok)  # BOS + first k bytes
        return docs[sel], np.zeros(int(sel.sum()), np.int64), length[sel]
    sel = whole_val | straddle
    start = np.where(straddle, k + 1, 0)
    return docs[sel], start[sel], (n_tok - start)[sel]


@functools.lru_cache(maxsize=8)
def stream_index(cfg: DataConfig, split: str) -> tuple[DocumentSource, StreamIndex]:
    """The source and the piece index of ``split`` (cached per config and split)."""
    _check_split(split)
    source = open_source(cfg, split)
    rule = resolved_split_rule(cfg)
    # Reads every document once (which also validates lazily read sources).
    byte_len, fraction = _doc_stats(source, with_fraction=rule == "document")
    n_tok = byte_len + 2
    full_offset = np.concatenate([[0], np.cumsum(n_tok)[:-1]]).astype(np.int64)
    if rule == "source":
        doc = np.arange(len(source), dtype=np.int64)
        start, length = np.zeros_like(doc), n_tok
    elif rule == "stream":
        doc, start, length = stream_cut(byte_len, cfg.val_fraction, split)
    else:  # "document"
        is_val = fraction < cfg.val_fraction
        doc = np.flatnonzero(is_val if split == "validation" else ~is_val).astype(np.int64)
        start, length = np.zeros_like(doc), n_tok[doc]
    index = StreamIndex(doc=doc, start=start.astype(np.int64), length=length.astype(np.int64),
                        full_offset=full_offset[doc] + start, full_length=int(n_tok.sum()))
    if index.num_tokens < 2:
        raise DataError(f"{split} split of data.source={cfg.source!r} (rule {rule!r}, "
                        f"val_fraction={cfg.val_fraction}) is empty; change val_fraction or split_rule")
    return source, index


def full_stream_length(cfg: DataConfig, split: str = "train") -> int:
    """Tokens in the full stream of the source ``split`` is cut from (entropies file length)."""
    return stream_index(cfg, split)[1].full_length


# ----------------------------------------------------------------------------- windows


class _Entropies:
    """A lazily memory-mapped 1-D ``.npy`` (pickles as its path, for Grain worker processes)."""

    def __init__(self, path: str, expected_len: int):
        self.path = path
        arr = self._load()
        if arr.ndim != 1 or arr.shape[0] != expected_len:
            raise DataError(f"{path}: entropies must be 1-D with {expected_len} values (one per token "
                            f"of the source's full stream), got shape {arr.shape}")
        self._arr = arr

    def _load(self) -> np.ndarray:
        from bltjax.data.entropy_file import open_entropies
        from bltjax.storage import as_path

        if not as_path(self.path).is_file():
            raise DataError(f"entropies file {self.path!r} does not exist")

        try:
            return open_entropies(self.path)
        except ValueError as e:
            raise DataError(str(e)) from None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._arr = self._load()

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(self._arr[sl], dtype=np.float32)


class WindowFn:
    """Window index -> example dict (see module doc).  Picklable for Grain workers.

    Indices ``>= num_windows`` (up to ``num_padded``) give empty, fully masked examples, used
    to pad the validation pass to whole global batches.
    """

    def __init__(self, source: DocumentSource, index: StreamIndex, seq_len: int,
                 entropies: _Entropies | None = None, num_padded: int | None = None):
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        self.source, self.index, self.seq_len, self.entropies = source, index, seq_len, entropies
        self.num_windows = -(-(index.num_tokens - 1) // seq_len)
        self.num_padded = self.num_windows if num_padded is None else num_padded

    def _gather(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Stream tokens [lo, hi) (hi <= num_tokens) and their entropies."""
        offsets = self.index.offsets
        tokens, ents = [], []
        k = int(np.searchsorted(offsets, lo, side="right")) - 1
        pos = lo
        while pos < hi:
            piece_lo = pos - int(offsets[k])
            piece_hi = min(hi, int(offsets[k + 1])) - int(offsets[k])
            start = int(self.index.start[k])
            doc = self.source[int(self.index.doc[k])]
            tokens.append(doc_token_slice(doc, start + piece_lo, start + piece_hi))
            if self.entropies is not None:
                full = int(self.index.full_offset[k])
                ents.append(self.entropies[full + piece_lo:full + piece_hi])
            pos += piece_hi - piece_lo
            k += 1
        ent = np.concatenate(ents) if self.entropies is not None else None
        return np.concatenate(tokens), ent

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not 0 <= i < self.num_padded:
            raise IndexError(f"window {i} out of range [0, {self.num_padded})")
        length = self.seq_len + 1
        window = np.full(length, PAD_ID, np.int32)
        ent = np.zeros(length, np.float32)
        n_real = 0
        if i < self.num_windows:
            lo = i * self.seq_len
            hi = min(lo + length, self.index.num_tokens)
            n_real = hi - lo
            toks, e = self._gather(lo, hi)
            window[:n_real] = toks
            if e is not None:
                ent[:n_real] = e
        x_l = window[:-1]
        out = {
            "tokens": x_l,
            "targets": window[1:],
            "segment_ids": segment_ids_from_tokens(x_l, min(n_real, self.seq_len)),
            "mask": np.arange(self.seq_len) < n_real - 1,
        }
        if self.entropies is not None:
            out["entropies"] = ent[:-1]
        return out


def _entropies_for(cfg: DataConfig, split: str, index: StreamIndex) -> _Entropies | None:
    if not cfg.entropies_path:
        return None
    path = cfg.entropies_path
    if "{split}" in path:
        path = path.replace("{split}", split if resolved_split_rule(cfg) == "source" else "train")
    return _Entropies(path, index.full_length)


def window_fn(cfg: DataConfig, split: str, seq_len: int, num_padded: int | None = None) -> WindowFn:
    """The window function of ``split`` (see ``WindowFn``)."""
    source, index = stream_index(cfg, split)
    return WindowFn(source, index, seq_len, _entropies_for(cfg, split, index), num_padded)


def num_windows(cfg: DataConfig, split: str, seq_len: int) -> int:
    """Number of (unpadded) windows of ``seq_len + 1`` tokens in ``split``."""
    return window_fn(cfg, split, seq_len).num_windows


def split_tokens(cfg: DataConfig, split: str) -> np.ndarray:
    """The whole token stream of ``split`` (int32), the one its windows are cut from."""
    source, index = stream_index(cfg, split)
    return np.concatenate([doc_token_slice(source[int(d)], int(lo), int(lo + n))
                           for d, lo, n in zip(index.doc, index.start, index.length)]).astype(np.int32)


def token_windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole token stream as windows: ``(x int32 [W, L], y int32 [W, L], n_x int32 [W])``.

    Window ``i`` is ``stream[i*L : i*L + L + 1]`` (overlap of one token: every token after the first is a
    target exactly once), right-padded with 0; ``n_x`` = tokens of ``x`` that have a target.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n_win = max(1, -(-(len(stream) - 1) // seq_len))
    padded = np.zeros(n_win * seq_len + 1, np.int32)
    padded[:len(stream)] = stream
    w = padded[np.arange(n_win)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]]
    n_x = np.clip(len(stream) - 1 - seq_len * np.arange(n_win), 0, seq_len).astype(np.int32)
    return w[:, :-1], w[:, 1:], n_x


def window_dataset(cfg: DataConfig, split: str, seq_len: int) -> grain.MapDataset:
    """All windows of ``split`` in stream order, unbatched and unshuffled."""
    fn = window_fn(cfg, split, seq_len)
    return grain.MapDataset.range(fn.num_windows).map(fn)


# ----------------------------------------------------------------------------- batches


def _per_host_batch(global_batch: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"bad process_index/process_count {process_index}/{process_count}")
    if global_batch < 1 or global_batch % process_count:
        raise DataError(f"global_batch {global_batch} must be a positive multiple of "
                        f"process_count {process_count}")
    return global_batch // process_count


def make_dataset(data_cfg: DataConfig, *, seq_len: int, global_batch: int, process_index: int = 0,
                 process_count: int = 1, split: str = "train", seed: int | None = None) -> grain.MapDataset:
    """This host's batches as a ``grain.MapDataset`` (``ds[k]`` = this host's part of step k).

    Train: windows shuffled per epoch (if ``data_cfg.shuffle``), repeated forever.  Validation:
    one unshuffled pass padded to whole global batches.  See the module doc for the layout.
    """
    _check_split(split)
    per_host = _per_host_batch(global_batch, process_index, process_count)
    seed = data_cfg.seed if seed is None else seed
    if not 0 <= seed < 2**32:
        raise DataError(f"seed must be in [0, 2**32), got {seed}")
    if split == "train":
        fn = window_fn(data_cfg, split, seq_len)
        ds = grain.MapDataset.range(fn.num_windows)
        if data_cfg.shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None)
    else:
        n = window_fn(data_cfg, split, seq_len).num_windows
        padded = -(-n // global_batch) * global_batch
        fn = window_fn(data_cfg, split, seq_len, num_padded=padded)
        ds = grain.MapDataset.range(padded)
    ds = ds.map(fn).batch(per_host, drop_remainder=True)
    return ds[process_index::process_count]


def make_iterator(data_cfg: DataConfig, *, seq_len: int, global_batch: int, process_index: int = 0,
                  process_count: int = 1, split: str = "train", seed: int | None = None,
                  start_step: int = 0) -> grain.DatasetIterator:
    """A checkpointable Grain iterator over this host's batches, positioned at ``start_step``.

    Each batch is a dict of numpy arrays ``[global_batch / process_count, seq_len]``: "tokens",
    "targets", "segment_ids" (int32), "mask" (bool), and "entropies" (float32) when configured.
    ``get_state()/set_state()`` and ``grain.checkpoint.CheckpointSave/Restore`` work;
    ``seek(it, k, data_cfg.worker_count)`` repositions it at step ``k`` without reading.
    Training iterators never end; validation iterators end after one pass.
    """
    ds = make_dataset(data_cfg, seq_len=seq_len, global_batch=global_batch, process_index=process_index,
                      process_count=process_count, split=split, seed=seed)
    read = grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.prefetch_batches)
    it_ds = ds.to_iter_dataset(read)
    if data_cfg.worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=data_cfg.worker_count, per_worker_buffer_size=data_cfg.worker_buffer_size))
    it = iter(it_ds)
    if start_step < 0:
        raise DataError(f"start_step must be >= 0, got {start_step}")
    if start_step:
        seek(it, start_step, data_cfg.worker_count)
    return it


def seek(it: grain.DatasetIterator, step: int, worker_count: int) -> None:
    """Position a ``make_iterator`` iterator so that its next batch is step ``step`` (no reads).

    In-process iterators support ``grain.experimental.set_next_index``.  With ``mp_prefetch``
    over several workers Grain interleaves per-worker slices (worker ``w`` serves batches
    ``w, w + W, ...``) and has no ``set_next_index``; the equivalent state is written instead:
    worker ``w`` has served ``ceil((step - w) / W)`` batches and worker ``step % W`` is next.
    """
    if worker_count <= 1:
        grain.experimental.set_next_index(it, step)
        return
    state = copy.deepcopy(it.get_state())
    keys = {"next_index_in_cycle", "iterators_in_use_indices", "iterators_in_use_states"}
    if not (isinstance(state, dict) and keys <= state.keys()
            and state["iterators_in_use_indices"] == list(range(worker_count))
            and all("next_index" in s for s in state["iterators_in_use_states"])):
        raise DataError("cannot position this multi-worker Grain iterator at a step (unknown state "
                        "layout); use data.worker_count=0, or restore a saved iterator state")
    state["next_index_in_cycle"] = step % worker_count
    state["iterators_in_use_states"] = [
        {**s, "next_index": (step - w + worker_count - 1) // worker_count}
        for w, s in enumerate(state["iterators_in_use_states"])]
    it.set_state(state)
