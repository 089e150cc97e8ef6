"""Local text files -> a TFDS dataset of ArrayRecord shards (no TensorFlow needed).

Each example is one document: ``{"text": Text, "id": Text}`` (Text features are read back as
``bytes`` by ``tfds.data_source``).  Splits "train" and "validation" follow the "stream" rule of
``bltjax.data.pipeline``: all documents' bytes concatenated in file order and cut at byte
``int(total * (1 - val_fraction))``; the document containing the cut is divided there.  TFDS
shuffles examples deterministically at write time.  Read the result with::

    DataConfig(source="tfds", tfds_name=NAME, tfds_data_dir=OUT)   # split_rule auto -> "source"

CLI::

    python -m bltjax.data.tfds_builder --input 'corpus/*.txt' --out DIR [--name local_text]
        [--val-fraction 0.1] [--split-blank-lines] [--allow-invalid-utf8]
"""

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bltjax.data.pipeline import stream_cut
from bltjax.data.sources import DataError, InMemorySource, text_files

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def split_documents(src: InMemorySource, val_fraction: float) -> dict[str, list[tuple[str, bytes]]]:
    """(id, bytes) per split under the "stream" rule; an empty validation split is omitted."""
    byte_len = np.array([len(d) for d in src.docs], np.int64)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for split in ("train", "validation"):
        doc, start, length = stream_cut(byte_len, val_fraction, split)
        items = []
        for d, s, n in zip(doc.tolist(), start.tolist(), length.tolist()):
            # Token range [s, s+n) of [BOS] bytes [EOS]  ->  byte range [max(s-1,0), min(s+n-1, len)).
            b_lo, b_hi = max(s - 1, 0), min(s + n - 1, len(src.docs[d]))
            part = "" if (s == 0 and n == len(src.docs[d]) + 2) else f"@{b_lo}-{b_hi}"
            items.append((f"{src.names[d]}{part}", src.docs[d][b_lo:b_hi]))
        if items:
            out[split] = items
    if "train" not in out:
        raise DataError(f"val_fraction={val_fraction} leaves no training data")
    return out


class LocalTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over documents given at construction (see ``build_local_dataset``).

    Not registered by name: the dataset is opened later from its directory by
    ``tfds.data_source(name, data_dir=...)``.  ``pkg_dir_path`` is set and ``DatasetInfo`` is
    built by hand because TFDS otherwise looks for metadata files next to the builder module.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Local text documents as ArrayRecord."}
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, splits: dict[str, list[tuple[str, bytes]]], **kwargs):
        self._splits = splits
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text documents (one example per document) for bltjax.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "id": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(items) for split, items in self._splits.items()}

    def _generate_examples(self, items):
        for key, (doc_id, data) in enumerate(items):
            yield key, {"text": data, "id": doc_id}


def _named_builder_class(name: str) -> type[LocalTextBuilder]:
    """A ``LocalTextBuilder`` subclass whose TFDS ``name`` is ``name`` (dataset directory)."""
    if not _NAME_RE.match(name):
        raise DataError(f"dataset name {name!r} must be snake_case ([a-z][a-z0-9_]*)")
    return type(f"LocalText_{name}", (LocalTextBuilder,), {"name": name, "pkg_dir_path": LocalTextBuilder.pkg_dir_path},
                skip_registration=True)


def build_local_dataset(paths: str | Sequence[str], out_dir: str, *, name: str = "local_text",
                        val_fraction: float = 0.1, split: str = "file",
                        allow_invalid_utf8: bool = False) -> str:
    """Build ``out_dir/name/1.0.0/`` (ArrayRecord) from local text files; return ``out_dir``.

    ``paths``: files / directories / globs as accepted by ``sources.expand_paths``;
    ``split``: one document per "file" or per "blank_lines" paragraph.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    src = text_files(paths, split=split, allow_invalid_utf8=allow_invalid_utf8)
    builder = _named_builder_class(name)(splits=split_documents(src, val_fraction), data_dir=out_dir,
                                         file_format="array_record")
    with tempfile.TemporaryDirectory() as scratch:  # TFDS wants a download dir; nothing is downloaded
        builder.download_and_prepare(download_dir=scratch)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bltjax.data.tfds_builder",
                                     description="Local text files -> TFDS ArrayRecord dataset.")
    parser.add_argument("--input", required=True, action="append",
                        help="file, directory or glob (repeatable; comma-separated also works)")
    parser.add_argument("--out", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--name", default="local_text", help="dataset name (default local_text)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-blank-lines", action="store_true",
                        help="one document per blank-line-separated paragraph (default: per file)")
    parser.add_argument("--allow-invalid-utf8", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see module doc)."""
    args = build_parser().parse_args(argv)
    tfds.disable_progress_bar()
    try:
        build_local_dataset(args.input, args.out, name=args.name, val_fraction=args.val_fraction,
                            split="blank_lines" if args.split_blank_lines else "file",
                            allow_invalid_utf8=args.allow_invalid_utf8)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"built {args.name} in {args.out}; use --set data.source=tfds --set data.tfds_name={args.name} "
          f"--set data.tfds_data_dir={args.out}")
    return 0


if __name__ == "__main__":
    from bltjax.cli import run_cli

    sys.exit(run_cli(main))
