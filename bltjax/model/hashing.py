"""Hash n-gram ids of the BLT local encoder (design §4), bit-exact without ``jax_enable_x64``.

For n-gram size n, prime p and position i the official code computes, in wrapping *signed* 64-bit
integer arithmetic,

    H = sum_{j=0}^{n-1} x_{i-n+1+j} * p**j        (x_m = 0 for m < 0: left padding with BOE)
    id = H mod V                                    (floor modulo of the signed value, in [0, V))

JAX without x64 has no 64-bit integers, so the 64-bit ring is emulated here with pairs of uint32
limbs (hi, lo): products via 16-bit partial products, sums with an explicit carry.  The signed floor
modulo is computed from the limbs: ``U mod V`` of the unsigned value by a Horner scheme over bit
chunks small enough that no step overflows uint32, then ``- 2**64 mod V`` for negative values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

# One prime per hash function (index = function number), design §4.
PRIMES: tuple[int, ...] = (
    1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767, 3628273133,
    2860486313, 5463458053, 3367900313,
)

_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _check_args(group_sizes: Sequence[int], nb_functions: int, vocab: int) -> None:
    if len(group_sizes) == 0 or any(int(n) < 1 for n in group_sizes):
        raise ValueError(f"group_sizes must be a non-empty list of sizes >= 1, got {tuple(group_sizes)}")
    if not 1 <= nb_functions <= len(PRIMES):
        raise ValueError(f"nb_functions must be in [1, {len(PRIMES)}] (one prime each), got {nb_functions}")
    if not 1 <= vocab < 2**31:
        raise ValueError(f"hash vocab must be in [1, 2**31), got {vocab}")


# --------------------------------------------------------------------------- uint32-limb arithmetic

def _mul32_wide(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Full 64-bit product (hi, lo) of two uint32 arrays, from four 16x16-bit partial products."""
    a0, a1 = a & _MASK16, a >> 16
    b0, b1 = b & _MASK16, b >> 16
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1  # each < 2**32: exact in uint32
    mid = (p00 >> 16) + (p01 & _MASK16) + (p10 & _MASK16)  # < 3 * 2**16
    lo = (p00 & _MASK16) | (mid << 16)
    hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return hi, lo


def _mul64(a_hi, a_lo, b_hi, b_lo) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(a * b) mod 2**64 on limb pairs (the cross terms only affect the high limb)."""
    hi, lo = _mul32_wide(a_lo, b_lo)
    hi = hi + a_lo * b_hi + a_hi * b_lo  # uint32 products wrap mod 2**32, as required
    return hi, lo


def _add64(a_hi, a_lo, b_hi, b_lo) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(a + b) mod 2**64 on limb pairs."""
    lo = a_lo + b_lo
    carry = (lo < a_lo).astype(jnp.uint32)
    return a_hi + b_hi + carry, lo


def _signed_floor_mod(hi: jnp.ndarray, lo: jnp.ndarray, vocab: int) -> jnp.ndarray:
    """Python ``s % vocab`` of the two's-complement int64 s = (hi, lo); returns int32 in [0, vocab)."""
    # Horner over k-bit chunks of the unsigned value: r < vocab < 2**b, so r * 2**k + chunk < 2**32.
    k = 32 - int(vocab).bit_length()
    v = jnp.uint32(vocab)
    r = jnp.zeros_like(lo)
    bit = 64
    while bit > 0:
        width = min(k, bit)
        bit -= width
        # Bits [bit, bit + width) of the 64-bit value (the chunk may straddle the limbs).
        if bit >= 32:
            chunk = (hi >> (bit - 32)) & ((1 << width) - 1)
        elif bit + width <= 32:
            chunk = (lo >> bit) & ((1 << width) - 1)
        else:
            lo_bits = 32 - bit
            chunk = (lo >> bit) | ((hi & ((1 << (width - lo_bits)) - 1)) << lo_bits)
        r = (r * jnp.uint32(1 << width) + chunk) % v
    # Negative values: s = U - 2**64, so s mod V = (U mod V - 2**64 mod V) mod V.
    c = jnp.uint32((1 << 64) % vocab)
    neg = (hi >> 31) == 1
    r_neg = jnp.where(r >= c, r - c, r + (v - c))
    return jnp.where(neg, r_neg, r).astype(jnp.int32)


# --------------------------------------------------------------------------- public API

def hash_ids(tokens_bn: jnp.ndarray, group_sizes: Sequence[int], nb_functions: int, vocab: int) -> jnp.ndarray:
    """Hash n-gram ids ``int32 [B, T, N]`` of integer tokens ``[B, N]`` (design §4).

    ``T = nb_functions * len(group_sizes)``; table ``t = f * len(group_sizes) + idx(n)`` (function-major,
    then n in list order), i.e. the official ``ModuleList`` order.  Bit-identical to the official
    signed-int64 rolling polynomial hash with floor modulo; works with or without ``jax_enable_x64``.
    Tokens are sign-extended to 64 bits (negative ids hash like the official int64 code would).
    ``group_sizes``, ``nb_functions`` and ``vocab`` must be static under ``jax.jit``.
    """
    group_sizes = tuple(int(n) for n in group_sizes)
    _check_args(group_sizes, nb_functions, vocab)
    tokens_bn = jnp.asarray(tokens_bn)
    if tokens_bn.ndim != 2:
        raise ValueError(f"hash_ids expects tokens of shape [B, N], got {tokens_bn.shape}")
    if not jnp.issubdtype(tokens_bn.dtype, jnp.integer):
        raise ValueError(f"hash_ids expects integer tokens, got {tokens_bn.dtype}")
    tok = tokens_bn.astype(jnp.int32)
    n_tok = tok.shape[1]
    max_n = max(group_sizes)
    # Weight of lag d (token x_{i-d}) in table t: p_f**(n-1-d) mod 2**64 for d < n, else 0.
    # All tables are computed at once, [B, T, N], so the traced graph is O(max_n), not O(T * n).
    weights = np.zeros((nb_functions * len(group_sizes), max_n), dtype=object)
    for f in range(nb_functions):
        for gi, n in enumerate(group_sizes):
            for d in range(n):
                weights[f * len(group_sizes) + gi, d] = pow(PRIMES[f], n - 1 - d, 1 << 64)
    w_hi = np.array([[int(w) >> 32 for w in row] for row in weights], dtype=np.uint32)
    w_lo = np.array([[int(w) & _MASK32 for w in row] for row in weights], dtype=np.uint32)

    acc_hi = acc_lo = None
    for d in range(max_n):
        x = tok if d == 0 else jnp.pad(tok, ((0, 0), (d, 0)))[:, :n_tok]  # x_{i-d}, BOE (0) padding
        x_lo = x.astype(jnp.uint32)[:, None, :]
        x_hi = jnp.where(x < 0, jnp.uint32(_MASK32), jnp.uint32(0))[:, None, :]  # sign extension
        t_hi, t_lo = _mul64(x_hi, x_lo, jnp.asarray(w_hi[None, :, d, None]), jnp.asarray(w_lo[None, :, d, None]))
        if acc_hi is None:
            acc_hi, acc_lo = t_hi, t_lo
        else:
            acc_hi, acc_lo = _add64(acc_hi, acc_lo, t_hi, t_lo)
    return _signed_floor_mod(acc_hi, acc_lo, vocab)


def _wrap_int64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def hash_ids_reference(tokens, group_sizes: Sequence[int], nb_functions: int, vocab: int) -> np.ndarray:
    """Slow pure-Python big-integer reference of :func:`hash_ids` (tests only).

    ``tokens`` [B, N] (or [N], then the result is [T, N]); returns int64 numpy ids.
    """
    group_sizes = tuple(int(n) for n in group_sizes)
    _check_args(group_sizes, nb_functions, vocab)
    arr = np.asarray(tokens)
    squeeze = arr.ndim == 1
    arr = np.atleast_2d(arr)
    b, n_tok = arr.shape
    out = np.zeros((b, nb_functions * len(group_sizes), n_tok), dtype=np.int64)
    for row in range(b):
        xs = [int(v) for v in arr[row]]
        for f in range(nb_functions):
            p = PRIMES[f]
            for gi, n in enumerate(group_sizes):
                t = f * len(group_sizes) + gi
                for i in range(n_tok):
                    window = [xs[m] if m >= 0 else 0 for m in range(i - n + 1, i + 1)]
                    h = 0
                    for j, w in enumerate(window):  # oldest byte * p**0
                        h = _wrap_int64(h + _wrap_int64(w * _wrap_int64(p**j)))
                    out[row, t, i] = h % vocab  # Python % = floor modulo of the signed value
    return out[0] if squeeze else out


__all__ = ["PRIMES", "hash_ids", "hash_ids_reference"]
