"""KV caches for incremental decoding: ring buffers, one-token attention and transformer blocks.

Caches are head-major (``[K, C, hd]`` per row and layer) so a step neither slices nor transposes
them; a sliding-window cache is a ring of ``C`` slots (slot = column % C).  Functions named ``*_row``
work on one row (no batch axis) and are ``vmap``-ed over the batch by ``bltjax.model.decode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.model.attention import _NEG
from bltjax.model.layers import apply_rope, linear, rms_norm, rope_tables, swiglu
from bltjax.model.transformer import StackSpec, layer
from bltjax.model.transformer import block_with_kv as transformer_block_with_kv


def ring_slots(window: Optional[int], max_len: int) -> int:
    """Ring-buffer size of a sliding-window cache: the window, or the whole buffer if shorter/None."""
    return max_len if window is None else min(int(window), max_len)


block_kv = transformer_block_with_kv  # the training block, also returning its keys/values


def stack_prefill(stack, x_btd: jax.Array, spec: StackSpec, rope, doc_bt) -> tuple:
    """All layers over a whole sequence; returns (x, per-layer K [B, T, K, hd] tuple, V tuple)."""
    ks, vs = [], []
    for p in layers_of(stack):
        x_btd, k, v = block_kv(p, x_btd, spec, rope, doc_bt)
        ks.append(k)
        vs.append(v)
    return x_btd, tuple(ks), tuple(vs)


def rope_one(pos: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """RoPE tables for a single position: cos/sin [1, 1, head_dim/2]."""
    return rope_tables(jnp.reshape(pos, (1, 1)), head_dim, theta)


def attend_one(q_nh: jax.Array, k_kch: jax.Array, v_kch: jax.Array, mask_c: jax.Array,
               k_cur: Optional[jax.Array] = None, v_cur: Optional[jax.Array] = None) -> jax.Array:
    """One query token against a head-major cache: q [N, hd], k/v [K, C, hd], mask [C] -> [N, hd].

    ``k_cur / v_cur`` ([K, hd]) add the token's own key/value as one more, always allowed, slot (the
    cache itself is written after the step).  Same math as ``attention.dense_attention`` (fp32
    scores, masked softmax, GQA: kv head g serves query heads g*r .. g*r+r-1); the [K, C, hd] layout
    needs no transposes."""
    n, hd = q_nh.shape
    kh = k_kch.shape[0]
    q = q_nh.reshape(kh, n // kh, hd)
    s = jnp.einsum("grh,gch->grc", q, k_kch, preferred_element_type=jnp.float32) * (hd ** -0.5)
    s = jnp.where(mask_c[None, None, :], s, _NEG)
    if k_cur is None:
        p = jax.nn.softmax(s, axis=-1)
        p = jnp.where(jnp.any(mask_c), p, 0.0)
        return jnp.einsum("grc,gch->grh", p.astype(v_kch.dtype), v_kch).reshape(n, hd)
    s_cur = jnp.einsum("grh,gh->gr", q, k_cur, preferred_element_type=jnp.float32)[..., None] * (hd ** -0.5)
    p = jax.nn.softmax(jnp.concatenate([s, s_cur], axis=-1), axis=-1)
    out = jnp.einsum("grc,gch->grh", p[..., :-1].astype(v_kch.dtype), v_kch)
    out = out + p[..., -1:].astype(v_cur.dtype) * v_cur[:, None, :]
    return out.reshape(n, hd)


def block_step_row(p: dict, x_d: jax.Array, k_kch: jax.Array, v_kch: jax.Array, rope, mask_c: jax.Array,
                   spec: StackSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block for one new token of one row against its (per-layer, head-major) cache.

    ``mask_c`` (bool [C]) selects the cached slots the token may attend; the token itself is always
    attended.  Returns (x, new key [K, hd], new value [K, hd]); the caller writes them to the cache."""
    hd = spec.head_dim
    x = x_d[None, None]
    n1 = rms_norm(x, p["attention_norm"], spec.norm_eps)
    q = linear(n1, p["wq"]).reshape(1, 1, spec.n_heads, hd)
    k = linear(n1, p["wk"]).reshape(1, 1, spec.n_kv_heads, hd)
    v = linear(n1, p["wv"]).reshape(1, 1, spec.n_kv_heads, hd)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k_new, v_new = k[0, 0].astype(k_kch.dtype), v[0, 0].astype(v_kch.dtype)
    a = attend_one(q[0, 0], k_kch.astype(q.dtype), v_kch.astype(q.dtype), mask_c,
                   k_new.astype(q.dtype), v_new.astype(q.dtype))
    # Order the cache write (done later by the caller) after this read: without the data dependency
    # XLA copies the whole cache to keep the read safe from the in-place write.
    a, k_new, v_new = jax.lax.optimization_barrier((a, k_new, v_new))
    h = x + linear(a.reshape(1, 1, spec.n_heads * hd), p["wo"])
    n2 = rms_norm(h, p["ffn_norm"], spec.norm_eps)
    return (h + swiglu(n2, p["w1"], p["w3"], p["w2"]))[0, 0], k_new, v_new


def layers_of(stack) -> tuple[dict, ...]:
    """Per-layer weights from a stacked dict or an already split tuple."""
    return tuple(stack) if isinstance(stack, (tuple, list)) else unstack(stack)


def stack_step_row(layers, x_d: jax.Array, ks: Sequence[jax.Array], vs: Sequence[jax.Array], rope, mask_c,
                   spec: StackSpec) -> tuple[jax.Array, tuple, tuple]:
    """All layers of a stack for one token of one row: (x, new keys per layer, new values per layer)."""
    nk, nv = [], []
    for p, k_c, v_c in zip(layers_of(layers), ks, vs):
        x_d, k, v = block_step_row(p, x_d, k_c, v_c, rope, mask_c, spec)
        nk.append(k)
        nv.append(v)
    return x_d, tuple(nk), tuple(nv)


def unstack(stack) -> tuple[dict, ...]:
    """Stacked layer weights ``{name: [L, ...]}`` -> one dict per layer (no per-step slicing)."""
    if isinstance(stack, (tuple, list)):
        return tuple(stack)
    n = jax.tree.leaves(stack)[0].shape[0]
    return tuple(layer(stack, i) for i in range(n))


def ring_columns(prompt_len: int, slots: int) -> jax.Array:
    """Column held by each ring slot after columns ``0..prompt_len-1`` were written: [C] (-1: none)."""
    c = jnp.arange(slots)
    col = c + slots * jnp.floor_divide(prompt_len - 1 - c, slots)
    return jnp.where(col >= 0, col, -1)


def ring_from_left(x_btf: jax.Array, pad_b: jax.Array, prompt_len: int, slots: int) -> tuple[jax.Array, jax.Array]:
    """Left-aligned per-position values ``x [B, Lb, ...]`` -> ring layout ``[B, C, ...]`` of the
    right-aligned buffer, and the position held by each slot ``[B, C]`` (-1: padding / none)."""
    pos = ring_columns(prompt_len, slots)[None, :] - pad_b[:, None]
    pos = jnp.where(pos >= 0, pos, -1).astype(jnp.int32)
    idx = jnp.maximum(pos, 0).reshape(pos.shape + (1,) * (x_btf.ndim - 2))
    return jnp.take_along_axis(x_btf, idx, axis=1), pos


def kv_ring(kv_btkh: jax.Array, pad_b, prompt_len: int, slots: int) -> jax.Array:
    """One layer's prefill keys/values ``[B, Lb, K, hd]`` (left-aligned) -> ring cache ``[B, K, C, hd]``."""
    ring, _ = ring_from_left(kv_btkh, pad_b, prompt_len, slots)
    return jnp.swapaxes(ring, 1, 2)


def write_col(cache_bkch: jax.Array, col, new_bkh: jax.Array) -> jax.Array:
    """``cache[:, :, col] = new`` (shared column): an in-place dynamic_update_slice."""
    return jax.lax.dynamic_update_slice(cache_bkch, new_bkh[:, :, None].astype(cache_bkch.dtype), (0, 0, col, 0))


def write_val(arr_bc: jax.Array, col, val_b: jax.Array) -> jax.Array:
    """``arr[:, col] = val``."""
    return jax.lax.dynamic_update_slice(arr_bc, val_b[:, None].astype(arr_bc.dtype), (0, col))


def ring_mask_row(slot_pos_c: jax.Array, slot_doc_c: jax.Array, pos, doc, window: Optional[int]) -> jax.Array:
    """Which ring slots position ``pos`` (document ``doc``) may attend: causal, window, same document."""
    ok = (slot_pos_c >= 0) & (slot_pos_c <= pos) & (slot_doc_c == doc)
    if window is not None:
        ok = ok & (pos - slot_pos_c < window)
    return ok
