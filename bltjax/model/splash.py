"""Self-attention through the Pallas splash-attention kernel (TPU; Pallas interpret mode elsewhere).

One entry point, :func:`self_attention`, with the semantics of ``attention.self_attention``:
causal, optionally a sliding window of ``W`` keys (``i - W < j <= i``) and documents (``doc_bt``: a
query attends only keys of its own document), GQA (kv head ``g`` serves query heads ``g*r .. g*r+r-1``).

* The static part of the mask (causal or sliding window) is a splash ``CausalMask`` / ``LocalMask``:
  the kernel skips every key block the mask excludes, so a window costs O(T * W), not O(T^2).
* Documents are splash ``SegmentIds`` (query and key document ids), checked inside visited blocks.
* The sequence is padded to a multiple of 128 (the kernel's block size); padded positions come after
  every real query (the causal mask hides them), get a document id of their own, and are sliced
  away.  Every query attends at least itself, so no row is fully masked.
* No ``1/sqrt(head_dim)`` is applied inside the kernel: ``q`` is scaled here.
* A Mosaic kernel is not partitioned by XLA: under a mesh the call runs in ``jax.shard_map`` over the
  batch mesh axes (``act_batch``) and the head axis (``act_heads``, when both the query and the
  key/value heads divide it), as resolved by the rules table in ``bltjax/sharding.py``; the sequence
  and head dimension stay whole on each device.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from bltjax import sharding

BLOCK = 128  # sequence padding granularity (the kernel's minimum block)
MAX_BLOCK = 512  # largest block used when the padded length allows it


def block_size(t_pad: int) -> int:
    """Largest of 512 / 256 / 128 that divides the padded length."""
    return next(b for b in (MAX_BLOCK, 256, BLOCK) if t_pad % b == 0)


def padded_length(t: int) -> int:
    return -(-t // BLOCK) * BLOCK


@functools.lru_cache(maxsize=64)
def make_kernel(t_pad: int, n_heads: int, window: Optional[int], interpret: bool) -> sk.SplashAttentionKernel:
    """The splash kernel for ``n_heads`` query heads over ``t_pad`` positions (cached: building the
    block-sparsity tables is host work)."""
    if window is None or window >= t_pad:
        mask = sm.CausalMask((t_pad, t_pad))
    else:
        mask = sm.LocalMask((t_pad, t_pad), (window - 1, 0), offset=0)
    b = block_size(t_pad)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mha(sm.MultiHeadMask([mask] * n_heads), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)


def _local(q_btnh, k_btkh, v_btkh, seg_bt, window: Optional[int], interpret: bool) -> jax.Array:
    """Splash on this device's rows and heads; ``seg_bt`` may be None (no documents)."""
    b, t, n, h = q_btnh.shape
    kernel = make_kernel(t, n, window, interpret)
    to_hth = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, hd] -> [B, H, T, hd]
    q = to_hth(q_btnh * jnp.asarray(h ** -0.5, q_btnh.dtype))
    k, v = to_hth(k_btkh), to_hth(v_btkh)
    if seg_bt is None:
        out = jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1))(q, k, v)
    else:
        out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(s1, s1)))(q, k, v, seg_bt)
    return jnp.swapaxes(out, 1, 2)


def _specs(q_shape, k_shape) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """shard_map specs: rows over the batch axes, heads over the head axis when both the query and
    the key/value heads split evenly (GQA groups then stay on one device), nothing else split."""
    mesh = jax.sharding.get_abstract_mesh()
    mshape = dict(mesh.shape)
    batch = sharding.logical_to_spec(("act_batch",), shape=q_shape[:1], mesh_shape=mshape)[0]
    heads = sharding.logical_to_spec((None, "act_heads"), shape=(q_shape[0], q_shape[2]), mesh_shape=mshape)[1]
    if heads is not None:
        size = math.prod(mshape[a] for a in ((heads,) if isinstance(heads, str) else heads))
        used = set((batch,) if isinstance(batch, str) else (batch or ()))
        if k_shape[2] % size or used.intersection((heads,) if isinstance(heads, str) else heads):
            heads = None
    return PartitionSpec(batch, None, heads, None), PartitionSpec(batch, None), PartitionSpec(batch)


def self_attention(q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, *,
                   doc_bt: Optional[jax.Array] = None, window: Optional[int] = None,
                   interpret: Optional[bool] = None) -> jax.Array:
    """Causal (sliding-window, document-split) self-attention ``[B, T, N, hd]`` through splash.

    ``interpret`` defaults to "not compiling for TPU" (Pallas interpret mode on CPU / GPU).
    """
    from bltjax.model.attention import target_platform

    if interpret is None:
        interpret = target_platform() != "tpu"
    b, t, n, h = q_btnh.shape
    if n % k_btkh.shape[2]:
        raise ValueError(f"{n} query heads are not a multiple of {k_btkh.shape[2]} key/value heads")
    t_pad = padded_length(t)
    pad = [(0, 0), (0, t_pad - t), (0, 0), (0, 0)]
    q, k, v = (jnp.pad(x, pad) for x in (q_btnh, k_btkh, v_btkh))
    seg = None  # padded keys come after every real query: the causal mask already hides them
    if doc_bt is not None:  # padded positions: a document of their own (-1; real ones count from 0)
        seg = jnp.pad(doc_bt.astype(jnp.int32), [(0, 0), (0, t_pad - t)], constant_values=-1)
    win = None if window is None or window >= t else window
    fn = functools.partial(_local, window=win, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and math.prod(mesh.shape.values()) > 1:
        qs, ss, _ = _specs(q.shape, k.shape)
        if seg is None:
            body = lambda q1, k1, v1: fn(q1, k1, v1, None)
            fn_sm = jax.shard_map(body, mesh=mesh, in_specs=(qs, qs, qs), out_specs=qs, check_vma=False)
            out = fn_sm(q, k, v)
        else:
            fn_sm = jax.shard_map(fn, mesh=mesh, in_specs=(qs, qs, qs, ss), out_specs=qs, check_vma=False)
            out = fn_sm(q, k, v, seg)
    else:
        out = fn(q, k, v, seg)
    return out[:, :t]


__all__ = ["self_attention", "make_kernel", "block_size", "padded_length"]
