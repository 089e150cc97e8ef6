"""Schedule, optimizer, gradient accumulation, cross-entropy / z-loss and bits-per-byte."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.optim import (
    NO_DECAY_NORMS_EMBEDDINGS,
    accumulate_gradients,
    bits_per_byte,
    cross_entropy_loss,
    make_optimizer,
    make_schedule,
    split_micro_batches,
    weight_decay_mask,
)
from bltjax.train_config import OptimConfig

LR = 1e-3


def _sched(kind, warmup=10, total=110, r=0.1):
    return make_schedule(OptimConfig(lr=LR, warmup_steps=warmup, schedule=kind, lr_min_ratio=r), total)


# ---------------------------------------------------------------------- schedule
def test_cosine_schedule_key_steps():
    f = _sched("cosine")
    expect = {
        0: 0.0, 5: 0.5 * LR, 10: LR,  # linear warm-up step/warmup, peak at the end of warm-up
        35: LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))),
        60: LR * 0.55,  # half way: r + (1 - r) / 2
        110: 0.1 * LR, 500: 0.1 * LR,  # floor lr * lr_min_ratio, held after total_steps
    }
    for step, lr in expect.items():
        np.testing.assert_allclose(float(f(step)), lr, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    np.testing.assert_allclose(float(jax.jit(f)(jnp.int32(35))), expect[35], rtol=1e-6)
    # monotone: up during warm-up, down afterwards
    lrs = np.array([float(f(s)) for s in range(111)])
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) <= 1e-12)


def test_linear_constant_and_no_warmup():
    lin = _sched("linear")
    np.testing.assert_allclose([float(lin(s)) for s in (5, 10, 35, 110)],
                               [0.5 * LR, LR, LR * (1 - 0.9 * 0.25), 0.1 * LR], rtol=1e-6)
    const = _sched("constant")
    np.testing.assert_allclose([float(const(s)) for s in (0, 5, 10, 109, 1000)],
                               [0.0, 0.5 * LR, LR, LR, LR], rtol=1e-6)
    cos0 = _sched("cosine", warmup=0, total=100, r=0.0)
    np.testing.assert_allclose([float(cos0(s)) for s in (0, 50, 100)], [LR, 0.5 * LR, 0.0], rtol=1e-6, atol=1e-12)


def test_schedule_rejects_bad_args():
    with pytest.raises(ValueError, match="warmup_steps"):
        _sched("cosine", warmup=200, total=100)
    with pytest.raises(ValueError, match="total_steps"):
        _sched("cosine", total=0)


# ---------------------------------------------------------------------- optimizer
def _run(opt, params, loss_fn, steps):
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_optimizer_minimises_quadratic():
    target = jnp.array([3.0, -2.0, 0.5, 1.0])
    loss_fn = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum((p["b"] + 1.0) ** 2)  # noqa: E731
    params = {"w": jnp.zeros(4), "b": jnp.zeros(2)}
    ocfg = OptimConfig(lr=0.1, warmup_steps=5, weight_decay=0.0, schedule="cosine", lr_min_ratio=0.1)
    out = _run(make_optimizer(ocfg, 300), params, loss_fn, 300)
    assert float(loss_fn(params)) > 10.0
    assert float(loss_fn(out)) < 1e-3
    np.testing.assert_allclose(out["w"], target, atol=0.03)


def test_weight_decay_all_params_or_masked():
    params = {"layer": {"w": jnp.ones((2, 2)), "attn_norm": jnp.ones(2)}, "tok_embeddings": jnp.ones((3, 2))}
    zero_loss = lambda p: 0.0 * sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(p))  # noqa: E731
    base = dict(lr=0.5, warmup_steps=0, schedule="constant", weight_decay=0.1)
    out = _run(make_optimizer(OptimConfig(**base), 10), params, zero_loss, 1)
    for leaf in jax.tree_util.tree_leaves(out):  # decay on every parameter (official behaviour)
        np.testing.assert_allclose(leaf, 1.0 - 0.5 * 0.1, rtol=1e-6)
    ocfg = OptimConfig(**base, weight_decay_exclude=NO_DECAY_NORMS_EMBEDDINGS)
    out = _run(make_optimizer(ocfg, 10), params, zero_loss, 1)
    np.testing.assert_allclose(out["layer"]["w"], 0.95, rtol=1e-6)
    np.testing.assert_allclose(out["layer"]["attn_norm"], 1.0)
    np.testing.assert_allclose(out["tok_embeddings"], 1.0)
    assert weight_decay_mask(params, ("norm",)) == {"layer": {"w": True, "attn_norm": False},
                                                    "tok_embeddings": True}


def test_global_norm_clip():
    # eps=1 makes Adam's first step scale-dependent: |g|=100 -> 100/101, clipped |g|=1 -> 1/2.
    params = {"w": jnp.zeros(())}
    loss_fn = lambda p: -100.0 * p["w"]  # noqa: E731
    base = dict(lr=1.0, warmup_steps=0, schedule="constant", weight_decay=0.0, eps=1.0)
    clipped = _run(make_optimizer(OptimConfig(**base, clip=1.0), 10), params, loss_fn, 1)
    free = _run(make_optimizer(OptimConfig(**base, clip=None), 10), params, loss_fn, 1)
    np.testing.assert_allclose(clipped["w"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(free["w"], 100 / 101, rtol=1e-5)


# ---------------------------------------------------------------------- loss
def _np_ce(logits, targets, mask):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return (ce * mask).sum(), mask.sum(), lse


def test_cross_entropy_matches_numpy_with_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 7))
    mask = rng.random((2, 7)) > 0.3
    loss, m = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    ce_sum, n, _ = _np_ce(logits, targets, mask)
    np.testing.assert_allclose(float(m["ce_sum"]), ce_sum, rtol=1e-5)
    assert float(m["n_tokens"]) == n
    np.testing.assert_allclose(float(loss), ce_sum / n, rtol=1e-5)
    assert float(m["z_loss"]) == 0.0
    # no mask = mean over every position
    loss_all, m_all = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets))
    ce_all, n_all, _ = _np_ce(logits, targets, np.ones((2, 7)))
    np.testing.assert_allclose(float(loss_all), ce_all / n_all, rtol=1e-5)
    assert float(m_all["n_tokens"]) == 14


def test_cross_entropy_fp32_from_bf16_and_nan_in_masked_positions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 5))
    mask = np.ones((3, 5), bool)
    mask[1, 2:] = False
    bad = logits.copy()
    bad[1, 3] = np.nan  # garbage at a masked position
    loss_fn = lambda x: cross_entropy_loss(x, jnp.asarray(targets), jnp.asarray(mask))[0]  # noqa: E731
    loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(bad))
    ref = loss_fn(jnp.asarray(logits))
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[1, 2:] == 0)
    lb, mb = cross_entropy_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets), jnp.asarray(mask))
    assert lb.dtype == jnp.float32 and mb["ce_sum"].dtype == jnp.float32
    ce_sum, n, _ = _np_ce(np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32)), targets, mask)
    np.testing.assert_allclose(float(lb), ce_sum / n, rtol=1e-5)


def test_z_loss():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 9)).astype(np.float32) + 2.0
    targets = rng.integers(0, 9, size=(2, 6))
    mask = rng.random((2, 6)) > 0.25
    loss, m = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), z_loss=1e-2)
    ce_sum, n, lse = _np_ce(logits, targets, mask)
    z = 1e-2 * (lse ** 2 * mask).sum() / n
    np.testing.assert_allclose(float(m["z_loss"]), z, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce_sum / n + z, rtol=1e-5)
    np.testing.assert_allclose(float(m["ce_sum"]), ce_sum, rtol=1e-5)  # ce_sum excludes z-loss


def test_loss_input_checks_and_empty_mask():
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        cross_entropy_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3)))
    loss, m = cross_entropy_loss(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), bool))
    assert float(loss) == 0.0 and float(m["n_tokens"]) == 0.0


def test_bits_per_byte():
    assert bits_per_byte(math.log(2.0) * 10, 10) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 8, 260)).astype(np.float32)
    targets = rng.integers(0, 260, size=(2, 8))
    _, m = cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets))
    ce_sum, n, _ = _np_ce(logits, targets, np.ones((2, 8)))
    np.testing.assert_allclose(float(bits_per_byte(m["ce_sum"], m["n_tokens"])), ce_sum / math.log(2) / n, rtol=1e-5)
    # uniform prediction over 256 byte values = 8 bits per byte
    _, mu = cross_entropy_loss(jnp.zeros((1, 4, 256)), jnp.arange(4)[None])
    assert float(bits_per_byte(mu["ce_sum"], mu["n_tokens"])) == pytest.approx(8.0, rel=1e-6)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


# ---------------------------------------------------------------------- accumulation
def test_split_micro_batches_is_strided():
    x = jnp.arange(8 * 3).reshape(8, 3)
    mb = split_micro_batches({"x": x}, 4)["x"]
    assert mb.shape == (4, 2, 3)
    np.testing.assert_array_equal(mb[1, :, 0], [3, 15])  # rows 1 and 5
    with pytest.raises(ValueError, match="divisible"):
        split_micro_batches({"x": x}, 3)


def test_accumulate_gradients_equals_full_batch():
    rng = np.random.default_rng(4)
    B, T, D, V = 8, 5, 4, 6
    batch = {"x": jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, V, size=(B, T))),
             "mask": jnp.asarray(rng.random((B, T)) > 0.4)}
    batch["mask"] = batch["mask"].at[2].set(False)  # one row fully masked: uneven token counts
    params = {"w": jnp.asarray(rng.normal(size=(D, V)), jnp.float32)}

    def loss_fn(p, b):
        return cross_entropy_loss(b["x"] @ p["w"], b["y"], b["mask"], z_loss=1e-3)

    (ref_loss, ref_m), ref_g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    for k in (1, 2, 4):
        loss, m, g = jax.jit(accumulate_gradients, static_argnums=(0, 3))(loss_fn, params, batch, k)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, err_msg=f"k={k}")
        np.testing.assert_allclose(g["w"], ref_g["w"], rtol=1e-4, atol=1e-6, err_msg=f"k={k}")
        np.testing.assert_allclose(float(m["ce_sum"]), float(ref_m["ce_sum"]), rtol=1e-5)
        assert float(m["n_tokens"]) == float(ref_m["n_tokens"])
        np.testing.assert_allclose(float(m["z_loss"]), float(ref_m["z_loss"]), rtol=1e-5)
        assert g["w"].dtype == jnp.float32
