"""Building blocks shared by every BLT part: RMSNorm, interleaved RoPE, SwiGLU, initialisers.

Pure functions over arrays.  Weights are stored ``[in, out]``; they are cast to the compute dtype at
use (fp32 master weights, bf16 compute when configured).  Norms, RoPE tables and softmax run in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp

from bltjax.sharding import constrain, constrain_rows


def dtype_of(name: str) -> jnp.dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def rms_norm(x_btd: jax.Array, w_d: jax.Array, eps: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * w, computed in fp32, returned in x's dtype."""
    x32 = x_btd.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * w_d.astype(jnp.float32)).astype(x_btd.dtype)


def linear(x: jax.Array, w_io: jax.Array, axes: Optional[Sequence[Optional[str]]] = None) -> jax.Array:
    """x @ w with the weight cast to x's dtype (the compute dtype).

    Leading dims are flattened into one so that forward and both gradients are plain 2-D matmuls
    (on CPU, XLA's gradient of a 3-D einsum is ~2x slower than the same work as 2-D dots).
    ``axes`` are the logical axes of the result (e.g. ``("act_batch", "act_len", "act_mlp")``): the
    merged rows are then kept split like the batch (the merge must not hand XLA a dimension it may
    gather, e.g. to form a weight gradient under FSDP) and the result is constrained to ``axes``.
    """
    x2 = x.reshape(-1, x.shape[-1])
    if axes is not None and x.ndim > 2:
        x2 = constrain_rows(x2, axes[0], x.shape[0])
    y = (x2 @ w_io.astype(x.dtype)).reshape(*x.shape[:-1], w_io.shape[-1])
    return y if axes is None else constrain(y, axes)


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim/2] for the interleaved-pair RoPE (design §5.3), fp32."""
    k = jnp.arange(0, head_dim, 2, dtype=jnp.float32)[: head_dim // 2]
    freqs_h = 1.0 / (theta ** (k / head_dim))
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * freqs_h
    return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotate pairs (x[2k], x[2k+1]) by the angle of frequency k (original Llama / complex form).

    Written as ``x * cos + swap(x) * sin`` with ``swap(x)[2k], swap(x)[2k+1] = -x[2k+1], x[2k]`` (a
    reverse within each pair): one elementwise pass, forward and backward, instead of a stack.
    """
    x = x_btnh.astype(jnp.float32)
    cos = jnp.repeat(cos_bth, 2, axis=-1)[:, :, None, :]
    sin = jnp.repeat(sin_bth, 2, axis=-1)[:, :, None, :]
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    swapped = (pairs[..., ::-1] * jnp.array([-1.0, 1.0], jnp.float32)).reshape(x.shape)
    return (x * cos + swapped * sin).astype(x_btnh.dtype)


BTD = ("act_batch", "act_len", "act_embed")  # logical axes of a [B, T, d] activation
BTF = ("act_batch", "act_len", "act_mlp")  # of a SwiGLU hidden [B, T, ffn]
BTV = ("act_batch", "act_len", "act_vocab")  # of logits [B, T, 260]


def swiglu(x_btd: jax.Array, w1_df: jax.Array, w3_df: jax.Array, w2_fd: jax.Array) -> jax.Array:
    hidden = jax.nn.silu(linear(x_btd, w1_df, BTF)) * linear(x_btd, w3_df, BTF)
    return linear(hidden, w2_fd, BTD)


def trunc_normal(key: jax.Array, shape: tuple[int, ...], std: float, dtype=jnp.float32) -> jax.Array:
    """Truncated normal at +-3 sigma (the official init)."""
    return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)
