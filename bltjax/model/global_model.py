"""Global latent transformer over patches (design §7): work proportional to patches, not bytes.

    g   = patch slots viewed [B, P, k*dE]  (-> optional bias-free projection to dG when k*dE != dG)
    out = blocks(g)   RoPE positions 0..P-1, causal or block-causal over EOS-delimited documents,
                      no final norm.
Layers are stacked and run with ``lax.scan`` under the configured remat policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.model import kv_cache
from bltjax.model.layers import BTD, linear
from bltjax.model.transformer import StackSpec, apply_stack
from bltjax.sharding import constrain


def global_spec(cfg: BLTConfig) -> StackSpec:
    return StackSpec(dim=cfg.dim_global, n_layers=cfg.n_layers_global, n_heads=cfg.n_heads_global,
                     n_kv_heads=cfg.n_kv_heads_global or cfg.n_heads_global,
                     ffn_dim=cfg.local_ffn_dim(cfg.dim_global), norm_eps=cfg.norm_eps,
                     rope_theta=cfg.rope_theta, window=None, attention_impl=cfg.attention_impl,
                     remat=cfg.remat)


def patch_doc_ids(global_tokens_bp: jax.Array, eos_id: int) -> jax.Array:
    """Document of each patch: a patch containing EOS is the last patch of its document."""
    ends = (global_tokens_bp == eos_id).astype(jnp.int32)
    return jnp.cumsum(ends, axis=1) - ends


def forward(params: dict, cfg: BLTConfig, slots_bqd: jax.Array,
            global_tokens_bp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (global input [B, P, k*dE], global output [B, P, dG])."""
    gp = params["global"]
    b = slots_bqd.shape[0]
    g_in = constrain(slots_bqd.reshape(b, -1, cfg.patch_dim), BTD)
    x = g_in
    if cfg.global_input_projection:
        x = linear(x, gp["input_projection"], BTD)
    doc = patch_doc_ids(global_tokens_bp, cfg.eos_id) if cfg.global_attn == "block_causal" else None
    return g_in, apply_stack(gp["layers"], x, global_spec(cfg), doc, scan=cfg.scan_layers)


# ---------------------------------------------------------------- incremental decoding (cached)


def step_row(cfg: BLTConfig, params: dict, st: dict, g_in, p_idx, gdoc) -> tuple[jax.Array, tuple, tuple]:
    """Global transformer for completed patch ``p_idx`` of one row: (output [dG], new keys, new
    values per layer) against the cached earlier patches (columns with ``g_pid >= 0``)."""
    gp = params["global"]
    spec = global_spec(cfg)
    x = g_in
    if cfg.global_input_projection:
        x = x @ gp["input_projection"].astype(x.dtype)
    mask = st["g_pid"] >= 0
    if cfg.global_attn == "block_causal":
        mask = mask & (st["g_doc"] == gdoc)
    rope = kv_cache.rope_one(p_idx, spec.head_dim, spec.rope_theta)
    return kv_cache.stack_step_row(gp["layers"], x, st["g_k"], st["g_v"], rope, mask, spec)
