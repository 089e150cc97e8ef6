"""Train-step and forward throughput of the spec §19 CPU anchor model (27.6M parameters).

    python benchmarks/train_step.py [--steps 12] [--warmup 3] [--out benchmarks/results/train_step.json]

Protocol (same as the official-code measurement in spec §19): batch 4 x 1024 random bytes (BOS at 0),
data-loader style static patches [1, 4, 4, ..., 4] (P = 257), AdamW (lr 4e-4, beta 0.9/0.95, wd 0.1,
clip 1.0) on fp32 weights, median over ``--steps`` timed steps after ``--warmup`` warm-up steps, plus
forward-only (logits) throughput.  Two differences from the official run, both in its favour:
the official CPU path drops the 512-byte window and EOS masks (plain causal sdpa); bltjax keeps them
(block-local windowed attention), and bltjax's cross-attention is exact per patch.
Also reports XLA's FLOP count of the compiled step and the achieved GFLOP/s.  Like the bltjax command
line tools, the script re-executes itself once with transparent huge pages for malloc
(``bltjax/hugepages.py``; ``BLTJAX_HUGEPAGES=0`` measures without).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import sharding, train_step
from bltjax.config import PatcherConfig, spec19_blt_config
from bltjax.model import blt
from bltjax.train_config import OptimConfig, TrainConfig

OFFICIAL = {"train_bytes_per_s": (3070, 3360), "forward_bytes_per_s": (6900, 9000)}  # spec §19, 2-core box


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def timed(fn, steps: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


@dataclasses.dataclass
class Spec19:
    """The spec §19 model and optimizer with a fixed random batch; run it under ``jax.set_mesh(mesh)``."""

    cfg: TrainConfig
    mesh: Any
    steps: Any
    batch: dict
    state: dict

    def train_once(self) -> jax.Array:
        self.state, metrics = self.steps.train(self.state, self.batch, None)
        return metrics["loss"]


def spec19_setup(batch: int = 4, seq_len: int = 1024, precision: str = "float32") -> Spec19:
    """Batch ``batch`` x ``seq_len`` random bytes (BOS at 0), static patches [1, 4, 4, ...], AdamW."""
    model = spec19_blt_config(patcher=PatcherConfig(mode="static", patch_size=4, threshold=None))
    cfg = TrainConfig(model=model, seq_len=seq_len, global_batch_size=batch, steps=1000,
                      precision=precision, optim=OptimConfig(lr=4e-4, warmup_steps=2), tensorboard=False)
    mesh = sharding.make_mesh(sharding.MeshConfig(ici_fsdp=1), devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260, size=(batch, seq_len + 1)).astype(np.int32)
    tokens[:, 0] = 1
    data = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones_like(tokens[:, 1:], bool),
            "segment_ids": np.zeros_like(tokens[:, 1:])}
    with jax.set_mesh(mesh):
        steps = train_step.make_steps(cfg, mesh)
        return Spec19(cfg=cfg, mesh=mesh, steps=steps, batch=jax.device_put(data),
                      state=steps.init(jax.random.key(0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "train_step.json"))
    args = ap.parse_args(argv)

    setup = spec19_setup(args.batch, args.seq_len, args.precision)
    batch = setup.batch
    n_bytes = args.batch * args.seq_len
    with jax.set_mesh(setup.mesh):
        train_flops = flops_of(setup.steps.train, setup.state, batch, None)
        t0 = time.perf_counter()
        jax.block_until_ready(setup.train_once())
        first = time.perf_counter() - t0
        train_times = timed(setup.train_once, args.steps, args.warmup)

        resolved = setup.cfg.resolved_model()
        lengths = jnp.asarray([[1] + [4] * (args.seq_len // 4)] * args.batch, jnp.int32)
        fwd = jax.jit(lambda p, t, l: blt.forward(p, resolved, t, l))
        fwd_flops = flops_of(fwd, setup.state["params"], batch["tokens"], lengths)
        fwd_times = timed(lambda: fwd(setup.state["params"], batch["tokens"], lengths), args.steps, args.warmup)

    med_t, med_f = statistics.median(train_times), statistics.median(fwd_times)
    result = {
        "config": "spec §19: 27.6M params, batch 4 x 1024 bytes, static patches of 4",
        "params": int(sum(x.size for x in jax.tree.leaves(setup.state["params"]))),
        "precision": args.precision,
        "train_step_s_median": med_t, "train_step_s_min": min(train_times),
        "train_bytes_per_s": n_bytes / med_t,
        "forward_s_median": med_f, "forward_s_min": min(fwd_times),
        "forward_bytes_per_s": n_bytes / med_f,
        "first_step_s_incl_compile": first,
        "train_gflop_per_step_xla": train_flops / 1e9, "forward_gflop_xla": fwd_flops / 1e9,
        "train_gflop_per_s": train_flops / med_t / 1e9, "forward_gflop_per_s": fwd_flops / med_f / 1e9,
        "official_pytorch_spec19": OFFICIAL,
        "speedup_vs_official_train": (n_bytes / med_t) / statistics.mean(OFFICIAL["train_bytes_per_s"]),
        "speedup_vs_official_forward": (n_bytes / med_f) / statistics.mean(OFFICIAL["forward_bytes_per_s"]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
                    "device": str(jax.devices()[0].device_kind)},
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "steps": args.steps, "warmup": args.warmup,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"train  : {med_t:.3f} s/step (min {min(train_times):.3f})  {n_bytes / med_t:,.0f} bytes/s  "
          f"{train_flops / med_t / 1e9:.1f} GFLOP/s   official {OFFICIAL['train_bytes_per_s']} bytes/s")
    print(f"forward: {med_f:.3f} s      (min {min(fwd_times):.3f})  {n_bytes / med_f:,.0f} bytes/s  "
          f"{fwd_flops / med_f / 1e9:.1f} GFLOP/s   official {OFFICIAL['forward_bytes_per_s']} bytes/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from bltjax import hugepages

    hugepages.reexec()  # the same process setting as the bltjax command-line tools
    sys.exit(main())
