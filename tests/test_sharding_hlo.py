"""Where the compiled train step keeps its activations, read from XLA's partitioned program.

Numerical tests (1 vs 8 devices give equal results) cannot see an activation that the partitioner
all-gathers over the batch: the results stay equal, only memory and collectives grow.  Here the real
train step (``make_steps(...).train``: in-step entropy patching with a frozen entropy model, forward,
loss, gradients, AdamW update) is compiled for 8 fake CPU devices on data, fsdp, tensor and mixed
meshes, and ``compiled.as_text()`` -- whose shapes are *per device* -- is searched for buffers
holding more batch rows than a device owns.  ``PER_DEVICE = 7`` rows per batch shard makes such
buffers recognisable: no model dimension has a factor 7.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from bltjax import sharding
from bltjax.config import PatcherConfig, TransformerConfig
from bltjax.configs.default import get_config
from bltjax.model import entropy_model
from bltjax.train_step import init_params, make_steps

PER_DEVICE = 7  # batch rows per batch shard (no model dimension has a factor 7)
N = 256  # bytes per row
P = 65  # patches per row (model.patcher.max_patches)
ENTROPY_WINDOW = 96  # < N: the entropy model runs its block-local attention (3 query blocks of 96)
HASH_GROUPS = (3, 4, 5)  # 3 hash tables
K = 3  # patch slots per patch (k * d_local = 192 != d_global: the global input projection is used)

MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (1, 1, 8), "mixed": (2, 2, 2)}

_SHAPE = re.compile(r"\b(?:bf16|f16|f32)\[([0-9,]*)\]")  # activations (ids and masks are small)


def _config(mesh_shape: tuple[int, int, int], grad_accum: int):
    cfg = get_config()
    model = dataclasses.replace(
        cfg.model, remat="dots", encoder_hash_byte_group_size=HASH_GROUPS, cross_attn_k=K, n_layers_local_decoder=1,
        patcher=PatcherConfig(mode="entropy", threshold=1.3, patch_size=4, max_patches=P),
        entropy_model=TransformerConfig(dim=32, n_layers=1, n_heads=2, multiple_of=32,
                                        sliding_window=ENTROPY_WINDOW, max_seqlen=N))
    rows = PER_DEVICE * mesh_shape[0] * mesh_shape[1] * grad_accum
    return dataclasses.replace(cfg, model=model, seq_len=N, global_batch_size=rows, precision="bfloat16",
                               entropy_model_checkpoint="in-memory",
                               optim=dataclasses.replace(cfg.optim, grad_accum_steps=grad_accum))


ACCUM = {"mixed": 2}  # the mixed mesh also splits the batch into micro-batches (strided rows)


@functools.cache
def _compiled(name: str):
    mesh_shape = MESHES[name]
    cfg = _config(mesh_shape, ACCUM.get(name, 1))
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(mesh_shape), sharding.MESH_AXES,
                axis_types=(AxisType.Auto,) * 3)
    ent = jax.eval_shape(lambda k: entropy_model.init_params(cfg.model.entropy_model, k), jax.random.key(0))
    ent = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), ent,
                       sharding.param_shardings(ent, mesh))
    steps = make_steps(cfg, mesh, ent)
    rows_sh = sharding.batch_sharding(mesh, 2)
    batch = {k: jax.ShapeDtypeStruct((cfg.global_batch_size, N), dt, sharding=rows_sh)
             for k, dt in (("tokens", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))}
    with jax.set_mesh(mesh):
        compiled = steps.train.lower(steps.abstract_state, batch, ent).compile()
    return cfg, compiled


def _shapes(hlo: str) -> set[tuple[int, ...]]:
    return {tuple(int(d) for d in m.group(1).split(",")) for m in _SHAPE.finditer(hlo) if m.group(1)}


def _row_multipliers(cfg) -> set[int]:
    """Sizes that follow, or are merged with, the batch rows in an activation's shape: 1 (rows alone),
    bytes, patches, patch slots, hash tables (and hash ids merged with bytes), entropy-model attention
    blocks.  Chosen (3 tables, k = 3, 3 blocks) so that no two differ by a factor 2, 4 or 8, the
    factors by which the axes of these meshes can gather rows."""
    t = cfg.model.n_hash_tables
    nb = -(-N // ENTROPY_WINDOW)
    return {1, N, N + 1, P, P * cfg.model.cross_attn_k, t, nb, t * N}


def _rows_of(shape: tuple[int, ...], rows_per_device: int, rows_total: int, mult: set[int]) -> int:
    """The most rows (``r * s`` with ``s`` in ``mult``, ``rows_per_device < r <= rows_total``, ``r`` a
    multiple of ``rows_per_device``) that one dimension of ``shape`` holds; 0 when none.  A dimension
    that is also a device's own rows times a multiplier counts as the device's own."""
    own = {rows_per_device * s for s in mult}
    found = 0
    for r in range(2 * rows_per_device, rows_total + 1, rows_per_device):
        if any(d in own for d in shape):
            continue
        if any(d == r * s for d in shape for s in mult):
            found = max(found, r)
    return found


def _excess_row_buffers(cfg, hlo: str, rows_per_device: int) -> list[tuple[int, ...]]:
    """Float buffers carrying more rows than a device owns, except those split over their last
    dimension by at least the same factor (the lookups of the hash embeddings, whose tables are split
    over their width: each device gathers the ids of more rows but only ``width / shards`` of each
    vector, so it holds no more than its share)."""
    m = cfg.model
    widths = {m.dim_local_encoder, m.dim_local_decoder, m.dim_global}
    mult = _row_multipliers(cfg)
    bad = []
    for shape in _shapes(hlo):
        r = _rows_of(shape, rows_per_device, cfg.global_batch_size, mult)
        split_enough = any(w % shape[-1] == 0 and (w // shape[-1]) * rows_per_device >= r for w in widths)
        if r and not split_enough:
            bad.append(shape)
    return sorted(bad)


@pytest.mark.parametrize("name", ["data", "fsdp", "mixed"])
def test_no_activation_holds_more_than_its_rows(name):
    cfg, compiled = _compiled(name)
    batch_leaf = (PER_DEVICE * ACCUM.get(name, 1), N)  # this device's slice of the [B, N] float mask
    bad = [s for s in _excess_row_buffers(cfg, compiled.as_text(), PER_DEVICE) if s != batch_leaf]
    assert not bad, f"{name} mesh {MESHES[name]}: buffers with more than {PER_DEVICE} rows per device: {bad[:12]}"


def test_detector_sees_gathered_rows():
    """The search above finds a batch gathered onto every device (it can fail)."""
    cfg = _config(MESHES["fsdp"], 1)
    gathered = f"%x = f32[{cfg.global_batch_size * N},{cfg.model.dim_local_encoder}] add(...)"
    assert _excess_row_buffers(cfg, gathered, PER_DEVICE) == [(cfg.global_batch_size * N, 64)]
    split_width = f"%g = f32[{cfg.global_batch_size},{N},{cfg.model.dim_local_encoder // 8}] gather(...)"
    assert _excess_row_buffers(cfg, split_width, PER_DEVICE) == []


def test_tensor_mesh_splits_heads_and_ffn():
    """On a tensor-parallel mesh no device holds a whole SwiGLU hidden or all attention heads of a row."""
    cfg, compiled = _compiled("tensor")
    m = cfg.model
    rows = cfg.global_batch_size  # the batch is not split on this mesh

    def over(shape, length):  # [.., rows, length, ..] or [.., rows * length, ..]
        return rows * length in shape or any(a == rows and b == length for a, b in zip(shape, shape[1:]))

    local, glob = m.local_ffn_dim(m.dim_local_encoder), m.local_ffn_dim(m.dim_global)
    full = [s for s in _shapes(compiled.as_text())
            if (s[-1] == local and over(s[:-1], N)) or (s[-1] == glob and over(s[:-1], P))]
    assert not full, f"SwiGLU hiddens not split over 'tensor': {sorted(full)[:8]}"


def test_fsdp_needs_no_more_temporaries_than_data_parallel():
    """Same rows per device: FSDP may add the all-gathered weights (here: at most the whole unsplit
    parameter tree in fp32), nothing proportional to the global batch."""
    cfg_d, data = _compiled("data")
    _, fsdp = _compiled("fsdp")
    params = jax.eval_shape(lambda k: init_params(cfg_d, k), jax.random.key(0))
    weight_bytes = sum(math.prod(p.shape) * 4 for p in jax.tree.leaves(params))
    t_data = data.memory_analysis().temp_size_in_bytes
    t_fsdp = fsdp.memory_analysis().temp_size_in_bytes
    assert t_fsdp <= t_data + weight_bytes, (t_fsdp, t_data, weight_bytes)



def test_hash_lookup_rows_stay_split_over_data():
    """The hash-table lookups are split over the tables' width (``fsdp``); their rows stay split over
    ``data`` (the axis across slices), so no device looks up the rows of another data shard, forward
    or backward.  Per-device shapes are read from the compiled program."""
    from jax.sharding import NamedSharding, PartitionSpec

    from bltjax.model.local_encoder import hash_embedding_sum

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    rows, n, d = 4 * PER_DEVICE * 2, 24, 40  # 7 rows per batch shard (data 4 x fsdp 2)
    tables = jax.ShapeDtypeStruct((3, 97, d), jnp.float32,
                                  sharding=NamedSharding(mesh, PartitionSpec(None, None, "fsdp")))
    ids = jax.ShapeDtypeStruct((rows, 3, n), jnp.int32,
                               sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None)))
    loss = lambda t, i: jnp.sum(jnp.sin(hash_embedding_sum(t, i)))
    with jax.set_mesh(mesh):
        hlo = jax.jit(jax.value_and_grad(loss)).lower(tables, ids).compile().as_text()
    # a device's share: the rows of its data shard x half the width (= its own rows x the whole width)
    share = (rows // 4) * n * (d // 2)
    sizes = {s: math.prod(s) for s in _shapes(hlo)}
    assert share in sizes.values(), sorted(sizes)
    assert max(sizes.values()) <= share, f"rows of other data shards on a device: {sorted(sizes)}"
