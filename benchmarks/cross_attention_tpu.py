"""Cross-attention on TPU: today's per-patch gather vs. the splash kernel, from compiled TPU programs.

Compiles (from a CPU host with ``libtpu``; no TPU needed) forward + backward of one encoder
cross-attention (k patch query slots per patch attend the bytes of their patch) and one decoder
cross-attention (each byte attends the k slots of one patch) for one chip of a v5p, at the per-chip
shapes of ``experiments/blt_paper.py:1b`` by default (1 row of 16384 bytes, 4096 patches, k=2, 16 heads of
64).  Two implementations:

* ``gather``: ``attention.patch_query_attention`` / ``byte_query_attention`` (what bltjax runs):
  work O(N * k * d);
* ``splash``: the splash kernel with a full (non-causal) mask and the patch ids as segment ids --
  the only way to express "same patch" to it.  Splash skips blocks from its *static* mask only, and
  patch boundaries are data, so it visits every (query block, key block) pair: work O(P*k * N * d).
  (Its result would also be undefined on empty patches: rows without any allowed key.)

XLA's cost analysis does not see inside a Mosaic kernel, so the kernel's FLOPs are counted from the
blocks it visits (``4 * block_q * block_kv * head_dim`` per block and head for QK^T and PV, three
times that for forward + backward).  Writes ``benchmarks/results/cross_attention_tpu.json``.

    python benchmarks/cross_attention_tpu.py
    python benchmarks/cross_attention_tpu.py --bytes 4096 --patches 1024     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # noqa: E402
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from bltjax.model import attention as attn  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results" / "cross_attention_tpu.json"


def _splash(q_len: int, kv_len: int, heads: int, block: int):
    mask = sm.MultiHeadMask([sm.FullMask((q_len, kv_len))] * heads)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1)


def compile_one(fn, args, mesh):
    spec = lambda a: NamedSharding(mesh, PartitionSpec(*([None] * a.ndim)))
    abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=spec(a)) for a in args]
    t0 = time.time()
    c = jax.jit(fn).lower(*abstract).compile()
    hlo = c.as_text()
    return {"temp_bytes": int(c.memory_analysis().temp_size_in_bytes),
            "xla_flops": float(c.cost_analysis().get("flops", 0.0)),
            "mosaic_kernels": hlo.count('custom_call_target="tpu_custom_call"'),
            "compile_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="v5p:1x1x1")
    ap.add_argument("--bytes", type=int, default=16384)
    ap.add_argument("--patches", type=int, default=4096)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    devices = topologies.get_topology_desc(topology_name=a.topology, platform="tpu").devices
    mesh = Mesh(np.array(devices[:1]).reshape(1), ("x",))
    n, p, k, h, hd = a.bytes, a.patches, a.k, a.heads, a.head_dim
    s = p * k
    bf = jnp.bfloat16
    slots = jnp.zeros((1, s, h, hd), bf)
    byts = jnp.zeros((1, n, h, hd), bf)
    pid = jnp.zeros((1, n), jnp.int32)
    slot_pid = jnp.repeat(jnp.arange(p, dtype=jnp.int32), k)

    def grad_of(f):
        return jax.grad(lambda q, kk, v, ids: jnp.sum(f(q, kk, v, ids).astype(jnp.float32)), argnums=(0, 1, 2))

    enc_gather = grad_of(lambda q, kk, v, ids: attn.patch_query_attention(q, kk, v, ids, p, k))
    dec_gather = grad_of(lambda q, kk, v, ids: attn.byte_query_attention(q, kk, v, ids, p, k))
    enc_kernel, dec_kernel = _splash(s, n, h, a.block), _splash(n, s, h, a.block)

    def enc_splash(q, kk, v, ids):
        seg = sk.SegmentIds(slot_pid, ids[0])
        t = lambda x: jnp.swapaxes(x[0], 0, 1)
        return jnp.swapaxes(enc_kernel(t(q), t(kk), t(v), segment_ids=seg), 0, 1)[None]

    def dec_splash(q, kk, v, ids):
        seg = sk.SegmentIds(ids[0], slot_pid)
        t = lambda x: jnp.swapaxes(x[0], 0, 1)
        return jnp.swapaxes(dec_kernel(t(q), t(kk), t(v), segment_ids=seg), 0, 1)[None]

    blocks = (s // a.block) * (n // a.block)  # every pair: the full mask has no empty block
    kernel_flops = 3 * 4 * blocks * a.block * a.block * hd * h
    results = {
        "shapes": dict(bytes=n, patches=p, k=k, heads=h, head_dim=hd, block=a.block, topology=a.topology),
        "encoder": {"gather": compile_one(enc_gather, (slots, byts, byts, pid), mesh),
                    "splash": compile_one(grad_of(enc_splash), (slots, byts, byts, pid), mesh)},
        "decoder": {"gather": compile_one(dec_gather, (byts, slots, slots, pid), mesh),
                    "splash": compile_one(grad_of(dec_splash), (byts, slots, slots, pid), mesh)},
        "splash_blocks_visited": blocks,
        "splash_kernel_flops_fwd_bwd": float(kernel_flops),
        "gather_flops_fwd_bwd_analytic": float(3 * 4 * n * k * hd * h),
    }
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
