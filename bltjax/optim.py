"""Optimizer, learning-rate schedule, gradient accumulation and the byte-level loss (design §11, §12.3).

* ``make_schedule``: linear warm-up ``lr * step / warmup`` then cosine (or linear) decay to
  ``lr * lr_min_ratio`` at ``total_steps``, or constant; ``step`` counts optimizer updates from 0.
* ``make_optimizer``: ``clip_by_global_norm -> adamw(schedule)``; weight decay on every parameter
  (official code) unless ``OptimConfig.weight_decay_exclude`` patterns mask some out.
* Gradient accumulation happens **in the train step** with ``accumulate_gradients`` (a
  ``lax.scan`` over micro-batches), not with ``optax.MultiSteps``: one jitted call = one optimizer
  update on the whole global batch, so step counters, schedules and checkpoints all count updates,
  and micro-batches are weighted by their unmasked token counts (the result equals the loss on the
  full batch exactly, which averaging per-micro-batch means would not when masks differ).
* ``cross_entropy_loss`` (fp32, masked, optional z-loss) and ``bits_per_byte`` (paper Eq. 18).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from bltjax.train_config import OptimConfig

# Regular expressions for the common "no decay on norms and embeddings" choice.
NO_DECAY_NORMS_EMBEDDINGS: tuple[str, ...] = (r"norm", r"embed")


# ====================================================================== schedule
def make_schedule(ocfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a jit-able function of the optimizer step (0-based).

    ``step < warmup``: ``lr * step / warmup`` (0 at step 0, as in the official code).  Afterwards,
    with ``s = clip((step - warmup) / (total_steps - warmup), 0, 1)``:
    cosine ``lr * (r + (1 - r) * (1 + cos(pi s)) / 2)``, linear ``lr * (1 - (1 - r) s)``,
    constant ``lr``; ``r = lr_min_ratio``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(ocfg.warmup_steps)
    if warmup < 0 or (warmup >= total_steps and ocfg.schedule != "constant"):
        raise ValueError(f"warmup_steps ({warmup}) must be in [0, total_steps={total_steps})")
    if ocfg.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule {ocfg.schedule!r} (cosine, linear, constant)")
    lr, r, kind = float(ocfg.lr), float(ocfg.lr_min_ratio), ocfg.schedule
    decay_steps = max(total_steps - warmup, 1)

    def schedule(step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        s = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if kind == "cosine":
            factor = r + (1.0 - r) * 0.5 * (1.0 + jnp.cos(jnp.pi * s))
        elif kind == "linear":
            factor = 1.0 - (1.0 - r) * s
        else:
            factor = jnp.ones_like(s)
        if warmup > 0:
            factor = jnp.where(step < warmup, step / warmup, factor)
        return lr * factor

    return schedule


# ====================================================================== optimizer
def _path_name(path: Sequence[Any]) -> str:
    """'/'-joined readable key path ('local_encoder/layers/attn_norm')."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def weight_decay_mask(params: Any, exclude: Sequence[str]) -> Any:
    """Pytree of bools like ``params``: True = decay; False where a pattern ``re.search``-es the path."""
    compiled = [re.compile(p) for p in exclude]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(c.search(_path_name(path)) for c in compiled), params)


def make_optimizer(ocfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip)`` (if set) then AdamW with ``make_schedule``.

    Weight decay is decoupled (AdamW, scaled by the learning rate like torch) and applies to every
    parameter unless ``ocfg.weight_decay_exclude`` is non-empty.  Gradient accumulation is *not*
    part of this transformation: see ``accumulate_gradients``.
    """
    ocfg.validate()
    mask = None
    if ocfg.weight_decay_exclude:
        patterns = tuple(ocfg.weight_decay_exclude)
        mask = lambda params: weight_decay_mask(params, patterns)  # noqa: E731
    parts = []
    if ocfg.clip is not None:
        parts.append(optax.clip_by_global_norm(ocfg.clip))
    parts.append(optax.adamw(make_schedule(ocfg, total_steps), b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps,
                             weight_decay=ocfg.weight_decay, mask=mask))
    return optax.chain(*parts)


# ====================================================================== loss
def cross_entropy_loss(logits: jax.Array, targets: jax.Array, mask: Optional[jax.Array] = None,
                       z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked next-byte cross-entropy in fp32 (natural log), plus optional z-loss.

    logits ``[..., V]``, targets ``[...]`` (int), mask ``[...]`` (bool or float weights; None = all).
    ``loss = (sum(m * ce) + z_loss * sum(m * logsumexp^2)) / sum(m)`` (sum(m) = 0 -> divide by 1).
    Returns ``(loss, {"ce_sum", "n_tokens", "z_loss"})`` where ``z_loss`` is the z-loss
    contribution to ``loss``.  Masked positions never contribute, even if their logits are NaN.
    """
    if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} must be targets {targets.shape} + [vocab]")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be integers, got {targets.dtype}")
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"mask {mask.shape} must match targets {targets.shape}")
    weight = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    keep = weight != 0
    # Zero the logits of masked positions first so NaN/inf there cannot leak into values or grads.
    logits = jnp.where(keep[..., None], logits.astype(jnp.float32), 0.0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce_sum = jnp.sum(jnp.where(keep, (lse - target_logit) * weight, 0.0))
    n_tokens = jnp.sum(weight)
    denom = jnp.where(n_tokens > 0, n_tokens, 1.0)
    if z_loss:
        z_term = z_loss * jnp.sum(jnp.where(keep, jnp.square(lse) * weight, 0.0)) / denom
    else:
        z_term = jnp.zeros((), jnp.float32)
    loss = ce_sum / denom + z_term
    return loss, {"ce_sum": ce_sum, "n_tokens": n_tokens, "z_loss": z_term}


def bits_per_byte(ce_sum_nats: Any, n_bytes: Any) -> Any:
    """``BPB = sum CE (nats) / (ln 2 * n_bytes)`` (paper Eq. 18); works on floats and arrays."""
    if isinstance(n_bytes, (int, float)) and n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return ce_sum_nats / (math.log(2.0) * n_bytes)


# ====================================================================== gradient accumulation
def split_micro_batches(batch: Any, num_micro: int) -> Any:
    """``[B, ...]`` leaves -> ``[num_micro, B // num_micro, ...]``, micro-batch i = rows i, i+M, i+2M...

    Strided (not contiguous) selection keeps every micro-batch spread over all data-parallel
    devices when the batch axis is sharded contiguously.
    """
    def split(x: jax.Array) -> jax.Array:
        if x.ndim == 0 or x.shape[0] % num_micro:
            raise ValueError(f"batch leaf {x.shape} has a leading dim not divisible by {num_micro}")
        return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)

    return jax.tree_util.tree_map(split, batch)


def _is_sum_key(name: str) -> bool:
    return name == "n_tokens" or name.endswith("_sum")


def accumulate_gradients(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Mapping[str, jax.Array]]],
    params: Any,
    batch: Any,
    num_micro: int,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """Loss, metrics and fp32 gradients over ``num_micro`` micro-batches of ``batch``.

    ``loss_fn(params, micro_batch) -> (loss_mean, metrics)`` with ``metrics["n_tokens"]`` (e.g. from
    ``cross_entropy_loss``).  Micro-batch results are weighted by their token counts, so the loss and
    gradients equal those of the full batch.  Metrics named ``n_tokens`` or ``*_sum`` are summed,
    other scalars are token-weighted means.  ``num_micro == 1`` calls ``loss_fn`` once, no scan.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro < 1:
        raise ValueError(f"num_micro must be >= 1, got {num_micro}")
    if num_micro == 1:
        (loss, metrics), grads = grad_fn(params, batch)
        return loss, dict(metrics), jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)

    micro = split_micro_batches(batch, num_micro)

    def body(carry, mb):
        grad_acc, loss_acc, metric_acc = carry
        (loss, metrics), grads = grad_fn(params, mb)
        n = jnp.asarray(metrics["n_tokens"], jnp.float32)
        grad_acc = jax.tree_util.tree_map(lambda a, g: a + n * g.astype(jnp.float32), grad_acc, grads)
        metric_acc = {k: metric_acc[k] + (v if _is_sum_key(k) else n * v) for k, v in metrics.items()}
        return (grad_acc, loss_acc + n * loss, metric_acc), None

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda p, b: loss_fn(p, b)[1], params, first)
    if "n_tokens" not in metric_shapes:
        raise ValueError("loss_fn metrics must contain 'n_tokens' to weight micro-batches")
    metric_zeros = {k: jnp.zeros(s.shape, jnp.float32) for k, s in metric_shapes.items()}
    (grad_acc, loss_acc, metric_acc), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), metric_zeros), micro)
    total = metric_acc["n_tokens"]
    denom = jnp.where(total > 0, total, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grad_acc)
    metrics = {k: (v if _is_sum_key(k) else v / denom) for k, v in metric_acc.items()}
    return loss_acc / denom, metrics, grads


__all__ = [
    "NO_DECAY_NORMS_EMBEDDINGS", "make_schedule", "weight_decay_mask", "make_optimizer",
    "cross_entropy_loss", "bits_per_byte", "split_micro_batches", "accumulate_gradients",
]
