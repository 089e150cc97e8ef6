"""The entropy model: a small byte-level causal LM whose next-byte entropy drives patching (design §2).

    logits = W_out · RMSNorm(blocks(E_tok[x]))       sliding-window attention, documents split at EOS

``compute_entropies`` reproduces the context semantics of the official realtime patcher when asked
(rows flattened into one stream and cut into fixed chunks) and fixes them by default (each row is its
own context).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.model import kv_cache
from bltjax.model.attention import doc_ids_from_tokens
from bltjax.model.layers import BTD, BTV, dtype_of, linear, rms_norm, rope_tables, trunc_normal
from bltjax.model.transformer import StackSpec, apply_stack, init_stack
from bltjax.patcher import entropies_from_logits  # noqa: F401  (re-exported)
from bltjax.sharding import constrain, constrain_rows

NEWLINE_ID = ord("\n") + 4


def stack_spec(cfg: TransformerConfig, attention_impl: str = "auto", remat: str = "none") -> StackSpec:
    return StackSpec(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
                     ffn_dim=cfg.ffn_dim, norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                     window=cfg.sliding_window, attention_impl=attention_impl, remat=remat)


def init_params(cfg: TransformerConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    k_emb, k_layers, k_out = jax.random.split(key, 3)
    d = cfg.dim
    return {
        "tok_embeddings": trunc_normal(k_emb, (cfg.vocab_size, d), d ** -0.5, dtype),
        "layers": init_stack(stack_spec(cfg), k_layers, dtype),
        "norm": jnp.ones((d,), dtype),
        "output": trunc_normal(k_out, (d, cfg.vocab_size), d ** -0.5, dtype),
    }


def forward(params: dict, cfg: TransformerConfig, tokens_bn: jax.Array, *, dtype: str = "float32",
            attention_impl: str = "auto", remat: str = "none",
            boundary_id: Optional[int] = None) -> jax.Array:
    """Next-byte logits [B, N, V] (float32).  ``boundary_id`` adds a context reset after that byte."""
    cdt = dtype_of(dtype)
    x = constrain(params["tok_embeddings"].astype(cdt)[tokens_bn], BTD)
    doc = doc_ids_from_tokens(tokens_bn, cfg.eos_id, boundary_id) if cfg.doc_mask or boundary_id else None
    x = apply_stack(params["layers"], x, stack_spec(cfg, attention_impl, remat), doc)
    x = rms_norm(x, params["norm"], cfg.norm_eps)
    return linear(x, params["output"], BTV).astype(jnp.float32)


def compute_entropies(params: dict, cfg: TransformerConfig, pcfg: PatcherConfig, tokens_bn: jax.Array,
                      *, attention_impl: str = "auto") -> jax.Array:
    """Per-byte entropies [B, N] with the context semantics chosen in ``pcfg``.

    * default: every row is one context (padding on the right cannot affect earlier bytes);
    * ``entropy_chunk_len=C``: the context restarts every C bytes;
    * ``entropy_flatten_rows``: rows are concatenated into one stream before chunking (the official
      realtime path, where row r sees the end of row r-1 unless an EOS separates them);
    * ``reset_context_at_newline``: the context also restarts after every newline (paper §4.4);
    * ``entropy_dtype="bfloat16"``: weights and logits in bf16, as the official loader does.
    """
    b, n = tokens_bn.shape
    dtype = pcfg.entropy_dtype
    boundary = NEWLINE_ID if pcfg.reset_context_at_newline else None
    chunk = pcfg.entropy_chunk_len
    if pcfg.entropy_flatten_rows:
        stream = tokens_bn.reshape(1, b * n)
        c = chunk or b * n
    else:
        stream = tokens_bn
        c = chunk or n
    rows, length = stream.shape
    n_chunks = -(-length // c)
    padded = jnp.pad(stream, [(0, 0), (0, n_chunks * c - length)])
    chunks = constrain_rows(padded.reshape(rows * n_chunks, c), "act_batch", rows)
    p = params if dtype == "float32" else jax.tree.map(lambda a: a.astype(dtype_of(dtype)), params)
    logits = forward(p, cfg, chunks, dtype=dtype, attention_impl=attention_impl, boundary_id=boundary)
    ent = entropies_from_logits(logits.astype(dtype_of(dtype)), in_logits_dtype=True)
    ent = ent.reshape(rows, n_chunks * c)[:, :length]
    return constrain(ent.reshape(b, n), ("act_batch", "act_len"))


# ---------------------------------------------------------------- incremental decoding (cached)


def _entropy_setup(cfg: BLTConfig, eparams: dict) -> tuple[TransformerConfig, StackSpec, dict, jnp.dtype]:
    ecfg = cfg.entropy_model
    edt = dtype_of(cfg.patcher.entropy_dtype)
    p = eparams if edt == jnp.float32 else jax.tree.map(lambda a: a.astype(edt), eparams)
    return ecfg, stack_spec(ecfg, cfg.attention_impl), p, edt


def _entropy_boundary(cfg: BLTConfig, tok) -> jax.Array:
    """Token after which the entropy context restarts (EOS with doc masks, newline on request)."""
    ecfg, pc = cfg.entropy_model, cfg.patcher
    newline = pc.reset_context_at_newline
    out = jnp.zeros_like(tok, dtype=bool)
    if ecfg.doc_mask or newline:  # entropy_model.forward counts EOS whenever a boundary id is given
        out = out | (tok == ecfg.eos_id)
    if newline:
        out = out | (tok == NEWLINE_ID)
    return out


def _entropy_rope_pos(cfg: BLTConfig, pos):
    """RoPE position in the entropy model: restarts at every ``entropy_chunk_len`` chunk."""
    c = cfg.patcher.entropy_chunk_len
    return pos % c if c else pos


def prefill_cached(cfg: BLTConfig, eparams: dict, tokens_bt: jax.Array) -> tuple:
    """Entropy model over the padded prompts: (H [B,T] f32, K, V per layer [B,T,Ke,hd], ctx [B,T]).

    ``ctx`` is the context id of each position (it increases after every boundary token and at every
    chunk start), used as the document id of the attention mask."""
    ecfg, spec, p, edt = _entropy_setup(cfg, eparams)
    b, t = tokens_bt.shape
    pos_t = jnp.arange(t)
    prev_bound = jnp.concatenate([jnp.zeros((b, 1), bool), _entropy_boundary(cfg, tokens_bt)[:, :-1]], 1)
    ctx = jnp.cumsum(prev_bound.astype(jnp.int32), axis=1)
    if cfg.patcher.entropy_chunk_len:
        ctx = ctx + (pos_t // cfg.patcher.entropy_chunk_len)[None]
    rope = rope_tables(jnp.broadcast_to(_entropy_rope_pos(cfg, pos_t)[None], (b, t)), spec.head_dim,
                       spec.rope_theta)
    x = p["tok_embeddings"].astype(edt)[tokens_bt]
    x, ks, vs = kv_cache.stack_prefill(p["layers"], x, spec, rope, ctx)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    ent = entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return ent, ks, vs, ctx


def step_row(cfg: BLTConfig, eparams: dict, st: dict, tok, tok_prev, r) -> tuple[jax.Array, dict]:
    """One entropy-model token (position ``r``) of one row: ``H_r`` (f32), the context id and the new
    keys/values per layer (written by ``decode.step``)."""
    ecfg, spec, p, edt = _entropy_setup(cfg, eparams)
    chunk = cfg.patcher.entropy_chunk_len
    event = (r > 0) & _entropy_boundary(cfg, tok_prev)
    if chunk:
        event = event | ((r > 0) & (r % chunk == 0))
    ctx = st["ent_ctx_last"] + event.astype(jnp.int32)
    mask = kv_cache.ring_mask_row(st["ent_pos"], st["ent_ctx"], r, ctx, spec.window)  # own slot: stale or empty
    rope = kv_cache.rope_one(_entropy_rope_pos(cfg, r), spec.head_dim, spec.rope_theta)
    x = p["tok_embeddings"].astype(edt)[tok]
    x, k, v = kv_cache.stack_step_row(p["layers"], x, st["ent_k"], st["ent_v"], rope, mask, spec)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    h = entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return h, dict(ent_ctx_last=ctx, ent_k_new=k, ent_v_new=v)
