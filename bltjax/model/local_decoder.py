"""Local decoder and byte head (spec §8).

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
from bltjax.model.cross_attention import cross_attend
from bltjax.model.layers import BTD, BTV, linear, rms_norm
from bltjax.model.transformer import StackSpec, block, layer, positions_rope
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
    y = h_enc_bnd
    for i in range(spec.n_layers):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            y = cross_attend(layer(dec["cross"], c), y, kv, kind="decoder", ids_bn=dpid_bn,
                             n_patches=n_patches, k=cfg.cross_attn_k, n_heads=cfg.cross_attn_nheads,
                             eps=cfg.norm_eps, window=cfg.cross_attn_window_decoder, dense=dense_cross)
        y = block(layer(dec["layers"], i), y, spec, rope, doc_bn)
    y = rms_norm(y, dec["norm"], cfg.norm_eps)
    return linear(y, dec["output"], BTV).astype(jnp.float32)
