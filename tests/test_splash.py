"""Splash attention (Pallas) against the XLA path, and the train step compiled for a TPU with it.

On CPU the kernel runs in Pallas interpret mode (slow: the shapes are minimal, one block of 128 where
the kernel requires it).  Every self-attention configuration BLT uses is covered: plain causal, the
local models' sliding window with documents, GQA, and the global model's block-causal mask over a
patch count that is not a multiple of the block (padded rows).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from bltjax import sharding
from bltjax.model import attention as attn
from bltjax.model import splash

# (batch, T, query heads, kv heads, head_dim, window, documents)
CASES = {
    # local encoder / decoder and the entropy model: sliding window, documents, GQA, T % 128 != 0
    "window_docs_gqa": (1, 200, 4, 2, 32, 100, True),
    # global model: block-causal over 65 patches (63 padded rows in the kernel)
    "block_causal": (2, 65, 2, 2, 32, None, True),
    # plain causal (global model with global_attn="causal"), exactly one block
    "causal": (1, 128, 2, 1, 32, None, False),
}


def _inputs(b, t, n, kv, hd, docs, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, n, hd), jnp.float32)
    k = jax.random.normal(ks[1], (b, t, kv, hd), jnp.float32)
    v = jax.random.normal(ks[2], (b, t, kv, hd), jnp.float32)
    doc = None
    if docs:  # several documents per row, a new one starting at random positions
        starts = jax.random.bernoulli(ks[3], 0.04, (b, t)).at[:, 0].set(False)
        doc = jnp.cumsum(starts, axis=1).astype(jnp.int32)
    return q, k, v, doc


@pytest.mark.parametrize("case", list(CASES))
def test_splash_matches_xla_outputs_and_gradients(case):
    b, t, n, kv, hd, window, docs = CASES[case]
    q, k, v, doc = _inputs(b, t, n, kv, hd, docs)
    w_out = jax.random.normal(jax.random.key(7), (b, t, n, hd), jnp.float32)

    def out_and_grads(impl):  # one trace of forward + backward (interpret mode traces are slow)
        f = lambda q, k, v: attn.self_attention(q, k, v, doc_bt=doc, window=window, impl=impl)
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(w_out)

    out_x, g_x = out_and_grads("xla")
    out_s, g_s = out_and_grads("splash")
    assert out_s.shape == out_x.shape and bool(jnp.all(jnp.isfinite(out_s)))
    np.testing.assert_allclose(out_s, out_x, atol=2e-5, rtol=2e-5)
    for name, gx, gs in zip("qkv", g_x, g_s):
        assert bool(jnp.all(jnp.isfinite(gs))), name
        np.testing.assert_allclose(gs, gx, atol=5e-5, rtol=5e-5, err_msg=f"d{name}")


def test_splash_sees_documents_and_window():
    """The comparison above can fail: dropping the documents or the window changes the output."""
    b, t, n, kv, hd, window, _ = CASES["window_docs_gqa"]
    q, k, v, doc = _inputs(b, t, n, kv, hd, True)
    full = attn.self_attention(q, k, v, doc_bt=doc, window=window, impl="splash")
    no_docs = attn.self_attention(q, k, v, window=window, impl="xla")
    no_window = attn.self_attention(q, k, v, doc_bt=doc, impl="xla")
    assert float(jnp.max(jnp.abs(full - no_docs))) > 1e-2
    assert float(jnp.max(jnp.abs(full - no_window))) > 1e-2


def test_auto_picks_xla_on_cpu_and_unknown_impl_fails():
    assert attn.target_platform() == "cpu" and not attn._use_splash("auto")
    assert attn._use_splash("splash")
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
        attn.self_attention(q, q, q, impl="flash")


def test_shard_map_specs_follow_the_rules_table():
    devices = np.array(jax.devices()[:1] * 8).reshape(2, 2, 2)  # only the mesh shape matters here
    mesh = Mesh(devices, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        # rows over data x fsdp, heads over tensor
        qs, ss, _ = splash._specs((4, 128, 4, 32), (4, 128, 2, 32))
        assert qs == jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None)
        assert ss == jax.sharding.PartitionSpec(("data", "fsdp"), None)
        # one kv head cannot be split over tensor=2: GQA groups stay whole, heads replicated
        qs, _, _ = splash._specs((4, 128, 4, 32), (4, 128, 1, 32))
        assert qs == jax.sharding.PartitionSpec(("data", "fsdp"), None, None, None)


# ---------------------------------------------------------------------------------- TPU compile
def test_train_step_compiles_for_tpu_with_the_splash_kernel():
    """The real train step, attention_impl="auto", compiled for a 4-chip v5p topology from this CPU
    host: the Mosaic kernel (custom call ``tpu_custom_call``) is in the partitioned program."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
    from jax.experimental import topologies

    from bltjax.configs.default import get_config
    from bltjax.train_step import make_steps

    devices = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices
    mesh = Mesh(np.array(devices).reshape(2, 2, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    cfg = get_config()
    model = dataclasses.replace(cfg.model, attention_impl="auto", n_layers_local_decoder=1, n_layers_global=1)
    cfg = dataclasses.replace(cfg, model=model, seq_len=256, global_batch_size=4, precision="bfloat16")
    steps = make_steps(cfg, mesh)
    rows = sharding.batch_sharding(mesh, 2)
    batch = {name: jax.ShapeDtypeStruct((4, 256), dt, sharding=rows)
             for name, dt in (("tokens", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))}
    with jax.set_mesh(mesh):
        assert attn.target_platform() == "tpu"
        hlo = steps.train.lower(steps.abstract_state, batch, None).compile().as_text()
    # forward, dq and dkv kernels of the encoder, decoder and global self-attention
    assert hlo.count('custom_call_target="tpu_custom_call"') >= 3 * 3, hlo.count("tpu_custom_call")
