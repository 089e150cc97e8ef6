"""Patching (design §3) and patch-id bookkeeping (design §7, §8, §9) as pure, jit-able jnp functions.

Everything works on static shapes.  A row of ``N`` token slots holds ``S`` real tokens (``S = N``
unless ``lengths_b`` says otherwise; rows are right-padded) and is cut into patches covering
``S' = S + 1`` positions when ``include_next_token`` (position ``S`` is the *virtual* next byte, the
inference convention) or ``S' = S`` otherwise.  Patches are described by

* a start mask ``bool [B, N+1]`` over positions ``0..N`` (:func:`patch_start_mask`), and
* lengths ``int32 [B, P]`` right-padded with zeros to a static ``P`` (:func:`lengths_from_starts`).

Every row's lengths sum to its own ``S'`` (also for padded rows and on overflow).  Deviation from the
official code: the official batched space/bpe patchers crash (negative lengths) on batches whose rows
have different patch counts with some ``include_next_token`` settings; here every row is simply
patched on its own.  Configs (``PatcherConfig``) and all ``int``/``bool`` keyword arguments are static
under ``jax.jit``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import PatcherConfig
from bltjax.tokenizer import BOE_ID, BPE_ID, EOS_ID, OFFSET

# --------------------------------------------------------------------------- entropies


def entropies_from_logits(logits_bnv: jnp.ndarray, *, in_logits_dtype: bool = False) -> jnp.ndarray:
    """Natural-log entropy of the next-byte distribution at each position: ``[..., V] -> float32 [...]``.

    ``H_i = -sum_v p_v log p_v`` with ``p = softmax(z_i)``.  Computed in float32 by default; with
    ``in_logits_dtype=True`` the arithmetic stays in the logits' dtype (the official realtime path runs
    the entropy model in bf16 and computes the entropy in bf16), and only the result is cast to fp32.
    """
    dtype = logits_bnv.dtype if in_logits_dtype else jnp.float32
    z = logits_bnv.astype(dtype)
    logp = jax.nn.log_softmax(z, axis=-1)
    h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return h.astype(jnp.float32)


# --------------------------------------------------------------------------- start masks


def _row_lengths(tokens_bn: jnp.ndarray, lengths_b: Optional[jnp.ndarray]) -> jnp.ndarray:
    b, n = tokens_bn.shape
    if lengths_b is None:
        return jnp.full((b,), n, jnp.int32)
    lengths_b = jnp.asarray(lengths_b)
    if lengths_b.shape != (b,):
        raise ValueError(f"lengths_b must have shape ({b},), got {lengths_b.shape}")
    return jnp.clip(lengths_b.astype(jnp.int32), 0, n)


def _shift_right(x_bn: jnp.ndarray, k: int, fill) -> jnp.ndarray:
    """``y[:, j] = x[:, j - k]`` for positions ``j = 0..N`` (output ``[B, N+1]``), ``fill`` where j < k."""
    b, n = x_bn.shape
    pad = jnp.full((b, k), fill, x_bn.dtype)
    return jnp.concatenate([pad, x_bn], axis=1)[:, : n + 1]


def _space_like(tokens: jnp.ndarray) -> jnp.ndarray:
    """The official "space-like" byte predicate (specials count as space-like too: c < '0')."""
    c = tokens - OFFSET
    return ((c < ord("0"))
            | ((c > ord("9")) & (c < ord("A")))
            | ((c > ord("Z")) & (c < ord("a")))
            | ((c > ord("z")) & (c < 0x80))
            | (c >= 0xC0))


def rule_start(pcfg: PatcherConfig, j, h_prev=None, h_prev2=None, tok_prev=None, tok_prev2=None) -> jnp.ndarray:
    """The patch-start rule at position ``j`` (design §3.1), before ``max_patch_length`` splits and the
    row-length mask; element-wise, so it serves the batched patcher (``[B, N+1]`` arrays of shifted
    values) and the incremental decoder (scalars) alike.  Causal: it reads only ``H_{j-1}``
    (``h_prev``), ``H_{j-2}``, ``x_{j-1}`` (``tok_prev``) and ``x_{j-2}``; positions 0 and 1 always start.

    * ``byte``: every position; ``static``: every multiple of ``int(patch_size)`` (official layout);
    * ``space``: ``j >= 2`` iff ``x_{j-1}`` is space-like and ``x_{j-2}`` is not, or ``x_{j-1}`` is a special;
    * ``entropy`` with a threshold: global ``H_{j-1} > threshold`` (``j >= 2``); ``monotonicity``: position
      2, then ``H_{j-1} - H_{j-2} > threshold`` (``j >= 3``); ``threshold_add``: position 2, never 3, then
      both tests (``j >= 4``).
    ``bpe`` and fixed-count entropy (``threshold=None``) depend on the whole row: see :func:`patch_start_mask`.
    """
    always = j <= 1
    mode = pcfg.mode
    if mode == "byte":
        return jnp.ones_like(always)
    if mode == "static":
        return j % int(pcfg.patch_size) == 0
    if mode == "space":
        ends = (_space_like(tok_prev) & ~_space_like(tok_prev2)) | (tok_prev < OFFSET)  # x_{j-1} closes a patch
        return always | ((j >= 2) & ends)
    if mode == "entropy" and pcfg.threshold is not None:
        h1 = jnp.asarray(h_prev, jnp.float32)
        h2 = jnp.asarray(h_prev2, jnp.float32)
        if pcfg.monotonicity:
            rest = (j == 2) | ((j >= 3) & (h1 - h2 > pcfg.threshold))
        elif pcfg.threshold_add is not None:
            rest = (j == 2) | ((j >= 4) & (h1 - h2 > pcfg.threshold_add) & (h1 > pcfg.threshold))
        else:
            rest = (j >= 2) & (h1 > pcfg.threshold)
        return always | rest
    raise ValueError(f"patching mode {mode!r} (threshold {pcfg.threshold}) has no position-wise start rule")


def training_static_start(j, patch_size: int) -> jnp.ndarray:
    """The training layout of static patching, ``[1, ps, ps, ...]``: position 0, then 1, 1+ps, 1+2ps..."""
    return (j == 0) | ((j >= 1) & ((j - 1) % patch_size == 0))


def model_rule_start(pcfg: PatcherConfig, j, h_prev=None, h_prev2=None, tok_prev=None, tok_prev2=None):
    """:func:`rule_start` as a BLT is trained and decoded (static mode: :func:`training_static_start`)."""
    if pcfg.mode == "static":
        return training_static_start(j, int(pcfg.patch_size))
    return rule_start(pcfg, j, h_prev, h_prev2, tok_prev, tok_prev2)


def _fixed_count_starts(ent_bn: jnp.ndarray, seq_b: jnp.ndarray, patch_size: float) -> jnp.ndarray:
    """Entropy mode with threshold=None: the ``S // patch_size - 2`` largest of ``H_1..H_{S-1}`` start
    patches at positions ``index + 1`` (i.e. ``H_{j-1}`` selects position j).  Returns ``bool [B, N+1]``."""
    b, n = ent_bn.shape
    # k per row from a host table so that Python's float floor division is reproduced exactly.
    k_table = np.array([min(max(int(s // patch_size) - 2, 0), max(s - 1, 0)) for s in range(n + 1)],
                       dtype=np.int32)
    k_max = int(k_table.max())
    mask = jnp.zeros((b, n + 1), bool)
    if k_max == 0:
        return mask
    k_b = jnp.asarray(k_table)[seq_b]
    e = ent_bn[:, 1:]  # e_m = H_{m+1}, candidate position m + 2
    m = jnp.arange(n - 1)
    scores = jnp.where(m[None, :] + 1 < seq_b[:, None], e, -jnp.inf)
    _, top_m = jax.lax.top_k(scores, k_max)
    keep = jnp.arange(k_max)[None, :] < k_b[:, None]
    pos = jnp.where(keep, top_m + 2, n + 1)  # n + 1 is out of bounds: dropped
    return jax.vmap(lambda m_n, p_k: m_n.at[p_k].set(True, mode="drop"))(mask, pos)


def patch_start_mask(
    pcfg: PatcherConfig,
    tokens_bn: jnp.ndarray,
    entropies_bn: Optional[jnp.ndarray] = None,
    *,
    include_next_token: bool,
    lengths_b: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Patch start flags ``bool [B, N+1]`` over positions ``0..N`` (design §3.1).

    Position ``j`` may only start a patch when ``j < S'`` (``S' = S + include_next_token``), so padding
    positions and, without ``include_next_token``, the virtual position ``S`` never start.  Positions 0
    and 1 always start (when ``< S'``).  Modes (``pcfg.mode``):

    * ``entropy`` (needs ``entropies_bn`` float [B, N], ``H_i`` = uncertainty about byte i+1):
      - global threshold: ``j >= 2`` starts iff ``H_{j-1} > threshold`` (strict);
      - ``monotonicity``: position 2 always; ``j >= 3`` iff ``H_{j-1} - H_{j-2} > threshold``;
      - ``threshold_add`` set: position 2 always, position 3 never (official artefact),
        ``j >= 4`` iff ``H_{j-1} - H_{j-2} > threshold_add`` and ``H_{j-1} > threshold``;
      - ``threshold=None``: the ``S // patch_size - 2`` largest of ``H_1..H_{S-1}`` (fixed count);
    * ``space``: ``j >= 2`` iff byte ``j-1`` is space-like and byte ``j-2`` is not, or ``j-1`` is a special;
    * ``bpe``: ``j >= 2`` iff token ``j-1`` is the delimiter (id 3) and ``j <= S-1``;
    * ``byte``: every position; ``static``: every multiple of ``int(patch_size)``.
    """
    pcfg.validate()
    tokens_bn = jnp.asarray(tokens_bn)
    if tokens_bn.ndim != 2:
        raise ValueError(f"tokens must have shape [B, N], got {tokens_bn.shape}")
    b, n = tokens_bn.shape
    seq_b = _row_lengths(tokens_bn, lengths_b)
    total_b = seq_b + int(bool(include_next_token))
    idx = jnp.arange(n + 1)[None, :]  # [1, N+1]
    in_row = idx < total_b[:, None]
    always = idx <= 1
    mode = pcfg.mode

    if mode == "byte" or mode == "static":
        cand = jnp.broadcast_to(rule_start(pcfg, idx), (b, n + 1))
    elif mode == "space":
        toks = tokens_bn.astype(jnp.int32)
        cand = rule_start(pcfg, idx, tok_prev=_shift_right(toks, 1, 0), tok_prev2=_shift_right(toks, 2, 0))
    elif mode == "bpe":
        delim = tokens_bn == BPE_ID
        cand = always | ((idx >= 2) & _shift_right(delim, 1, False) & (idx <= seq_b[:, None] - 1))
    elif mode == "entropy":
        if entropies_bn is None:
            raise ValueError("entropy patching needs entropies_bn (float [B, N])")
        ent = jnp.asarray(entropies_bn).astype(jnp.float32)  # the official patcher compares in fp32
        if ent.shape != (b, n):
            raise ValueError(f"entropies_bn must have shape {(b, n)}, got {ent.shape}")
        if pcfg.threshold is None:
            cand = always | _fixed_count_starts(ent, seq_b, float(pcfg.patch_size))
        else:  # H_{j-1}, H_{j-2} at position j
            cand = rule_start(pcfg, idx, h_prev=_shift_right(ent, 1, 0.0), h_prev2=_shift_right(ent, 2, 0.0))
    else:  # pragma: no cover - validate() rejects unknown modes
        raise ValueError(f"unknown patching mode {mode!r}")
    return cand & in_row


# --------------------------------------------------------------------------- lengths


def lengths_from_starts(
    starts_bn1: jnp.ndarray,
    total_b: jnp.ndarray,
    max_patches: int,
    max_patch_length: Optional[int] = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Start flags ``[B, M]`` -> ``(lengths int32 [B, max_patches], n_patches int32 [B], overflow bool [B])``.

    Only flags at positions ``< total_b`` (the row's ``S'``) count, and position 0 always starts a patch,
    so each row's lengths sum to ``total_b``.  ``max_patch_length = m`` splits every longer patch into
    ``[m, m, ..., rest]`` (full chunks first, a zero remainder is not emitted), design §3.2.  Lengths are
    right-padded with 0.  A row needing more than ``max_patches`` patches sets ``overflow`` and is
    truncated: its first ``max_patches - 1`` patches are kept and the last kept patch absorbs all the
    remaining positions (so the sum stays ``total_b``, but that patch may exceed ``max_patch_length``);
    ``n_patches`` is then ``max_patches``.
    """
    starts_bn1 = jnp.asarray(starts_bn1).astype(bool)
    if starts_bn1.ndim != 2:
        raise ValueError(f"starts must have shape [B, N+1], got {starts_bn1.shape}")
    if max_patches < 1:
        raise ValueError(f"max_patches must be >= 1, got {max_patches}")
    if max_patch_length is not None and max_patch_length < 1:
        raise ValueError(f"max_patch_length must be >= 1, got {max_patch_length}")
    b, m = starts_bn1.shape
    total_b = jnp.broadcast_to(jnp.asarray(total_b, jnp.int32), (b,))
    idx = jnp.arange(m, dtype=jnp.int32)[None, :]
    in_row = idx < total_b[:, None]
    valid = (starts_bn1 | (idx == 0)) & in_row
    if max_patch_length is not None:
        # Distance to the latest original start; a new chunk starts every max_patch_length positions.
        prev_start = jax.lax.cummax(jnp.where(valid, idx, 0), axis=1)
        valid = in_row & ((idx - prev_start) % max_patch_length == 0)
    count_b = jnp.sum(valid, axis=1, dtype=jnp.int32)
    rank = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
    col = jnp.where(valid & (rank < max_patches), rank, max_patches + 1)  # out of bounds -> dropped
    start_bp1 = jnp.broadcast_to(total_b[:, None], (b, max_patches + 1))
    start_bp1 = jax.vmap(lambda s_p, c_m: s_p.at[c_m].set(idx[0], mode="drop"))(start_bp1, col)
    lengths_bp = start_bp1[:, 1:] - start_bp1[:, :-1]
    return lengths_bp.astype(jnp.int32), jnp.minimum(count_b, max_patches), count_b > max_patches


def patch_lengths(
    pcfg: PatcherConfig,
    tokens_bn: jnp.ndarray,
    entropies_bn: Optional[jnp.ndarray] = None,
    *,
    include_next_token: bool = True,
    max_patches: Optional[int] = None,
    lengths_b: Optional[jnp.ndarray] = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Patch lengths ``int32 [B, P]`` (zero right-padded) and ``overflow bool [B]`` (design §3).

    ``P = max_patches`` if given, else ``pcfg.max_patches``, else ``N + 1`` (never overflows).
    Rows sum to ``S' = S + include_next_token`` with ``S = lengths_b`` (default N).
    """
    tokens_bn = jnp.asarray(tokens_bn)
    if tokens_bn.ndim != 2:
        raise ValueError(f"tokens must have shape [B, N], got {tokens_bn.shape}")
    n = tokens_bn.shape[1]
    p = max_patches if max_patches is not None else (pcfg.max_patches or n + 1)
    starts = patch_start_mask(pcfg, tokens_bn, entropies_bn, include_next_token=include_next_token,
                              lengths_b=lengths_b)
    total_b = _row_lengths(tokens_bn, lengths_b) + int(bool(include_next_token))
    lengths_bp, _, overflow_b = lengths_from_starts(starts, total_b, int(p), pcfg.max_patch_length)
    return lengths_bp, overflow_b


def static_training_starts(n: int, patch_size: int) -> jnp.ndarray:
    """Start flags ``bool [N+1]`` of ``[1, ps, ps, ..., rest]``: position 0, then 1, 1+ps, 1+2ps..."""
    return training_static_start(jnp.arange(n + 1), patch_size)


def model_start_mask(pcfg: PatcherConfig, tokens_bn: jnp.ndarray, entropies_bn: Optional[jnp.ndarray] = None,
                     *, lengths_b: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Patch starts over positions ``0..N`` as a BLT is trained and decoded: the virtual next byte
    included and a first patch of one byte (the decoder reads patch ``P(i+1) - 1`` for byte ``i``, so a
    longer first patch would show byte 0 the bytes after it).  ``static`` mode therefore uses the data
    loader's ``[1, ps, ps, ...]`` (design §15.5) instead of the official patcher's ``[ps, ps, ...]``; the
    other modes are ``patch_start_mask(include_next_token=True)``, which starts at 0 and 1 already."""
    if pcfg.mode != "static":
        return patch_start_mask(pcfg, tokens_bn, entropies_bn, include_next_token=True, lengths_b=lengths_b)
    b, n = jnp.asarray(tokens_bn).shape
    in_row = jnp.arange(n + 1)[None, :] <= _row_lengths(jnp.asarray(tokens_bn), lengths_b)[:, None]
    return static_training_starts(n, int(pcfg.patch_size))[None, :] & in_row


def model_patch_lengths(pcfg: PatcherConfig, tokens_bn: jnp.ndarray, entropies_bn: Optional[jnp.ndarray] = None,
                        *, max_patches: Optional[int] = None,
                        lengths_b: Optional[jnp.ndarray] = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Lengths ``int32 [B, P]`` (rows sum to ``S + 1``) and overflow ``bool [B]`` of
    :func:`model_start_mask`, padded or truncated to ``P`` as in :func:`patch_lengths`."""
    tokens_bn = jnp.asarray(tokens_bn)
    n = tokens_bn.shape[1]
    p = max_patches if max_patches is not None else (pcfg.max_patches or n + 1)
    starts = model_start_mask(pcfg, tokens_bn, entropies_bn, lengths_b=lengths_b)
    total_b = _row_lengths(tokens_bn, lengths_b) + 1
    lengths_bp, _, overflow_b = lengths_from_starts(starts, total_b, int(p), pcfg.max_patch_length)
    return lengths_bp, overflow_b


# --------------------------------------------------------------------------- patch ids


def patch_ids_from_lengths(lengths_bp: jnp.ndarray, n: int) -> jnp.ndarray:
    """Patch id of each of ``n`` positions: ``int32 [B, n]`` (design §9).

    ``pid(i) = #{p : start_p <= i} - 1`` with ``start = [0, cumsum(lengths)]`` -- equivalently the number
    of patch *ends* ``cumsum(lengths)_p`` that are ``<= i`` -- exactly the official formula including
    zero-length padding: positions at or beyond the row total get an id counting the padding columns
    (up to ``P``), i.e. they belong to no real patch.
    """
    lengths_bp = jnp.asarray(lengths_bp).astype(jnp.int32)
    if lengths_bp.ndim != 2:
        raise ValueError(f"lengths must have shape [B, P], got {lengths_bp.shape}")
    ends_bp = jnp.cumsum(lengths_bp, axis=1)
    hits = jax.vmap(lambda e_p: jnp.zeros((n + 1,), jnp.int32).at[e_p].add(1))(jnp.clip(ends_bp, 0, n))
    return jnp.cumsum(hits[:, :n], axis=1, dtype=jnp.int32)


def decoder_patch_ids(lengths_bp: jnp.ndarray, n: int) -> jnp.ndarray:
    """Decoder patch ids ``int32 [B, n]``: ids from ``lengths[:, 1:]`` -- the off-by-one of design §8
    (byte i reads the global state of patch ``P(i+1) - 1``)."""
    return patch_ids_from_lengths(jnp.asarray(lengths_bp)[:, 1:], n)


def trim_lengths(lengths_bp) -> np.ndarray:
    """Host helper: drop trailing columns that are zero in every row (the official output format)."""
    arr = np.asarray(lengths_bp)
    if arr.ndim != 2:
        raise ValueError(f"lengths must have shape [B, P], got {arr.shape}")
    nonzero_cols = np.flatnonzero((arr != 0).any(axis=0))
    keep = int(nonzero_cols[-1]) + 1 if nonzero_cols.size else 0
    return arr[:, :keep]


def global_patch_tokens(tokens_bn: jnp.ndarray, patch_ids_bn: jnp.ndarray, n_patches: int,
                        eos_id: int = EOS_ID) -> jnp.ndarray:
    """Global-model token per patch ``int32 [B, n_patches]``: ``eos_id`` if any byte of the patch is EOS,
    else BOE (0).  Drives the block-causal global mask (design §7).  Ids ``>= n_patches`` are ignored."""
    tokens_bn = jnp.asarray(tokens_bn)
    patch_ids_bn = jnp.asarray(patch_ids_bn).astype(jnp.int32)
    if tokens_bn.shape != patch_ids_bn.shape or tokens_bn.ndim != 2:
        raise ValueError(f"tokens {tokens_bn.shape} and patch ids {patch_ids_bn.shape} must both be [B, N]")
    is_eos = (tokens_bn == eos_id).astype(jnp.int32)
    col = jnp.clip(patch_ids_bn, 0, n_patches)  # n_patches = overflow bucket, sliced away
    hits = jax.vmap(lambda c_n, e_n: jnp.zeros((n_patches + 1,), jnp.int32).at[c_n].max(e_n))(col, is_eos)
    return jnp.where(hits[:, :n_patches] > 0, eos_id, BOE_ID).astype(jnp.int32)


__all__ = ["entropies_from_logits", "rule_start", "training_static_start", "model_rule_start", "patch_start_mask",
           "lengths_from_starts", "patch_lengths", "static_training_starts", "model_start_mask", "model_patch_lengths",
           "patch_ids_from_lengths", "decoder_patch_ids", "trim_lengths", "global_patch_tokens"]
