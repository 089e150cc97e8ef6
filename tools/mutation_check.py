"""Mutation check: plant small deliberate bugs in scratch copies of the repository and check that the
test suite catches every one of them.

    python tools/mutation_check.py                 # every mutation, one at a time
    python tools/mutation_check.py --jobs 2        # two scratch copies at a time
    python tools/mutation_check.py -m grad_scale_into_optimizer -m doc_mask_dropped
    python tools/mutation_check.py --list          # names, files and the tests that should catch each

Each mutation is a file, an exact snippet of it and its replacement.  The snippet must occur exactly once
(otherwise the tool stops with an error: after a refactor the list is retargeted, it cannot rot into
mutations that silently change nothing; ``tests/test_mutation_list.py`` checks this on every test run).
For each mutation the tracked files are copied to a scratch directory, the snippet is replaced, and the
test files listed for it run there with ``pytest -x`` (own ``--basetemp``, so runs are parallel-safe).
A mutation is *caught* when pytest reports failing tests (exit code 1).  Exit code: 0 when every
mutation is caught, 1 when one is missed, 2 on a tool error (snippet missing, pytest could not collect).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # exact snippet; must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, or "-k" expressions
    why: str  # the bug it stands for


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "grad_scale_into_optimizer", "bltjax/train_step.py",
        'updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])',
        'updates, opt_state = optimizer.update(jax.tree.map(lambda g: 2 * g, grads), state["opt_state"], '
        'state["params"])',
        ("tests/test_train_step_oracle.py",),
        "gradients doubled before the optimizer (clipping + AdamW nearly cancel a constant scale)"),
    Mutation(
        "grad_scale_in_accumulation", "bltjax/optim.py",
        "return loss, dict(metrics), jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)",
        "return loss, dict(metrics), jax.tree_util.tree_map(lambda g: 2 * g.astype(jnp.float32), grads)",
        ("tests/test_train_step_oracle.py",),
        "gradients (and grad_norm) doubled"),
    Mutation(
        "clip_dropped", "bltjax/optim.py",
        "parts.append(optax.clip_by_global_norm(ocfg.clip))",
        "pass",
        ("tests/test_train_step_oracle.py",),
        "global-norm clipping silently off"),
    Mutation(
        "weight_decay_dropped", "bltjax/optim.py",
        "eps=ocfg.eps,\n                             weight_decay=ocfg.weight_decay, mask=mask)",
        "eps=ocfg.eps,\n                             weight_decay=0.0, mask=mask)",
        ("tests/test_train_step_oracle.py",),
        "AdamW weight decay ignored"),
    Mutation(
        "param_norm_before_update", "bltjax/train_step.py",
        '"param_norm": optax.tree.norm(params),',
        '"param_norm": optax.tree.norm(state["params"]),',
        ("tests/test_train_step_oracle.py",),
        "param_norm metric reports the parameters before the update"),
    Mutation(
        "loss_mask_ignored", "bltjax/optim.py",
        "weight = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)",
        "weight = jnp.ones(targets.shape, jnp.float32)",
        ("tests/test_train_step_oracle.py",),
        "masked targets counted in the loss"),
    Mutation(
        "workdir_loads_oldest_checkpoint", "bltjax/workdir.py",
        "got_step, state, _ = mngr.restore(step, abstract_state=abstract)",
        "got_step, state, _ = mngr.restore(mngr.all_steps()[0] if step is None else step, abstract_state=abstract)",
        ("tests/test_train.py::test_workdir_loads_the_newest_checkpoint_with_load_pretrained",),
        "load_pretrained(workdir) / load_run pick the oldest checkpoint"),
    Mutation(
        "restore_scans_oldest_first", "bltjax/checkpoint.py",
        "for s in sorted(self._mngr.all_steps(), reverse=True):",
        "for s in sorted(self._mngr.all_steps()):",
        ("tests/test_checkpoint.py",),
        "resume restores the oldest usable checkpoint"),
    Mutation(
        "iterator_restore_skipped", "bltjax/checkpoint.py",
        "            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)",
        "            pass",
        ("tests/test_checkpoint.py",),
        "the data iterator is not repositioned on resume (batches repeat)"),
    Mutation(
        "patch_id_off_by_one", "bltjax/patcher.py",
        "(jnp.clip(ends_bp, 0, n))",
        "(jnp.clip(ends_bp - 1, 0, n))",
        ("tests/test_patcher.py",),
        "patch ids shifted by one byte"),
    Mutation(
        "decoder_off_by_one_dropped", "bltjax/patcher.py",
        "return patch_ids_from_lengths(jnp.asarray(lengths_bp)[:, 1:], n)",
        "return patch_ids_from_lengths(jnp.asarray(lengths_bp), n)",
        ("tests/test_fixture_activations.py",),
        "decoder reads the patch of byte i instead of P(i+1) - 1 (a leak of the future)"),
    Mutation(
        "hash_ngram_size_off_by_one", "bltjax/model/hashing.py",
        "for d in range(n):",
        "for d in range(n - 1):",
        ("tests/test_hashing.py",),
        "hash n-grams one byte shorter than configured"),
    Mutation(
        "doc_mask_dropped", "bltjax/model/blt.py",
        "doc = constrain(doc_ids_from_tokens(tokens_bn, cfg.eos_id), bn) if cfg.local_doc_mask else None",
        "doc = None",
        ("tests/test_doc_mask.py",),
        "local attention crosses document boundaries"),
    Mutation(
        "global_block_causal_dropped", "bltjax/model/global_model.py",
        'doc = patch_doc_ids(global_tokens_bp, cfg.eos_id) if cfg.global_attn == "block_causal" else None',
        "doc = None",
        ("tests/test_doc_mask.py",),
        "global_attn='block_causal' behaves like 'causal'"),
    Mutation(
        "window_off_by_one", "bltjax/model/attention.py",
        "allowed = allowed & (diff_ts < window)",
        "allowed = allowed & (diff_ts <= window)",
        ("tests/test_model.py", "-k", "self_attention_matches_dense_reference"),
        "sliding window one key wider than configured"),
    Mutation(
        "cross_attention_single_residual", "bltjax/model/cross_attention.py",
        "return 2 * q_bqd + linear(a, p[\"wo\"], BTD)",
        "return q_bqd + linear(a, p[\"wo\"], BTD)",
        ("tests/test_fixture_activations.py",),
        "cross-attention residual added once instead of twice (official quirk)"),
    Mutation(
        "bf16_entropy_runs_fp32", "bltjax/model/entropy_model.py",
        "logits = forward(p, cfg, chunks, dtype=dtype, attention_impl=attention_impl, boundary_id=boundary)",
        "logits = forward(params, cfg, chunks, dtype=\"float32\", attention_impl=attention_impl, "
        "boundary_id=boundary)",
        ("tests/test_fixture_activations.py", "-k", "bf16"),
        "official-realtime entropy model runs in fp32 (only the entropy arithmetic in bf16)"),
    Mutation(
        "flops_encoder_cross_kv_missing", "bltjax/config.py",
        "+ x_e * 2 * dE * dE + x_d * 2 * dD * dD + self.vocab_size * dD)",
        "+ x_d * 2 * dD * dD + self.vocab_size * dD)",
        ("tests/test_flops.py",),
        "FLOPs per byte leave out the encoder cross-attention k/v"),
    Mutation(
        "flops_backward_1x", "bltjax/config.py",
        "fwd = 2 * per_byte + 2 * per_patch / ps + attn_per_byte + attn_per_patch / ps\n"
        "        return fwd * (3.0 if training else 1.0)",
        "fwd = 2 * per_byte + 2 * per_patch / ps + attn_per_byte + attn_per_patch / ps\n"
        "        return fwd * (2.0 if training else 1.0)",
        ("tests/test_flops.py",),
        "training FLOPs count the backward pass as 1x the forward"),
    Mutation(
        "flops_global_not_divided_by_patch", "bltjax/config.py",
        "fwd = 2 * per_byte + 2 * per_patch / ps + attn_per_byte + attn_per_patch / ps",
        "fwd = 2 * per_byte + 2 * per_patch + attn_per_byte + attn_per_patch / ps",
        ("tests/test_flops.py",),
        "global model charged per byte instead of per patch"),
    Mutation(
        "entropy_flops_head_missing", "bltjax/config.py",
        "matmul_params = blocks + self.vocab_size * d",
        "matmul_params = blocks",
        ("tests/test_flops.py",),
        "entropy-model FLOPs leave out the output head"),
    Mutation(
        "generation_prompt_not_bucketed", "bltjax/padding.py",
        "    return b if cap is None else max(n, min(b, cap))",
        "    return n",
        ("tests/test_generate.py", "-k", "no_recompilation_within_bucket"),
        "every prompt length compiles its own prefill and decode loop"),
)


# ---------------------------------------------------------------------------------------------- apply
class SnippetError(RuntimeError):
    pass


def apply(root: pathlib.Path, m: Mutation) -> None:
    """Replace ``m.old`` by ``m.new`` in ``root / m.file``; SnippetError unless it occurs exactly once."""
    path = root / m.file
    if not path.is_file():
        raise SnippetError(f"{m.name}: {m.file} does not exist")
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise SnippetError(f"{m.name}: snippet found {count} times in {m.file} (must be exactly once): {m.old!r}")
    path.write_text(text.replace(m.old, m.new))


def check_snippets(root: pathlib.Path = REPO, mutations: Sequence[Mutation] = MUTATIONS) -> list[str]:
    """Problems with the list against the sources in ``root`` (empty when every snippet is there once)."""
    problems = []
    names = [m.name for m in mutations]
    if len(set(names)) != len(names):
        problems.append("duplicate mutation names")
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text().count(m.old)
        if count != 1:
            problems.append(f"{m.name}: snippet found {count} times in {m.file}")
        if m.old == m.new:
            problems.append(f"{m.name}: replacement equals the snippet")
        for t in m.tests:
            f = t.split("::")[0]
            if f.endswith(".py") and not (root / f).is_file():
                problems.append(f"{m.name}: test file {f} does not exist")
    return problems


def tracked_files(root: pathlib.Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def scratch_copy(root: pathlib.Path, dest: pathlib.Path, files: Sequence[str]) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


# ---------------------------------------------------------------------------------------------- run
@dataclasses.dataclass
class Result:
    mutation: Mutation
    status: str  # caught | missed | error
    seconds: float
    detail: str = ""


def run_one(m: Optional[Mutation], files: Sequence[str], work: pathlib.Path, timeout: float,
            tests: Optional[Sequence[str]] = None) -> tuple[int, str, float]:
    """Copy, mutate (``m`` None: baseline), run the tests; ``(pytest exit code, output tail, seconds)``."""
    name = m.name if m is not None else "baseline"
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    try:
        scratch_copy(REPO, scratch, files)
        if m is not None:
            apply(scratch, m)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(scratch) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("JAX_PLATFORMS", "cpu")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               f"--basetemp={scratch / '.pytest-tmp'}", *(tests if tests is not None else m.tests)]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            code, out = -1, f"timed out after {timeout:.0f} s\n{(e.stdout or '')[-2000:]}"
        return code, out[-3000:], time.monotonic() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(m: Mutation, files: Sequence[str], work: pathlib.Path, timeout: float) -> Result:
    try:
        code, out, secs = run_one(m, files, work, timeout)
    except SnippetError as e:
        return Result(m, "error", 0.0, str(e))
    if code == 1:
        failed = [line for line in out.splitlines() if line.startswith("FAILED")]
        return Result(m, "caught", secs, failed[0] if failed else "tests failed")
    if code == 0:
        return Result(m, "missed", secs, "all selected tests passed")
    return Result(m, "error", secs, f"pytest exit code {code}:\n{out[-1500:]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--mutation", action="append", help="run only these mutations (by name)")
    ap.add_argument("--jobs", type=int, default=1, help="scratch copies tested at the same time (default 1)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation (default 900)")
    ap.add_argument("--baseline", action="store_true",
                    help="first run every selected test subset unmutated (it must pass)")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = ap.parse_args(argv)

    selected = list(MUTATIONS)
    if args.mutation:
        unknown = set(args.mutation) - {m.name for m in MUTATIONS}
        if unknown:
            print(f"error: unknown mutation(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        selected = [m for m in MUTATIONS if m.name in args.mutation]
    if args.list:
        for m in selected:
            print(f"{m.name:34s} {m.file:32s} {' '.join(m.tests)}\n{'':34s} {m.why}")
        return 0
    problems = check_snippets(REPO, selected)
    if problems:
        print("error: the mutation list does not match the sources:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    files = tracked_files(REPO)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bltjax-mutation-"))
    try:
        if args.baseline:
            subsets = sorted({m.tests for m in selected})
            for tests in subsets:
                code, out, secs = run_one(None, files, work, args.timeout, tests)
                print(f"baseline {' '.join(tests)}: exit {code} ({secs:.0f} s)", flush=True)
                if code != 0:
                    print(out, file=sys.stderr)
                    return 2
        results: list[Result] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(check, m, files, work, args.timeout) for m in selected]
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                results.append(r)
                print(f"{r.status.upper():7s} {r.mutation.name:34s} {r.seconds:6.0f} s  "
                      f"{r.detail.splitlines()[0] if r.detail else ''}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    results.sort(key=lambda r: order[r.mutation.name])
    caught = sum(r.status == "caught" for r in results)
    print(f"\n{caught}/{len(results)} mutations caught")
    for r in results:
        if r.status != "caught":
            print(f"  {r.status}: {r.mutation.name} ({r.mutation.file}): {r.mutation.why}\n{r.detail}")
    if any(r.status == "error" for r in results):
        return 2
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
