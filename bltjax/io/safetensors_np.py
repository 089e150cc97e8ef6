"""Read ``*.safetensors`` files into numpy arrays (bf16 included, memory-mapped).

The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}`` and the raw little-endian tensor bytes.  The
``safetensors`` package's numpy API has no bfloat16, which every released BLT checkpoint uses, hence
this small reader (``ml_dtypes`` supplies the dtype).
"""

from __future__ import annotations

import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only numpy arrays backed by a memory map."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2 ** 20:
            raise ValueError(f"{path}: not a safetensors file (bad header length {n})")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or end > data.size:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets {begin}..{end} for {shape}")
        out[name] = data[begin:end].view(dtype).reshape(shape)
    return out


def load_safetensors_dir(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the ``*.safetensors`` files of a directory (sharded checkpoints included)."""
    directory = pathlib.Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory}")
    out: dict[str, np.ndarray] = {}
    for file in files:
        part = load_safetensors(file)
        dup = set(part) & set(out)
        if dup:
            raise ValueError(f"{file}: tensors {sorted(dup)[:5]} also appear in another shard")
        out.update(part)
    return out


__all__ = ["load_safetensors", "load_safetensors_dir", "DTYPES"]
