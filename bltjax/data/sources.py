"""Document sources: random access to documents as raw UTF-8 ``bytes``.

Every source has ``len(source)`` and ``source[i] -> bytes``, one document per index, which is
all the windowing pipeline needs (``bltjax.data.pipeline``).  Kinds:

* ``text_files``: local text files, globs or directories; one document per file, or one per
  blank-line-separated paragraph (``split="blank_lines"``);
* ``jsonl_files``: JSON-lines files, one document per line taken from a string field;
* ``ArrayRecordSource``: ArrayRecord shards whose records are one document's bytes each;
* ``TfdsSource``: a prepared TFDS dataset read with ``tfds.data_source`` (no TensorFlow needed);
* the embedded default corpus lives in ``bltjax.data.embedded``.

Bad input raises ``DataError`` (a ``ValueError``) with a one-line message that names the file:
missing paths, globs matching nothing, empty files or corpora, binary files (NUL bytes or mostly
control characters; ``allow_binary=True`` lets them through) and, with ``allow_invalid_utf8=False``,
invalid UTF-8 (with the byte offset).  ``DataConfig`` lets invalid UTF-8 through by default, since the
model reads bytes, not characters; file sources count such files (``n_invalid_utf8``).
"""

import bisect
import dataclasses
import glob
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

_GLOB_CHARS = frozenset("*?[")
# Control bytes that plain text does contain: \b \t \n \v \f \r and ESC (terminal colours).
_TEXT_CONTROLS = frozenset(b"\x08\t\n\x0b\x0c\r\x1b")
# Every byte that is *not* a suspicious control byte (deleted before counting the rest).
_NOT_SUSPICIOUS = bytes(b for b in range(256) if not (b < 0x20 or b == 0x7F) or b in _TEXT_CONTROLS)
_BINARY_SNIFF_BYTES = 65536
_BINARY_CONTROL_FRACTION = 0.05


class DataError(ValueError):
    """Bad data-layer input (missing/empty/binary/undecodable files, bad config values)."""


@runtime_checkable
class DocumentSource(Protocol):
    """Random access to documents: ``len(src)`` and ``src[i] -> bytes``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> bytes: ...


@dataclasses.dataclass(frozen=True, eq=False)
class InMemorySource:
    """Documents held in memory, with a name per document for error messages and provenance."""

    docs: tuple[bytes, ...]
    names: tuple[str, ...]
    n_invalid_utf8: int = 0  # files (or JSON lines) whose bytes are not valid UTF-8, let through

    def __post_init__(self):
        if len(self.docs) != len(self.names):
            raise DataError(f"InMemorySource: {len(self.docs)} docs but {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: int) -> bytes:
        return self.docs[index]


# ----------------------------------------------------------------------------- validation


def is_mostly_binary(data: bytes) -> bool:
    """True if ``data`` holds a NUL byte or > 5 % non-text control bytes in its first 64 KiB."""
    head = data[:_BINARY_SNIFF_BYTES]
    if b"\x00" in head:
        return True
    controls = len(head.translate(None, _NOT_SUSPICIOUS))
    return len(head) > 0 and controls > _BINARY_CONTROL_FRACTION * len(head)


def check_utf8(data: bytes, where: str, allow_invalid_utf8: bool) -> bytes:
    """Return ``data`` unchanged, or raise naming ``where`` and the first bad byte offset."""
    if allow_invalid_utf8:
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: invalid UTF-8 at byte offset {e.start} ({e.reason}); pass "
            "--set data.allow_invalid_utf8=true to train on the raw bytes") from None
    return data


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_text_file(data: bytes, where: str, allow_invalid_utf8: bool, allow_binary: bool = False) -> bytes:
    """Validate a whole text file's bytes: non-empty, not binary unless allowed, UTF-8 unless allowed."""
    if not data.strip():
        raise DataError(f"{where}: file is empty (or whitespace only)")
    if not allow_binary and is_mostly_binary(data):
        raise DataError(f"{where}: looks like a binary file (NUL or control bytes), not text; pass "
                        f"--set data.allow_binary=true to train on it anyway")
    return check_utf8(data, where, allow_invalid_utf8)


# ----------------------------------------------------------------------------- paths


def _split_spec(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    parts = [p.strip() for item in items for p in os.fspath(item).split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise DataError("no input path given (empty path / glob)")
    return parts


def _is_hidden(path: pathlib.PurePath, root: pathlib.PurePath) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _remote_glob(part: str) -> list[pathlib.PurePath]:
    """Files matching a ``gs://`` glob (the part before the first wildcard component is the base)."""
    from bltjax.storage import as_path

    scheme, rest = part.split("://", 1)
    components = rest.split("/")
    k = next(i for i, c in enumerate(components) if any(ch in c for ch in _GLOB_CHARS))
    if k == 0:
        raise DataError(f"glob {part!r}: the bucket name cannot contain wildcards")
    base = as_path(f"{scheme}://" + "/".join(components[:k]))
    return sorted((m for m in base.glob("/".join(components[k:])) if m.is_file()), key=str)


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.PurePath]:
    """Files named by ``spec``: files, directories (recursive) and globs, comma-separated.

    Directories contribute every non-hidden regular file below them, sorted; globs (``*``, ``?``,
    ``[``; ``**`` recursive) are sorted too, so the document order is deterministic.  ``fetch:NAME``
    names the cached file of a known corpus, downloaded on first use (``bltjax.data.fetch``).  Remote
    paths (``gs://bucket/...``) work the same way and come back as ``etils.epath.Path``.
    """
    from bltjax.storage import as_path, files_under, is_remote

    files: list[pathlib.PurePath] = []
    for part in _split_spec(spec):
        if part.startswith("fetch:"):
            from bltjax.data import fetch

            try:
                part = fetch.resolve(part)
            except fetch.FetchError as e:
                raise DataError(str(e)) from None
        remote = is_remote(part)
        path = as_path(part) if remote else pathlib.Path(part).expanduser()
        if any(c in part for c in _GLOB_CHARS):
            if remote:
                matches = _remote_glob(part)
            else:
                matches = sorted(pathlib.Path(m) for m in glob.glob(str(path), recursive=True))
                matches = [m for m in matches if m.is_file()]
            if not matches:
                raise DataError(f"glob {part!r} matches no files")
            files.extend(matches)
        elif path.is_dir():
            found = [p for p in files_under(path) if not _is_hidden(p, path)] if remote else \
                sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
            if not found:
                raise DataError(f"directory {part!r} contains no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"path {part!r} does not exist")
    return files


def _read(path: pathlib.PurePath) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _nonempty(src: InMemorySource, what: str) -> InMemorySource:
    if len(src) == 0:
        raise DataError(f"{what}: corpus is empty (no documents)")
    return src


# ----------------------------------------------------------------------------- text / jsonl


def split_blank_lines(data: bytes) -> list[bytes]:
    """Paragraphs of ``data``: runs of lines separated by one or more blank lines (trimmed)."""
    paragraphs, current = [], []
    for line in data.replace(b"\r\n", b"\n").split(b"\n"):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(b"\n".join(current))
            current = []
    if current:
        paragraphs.append(b"\n".join(current))
    return paragraphs


def text_files(spec: str | pathlib.Path | Sequence[str | pathlib.Path], *, split: str = "file",
               allow_invalid_utf8: bool = False, allow_binary: bool = False) -> InMemorySource:
    """Local text files as documents: one per file (``split="file"``) or per paragraph
    (``split="blank_lines"``).  Files are read whole, as bytes, in ``expand_paths`` order."""
    if split not in ("file", "blank_lines"):
        raise DataError(f"text split must be 'file' or 'blank_lines', got {split!r}")
    docs, names, invalid = [], [], 0
    for path in expand_paths(spec):
        data = check_text_file(_read(path), str(path), allow_invalid_utf8, allow_binary)
        invalid += not is_utf8(data)
        if split == "file":
            docs.append(data)
            names.append(str(path))
        else:
            for k, para in enumerate(split_blank_lines(data)):
                docs.append(para)
                names.append(f"{path}#{k}")
    return _nonempty(InMemorySource(tuple(docs), tuple(names), invalid), str(spec))


def _jsonl_line_text(line: bytes, field: str, where: str, allow_invalid_utf8: bool) -> bytes:
    # surrogateescape keeps invalid bytes round-trippable when they are allowed through.
    text_line = line.decode("utf-8", errors="surrogateescape")
    try:
        record = json.loads(text_line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg}, column {e.colno}") from None
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no text field {field!r} (has {keys})")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value.encode("utf-8", errors="surrogateescape")


def jsonl_files(spec: str | pathlib.Path | Sequence[str | pathlib.Path], *, text_field: str = "text",
                allow_invalid_utf8: bool = False, allow_binary: bool = False) -> InMemorySource:
    """JSON-lines files as documents: the string ``text_field`` of each non-blank line."""
    docs, names, invalid = [], [], 0
    for path in expand_paths(spec):
        data = check_text_file(_read(path), str(path), allow_invalid_utf8, allow_binary)
        invalid += not is_utf8(data)
        for lineno, line in enumerate(data.split(b"\n"), start=1):
            if line.strip():
                where = f"{path}:{lineno}"
                docs.append(_jsonl_line_text(line, text_field, where, allow_invalid_utf8))
                names.append(where)
    return _nonempty(InMemorySource(tuple(docs), tuple(names), invalid), str(spec))


# ----------------------------------------------------------------------------- ArrayRecord / TFDS


class ArrayRecordSource:
    """ArrayRecord shards, each record one document's bytes (read lazily, random access).

    Records are checked for UTF-8 when read (``allow_invalid_utf8`` lifts the check); the
    windowing pipeline reads every document once when it builds its index, so errors surface
    at pipeline construction.
    """

    def __init__(self, spec: str | pathlib.Path | Sequence[str | pathlib.Path], *,
                 allow_invalid_utf8: bool = False):
        import grain  # local: keeps `import bltjax.data.sources` light

        from bltjax.storage import stage_local

        self.paths = [str(p) for p in expand_paths(spec)]
        # ArrayRecord's reader opens local files only: remote shards are copied to the local cache once.
        self.local_paths = [str(stage_local(p, what="ArrayRecord shard")) for p in self.paths]
        self.allow_invalid_utf8 = allow_invalid_utf8
        counts = []
        for path, local in zip(self.paths, self.local_paths):  # opened one by one so that a bad shard is named
            try:
                counts.append(len(grain.sources.ArrayRecordDataSource([local])))
            except Exception as e:  # array_record raises RuntimeError/ValueError with long texts
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(f"{path}: not readable as ArrayRecord ({first})") from None
        self._starts = [0]
        for c in counts:
            self._starts.append(self._starts[-1] + c)
        if self._starts[-1] == 0:
            raise DataError(f"{spec}: ArrayRecord corpus is empty (no records)")
        self._source = grain.sources.ArrayRecordDataSource(self.local_paths)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[str, int]:
        """(shard path, record index within it) of global record ``index``."""
        shard = bisect.bisect_right(self._starts, index) - 1
        return self.paths[shard], index - self._starts[shard]

    def __getitem__(self, index: int) -> bytes:
        record = bytes(self._source[index])
        if self.allow_invalid_utf8:
            return record
        path, local = self.locate(index)
        return check_utf8(record, f"{path} record {local}", False)


def _as_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")
    if hasattr(value, "tobytes") and getattr(value, "dtype", None) is not None:
        if value.dtype.kind in ("S", "O") and value.shape == ():
            return _as_bytes(value.item(), where)
        if value.dtype.kind == "u" and value.dtype.itemsize == 1:
            return value.tobytes()
    raise DataError(f"{where}: cannot read a document from a {type(value).__name__}")


def _not_prepared_message(name: str, where: str, data_dir: str | None, builder: Any) -> str:
    root = data_dir or str(getattr(builder, "_data_dir_root", "") or "the TFDS default data_dir")
    base = name.split("/")[0].split(":")[0]
    return (f"{where}: dataset {name!r} is not prepared under {root}, and TFDS datasets are never downloaded "
            f"during training; prepare it on a machine with network access "
            f"(tfds.builder({base!r}, data_dir=DIR).download_and_prepare(file_format='array_record'); see "
            f"docs/data.md) or build one from local text files (python -m bltjax.data.tfds_builder --input FILES "
            f"--out DIR --name NAME), then copy DIR here and pass --set data.tfds_data_dir=DIR")


class TfdsSource:
    """A prepared TFDS dataset split, via ``tfds.data_source`` (ArrayRecord; no TensorFlow).

    ``field`` names the text feature; ``tfds.features.Text`` values come back as ``bytes``
    (``str`` and uint8 arrays are accepted too).
    """

    def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None,
                 field: str = "text", allow_invalid_utf8: bool = False):
        import tensorflow_datasets as tfds  # local: tfds import costs ~0.7 s

        if not name:
            raise DataError("TFDS source needs a dataset name (data.tfds_name)")
        if data_dir and "://" in data_dir:
            raise DataError(f"TFDS data_dir {data_dir!r}: remote TFDS directories are not read directly (ArrayRecord "
                            "opens local files only); use data.source='array_record' with data.path set to the "
                            "dataset's gs://.../*.array_record-* shards (staged to a local cache), or a gcsfuse mount")
        if data_dir and not pathlib.Path(data_dir).expanduser().is_dir():
            raise DataError(f"TFDS data_dir {data_dir!r} does not exist")
        self.where = f"tfds:{name}[{split}]"
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)  # "Variant folder ... has no dataset_info.json" is expected here
        try:  # never download: a dataset that is not prepared fails at once, with where to put it
            builder = tfds.builder(name, data_dir=data_dir or None)
            if not builder.is_prepared():
                raise DataError(_not_prepared_message(name, self.where, data_dir, builder))
            self._source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        except DataError:
            raise
        except Exception as e:  # DatasetNotFoundError, unknown split, ... -> one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{self.where}: cannot open ({first})") from None
        finally:
            absl_log.setLevel(level)
        self.field = field
        self.allow_invalid_utf8 = allow_invalid_utf8
        if len(self._source) == 0:
            raise DataError(f"{self.where}: split is empty (no examples)")
        first = self._source[0]
        if not isinstance(first, dict) or field not in first:
            keys = sorted(first) if isinstance(first, dict) else type(first).__name__
            raise DataError(f"{self.where}: no text feature {field!r} (has {keys})")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        where = f"{self.where} example {index}"
        data = _as_bytes(self._source[index][self.field], where)
        return check_utf8(data, where, self.allow_invalid_utf8)
