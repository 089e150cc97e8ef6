"""bltjax data layer: document sources -> byte-token windows -> Grain batches.

Public entry points:

* ``DataConfig`` (below): every knob of the data layer, plain types only so a generic
  ``--set data.x=v`` override parser can coerce values from the annotations;
* ``bltjax.data.pipeline.make_iterator`` (re-exported here): the training / validation
  iterator, deterministic, step-indexable and checkpointable with Orbax;
* ``bltjax.data.sources``: text / JSON-lines / ArrayRecord / TFDS document sources;
* ``bltjax.data.embedded``: the download-free default corpus (Python stdlib sources);
* ``bltjax.data.tfds_builder``: local text files -> TFDS ArrayRecord dataset (+ CLI);
* ``bltjax.data.fetch``: named small corpora downloaded into a cache (``fetch:NAME`` paths, + CLI).

Token ids (design §1): byte ``b`` -> ``b + 4``, BOS = 1, EOS = 2, padding/BOE = 0.
"""

import dataclasses

SOURCE_KINDS = ("embedded", "text", "jsonl", "array_record", "tfds")
SPLIT_RULES = ("auto", "stream", "document", "source")
TEXT_SPLITS = ("file", "blank_lines")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where documents come from, how they are split into train/validation, how they are fed.

    Split rules (``split_rule``; see ``bltjax.data.pipeline`` for the exact definitions):

    * ``"stream"``: concatenate all documents' bytes in source order and cut at byte
      ``int(total_bytes * (1 - val_fraction))``: the first part is train, the rest validation
      (the document straddling the cut is divided there).  Same bytes as nanoGPT's 90/10.
    * ``"document"``: a document is validation iff a hash of its content falls below
      ``val_fraction`` (order-independent; duplicates land in the same split).
    * ``"source"``: the source is already split: TFDS ``tfds_split`` / ``tfds_val_split``, or
      files ``path`` (train) / ``val_path`` (validation).
    * ``"auto"``: ``"source"`` for TFDS or when ``val_path`` is set, ``"document"`` for the
      embedded corpus, ``"stream"`` otherwise.

    Empty strings mean "not set".
    """

    source: str = "embedded"  # one of SOURCE_KINDS
    path: str = ""  # text/jsonl/array_record: file, directory or glob; several comma-separated
    val_path: str = ""  # optional separate validation files (split_rule "source")
    text_split: str = "file"  # text: one document per "file", or per "blank_lines" paragraph
    jsonl_field: str = "text"  # jsonl: the string field holding each document's text
    tfds_name: str = ""  # tfds: dataset name (as built by bltjax.data.tfds_builder or catalog)
    tfds_data_dir: str = ""  # tfds: data_dir ("" = TFDS default)
    tfds_split: str = "train"  # tfds: split used for training
    tfds_val_split: str = "validation"  # tfds: split used for validation
    tfds_field: str = "text"  # tfds: text feature name (Text features come back as bytes)
    split_rule: str = "auto"  # one of SPLIT_RULES
    val_fraction: float = 0.1  # validation share for the "stream" and "document" rules
    shuffle: bool = True  # global shuffle of training windows (reshuffled every epoch)
    seed: int = 0  # shuffle seed (make_iterator's `seed` argument overrides it)
    worker_count: int = 0  # Grain mp_prefetch worker processes (0 = in-process)
    worker_buffer_size: int = 1  # batches buffered per worker process
    read_threads: int = 2  # threads of the in-process prefetch (to_iter_dataset ReadOptions)
    prefetch_batches: int = 4  # batches prefetched in-process (0 = no thread prefetch)
    # The model reads bytes: text that is not valid UTF-8 (Latin-1, mixed encodings) trains as is
    # (False: refuse it, naming the file and byte offset).  Files that look binary (NUL bytes, many
    # control bytes) are refused unless allow_binary.
    allow_invalid_utf8: bool = True
    allow_binary: bool = False
    embedded_max_bytes: int = 4_000_000  # size cap of the embedded stdlib corpus
    # Optional .npy of per-token entropies for the source's full token stream (see pipeline);
    # "{split}" in the path is replaced by "train"/"validation" for split_rule "source".
    entropies_path: str = ""

    def validate(self) -> "DataConfig":
        """Raise ``DataError`` (a ValueError) on inconsistent values; return self."""
        from bltjax.config import check_ranges
        from bltjax.data.sources import DataError

        try:
            check_ranges(self, "data.")
        except ValueError as e:
            raise DataError(str(e)) from None

        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise DataError(msg)

        check(self.source in SOURCE_KINDS, f"data.source must be one of {SOURCE_KINDS}, got {self.source!r}")
        check(self.split_rule in SPLIT_RULES,
              f"data.split_rule must be one of {SPLIT_RULES}, got {self.split_rule!r}")
        check(self.text_split in TEXT_SPLITS,
              f"data.text_split must be one of {TEXT_SPLITS}, got {self.text_split!r}")
        check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.source not in ("text", "jsonl", "array_record") or bool(self.path),
              f"data.source={self.source!r} needs data.path")
        check(self.source != "tfds" or bool(self.tfds_name), "data.source='tfds' needs data.tfds_name")
        check(not (self.split_rule == "source" and self.source in ("text", "jsonl", "array_record")
                   and not self.val_path), "data.split_rule='source' with files needs data.val_path")
        check(not (self.split_rule == "source" and self.source == "embedded"),
              "the embedded corpus has no source-side split; use 'document' or 'stream'")
        check(0 <= self.seed < 2**32, f"data.seed must be in [0, 2**32), got {self.seed}")
        check(self.worker_count >= 0, "data.worker_count must be >= 0")
        check(self.worker_buffer_size >= 1, "data.worker_buffer_size must be >= 1")
        check(self.read_threads >= 0 and self.prefetch_batches >= 0,
              "data.read_threads and data.prefetch_batches must be >= 0")
        check(self.embedded_max_bytes > 0, "data.embedded_max_bytes must be > 0")
        return self


def __getattr__(name: str):
    # Lazy re-exports: `import bltjax.data` stays cheap (no grain / tfds import).
    if name in ("make_iterator", "make_dataset", "window_dataset", "num_windows"):
        from bltjax.data import pipeline

        return getattr(pipeline, name)
    if name == "DataError":
        from bltjax.data.sources import DataError

        return DataError
    raise AttributeError(f"module 'bltjax.data' has no attribute {name!r}")


__all__ = ["DataConfig", "DataError", "SOURCE_KINDS", "SPLIT_RULES", "TEXT_SPLITS",
           "make_iterator", "make_dataset", "window_dataset", "num_windows"]
