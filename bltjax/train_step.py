"""Pure training functions: on-device patching, losses, train/eval steps and their jitted, sharded forms.

The train state is a plain pytree ``{"step": int32[], "params": ..., "opt_state": ...}`` (fp32 master
weights; the compute dtype comes from ``TrainConfig.precision`` via ``resolved_model()``).

Patching happens inside the jitted step, on device, with static shapes (design §3, §8):

* every row of ``N`` bytes is cut into patches covering ``N + 1`` positions (the virtual next byte),
  whose **first patch has length 1** -- the decoder reads patch ``P(i+1) - 1`` for byte ``i``, so a
  longer first patch would let byte 0 see bytes 1.. of its own patch (a leak of the future);
* ``static`` mode is therefore trained with ``[1, ps, ps, ..., rest]`` (the data-loader convention the
  official packer produces, design §15.5), not the patcher's inference-style ``[ps, ps, ...]``;
  ``space``/``entropy``/``bpe``/``byte`` always start patches at positions 0 and 1 (first patch = 1);
* rows are padded to a static ``max_patches`` (``model.patcher.max_patches`` or :func:`max_patches_for`);
  rows needing more are truncated by the patcher (the last kept patch absorbs the rest) and counted in
  the ``overflow_frac`` metric;
* ``entropy`` mode runs the frozen entropy model under ``stop_gradient`` (or uses precomputed
  ``batch["entropies"]`` when the data pipeline provides them).

``train_entropy_model=True`` trains ``model.entropy_model`` as a plain byte LM (no patching).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bltjax import sharding
from bltjax.config import BLTConfig
from bltjax.model import blt, entropy_model
from bltjax.optim import accumulate_gradients, cross_entropy_loss, make_optimizer, make_schedule
from bltjax.train_config import TrainConfig

LN2 = math.log(2.0)
Batch = Mapping[str, jax.Array]


# ====================================================================== patching
def max_patches_for(model: BLTConfig, seq_len: int) -> int:
    """Static patch count per row: ``model.patcher.max_patches`` or a value derived from the mode.

    static: exactly ``1 + ceil(N / ps)`` (never overflows); byte: ``N + 1``; space / entropy / bpe:
    ``ceil(2 N / patch_size) + 2`` (room for patches half the target mean size), at most ``N + 1``
    and at most the global model's ``max_seqlen + 1``.  Raises ValueError when a mode whose count is
    fixed does not fit the global model.
    """
    pcfg, n = model.patcher, int(seq_len)
    cap = model.max_seqlen + 1
    if pcfg.mode in ("static", "byte"):
        p = n + 1 if pcfg.mode == "byte" else 1 + -(-n // int(pcfg.patch_size))
        if pcfg.max_patches is not None:
            if pcfg.max_patches < p:  # every row would be truncated: known before any compute
                raise ValueError(f"model.patcher.max_patches={pcfg.max_patches} is too small: "
                                 f"model.patcher.mode={pcfg.mode!r} needs {p} patches for seq_len={n}; "
                                 f"use --set model.patcher.max_patches={p} (or unset it)")
            return int(pcfg.max_patches)
        if p > cap:
            raise ValueError(f"model.patcher.mode={pcfg.mode!r} needs {p} patches for seq_len={n}, more than "
                             f"model.max_seqlen + 1 = {cap}; raise model.max_seqlen or lower seq_len")
        return p
    if pcfg.max_patches is not None:
        return int(pcfg.max_patches)
    return max(2, min(n + 1, -(-2 * n // max(1, int(pcfg.patch_size))) + 2, cap))


def patch_batch(cfg: TrainConfig, tokens_bn: jax.Array, entropy_params: Any = None,
                entropies_bn: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Patch lengths for a BLT batch plus patch statistics (sums, for token-weighted accumulation).

    Entropy mode uses ``entropies_bn`` when given (precomputed), else runs the frozen entropy model
    (``entropy_params``, ``model.entropy_model``) under ``stop_gradient``.
    """
    model = cfg.model
    tokens_bn = sharding.constrain(tokens_bn, ("act_batch", "act_len"))
    lengths, overflow = blt.patch_lengths(model, entropy_params, tokens_bn, entropies_bn=entropies_bn,
                                          max_patches=max_patches_for(model, cfg.seq_len))
    lengths = sharding.constrain(lengths, ("act_batch", "act_patches"))
    stats = {
        "n_patches_sum": jnp.sum(lengths > 0).astype(jnp.float32),
        "n_positions_sum": jnp.sum(lengths).astype(jnp.float32),
        "n_overflow_sum": jnp.sum(overflow).astype(jnp.float32),
        "n_rows_sum": jnp.asarray(tokens_bn.shape[0], jnp.float32),
    }
    return lengths, stats


# ====================================================================== losses
def logits_fn(cfg: TrainConfig) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``f(params, batch, entropy_params) -> (logits fp32 [B, N, 260], patch stats)`` for the run's model."""
    model = cfg.resolved_model()

    if cfg.train_entropy_model:
        ecfg = model.entropy_model

        def entropy_logits(params, batch, entropy_params=None):
            del entropy_params
            logits = entropy_model.forward(params, ecfg, batch["tokens"], dtype=model.dtype,
                                           attention_impl=model.attention_impl, remat=model.remat)
            return logits, {}

        return entropy_logits

    def blt_logits(params, batch, entropy_params=None):
        tokens = batch["tokens"]
        lengths, stats = patch_batch(cfg, tokens, entropy_params, batch.get("entropies"))
        return blt.forward(params, model, tokens, lengths), stats

    return blt_logits


def make_loss_fn(cfg: TrainConfig, entropy_params: Any = None) -> Callable[[Any, Batch], tuple[jax.Array, dict]]:
    """``loss_fn(params, batch) -> (loss, metrics)`` for ``accumulate_gradients``.

    metrics: ``ce_sum``, ``n_tokens``, ``z_loss`` (token-weighted) and the patch-statistic sums.
    """
    forward = logits_fn(cfg)

    def loss_fn(params, batch):
        # rows of every batch leaf (also of a strided micro-batch) split like the batch
        batch = {k: sharding.constrain(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in batch.items()}
        logits, stats = forward(params, batch, entropy_params)
        loss, metrics = cross_entropy_loss(logits, batch["targets"], batch["mask"], cfg.optim.z_loss)
        return loss, {**metrics, **stats}

    return loss_fn


def summarize(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Derived scalars: mean cross-entropy, bits per byte, mean patch size, overflow fraction."""
    n = jnp.maximum(metrics["n_tokens"], 1.0)
    out = {"ce": metrics["ce_sum"] / n, "bpb": metrics["ce_sum"] / (LN2 * n), "n_tokens": metrics["n_tokens"]}
    if "n_patches_sum" in metrics:
        out["avg_patch_size"] = metrics["n_positions_sum"] / jnp.maximum(metrics["n_patches_sum"], 1.0)
        out["overflow_frac"] = metrics["n_overflow_sum"] / jnp.maximum(metrics["n_rows_sum"], 1.0)
    return out


# ====================================================================== state and steps
def init_params(cfg: TrainConfig, key: jax.Array) -> Any:
    """Fresh fp32 parameters of the model being trained (BLT or entropy model)."""
    model = cfg.resolved_model()
    if cfg.train_entropy_model:
        return entropy_model.init_params(model.entropy_model, key)
    return blt.init_params(model, key)


def init_state(cfg: TrainConfig, optimizer: optax.GradientTransformation, key: jax.Array) -> dict[str, Any]:
    params = init_params(cfg, key)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def train_step(state: dict[str, Any], batch: Batch, entropy_params: Any, *, cfg: TrainConfig,
               optimizer: optax.GradientTransformation) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One optimizer update on the global batch (``optim.grad_accum_steps`` micro-batches inside).

    Returns the new state and scalar metrics: loss (incl. z-loss), ce, bpb, grad_norm, param_norm,
    lr (the rate used by this update), avg_patch_size, overflow_frac, n_tokens and ``nonfinite``
    (1.0 when the loss or gradient norm is NaN/inf; the host stops the run on it).
    """
    loss_fn = make_loss_fn(cfg, entropy_params)
    loss, metrics, grads = accumulate_gradients(loss_fn, state["params"], batch, cfg.optim.grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    out = {
        "loss": loss,
        **summarize(metrics),
        "z_loss": metrics["z_loss"],
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "lr": make_schedule(cfg.optim, cfg.steps)(state["step"]),
        "nonfinite": (~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))).astype(jnp.float32),
    }
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, out


def eval_step(params: Any, batch: Batch, entropy_params: Any, *, cfg: TrainConfig) -> dict[str, jax.Array]:
    """Sums over one validation batch: ``ce_sum`` (nats), ``n_tokens`` (unmasked targets) and, for a
    BLT, the patch-statistic sums of ``patch_batch``."""
    logits, stats = logits_fn(cfg)(params, batch, entropy_params)
    _, metrics = cross_entropy_loss(logits, batch["targets"], batch["mask"])
    return {"ce_sum": metrics["ce_sum"], "n_tokens": metrics["n_tokens"], **stats}


# ====================================================================== shardings and jit
def state_shardings(abstract_state: Mapping[str, Any], mesh: Mesh,
                    optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """NamedShardings for the state: params by the logical-axis rules, optimizer moments like their
    parameters (``optax.tree_map_params``), counters and other scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params_sh = sharding.param_shardings(abstract_state["params"], mesh)
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state["opt_state"], params_sh,
                                   transform_non_params=lambda _: replicated,
                                   is_leaf=lambda x: isinstance(x, NamedSharding))
    return {"step": replicated, "params": params_sh, "opt_state": opt_sh}


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree carrying ``shardings`` (a checkpoint restore target)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted entry points of one run, bound to its mesh and shardings."""

    init: Callable[[jax.Array], dict[str, Any]]  # key -> sharded state
    train: Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]  # (state, batch, entropy_params)
    eval: Callable[..., dict[str, jax.Array]]  # (params, batch, entropy_params)
    abstract_state: dict[str, Any]  # ShapeDtypeStructs with shardings (restore target)
    shardings: dict[str, Any]
    optimizer: optax.GradientTransformation


def make_steps(cfg: TrainConfig, mesh: Mesh, entropy_params_abstract: Any = None) -> Steps:
    """Jit init / train / eval with explicit in/out shardings; the train step donates the state."""
    optimizer = make_optimizer(cfg.optim, cfg.steps)
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer, jax.random.key(0)))  # traced: no device needed
    shardings = state_shardings(abstract, mesh, optimizer)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sh = sharding.batch_sharding(mesh, 1)  # prefix: rows over ("data", "fsdp") for every leaf
    ent_sh = None
    if entropy_params_abstract is not None:
        ent_sh = sharding.param_shardings(entropy_params_abstract, mesh)
    init = jax.jit(lambda key: init_state(cfg, optimizer, key), out_shardings=shardings)
    train = jax.jit(lambda s, b, e: train_step(s, b, e, cfg=cfg, optimizer=optimizer),
                    in_shardings=(shardings, batch_sh, ent_sh), out_shardings=(shardings, replicated),
                    donate_argnums=(0,))
    evaluate = jax.jit(lambda p, b, e: eval_step(p, b, e, cfg=cfg),
                       in_shardings=(shardings["params"], batch_sh, ent_sh), out_shardings=replicated)
    return Steps(init=init, train=train, eval=evaluate, abstract_state=with_shardings(abstract, shardings),
                 shardings=shardings, optimizer=optimizer)


__all__ = [
    "max_patches_for", "patch_batch", "logits_fn",
    "make_loss_fn", "summarize", "init_params", "init_state", "train_step", "eval_step", "state_shardings",
    "with_shardings", "Steps", "make_steps",
]
