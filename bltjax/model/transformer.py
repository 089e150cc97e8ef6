"""The pre-norm Llama block (design §5) and stacks of it, stacked along a leading layer axis.

    h   = x + Wo · Attn(RoPE(Wq·n1), RoPE(Wk·n1), Wv·n1),   n1 = RMSNorm(x)
    out = h + W2 · (silu(W1·n2) ⊙ W3·n2),                 n2 = RMSNorm(h)

Stacks run with ``lax.scan`` (compile time and code size independent of depth) under an optional
remat policy, or as a Python loop (``scan=False``); ``run_layers`` also scans layers that interleave
another stacked layer (the local decoder's cross-attention before each block).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.model import attention as attn_lib
from bltjax.model.layers import BTD, apply_rope, linear, rms_norm, rope_tables, swiglu, trunc_normal
from bltjax.sharding import constrain

# Logical axes of the attention activations (the rules table in bltjax/sharding.py places them).
BTH = ("act_batch", "act_len", "act_heads")  # query heads x head_dim, flattened
BTK = ("act_batch", "act_len", "act_kv_heads")
BTNH = ("act_batch", "act_len", "act_heads", "act_head_dim")
BTKH = ("act_batch", "act_len", "act_kv_heads", "act_head_dim")


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """Static shape/behaviour of a block stack."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    norm_eps: float
    rope_theta: float
    window: Optional[int] = None
    attention_impl: str = "auto"
    remat: str = "none"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def init_stack(spec: StackSpec, key: jax.Array, dtype=jnp.float32) -> dict:
    """Official init (design §5.5): trunc-normal std dim^-1/2 (w2: ffn^-1/2), norms = 1."""
    L, d, f, hd = spec.n_layers, spec.dim, spec.ffn_dim, spec.head_dim
    ks = jax.random.split(key, 7)
    sd, sf = d ** -0.5, f ** -0.5
    return {
        "attention_norm": jnp.ones((L, d), dtype),
        "wq": trunc_normal(ks[0], (L, d, spec.n_heads * hd), sd, dtype),
        "wk": trunc_normal(ks[1], (L, d, spec.n_kv_heads * hd), sd, dtype),
        "wv": trunc_normal(ks[2], (L, d, spec.n_kv_heads * hd), sd, dtype),
        "wo": trunc_normal(ks[3], (L, spec.n_heads * hd, d), sd, dtype),
        "ffn_norm": jnp.ones((L, d), dtype),
        "w1": trunc_normal(ks[4], (L, d, f), sd, dtype),
        "w3": trunc_normal(ks[5], (L, d, f), sd, dtype),
        "w2": trunc_normal(ks[6], (L, f, d), sf, dtype),
    }


def layer(stack, i: int):
    """Parameters of layer i of a stacked tree (or tuple of trees)."""
    return jax.tree.map(lambda a: a[i], stack)


def block_with_kv(p: dict, x_btd: jax.Array, spec: StackSpec, rope: tuple[jax.Array, jax.Array],
                  doc_bt: Optional[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One transformer block (``p``: a single layer's weights); also returns its roped keys and values
    ``[B, T, K, hd]`` (what the cached decoder keeps)."""
    b, t, _ = x_btd.shape
    hd = spec.head_dim
    x_btd = constrain(x_btd, BTD)
    n1 = rms_norm(x_btd, p["attention_norm"], spec.norm_eps)
    q = constrain(linear(n1, p["wq"], BTH).reshape(b, t, spec.n_heads, hd), BTNH)
    k = constrain(linear(n1, p["wk"], BTK).reshape(b, t, spec.n_kv_heads, hd), BTKH)
    v = constrain(linear(n1, p["wv"], BTK).reshape(b, t, spec.n_kv_heads, hd), BTKH)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    a = attn_lib.self_attention(q, k, v, doc_bt=doc_bt, window=spec.window, impl=spec.attention_impl)
    a = constrain(constrain(a, BTNH).reshape(b, t, spec.n_heads * hd), BTH)
    h = x_btd + linear(a, p["wo"], BTD)
    n2 = rms_norm(h, p["ffn_norm"], spec.norm_eps)
    return constrain(h + swiglu(n2, p["w1"], p["w3"], p["w2"]), BTD), k, v


def block(p: dict, x_btd: jax.Array, spec: StackSpec, rope: tuple[jax.Array, jax.Array],
          doc_bt: Optional[jax.Array]) -> jax.Array:
    """One transformer block; ``p`` holds a single layer's weights."""
    return block_with_kv(p, x_btd, spec, rope, doc_bt)[0]


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"unknown remat policy {policy!r} (none, full, dots)")


def positions_rope(t: int, spec: StackSpec, batch: int) -> tuple[jax.Array, jax.Array]:
    """RoPE tables of positions 0..t-1, ``[1, t, head_dim/2]`` (broadcast over the ``batch`` rows: a
    table per row would be a batch-sized buffer the partitioner need not split)."""
    del batch
    return rope_tables(jnp.arange(t)[None], spec.head_dim, spec.rope_theta)


def apply_stack(stack: dict, x_btd: jax.Array, spec: StackSpec, doc_bt: Optional[jax.Array] = None,
                scan: bool = True) -> jax.Array:
    """Run all layers of ``stack`` (positions 0..T-1, never reset at documents: design §5.3)."""
    rope = positions_rope(x_btd.shape[1], spec, x_btd.shape[0])
    return run_layers(lambda x, p: block(p, x, spec, rope, doc_bt), x_btd, stack, spec, scan)


def run_layers(fn, x_btd: jax.Array, stacks, spec: StackSpec, scan: bool = True) -> jax.Array:
    """``x = fn(x, layer_i)`` for the ``spec.n_layers`` layers of the stacked tree(s) ``stacks``, under
    ``spec.remat``: one ``lax.scan`` (compile time and code size independent of depth), or a Python loop."""
    fn = _remat(fn, spec.remat)
    if not scan:
        for i in range(spec.n_layers):
            x_btd = fn(x_btd, layer(stacks, i))
        return x_btd
    x_btd, _ = jax.lax.scan(lambda x, p: (fn(x, p), None), x_btd, stacks)
    return x_btd


__all__ = ["StackSpec", "init_stack", "layer", "block", "block_with_kv", "apply_stack", "run_layers", "positions_rope"]
