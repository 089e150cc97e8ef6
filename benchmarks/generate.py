"""Generation throughput: cached incremental decoding vs the naive re-patch-everything loop.

Model: the design §19 CPU benchmark size (``spec19_blt_config``: 27.6 M parameters, 23 M of them hash
tables) with entropy patching driven by a small random entropy model (dim 256, 4 layers, 4 heads,
window 512 -- the shape of the global model).  Random weights; the entropy head is scaled so that
entropies spread out, and the threshold is set to the entropy quantile that gives a mean patch of
~4.5 bytes on the prompt (the paper's average).  Prompt: ``--prompt-bytes`` of English text (+ BOS),
greedy decoding of ``--new-bytes`` bytes, EOS stopping off (every run produces exactly that many).

Cached: a warm-up call compiles; then ``--repeats`` timed calls of the whole ``generate`` (prefill +
decode loop, one device call), plus the prefill alone, median reported.
Naive: the per-byte cost grows with the prefix, so by default it is measured on ``--naive-bytes``
bytes at the *start* (prefix = prompt) and at the *end* (prefix = prompt + new - naive_bytes) and the
256-byte time is extrapolated as ``new_bytes * mean(per-byte start, per-byte end)`` (exact for a
linear cost); ``--naive-full`` times the whole run instead.  Compilation is excluded everywhere.

    python benchmarks/generate.py                       # writes benchmarks/results/generate.json
    python benchmarks/generate.py --prompt-bytes 64 --new-bytes 32 --naive-bytes 8   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bltjax import tokenizer as tok_lib  # noqa: E402
from bltjax.config import PatcherConfig, TransformerConfig, spec19_blt_config  # noqa: E402
from bltjax.generation import Model, generate  # noqa: E402
from bltjax.model import blt  # noqa: E402
from bltjax.model import entropy_model as em  # noqa: E402

TEXT = (
    "The byte latent transformer reads raw bytes and groups them into patches whose boundaries are "
    "placed where the next byte is hard to predict. A small entropy model scores every position; a "
    "large global transformer then works on patches rather than on bytes, while light local models "
    "encode the bytes of a patch and decode the next bytes from the patch states. Because the "
    "patches grow where the text is predictable, the model spends its compute where it is needed. "
)


def prompt_text(n_bytes: int) -> str:
    text = (TEXT * (n_bytes // len(TEXT) + 1))[:n_bytes]
    assert len(text.encode()) == n_bytes
    return text


def build_model(prompt: str, seed: int = 0, mean_patch: float = 4.5) -> tuple[Model, dict]:
    ecfg = TransformerConfig(dim=256, n_layers=4, n_heads=4, multiple_of=256, sliding_window=512)
    k1, k2 = jax.random.split(jax.random.key(seed))
    eparams = em.init_params(ecfg, k2)
    eparams["output"] = eparams["output"] * 6.0  # spread the entropies (random init is ~uniform)
    base = PatcherConfig(mode="entropy", threshold=0.0)
    ent = np.asarray(em.compute_entropies(eparams, ecfg, base, jnp.asarray(tok_lib.encode(prompt))[None]))[0]
    thr = float(np.quantile(ent[1:], 1.0 - 1.0 / mean_patch))
    cfg = spec19_blt_config(patcher=PatcherConfig(mode="entropy", threshold=thr), entropy_model=ecfg)
    params = blt.init_params(cfg, k1)
    n_params = cfg.num_params()["total"] + ecfg.num_params()
    starts = int(np.sum(ent[1:] > thr)) + 2  # positions 0, 1 and every j >= 2 with H_{j-1} > thr
    info = dict(threshold=thr, prompt_patches=starts, prompt_mean_patch=round((len(ent) + 1) / starts, 2),
                blt_params=cfg.num_params()["total"], entropy_params=ecfg.num_params(), total_params=n_params)
    return Model(cfg, params, eparams), info


def count_patches(model: Model, text: bytes) -> int:
    """Patches of ``[BOS] + text`` with the virtual next byte (official inference patching)."""
    from bltjax import patcher as patcher_lib

    cfg = model.config
    ids = jnp.asarray(tok_lib.encode(text))[None]
    ent = em.compute_entropies(model.entropy_params, cfg.entropy_model, cfg.patcher, ids)
    lengths, _ = patcher_lib.patch_lengths(cfg.patcher, ids, ent)
    return int(np.sum(np.asarray(lengths) > 0))


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cached_prefill_time(model: Model, prompt: str, new_bytes: int, repeats: int) -> float:
    """Median time of the prefill program alone (same shapes as in ``generate``)."""
    from bltjax import generation as G
    from bltjax.model import decode
    from bltjax.padding import bucket, round_up

    cfg, params, eparams = G._prepare_model(model)
    ids = tok_lib.encode(prompt)
    lb = bucket(len(ids))
    cap = lb + round_up(new_bytes, G.CAPACITY_STEP)
    sizes = decode.DecodeSizes(prompt_len=lb, max_len=cap)
    tokens = np.zeros((1, lb), np.int32)
    tokens[0, lb - len(ids):] = ids  # right-aligned, as generate() does
    length = np.array([len(ids)], np.int32)
    run = lambda: jax.block_until_ready(G._cached_prefill(params, eparams, tokens, length, cfg=cfg, sizes=sizes))
    run()
    return statistics.median(timed(run, repeats))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-bytes", type=int, default=512)
    ap.add_argument("--new-bytes", type=int, default=256)
    ap.add_argument("--naive-bytes", type=int, default=16, help="bytes per naive measurement window")
    ap.add_argument("--naive-full", action="store_true", help="time the full naive run (slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "generate.json"))
    args = ap.parse_args(argv)

    prompt = prompt_text(args.prompt_bytes)
    model, info = build_model(prompt)
    kw = dict(max_new_bytes=args.new_bytes, stop_at_eos=False)

    # ---- cached
    t0 = time.perf_counter()
    first = generate(model, prompt, **kw)[0]
    cached_compile = time.perf_counter() - t0
    cached_times = timed(lambda: generate(model, prompt, **kw), args.repeats)
    cached_total = statistics.median(cached_times)
    prefill = cached_prefill_time(model, prompt, args.new_bytes, args.repeats)
    assert len(first.tokens) == args.new_bytes

    # ---- naive
    nb = min(args.naive_bytes, args.new_bytes)
    if args.naive_full:
        generate(model, prompt, method="naive", **kw)  # compiles every prefix bucket
        naive_total = statistics.median(timed(lambda: generate(model, prompt, method="naive", **kw), 1))
        naive_mode = f"full run of {args.new_bytes} bytes"
        per_start = per_end = naive_total / args.new_bytes
    else:
        end_prompt = first.prompt + first.completion[: args.new_bytes - nb]  # prefix at the end of the run
        per = []
        for p in (prompt, end_prompt):
            generate(model, p, method="naive", max_new_bytes=nb, stop_at_eos=False)  # compile
            t = statistics.median(timed(lambda: generate(model, p, method="naive", max_new_bytes=nb,
                                                         stop_at_eos=False), args.repeats))
            per.append(t / nb)
        per_start, per_end = per
        naive_total = args.new_bytes * (per_start + per_end) / 2
        naive_mode = (f"extrapolated: {nb} bytes timed at prefix {len(prompt.encode()) + 1} and at prefix "
                      f"{len(end_prompt) + 1}, total = {args.new_bytes} x mean per-byte time")
    # parity sanity check on the first bytes (greedy): naive == cached
    check = generate(model, prompt, method="naive", max_new_bytes=nb, stop_at_eos=False)[0]
    parity = bool(np.array_equal(check.tokens, first.tokens[:nb]))

    res = dict(
        model="spec19_blt_config + entropy model dim256x4L (random weights)", **info,
        prompt_bytes=args.prompt_bytes, new_bytes=args.new_bytes, batch=1, greedy=True,
        cached=dict(total_s=cached_total, bytes_per_s=args.new_bytes / cached_total, runs_s=cached_times,
                    prefill_s=prefill, decode_bytes_per_s=args.new_bytes / max(cached_total - prefill, 1e-9),
                    first_call_incl_compile_s=cached_compile),
        naive=dict(total_s=naive_total, bytes_per_s=args.new_bytes / naive_total, per_byte_s_start=per_start,
                   per_byte_s_end=per_end, method=naive_mode),
        speedup=naive_total / cached_total, greedy_parity_first_bytes=parity,
        generated_patches=count_patches(model, first.prompt + first.completion) - info["prompt_patches"],
        env=dict(jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices()[0]),
                 cpu_count=os.cpu_count(), machine=platform.machine(),
                 loadavg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None),
        command="python benchmarks/generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")

    print(f"model: {res['model']}, {info['total_params'] / 1e6:.1f} M params, threshold {info['threshold']:.3f}, "
          f"prompt mean patch {info['prompt_mean_patch']} bytes")
    print(f"prompt {args.prompt_bytes} bytes, {args.new_bytes} new bytes, batch 1, greedy, "
          f"backend {jax.default_backend()}")
    print(f"{'path':<8} {'total s':>9} {'bytes/s':>9}  notes")
    print(f"{'cached':<8} {cached_total:9.3f} {args.new_bytes / cached_total:9.1f}  prefill {prefill:.3f} s, "
          f"decode {res['cached']['decode_bytes_per_s']:.1f} bytes/s")
    print(f"{'naive':<8} {naive_total:9.3f} {args.new_bytes / naive_total:9.1f}  {naive_mode}")
    print(f"speedup cached / naive: {res['speedup']:.1f}x  (greedy parity on first {nb} bytes: {parity}); "
          f"{res['generated_patches']} patches generated (global-model steps of the cached path)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from bltjax import hugepages

    hugepages.reexec()  # the same process setting as the bltjax command-line tools
    sys.exit(main())
