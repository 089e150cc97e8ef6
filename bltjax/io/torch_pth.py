"""Read PyTorch ``torch.save`` checkpoints (zip format) into numpy arrays, without torch.

A ``consolidated.pth`` is a zip archive ``<name>/data.pkl`` (a pickle of the state dict in which
every tensor is a call to ``torch._utils._rebuild_tensor_v2`` on a *persistent* storage reference),
``<name>/data/<key>`` (raw little-endian storage bytes), ``<name>/byteorder`` and version files.

Unpickling arbitrary data executes arbitrary code, so the pickle is read with a restricted
``pickle.Unpickler``: ``find_class`` resolves only an explicit allow-list of globals, each mapped to
a local, side-effect-free stand-in; everything else raises ``ValueError("refusing to unpickle ...")``.
Storages are memory-mapped when the zip member is stored uncompressed (what torch writes), and each
tensor is materialised with its size / stride / storage offset (``as_strided`` copy).
"""

from __future__ import annotations

import collections
import dataclasses
import mmap
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

# torch storage class name -> numpy dtype of one element.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "Float8_e4m3fnStorage": np.dtype(ml_dtypes.float8_e4m3fn),
    "Float8_e5m2Storage": np.dtype(ml_dtypes.float8_e5m2),
}

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic number of torch < 1.6 files


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only carries the element dtype."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A loaded storage: a flat array of ``numel`` elements."""

    data: np.ndarray


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple,
                    *_ignored: Any) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``: a C-contiguous copy of the strided view."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"malformed checkpoint: tensor built from {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError(f"malformed checkpoint: size {size} / stride {stride}")
    flat = storage.data
    offset = int(storage_offset)
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size:
        raise ValueError(f"malformed checkpoint: tensor (offset {offset}, size {size}, stride {stride}) "
                         f"exceeds its storage of {flat.size} elements")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data: np.ndarray, requires_grad: Any = None, backward_hooks: Any = None,
                       *_ignored: Any) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its data."""
    if not isinstance(data, np.ndarray):
        raise ValueError("malformed checkpoint: parameter without tensor data")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if args and not isinstance(args[0], (list, tuple, dict)):
        raise ValueError("malformed checkpoint: OrderedDict built from a non-sequence")
    return collections.OrderedDict(*args)


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` is how protocol-2 pickles store ``bytes``; only latin-1 text is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch", "device"): _device,
        ("_codecs", "encode"): _codecs_encode,
    }
    for name, dtype in STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and loads storages from the archive."""

    def __init__(self, file: Any, load_storage: Callable[[_StorageType, str, int], _Storage]):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._cache: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ValueError(f"refusing to unpickle {module}.{name}: not on the allow-list of "
                             f"torch checkpoint globals (file may be malicious or unsupported)") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"refusing to unpickle persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unsupported storage type {storage_type!r:.80}")
        key = str(key)
        if key not in self._cache:  # tensors may share one storage
            self._cache[key] = self._load_storage(storage_type, key, int(numel))
        return self._cache[key]


def _member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, mm: mmap.mmap | None) -> np.ndarray:
    """The raw bytes of a zip member as a uint8 array: an mmap view when stored, else a read copy."""
    if mm is not None and info.compress_type == zipfile.ZIP_STORED:
        header = mm[info.header_offset: info.header_offset + 30]
        if header[:4] == b"PK\x03\x04":
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            return np.frombuffer(mm, dtype=np.uint8, count=info.file_size, offset=start)
    return np.frombuffer(zf.read(info), dtype=np.uint8)


def load_torch_pth(path: str | os.PathLike, *, key: str | None = "model") -> dict[str, np.ndarray]:
    """Load a torch zip checkpoint as ``{name: np.ndarray}`` (safely; torch is not needed).

    If the top-level object is a dict holding ``key`` (``{"model": state_dict}``, the release layout)
    that entry is returned, otherwise the top level itself must be a flat state dict.  bf16 tensors
    come back as ``ml_dtypes.bfloat16`` arrays.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        kind = "legacy (torch < 1.6, non-zip)" if head == _LEGACY_MAGIC else "non-zip"
        raise ValueError(f"{path}: {kind} torch checkpoint format is not supported; re-save it with "
                         f"torch >= 1.6 (torch.save(obj, path)) to get the zip format")
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        try:
            mm: mmap.mmap | None = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            mm = None
        obj = _unpickle_archive(zf, mm, path)
    return _select_state_dict(obj, key, path)


def _unpickle_archive(zf: zipfile.ZipFile, mm: mmap.mmap | None, path: str) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch checkpoint (expected one '<name>/data.pkl', found {pkl})")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode().strip()
    if byteorder not in ("little", "big"):
        raise ValueError(f"{path}: unknown byteorder {byteorder!r}")
    infos = {i.filename: i for i in zf.infolist()}

    def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
        member = f"{prefix}data/{key}"
        if member not in infos:
            raise ValueError(f"{path}: storage {member!r} missing from the archive")
        raw = _member_bytes(zf, infos[member], mm)
        nbytes = numel * storage_type.dtype.itemsize
        if raw.size < nbytes:
            raise ValueError(f"{path}: storage {member!r} has {raw.size} bytes, expected {nbytes}")
        dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
        arr = raw[:nbytes].view(dtype)
        if byteorder != "little":
            arr = arr.astype(storage_type.dtype)
        return _Storage(arr)

    with zf.open(pkl[0]) as f:
        try:
            return _RestrictedUnpickler(f, load_storage).load()
        except ValueError as e:
            if str(e).startswith(f"{path}:"):
                raise
            raise ValueError(f"{path}: {e}") from None  # name the file (a refusal is about this file)


def _select_state_dict(obj: Any, key: str | None, path: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: top-level object is a {type(obj).__name__}, expected a dict")
    if key is not None and key in obj and isinstance(obj[key], dict):
        obj = obj[key]
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray) or not isinstance(k, str)]
    if bad:
        raise ValueError(f"{path}: not a flat state dict (non-tensor entries {bad[:5]}); "
                         f"top-level keys: {list(obj)[:10]}")
    return dict(obj)


__all__ = ["load_torch_pth", "STORAGE_DTYPES"]
