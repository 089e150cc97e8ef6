"""The jitted train step against an update built independently from ``jax.grad`` and optax.

The oracle shares only ``blt.forward`` with the code under test (the forward is pinned by the parity
fixtures): static patch lengths ``[1, ps, ps, ..., rest]`` are written out by hand, the masked
cross-entropy is a plain ``log_softmax`` gather, gradients come from ``jax.grad``, the update from
``optax.clip_by_global_norm`` + ``optax.adamw`` with a constant learning rate, and the norms from
``numpy``.  Two steps are compared (the second one uses the Adam moments of the first).

AdamW is nearly invariant to a constant gradient scale (``m / sqrt(v)``), so ``optim.eps`` is set
comparable to the gradient entries here: a wrong gradient scale then changes the parameters, not only
``grad_norm``.  One configuration leaves clipping inactive (clip far above the gradient norm), the
other makes it active (clip far below), and the test asserts which regime each one is in.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bltjax import sharding, train_step
from bltjax.config import tiny_blt_config
from bltjax.train_config import OptimConfig, TrainConfig

B, N, PS = 2, 24, 4
LR, EPS, WD = 3e-3, 1e-3, 0.01


def make_cfg(clip: float) -> TrainConfig:
    return TrainConfig(
        name="oracle", model=tiny_blt_config(), seq_len=N, global_batch_size=B, steps=10, log_every=1,
        eval_every=0, tensorboard=False,
        optim=OptimConfig(lr=LR, eps=EPS, weight_decay=WD, warmup_steps=0, schedule="constant", clip=clip),
        mesh=sharding.MeshConfig(ici_data=1, ici_fsdp=1, ici_tensor=1),
    ).validate()


def make_batch(seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    row = rng.integers(4, 260, size=(B, N + 1)).astype(np.int32)
    mask = np.ones((B, N), bool)
    mask[1, -5:] = False  # a partly masked row: the loss is a token-weighted mean, not a row mean
    return {"tokens": jnp.asarray(row[:, :-1]), "targets": jnp.asarray(row[:, 1:]), "mask": jnp.asarray(mask)}


def oracle_lengths(max_patches: int) -> np.ndarray:
    """Static training patches by hand: first patch 1 byte, then ``PS`` bytes, covering ``N + 1`` positions."""
    lengths = [1]
    while sum(lengths) < N + 1:
        lengths.append(min(PS, N + 1 - sum(lengths)))
    lengths += [0] * (max_patches - len(lengths))
    return np.tile(np.asarray(lengths, np.int32), (B, 1))


def oracle_loss(params, batch, model, lengths):
    from bltjax.model import blt

    logits = blt.forward(params, model, batch["tokens"], jnp.asarray(lengths)).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    m = batch["mask"].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m)


def tree_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


@pytest.fixture(scope="module")
def init_params():
    return jax.tree.map(np.asarray, train_step.init_params(make_cfg(1.0), jax.random.key(3)))


@pytest.fixture(scope="module")
def oracle_grad_fn():
    model = make_cfg(1.0).resolved_model()
    lengths = oracle_lengths(train_step.max_patches_for(model, N))
    return jax.jit(jax.value_and_grad(lambda p, b: oracle_loss(p, b, model, lengths)))


def test_loss_and_gradients_match_jax_grad_of_an_independent_loss(init_params, oracle_grad_fn):
    cfg = make_cfg(1.0)
    batch = make_batch(0)
    ref_loss, ref_grads = oracle_grad_fn(init_params, batch)
    loss, metrics, grads = jax.jit(lambda p, b: train_step.accumulate_gradients(
        train_step.make_loss_fn(cfg), p, b, 1))(init_params, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert float(metrics["n_tokens"]) == float(np.sum(np.asarray(batch["mask"])))
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-8)  # fp32 sums in another order
    assert tree_norm(ref_grads) > 1e-3  # a non-trivial gradient (all-zero grads would compare equal)


@pytest.mark.parametrize("clip, clipping_active", [(1e6, False), (1e-2, True)])
def test_two_train_steps_match_an_independent_optax_update(clip, clipping_active, init_params, oracle_grad_fn):
    cfg = make_cfg(clip)
    mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    steps = train_step.make_steps(cfg, mesh)
    state = steps.init(jax.random.key(3))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state["params"]), init_params)  # same start

    ref_opt = optax.chain(optax.clip_by_global_norm(clip),
                          optax.adamw(LR, b1=cfg.optim.b1, b2=cfg.optim.b2, eps=EPS, weight_decay=WD))
    ref_params = jax.tree.map(jnp.asarray, init_params)
    ref_opt_state = ref_opt.init(ref_params)
    for i, seed in enumerate((0, 1)):
        batch = make_batch(seed)
        ref_loss, ref_grads = oracle_grad_fn(ref_params, batch)
        ref_grad_norm = tree_norm(ref_grads)
        assert (ref_grad_norm > clip) == clipping_active, (ref_grad_norm, clip)
        updates, ref_opt_state = ref_opt.update(ref_grads, ref_opt_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)

        state, metrics = steps.train(state, batch, None)
        assert int(state["step"]) == i + 1
        for key in ("loss", "ce", "bpb", "grad_norm", "param_norm", "lr", "nonfinite", "avg_patch_size"):
            chex.assert_shape(metrics[key], ())
            chex.assert_type(metrics[key], jnp.float32)
        assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-6)
        assert float(metrics["grad_norm"]) == pytest.approx(ref_grad_norm, rel=1e-5)  # before clipping
        assert float(metrics["param_norm"]) == pytest.approx(tree_norm(ref_params), rel=1e-6)  # after update
        assert float(metrics["lr"]) == pytest.approx(LR, rel=1e-7)
        # Adam divides by sqrt(v) + eps with eps ~ |g|: parameters agree to float32 rounding of the update
        chex.assert_trees_all_close(state["params"], ref_params, rtol=1e-5, atol=1e-7)
    # the parameters moved by a good fraction of lr per step: a comparison blind to the update would
    # pass at zero steps
    moved = max(float(np.max(np.abs(np.asarray(a) - b)))
                for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(init_params)))
    assert moved > 0.2 * LR, moved


def test_constant_gradient_scale_changes_the_update_at_this_eps(init_params, oracle_grad_fn):
    """The premise of the test above: with eps ~ |g| a doubled gradient gives a different AdamW step."""
    params = jax.tree.map(jnp.asarray, init_params)
    _, grads = oracle_grad_fn(params, make_batch(0))
    opt = optax.adamw(LR, eps=EPS, weight_decay=WD)
    u1, _ = opt.update(grads, opt.init(params), params)
    u2, _ = opt.update(jax.tree.map(lambda g: 2 * g, grads), opt.init(params), params)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)))
    assert diff > 1e-2 * LR, diff
