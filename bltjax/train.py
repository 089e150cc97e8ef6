"""Train a BLT (or its entropy model): ``python -m bltjax.train --config experiments/<name>.py``.

    python -m bltjax.train                                    # embedded corpus, small model, ~minutes on CPU
    python -m bltjax.train --config experiments/tiny_shakespeare.py --set optim.lr=2e-3 --workdir runs/ts
    python -m bltjax.train --config experiments/blt_paper.py:1b --distributed   # TPU pod / Slurm: every host

Workdir layout: see ``bltjax.workdir`` (``config.json``, ``run.json``, ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/<step>/``).  Starting again with the same workdir resumes from the newest complete
checkpoint, on any mesh shape or process count; a changed model shape is refused.

Exit codes (see docs/reliability.md): 0 done (or stopped cleanly by SIGTERM / Ctrl-C after saving); 2 bad
input / config, an OS error on a path, a failed save, a lost peer process (one line ``error: ...`` on
stderr, nothing written before validation); 3 the loss became NaN/inf (the last good checkpoint is
kept, nothing is saved after the divergence); 130 a second Ctrl-C (abort without saving).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Optional

from bltjax import workdir as workdir_lib
from bltjax.run_setup import DEFAULT_CONFIG, PACKAGE_DIR, build_mesh, check_mesh_batch, config_path, resolve_config  # noqa: F401
from bltjax.storage import bucket_error
from bltjax.train_loop import (  # noqa: F401
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_USAGE,
    Diverged,
    Setup,
    StopFlag,
    UsageError,
    check_compatible,
    compile_steps,
    log,
    make_data_iterator,
    one_line,
    run,
)

DEFAULT_COMPILE_CACHE = pathlib.Path.home() / ".cache" / "bltjax" / "jax-compile-cache"


# ====================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bltjax.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="experiment file defining get_config() (default: the packaged default experiment), "
                        "optionally FILE.py:ARG for get_config(ARG); a bare name like 'tiny_shakespeare' means "
                        "experiments/<name>.py of this checkout")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--workdir", default=None, help="run directory (default: config workdir, else ./runs/<name>)")
    p.add_argument("--compile-cache", default=None,
                   help="persistent XLA compile cache dir ('none' disables; default $JAX_COMPILATION_CACHE_DIR "
                        "or ~/.cache/bltjax/jax-compile-cache)")
    g = p.add_argument_group("multi-process (one command per process)")
    g.add_argument("--distributed", action="store_true",
                   help="join a cluster auto-detected by JAX (Cloud TPU pods, Slurm, Open MPI, GKE)")
    g.add_argument("--coordinator", default=os.environ.get("BLTJAX_COORDINATOR"),
                   help="HOST:PORT of process 0 (env BLTJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, default=_env_int("BLTJAX_NUM_PROCESSES"),
                   help="process count (env BLTJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=_env_int("BLTJAX_PROCESS_ID"),
                   help="this process's index (env BLTJAX_PROCESS_ID)")
    return p


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def init_runtime(args: argparse.Namespace) -> None:
    """Compile cache and (optionally) the multi-process runtime; before any JAX computation."""
    import jax

    cache = args.compile_cache if args.compile_cache is not None else os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache is None:
        cache = str(DEFAULT_COMPILE_CACHE)
    if cache.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", cache)
    from bltjax import distributed

    explicit = any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))
    if explicit:
        if None in (args.coordinator, args.num_processes, args.process_id):
            raise UsageError("--coordinator, --num-processes and --process-id must be given together")
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        distributed.initialize()


# ====================================================================== setup (no writes)


def check_resume(cfg, workdir: pathlib.Path) -> bool:
    """True when ``workdir`` holds checkpoints; refuse a changed model shape (UsageError)."""
    from bltjax.train_config import config_to_dict

    has_ckpt = workdir_lib.has_checkpoints(workdir)
    saved = workdir_lib.config_file(workdir)
    if has_ckpt and saved.is_file():
        try:
            old = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{saved} is unreadable ({one_line(e)}); fix or remove it to resume") from e
        check_compatible(old, config_to_dict(cfg), workdir)
    elif has_ckpt:  # config.json lost: the config saved with the newest complete checkpoint decides
        old = checkpoint_config(workdir_lib.checkpoint_dir(workdir))
        if old is not None:
            check_compatible(old, config_to_dict(cfg), workdir)
    return has_ckpt


def checkpoint_config(ckpt: pathlib.Path) -> Optional[dict]:
    """The resolved config stored in the metadata of the newest complete checkpoint step (or None)."""
    steps = sorted((p for p in ckpt.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists()),
                   key=lambda p: int(p.name), reverse=True)
    for step_dir in steps:
        try:
            meta = json.loads((step_dir / "metadata" / "metadata").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            return meta["config"]
    return None


def check_workdir(workdir: pathlib.Path) -> None:
    """The workdir must be a directory, or creatable: its nearest existing ancestor a writable directory."""
    if workdir.exists():
        if not workdir.is_dir():
            raise UsageError(f"--workdir {workdir} exists and is not a directory")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise UsageError(f"--workdir {workdir} is not writable")
        return
    parent = workdir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--workdir {workdir} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir} cannot be created: {parent} is not writable")


def prepare(args: argparse.Namespace) -> Setup:
    """Config, mesh, data sources, entropy model, resume compatibility: fail before writing anything."""
    from bltjax.data.pipeline import stream_index

    init_runtime(args)
    cfg = resolve_config(args)
    raw_workdir = str(args.workdir or cfg.workdir or pathlib.Path("runs") / cfg.name)
    workdir = workdir_lib.resolve(raw_workdir)  # gs://bucket/run: an etils.epath.Path (docs/cloud_storage.md)
    problem = bucket_error(workdir)
    if problem is not None:
        raise UsageError(f"--workdir {raw_workdir}: {problem}")
    if workdir.is_file():
        raise UsageError(f"--workdir {workdir} exists and is not a directory")
    if isinstance(workdir, pathlib.Path):  # local: a directory, or creatable (remote ones: bucket_error)
        check_workdir(workdir)
    cfg = dataclasses.replace(cfg, workdir=str(workdir))
    mesh = build_mesh(cfg)
    cfg = check_mesh_batch(cfg, mesh)  # (rows_per_device -> optim.grad_accum_steps)
    if not cfg.train_entropy_model:
        from bltjax.train_step import max_patches_for

        max_patches_for(cfg.model, cfg.seq_len)  # raises for an impossible static patch budget
    train_iter = make_data_iterator(cfg)  # reads and validates every training document
    if cfg.eval_every:
        stream_index(cfg.data, "validation")
    elif cfg.data.val_path:  # unused while eval is off, but a wrong path is still a mistake
        from bltjax.data.sources import expand_paths

        try:
            expand_paths(cfg.data.val_path)
        except ValueError as e:
            raise UsageError(f"data.val_path: {one_line(e)}") from e
    entropy_params = None
    if not cfg.train_entropy_model and cfg.model.patcher.mode == "entropy" and not cfg.data.entropies_path:
        cfg, entropy_params = attach_entropy_model(cfg, mesh)  # (precomputed entropies need no model)
    resuming = check_resume(cfg, workdir)
    return Setup(cfg=cfg, workdir=workdir, mesh=mesh, train_iter=train_iter, entropy_params=entropy_params,
                 resuming=resuming)


# ====================================================================== the frozen entropy model
def attach_entropy_model(cfg, mesh):
    """Frozen entropy-model params for entropy patching, from ``cfg.entropy_model_checkpoint``, on ``mesh``.

    Anything ``bltjax.pretrained.load_entropy_model`` reads (entropy-model training runs, releases,
    HF, conversions, BLTs that carry one); a BLT *training run* is refused.  ``model.entropy_model`` is
    filled in from the checkpoint when unset, and must otherwise match it.
    """
    from bltjax.pretrained import load_entropy_model
    from bltjax.train_config import ENTROPY_SHAPE_FIELDS

    path = workdir_lib.resolve(cfg.entropy_model_checkpoint)
    if not path.exists():
        raise UsageError(f"entropy_model_checkpoint {str(path)!r} does not exist")
    if workdir_lib.is_workdir(path) and not workdir_lib.read_config(path).train_entropy_model:
        raise UsageError(f"entropy_model_checkpoint {path} is a BLT training run, not an entropy-model run")
    try:
        em = load_entropy_model(path, mesh=mesh)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"entropy_model_checkpoint {path}: {one_line(e)}") from e
    ecfg, params = em.config, em.params
    want = cfg.model.entropy_model
    if want is not None:
        bad = [f"{f}: {getattr(want, f)!r} (config) vs {getattr(ecfg, f)!r} (checkpoint)"
               for f in ENTROPY_SHAPE_FIELDS if getattr(want, f) != getattr(ecfg, f)]
        if bad:
            raise UsageError(f"model.entropy_model does not match entropy_model_checkpoint {path}: {'; '.join(bad)}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, entropy_model=want or ecfg))
    return cfg, params


# ====================================================================== the run


# ====================================================================== entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    from bltjax.cli import quiet_runtime_logs, report_if_lost_peer

    args = build_parser().parse_args(argv)
    if args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        quiet_runtime_logs()  # before JAX loads: a lost peer is one line, not the runtime's C++ logs
    try:
        setup = prepare(args)
    except (UsageError, ValueError, FileNotFoundError, TypeError) as e:
        report_if_lost_peer(e)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(setup)
    except UsageError as e:  # found while restoring (checkpoint metadata of another model)
        report_if_lost_peer(e)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    finally:
        if threading.current_thread() is threading.main_thread():  # run() installed stop handlers: restore
            for sig, handler in handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    from bltjax import hugepages
    from bltjax.cli import run_cli

    hugepages.reexec()
    sys.exit(run_cli(main))
