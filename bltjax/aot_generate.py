"""``python -m bltjax.aot --mode generate``: compile the cached decoder (prefill + one decode step).

Serving weights are held in the compute dtype (``model.dtype`` after ``precision``; bf16 for the paper
and released configs), either replicated on every device (what ``bltjax.generate(..., mesh=...)``
does) or split by the rules table (``--param-sharding fsdp``).  Rows are split over the batch shards.
The memory figure is the decode step's arguments (weights, KV caches, byte buffer) plus the larger of
the two programs' temporaries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from bltjax import sharding
from bltjax.model import blt, decode
from bltjax.model import entropy_model as em


@dataclasses.dataclass
class _Memory:
    argument_size_in_bytes: int
    output_size_in_bytes: int
    alias_size_in_bytes: int
    temp_size_in_bytes: int
    generated_code_size_in_bytes: int


class GenerateProgram:
    """The decode step's executable, with memory covering the prefill's temporaries too."""

    def __init__(self, prefill, step) -> None:
        self.prefill, self.step = prefill, step

    def memory_analysis(self) -> _Memory:
        p, s = self.prefill.memory_analysis(), self.step.memory_analysis()
        return _Memory(s.argument_size_in_bytes, s.output_size_in_bytes, s.alias_size_in_bytes,
                       max(p.temp_size_in_bytes, s.temp_size_in_bytes),
                       p.generated_code_size_in_bytes + s.generated_code_size_in_bytes)

    def cost_analysis(self) -> Any:
        return self.step.cost_analysis()

    def as_text(self) -> str:
        return self.step.as_text()


def _serving_params(tree: Any, dtype: Any, mesh, mode: str) -> Any:
    rep = NamedSharding(mesh, PartitionSpec())
    shards = sharding.param_shardings(tree, mesh) if mode == "fsdp" else jax.tree.map(lambda _: rep, tree)
    cast = lambda a: jnp.dtype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, cast(a), sharding=s), tree, shards)


def compile_generate(cfg, mesh, args) -> tuple[GenerateProgram, dict, float]:
    """Compile prefill and one cached decode step of ``cfg``'s model for ``args.batch`` rows."""
    from bltjax.aot_compile import compile_lowered, device_bytes
    from bltjax.train_loop import UsageError

    model = cfg.resolved_model()
    try:
        decode.check_supported(model)
    except ValueError as e:
        raise UsageError(f"--mode generate: {e}") from e
    shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
    if args.batch % shards:
        raise UsageError(f"--batch {args.batch} is not divisible by the {shards} batch shards (data x fsdp) "
                               f"of mesh {dict(mesh.shape)}")
    sizes = decode.DecodeSizes(prompt_len=args.prompt_len, max_len=args.prompt_len + args.new_bytes)
    if sizes.max_len > model.max_encoder_seq_length:
        raise UsageError(f"--prompt-len + --new-bytes = {sizes.max_len} exceeds model.max_encoder_seq_length="
                               f"{model.max_encoder_seq_length}")
    params = _serving_params(jax.eval_shape(lambda: blt.init_params(model, jax.random.key(0))), model.dtype,
                             mesh, args.param_sharding)
    eparams = None
    if model.patcher.mode == "entropy":
        eshape = jax.eval_shape(lambda: em.init_params(model.entropy_model, jax.random.key(0)))
        eparams = _serving_params(eshape, model.patcher.entropy_dtype, mesh, args.param_sharding)
    b = args.batch
    row = lambda *shape, dt=jnp.int32: jax.ShapeDtypeStruct((b, *shape), dt,
                                                            sharding=sharding.batch_sharding(mesh, 1 + len(shape)))
    prefill = jax.jit(lambda p, e, t, n: decode.prefill(p, e, model, sizes, t, n))
    step = jax.jit(lambda p, e, st, t, a: decode.step(p, e, model, st, t, a), donate_argnums=(2,))
    with jax.set_mesh(mesh):
        pre, secs_p = compile_lowered(lambda: prefill.lower(params, eparams, row(sizes.prompt_len), row()))
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             jax.eval_shape(prefill, params, eparams, row(sizes.prompt_len), row()),
                             pre.output_shardings)
        stp, secs_s = compile_lowered(lambda: step.lower(params, eparams, state, row(sizes.max_len),
                                                             row(dt=jnp.bool_)))
    parts = {"parameters": device_bytes(params), "entropy model": device_bytes(eparams),
             "decode state (KV caches)": device_bytes(state)}
    return GenerateProgram(pre, stp), parts, secs_p + secs_s


__all__ = ["compile_generate", "GenerateProgram"]
