"""Local encoder (design §4, §6): hash n-gram embeddings, a windowed byte transformer, and
cross-attention that turns bytes into patch vectors for the global model.

    e      = E_tok[x] + Σ_t E_t[hash_t(x)]                          [B, N, dE]
    h      = blocks(e)          (local mask: causal ∧ window ∧ same document)
    pool_p = max_{i: pid(i)=p} h_i          (empty patch -> 0)     [B, P, dE]
    q      = reshape(pool · W_pe, [B, P*k, dE])
    q      = 2q + Wo·CrossAttn(q, h)         (after the last layer, or after every layer)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from bltjax import sharding
from bltjax.config import BLTConfig
from bltjax.model import kv_cache
from bltjax.model.attention import _NEG
from bltjax.model.cross_attention import cross_attend
from bltjax.model.hashing import hash_ids
from bltjax.model.layers import BTD, dtype_of, linear, rms_norm
from bltjax.model.transformer import StackSpec, block, layer, positions_rope
from bltjax.sharding import constrain

BPD = ("act_batch", "act_patches", "act_embed")  # patch vectors / patch query slots


def encoder_spec(cfg: BLTConfig) -> StackSpec:
    return StackSpec(dim=cfg.dim_local_encoder, n_layers=cfg.n_layers_local_encoder,
                     n_heads=cfg.n_heads_local_encoder, n_kv_heads=cfg.n_kv_heads or cfg.n_heads_local_encoder,
                     ffn_dim=cfg.local_ffn_dim(cfg.dim_local_encoder), norm_eps=cfg.norm_eps,
                     rope_theta=cfg.rope_theta, window=cfg.local_attention_window_len,
                     attention_impl=cfg.attention_impl, remat=cfg.remat)


def embed(params: dict, cfg: BLTConfig, tokens_bn: jax.Array) -> jax.Array:
    """Byte embedding plus every hash n-gram embedding (no scaling, no averaging)."""
    cdt = dtype_of(cfg.dtype)
    e = constrain(params["tok_embeddings"][tokens_bn].astype(cdt), BTD)
    if cfg.n_hash_tables:
        ids_btn = hash_ids(tokens_bn, cfg.encoder_hash_byte_group_size,
                           cfg.encoder_hash_byte_group_nb_functions, cfg.encoder_hash_byte_group_vocab)
        ids_btn = constrain(ids_btn, ("act_batch", "act_hash_tables", "act_len"))
        e = e + constrain(hash_embedding_sum(params["hash_embeddings"], ids_btn).astype(cdt), BTD)
    return e


def hash_embedding_sum(tables_tvd: jax.Array, ids_btn: jax.Array) -> jax.Array:
    """``sum_t tables[t][ids[:, t]]`` -> ``[B, N, d]`` in the tables' dtype, one lookup per table.

    Under FSDP the tables are split along ``d``: each device looks up every row of its data shard for its
    own columns (the ids are small), sums the tables, and one all-to-all returns its rows.  A single
    lookup over all tables would hold ``[B, T, N, d / shards]`` (and its gradient, a T-fold broadcast
    copy); table by table only ``[B, N, d / shards]`` is alive, and the backward pass scatters every
    table from the same gradient.
    """
    cols = _table_columns(tables_tvd, ids_btn.shape[0])  # this device's columns: summed before any all-to-all
    acc = cols(tables_tvd[0][ids_btn[:, 0]])
    for t in range(1, tables_tvd.shape[0]):
        acc = cols(acc + tables_tvd[t][ids_btn[:, t]])
    return acc


def _table_columns(tables_tvd: jax.Array, batch: int):
    """A constraint putting the last axis of a ``[B, N, d]`` lookup where the tables' ``d`` is split.

    The rows stay split over the batch mesh axes the columns do not use (``data`` across slices):
    a device looks up the rows of its own data shard only, never those of another slice.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return lambda x: x
    spec = sharding.logical_to_spec((*sharding.BLT_PARAM_AXES["hash_embeddings"], "act_batch"),
                                    shape=(*tables_tvd.shape, batch), mesh_shape=dict(mesh.shape))
    if spec[2] is None:  # replicated tables (e.g. a data mesh): keep the lookup split by rows
        return lambda x: constrain(x, BTD)
    return lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(spec[3], None, spec[2]))


def _pool_row(h_nd: jax.Array, pid_n: jax.Array, n_patches: int, mode: str) -> jax.Array:
    seg = jnp.where(pid_n < n_patches, pid_n, n_patches)  # bytes past the patches: dropped
    count = jax.ops.segment_sum(jnp.ones(pid_n.shape, jnp.int32), seg, num_segments=n_patches)
    if mode == "max":
        out = jax.ops.segment_max(h_nd, seg, num_segments=n_patches)
    elif mode == "min":
        out = jax.ops.segment_min(h_nd, seg, num_segments=n_patches)
    else:  # avg / mean
        out = jax.ops.segment_sum(h_nd, seg, num_segments=n_patches)
        out = out / jnp.maximum(count, 1)[:, None].astype(out.dtype)
    return jnp.where((count > 0)[:, None], out, 0)


def pool_patches(h_bnd: jax.Array, pid_bn: jax.Array, n_patches: int, mode: str) -> jax.Array:
    """Reduce byte states per patch ("max" in releases); patches without bytes give 0.  Per row
    (``vmap``), so the segment scatters keep the batch as a batch dimension (split like the batch)."""
    out = jax.vmap(_pool_row, in_axes=(0, 0, None, None))(h_bnd, pid_bn, n_patches, mode)
    return constrain(out, BPD)


def forward(params: dict, cfg: BLTConfig, e_bnd: jax.Array, pid_bn: jax.Array, n_patches: int,
            doc_bn: Optional[jax.Array], *, dense_cross: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns byte states h [B, N, dE] and patch slots [B, P*k, dE]."""
    enc = params["encoder"]
    spec = encoder_spec(cfg)
    b, n, d = e_bnd.shape
    k = cfg.cross_attn_k
    rope = positions_rope(n, spec, b)
    h = constrain(e_bnd, BTD)
    q = None
    cross_i = 0
    for i in range(spec.n_layers):
        h = block(layer(enc["layers"], i), h, spec, rope, doc_bn)
        if cfg.cross_attn_all_layers_encoder or i == spec.n_layers - 1:
            if q is None:
                pooled = pool_patches(h, pid_bn, n_patches, cfg.downsampling_by_pooling)
                q = linear(pooled, enc["patch_projection"], BPD).reshape(b, n_patches * k, d)
                q = constrain(q, BPD)
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
