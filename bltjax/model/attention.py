"""Attention: the single dispatch point for every attention in BLT, plus its mask builders.

Self-attention (local byte models, entropy model, global model):
    ``self_attention(q, k, v, doc_bt=..., window=..., impl=...)``
    * ``xla``: exact masked softmax.  With a sliding window shorter than the sequence it runs
      *block-local*: query blocks of 128 attend only to the keys their window can reach, so the cost
      is O(T*(W+128)) instead of O(T^2).
    * ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16).
    * ``splash``: the Pallas splash-attention kernel (``bltjax/model/splash.py``), block-sparse over
      the causal / sliding-window mask, documents as segment ids, in ``shard_map`` over the batch and
      head mesh axes.  On a TPU it compiles to a Mosaic kernel; elsewhere it runs in Pallas interpret
      mode (slow: for tests).
    * ``auto``: splash when compiling for TPU (the mesh's devices, or the default backend), cudnn on
      GPU with a 16-bit compute dtype, otherwise xla.

Cross-attention (design §6, §8, §9):
    * encoder, patches query bytes: each byte belongs to exactly one patch, so the exact-patch mask is
      a *segment softmax* over the bytes of each patch — O(N*k*d) with gathers and segment sums, no
      [P*k, N] score matrix.
    * decoder, bytes query patches: byte i attends only to the k slots of patch dpid(i) — a gather and
      a softmax over k, O(N*k*d).
    * windowed variants (``cross_attn_window_*`` set) use the dense masked path.
A query row with no allowed key returns 0 (flex-attention semantics, design §20.6), never NaN.
Layouts: q ``[B, T, N, H]`` (N query heads), k/v ``[B, S, K, H]`` (K kv heads, GQA when K < N; kv head
g serves query heads g*r .. g*r+r-1).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.sharding import constrain_rows, target_platform

_NEG = -1e30


# ------------------------------------------------------------------------------------------ masks
def local_mask(doc_q_bt: Optional[jax.Array], doc_k_bs: Optional[jax.Array], pos_q_t: jax.Array,
               pos_k_s: jax.Array, window: Optional[int]) -> jax.Array:
    """allowed(i, j) = doc(i)==doc(j) and j <= i and i - j < W  ->  bool [B or 1, T, S]."""
    diff_ts = pos_q_t[:, None] - pos_k_s[None, :]
    allowed = diff_ts >= 0
    if window is not None:
        allowed = allowed & (diff_ts < window)
    allowed = allowed[None]
    if doc_q_bt is not None:
        allowed = allowed & (doc_q_bt[:, :, None] == doc_k_bs[:, None, :])
    return allowed


def doc_ids_from_tokens(tokens_bt: jax.Array, eos_id: int, extra_boundary_id: Optional[int] = None) -> jax.Array:
    """Document index per position: number of EOS strictly before i (the EOS closes its document)."""
    is_end = tokens_bt == eos_id
    if extra_boundary_id is not None:
        is_end = is_end | (tokens_bt == extra_boundary_id)
    ends = is_end.astype(jnp.int32)
    return jnp.cumsum(ends, axis=1) - ends


def encoder_cross_mask(pid_bn: jax.Array, n_patches: int, k: int, window: Optional[int]) -> jax.Array:
    """Patches (query slot p*k+r) attend bytes: pid(i) == p, or pid(i) <= p < pid(i)+w.  [B, P*k, N]."""
    p_q = jnp.repeat(jnp.arange(n_patches), k)[None, :, None]
    pid = pid_bn[:, None, :]
    if window is None:
        return p_q == pid
    return (pid <= p_q) & (p_q < pid + window)


def decoder_cross_mask(dpid_bn: jax.Array, n_patches: int, k: int, window: Optional[int]) -> jax.Array:
    """Bytes attend patch slots p*k+r: dpid(i) == p, or p <= dpid(i) < p+w.  [B, N, P*k]."""
    p_k = jnp.repeat(jnp.arange(n_patches), k)[None, None, :]
    dpid = dpid_bn[:, :, None]
    if window is None:
        return p_k == dpid
    return (p_k <= dpid) & (dpid < p_k + window)


# ------------------------------------------------------------------------------------------ kernels
def dense_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                    mask_bts: Optional[jax.Array]) -> jax.Array:
    """Reference masked softmax attention (fp32 scores), GQA by head grouping; a row with no allowed
    key returns 0, and masked keys never reach the output (even NaN ones)."""
    return softmax_attention(q_btnh, k_bskh, v_bskh, mask_bts=mask_bts)


def mask_bias(allowed_bts: jax.Array) -> jax.Array:
    """Additive fp32 bias of a boolean mask: 0 where allowed, -1e30 elsewhere."""
    return jnp.where(allowed_bts, 0.0, _NEG).astype(jnp.float32)


def softmax_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                      bias_bts: Optional[jax.Array] = None, mask_bts: Optional[jax.Array] = None) -> jax.Array:
    """softmax(q k^T / sqrt(h) + bias, masked) v with fp32 scores.

    ``bias_bts`` (additive, see :func:`mask_bias`) is the fast form for self-attention, whose rows
    always allow their diagonal: one fused add, where ``mask_bts`` (a select, plus zeroing rows with no
    allowed key) costs several passes over the scores and their gradients.
    """
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    q = q_btnh.reshape(b, t, kv, n // kv, h)
    s = jnp.einsum("btgrh,bsgh->bgrts", q, k_bskh, preferred_element_type=jnp.float32) * (h ** -0.5)
    if bias_bts is not None:
        s = s + bias_bts[:, None, None]
    if mask_bts is not None:
        m = mask_bts[:, None, None]
        s = jnp.where(m, s, _NEG)
    p = jax.nn.softmax(s, axis=-1)
    if mask_bts is not None:
        p = jnp.where(jnp.any(m, axis=-1, keepdims=True), p, 0.0)
    out = jnp.einsum("bgrts,bsgh->btgrh", p.astype(v_bskh.dtype), v_bskh)
    return out.reshape(b, t, n, h)


def _block_local_attention(q_btnh, k_btkh, v_btkh, doc_bt, window: int, block: int) -> jax.Array:
    """Sliding-window causal attention by query blocks of ``block`` positions.

    Block j attends keys from the ``lookback = ceil((window-1)/block)`` previous blocks and itself, so the
    cost is O(T * (window + block)) instead of O(T^2).
    """
    b, t, n, h = q_btnh.shape
    nb = -(-t // block)
    lookback = -(-(window - 1) // block)
    pad = nb * block - t

    def blocks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, nb, block, *x.shape[2:])

    def with_prev(x, fill=0):
        """[B, nb, block, ...] -> [B, nb, (lookback+1)*block, ...]: previous blocks then block j."""
        xp = jnp.pad(x, [(0, 0), (lookback, 0)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.concatenate([xp[:, i:i + nb] for i in range(lookback + 1)], axis=2)

    q_b = blocks(q_btnh)
    k2, v2 = with_prev(blocks(k_btkh)), with_prev(blocks(v_btkh))
    pos_q = jnp.arange(nb * block).reshape(nb, block)
    pos_k = jnp.concatenate([pos_q - (lookback - i) * block for i in range(lookback + 1)], axis=1)
    diff = pos_q[:, :, None] - pos_k[:, None, :]
    allowed = (diff >= 0) & (diff < window) & (pos_k[:, None, :] >= 0)
    allowed = jnp.broadcast_to(allowed[None], (b,) + allowed.shape)
    if doc_bt is not None:
        d = blocks(doc_bt)
        d_k = with_prev(d, fill=-1)
        allowed = allowed & (d[:, :, :, None] == d_k[:, :, None, :])
    flat = lambda x: constrain_rows(x.reshape(b * nb, *x.shape[2:]), "act_batch", b)
    out = softmax_attention(flat(q_b), flat(k2), flat(v2), mask_bias(flat(allowed)))
    return out.reshape(b, nb * block, n, h)[:, :t]


LOCAL_BLOCK = 128  # query block of the block-local path (matmul-friendly, small waste)
IMPLS = ("auto", "xla", "cudnn", "splash")


def _use_cudnn(impl: str, dtype) -> bool:
    if impl == "cudnn":
        return True
    if impl == "auto":
        return target_platform() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return False


def _use_splash(impl: str) -> bool:
    return impl == "splash" or (impl == "auto" and target_platform() == "tpu")


def self_attention(q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, *,
                   doc_bt: Optional[jax.Array] = None, window: Optional[int] = None,
                   impl: str = "auto") -> jax.Array:
    """Causal self-attention with optional document split (doc ids) and sliding window."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r} (one of {', '.join(IMPLS)})")
    t = q_btnh.shape[1]
    if _use_splash(impl):
        from bltjax.model import splash  # Pallas: imported only when used

        return splash.self_attention(q_btnh, k_btkh, v_btkh, doc_bt=doc_bt, window=window)
    if _use_cudnn(impl, q_btnh.dtype):
        mask = None
        if doc_bt is not None:
            mask = (doc_bt[:, :, None] == doc_bt[:, None, :])[:, None]
        local = None if window is None or window >= t else (window - 1, 0)
        return jax.nn.dot_product_attention(q_btnh, k_btkh, v_btkh, mask=mask, is_causal=True,
                                            local_window_size=local, implementation="cudnn")
    if window is not None:
        block = min(LOCAL_BLOCK, window)
        if (-(-(window - 1) // block) + 1) * block < t:
            return _block_local_attention(q_btnh, k_btkh, v_btkh, doc_bt, window, block)
    pos = jnp.arange(t)
    mask = local_mask(doc_bt, doc_bt, pos, pos, window)
    if mask.shape[0] != q_btnh.shape[0]:
        mask = jnp.broadcast_to(mask, (q_btnh.shape[0],) + mask.shape[1:])
    return softmax_attention(q_btnh, k_btkh, v_btkh, mask_bias(mask))


def _patch_query_row(q_pkhd: jax.Array, k_nhd: jax.Array, v_nhd: jax.Array, pid_n: jax.Array,
                     n_patches: int) -> jax.Array:
    """One row of :func:`patch_query_attention`: ``[P, k, H, hd]`` from ``N`` bytes."""
    hd = q_pkhd.shape[-1]
    in_patch = pid_n < n_patches  # bytes past the row's patches belong to no segment
    seg = jnp.where(in_patch, pid_n, n_patches)  # out of range: dropped by the segment reductions
    pid_c = jnp.minimum(pid_n, n_patches - 1)
    s_nkh = jnp.einsum("nrhd,nhd->nrh", q_pkhd[pid_c], k_nhd, preferred_element_type=jnp.float32) * (hd ** -0.5)
    seg_max = jax.ops.segment_max(s_nkh, seg, num_segments=n_patches)  # [P, k, H]
    seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
    e = jnp.where(in_patch[:, None, None], jnp.exp(s_nkh - seg_max[pid_c]), 0.0)
    denom = jax.ops.segment_sum(e, seg, num_segments=n_patches)
    num = jax.ops.segment_sum(e[..., None] * v_nhd[:, None].astype(jnp.float32), seg, num_segments=n_patches)
    return num / jnp.where(denom > 0, denom, 1.0)[..., None]  # [P, k, H, hd]


def patch_query_attention(q_bqnh: jax.Array, k_bnkh: jax.Array, v_bnkh: jax.Array, pid_bn: jax.Array,
                          n_patches: int, k: int) -> jax.Array:
    """Encoder cross-attention, exact-patch mask, as a segment softmax.

    q: [B, P*k, H, hd] patch query slots; k/v: [B, N, H, hd] bytes; pid: [B, N] patch of each byte.
    Slot p*k+r attends to exactly the bytes with pid == p.  Empty patches give 0.  The segment
    reductions run per row (``vmap``): their scatters keep the batch as a batch dimension, so the
    partitioner splits them over the batch like every other activation.
    """
    b, q_len, nh, hd = q_bqnh.shape
    q_bpkhd = q_bqnh.reshape(b, n_patches, k, nh, hd)
    out = jax.vmap(_patch_query_row, in_axes=(0, 0, 0, 0, None))(q_bpkhd, k_bnkh, v_bnkh, pid_bn, n_patches)
    return out.reshape(b, q_len, nh, hd).astype(q_bqnh.dtype)


def byte_query_attention(q_bnhd: jax.Array, k_bqhd: jax.Array, v_bqhd: jax.Array, dpid_bn: jax.Array,
                         n_patches: int, k: int) -> jax.Array:
    """Decoder cross-attention, exact-patch mask: byte i attends the k slots of patch dpid(i)."""
    b, n, nh, hd = q_bnhd.shape
    k_bpkhd = k_bqhd.reshape(b, n_patches, k, nh, hd)
    v_bpkhd = v_bqhd.reshape(b, n_patches, k, nh, hd)
    idx = dpid_bn[:, :, None, None, None]
    k_g = jnp.take_along_axis(k_bpkhd, idx, axis=1)  # [B, N, k, H, hd]
    v_g = jnp.take_along_axis(v_bpkhd, idx, axis=1)
    s = jnp.einsum("bnhd,bnrhd->bnhr", q_bnhd, k_g, preferred_element_type=jnp.float32) * (hd ** -0.5)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bnhr,bnrhd->bnhd", p.astype(v_g.dtype), v_g)
