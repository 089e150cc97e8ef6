"""Local decoder and byte head (design §8).

    kv     = reshape(g_out · W_pd, [B, P*k, dD])
    y      = h_enc                                  (the encoder's final byte states)
    for l:  y = 2y + Wo·CrossAttn_l(y, kv)          (layer 0, or every layer), mask dpid(i) == p
            y = block_l(y)                          (local mask)
    logits = W_out · RMSNorm(y)   (fp32)
dpid comes from ``patch_lengths[:, 1:]`` — the official off-by-one: byte i reads the global state of
the patch before the one holding byte i+1.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.model import kv_cache
from bltjax.model.cross_attention import cross_attend, cross_kv
from bltjax.model.layers import BTD, BTV, linear, rms_norm
from bltjax.model.transformer import StackSpec, block, layer, positions_rope, run_layers
from bltjax.sharding import constrain


def decoder_spec(cfg: BLTConfig) -> StackSpec:
    return StackSpec(dim=cfg.dim_local_decoder, n_layers=cfg.n_layers_local_decoder,
                     n_heads=cfg.n_heads_local_decoder, n_kv_heads=cfg.n_kv_heads or cfg.n_heads_local_decoder,
                     ffn_dim=cfg.local_ffn_dim(cfg.dim_local_decoder), norm_eps=cfg.norm_eps,
                     rope_theta=cfg.rope_theta, window=cfg.local_attention_window_len,
                     attention_impl=cfg.attention_impl, remat=cfg.remat)


def patch_kv(params: dict, cfg: BLTConfig, g_out_bpd: jax.Array) -> jax.Array:
    """Project global patch states to the decoder's k key/value slots per patch: [B, P*k, dD]."""
    b, p, _ = g_out_bpd.shape
    kv = linear(g_out_bpd, params["decoder"]["patch_projection"], BTD)
    return constrain(kv.reshape(b, p * cfg.cross_attn_k, cfg.dim_local_decoder), BTD)


def forward(params: dict, cfg: BLTConfig, h_enc_bnd: jax.Array, g_out_bpd: jax.Array, dpid_bn: jax.Array,
            doc_bn: Optional[jax.Array], *, dense_cross: bool = False) -> jax.Array:
    dec = params["decoder"]
    spec = decoder_spec(cfg)
    b, n, _ = h_enc_bnd.shape
    n_patches = g_out_bpd.shape[1]
    kv = patch_kv(params, cfg, g_out_bpd)
    rope = positions_rope(n, spec, b)

    def cross(y, pc):
        return cross_attend(pc, y, kv, kind="decoder", ids_bn=dpid_bn, n_patches=n_patches, k=cfg.cross_attn_k,
                            n_heads=cfg.cross_attn_nheads, eps=cfg.norm_eps, window=cfg.cross_attn_window_decoder,
                            dense=dense_cross)

    if cfg.cross_attn_all_layers_decoder:  # each layer: cross-attention then block, scanned together
        def cross_block(y, p):
            return block(p[1], cross(y, p[0]), spec, rope, doc_bn)

        y = run_layers(cross_block, h_enc_bnd, (dec["cross"], dec["layers"]), spec, cfg.scan_layers)
    else:  # one cross-attention before the first block
        y = run_layers(lambda y, p: block(p, y, spec, rope, doc_bn), cross(h_enc_bnd, layer(dec["cross"], 0)),
                       dec["layers"], spec, cfg.scan_layers)
    y = rms_norm(y, dec["norm"], cfg.norm_eps)
    return linear(y, dec["output"], BTV).astype(jnp.float32)


# ---------------------------------------------------------------- incremental decoding (cached)


def patch_kv_row(cfg: BLTConfig, params: dict, g_out_d: jax.Array) -> tuple[tuple, tuple]:
    """Decoder cross K/V of one patch (``g_out [dG]``) for every decoder cross layer: ``[H, k, hd]``."""
    dec = params["decoder"]
    kv = (g_out_d @ dec["patch_projection"].astype(g_out_d.dtype)).reshape(cfg.cross_attn_k, cfg.dim_local_decoder)
    ks, vs = [], []
    for pc in kv_cache.layers_of(dec["cross"]):
        k, v = cross_kv(pc, kv, cfg.cross_attn_nheads, cfg.norm_eps)  # [k, H, hd]
        ks.append(jnp.swapaxes(k, 0, 1))
        vs.append(jnp.swapaxes(v, 0, 1))
    return tuple(ks), tuple(vs)


def step_row(cfg: BLTConfig, params: dict, st: dict, h, r, mask_c) -> tuple[jax.Array, tuple, tuple]:
    """Local decoder for the byte at position ``r`` of one row: (logits [V] f32, new keys, new values
    per layer).  Cross-attention reads the last completed patch only (``dkv``): byte ``r`` attends
    patch ``dpid(r)`` and nothing else, i.e. a softmax over its k slots."""
    dec = params["decoder"]
    spec = decoder_spec(cfg)
    nh, d = cfg.cross_attn_nheads, cfg.dim_local_decoder
    rope = kv_cache.rope_one(r, spec.head_dim, spec.rope_theta)
    crosses = kv_cache.layers_of(dec["cross"])
    all_slots = jnp.ones((cfg.cross_attn_k,), bool)
    y = h
    nk, nv = [], []
    for i, (p, k_c, v_c) in enumerate(zip(kv_cache.layers_of(dec["layers"]), st["dec_k"], st["dec_v"])):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            pc = crosses[c]
            q = linear(rms_norm(y, pc["norm_q"], cfg.norm_eps), pc["wq"]).reshape(nh, d // nh)
            a = kv_cache.attend_one(q, st["dkv_k"][c].astype(q.dtype), st["dkv_v"][c].astype(q.dtype), all_slots)
            y = 2 * y + linear(a.reshape(d), pc["wo"])
        y, k, v = kv_cache.block_step_row(p, y, k_c, v_c, rope, mask_c, spec)
        nk.append(k)
        nv.append(v)
    y = rms_norm(y, dec["norm"], cfg.norm_eps)
    return linear(y, dec["output"]).astype(jnp.float32), tuple(nk), tuple(nv)
