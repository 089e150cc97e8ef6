"""Device mesh, logical-axis rules and parameter / batch shardings.

One mesh with axes ``("data", "fsdp", "tensor")`` (all ``AxisType.Auto``: BLT's vmapped segment ops
break under Explicit axes).  Parameters and activations name their
dimensions with *logical* axes (``"embed"``, ``"mlp"``, ``"batch"``...); the single table
:data:`LOGICAL_AXIS_RULES` maps those names onto mesh axes, so a parallelism change is a table edit,
not a model edit.

Resolution of one array's logical axes (:func:`logical_to_spec`), dimension by dimension:

* a logical name may appear several times in the table: the entries are *candidates*, tried in
  table order, each also shortened from the right (``("fsdp", "tensor")`` then ``("fsdp",)``);
* a candidate is skipped when one of its mesh axes is already used by an earlier dimension of the
  same array (a weight never uses a mesh axis twice) or, when the shape and mesh are known, when the
  dimension is not divisible by the product of the candidate's mesh-axis sizes;
* when the mesh is known, its size-1 axes and the axes it does not have are dropped from the
  candidates (they shard nothing); if no candidate fits the dimension is replicated (logged: tiny
  test models hit this, and so does an odd vocabulary such as 500002 hash rows).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

MeshAxes = Union[None, str, tuple[str, ...]]
UNCONSTRAINED = PartitionSpec.UNCONSTRAINED  # a logical "name" that leaves the dimension to XLA
LogicalAxes = tuple[Optional[str], ...]
Rules = tuple[tuple[str, MeshAxes], ...]

# ----------------------------------------------------------------------------------------------
# The rules table
# ----------------------------------------------------------------------------------------------

LOGICAL_AXIS_RULES: Rules = (
    # -- input batches ([B, N] tokens, targets, masks)
    ("batch", ("data", "fsdp")),  # batch rows: data parallel x FSDP
    ("bytes", None),  # byte sequence axis (future: "context")
    ("patches", None),  # patch sequence axis (future: "context")
    # -- activations: every layer boundary of every model part, and every reshape that merges or
    # splits a dimension, is constrained to these (``constrain``), so XLA keeps the batch split over
    # ("data", "fsdp") everywhere and all-gathers *weights* (FSDP) rather than activations.
    ("act_batch", ("data", "fsdp")),  # rows (also the merged rows x positions of 2-D matmuls)
    ("act_len", None),  # byte positions (future: "context")
    ("act_patches", None),  # patch positions and patch query slots (P, P*k)
    ("act_embed", None),  # activation model dim (sequence parallelism would put "tensor" here)
    ("act_heads", "tensor"),  # attention heads (follow wq / wo)
    ("act_kv_heads", "tensor"),  # key/value heads (follow wk / wv)
    ("act_head_dim", None),
    ("act_mlp", "tensor"),  # SwiGLU hidden (follows w1 / w3)
    ("act_vocab", None),  # logits over the 260 byte ids
    ("act_hash_tables", None),  # the n-gram hash function axis of hash ids
    # -- weights (and activation head / hidden axes, which follow their weights)
    ("embed", "fsdp"),  # model dim of every weight, local and global: FSDP
    ("mlp", "tensor"),  # SwiGLU hidden
    ("heads", "tensor"),  # query heads * head_dim (and attention outputs)
    ("kv_heads", "tensor"),  # key/value heads * head_dim
    ("head_dim", None),
    ("vocab", None),  # 260 byte ids: tiny, replicated
    # n-gram hash tables [T, Vh, d], the biggest weights of BLT: rows over every weight-sharding axis
    # (vocab-parallel lookup).  Vh is often odd-sized (500002 = 2 * 250001), so the rows fall back to
    # fsdp, then tensor, and the width takes whatever mesh axes the rows could not use.
    ("hash_tables", None),
    ("hash_vocab", ("fsdp", "tensor")),
    ("hash_vocab", "tensor"),
    ("hash_embed", ("fsdp", "tensor")),
    ("hash_embed", "tensor"),
    ("patch_embed", None),  # k * d patch-slot width of the patch projections (small weights)
    ("layers", None),  # stacked (scanned) layer axis: never sharded
    ("norm", None),  # norm scales
)


def _normalize(mesh_axes: MeshAxes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    if isinstance(mesh_axes, str):
        return (mesh_axes,)
    return tuple(mesh_axes)


def _candidates(name: str, rules: Rules) -> list[tuple[str, ...]]:
    found = [_normalize(m) for logical, m in rules if logical == name]
    if not found:
        raise ValueError(f"logical axis {name!r} has no entry in the sharding rules "
                         f"(known: {sorted({n for n, _ in rules})})")
    return found


def _spec_entry(axes: tuple[str, ...]) -> MeshAxes:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_to_spec(axes: Sequence[Optional[str]], rules: Rules = LOGICAL_AXIS_RULES, *,
                    shape: Optional[Sequence[int]] = None,
                    mesh_shape: Optional[Mapping[str, int]] = None) -> PartitionSpec:
    """Resolve logical axis names to a ``PartitionSpec`` (one entry per dimension).

    ``None`` as a logical name means "replicated", :data:`UNCONSTRAINED` "the compiler chooses".
    With ``mesh_shape`` (axis name -> size) given,
    mesh axes of size 1 or missing from the mesh are dropped; with ``shape`` too, options that do
    not divide the dimension are skipped.  Without them only the "no mesh axis twice" rule applies.
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match rank-{len(shape)} shape {tuple(shape)}")
    check_div = shape is not None and mesh_shape is not None
    used: set[str] = set()
    entries: list[MeshAxes] = []
    for dim, name in enumerate(axes):
        if name is None or name is UNCONSTRAINED:
            entries.append(name)
            continue
        chosen: tuple[str, ...] = ()
        not_divisible = False
        for cand in _candidates(name, rules):
            if not cand:  # an explicit "replicate" entry ends the search
                break
            if mesh_shape is not None:
                cand = tuple(a for a in cand if mesh_shape.get(a, 1) > 1)
            for sub in (cand[:n] for n in range(len(cand), 0, -1)):  # the candidate, then prefixes
                if used.intersection(sub):
                    continue
                if check_div and shape[dim] % math.prod(mesh_shape[a] for a in sub):
                    not_divisible = True
                    continue
                chosen = sub
                break
            if chosen:
                break
        if not_divisible:
            log.info("logical axis %r (dim %d of shape %s) not divisible by its first mesh-axis "
                     "choice; using %s", name, dim, tuple(shape), chosen or "replication")
        used.update(chosen)
        entries.append(_spec_entry(chosen))
    return PartitionSpec(*entries)


# ----------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Parallelism degrees per mesh axis, inside a slice (``ici_*``) and across slices (``dcn_*``).

    At most one ``-1`` per group: it absorbs the remaining devices (ICI) or slices (DCN).
    """

    ici_data: int = 1
    ici_fsdp: int = -1
    ici_tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1

    def __post_init__(self) -> None:
        for group in ("ici", "dcn"):
            sizes = self._group(group)
            for axis, v in zip(MESH_AXES, sizes):
                if not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
                    raise ValueError(f"MeshConfig.{group}_{axis} must be a positive int or -1, got {v!r}")
            if list(sizes).count(-1) > 1:
                raise ValueError(f"MeshConfig: at most one {group}_* size may be -1, got {sizes}")

    def _group(self, group: str) -> tuple[int, int, int]:
        return tuple(getattr(self, f"{group}_{a}") for a in MESH_AXES)  # type: ignore[return-value]

    @property
    def uses_dcn(self) -> bool:
        return any(v != 1 for v in self._group("dcn"))

    def resolve(self, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Concrete ``(ici_shape, dcn_shape)`` for ``num_devices`` devices in ``num_slices`` slices."""
        if num_devices < 1 or num_slices < 1 or num_devices % num_slices:
            raise ValueError(f"{num_devices} devices cannot be split into {num_slices} equal slices")
        dcn = _fill(self._group("dcn"), num_slices, "dcn", f"{num_slices} slice(s)")
        ici = _fill(self._group("ici"), num_devices // num_slices, "ici",
                    f"{num_devices // num_slices} devices per slice ({num_devices} devices, "
                    f"{num_slices} slice(s))")
        return ici, dcn


def _fill(sizes: tuple[int, ...], total: int, group: str, what: str) -> tuple[int, ...]:
    known = math.prod(v for v in sizes if v != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(f"mesh {group} sizes {sizes}: {what} is not divisible by {known}")
        sizes = tuple(total // known if v == -1 else v for v in sizes)
    elif known != total:
        raise ValueError(f"mesh {group} sizes {sizes} multiply to {known}, but there are {what}")
    return sizes


def _num_slices(devices: Sequence[Any]) -> tuple[int, bool]:
    """(number of DCN granules, whether the granules are processes rather than TPU slices).

    TPU: slices (``device.slice_index``; devices without one, such as a single-slice topology compiled
    ahead of time, are one slice -- never one granule per host).  Elsewhere (multi-node GPU,
    multi-process CPU): processes.
    """
    if devices[0].platform == "tpu":
        return len({getattr(d, "slice_index", 0) for d in devices}), False
    return len({d.process_index for d in devices}), True


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh with Auto axes; hybrid ICI x DCN when any dcn size != 1.

    DCN granules are TPU slices, or processes on other platforms (multi-node GPU, multi-process CPU).
    """
    devices = list(jax.devices() if devices is None else devices)
    types = (AxisType.Auto,) * len(MESH_AXES)
    if not cfg.uses_dcn:
        ici, _ = cfg.resolve(len(devices), 1)
        return jax.make_mesh(ici, MESH_AXES, axis_types=types, devices=devices)
    num_slices, by_process = _num_slices(devices)
    ici, dcn = cfg.resolve(len(devices), num_slices)
    if num_slices == 1:  # dcn sizes are all 1: a plain mesh over the one slice / process
        return jax.make_mesh(ici, MESH_AXES, axis_types=types, devices=devices)
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process)
    return Mesh(arr, MESH_AXES, axis_types=types)


# ----------------------------------------------------------------------------------------------
# Parameter logical axes (params_layout.md)
# ----------------------------------------------------------------------------------------------

_BLOCK: dict[str, LogicalAxes] = {
    "attention_norm": ("layers", "norm"),
    "wq": ("layers", "embed", "heads"),
    "wk": ("layers", "embed", "kv_heads"),
    "wv": ("layers", "embed", "kv_heads"),
    "wo": ("layers", "heads", "embed"),
    "ffn_norm": ("layers", "norm"),
    "w1": ("layers", "embed", "mlp"),
    "w3": ("layers", "embed", "mlp"),
    "w2": ("layers", "mlp", "embed"),
}
_CROSS: dict[str, LogicalAxes] = {
    "norm_q": ("layers", "norm"),
    "norm_kv": ("layers", "norm"),
    "wq": ("layers", "embed", "heads"),
    "wk": ("layers", "embed", "heads"),
    "wv": ("layers", "embed", "heads"),
    "wo": ("layers", "heads", "embed"),
}
BLT_PARAM_AXES: dict[str, Any] = {
    "tok_embeddings": ("vocab", "embed"),
    "hash_embeddings": ("hash_tables", "hash_vocab", "hash_embed"),
    "encoder": {"layers": _BLOCK, "patch_projection": ("embed", "patch_embed"), "cross": _CROSS},
    "global": {"input_projection": ("patch_embed", "embed"), "layers": _BLOCK},
    "decoder": {"patch_projection": ("embed", "patch_embed"), "cross": _CROSS, "layers": _BLOCK,
                "norm": ("norm",), "output": ("embed", "vocab")},
}
ENTROPY_PARAM_AXES: dict[str, Any] = {
    "tok_embeddings": ("vocab", "embed"),
    "layers": _BLOCK,
    "norm": ("norm",),
    "output": ("embed", "vocab"),
}
BUNDLE_PARAM_AXES: dict[str, Any] = {"blt": BLT_PARAM_AXES, "entropy": ENTROPY_PARAM_AXES}


def _schema_for(params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a nested dict, got {type(params).__name__}")
    keys = set(params)
    if keys and keys <= {"blt", "entropy"}:
        return BUNDLE_PARAM_AXES
    if {"encoder", "decoder", "hash_embeddings"} & keys:
        return BLT_PARAM_AXES
    if "layers" in keys:
        return ENTROPY_PARAM_AXES
    raise ValueError(f"cannot tell BLT, entropy-model or bundle params apart from keys {sorted(keys)}")


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _axes_at(schema: Mapping[str, Any], path: Sequence[Any], leaf: Any) -> LogicalAxes:
    names = [_key_name(k) for k in path]
    node: Any = schema
    for i, name in enumerate(names):
        if not isinstance(node, Mapping) or name not in node:
            where = "/".join(names[:i]) or "<root>"
            known = sorted(node) if isinstance(node, Mapping) else []
            raise ValueError(f"unknown parameter path {'/'.join(names)!r}: no {name!r} under {where} "
                             f"(expected one of {known})")
        node = node[name]
    if isinstance(node, Mapping):
        raise ValueError(f"parameter path {'/'.join(names)!r} is a leaf but the layout expects a dict "
                         f"with keys {sorted(node)}")
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    if len(shape) != len(node):
        raise ValueError(f"parameter {'/'.join(names)!r} has rank {len(shape)} (shape {shape}), "
                         f"the layout expects {len(node)} dims {node}")
    return node


def is_axes_leaf(x: Any) -> bool:
    """``is_leaf`` for trees returned by :func:`param_logical_axes` (tuples are leaves there)."""
    return isinstance(x, tuple)


def param_logical_axes(params: Any) -> Any:
    """Same-structure tree of logical-axis tuples for BLT params, entropy params or a bundle.

    Works from dict paths (any layer count; ``global/input_projection`` optional).  Raises
    ``ValueError`` on a path or rank the layout (notes/params_layout.md) does not know.  Tuples are
    pytree nodes: map over the result with ``is_leaf=is_axes_leaf``.
    """
    schema = _schema_for(params)
    return jax.tree_util.tree_map_with_path(lambda p, x: _axes_at(schema, p, x), params)


_LARGE = 1 << 24  # elements: replicating a parameter this big is worth a warning


def _mesh_shape(mesh: Any) -> dict[str, int]:
    return dict(mesh.shape)


def param_partition_specs(params: Any, mesh: Any, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """Same-structure tree of resolved ``PartitionSpec`` (divisibility-checked against ``mesh``)."""
    schema = _schema_for(params)
    mshape = _mesh_shape(mesh)

    def one(path, x):
        axes = _axes_at(schema, path, x)
        spec = logical_to_spec(axes, rules, shape=tuple(x.shape), mesh_shape=mshape)
        if math.prod(x.shape) >= _LARGE and all(e is None for e in spec) and math.prod(mshape.values()) > 1:
            log.warning("parameter %s %s is fully replicated on mesh %s", jax.tree_util.keystr(path),
                        tuple(x.shape), mshape)
        return spec

    return jax.tree_util.tree_map_with_path(one, params)


def param_shardings(params: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """Same-structure tree of ``NamedSharding`` for ``params`` (arrays or ``ShapeDtypeStruct``)."""
    specs = param_partition_specs(params, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, PartitionSpec))


def abstract_params(params: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """``ShapeDtypeStruct`` tree carrying the shardings of ``mesh``: a checkpoint restore target."""
    shardings = param_shardings(params, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)


# ----------------------------------------------------------------------------------------------
# Activations and batches
# ----------------------------------------------------------------------------------------------


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]],
              rules: Rules = LOGICAL_AXIS_RULES) -> jax.Array:
    """``with_sharding_constraint`` through the rules table and the mesh set by ``jax.set_mesh``.

    A no-op when no mesh is set or the mesh has a single device, so model code can call it
    unconditionally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    spec = logical_to_spec(logical_axes, rules, shape=x.shape, mesh_shape=_mesh_shape(mesh))
    return jax.lax.with_sharding_constraint(x, spec)


def target_platform() -> str:
    """Platform the code is being compiled for: the devices of the mesh set with ``jax.set_mesh``
    (so a TPU topology compiled ahead of time from a CPU host counts as TPU), else JAX's default
    backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def constrain_rows(x: jax.Array, name: str, rows: int, rules: Rules = LOGICAL_AXIS_RULES) -> jax.Array:
    """Constrain a view ``[rows * m, ...]`` of a ``[rows, m, ...]`` activation whose leading dims were
    merged (a 2-D matmul, a batch of blocks): the merged dimension is split exactly as ``rows`` would
    be under the logical axis ``name`` (so the merge moves no data); the other dimensions are left to
    the compiler."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    lead = logical_to_spec((name,), rules, shape=(rows,), mesh_shape=_mesh_shape(mesh))[0]
    return jax.lax.with_sharding_constraint(x, PartitionSpec(lead, *(UNCONSTRAINED,) * (x.ndim - 1)))


def batch_spec(ndim: int = 2, rules: Rules = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """Rows over the "batch" rule, every other dimension replicated."""
    return logical_to_spec(("batch",) + (None,) * (ndim - 1), rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
    """Sharding of a ``[B, N, ...]`` batch: B over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, batch_spec(ndim, rules))


def shard_batch(local_batch: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """Assemble global batch arrays from this process's rows (``make_array_from_process_local_data``).

    ``local_batch`` is a tree (usually a dict) of host arrays with the same leading size (the
    per-process batch); the global batch is ``local_batch_size * process_count`` rows, in process
    order.
    """
    leaves = jax.tree.leaves(local_batch)
    if not leaves:
        raise ValueError("shard_batch got an empty batch")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"all batch arrays need the same leading (batch) size, got {sizes}")
    local_b = sizes.pop()
    global_b = local_b * jax.process_count()
    n_shards = math.prod(mesh.shape.get(a, 1) for a in _normalize(batch_spec(1, rules)[0]))
    if global_b % n_shards:
        raise ValueError(f"global batch {global_b} ({local_b} per process x {jax.process_count()}) is "
                         f"not divisible by the {n_shards} batch shards of mesh {dict(mesh.shape)}")

    def one(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, max(x.ndim, 1), rules)
        return jax.make_array_from_process_local_data(sharding, x, (global_b,) + x.shape[1:])

    return jax.tree.map(one, local_batch)


__all__ = [
    "MESH_AXES", "LOGICAL_AXIS_RULES", "MeshConfig", "make_mesh", "logical_to_spec", "param_logical_axes",
    "param_partition_specs", "param_shardings", "abstract_params", "is_axes_leaf", "constrain", "constrain_rows",
    "UNCONSTRAINED", "target_platform",
    "batch_spec", "batch_sharding", "shard_batch", "BLT_PARAM_AXES", "ENTROPY_PARAM_AXES",
    "BUNDLE_PARAM_AXES",
]
