"""Byte <-> patch cross-attention layers (design §6.3, §8, §9).

    Q = Wq · RMSNorm_q(q),  K, V = Wk, Wv · RMSNorm_kv(kv)        (no RoPE)
    q_new = 2·q + Wo · softmax(QKᵀ/√d_h + M) V                   (the official double residual)

Encoder: q = patch query slots [B, P*k, d], kv = bytes [B, N, d], mask pid(i) == p.
Decoder: q = bytes [B, N, d], kv = patch slots [B, P*k, d], mask dpid(i) == p.
The exact-patch masks run as gathers / segment softmaxes (``attention.py``); windowed masks, and
``dense=True`` (tests), use the dense masked reference.
"""

from __future__ import annotations

from typing import Literal, Optional

import jax
import jax.numpy as jnp

from bltjax.model import attention as attn_lib
from bltjax.model.layers import BTD, linear, rms_norm, trunc_normal
from bltjax.model.transformer import BTH, BTNH
from bltjax.sharding import constrain


def init_cross(n: int, dim: int, key: jax.Array, dtype=jnp.float32) -> dict:
    ks = jax.random.split(key, 4)
    std = dim ** -0.5
    out = {"norm_q": jnp.ones((n, dim), dtype), "norm_kv": jnp.ones((n, dim), dtype)}
    for name, k in zip(("wq", "wk", "wv", "wo"), ks):
        out[name] = trunc_normal(k, (n, dim, dim), std, dtype)
    return out


def cross_attend(p: dict, q_bqd: jax.Array, kv_bsd: jax.Array, *, kind: Literal["encoder", "decoder"],
                 ids_bn: jax.Array, n_patches: int, k: int, n_heads: int, eps: float,
                 window: Optional[int] = None, dense: bool = False) -> jax.Array:
    """One cross-attention layer with ``p`` holding a single layer's weights; returns 2q + Wo·attn."""
    b, t, d = q_bqd.shape
    s = kv_bsd.shape[1]
    hd = d // n_heads
    q_bqd, kv_bsd = constrain(q_bqd, BTD), constrain(kv_bsd, BTD)
    qn = rms_norm(q_bqd, p["norm_q"], eps)
    kvn = rms_norm(kv_bsd, p["norm_kv"], eps)
    q = constrain(linear(qn, p["wq"], BTH).reshape(b, t, n_heads, hd), BTNH)
    kk = constrain(linear(kvn, p["wk"], BTH).reshape(b, s, n_heads, hd), BTNH)
    v = constrain(linear(kvn, p["wv"], BTH).reshape(b, s, n_heads, hd), BTNH)
    if window is not None or dense:
        if kind == "encoder":
            mask = attn_lib.encoder_cross_mask(ids_bn, n_patches, k, window)
        else:
            mask = attn_lib.decoder_cross_mask(ids_bn, n_patches, k, window)
        a = attn_lib.dense_attention(q, kk, v, mask)
    elif kind == "encoder":
        a = attn_lib.patch_query_attention(q, kk, v, ids_bn, n_patches, k)
    else:
        a = attn_lib.byte_query_attention(q, kk, v, ids_bn, n_patches, k)
    a = constrain(constrain(a, BTNH).reshape(b, t, d), BTH)
    return 2 * q_bqd + linear(a, p["wo"], BTD)


# ---------------------------------------------------------------- incremental decoding (cached)


def cross_kv(pc: dict, h: jax.Array, n_heads: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Cross-attention keys/values of key/value inputs ``h [..., d]`` -> ``[..., H, hd]``."""
    d = h.shape[-1]
    kvn = rms_norm(h, pc["norm_kv"], eps)
    k = linear(kvn, pc["wk"]).reshape(*h.shape[:-1], n_heads, d // n_heads)
    v = linear(kvn, pc["wv"]).reshape(*h.shape[:-1], n_heads, d // n_heads)
    return k, v
