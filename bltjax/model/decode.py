"""Incremental (KV-cached) BLT: prefill the prompts, then add one byte per row per step.

The naive generator re-patches and re-runs the whole prefix for every byte (design §13).  Everything in
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
* **local decoder**: byte ``r`` reads patch ``dpid(r) = P(r+1) - 1`` (design §8): if ``start(r+1)`` the
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

**Where the pieces live.**  This module is the driver (:func:`prefill`, :func:`step`, the state
layout); each component's one-token step sits beside its forward: ``entropy_model.prefill_cached`` /
``step_row``, ``local_encoder.step_row`` / ``patch_row``, ``global_model.step_row``,
``local_decoder.step_row`` / ``patch_kv_row``; ring caches and one-token blocks are in ``kv_cache``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax import patcher as patcher_lib
from bltjax.config import BLTConfig, PatcherConfig
from bltjax.model import entropy_model as em
from bltjax.model import global_model, local_decoder, local_encoder
from bltjax.model.cross_attention import cross_attend, cross_kv
from bltjax.model.kv_cache import (
    block_kv,
    kv_ring,
    layers_of,
    ring_from_left,
    ring_mask_row,
    ring_slots,
    stack_prefill,
    unstack,
    write_col,
    write_val,
)
from bltjax.model.layers import dtype_of, linear, rms_norm, rope_tables

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


# ============================================================================ incremental patching


def next_start(pcfg: PatcherConfig, j, orig_start, h_prev, h_prev2, tok_prev, tok_prev2):
    """(``start(j)``, updated latest rule start) including ``max_patch_length`` splitting: a patch
    that grew to ``m`` positions since the latest rule start is cut (full chunks first, design §3.2)."""
    rs = patcher_lib.model_rule_start(pcfg, j, h_prev, h_prev2, tok_prev, tok_prev2)
    orig = jnp.where(rs, j, orig_start)
    start = rs
    if pcfg.max_patch_length is not None:
        start = (j - orig) % int(pcfg.max_patch_length) == 0
    return start, orig


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
        ent, eks, evs, ectx = em.prefill_cached(cfg, eparams, pr.tok_l)
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
    for p in layers_of(params["encoder"]["layers"]):
        h, k, v = block_kv(p, h, espec, rope, doc_arg)
        eks.append(k)
        evs.append(v)
        outs.append(h)
    cl = ring_slots(cfg.local_attention_window_len, pr.max_len)
    doc_ring, lpos = ring_from_left(doc, pad, t, cl)
    st.update(enc_k=tuple(kv_ring(k, pad, t, cl) for k in eks), enc_v=tuple(kv_ring(v, pad, t, cl) for v in evs),
              loc_pos=lpos, loc_doc=doc_ring, doc_last=doc[rows, last], h_last=h[rows, last])
    ecross = layers_of(params["encoder"]["cross"])
    xks, xvs = [], []
    for c, li in enumerate(local_encoder.cross_layers(cfg)):
        k, v = cross_kv(ecross[c], outs[li], cfg.cross_attn_nheads, cfg.norm_eps)  # [B, t, H, hd]
        xks.append(pr.pad_cols(jnp.swapaxes(pr.right(k), 1, 2)))
        xvs.append(pr.pad_cols(jnp.swapaxes(pr.right(v), 1, 2)))
    st.update(x_k=tuple(xks), x_v=tuple(xvs))
    hs = outs[local_encoder.cross_layers(cfg)[0]]
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
    xl = local_encoder.cross_layers(cfg)
    ecross = layers_of(params["encoder"]["cross"])
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
    dk, dv = jax.vmap(lambda g: local_decoder.patch_kv_row(cfg, params, g))(g_out[rows, last_patch])
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
    dcross = layers_of(dec["cross"])
    y = enc["h"]
    dks, dvs = [], []
    for i, p in enumerate(layers_of(dec["layers"])):
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
        h_new, ent_out = em.step_row(cfg, eparams, st, tok, tok_prev, r)
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
    h, outs, ek, ev = local_encoder.step_row(cfg, params, st, tokens_t, n, r, mask)
    out.update(h_last=h, enc_k_new=ek, enc_v_new=ev)
    xl = local_encoder.cross_layers(cfg)
    ecross = layers_of(params["encoder"]["cross"])
    xk, xv = [], []
    for c, li in enumerate(xl):
        k, v = cross_kv(ecross[c], outs[li], cfg.cross_attn_nheads, cfg.norm_eps)  # [H, hd]
        xk.append(k)
        xv.append(v)
    fresh = st["open_start"] == r
    pool, cnt = local_encoder.pool_update(cfg.downsampling_by_pooling, st["pool"], st["pool_cnt"],
                             outs[xl[0]].astype(st["pool"].dtype), fresh)
    out.update(x_k_new=tuple(xk), x_v_new=tuple(xv), pool=pool, pool_cnt=cnt,
               open_eos=jnp.where(fresh, False, st["open_eos"]) | (tok == cfg.eos_id))
    return out


def _patch_phase_row(cfg: BLTConfig, params: dict, st: dict, n) -> dict:
    """Close the open patch of one row (its bytes: columns ``pad + open_start .. n``): encoder
    cross-attention, one global step, the patch's decoder cross K/V.  ``st``: :data:`_PATCH_KEYS`."""
    cols = jnp.arange(st["x_k"][0].shape[1])
    byte_mask = (cols >= st["pad"] + st["open_start"]) & (cols <= n)
    g_in = local_encoder.patch_row(cfg, params, st["pool"], st["pool_cnt"], st["x_k"], st["x_v"], byte_mask)
    g_out, gk, gv = global_model.step_row(cfg, params, st, g_in, st["n_patches"], st["gdoc_now"])
    dk, dv = local_decoder.patch_kv_row(cfg, params, g_out)
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

    logits, dk_new, dv_new = jax.vmap(lambda s, m, rr: local_decoder.step_row(cfg, params, s, s["h_last"], rr, m))(
        rows_of(st), o["loc_mask"], o["r"])
    st.update(dec_k=tuple(write_col(c, lcol, x) for c, x in zip(st["dec_k"], dk_new)),
              dec_v=tuple(write_col(c, lcol, x) for c, x in zip(st["dec_v"], dv_new)),
              loc_pos=write_val(st["loc_pos"], lcol, o["r"]), loc_doc=write_val(st["loc_doc"], lcol, o["doc_last"]),
              logits=logits, n=n + 1)
    return st


__all__ = ["DecodeSizes", "check_supported", "split_params", "next_start", "prefill", "step"]
