"""Train-step and forward throughput of the 27.6M-parameter CPU benchmark model, optionally next to a peer.

    python benchmarks/train_step.py [--steps 12] [--warmup 3] [--out benchmarks/results/train_step.json]
    python benchmarks/train_step.py --peer hf --peer-python PYTHON   # or $BLTJAX_PEER_PYTHON
    python benchmarks/train_step.py --dry-run      # tiny model, a few steps: checks the code path in seconds

Model: ``spec19_blt_config()`` (local models dim 128, global dim 256 x 4 layers, 6 hash tables of
30,000 rows; 27.6M parameters).  Batch 4 x 1024 random bytes (BOS at 0), data-loader style static
patches [1, 4, 4, ..., 4] (P = 257), AdamW (lr 4e-4, beta 0.9/0.95, wd 0.1, clip 1.0) on fp32 weights.
Reports the median over ``--steps`` timed steps after ``--warmup`` warm-up steps, for the train step and
for the forward pass (logits), XLA's FLOP count of both and the achieved GFLOP/s.

``--peer hf`` times Hugging Face ``transformers``' ``BltForCausalLM`` (PyTorch, CPU) on the same
configuration, the same batch and the same patch lengths (weights are independent random draws).  The
peer runs in its own process (``benchmarks/hf_peer.py``, driven over stdin/stdout JSON lines): this
Python when it has ``torch`` and ``transformers`` (``pip install -e '.[bench]' torch``), else the
interpreter given by ``--peer-python`` / ``BLTJAX_PEER_PYTHON``, which needs only those two packages.
The timed steps are split into ``--rounds`` rounds that alternate between the two (bltjax first in
even rounds, the peer first in odd ones), so a change of machine load hits both.  Only one side runs
at a time.

Every result carries the CPU model, the logical core count and the AVX flags (``/proc/cpuinfo``) and the
load average before and after.  Like the bltjax command line tools, the script re-executes itself once
with transparent huge pages for malloc (``bltjax/hugepages.py``; ``BLTJAX_HUGEPAGES=0`` measures
without); the peer inherits the same environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import sharding, train_step
from bltjax.config import BLTConfig, PatcherConfig, ffn_hidden_dim, spec19_blt_config, tiny_blt_config
from bltjax.model import blt
from bltjax.train_config import OptimConfig, TrainConfig

HERE = pathlib.Path(__file__).resolve().parent
PEER_SCRIPTS = {"hf": HERE / "hf_peer.py"}
ADAMW = {"lr": 4e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "clip": 1.0}


# ---------------------------------------------------------------- machine
def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model name, logical core count and AVX flags from ``/proc/cpuinfo`` (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags, processors = platform.processor() or "unknown", set(), 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processors += 1
        elif key == "model name":
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
    avx = sorted(f for f in flags if f.startswith("avx") or f in ("fma", "amx_bf16", "amx_tile"))
    return {"model": model, "logical_cores": processors or os.cpu_count(), "avx_flags": avx,
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- bltjax side
def flops_of(compiled) -> float:
    """XLA's FLOP count of a compiled computation."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def run_timed(fn: Callable[[], Any], steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def static_patch_lengths(batch: int, seq_len: int, patch_size: int = 4) -> np.ndarray:
    """Data-loader style static patches: BOS alone, then ``patch_size`` bytes each (sums to N + 1)."""
    if seq_len % patch_size:
        raise ValueError(f"--seq-len {seq_len} must be a multiple of the patch size {patch_size}")
    return np.asarray([[1] + [patch_size] * (seq_len // patch_size)] * batch, np.int32)


def random_batch(batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 260, size=(batch, seq_len + 1)).astype(np.int32)
    tokens[:, 0] = 1
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones_like(tokens[:, 1:], bool),
            "segment_ids": np.zeros_like(tokens[:, 1:])}


@dataclasses.dataclass
class Spec19:
    """The benchmark model and optimizer with a fixed random batch; run it under ``jax.set_mesh(mesh)``."""

    cfg: TrainConfig
    mesh: Any
    steps: Any
    batch: dict
    state: dict

    def train_once(self) -> jax.Array:
        self.state, metrics = self.steps.train(self.state, self.batch, None)
        return metrics["loss"]


def bench_config(batch: int = 4, seq_len: int = 1024, precision: str = "float32",
                 model: Optional[BLTConfig] = None) -> TrainConfig:
    """The benchmark's training config: ``model`` (default the design §19 model), static patches, AdamW."""
    if model is None:
        model = spec19_blt_config(patcher=PatcherConfig(mode="static", patch_size=4, threshold=None))
    return TrainConfig(model=model, seq_len=seq_len, global_batch_size=batch, steps=1000, precision=precision,
                       optim=OptimConfig(lr=ADAMW["lr"], warmup_steps=2), tensorboard=False)


def spec19_setup(batch: int = 4, seq_len: int = 1024, precision: str = "float32",
                 model: Optional[BLTConfig] = None) -> Spec19:
    """Batch ``batch`` x ``seq_len`` random bytes (BOS at 0), static patches [1, 4, 4, ...], AdamW."""
    cfg = bench_config(batch, seq_len, precision, model)
    mesh = sharding.make_mesh(sharding.MeshConfig(ici_fsdp=1), devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        steps = train_step.make_steps(cfg, mesh)
        return Spec19(cfg=cfg, mesh=mesh, steps=steps, batch=jax.device_put(random_batch(batch, seq_len)),
                      state=steps.init(jax.random.key(0)))


# ---------------------------------------------------------------- the peer
def hf_config_dict(m: BLTConfig) -> dict[str, Any]:
    """``transformers.BltConfig`` keyword arguments for the same architecture as ``m`` (no patcher)."""
    if m.cross_attn_nheads not in (m.n_heads_local_encoder, m.n_heads_local_decoder) or \
            m.n_heads_local_encoder != m.n_heads_local_decoder:
        raise ValueError("the HF port uses the local models' head count for cross-attention: "
                         "cross_attn_nheads must equal n_heads_local_encoder = n_heads_local_decoder")
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}

    def local(dim: int, heads: int, layers: int, all_layers: bool) -> dict[str, Any]:
        # the local masks come from encoder_config.sliding_window (the decoder reuses the encoder's mask)
        return dict(hidden_size=dim, num_attention_heads=heads, num_key_value_heads=m.n_kv_heads or heads,
                    num_hidden_layers=layers, rms_norm_eps=m.norm_eps,
                    intermediate_size=ffn_hidden_dim(dim, m.multiple_of, m.ffn_dim_multiplier),
                    max_position_embeddings=m.max_encoder_seq_length, cross_attn_all_layers=all_layers,
                    cross_attn_k=m.cross_attn_k, hidden_size_global=m.dim_global,
                    sliding_window=m.local_attention_window_len, rope_parameters=rope)

    return dict(
        vocab_size=m.vocab_size, max_position_embeddings=m.max_seqlen, patch_in_forward=False,
        patch_size=m.patcher.patch_size, local_attention_window_len=m.local_attention_window_len,
        cross_attn_k=m.cross_attn_k, encoder_hash_byte_group_size=list(m.encoder_hash_byte_group_size),
        encoder_hash_byte_group_vocab=m.encoder_hash_byte_group_vocab,
        encoder_hash_byte_group_nb_functions=m.encoder_hash_byte_group_nb_functions,
        tie_word_embeddings=False, rope_parameters=rope,
        encoder_config=local(m.dim_local_encoder, m.n_heads_local_encoder, m.n_layers_local_encoder,
                             m.cross_attn_all_layers_encoder),
        decoder_config={k: v for k, v in local(m.dim_local_decoder, m.n_heads_local_decoder,
                                               m.n_layers_local_decoder, m.cross_attn_all_layers_decoder).items()
                        if k != "sliding_window"},
        global_config=dict(hidden_size=m.dim_global, num_attention_heads=m.n_heads_global,
                           num_key_value_heads=m.n_kv_heads_global or m.n_heads_global,
                           num_hidden_layers=m.n_layers_global, rms_norm_eps=m.norm_eps,
                           intermediate_size=ffn_hidden_dim(m.dim_global, m.multiple_of, m.ffn_dim_multiplier),
                           max_position_embeddings=m.max_seqlen, rope_parameters=rope),
    )


class PeerError(RuntimeError):
    pass


class Peer:
    """A peer worker process spoken to with one JSON line per request and per reply."""

    def __init__(self, argv: list[str], timeout_s: float = 1800.0) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.timeout_s = timeout_s

    def request(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise PeerError(f"peer {self.argv} exited (code {self.proc.poll()})") from e
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"peer {self.argv} exited without answering {req['cmd']!r} (code {self.proc.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PeerError(f"peer {req['cmd']!r} failed: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(cmd="quit")
            except (PeerError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- the comparison
def summary(times: list[float], n_bytes: int) -> dict[str, float]:
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "bytes_per_s": n_bytes / med, "n": len(times)}


def rounds_plan(steps: int, rounds: int) -> list[int]:
    """Timed steps per round, ``steps`` in all, as even as possible."""
    rounds = max(1, min(rounds, steps))
    return [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per side and measurement (default 12)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4 with a peer, else 1)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--peer", choices=["none", "hf"], default="none",
                    help="also time this implementation in the same run (hf: transformers' BltForCausalLM)")
    ap.add_argument("--peer-python", default=os.environ.get("BLTJAX_PEER_PYTHON"),
                    help="interpreter with torch + transformers for the peer (env BLTJAX_PEER_PYTHON; "
                         "default: this one, when it has both)")
    ap.add_argument("--peer-command", default=None, help=argparse.SUPPRESS)  # tests: a fake peer
    ap.add_argument("--threads", type=int, default=None, help="peer threads (default: usable cores)")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny model (batch 2 x 64), 2 steps: checks the whole code path in seconds")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/train_step[_peer].json)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tiny = args.dry_run
    steps = args.steps or (2 if tiny else 12)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    rounds = args.rounds or (2 if tiny else 4 if args.peer != "none" else 1)
    batch, seq_len = args.batch or (2 if tiny else 4), args.seq_len or (64 if tiny else 1024)
    peer_argv = None
    if args.peer != "none":
        if args.peer_command:
            peer_argv = args.peer_command.split()
        elif args.peer_python:
            peer_argv = [args.peer_python, str(PEER_SCRIPTS[args.peer])]
        elif all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
            peer_argv = [sys.executable, str(PEER_SCRIPTS[args.peer])]
        else:
            print("error: --peer hf needs torch and transformers in this Python (pip install -e '.[bench]' "
                  "torch) or another interpreter that has them (--peer-python PYTHON or BLTJAX_PEER_PYTHON)",
                  file=sys.stderr)
            return 2
    out = pathlib.Path(args.out or HERE / "results" / f"train_step{'_peer' if peer_argv else ''}"
                       f"{'_dryrun' if tiny else ''}.json")

    model = tiny_blt_config() if tiny else None
    load_before = loadavg()
    resolved = bench_config(batch, seq_len, args.precision, model).resolved_model()
    data = random_batch(batch, seq_len)
    lengths_np = static_patch_lengths(batch, seq_len, resolved.patcher.patch_size)
    n_bytes = batch * seq_len

    peer = None
    peer_info: dict[str, Any] = {}
    try:
        sides: dict[str, dict[str, Callable[[int], list[float]]]] = {}
        if peer_argv:  # first, so that a broken peer stops the run before any compilation
            peer = Peer(peer_argv)
            peer_info = peer.request(cmd="setup", config=hf_config_dict(resolved), tokens=data["tokens"].tolist(),
                                     targets=data["targets"].tolist(), patch_lengths=lengths_np.tolist(),
                                     optim=ADAMW, threads=args.threads or cpu_info()["affinity_cores"] or 1,
                                     seed=0)
            peer_info.pop("ok", None)
            sides["peer"] = {"train": lambda k: peer.request(cmd="train", steps=k)["times"],
                             "forward": lambda k: peer.request(cmd="forward", steps=k)["times"]}
            for kind in ("train", "forward"):  # warm-up, untimed
                if warmup:
                    sides["peer"][kind](warmup)
        setup = spec19_setup(batch, seq_len, args.precision, model)
        lengths = jnp.asarray(lengths_np)
        with jax.set_mesh(setup.mesh):
            train_compiled = setup.steps.train.lower(setup.state, setup.batch, None).compile()
            train_flops = flops_of(train_compiled)
            fwd = jax.jit(lambda p, t, lengths: blt.forward(p, resolved, t, lengths))
            fwd_compiled = fwd.lower(setup.state["params"], setup.batch["tokens"], lengths).compile()
            fwd_flops = flops_of(fwd_compiled)

            def train_once():
                setup.state, metrics = train_compiled(setup.state, setup.batch, None)
                return metrics["loss"]

            t0 = time.perf_counter()
            jax.block_until_ready(train_once())
            first = time.perf_counter() - t0
            sides = {"bltjax": {"train": lambda k: run_timed(train_once, k),
                                "forward": lambda k: run_timed(
                                    lambda: fwd_compiled(setup.state["params"], setup.batch["tokens"], lengths), k)},
                     **sides}
            for kind in ("train", "forward"):  # warm-up, untimed
                if warmup:
                    sides["bltjax"][kind](warmup)
            times = {name: {"train": [], "forward": []} for name in sides}
            schedule = []
            for r, k in enumerate(rounds_plan(steps, rounds)):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for kind in ("train", "forward"):
                    for name in order:
                        times[name][kind] += sides[name][kind](k)
                        schedule.append(f"{r}:{name}:{kind}:{k}")
            peer_loss = peer.request(cmd="train", steps=1)["loss"] if peer else None
    finally:
        if peer:
            peer.close()
    load_after = loadavg()

    result: dict[str, Any] = {
        "config": ("tiny_blt_config (dry run)" if tiny else "spec19_blt_config: 27.6M params") +
                  f", batch {batch} x {seq_len} bytes, static patches of {resolved.patcher.patch_size}",
        "params": int(sum(x.size for x in jax.tree.leaves(setup.state["params"]))),
        "precision": args.precision, "batch": batch, "seq_len": seq_len,
        "patch_lengths_row": lengths_np[0].tolist(),
        "bltjax": {"train": summary(times["bltjax"]["train"], n_bytes),
                   "forward": summary(times["bltjax"]["forward"], n_bytes),
                   "first_step_s_after_compile": first,
                   "train_gflop_per_step_xla": train_flops / 1e9, "forward_gflop_xla": fwd_flops / 1e9},
        "steps": steps, "warmup": warmup, "rounds": len(rounds_plan(steps, rounds)), "schedule": schedule,
        "cpu": cpu_info(), "loadavg_before": load_before, "loadavg_after": load_after,
        "machine": {"platform": platform.platform(), "jax": jax.__version__,
                    "device": str(jax.devices()[0].device_kind)},
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    b = result["bltjax"]
    b["train_gflop_per_s"] = train_flops / b["train"]["median_s"] / 1e9
    b["forward_gflop_per_s"] = fwd_flops / b["forward"]["median_s"] / 1e9
    if peer_argv:
        result["peer"] = {"name": args.peer, **peer_info, "train": summary(times["peer"]["train"], n_bytes),
                          "forward": summary(times["peer"]["forward"], n_bytes), "last_loss": peer_loss}
        result["speedup_bltjax_over_peer"] = {
            kind: result["peer"][kind]["median_s"] / b[kind]["median_s"] for kind in ("train", "forward")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {out}")
    return 0


def report(result: dict[str, Any]) -> str:
    """The side-by-side table printed at the end."""
    cpu = result["cpu"]
    lines = [f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores ({cpu['affinity_cores']} usable), "
             f"{' '.join(cpu['avx_flags']) or 'no AVX'}; load {result['loadavg_before']} -> {result['loadavg_after']}",
             f"{result['config']}, {result['params'] / 1e6:.1f}M params, {result['precision']}, median of "
             f"{result['steps']} steps in {result['rounds']} rounds after {result['warmup']} warm-up"]
    names = ["bltjax"] + (["peer"] if "peer" in result else [])
    label = {"bltjax": "bltjax", "peer": f"{result.get('peer', {}).get('name', '')} peer"}
    header = f"{'':9}" + "".join(f"{label[n]:>26}" for n in names) + ("  peer/bltjax time" if len(names) > 1 else "")
    lines.append(header)
    for kind in ("train", "forward"):
        row = f"{kind:9}"
        for n in names:
            s = result[n][kind]
            row += f"{s['median_s']:>9.3f} s {s['bytes_per_s']:>9,.0f} B/s   "
        if len(names) > 1:
            row += f"{result['speedup_bltjax_over_peer'][kind]:>8.2f}x"
        lines.append(row)
    if "peer" in result:
        p = result["peer"]
        lines.append(f"peer: torch {p.get('torch')}, transformers {p.get('transformers')}, "
                     f"{p.get('threads')} threads, {p.get('params', 0) / 1e6:.1f}M params")
    return "\n".join(lines)


if __name__ == "__main__":
    from bltjax import hugepages

    hugepages.reexec()  # the same process setting as the bltjax command-line tools
    sys.exit(main())
