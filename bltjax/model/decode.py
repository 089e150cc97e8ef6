"""Incremental (KV-cached) BLT: prefill a prompt, then add one byte per row per step.

The naive generator re-patches and re-runs the whole prefix for every byte (spec §13).  Everything in
BLT is causal, so the same logits come out of a byte-by-byte pipeline with caches:

* **entropy model**: a ring (sliding-window) KV cache; ``H_n`` comes out of one single-token step.
* **incremental patching**: whether position ``j`` starts a patch depends only on bytes/entropies
  before ``j`` (``H_{j-1}``, ``H_{j-2}``, ``x_{j-1}``, ``x_{j-2}``, the current patch start), so
  ``start(n+1)`` is decided as soon as byte ``n`` is in.  That is the inference convention of the
  official patcher (``include_next_token=True``: ``n+1`` is the *virtual* next byte).
* **local encoder**: ring KV cache per layer; byte states never depend on patching.  The bytes of the
  *open* patch (the one that will contain byte ``n+1``) keep their cross-attention keys/values, and
  the pooling is a running max (min / sum), so when the patch closes its encoder cross-attention is
  recomputed once from cached states (pooling and query slots change with every byte added).
* **global transformer**: runs once per *completed* patch, with a KV cache over patch slots.
* **local decoder**: byte ``n`` reads patch ``dpid(n) = P(n+1) - 1`` (spec §8): if ``start(n+1)`` the
  patch that byte ``n`` just closed, otherwise the previous one.  Either way it is the *last
  completed patch*, so only that patch's cross-attention keys/values are kept.  Ring KV cache per
  layer.

State layout (a dict pytree, leading batch axis ``B`` on every entry; shapes with ``T`` = byte buffer,
``C`` = local ring slots, ``Ce`` = entropy ring slots, ``Pm`` = global patch slots):

=================  ================================  =============================================
key                shape                             meaning
=================  ================================  =============================================
pos                [B]                               bytes already incorporated (next position)
logits             [B, V] f32                        logits of position ``pos - 1``
ent_k / ent_v      [B, Le, Ce, Ke, hde]              entropy-model ring KV cache
ent_pos / ent_ctx  [B, Ce]                           position / context id held by each slot
ent_ctx_last       [B]                               context id of position ``pos - 1``
h1                 [B] f32                           ``H_{pos-1}`` (``h2`` = ``H_{pos-2}``)
loc_pos / loc_doc  [B, C]                            position / document of each local ring slot
doc_last           [B]                               local document of position ``pos - 1``
enc_k / enc_v      [B, Lenc, C, K, hd]               local-encoder ring KV cache
x_k / x_v          [B, Xc, T, H, hd]                 encoder cross-attention K/V of every byte
pool / pool_cnt    [B, dE] / [B]                     running pool of the open patch
h_last             [B, dE]                           encoder state of the last byte (decoder input)
open_start         [B]                               first position of the open patch
orig_start         [B]                               latest start before max_patch_length splits
open_eos           [B] bool                          open patch contains EOS (global doc mask)
n_patches          [B]                               completed patches (= global slots written)
gdoc_now           [B]                               global document of the next patch
g_k / g_v, g_doc   [B, Lg, Pm, Kg, hdg], [B, Pm]     global KV cache and patch documents
dkv_k / dkv_v      [B, Xd, k, H, hd]                 decoder cross K/V of the last completed patch
dec_k / dec_v      [B, Ldec, C, K, hd]               local-decoder ring KV cache
=================  ================================  =============================================

Functions named ``*_row`` work on one row (no batch axis) and are ``vmap``-ed over the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax import patcher as patcher_lib
from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.model import entropy_model as em
from bltjax.model import global_model, local_decoder, local_encoder
from bltjax.model.attention import dense_attention
from bltjax.model.cross_attention import cross_attend
from bltjax.model.layers import apply_rope, dtype_of, linear, rms_norm, rope_tables, swiglu
from bltjax.model.transformer import StackSpec, layer
from bltjax.tokenizer import EOS_ID, OFFSET

NEWLINE_ID = em.NEWLINE_ID


# ============================================================================ sizes and support


@dataclasses.dataclass(frozen=True)
class DecodeSizes:
    """Static buffer sizes of one compiled generation program.

    ``prompt_len``: prefill width (prompts are right-padded to it, a power of two bucket);
    ``max_len``: byte buffer capacity (prompt bucket + room for new bytes);
    ``max_patches``: global KV-cache slots (>= ``prompt_len``); a row that fills them stops.
    """

    prompt_len: int
    max_len: int
    max_patches: int

    def __post_init__(self) -> None:
        if not 1 <= self.prompt_len <= self.max_len:
            raise ValueError(f"need 1 <= prompt_len <= max_len, got {self.prompt_len}, {self.max_len}")
        if self.max_patches < self.prompt_len:
            raise ValueError(f"max_patches ({self.max_patches}) must be >= prompt_len ({self.prompt_len})")


def ring_slots(window: Optional[int], max_len: int) -> int:
    """Ring-buffer size of a sliding-window cache: the window, or the whole buffer if shorter/None."""
    return max_len if window is None else min(int(window), max_len)


def check_supported(cfg: BLTConfig) -> None:
    """Raise ``ValueError`` for configurations the cached decoder cannot reproduce exactly."""
    pc = cfg.patcher
    if pc.mode == "entropy" and cfg.entropy_model is None:
        raise ValueError("entropy patching needs an entropy model config (cfg.entropy_model)")
    if pc.mode == "entropy" and pc.threshold is None:
        raise ValueError("cached generation needs causal patching: the fixed-patch-count entropy mode "
                         "(threshold=None) looks at the whole sequence; use method='naive'")
    if pc.mode == "bpe":
        raise ValueError("cached generation does not support 'bpe' patching (a delimiter's start at the "
                         "virtual next position is dropped, then appears later: not causal); "
                         "use method='naive'")
    if pc.entropy_flatten_rows:
        raise ValueError("cached generation keeps one entropy context per row; entropy_flatten_rows "
                         "(official cross-row leakage) is only available with method='naive'")
    if pc.patches_sum_to_n and pc.max_patch_length is not None:
        raise ValueError("patches_sum_to_n with max_patch_length drops the boundary at the virtual next "
                         "byte (HF convention): not causal, so not available to cached generation")
    if cfg.cross_attn_window_encoder is not None or cfg.cross_attn_window_decoder is not None:
        raise ValueError("cached generation implements the exact-patch cross-attention masks only "
                         "(cross_attn_window_encoder/decoder must be None); use method='naive'")


# ============================================================================ block pieces


def block_kv(p: dict, x_btd: jax.Array, spec: StackSpec, rope: tuple[jax.Array, jax.Array],
             doc_bt: Optional[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``transformer.block`` that also returns the layer's (roped) keys and values [B, T, K, hd]."""
    from bltjax.model import attention as attn_lib

    b, t, _ = x_btd.shape
    hd = spec.head_dim
    n1 = rms_norm(x_btd, p["attention_norm"], spec.norm_eps)
    q = linear(n1, p["wq"]).reshape(b, t, spec.n_heads, hd)
    k = linear(n1, p["wk"]).reshape(b, t, spec.n_kv_heads, hd)
    v = linear(n1, p["wv"]).reshape(b, t, spec.n_kv_heads, hd)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    a = attn_lib.self_attention(q, k, v, doc_bt=doc_bt, window=spec.window, impl=spec.attention_impl)
    h = x_btd + linear(a.reshape(b, t, spec.n_heads * hd), p["wo"])
    n2 = rms_norm(h, p["ffn_norm"], spec.norm_eps)
    return h + swiglu(n2, p["w1"], p["w3"], p["w2"]), k, v


def stack_prefill(stack: dict, x_btd: jax.Array, spec: StackSpec, rope, doc_bt) -> tuple:
    """All layers over a whole sequence; returns (x, K [L, B, T, K, hd], V)."""

    def body(x, p):
        x, k, v = block_kv(p, x, spec, rope, doc_bt)
        return x, (k, v)

    x, (ks, vs) = jax.lax.scan(body, x_btd, stack)
    return x, ks, vs


def _rope1(pos: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """RoPE tables for a single position: cos/sin [1, 1, head_dim/2]."""
    return rope_tables(jnp.reshape(pos, (1, 1)), head_dim, theta)


def block_step_row(p: dict, x_d: jax.Array, k_ckh: jax.Array, v_ckh: jax.Array, slot: jax.Array,
                   rope, mask_c: jax.Array, spec: StackSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block for one new token of one row against its ring cache; returns (x, k_cache, v_cache).

    The new key/value is written into ``slot`` first; ``mask_c`` (bool [C]) says which slots the
    token may attend (itself included)."""
    hd = spec.head_dim
    x = x_d[None, None]
    n1 = rms_norm(x, p["attention_norm"], spec.norm_eps)
    q = linear(n1, p["wq"]).reshape(1, 1, spec.n_heads, hd)
    k = linear(n1, p["wk"]).reshape(1, 1, spec.n_kv_heads, hd)
    v = linear(n1, p["wv"]).reshape(1, 1, spec.n_kv_heads, hd)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k_ckh = jax.lax.dynamic_update_slice(k_ckh, k[0].astype(k_ckh.dtype), (slot, 0, 0))
    v_ckh = jax.lax.dynamic_update_slice(v_ckh, v[0].astype(v_ckh.dtype), (slot, 0, 0))
    a = dense_attention(q, k_ckh[None].astype(q.dtype), v_ckh[None].astype(q.dtype), mask_c[None, None])
    h = x + linear(a.reshape(1, 1, spec.n_heads * hd), p["wo"])
    n2 = rms_norm(h, p["ffn_norm"], spec.norm_eps)
    return (h + swiglu(n2, p["w1"], p["w3"], p["w2"]))[0, 0], k_ckh, v_ckh


def stack_step_row(stack: dict, x_d: jax.Array, k_lckh: jax.Array, v_lckh: jax.Array, slot, rope,
                   mask_c, spec: StackSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """All layers of a stack for one token of one row (``lax.scan`` over layers)."""

    def body(x, xs):
        p, k, v = xs
        x, k, v = block_step_row(p, x, k, v, slot, rope, mask_c, spec)
        return x, (k, v)

    x, (k_lckh, v_lckh) = jax.lax.scan(body, x_d, (stack, k_lckh, v_lckh))
    return x, k_lckh, v_lckh


def ring_from_prefill(kv_lbtkh: jax.Array, length_b: jax.Array, slots: int) -> jax.Array:
    """Prefill keys/values ``[L, B, T, K, hd]`` -> ring cache ``[B, L, C, K, hd]``.

    Slot ``c`` holds the most recent position ``i < length`` with ``i % C == c`` (garbage when none:
    see :func:`ring_positions`)."""
    src_bc = ring_positions(length_b, slots)
    idx = jnp.maximum(src_bc, 0)
    kv = jnp.moveaxis(kv_lbtkh, 0, 1)  # [B, L, T, K, hd]
    return jax.vmap(lambda a, i: a[:, i])(kv, idx)


def ring_positions(length_b: jax.Array, slots: int) -> jax.Array:
    """Position held by each ring slot after ``length`` positions were written: [B, C], -1 if none."""
    c = jnp.arange(slots)[None, :]
    src = c + slots * jnp.floor_divide(length_b[:, None] - 1 - c, slots)
    return jnp.where(src >= 0, src, -1).astype(jnp.int32)


def ring_mask_row(slot_pos_c: jax.Array, slot_doc_c: jax.Array, pos, doc, window: Optional[int]) -> jax.Array:
    """Which ring slots position ``pos`` (document ``doc``) may attend: causal, window, same document."""
    ok = (slot_pos_c >= 0) & (slot_pos_c <= pos) & (slot_doc_c == doc)
    if window is not None:
        ok = ok & (pos - slot_pos_c < window)
    return ok


# ============================================================================ incremental patching


def _space_like(tok):
    c = tok - OFFSET
    return ((c < ord("0")) | ((c > ord("9")) & (c < ord("A"))) | ((c > ord("Z")) & (c < ord("a")))
            | ((c > ord("z")) & (c < 0x80)) | (c >= 0xC0))


def rule_start(pcfg: PatcherConfig, j, h_prev, h_prev2, tok_prev, tok_prev2) -> jax.Array:
    """Does position ``j`` start a patch (before ``max_patch_length`` splits)?  Causal: depends on
    ``H_{j-1}`` (``h_prev``), ``H_{j-2}``, ``x_{j-1}``, ``x_{j-2}`` only.  Same rules as
    ``patcher.patch_start_mask`` (spec §3.1); positions 0 and 1 always start."""
    always = j <= 1
    mode = pcfg.mode
    if mode == "byte":
        cand = jnp.ones_like(always)
    elif mode == "static":
        cand = j % int(pcfg.patch_size) == 0
    elif mode == "space":
        ends = (_space_like(tok_prev) & ~_space_like(tok_prev2)) | (tok_prev < OFFSET)
        cand = (j >= 2) & ends
    elif mode == "entropy":
        h1 = jnp.asarray(h_prev, jnp.float32)
        h2 = jnp.asarray(h_prev2, jnp.float32)
        if pcfg.monotonicity:
            cand = (j == 2) | ((j >= 3) & (h1 - h2 > pcfg.threshold))
        elif pcfg.threshold_add is not None:
            cand = (j == 2) | ((j >= 4) & (h1 - h2 > pcfg.threshold_add) & (h1 > pcfg.threshold))
        else:
            cand = (j >= 2) & (h1 > pcfg.threshold)
    else:
        raise ValueError(f"patching mode {mode!r} is not supported by incremental patching")
    return always | cand


def next_start(pcfg: PatcherConfig, j, orig_start, h_prev, h_prev2, tok_prev, tok_prev2):
    """(``start(j)``, updated latest rule start) including ``max_patch_length`` splitting: a patch
    that grew to ``m`` positions since the latest rule start is cut (full chunks first, spec §3.2)."""
    rs = rule_start(pcfg, j, h_prev, h_prev2, tok_prev, tok_prev2)
    orig = jnp.where(rs, j, orig_start)
    start = rs
    if pcfg.max_patch_length is not None:
        start = (j - orig) % int(pcfg.max_patch_length) == 0
    return start, orig


# ============================================================================ entropy model


def _entropy_setup(cfg: BLTConfig, eparams: dict) -> tuple[TransformerConfig, StackSpec, dict, jnp.dtype]:
    ecfg = cfg.entropy_model
    edt = dtype_of(cfg.patcher.entropy_dtype)
    p = eparams if edt == jnp.float32 else jax.tree.map(lambda a: a.astype(edt), eparams)
    return ecfg, em.stack_spec(ecfg, cfg.attention_impl), p, edt


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
    c = cfg.patcher.entropy_chunk_len
    return pos % c if c else pos


def entropy_prefill(cfg: BLTConfig, eparams: dict, tokens_bt: jax.Array) -> tuple:
    """Entropy model over the padded prompts: (H [B,T] f32, K, V [Le,B,T,Ke,hd], ctx [B,T])."""
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
    x, ks, vs = stack_prefill(p["layers"], x, spec, rope, ctx)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    ent = em.entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return ent, ks, vs, ctx


def entropy_step_row(cfg: BLTConfig, eparams: dict, st: dict, tok, tok_prev, pos) -> tuple[jax.Array, dict]:
    """One entropy-model token for one row: returns ``H_pos`` (f32) and the updated cache entries."""
    ecfg, spec, p, edt = _entropy_setup(cfg, eparams)
    chunk = cfg.patcher.entropy_chunk_len
    event = (pos > 0) & _entropy_boundary(cfg, tok_prev)
    if chunk:
        event = event | ((pos > 0) & (pos % chunk == 0))
    ctx = st["ent_ctx_last"] + event.astype(jnp.int32)
    slots = st["ent_pos"].shape[0]
    slot = pos % slots
    ent_pos = st["ent_pos"].at[slot].set(pos)
    ent_ctx = st["ent_ctx"].at[slot].set(ctx)
    mask = ring_mask_row(ent_pos, ent_ctx, pos, ctx, spec.window)
    rope = _rope1(_entropy_rope_pos(cfg, pos), spec.head_dim, spec.rope_theta)
    x = p["tok_embeddings"].astype(edt)[tok]
    x, k, v = stack_step_row(p["layers"], x, st["ent_k"], st["ent_v"], slot, rope, mask, spec)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    h = em.entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return h, dict(ent_k=k, ent_v=v, ent_pos=ent_pos, ent_ctx=ent_ctx, ent_ctx_last=ctx)


# ============================================================================ encoder pieces


def _cross_layers_encoder(cfg: BLTConfig) -> list[int]:
    """Encoder layers followed by a cross-attention (pooling happens at the first one)."""
    n = cfg.n_layers_local_encoder
    return list(range(n)) if cfg.cross_attn_all_layers_encoder else [n - 1]


def _cross_kv(pc: dict, h: jax.Array, n_heads: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Cross-attention keys/values of key/value inputs ``h [..., d]`` -> ``[..., H, hd]``."""
    d = h.shape[-1]
    kvn = rms_norm(h, pc["norm_kv"], eps)
    k = linear(kvn, pc["wk"]).reshape(*h.shape[:-1], n_heads, d // n_heads)
    v = linear(kvn, pc["wv"]).reshape(*h.shape[:-1], n_heads, d // n_heads)
    return k, v


def _pool_update(mode: str, pool, cnt, h, fresh):
    """Running max / min / sum of the open patch's byte states (restarted when ``fresh``)."""
    if mode == "max":
        new = jnp.maximum(pool, h)
    elif mode == "min":
        new = jnp.minimum(pool, h)
    else:
        new = pool + h
    return jnp.where(fresh, h, new), jnp.where(fresh, 1, cnt + 1)


def _pooled(mode: str, pool, cnt):
    if mode in ("max", "min"):
        return pool
    return pool / jnp.maximum(cnt, 1).astype(pool.dtype)


def encoder_step_row(cfg: BLTConfig, params: dict, st: dict, tokens_t: jax.Array, pos, doc, slot,
                     mask_c) -> tuple[jax.Array, list[jax.Array], dict]:
    """Local encoder for byte ``pos`` of one row: (final state, states after each cross layer, cache).

    Hash n-gram ids need only the last ``max(n)`` bytes (left-padded with BOE 0 like the full path)."""
    enc = params["encoder"]
    spec = local_encoder.encoder_spec(cfg)
    w = max(cfg.encoder_hash_byte_group_size) if cfg.n_hash_tables else 1
    idx = pos - (w - 1) + jnp.arange(w)
    window = jnp.where(idx >= 0, tokens_t[jnp.clip(idx, 0, tokens_t.shape[0] - 1)], 0)
    h = local_encoder.embed(params, cfg, window[None])[0, -1]
    rope = _rope1(pos, spec.head_dim, spec.rope_theta)
    k_all, v_all = st["enc_k"], st["enc_v"]
    outs = []
    for i in range(spec.n_layers):
        h, k, v = block_step_row(layer(enc["layers"], i), h, k_all[i], v_all[i], slot, rope, mask_c, spec)
        k_all, v_all = k_all.at[i].set(k), v_all.at[i].set(v)
        outs.append(h)
    return h, outs, dict(enc_k=k_all, enc_v=v_all)


def encoder_patch_row(cfg: BLTConfig, params: dict, pool, cnt, x_k, x_v, start, end) -> jax.Array:
    """Encoder cross-attention of the patch made of bytes ``start..end`` (inclusive) of one row.

    ``q = 2q + Wo·attn`` per cross layer, queries initialised from the pooled byte states; keys/values
    are the cached per-byte cross K/V ``[Xc, T, H, hd]``.  Returns the patch vector ``[k*dE]``."""
    enc = params["encoder"]
    k, d, nh = cfg.cross_attn_k, cfg.dim_local_encoder, cfg.cross_attn_nheads
    pooled = _pooled(cfg.downsampling_by_pooling, pool, cnt)
    q = (pooled @ enc["patch_projection"].astype(pooled.dtype)).reshape(k, d)
    t = jnp.arange(x_k.shape[1])
    mask = ((t >= start) & (t <= end))[None, None, :]  # [1, 1(query rows broadcast), T]
    mask = jnp.broadcast_to(mask, (1, k, x_k.shape[1]))
    for c in range(len(_cross_layers_encoder(cfg))):
        pc = layer(enc["cross"], c)
        qn = rms_norm(q, pc["norm_q"], cfg.norm_eps)
        qh = linear(qn, pc["wq"]).reshape(1, k, nh, d // nh)
        a = dense_attention(qh, x_k[c][None].astype(qh.dtype), x_v[c][None].astype(qh.dtype), mask)
        q = 2 * q + linear(a.reshape(k, d), pc["wo"])
    return q.reshape(k * d)


# ============================================================================ global + decoder pieces


def decoder_patch_kv(cfg: BLTConfig, params: dict, g_out_pd: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Decoder cross K/V of patches ``g_out [..., dG]`` for every decoder cross layer:
    ``[Xd, ..., k, H, hd]`` each."""
    dec = params["decoder"]
    kv = g_out_pd @ dec["patch_projection"].astype(g_out_pd.dtype)
    kv = kv.reshape(*g_out_pd.shape[:-1], cfg.cross_attn_k, cfg.dim_local_decoder)
    ks, vs = [], []
    for c in range(cfg.n_cross_decoder):
        k, v = _cross_kv(layer(dec["cross"], c), kv, cfg.cross_attn_nheads, cfg.norm_eps)
        ks.append(k)
        vs.append(v)
    return jnp.stack(ks), jnp.stack(vs)


def global_step_row(cfg: BLTConfig, params: dict, st: dict, g_in, p_idx, gdoc) -> tuple[jax.Array, dict]:
    """Global transformer for completed patch ``p_idx`` of one row (KV cache over patch slots)."""
    gp = params["global"]
    spec = global_model.global_spec(cfg)
    x = g_in
    if cfg.global_input_projection:
        x = x @ gp["input_projection"].astype(x.dtype)
    g_doc = st["g_doc"].at[p_idx].set(gdoc)
    slots = jnp.arange(g_doc.shape[0])
    mask = slots <= p_idx
    if cfg.global_attn == "block_causal":
        mask = mask & (g_doc == gdoc)
    rope = _rope1(p_idx, spec.head_dim, spec.rope_theta)
    x, k, v = stack_step_row(gp["layers"], x, st["g_k"], st["g_v"], p_idx, rope, mask, spec)
    return x, dict(g_k=k, g_v=v, g_doc=g_doc)


def decoder_step_row(cfg: BLTConfig, params: dict, st: dict, h, pos, slot, mask_c) -> tuple[jax.Array, dict]:
    """Local decoder for byte ``pos`` of one row: logits [V] f32 and the updated ring cache."""
    dec = params["decoder"]
    spec = local_decoder.decoder_spec(cfg)
    nh, d = cfg.cross_attn_nheads, cfg.dim_local_decoder
    hd = d // nh
    rope = _rope1(pos, spec.head_dim, spec.rope_theta)
    k_all, v_all = st["dec_k"], st["dec_v"]
    y = h
    for i in range(spec.n_layers):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            pc = layer(dec["cross"], c)
            q = linear(rms_norm(y, pc["norm_q"], cfg.norm_eps), pc["wq"]).reshape(nh, hd)
            kk, vv = st["dkv_k"][c].astype(q.dtype), st["dkv_v"][c].astype(q.dtype)  # [k, H, hd]
            s = jnp.einsum("hd,rhd->hr", q, kk, preferred_element_type=jnp.float32) * (hd ** -0.5)
            pr = jax.nn.softmax(s, axis=-1)
            a = jnp.einsum("hr,rhd->hd", pr.astype(vv.dtype), vv)
            y = 2 * y + linear(a.reshape(d), pc["wo"])
        y, k, v = block_step_row(layer(dec["layers"], i), y, k_all[i], v_all[i], slot, rope, mask_c, spec)
        k_all, v_all = k_all.at[i].set(k), v_all.at[i].set(v)
    y = rms_norm(y, dec["norm"], cfg.norm_eps)
    return linear(y, dec["output"]).astype(jnp.float32), dict(dec_k=k_all, dec_v=v_all)


# ============================================================================ prefill


def prefill(params: dict, eparams: Optional[dict], cfg: BLTConfig, sizes: DecodeSizes,
            tokens_bt: jax.Array, length_b: jax.Array) -> dict:
    """Run the padded prompts ``tokens [B, prompt_len]`` (row lengths ``length_b >= 1``) in parallel
    and return the decode state (module docstring) as if every byte had been stepped in one by one.

    Patching uses ``patcher.patch_start_mask`` (the same rules :func:`rule_start` applies per byte).
    The global model runs over ``prompt_len`` patch slots (slots past a row's completed patches hold
    garbage that is overwritten before it can be attended)."""
    check_supported(cfg)
    b, t = tokens_bt.shape
    if t != sizes.prompt_len:
        raise ValueError(f"prefill tokens have {t} columns, sizes.prompt_len is {sizes.prompt_len}")
    cdt = dtype_of(cfg.dtype)
    pc = cfg.patcher
    T, Pm = sizes.max_len, sizes.max_patches
    rows = jnp.arange(b)
    length_b = length_b.astype(jnp.int32)
    last = length_b - 1
    st: dict = {"pos": length_b}

    # ---- entropies and patch starts over positions 0..t (position L = virtual next byte)
    if pc.mode == "entropy":
        ent, eks, evs, ectx = entropy_prefill(cfg, eparams, tokens_bt)
        ce = ring_slots(cfg.entropy_model.sliding_window, T)
        epos = ring_positions(length_b, ce)
        st.update(ent_k=ring_from_prefill(eks, length_b, ce), ent_v=ring_from_prefill(evs, length_b, ce),
                  ent_pos=epos, ent_ctx=jnp.take_along_axis(ectx, jnp.maximum(epos, 0), axis=1),
                  ent_ctx_last=ectx[rows, last])
    else:
        ent = jnp.zeros((b, t), jnp.float32)
    st["h1"] = ent[rows, last]
    st["h2"] = jnp.where(last >= 1, ent[rows, jnp.maximum(last - 1, 0)], 0.0)
    rule = patcher_lib.patch_start_mask(pc, tokens_bt, ent if pc.mode == "entropy" else None,
                                        include_next_token=True, lengths_b=length_b)  # [B, t+1]
    idx = jnp.arange(t + 1)[None]
    rule = rule | (idx == 0)
    orig = jax.lax.cummax(jnp.where(rule, idx, 0), axis=1)
    starts = rule
    if pc.max_patch_length is not None:
        starts = (idx - orig) % int(pc.max_patch_length) == 0
    starts = starts & (idx <= length_b[:, None])
    cs = jnp.cumsum(starts.astype(jnp.int32), axis=1)  # P(j) = cs[j] - 1
    n_patches = cs[rows, length_b] - 1  # completed patches (all before the one holding position L)
    open_start = jnp.max(jnp.where(starts, idx, 0), axis=1)
    st.update(open_start=open_start, orig_start=orig[rows, length_b], n_patches=n_patches)

    # ---- local encoder (ring caches, per-byte cross K/V, running pool of the open patch)
    pos_t = jnp.arange(t)
    doc = (jnp.cumsum((tokens_bt == cfg.eos_id).astype(jnp.int32), axis=1)
           - (tokens_bt == cfg.eos_id).astype(jnp.int32)) if cfg.local_doc_mask else jnp.zeros((b, t), jnp.int32)
    espec = local_encoder.encoder_spec(cfg)
    rope = rope_tables(jnp.broadcast_to(pos_t[None], (b, t)), espec.head_dim, espec.rope_theta)
    e = local_encoder.embed(params, cfg, tokens_bt)
    doc_arg = doc if cfg.local_doc_mask else None
    h = e
    eks, evs, outs = [], [], []
    for i in range(espec.n_layers):
        h, k, v = block_kv(layer(params["encoder"]["layers"], i), h, espec, rope, doc_arg)
        eks.append(k)
        evs.append(v)
        outs.append(h)
    cl = ring_slots(cfg.local_attention_window_len, T)
    lpos = ring_positions(length_b, cl)
    st.update(enc_k=ring_from_prefill(jnp.stack(eks), length_b, cl),
              enc_v=ring_from_prefill(jnp.stack(evs), length_b, cl), loc_pos=lpos,
              loc_doc=jnp.take_along_axis(doc, jnp.maximum(lpos, 0), axis=1), doc_last=doc[rows, last],
              h_last=h[rows, last])
    xl = _cross_layers_encoder(cfg)
    xks, xvs = [], []
    for c, li in enumerate(xl):
        k, v = _cross_kv(layer(params["encoder"]["cross"], c), outs[li], cfg.cross_attn_nheads, cfg.norm_eps)
        pad = [(0, 0), (0, T - t), (0, 0), (0, 0)]
        xks.append(jnp.pad(k, pad))
        xvs.append(jnp.pad(v, pad))
    st.update(x_k=jnp.stack(xks, axis=1), x_v=jnp.stack(xvs, axis=1))
    hs = outs[xl[0]]
    in_open = (pos_t[None] >= open_start[:, None]) & (pos_t[None] < length_b[:, None])
    mode = cfg.downsampling_by_pooling
    if mode == "max":
        pool = jnp.max(jnp.where(in_open[..., None], hs, -jnp.inf), axis=1)
    elif mode == "min":
        pool = jnp.min(jnp.where(in_open[..., None], hs, jnp.inf), axis=1)
    else:
        pool = jnp.sum(jnp.where(in_open[..., None], hs, 0), axis=1)
    st.update(pool=jnp.where(jnp.isfinite(pool), pool, 0).astype(cdt), pool_cnt=jnp.sum(in_open, axis=1))
    st["open_eos"] = jnp.any(in_open & (tokens_bt == cfg.eos_id), axis=1)

    # ---- completed patches -> encoder cross-attention -> global transformer (slots 0..t-1)
    pid = cs[:, :t] - 1
    pid_enc = jnp.where(pos_t[None] < open_start[:, None], pid, t)  # open patch / padding: dummy id t
    np1 = t + 1
    pooled = local_encoder.pool_patches(hs, pid_enc, np1, mode)
    q = (pooled @ params["encoder"]["patch_projection"].astype(hs.dtype)).reshape(b, np1 * cfg.cross_attn_k, -1)
    for c, li in enumerate(xl):  # cross layer c reads the byte states after encoder layer li
        q = cross_attend(layer(params["encoder"]["cross"], c), q, outs[li], kind="encoder",
                         ids_bn=pid_enc, n_patches=np1, k=cfg.cross_attn_k, n_heads=cfg.cross_attn_nheads,
                         eps=cfg.norm_eps)
    g_in = q[:, : t * cfg.cross_attn_k].reshape(b, t, cfg.patch_dim)
    x = g_in
    gp = params["global"]
    if cfg.global_input_projection:
        x = x @ gp["input_projection"].astype(x.dtype)
    gtok = patcher_lib.global_patch_tokens(tokens_bt, pid_enc, t, cfg.eos_id)
    gdoc = global_model.patch_doc_ids(gtok, cfg.eos_id)
    gspec = global_model.global_spec(cfg)
    grope = rope_tables(jnp.broadcast_to(pos_t[None], (b, t)), gspec.head_dim, gspec.rope_theta)
    g_out, gks, gvs = stack_prefill(gp["layers"], x, gspec, grope,
                                    gdoc if cfg.global_attn == "block_causal" else None)
    gpad = [(0, 0), (0, 0), (0, Pm - t), (0, 0), (0, 0)]
    st.update(g_k=jnp.pad(jnp.moveaxis(gks, 0, 1), gpad), g_v=jnp.pad(jnp.moveaxis(gvs, 0, 1), gpad),
              g_doc=jnp.pad(gdoc, [(0, 0), (0, Pm - t)]))
    is_eos_patch = (gtok == cfg.eos_id) & (jnp.arange(t)[None] < n_patches[:, None])
    st["gdoc_now"] = jnp.sum(is_eos_patch, axis=1, dtype=jnp.int32)
    last_patch = jnp.clip(n_patches - 1, 0, t - 1)
    dk, dv = decoder_patch_kv(cfg, params, g_out[rows, last_patch])  # [Xd, B, k, H, hd]
    st.update(dkv_k=jnp.moveaxis(dk, 0, 1), dkv_v=jnp.moveaxis(dv, 0, 1))

    # ---- local decoder (dpid(i) = P(i+1) - 1)
    dpid = jnp.clip(cs[:, 1:] - 2, 0, t - 1)
    dspec = local_decoder.decoder_spec(cfg)
    drope = rope_tables(jnp.broadcast_to(pos_t[None], (b, t)), dspec.head_dim, dspec.rope_theta)
    kv = local_decoder.patch_kv(params, cfg, g_out)
    y = h
    dks, dvs = [], []
    dec = params["decoder"]
    for i in range(dspec.n_layers):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            y = cross_attend(layer(dec["cross"], c), y, kv, kind="decoder", ids_bn=dpid, n_patches=t,
                             k=cfg.cross_attn_k, n_heads=cfg.cross_attn_nheads, eps=cfg.norm_eps)
        y, k, v = block_kv(layer(dec["layers"], i), y, dspec, drope, doc_arg)
        dks.append(k)
        dvs.append(v)
    st.update(dec_k=ring_from_prefill(jnp.stack(dks), length_b, cl),
              dec_v=ring_from_prefill(jnp.stack(dvs), length_b, cl))
    y_last = rms_norm(y[rows, last], dec["norm"], cfg.norm_eps)
    st["logits"] = linear(y_last, dec["output"]).astype(jnp.float32)
    if pc.mode != "entropy":  # keep the state structure independent of the mode
        st.update(ent_k=jnp.zeros((b, 0)), ent_v=jnp.zeros((b, 0)), ent_pos=jnp.zeros((b, 0), jnp.int32),
                  ent_ctx=jnp.zeros((b, 0), jnp.int32), ent_ctx_last=jnp.zeros((b,), jnp.int32))
    return st


# ============================================================================ one step


def _byte_phase_row(cfg: BLTConfig, params: dict, eparams, st: dict, tokens_t: jax.Array):
    """Entropy model, incremental patch decision and local encoder for byte ``pos`` of one row."""
    pos = st["pos"]
    tok = tokens_t[pos]
    tok_prev = jnp.where(pos >= 1, tokens_t[jnp.maximum(pos - 1, 0)], 0)
    out = {}
    if cfg.patcher.mode == "entropy":
        h_new, ent_upd = entropy_step_row(cfg, eparams, st, tok, tok_prev, pos)
        out.update(ent_upd)
    else:
        h_new = jnp.zeros((), jnp.float32)
    # start(pos + 1): H_pos, H_{pos-1}, x_pos, x_{pos-1}
    start, orig = next_start(cfg.patcher, pos + 1, st["orig_start"], h_new, st["h1"], tok, tok_prev)
    out.update(h1=h_new, h2=st["h1"], orig_start=orig)
    # local ring bookkeeping shared by encoder and decoder
    doc = st["doc_last"]
    if cfg.local_doc_mask:
        doc = doc + ((pos > 0) & (tok_prev == cfg.eos_id)).astype(jnp.int32)
    slots = st["loc_pos"].shape[0]
    slot = pos % slots
    loc_pos = st["loc_pos"].at[slot].set(pos)
    loc_doc = st["loc_doc"].at[slot].set(doc)
    mask = ring_mask_row(loc_pos, loc_doc, pos, doc, cfg.local_attention_window_len)
    out.update(loc_pos=loc_pos, loc_doc=loc_doc, doc_last=doc)
    h, outs, enc_upd = encoder_step_row(cfg, params, st, tokens_t, pos, doc, slot, mask)
    out.update(enc_upd, h_last=h)
    xl = _cross_layers_encoder(cfg)
    xk, xv = st["x_k"], st["x_v"]
    for c, li in enumerate(xl):
        k, v = _cross_kv(layer(params["encoder"]["cross"], c), outs[li], cfg.cross_attn_nheads, cfg.norm_eps)
        xk = jax.lax.dynamic_update_slice(xk, k[None, None].astype(xk.dtype), (c, pos, 0, 0))
        xv = jax.lax.dynamic_update_slice(xv, v[None, None].astype(xv.dtype), (c, pos, 0, 0))
    fresh = st["open_start"] == pos
    pool, cnt = _pool_update(cfg.downsampling_by_pooling, st["pool"], st["pool_cnt"],
                             outs[xl[0]].astype(st["pool"].dtype), fresh)
    out.update(x_k=xk, x_v=xv, pool=pool, pool_cnt=cnt,
               open_eos=jnp.where(fresh, False, st["open_eos"]) | (tok == cfg.eos_id))
    return {**st, **out}, start


def _patch_phase_row(cfg: BLTConfig, params: dict, st: dict, completes) -> dict:
    """Close the open patch (bytes ``open_start..pos``) of one row: encoder cross-attention, one
    global step, new decoder cross K/V.  The caches are written unconditionally (a slot written for
    a row that does not complete is rewritten before anything attends it); the small bookkeeping
    entries only change where ``completes``."""
    pos, p_idx = st["pos"], st["n_patches"]
    g_in = encoder_patch_row(cfg, params, st["pool"], st["pool_cnt"], st["x_k"], st["x_v"],
                             st["open_start"], pos)
    g_out, g_upd = global_step_row(cfg, params, st, g_in, jnp.minimum(p_idx, st["g_doc"].shape[0] - 1),
                                   st["gdoc_now"])
    dk, dv = decoder_patch_kv(cfg, params, g_out)  # [Xd, k, H, hd]
    sel = lambda new, old: jnp.where(completes, new, old)
    return {**st, **g_upd,
            "dkv_k": sel(dk.astype(st["dkv_k"].dtype), st["dkv_k"]),
            "dkv_v": sel(dv.astype(st["dkv_v"].dtype), st["dkv_v"]),
            "n_patches": p_idx + completes.astype(jnp.int32),
            "gdoc_now": st["gdoc_now"] + (completes & st["open_eos"]).astype(jnp.int32),
            "open_eos": sel(False, st["open_eos"]),
            "open_start": sel(pos + 1, st["open_start"])}


def _decoder_phase_row(cfg: BLTConfig, params: dict, st: dict, active) -> dict:
    pos = st["pos"]
    slots = st["loc_pos"].shape[0]
    slot = pos % slots
    mask = ring_mask_row(st["loc_pos"], st["loc_doc"], pos, st["doc_last"], cfg.local_attention_window_len)
    logits, upd = decoder_step_row(cfg, params, st, st["h_last"], pos, slot, mask)
    return {**st, **upd, "logits": logits, "pos": pos + active.astype(jnp.int32)}


def step(params: dict, eparams: Optional[dict], cfg: BLTConfig, state: dict, tokens_bt: jax.Array,
         active_b: jax.Array) -> dict:
    """Incorporate byte ``tokens[b, pos_b]`` of every row; ``state["logits"]`` then predicts the next.

    Rows with ``active = False`` are finished: they are computed (vmap) but their position does not
    advance and they never trigger the global model.  The global model runs (for the whole batch)
    only when some active row completes a patch: once per patch for a single row."""
    st, completes = jax.vmap(lambda s, tk: _byte_phase_row(cfg, params, eparams, s, tk))(state, tokens_bt)
    completes = completes & active_b
    st = jax.lax.cond(jnp.any(completes),
                      lambda s: jax.vmap(lambda r, c: _patch_phase_row(cfg, params, r, c))(s, completes),
                      lambda s: s, st)
    return jax.vmap(lambda r, a: _decoder_phase_row(cfg, params, r, a))(st, active_b)


__all__ = ["DecodeSizes", "ring_slots", "check_supported", "block_kv", "stack_prefill", "block_step_row",
           "stack_step_row", "ring_from_prefill", "ring_positions", "ring_mask_row", "rule_start",
           "next_start", "entropy_prefill", "entropy_step_row", "encoder_step_row", "encoder_patch_row",
           "decoder_patch_kv", "global_step_row", "decoder_step_row", "prefill", "step"]
