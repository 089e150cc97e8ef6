"""Mesh building, the logical-axis rules table, parameter shardings (golden file) and batch assembly.

Regenerate the golden file after an intended layout/rules change:
    BLTJAX_REGEN_GOLDEN=1 .venv/bin/pytest -q tests/test_sharding.py -k golden
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax import sharding as sh
from bltjax.config import BLTConfig, TransformerConfig, tiny_blt_config

GOLDEN = pathlib.Path(__file__).parent / "golden" / "sharding_tiny.json"
GOLDEN_MESH = sh.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2)


# ------------------------------------------------------------------------------------------------
# A parameter tree built from notes/params_layout.md (abstract: shapes and dtypes only)
# ------------------------------------------------------------------------------------------------


def _w(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def layout_block(L: int, d: int, heads: int, kv_heads: int, head_dim: int, ffn: int) -> dict:
    return {
        "attention_norm": _w(L, d),
        "wq": _w(L, d, heads * head_dim), "wk": _w(L, d, kv_heads * head_dim),
        "wv": _w(L, d, kv_heads * head_dim), "wo": _w(L, heads * head_dim, d),
        "ffn_norm": _w(L, d),
        "w1": _w(L, d, ffn), "w3": _w(L, d, ffn), "w2": _w(L, ffn, d),
    }


def layout_cross(C: int, d: int) -> dict:
    return {"norm_q": _w(C, d), "norm_kv": _w(C, d), "wq": _w(C, d, d), "wk": _w(C, d, d),
            "wv": _w(C, d, d), "wo": _w(C, d, d)}


def layout_blt_params(cfg: BLTConfig) -> dict:
    """BLT params with the shapes of notes/params_layout.md for ``cfg``."""
    dE, dD, dG, k, V = (cfg.dim_local_encoder, cfg.dim_local_decoder, cfg.dim_global,
                        cfg.cross_attn_k, cfg.vocab_size)

    def block(L, d, h, kv):
        return layout_block(L, d, h, kv or h, d // h, cfg.local_ffn_dim(d))

    glob = {"layers": block(cfg.n_layers_global, dG, cfg.n_heads_global, cfg.n_kv_heads_global)}
    if cfg.global_input_projection:
        glob["input_projection"] = _w(k * dE, dG)
    return {
        "tok_embeddings": _w(V, dE),
        "hash_embeddings": _w(cfg.n_hash_tables, cfg.encoder_hash_byte_group_vocab, dE),
        "encoder": {
            "layers": block(cfg.n_layers_local_encoder, dE, cfg.n_heads_local_encoder, cfg.n_kv_heads),
            "patch_projection": _w(dE, k * dE),
            "cross": layout_cross(cfg.n_cross_encoder, dE),
        },
        "global": glob,
        "decoder": {
            "patch_projection": _w(dG, k * dD),
            "cross": layout_cross(cfg.n_cross_decoder, dD),
            "layers": block(cfg.n_layers_local_decoder, dD, cfg.n_heads_local_decoder, cfg.n_kv_heads),
            "norm": _w(dD),
            "output": _w(dD, V),
        },
    }


def layout_entropy_params(cfg: TransformerConfig) -> dict:
    d, V = cfg.dim, cfg.vocab_size
    return {"tok_embeddings": _w(V, d),
            "layers": layout_block(cfg.n_layers, d, cfg.n_heads, cfg.kv_heads, cfg.hdim, cfg.ffn_dim),
            "norm": _w(d), "output": _w(d, V)}


TINY_ENTROPY = TransformerConfig(dim=32, n_layers=2, n_heads=2, multiple_of=32)


def golden_params():
    """The tree the golden file describes: the real model's parameters (shapes only)."""
    import bltjax.model.blt

    return jax.eval_shape(lambda: bltjax.model.blt.init_params(tiny_blt_config(), jax.random.key(0)))


def _flat(tree) -> dict[str, object]:
    return {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _spec_json(spec: P) -> list:
    return [list(e) if isinstance(e, tuple) else e for e in spec]


# ------------------------------------------------------------------------------------------------
# Mesh
# ------------------------------------------------------------------------------------------------


def test_mesh_config_resolve():
    assert sh.MeshConfig().resolve(8) == ((1, 8, 1), (1, 1, 1))
    assert sh.MeshConfig(ici_data=2, ici_fsdp=-1, ici_tensor=2).resolve(8) == ((2, 2, 2), (1, 1, 1))
    assert sh.MeshConfig(ici_fsdp=-1, dcn_data=-1).resolve(16, num_slices=4) == ((1, 4, 1), (4, 1, 1))
    assert sh.MeshConfig(ici_fsdp=2, ici_tensor=2, dcn_data=2).resolve(8, num_slices=2) == (
        (1, 2, 2), (2, 1, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(ici_data=-1, ici_fsdp=-1), "at most one ici"),
    (dict(dcn_data=-1, dcn_tensor=-1), "at most one dcn"),
    (dict(ici_tensor=0), "positive int or -1"),
    (dict(ici_data=2.0), "positive int or -1"),
])
def test_mesh_config_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sh.MeshConfig(**kwargs)


@pytest.mark.parametrize("cfg, match", [
    (sh.MeshConfig(ici_data=3), "8 devices per slice .* not divisible by 3"),
    (sh.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=1), r"multiply to 4, but there are 8 devices"),
    (sh.MeshConfig(dcn_data=2), r"dcn sizes \(2, 1, 1\) multiply to 2, but there are 1 slice"),
])
def test_make_mesh_errors_name_the_device_count(cfg, match):
    with pytest.raises(ValueError, match=match):
        sh.make_mesh(cfg)


def test_make_mesh_shapes_and_axis_types():
    assert jax.device_count() == 8
    mesh = sh.make_mesh(GOLDEN_MESH)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert dict(sh.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    sub = sh.make_mesh(sh.MeshConfig(ici_fsdp=2, ici_tensor=-1), devices=jax.devices()[:4])
    assert dict(sub.shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    assert set(sub.devices.flat) == set(jax.devices()[:4])


# ------------------------------------------------------------------------------------------------
# Rules table and resolution
# ------------------------------------------------------------------------------------------------


def _schema_names(schema) -> set[str]:
    out = set()
    for v in schema.values():
        out |= _schema_names(v) if isinstance(v, dict) else {n for n in v if n is not None}
    return out


def test_rules_table_sanity():
    rules = sh.LOGICAL_AXIS_RULES
    assert isinstance(rules, tuple) and all(isinstance(r, tuple) and len(r) == 2 for r in rules)
    names = {n for n, _ in rules}
    for name, axes in rules:
        for a in sh._normalize(axes):
            assert a in sh.MESH_AXES, (name, a)
        assert len(set(sh._normalize(axes))) == len(sh._normalize(axes)), name
    used = _schema_names(sh.BUNDLE_PARAM_AXES) | {"batch", "bytes", "patches", "act_embed"}
    assert used <= names, used - names
    # the intended placements
    assert sh.logical_to_spec(("batch", "bytes", "act_embed")) == P(("data", "fsdp"), None, None)
    assert sh.logical_to_spec(("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
    assert sh.logical_to_spec(("layers", "mlp", "embed")) == P(None, "tensor", "fsdp")
    assert sh.logical_to_spec(("vocab", "embed")) == P(None, "fsdp")
    assert sh.logical_to_spec(("hash_tables", "hash_vocab", "hash_embed")) == P(None, ("fsdp", "tensor"), None)


def test_logical_to_spec_fallbacks():
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    # never one mesh axis twice: a second "embed" stays replicated
    assert sh.logical_to_spec(("embed", "embed")) == P("fsdp", None)
    # not divisible -> shorter prefix -> replication
    assert sh.logical_to_spec(("batch", "bytes"), shape=(2, 8), mesh_shape=mesh) == P("data", None)
    assert sh.logical_to_spec(("batch", "bytes"), shape=(3, 8), mesh_shape=mesh) == P(None, None)
    assert sh.logical_to_spec(("mlp",), shape=(5,), mesh_shape=mesh) == P(None)
    # odd hash vocabulary (500002 = 2 * 250001): rows on what divides, the width takes the rest
    hv = ("hash_tables", "hash_vocab", "hash_embed")
    assert sh.logical_to_spec(hv, shape=(6, 500002, 64), mesh_shape=mesh) == P(None, "fsdp", "tensor")
    assert sh.logical_to_spec(hv, shape=(6, 500002, 64), mesh_shape={"fsdp": 8, "tensor": 1}) == \
        P(None, None, "fsdp")
    assert sh.logical_to_spec(hv, shape=(6, 500002, 64), mesh_shape={"fsdp": 1, "tensor": 8}) == \
        P(None, None, "tensor")
    assert sh.logical_to_spec(hv, shape=(6, 97, 64), mesh_shape=mesh) == P(None, None, ("fsdp", "tensor"))
    assert sh.logical_to_spec(hv, shape=(6, 96, 64), mesh_shape=mesh) == P(None, ("fsdp", "tensor"), None)
    # mesh axes the mesh lacks, or of size 1, are dropped
    assert sh.logical_to_spec(("layers", "embed", "heads"), shape=(2, 8, 8), mesh_shape={"fsdp": 4}) == \
        P(None, "fsdp", None)
    assert sh.logical_to_spec(("batch", "mlp"), mesh_shape={"data": 8, "fsdp": 1, "tensor": 1}) == \
        P("data", None)
    # custom rules
    rules = (("embed", None), ("mlp", ("fsdp", "tensor")))
    assert sh.logical_to_spec(("embed", "mlp"), rules) == P(None, ("fsdp", "tensor"))


def test_logical_to_spec_errors():
    with pytest.raises(ValueError, match="no entry in the sharding rules"):
        sh.logical_to_spec(("nonsense",))
    with pytest.raises(ValueError, match="do not match rank-1"):
        sh.logical_to_spec(("embed", "mlp"), shape=(4,), mesh_shape={"fsdp": 2})


# ------------------------------------------------------------------------------------------------
# Parameter logical axes
# ------------------------------------------------------------------------------------------------


def test_param_logical_axes_blt():
    params = layout_blt_params(tiny_blt_config())
    axes = sh.param_logical_axes(params)
    assert axes["encoder"]["layers"]["wq"] == ("layers", "embed", "heads")
    assert axes["global"]["layers"]["wk"] == ("layers", "embed", "kv_heads")
    assert axes["decoder"]["layers"]["w2"] == ("layers", "mlp", "embed")
    assert axes["decoder"]["cross"]["wo"] == ("layers", "heads", "embed")
    assert axes["hash_embeddings"] == ("hash_tables", "hash_vocab", "hash_embed")
    assert axes["decoder"]["norm"] == ("norm",)
    assert "input_projection" not in axes["global"]  # k*dE == dG in the tiny config
    # same structure, tuples as leaves
    flat_p, flat_a = _flat(params), jax.tree.leaves(axes, is_leaf=sh.is_axes_leaf)
    assert len(flat_p) == len(flat_a)
    assert all(len(a) == len(p.shape) for a, p in zip(flat_a, flat_p.values()))


def test_param_logical_axes_other_layer_counts_and_projection():
    cfg = tiny_blt_config(n_layers_global=5, n_layers_local_decoder=3, dim_global=48, n_heads_global=2)
    params = layout_blt_params(cfg)
    assert params["global"]["layers"]["wq"].shape[0] == 5
    axes = sh.param_logical_axes(params)
    assert axes["global"]["input_projection"] == ("patch_embed", "embed")
    assert axes["decoder"]["cross"]["wq"] == ("layers", "embed", "heads")


def test_param_logical_axes_entropy_and_bundle():
    ent = layout_entropy_params(TINY_ENTROPY)
    axes = sh.param_logical_axes(ent)
    assert axes["layers"]["w1"] == ("layers", "embed", "mlp")
    assert axes["output"] == ("embed", "vocab")
    bundle = {"blt": layout_blt_params(tiny_blt_config()), "entropy": ent}
    baxes = sh.param_logical_axes(bundle)
    assert baxes["entropy"] == axes
    assert baxes["blt"]["tok_embeddings"] == ("vocab", "embed")


def test_param_logical_axes_rejects_unknown_paths_and_ranks():
    params = layout_blt_params(tiny_blt_config())
    params["encoder"]["mystery"] = _w(4, 4)
    with pytest.raises(ValueError, match="unknown parameter path 'encoder/mystery'"):
        sh.param_logical_axes(params)
    params = layout_blt_params(tiny_blt_config())
    params["decoder"]["layers"]["wq"] = _w(32, 32)  # lost its stacked layer axis
    with pytest.raises(ValueError, match="decoder/layers/wq' has rank 2"):
        sh.param_logical_axes(params)
    with pytest.raises(ValueError, match="cannot tell"):
        sh.param_logical_axes({"weird": _w(2)})


def test_param_shardings_place_real_arrays():
    """Every resolved sharding is valid for its array: no axis twice, divisible, device_put works."""
    mesh = sh.make_mesh(GOLDEN_MESH)
    abstract = {"blt": layout_blt_params(tiny_blt_config()), "entropy": layout_entropy_params(TINY_ENTROPY)}
    shardings = sh.param_shardings(abstract, mesh)
    arrays = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    placed = jax.device_put(arrays, shardings)
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(placed)[0], jax.tree.leaves(shardings)):
        axes = [a for e in s.spec if e is not None for a in ((e,) if isinstance(e, str) else e)]
        assert len(axes) == len(set(axes)), path
        assert len(s.spec) == x.ndim, path
        assert x.sharding == s
    # big weights really are split over both fsdp and tensor
    wq = placed["blt"]["global"]["layers"]["wq"]
    assert wq.sharding.spec == P(None, "fsdp", "tensor")
    assert wq.addressable_shards[0].data.shape == (2, 32, 32)
    abstract_sharded = sh.abstract_params(abstract, mesh)
    assert abstract_sharded["entropy"]["output"].sharding == shardings["entropy"]["output"]


def _golden_text(golden: dict) -> str:
    """One parameter per line, so a diff of the golden file reads like a sharding changelog."""
    rows = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(golden["params"].items())]
    return ('{\n "mesh": ' + json.dumps(golden["mesh"]) + ',\n "params": {\n' + ",\n".join(rows)
            + "\n }\n}\n")


def test_golden_sharding_tiny():
    """Resolved PartitionSpec of every parameter on a (data=2, fsdp=2, tensor=2) mesh."""
    mesh = sh.make_mesh(GOLDEN_MESH)
    params = golden_params()
    specs = sh.param_partition_specs(params, mesh)
    flat_specs = _flat(jax.tree.map(lambda s: s, specs, is_leaf=lambda s: isinstance(s, P)))
    got = {"mesh": dict(mesh.shape),
           "params": {k: {"shape": list(x.shape), "spec": _spec_json(flat_specs[k])}
                      for k, x in sorted(_flat(params).items())}}
    for entry in got["params"].values():
        assert len(entry["spec"]) <= len(entry["shape"])
    if os.environ.get("BLTJAX_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(_golden_text(got))
    want = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in set(want["params"]) | set(got["params"])
                     if want["params"].get(k) != got["params"].get(k))
    assert got == want, f"sharding changed for {changed} (regenerate with BLTJAX_REGEN_GOLDEN=1 if intended)"


# ------------------------------------------------------------------------------------------------
# Activations and batches
# ------------------------------------------------------------------------------------------------


def test_constrain_without_mesh_is_identity():
    x = jnp.ones((4, 8))
    assert sh.constrain(x, ("batch", "bytes")) is x
    y = jax.jit(lambda v: sh.constrain(v * 2, ("batch", "bytes")))(x)
    np.testing.assert_array_equal(y, 2 * np.ones((4, 8)))


def test_constrain_under_mesh():
    mesh = sh.make_mesh(GOLDEN_MESH)
    f = jax.jit(lambda v: sh.constrain(v + 1, ("batch", "bytes", "heads")))
    with jax.set_mesh(mesh):
        y = f(np.zeros((8, 4, 6), np.float32))
        z = jax.jit(lambda v: sh.constrain(v + 1, ("batch", "bytes")))(np.zeros((2, 4), np.float32))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")), 3)
    # a batch of 2 cannot take data x fsdp = 4 shards: falls back to "data"
    assert z.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None)), 2)
    np.testing.assert_array_equal(y, 1.0)


def test_batch_sharding_and_shard_batch_single_process():
    mesh = sh.make_mesh(GOLDEN_MESH)
    assert sh.batch_sharding(mesh) == NamedSharding(mesh, P(("data", "fsdp"), None))
    local = {"bytes": np.arange(8 * 16, dtype=np.int32).reshape(8, 16),
             "weights": np.ones((8,), np.float32)}
    batch = sh.shard_batch(local, mesh)
    assert batch["bytes"].shape == (8, 16)
    assert batch["bytes"].sharding.spec == P(("data", "fsdp"), None)
    assert batch["weights"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(batch["bytes"]), local["bytes"])
    assert [s.data.shape for s in batch["bytes"].addressable_shards] == [(2, 16)] * 8
    with pytest.raises(ValueError, match="not divisible by the 4 batch shards"):
        sh.shard_batch({"bytes": np.zeros((6, 4))}, mesh)
    with pytest.raises(ValueError, match="same leading"):
        sh.shard_batch({"a": np.zeros((8, 4)), "b": np.zeros((4, 4))}, mesh)
