"""Incremental (KV-cached) BLT: prefill the prompts, then add one byte per row per step.

The naive generator re-patches and re-runs the whole prefix for every byte (spec §13).  Everything in
BLT is causal, so the same logits come out of a byte-by-byte pipeline with caches:

* **entropy model**: a ring (sliding-window) KV cache; ``H_r`` comes out of one single-token step.
* **incremental patching**: whether position ``j`` starts a patch depends only on what precedes it
  (``H_{j-1}``, ``H_{j-2}``, ``x_{j-1}``, ``x_{j-2}``, the latest start), so ``start(r+1)`` is decided as
  soon as byte ``r`` is in.  That is the inference convention of the official patcher
  (``include_next_token=True``: ``r+1`` is the *virtual* next byte).
* **local encoder**: ring KV cache per layer; byte states never depend on patching.  Every byte keeps
  its cross-attention keys/values and the pooling of the *open* patch is a running max (min / sum),
  so when the patch closes, its encoder cross-attention is computed once from cached states (the
  pooled queries change with every byte added, so nothing is computed before the patch is complete).
* **global transformer**: runs once per *completed* patch, with a KV cache.
* **local decoder**: byte ``r`` reads patch ``dpid(r) = P(r+1) - 1`` (spec §8): if ``start(r+1)`` the
  patch byte ``r`` just closed, otherwise the previous one -- in both cases the *last completed
  patch*, so only that patch's cross-attention keys/values are kept.  Ring KV cache per layer.

**Layout.**  Prompts are *right-aligned* in a byte buffer of ``T`` columns (row ``b`` has ``pad_b``
leading BOE=0 columns, which is exactly the hash n-gram left padding), so every row writes the same
column ``n`` at every step: all cache writes are ``dynamic_update_slice`` at one shared index (in
place, no scatter, no copy).  Positions stay exact per row: byte at column ``t`` of row ``b`` has
position ``r = t - pad_b`` (RoPE, windows, documents and patching all use ``r``).  The global K/V of
a patch is stored at the column of the patch's last byte (``g_pid`` says which columns hold a patch).
Caches are tuples with one array per layer, head-major (``[K, C, hd]`` per row): a step neither slices
nor transposes a cache.  Functions named ``*_row`` work on one row (no batch axis), only *read*
caches, and are ``vmap``-ed over the batch; :func:`step` does the writes.

State (a dict pytree; ``T`` byte columns, ``C`` local ring slots, ``Ce`` entropy ring slots):

=================  ================================  =============================================
key                shape                             meaning
=================  ================================  =============================================
n                  [] int32                          next column to incorporate (shared)
pad                [B]                               leading padding columns of each row
logits             [B, V] f32                        logits of the byte at column ``n - 1``
ent_k / ent_v      Le x [B, Ke, Ce, hde]             entropy-model ring KV cache (slot = col % Ce)
ent_pos / ent_ctx  [B, Ce]                           position / context id held by a slot (-1: none)
ent_ctx_last, h1   [B], [B] f32                      context id and ``H`` of the last byte (h2: the one before)
loc_pos / loc_doc  [B, C]                            position / document of each local ring slot
doc_last           [B]                               local document of the last byte
enc_k / enc_v      Lenc x [B, K, C, hd]              local-encoder ring KV cache (slot = col % C)
dec_k / dec_v      Ldec x [B, K, C, hd]              local-decoder ring KV cache
x_k / x_v          Xc x [B, H, T, hd]                encoder cross-attention K/V of every byte
pool / pool_cnt    [B, dE] / [B]                     running pool of the open patch
h_last             [B, dE]                           encoder state of the last byte (decoder input)
open_start         [B]                               first position of the open patch
orig_start         [B]                               latest start before max_patch_length splits
open_eos           [B] bool                          open patch contains EOS (global doc mask)
n_patches          [B]                               completed patches
gdoc_now           [B]                               global document of the next patch
g_k / g_v          Lg x [B, Kg, T, hdg]              global KV cache, at the column of a patch's last byte
g_pid / g_doc      [B, T]                            patch index (-1: none) / global document per column
dkv_k / dkv_v      Xd x [B, H, k, hd]                decoder cross K/V of the last completed patch
=================  ================================  =============================================

Step functions accept stacked layer weights or the per-layer form of :func:`split_params` (the
decode loop splits once per call so that no step slices weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax import patcher as patcher_lib
from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.model import entropy_model as em
from bltjax.model import global_model, local_decoder, local_encoder
from bltjax.model.attention import _NEG
from bltjax.model.cross_attention import cross_attend
from bltjax.model.layers import apply_rope, dtype_of, linear, rms_norm, rope_tables, swiglu
from bltjax.model.transformer import StackSpec, layer
from bltjax.model.transformer import block_with_kv as transformer_block_with_kv

NEWLINE_ID = em.NEWLINE_ID


# ============================================================================ sizes and support


@dataclasses.dataclass(frozen=True)
class DecodeSizes:
    """Static buffer sizes of one compiled generation program.

    ``prompt_len``: prefill width (prompts are right-aligned in it; a power-of-two bucket);
    ``max_len``: byte buffer columns (prompt bucket + room for the new bytes).
    """

    prompt_len: int
    max_len: int

    def __post_init__(self) -> None:
        if not 1 <= self.prompt_len <= self.max_len:
            raise ValueError(f"need 1 <= prompt_len <= max_len, got {self.prompt_len}, {self.max_len}")


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


block_kv = transformer_block_with_kv  # the training block, also returning its keys/values


def stack_prefill(stack, x_btd: jax.Array, spec: StackSpec, rope, doc_bt) -> tuple:
    """All layers over a whole sequence; returns (x, per-layer K [B, T, K, hd] tuple, V tuple)."""
    ks, vs = [], []
    for p in _layers(stack):
        x_btd, k, v = block_kv(p, x_btd, spec, rope, doc_bt)
        ks.append(k)
        vs.append(v)
    return x_btd, tuple(ks), tuple(vs)


def _rope1(pos: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
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


def _layers(stack) -> tuple[dict, ...]:
    """Per-layer weights from a stacked dict or an already split tuple."""
    return tuple(stack) if isinstance(stack, (tuple, list)) else unstack(stack)


def stack_step_row(layers, x_d: jax.Array, ks: Sequence[jax.Array], vs: Sequence[jax.Array], rope, mask_c,
                   spec: StackSpec) -> tuple[jax.Array, tuple, tuple]:
    """All layers of a stack for one token of one row: (x, new keys per layer, new values per layer)."""
    nk, nv = [], []
    for p, k_c, v_c in zip(_layers(layers), ks, vs):
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


def split_params(params: dict, eparams: Optional[dict]) -> tuple[dict, Optional[dict]]:
    """Per-layer views of every stacked ``layers`` / ``cross`` entry, as the decode step wants them.

    Done once per generation call (before the loop), so a step never slices weights."""
    out = dict(params)
    out["encoder"] = dict(params["encoder"], layers=unstack(params["encoder"]["layers"]),
                          cross=unstack(params["encoder"]["cross"]))
    out["global"] = dict(params["global"], layers=unstack(params["global"]["layers"]))
    out["decoder"] = dict(params["decoder"], layers=unstack(params["decoder"]["layers"]),
                          cross=unstack(params["decoder"]["cross"]))
    if eparams is not None:
        eparams = dict(eparams, layers=unstack(eparams["layers"]))
    return out, eparams


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


# ============================================================================ incremental patching


def next_start(pcfg: PatcherConfig, j, orig_start, h_prev, h_prev2, tok_prev, tok_prev2):
    """(``start(j)``, updated latest rule start) including ``max_patch_length`` splitting: a patch
    that grew to ``m`` positions since the latest rule start is cut (full chunks first, spec §3.2)."""
    rs = patcher_lib.model_rule_start(pcfg, j, h_prev, h_prev2, tok_prev, tok_prev2)
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
    """RoPE position in the entropy model: restarts at every ``entropy_chunk_len`` chunk."""
    c = cfg.patcher.entropy_chunk_len
    return pos % c if c else pos


def entropy_prefill(cfg: BLTConfig, eparams: dict, tokens_bt: jax.Array) -> tuple:
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
    x, ks, vs = stack_prefill(p["layers"], x, spec, rope, ctx)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    ent = em.entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return ent, ks, vs, ctx


def entropy_step_row(cfg: BLTConfig, eparams: dict, st: dict, tok, tok_prev, r) -> tuple[jax.Array, dict]:
    """One entropy-model token (position ``r``) of one row: ``H_r`` (f32), the context id and the new
    keys/values per layer (written by :func:`step`)."""
    ecfg, spec, p, edt = _entropy_setup(cfg, eparams)
    chunk = cfg.patcher.entropy_chunk_len
    event = (r > 0) & _entropy_boundary(cfg, tok_prev)
    if chunk:
        event = event | ((r > 0) & (r % chunk == 0))
    ctx = st["ent_ctx_last"] + event.astype(jnp.int32)
    mask = ring_mask_row(st["ent_pos"], st["ent_ctx"], r, ctx, spec.window)  # own slot: stale or empty
    rope = _rope1(_entropy_rope_pos(cfg, r), spec.head_dim, spec.rope_theta)
    x = p["tok_embeddings"].astype(edt)[tok]
    x, k, v = stack_step_row(p["layers"], x, st["ent_k"], st["ent_v"], rope, mask, spec)
    x = rms_norm(x, p["norm"], ecfg.norm_eps)
    logits = linear(x, p["output"]).astype(jnp.float32)
    h = em.entropies_from_logits(logits.astype(edt), in_logits_dtype=True)
    return h, dict(ent_ctx_last=ctx, ent_k_new=k, ent_v_new=v)


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


def encoder_step_row(cfg: BLTConfig, params: dict, st: dict, tokens_t: jax.Array, n, r,
                     mask_c) -> tuple[jax.Array, list[jax.Array], tuple, tuple]:
    """Local encoder for the byte at column ``n`` (position ``r``) of one row: (final state, state
    after every layer, new keys, new values per layer).  Hash n-gram ids need only the last
    ``max(n)`` columns (padding columns are BOE 0: the official left padding)."""
    enc = params["encoder"]
    spec = local_encoder.encoder_spec(cfg)
    w = max(cfg.encoder_hash_byte_group_size) if cfg.n_hash_tables else 1
    idx = n - (w - 1) + jnp.arange(w)
    window = jnp.where(idx >= 0, tokens_t[jnp.clip(idx, 0, tokens_t.shape[0] - 1)], 0)
    h = local_encoder.embed(params, cfg, window[None])[0, -1]
    rope = _rope1(r, spec.head_dim, spec.rope_theta)
    outs, nk, nv = [], [], []
    for p, k_c, v_c in zip(_layers(enc["layers"]), st["enc_k"], st["enc_v"]):
        h, k, v = block_step_row(p, h, k_c, v_c, rope, mask_c, spec)
        outs.append(h)
        nk.append(k)
        nv.append(v)
    return h, outs, tuple(nk), tuple(nv)


def encoder_patch_row(cfg: BLTConfig, params: dict, pool, cnt, x_k: Sequence[jax.Array],
                      x_v: Sequence[jax.Array], byte_mask_t: jax.Array) -> jax.Array:
    """Encoder cross-attention of one patch of one row: its k query slots (initialised from the pooled
    byte states) attend the bytes selected by ``byte_mask_t`` (bool [T]) through the cached per-byte
    cross K/V (per cross layer ``[H, T, hd]``); ``q = 2q + Wo·attn`` per cross layer.  Returns the
    patch vector ``[k*dE]`` (the global model's input before the optional projection)."""
    enc = params["encoder"]
    k, d, nh = cfg.cross_attn_k, cfg.dim_local_encoder, cfg.cross_attn_nheads
    pooled = _pooled(cfg.downsampling_by_pooling, pool, cnt)
    q = (pooled @ enc["patch_projection"].astype(pooled.dtype)).reshape(k, d)
    hd = d // nh
    for c, pc in enumerate(_layers(enc["cross"])[: len(x_k)]):
        qn = rms_norm(q, pc["norm_q"], cfg.norm_eps)
        qh = linear(qn, pc["wq"]).reshape(k, nh, hd)
        s = jnp.einsum("rhd,htd->hrt", qh, x_k[c].astype(qh.dtype), preferred_element_type=jnp.float32)
        s = jnp.where(byte_mask_t[None, None, :], s * (hd ** -0.5), _NEG)
        pr = jax.nn.softmax(s, axis=-1)  # the patch always holds at least one byte
        a = jnp.einsum("hrt,htd->rhd", pr.astype(x_v[c].dtype), x_v[c])
        q = 2 * q + linear(a.reshape(k, d), pc["wo"])
    return q.reshape(k * d)


# ============================================================================ global + decoder pieces


def decoder_patch_kv(cfg: BLTConfig, params: dict, g_out_d: jax.Array) -> tuple[tuple, tuple]:
    """Decoder cross K/V of one patch (``g_out [dG]``) for every decoder cross layer: ``[H, k, hd]``."""
    dec = params["decoder"]
    kv = (g_out_d @ dec["patch_projection"].astype(g_out_d.dtype)).reshape(cfg.cross_attn_k, cfg.dim_local_decoder)
    ks, vs = [], []
    for pc in _layers(dec["cross"]):
        k, v = _cross_kv(pc, kv, cfg.cross_attn_nheads, cfg.norm_eps)  # [k, H, hd]
        ks.append(jnp.swapaxes(k, 0, 1))
        vs.append(jnp.swapaxes(v, 0, 1))
    return tuple(ks), tuple(vs)


def global_step_row(cfg: BLTConfig, params: dict, st: dict, g_in, p_idx, gdoc) -> tuple[jax.Array, tuple, tuple]:
    """Global transformer for completed patch ``p_idx`` of one row: (output [dG], new keys, new
    values per layer) against the cached earlier patches (columns with ``g_pid >= 0``)."""
    gp = params["global"]
    spec = global_model.global_spec(cfg)
    x = g_in
    if cfg.global_input_projection:
        x = x @ gp["input_projection"].astype(x.dtype)
    mask = st["g_pid"] >= 0
    if cfg.global_attn == "block_causal":
        mask = mask & (st["g_doc"] == gdoc)
    rope = _rope1(p_idx, spec.head_dim, spec.rope_theta)
    return stack_step_row(gp["layers"], x, st["g_k"], st["g_v"], rope, mask, spec)


def decoder_step_row(cfg: BLTConfig, params: dict, st: dict, h, r, mask_c) -> tuple[jax.Array, tuple, tuple]:
    """Local decoder for the byte at position ``r`` of one row: (logits [V] f32, new keys, new values
    per layer).  Cross-attention reads the last completed patch only (``dkv``): byte ``r`` attends
    patch ``dpid(r)`` and nothing else, i.e. a softmax over its k slots."""
    dec = params["decoder"]
    spec = local_decoder.decoder_spec(cfg)
    nh, d = cfg.cross_attn_nheads, cfg.dim_local_decoder
    rope = _rope1(r, spec.head_dim, spec.rope_theta)
    crosses = _layers(dec["cross"])
    all_slots = jnp.ones((cfg.cross_attn_k,), bool)
    y = h
    nk, nv = [], []
    for i, (p, k_c, v_c) in enumerate(zip(_layers(dec["layers"]), st["dec_k"], st["dec_v"])):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            pc = crosses[c]
            q = linear(rms_norm(y, pc["norm_q"], cfg.norm_eps), pc["wq"]).reshape(nh, d // nh)
            a = attend_one(q, st["dkv_k"][c].astype(q.dtype), st["dkv_v"][c].astype(q.dtype), all_slots)
            y = 2 * y + linear(a.reshape(d), pc["wo"])
        y, k, v = block_step_row(p, y, k_c, v_c, rope, mask_c, spec)
        nk.append(k)
        nv.append(v)
    y = rms_norm(y, dec["norm"], cfg.norm_eps)
    return linear(y, dec["output"]).astype(jnp.float32), tuple(nk), tuple(nv)


# ============================================================================ prefill


def _left_align(tokens_bt: jax.Array, pad_b: jax.Array) -> jax.Array:
    """Right-aligned rows -> left-aligned rows (BOE 0 after each row's end)."""
    t = tokens_bt.shape[1]
    idx = jnp.arange(t)[None, :] + pad_b[:, None]
    return jnp.where(idx < t, jnp.take_along_axis(tokens_bt, jnp.minimum(idx, t - 1), axis=1), 0)


@dataclasses.dataclass(frozen=True)
class _Prompts:
    """Per-call values every prefill phase reads: the prompts, left-aligned, and their layout."""

    b: int
    t: int  # prompt columns
    max_len: int  # T: byte columns of the decode buffers
    rows: jax.Array  # [B] row indices
    length_b: jax.Array  # real tokens per row
    pad: jax.Array  # [B] leading padding columns (right-aligned rows)
    last: jax.Array  # [B] position of each row's last byte
    tok_l: jax.Array  # [B, t] left-aligned tokens
    pos_t: jax.Array  # [t] positions 0..t-1
    col_pos: jax.Array  # [B, t] position held by each right-aligned buffer column (< 0: padding)

    def right(self, x_btf: jax.Array) -> jax.Array:
        """Left-aligned ``[B, t, ...]`` -> right-aligned buffer columns (0 in the padding)."""
        shape = self.col_pos.shape + (1,) * (x_btf.ndim - 2)
        gathered = jnp.take_along_axis(x_btf, jnp.maximum(self.col_pos, 0).reshape(shape), axis=1)
        return jnp.where((self.col_pos >= 0).reshape(shape), gathered, 0)

    def pad_cols(self, x_bhtd: jax.Array) -> jax.Array:
        """``[B, H, t, hd]`` -> ``[B, H, T, hd]`` (zero columns for the bytes still to come)."""
        return jnp.pad(x_bhtd, [(0, 0), (0, 0), (0, self.max_len - self.t), (0, 0)])


def _prefill_patching(cfg: BLTConfig, eparams, sizes: DecodeSizes, pr: _Prompts, st: dict) -> dict:
    """Entropy-model caches and patch starts over positions ``0..t`` (position L = virtual next byte).
    Returns ``starts [B, t+1]``, ``cs`` (running start count: ``P(j) = cs[j] - 1``) and ``open_start``."""
    b, t, rows, length_b, last, pad = pr.b, pr.t, pr.rows, pr.length_b, pr.last, pr.pad
    pc = cfg.patcher
    if pc.mode == "entropy":
        ent, eks, evs, ectx = entropy_prefill(cfg, eparams, pr.tok_l)
        ce = ring_slots(cfg.entropy_model.sliding_window, sizes.max_len)
        ctx_ring, epos = ring_from_left(ectx, pad, t, ce)
        st.update(ent_k=tuple(kv_ring(k, pad, t, ce) for k in eks), ent_v=tuple(kv_ring(v, pad, t, ce) for v in evs),
                  ent_pos=epos, ent_ctx=ctx_ring, ent_ctx_last=ectx[rows, last])
    else:
        ent = jnp.zeros((b, t), jnp.float32)
        st.update(ent_k=(), ent_v=(), ent_pos=jnp.zeros((b, 1), jnp.int32), ent_ctx=jnp.zeros((b, 1), jnp.int32),
                  ent_ctx_last=jnp.zeros((b,), jnp.int32))
    st["h1"] = ent[rows, last]
    st["h2"] = jnp.where(last >= 1, ent[rows, jnp.maximum(last - 1, 0)], 0.0)
    rule = patcher_lib.model_start_mask(pc, pr.tok_l, ent if pc.mode == "entropy" else None,
                                        lengths_b=length_b)  # [B, t+1]
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
    return {"starts": starts, "cs": cs, "open_start": open_start, "n_patches": n_patches}


def _prefill_encoder(cfg: BLTConfig, params: dict, pr: _Prompts, pat: dict, st: dict) -> dict:
    """Local encoder: ring caches, per-byte cross K/V, running pool of the open patch.  Returns the
    byte states (``h``: last layer, ``outs``: after every layer) and the local document ids."""
    b, t, rows, last, pad, tok_l, pos_t = pr.b, pr.t, pr.rows, pr.last, pr.pad, pr.tok_l, pr.pos_t
    is_eos = (tok_l == cfg.eos_id).astype(jnp.int32)
    doc = jnp.cumsum(is_eos, axis=1) - is_eos if cfg.local_doc_mask else jnp.zeros((b, t), jnp.int32)
    doc_arg = doc if cfg.local_doc_mask else None
    espec = local_encoder.encoder_spec(cfg)
    rope = rope_tables(jnp.broadcast_to(pos_t[None], (b, t)), espec.head_dim, espec.rope_theta)
    h = local_encoder.embed(params, cfg, tok_l)
    eks, evs, outs = [], [], []
    for p in _layers(params["encoder"]["layers"]):
        h, k, v = block_kv(p, h, espec, rope, doc_arg)
        eks.append(k)
        evs.append(v)
        outs.append(h)
    cl = ring_slots(cfg.local_attention_window_len, pr.max_len)
    doc_ring, lpos = ring_from_left(doc, pad, t, cl)
    st.update(enc_k=tuple(kv_ring(k, pad, t, cl) for k in eks), enc_v=tuple(kv_ring(v, pad, t, cl) for v in evs),
              loc_pos=lpos, loc_doc=doc_ring, doc_last=doc[rows, last], h_last=h[rows, last])
    ecross = _layers(params["encoder"]["cross"])
    xks, xvs = [], []
    for c, li in enumerate(_cross_layers_encoder(cfg)):
        k, v = _cross_kv(ecross[c], outs[li], cfg.cross_attn_nheads, cfg.norm_eps)  # [B, t, H, hd]
        xks.append(pr.pad_cols(jnp.swapaxes(pr.right(k), 1, 2)))
        xvs.append(pr.pad_cols(jnp.swapaxes(pr.right(v), 1, 2)))
    st.update(x_k=tuple(xks), x_v=tuple(xvs))
    hs = outs[_cross_layers_encoder(cfg)[0]]
    open_start = pat["open_start"]
    in_open = (pos_t[None] >= open_start[:, None]) & (pos_t[None] < pr.length_b[:, None])
    mode = cfg.downsampling_by_pooling
    if mode == "max":
        pool = jnp.max(jnp.where(in_open[..., None], hs, -jnp.inf), axis=1)
    elif mode == "min":
        pool = jnp.min(jnp.where(in_open[..., None], hs, jnp.inf), axis=1)
    else:
        pool = jnp.sum(jnp.where(in_open[..., None], hs, 0), axis=1)
    st.update(pool=jnp.where(jnp.isfinite(pool), pool, 0).astype(dtype_of(cfg.dtype)),
              pool_cnt=jnp.sum(in_open, axis=1, dtype=jnp.int32),
              open_eos=jnp.any(in_open & (tok_l == cfg.eos_id), axis=1))
    return {"h": h, "outs": outs, "doc_arg": doc_arg}


def _prefill_global(cfg: BLTConfig, params: dict, pr: _Prompts, pat: dict, enc: dict, st: dict) -> jax.Array:
    """Completed patches -> encoder cross-attention -> global transformer (``t`` patch slots): the
    global KV cache at the column of each patch's last byte and the decoder cross K/V of the last
    completed patch.  Returns the global outputs ``[B, t, dG]``."""
    b, t, rows, pos_t = pr.b, pr.t, pr.rows, pr.pos_t
    cs, open_start, n_patches = pat["cs"], pat["open_start"], pat["n_patches"]
    outs = enc["outs"]
    xl = _cross_layers_encoder(cfg)
    ecross = _layers(params["encoder"]["cross"])
    hs = outs[xl[0]]
    pid = cs[:, :t] - 1
    pid_enc = jnp.where(pos_t[None] < open_start[:, None], pid, t)  # open patch / padding: dummy id t
    np1 = t + 1
    pooled = local_encoder.pool_patches(hs, pid_enc, np1, cfg.downsampling_by_pooling)
    q = (pooled @ params["encoder"]["patch_projection"].astype(hs.dtype)).reshape(b, np1 * cfg.cross_attn_k, -1)
    for c, li in enumerate(xl):  # cross layer c reads the byte states after encoder layer li
        q = cross_attend(ecross[c], q, outs[li], kind="encoder", ids_bn=pid_enc, n_patches=np1,
                         k=cfg.cross_attn_k, n_heads=cfg.cross_attn_nheads, eps=cfg.norm_eps)
    x = q[:, : t * cfg.cross_attn_k].reshape(b, t, cfg.patch_dim)
    gp = params["global"]
    if cfg.global_input_projection:
        x = x @ gp["input_projection"].astype(x.dtype)
    gtok = patcher_lib.global_patch_tokens(pr.tok_l, pid_enc, t, cfg.eos_id)
    gdoc = global_model.patch_doc_ids(gtok, cfg.eos_id)
    gspec = global_model.global_spec(cfg)
    grope = rope_tables(jnp.broadcast_to(pos_t[None], (b, t)), gspec.head_dim, gspec.rope_theta)
    g_out, gks, gvs = stack_prefill(gp["layers"], x, gspec, grope,
                                    gdoc if cfg.global_attn == "block_causal" else None)
    # patch p (complete) lives at the column of its last byte: position i with start(i+1), i < open_start
    ends = pat["starts"][:, 1:] & (pos_t[None] < open_start[:, None])  # [B, t] by position
    pid_at_col = pr.right(jnp.where(ends, pid, -1))
    pid_at_col = jnp.where(pr.col_pos >= 0, pid_at_col, -1)
    gidx = jnp.maximum(pid_at_col, 0)
    has = (pid_at_col >= 0)
    gcol = lambda kv: pr.pad_cols(jnp.swapaxes(jnp.where(has[..., None, None], jnp.take_along_axis(
        kv, gidx[..., None, None], axis=1), 0), 1, 2))
    tail = [(0, 0), (0, pr.max_len - t)]
    st.update(g_k=tuple(gcol(k) for k in gks), g_v=tuple(gcol(v) for v in gvs),
              g_pid=jnp.pad(pid_at_col, tail, constant_values=-1),
              g_doc=jnp.pad(jnp.where(has, jnp.take_along_axis(gdoc, gidx, axis=1), 0), tail))
    is_eos_patch = (gtok == cfg.eos_id) & (pos_t[None] < n_patches[:, None])
    st["gdoc_now"] = jnp.sum(is_eos_patch, axis=1, dtype=jnp.int32)
    last_patch = jnp.clip(n_patches - 1, 0, t - 1)
    dk, dv = jax.vmap(lambda g: decoder_patch_kv(cfg, params, g))(g_out[rows, last_patch])
    st.update(dkv_k=dk, dkv_v=dv)
    return g_out


def _prefill_decoder(cfg: BLTConfig, params: dict, pr: _Prompts, pat: dict, enc: dict, g_out: jax.Array,
                     st: dict) -> None:
    """Local decoder (``dpid(i) = P(i+1) - 1``): ring caches and the logits of each row's last byte."""
    b, t, pad = pr.b, pr.t, pr.pad
    dpid = jnp.clip(pat["cs"][:, 1:] - 2, 0, t - 1)
    dspec = local_decoder.decoder_spec(cfg)
    drope = rope_tables(jnp.broadcast_to(pr.pos_t[None], (b, t)), dspec.head_dim, dspec.rope_theta)
    kv = local_decoder.patch_kv(params, cfg, g_out)
    dec = params["decoder"]
    dcross = _layers(dec["cross"])
    y = enc["h"]
    dks, dvs = [], []
    for i, p in enumerate(_layers(dec["layers"])):
        if cfg.cross_attn_all_layers_decoder or i == 0:
            c = i if cfg.cross_attn_all_layers_decoder else 0
            y = cross_attend(dcross[c], y, kv, kind="decoder", ids_bn=dpid, n_patches=t,
                             k=cfg.cross_attn_k, n_heads=cfg.cross_attn_nheads, eps=cfg.norm_eps)
        y, k, v = block_kv(p, y, dspec, drope, enc["doc_arg"])
        dks.append(k)
        dvs.append(v)
    cl = ring_slots(cfg.local_attention_window_len, pr.max_len)
    st.update(dec_k=tuple(kv_ring(k, pad, t, cl) for k in dks), dec_v=tuple(kv_ring(v, pad, t, cl) for v in dvs))
    y_last = rms_norm(y[pr.rows, pr.last], dec["norm"], cfg.norm_eps)
    st["logits"] = linear(y_last, dec["output"]).astype(jnp.float32)


def prefill(params: dict, eparams: Optional[dict], cfg: BLTConfig, sizes: DecodeSizes,
            tokens_bt: jax.Array, length_b: jax.Array) -> dict:
    """Run the prompts in parallel and return the decode state (module docstring) as if every byte
    had been stepped in one by one.

    ``tokens [B, prompt_len]`` are right-aligned (``length_b >= 1`` real tokens at the end of each
    row, BOE 0 before).  The work is done on left-aligned copies with the ordinary full-sequence model
    pieces, then scattered into the right-aligned caches, in four phases: patching (entropy model and
    ``patcher.model_start_mask``, the rule ``patcher.model_rule_start`` that :func:`step` applies byte
    by byte), local encoder, global model over the completed patches, local decoder."""
    check_supported(cfg)
    b, t = tokens_bt.shape
    if t != sizes.prompt_len:
        raise ValueError(f"prefill tokens have {t} columns, sizes.prompt_len is {sizes.prompt_len}")
    length_b = length_b.astype(jnp.int32)
    pad = t - length_b
    pos_t = jnp.arange(t)
    pr = _Prompts(b=b, t=t, max_len=sizes.max_len, rows=jnp.arange(b), length_b=length_b, pad=pad,
                  last=length_b - 1, tok_l=_left_align(tokens_bt, pad), pos_t=pos_t,
                  col_pos=pos_t[None, :] - pad[:, None])
    st: dict = {"n": jnp.int32(t), "pad": pad}
    pat = _prefill_patching(cfg, eparams, sizes, pr, st)
    enc = _prefill_encoder(cfg, params, pr, pat, st)
    g_out = _prefill_global(cfg, params, pr, pat, enc, st)
    _prefill_decoder(cfg, params, pr, pat, enc, g_out, st)
    return st


# ============================================================================ one step

_PATCH_KEYS = ("pad", "n_patches", "open_start", "open_eos", "pool", "pool_cnt", "x_k", "x_v", "g_k", "g_v",
               "g_pid", "g_doc", "gdoc_now")


def _byte_phase_row(cfg: BLTConfig, params: dict, eparams, st: dict, tokens_t: jax.Array, n) -> dict:
    """Entropy model, incremental patch decision and local encoder for the byte at column ``n`` of
    one row.  Returns the row's new small entries, the cache rows to write (``*_new``), the local
    attention mask and ``start`` = whether position ``r + 1`` starts a patch (byte ``r`` closes the
    open patch)."""
    r = n - st["pad"]
    tok = tokens_t[n]
    tok_prev = tokens_t[n - 1]  # n >= prompt_len >= 1; a padding column is BOE 0 (only read if r > 0)
    out = {}
    if cfg.patcher.mode == "entropy":
        h_new, ent_out = entropy_step_row(cfg, eparams, st, tok, tok_prev, r)
        out.update(ent_out)
    else:
        h_new = jnp.zeros((), jnp.float32)
    start, orig = next_start(cfg.patcher, r + 1, st["orig_start"], h_new, st["h1"], tok, tok_prev)
    out.update(h1=h_new, h2=st["h1"], orig_start=orig, start=start)
    doc = st["doc_last"]
    if cfg.local_doc_mask:
        doc = doc + ((r > 0) & (tok_prev == cfg.eos_id)).astype(jnp.int32)
    mask = ring_mask_row(st["loc_pos"], st["loc_doc"], r, doc, cfg.local_attention_window_len)
    out.update(doc_last=doc, loc_mask=mask, r=r)
    h, outs, ek, ev = encoder_step_row(cfg, params, st, tokens_t, n, r, mask)
    out.update(h_last=h, enc_k_new=ek, enc_v_new=ev)
    xl = _cross_layers_encoder(cfg)
    ecross = _layers(params["encoder"]["cross"])
    xk, xv = [], []
    for c, li in enumerate(xl):
        k, v = _cross_kv(ecross[c], outs[li], cfg.cross_attn_nheads, cfg.norm_eps)  # [H, hd]
        xk.append(k)
        xv.append(v)
    fresh = st["open_start"] == r
    pool, cnt = _pool_update(cfg.downsampling_by_pooling, st["pool"], st["pool_cnt"],
                             outs[xl[0]].astype(st["pool"].dtype), fresh)
    out.update(x_k_new=tuple(xk), x_v_new=tuple(xv), pool=pool, pool_cnt=cnt,
               open_eos=jnp.where(fresh, False, st["open_eos"]) | (tok == cfg.eos_id))
    return out


def _patch_phase_row(cfg: BLTConfig, params: dict, st: dict, n) -> dict:
    """Close the open patch of one row (its bytes: columns ``pad + open_start .. n``): encoder
    cross-attention, one global step, the patch's decoder cross K/V.  ``st``: :data:`_PATCH_KEYS`."""
    cols = jnp.arange(st["x_k"][0].shape[1])
    byte_mask = (cols >= st["pad"] + st["open_start"]) & (cols <= n)
    g_in = encoder_patch_row(cfg, params, st["pool"], st["pool_cnt"], st["x_k"], st["x_v"], byte_mask)
    g_out, gk, gv = global_step_row(cfg, params, st, g_in, st["n_patches"], st["gdoc_now"])
    dk, dv = decoder_patch_kv(cfg, params, g_out)
    return dict(g_k_new=gk, g_v_new=gv, dkv_k=dk, dkv_v=dv)


def step(params: dict, eparams: Optional[dict], cfg: BLTConfig, state: dict, tokens_bt: jax.Array,
         active_b: jax.Array) -> dict:
    """Incorporate column ``n`` of every row (``tokens [B, T]``); ``state["logits"]`` then predicts
    the next byte.  Every row advances (finished rows compute garbage that is never used); rows with
    ``active = False`` never trigger the global model.  The global model runs, for the whole batch,
    only when some active row completes a patch: once per patch for a single row.  Per-row functions
    only read caches; the writes here are all at the shared column (in place)."""
    st = dict(state)
    n = st["n"]
    rows_of = lambda d: {k: v for k, v in d.items() if k != "n"}  # everything but the shared column
    o = jax.vmap(lambda s, tk: _byte_phase_row(cfg, params, eparams, s, tk, n))(rows_of(st), tokens_bt)
    if cfg.patcher.mode == "entropy":
        ecol = n % st["ent_pos"].shape[1]
        st.update(ent_k=tuple(write_col(c, ecol, x) for c, x in zip(st["ent_k"], o["ent_k_new"])),
                  ent_v=tuple(write_col(c, ecol, x) for c, x in zip(st["ent_v"], o["ent_v_new"])),
                  ent_pos=write_val(st["ent_pos"], ecol, o["r"]),
                  ent_ctx=write_val(st["ent_ctx"], ecol, o["ent_ctx_last"]),
                  ent_ctx_last=o["ent_ctx_last"])
    lcol = n % st["loc_pos"].shape[1]
    st.update(enc_k=tuple(write_col(c, lcol, x) for c, x in zip(st["enc_k"], o["enc_k_new"])),
              enc_v=tuple(write_col(c, lcol, x) for c, x in zip(st["enc_v"], o["enc_v_new"])),
              x_k=tuple(write_col(c, n, x) for c, x in zip(st["x_k"], o["x_k_new"])),
              x_v=tuple(write_col(c, n, x) for c, x in zip(st["x_v"], o["x_v_new"])),
              **{k: o[k] for k in ("h1", "h2", "orig_start", "doc_last", "h_last", "pool", "pool_cnt", "open_eos")})
    completes = o["start"] & active_b

    # close patches: computed under a cond (skipped when no row completes one), written unconditionally
    # at column n (a row that did not complete writes an unused column: g_pid = -1 there).
    sub = {k: st[k] for k in _PATCH_KEYS}
    shapes = jax.eval_shape(lambda s: jax.vmap(lambda r: _patch_phase_row(cfg, params, r, n))(s), sub)
    r = jax.lax.cond(jnp.any(completes),
                     lambda s: jax.vmap(lambda row: _patch_phase_row(cfg, params, row, n))(s),
                     lambda s: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), sub)
    sel = lambda new, old: jnp.where(completes.reshape((-1,) + (1,) * (old.ndim - 1)), new.astype(old.dtype), old)
    st.update(g_k=tuple(write_col(c, n, x) for c, x in zip(st["g_k"], r["g_k_new"])),
              g_v=tuple(write_col(c, n, x) for c, x in zip(st["g_v"], r["g_v_new"])),
              g_pid=write_val(st["g_pid"], n, jnp.where(completes, st["n_patches"], -1)),
              g_doc=write_val(st["g_doc"], n, st["gdoc_now"]),
              dkv_k=tuple(map(sel, r["dkv_k"], st["dkv_k"])), dkv_v=tuple(map(sel, r["dkv_v"], st["dkv_v"])),
              n_patches=st["n_patches"] + completes.astype(jnp.int32),
              gdoc_now=st["gdoc_now"] + (completes & st["open_eos"]).astype(jnp.int32),
              open_eos=jnp.where(completes, False, st["open_eos"]),
              open_start=jnp.where(completes, o["r"] + 1, st["open_start"]))

    logits, dk_new, dv_new = jax.vmap(lambda s, m, rr: decoder_step_row(cfg, params, s, s["h_last"], rr, m))(
        rows_of(st), o["loc_mask"], o["r"])
    st.update(dec_k=tuple(write_col(c, lcol, x) for c, x in zip(st["dec_k"], dk_new)),
              dec_v=tuple(write_col(c, lcol, x) for c, x in zip(st["dec_v"], dv_new)),
              loc_pos=write_val(st["loc_pos"], lcol, o["r"]), loc_doc=write_val(st["loc_doc"], lcol, o["doc_last"]),
              logits=logits, n=n + 1)
    return st


__all__ = ["DecodeSizes", "ring_slots", "check_supported", "block_kv", "stack_prefill", "attend_one",
           "block_step_row", "stack_step_row", "unstack", "split_params", "ring_columns", "ring_from_left",
           "kv_ring", "write_col", "write_val", "ring_mask_row", "next_start", "entropy_prefill",
           "entropy_step_row", "encoder_step_row", "encoder_patch_row", "decoder_patch_kv", "global_step_row",
           "decoder_step_row", "prefill", "step"]
