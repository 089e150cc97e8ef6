"""Local encoder (spec §4, §6): hash n-gram embeddings, a windowed byte transformer, and
cross-attention that turns bytes into patch vectors for the global model.

    e      = E_tok[x] + Σ_t E_t[hash_t(x)]                          [B, N, dE]
    h      = blocks(e)          (local mask: causal ∧ window ∧ same document)
    pool_p = max_{i: pid(i)=p} h_i          (empty patch -> 0)     [B, P, dE]
    q      = reshape(pool · W_pe, [B, P*k, dE])
    q      = 2q + Wo·CrossAttn(q, h)         (after the last layer, or after every layer)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.model import kv_cache
from bltjax.model.attention import _NEG, segment_ids
from bltjax.model.cross_attention import cross_attend
from bltjax.model.hashing import hash_ids
from bltjax.model.layers import dtype_of, linear, rms_norm
from bltjax.model.transformer import StackSpec, block, layer, positions_rope


def encoder_spec(cfg: BLTConfig) -> StackSpec:
    return StackSpec(dim=cfg.dim_local_encoder, n_layers=cfg.n_layers_local_encoder,
                     n_heads=cfg.n_heads_local_encoder, n_kv_heads=cfg.n_kv_heads or cfg.n_heads_local_encoder,
                     ffn_dim=cfg.local_ffn_dim(cfg.dim_local_encoder), norm_eps=cfg.norm_eps,
                     rope_theta=cfg.rope_theta, window=cfg.local_attention_window_len,
                     attention_impl=cfg.attention_impl, remat=cfg.remat)


def embed(params: dict, cfg: BLTConfig, tokens_bn: jax.Array) -> jax.Array:
    """Byte embedding plus every hash n-gram embedding (no scaling, no averaging)."""
    cdt = dtype_of(cfg.dtype)
    e = params["tok_embeddings"][tokens_bn].astype(cdt)
    if cfg.n_hash_tables:
        ids_btn = hash_ids(tokens_bn, cfg.encoder_hash_byte_group_size,
                           cfg.encoder_hash_byte_group_nb_functions, cfg.encoder_hash_byte_group_vocab)
        tables = params["hash_embeddings"]
        t, vh, d = tables.shape
        flat_ids = ids_btn + (jnp.arange(t) * vh)[None, :, None]
        e = e + jnp.sum(tables.reshape(t * vh, d)[flat_ids].astype(cdt), axis=1)
    return e


def pool_patches(h_bnd: jax.Array, pid_bn: jax.Array, n_patches: int, mode: str) -> jax.Array:
    """Reduce byte states per patch ("max" in releases); patches without bytes give 0."""
    b, n, d = h_bnd.shape
    seg = segment_ids(pid_bn, n_patches)
    flat = h_bnd.reshape(b * n, d)
    count = jax.ops.segment_sum(jnp.ones((b * n,), jnp.int32), seg, num_segments=b * n_patches)
    if mode == "max":
        out = jax.ops.segment_max(flat, seg, num_segments=b * n_patches)
    elif mode == "min":
        out = jax.ops.segment_min(flat, seg, num_segments=b * n_patches)
    else:  # avg / mean
        out = jax.ops.segment_sum(flat, seg, num_segments=b * n_patches)
        out = out / jnp.maximum(count, 1)[:, None].astype(out.dtype)
    out = jnp.where((count > 0)[:, None], out, 0)
    return out.reshape(b, n_patches, d)


def forward(params: dict, cfg: BLTConfig, e_bnd: jax.Array, pid_bn: jax.Array, n_patches: int,
            doc_bn: Optional[jax.Array], *, dense_cross: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns byte states h [B, N, dE] and patch slots [B, P*k, dE]."""
    enc = params["encoder"]
    spec = encoder_spec(cfg)
    b, n, d = e_bnd.shape
    k = cfg.cross_attn_k
    rope = positions_rope(n, spec, b)
    h = e_bnd
    q = None
    cross_i = 0
    for i in range(spec.n_layers):
        h = block(layer(enc["layers"], i), h, spec, rope, doc_bn)
        if cfg.cross_attn_all_layers_encoder or i == spec.n_layers - 1:
            if q is None:
                pooled = pool_patches(h, pid_bn, n_patches, cfg.downsampling_by_pooling)
                q = linear(pooled, enc["patch_projection"]).reshape(b, n_patches * k, d)
            q = cross_attend(layer(enc["cross"], cross_i), q, h, kind="encoder", ids_bn=pid_bn,
                             n_patches=n_patches, k=k, n_heads=cfg.cross_attn_nheads, eps=cfg.norm_eps,
                             window=cfg.cross_attn_window_encoder, dense=dense_cross)
            cross_i += 1
    return h, q


# ---------------------------------------------------------------- incremental decoding (cached)


def cross_layers(cfg: BLTConfig) -> list[int]:
    """Encoder layers followed by a cross-attention (pooling happens at the first one)."""
    n = cfg.n_layers_local_encoder
    return list(range(n)) if cfg.cross_attn_all_layers_encoder else [n - 1]


def pool_update(mode: str, pool, cnt, h, fresh):
    """Running max / min / sum of the open patch's byte states (restarted when ``fresh``)."""
    if mode == "max":
        new = jnp.maximum(pool, h)
    elif mode == "min":
        new = jnp.minimum(pool, h)
    else:
        new = pool + h
    return jnp.where(fresh, h, new), jnp.where(fresh, 1, cnt + 1)


def pooled_state(mode: str, pool, cnt):
    if mode in ("max", "min"):
        return pool
    return pool / jnp.maximum(cnt, 1).astype(pool.dtype)


def step_row(cfg: BLTConfig, params: dict, st: dict, tokens_t: jax.Array, n, r,
                     mask_c) -> tuple[jax.Array, list[jax.Array], tuple, tuple]:
    """Local encoder for the byte at column ``n`` (position ``r``) of one row: (final state, state
    after every layer, new keys, new values per layer).  Hash n-gram ids need only the last
    ``max(n)`` columns (padding columns are BOE 0: the official left padding)."""
    enc = params["encoder"]
    spec = encoder_spec(cfg)
    w = max(cfg.encoder_hash_byte_group_size) if cfg.n_hash_tables else 1
    idx = n - (w - 1) + jnp.arange(w)
    window = jnp.where(idx >= 0, tokens_t[jnp.clip(idx, 0, tokens_t.shape[0] - 1)], 0)
    h = embed(params, cfg, window[None])[0, -1]
    rope = kv_cache.rope_one(r, spec.head_dim, spec.rope_theta)
    outs, nk, nv = [], [], []
    for p, k_c, v_c in zip(kv_cache.layers_of(enc["layers"]), st["enc_k"], st["enc_v"]):
        h, k, v = kv_cache.block_step_row(p, h, k_c, v_c, rope, mask_c, spec)
        outs.append(h)
        nk.append(k)
        nv.append(v)
    return h, outs, tuple(nk), tuple(nv)


def patch_row(cfg: BLTConfig, params: dict, pool, cnt, x_k: Sequence[jax.Array],
                      x_v: Sequence[jax.Array], byte_mask_t: jax.Array) -> jax.Array:
    """Encoder cross-attention of one patch of one row: its k query slots (initialised from the pooled
    byte states) attend the bytes selected by ``byte_mask_t`` (bool [T]) through the cached per-byte
    cross K/V (per cross layer ``[H, T, hd]``); ``q = 2q + Wo·attn`` per cross layer.  Returns the
    patch vector ``[k*dE]`` (the global model's input before the optional projection)."""
    enc = params["encoder"]
    k, d, nh = cfg.cross_attn_k, cfg.dim_local_encoder, cfg.cross_attn_nheads
    pooled = pooled_state(cfg.downsampling_by_pooling, pool, cnt)
    q = (pooled @ enc["patch_projection"].astype(pooled.dtype)).reshape(k, d)
    hd = d // nh
    for c, pc in enumerate(kv_cache.layers_of(enc["cross"])[: len(x_k)]):
        qn = rms_norm(q, pc["norm_q"], cfg.norm_eps)
        qh = linear(qn, pc["wq"]).reshape(k, nh, hd)
        s = jnp.einsum("rhd,htd->hrt", qh, x_k[c].astype(qh.dtype), preferred_element_type=jnp.float32)
        s = jnp.where(byte_mask_t[None, None, :], s * (hd ** -0.5), _NEG)
        pr = jax.nn.softmax(s, axis=-1)  # the patch always holds at least one byte
        a = jnp.einsum("hrt,htd->rhd", pr.astype(x_v[c].dtype), x_v[c])
        q = 2 * q + linear(a.reshape(k, d), pc["wo"])
    return q.reshape(k * d)
