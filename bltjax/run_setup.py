"""Turning a command line into a validated run: the experiment file, ``--set`` overrides, the mesh and
the batch checks.  Shared by ``python -m bltjax.train`` and ``python -m bltjax.aot`` (which must see
exactly the config and mesh training would), so neither entry point imports the other.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Optional

from bltjax.train_loop import UsageError, one_line

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "configs" / "default.py"


def config_path(arg: Optional[str]) -> str:
    """The experiment for ``--config``: a path (``FILE.py`` or ``FILE.py:ARG``), or a bare name of
    ``experiments/<name>.py``."""
    from bltjax.train_config import split_config_arg

    if arg is None or arg == "default":
        return str(DEFAULT_CONFIG)
    file, sub = split_config_arg(arg)
    if sub is None and ":" in arg and "/" not in arg:  # a bare name with an argument: "blt_paper:1b"
        head, _, sub = arg.rpartition(":")
        file = pathlib.Path(head)
    path = file.expanduser()
    suffix = f":{sub}" if sub is not None else ""
    if path.is_file() or "/" in str(file) or str(file).endswith(".py"):
        return f"{path}{suffix}"
    candidate = PACKAGE_DIR.parent / "experiments" / f"{file}.py"
    return f"{candidate if candidate.is_file() else path}{suffix}"


def resolve_config(args: argparse.Namespace):
    """Load the experiment, apply ``--set`` overrides and validate; raise UsageError on any problem."""
    from bltjax.train_config import apply_overrides, load_config

    path = config_path(args.config)
    try:
        cfg = load_config(path)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load config {path}: {one_line(e)}") from e
    except Exception as e:  # noqa: BLE001 -- a broken experiment file (SyntaxError, NameError, ...)
        raise UsageError(f"cannot load config {path}: {type(e).__name__}: {e}") from e
    try:
        return apply_overrides(cfg, args.overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(one_line(e)) from e


def build_mesh(cfg, devices=None):
    """The run's mesh from ``cfg.mesh`` on ``devices`` (default: all devices); UsageError when it cannot split them."""
    import jax

    from bltjax import sharding

    devices = jax.devices() if devices is None else list(devices)
    try:
        return sharding.make_mesh(cfg.mesh, devices=devices)
    except ValueError as e:
        raise UsageError(f"mesh: {one_line(e)} ({len(devices)} devices available)") from e


def check_mesh_batch(cfg, mesh):
    """The global (micro-)batch must split evenly over the batch shards and the processes.  Returns
    ``cfg``, with ``optim.grad_accum_steps`` derived from the mesh when ``rows_per_device`` is set."""
    import dataclasses

    import jax

    shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
    if cfg.rows_per_device is not None:
        per_pass = shards * cfg.rows_per_device
        if cfg.global_batch_size % per_pass:
            raise UsageError(f"global_batch_size={cfg.global_batch_size} is not a multiple of rows_per_device="
                             f"{cfg.rows_per_device} x the {shards} batch shards (data x fsdp) of mesh "
                             f"{dict(mesh.shape)}; use a multiple of {per_pass} or change rows_per_device")
        optim = dataclasses.replace(cfg.optim, grad_accum_steps=cfg.global_batch_size // per_pass)
        cfg = dataclasses.replace(cfg, optim=optim, rows_per_device=None)
    micro = cfg.micro_batch_size
    if micro % shards:
        what = (f"global_batch_size={cfg.global_batch_size}" if cfg.optim.grad_accum_steps == 1 else
                f"micro-batch {micro} (global_batch_size={cfg.global_batch_size} / grad_accum_steps="
                f"{cfg.optim.grad_accum_steps})")
        raise UsageError(f"{what} is not divisible by the {shards} batch shards (data x fsdp) of mesh "
                         f"{dict(mesh.shape)}; use a multiple of {shards} or change mesh.ici_*")
    if cfg.global_batch_size % jax.process_count():
        raise UsageError(f"global_batch_size={cfg.global_batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")
    return cfg
