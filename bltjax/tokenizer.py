"""Byte-level tokenizer of BLT (design §1): token id = byte value + 4, ids 0..3 are specials.

Pure host-side numpy code.  Unlike the official tokenizer, ``encode`` takes ``bytes`` as they are,
so any byte string (including invalid UTF-8) round-trips exactly through ``encode``/``decode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

import numpy as np

BOE_ID = 0  # beginning of encoder; also the padding id of the data loader and the hash windows
BOS_ID = 1
EOS_ID = 2  # also the document separator of every block-causal mask
BPE_ID = 3  # BPE delimiter (bpe patching mode)
OFFSET = 4  # byte b is token b + OFFSET
PAD_ID = -1  # fill value of generation buffers only; never fed to a model
VOCAB_SIZE = 256 + OFFSET  # 260

TextLike = Union[str, bytes, bytearray, memoryview]


def _to_bytes(data: TextLike) -> bytes:
    """UTF-8 encode text (unencodable lone surrogates dropped, as the official code does)."""
    if isinstance(data, str):
        return data.encode("utf-8", errors="ignore")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"encode expects str or bytes, got {type(data).__name__}")


def encode(data: TextLike, add_bos: bool = True, add_eos: bool = False) -> np.ndarray:
    """Token ids (int32, shape [N]) of a string (UTF-8) or a raw byte string.

    ``add_eos`` defaults to False (the generation convention); training documents are
    ``[BOS] + bytes + [EOS]``.
    """
    raw = np.frombuffer(_to_bytes(data), dtype=np.uint8).astype(np.int32) + OFFSET
    parts = []
    if add_bos:
        parts.append(np.array([BOS_ID], np.int32))
    parts.append(raw)
    if add_eos:
        parts.append(np.array([EOS_ID], np.int32))
    return np.concatenate(parts).astype(np.int32)


def encode_document(doc: bytes) -> np.ndarray:
    """``[BOS] (bytes + 4) [EOS]`` as int32: a training document (the one document encoding)."""
    return encode(doc, add_bos=True, add_eos=True)


def _as_1d_ids(ids: Union[Sequence[int], np.ndarray]) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"decode expects integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def decode(ids: Union[Sequence[int], np.ndarray]) -> bytes:
    """Bytes of a token sequence; specials and padding (ids < 4) are dropped.

    Raises ValueError for ids >= 260 (not a token of the byte vocabulary).
    """
    arr = _as_1d_ids(ids)
    if arr.size and arr.max() >= VOCAB_SIZE:
        bad = int(arr[arr >= VOCAB_SIZE][0])
        raise ValueError(f"token id {bad} is outside the BLT vocabulary [0, {VOCAB_SIZE})")
    return (arr[arr >= OFFSET] - OFFSET).astype(np.uint8).tobytes()


def decode_text(ids: Union[Sequence[int], np.ndarray], errors: str = "replace") -> str:
    """UTF-8 text of a token sequence (the official code uses errors="ignore")."""
    return decode(ids).decode("utf-8", errors=errors)


def encode_batch(
    data: Iterable[TextLike],
    add_bos: bool = True,
    add_eos: bool = False,
    pad_to: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode several texts into a right-padded batch.

    Returns ``(tokens int32 [B, N], lengths int32 [B])``; padding is BOE (0), the data loader's
    pad id.  ``N = pad_to`` if given (ValueError if a row is longer), else the longest row.
    """
    rows = [encode(d, add_bos=add_bos, add_eos=add_eos) for d in data]
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    longest = int(lengths.max()) if len(rows) else 0
    n = longest if pad_to is None else int(pad_to)
    if n < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest encoded row ({longest} tokens)")
    tokens = np.full((len(rows), n), BOE_ID, dtype=np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, lengths


def check_tokens(tokens, max_len: Optional[int] = None) -> None:
    """Raise ValueError unless every id is in [0, 260) and the last axis is <= ``max_len``.

    Accepts numpy or (concrete) jax arrays of any rank; meant for host-side input validation.
    """
    arr = np.asarray(tokens)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if max_len is not None and arr.ndim >= 1 and arr.shape[-1] > max_len:
        raise ValueError(f"sequence length {arr.shape[-1]} exceeds the maximum of {max_len} tokens")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= VOCAB_SIZE:
            bad = lo if lo < 0 else hi
            where = tuple(int(i) for i in np.argwhere(arr == bad)[0])
            raise ValueError(
                f"token id {bad} at index {where} is outside [0, {VOCAB_SIZE}) "
                f"(PAD_ID={PAD_ID} must be replaced before feeding a model)")


__all__ = ["BOE_ID", "BOS_ID", "EOS_ID", "BPE_ID", "OFFSET", "PAD_ID", "VOCAB_SIZE", "encode", "encode_document",
           "decode", "decode_text", "encode_batch", "check_tokens"]
