"""Train a BLT (or its entropy model): ``python -m bltjax.train --config experiments/<name>.py``.

    python -m bltjax.train                                    # embedded corpus, small model, ~minutes on CPU
    python -m bltjax.train --config experiments/tiny_shakespeare.py --set optim.lr=2e-3 --workdir runs/ts
    python -m bltjax.train --config experiments/blt_1b.py --distributed   # TPU pod / Slurm: every host

Workdir layout: ``config.json`` (resolved config), ``run.json`` (topology of the last start),
``metrics.jsonl`` + ``tensorboard/`` (process 0), ``checkpoints/<step>/`` (Orbax: state, Grain iterator
state, metadata).  Starting again with the same workdir resumes from the newest complete checkpoint,
on any mesh shape or process count; a changed model shape is refused.

Exit codes: 0 done (or stopped cleanly by SIGTERM after saving); 2 bad input / config (one line
``error: ...`` on stderr, nothing written); 3 the loss became NaN/inf (the last good checkpoint is
kept, nothing is saved after the divergence).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import pathlib
import signal
import sys
import time
import warnings
from typing import Any, Optional, Sequence

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "experiments_default.py"
CHECKPOINT_SUBDIR = "checkpoints"
DEFAULT_COMPILE_CACHE = pathlib.Path.home() / ".cache" / "bltjax" / "jax-compile-cache"


class UsageError(ValueError):
    """Bad command line, config or input data: reported as one ``error:`` line, exit code 2."""


class Diverged(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return first if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {first}"


def log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True)


# ====================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bltjax.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="experiment file defining get_config() (default: the packaged default experiment); "
                        "a bare name like 'tiny_shakespeare' means experiments/<name>.py of this checkout")
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


def config_path(arg: Optional[str]) -> pathlib.Path:
    """The experiment file for ``--config``: a path, or a bare name of ``experiments/<name>.py``."""
    if arg is None or arg == "default":
        return DEFAULT_CONFIG
    path = pathlib.Path(arg).expanduser()
    if path.is_file() or "/" in arg or arg.endswith(".py"):
        return path
    candidate = PACKAGE_DIR.parent / "experiments" / f"{arg}.py"
    return candidate if candidate.is_file() else path


def resolve_config(args: argparse.Namespace):
    """Load the experiment, apply ``--set`` overrides and validate; raise UsageError on any problem."""
    from bltjax.train_config import apply_overrides, load_config

    path = config_path(args.config)
    try:
        cfg = load_config(path)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"cannot load config {path}: {_one_line(e)}") from e
    except Exception as e:  # noqa: BLE001 -- a broken experiment file (SyntaxError, NameError, ...)
        raise UsageError(f"cannot load config {path}: {type(e).__name__}: {e}") from e
    try:
        return apply_overrides(cfg, args.overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(_one_line(e)) from e


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
@dataclasses.dataclass
class Setup:
    """Everything validated before the workdir is touched."""

    cfg: Any
    workdir: pathlib.Path
    mesh: Any
    train_iter: Any
    entropy_params: Any
    resuming: bool


def build_mesh(cfg, devices=None):
    """The run's mesh from ``cfg.mesh`` on ``devices`` (default: all devices); UsageError when it cannot split them."""
    import jax

    from bltjax import sharding

    devices = jax.devices() if devices is None else list(devices)
    try:
        return sharding.make_mesh(cfg.mesh, devices=devices)
    except ValueError as e:
        raise UsageError(f"mesh: {_one_line(e)} ({len(devices)} devices available)") from e


def check_mesh_batch(cfg, mesh) -> None:
    """The global (micro-)batch must split evenly over the batch shards and the processes."""
    import jax

    shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
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


def check_resume(cfg, workdir: pathlib.Path) -> bool:
    """True when ``workdir`` holds checkpoints; refuse a changed model shape (UsageError)."""
    from bltjax.train_config import config_to_dict, model_shape_diff

    ckpt = workdir / CHECKPOINT_SUBDIR
    has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
    saved = workdir / "config.json"
    if has_ckpt and saved.is_file():
        try:
            old = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{saved} is unreadable ({_one_line(e)}); fix or remove it to resume") from e
        check_compatible(old, config_to_dict(cfg), workdir)
    return has_ckpt


def check_compatible(old: dict, new: dict, workdir: pathlib.Path) -> None:
    from bltjax.train_config import model_shape_diff

    diff = model_shape_diff(old, new)
    if bool(old.get("train_entropy_model", False)) != bool(new.get("train_entropy_model", False)):
        diff.insert(0, f"train_entropy_model: {old.get('train_entropy_model')} -> {new.get('train_entropy_model')}")
    if diff:
        raise UsageError(f"{workdir} holds checkpoints of a different model ({'; '.join(diff)}); refusing to "
                         f"resume: use another --workdir or restore the original model settings")


def make_data_iterator(cfg, split: str = "train", start_step: int = 0):
    import jax

    from bltjax.data.pipeline import make_iterator

    return make_iterator(cfg.data, seq_len=cfg.seq_len, global_batch=cfg.global_batch_size,
                         process_index=jax.process_index(), process_count=jax.process_count(),
                         split=split, seed=cfg.data.seed, start_step=start_step)


def prepare(args: argparse.Namespace) -> Setup:
    """Config, mesh, data sources, entropy model, resume compatibility: fail before writing anything."""
    import jax

    from bltjax import sharding
    from bltjax.data.pipeline import stream_index

    init_runtime(args)
    cfg = resolve_config(args)
    raw_workdir = str(args.workdir or cfg.workdir or pathlib.Path("runs") / cfg.name)
    if "://" in raw_workdir:
        raise UsageError(f"--workdir {raw_workdir}: remote URLs are not supported; use a local directory or a "
                         f"mounted bucket (gcsfuse / NFS) that every host can see")
    workdir = pathlib.Path(raw_workdir).expanduser()
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} exists and is not a directory")
    cfg = dataclasses.replace(cfg, workdir=str(workdir))
    mesh = build_mesh(cfg)
    check_mesh_batch(cfg, mesh)
    if not cfg.train_entropy_model:
        from bltjax.train_step import max_patches_for

        max_patches_for(cfg.model, cfg.seq_len)  # raises for an impossible static patch budget
    train_iter = make_data_iterator(cfg)  # reads and validates every training document
    if cfg.eval_every:
        stream_index(cfg.data, "validation")
    entropy_params = None
    if not cfg.train_entropy_model and cfg.model.patcher.mode == "entropy" and not cfg.data.entropies_path:
        cfg, entropy_params = load_entropy_model(cfg, mesh)  # (precomputed entropies need no model)
    resuming = check_resume(cfg, workdir)
    return Setup(cfg=cfg, workdir=workdir, mesh=mesh, train_iter=train_iter, entropy_params=entropy_params,
                 resuming=resuming)


# ====================================================================== checkpoints of a run
def _single_device_mesh():
    import jax

    from bltjax import sharding

    return sharding.make_mesh(sharding.MeshConfig(ici_fsdp=1), devices=jax.local_devices()[:1])


def load_run(workdir: str | os.PathLike, step: Optional[int] = None, mesh: Any = None):
    """``(TrainConfig, params, step)`` of a training workdir (newest usable checkpoint by default).

    The state is restored onto ``mesh`` (default: the first local device) with the shardings of the
    rules table and the optimizer state dropped.  Used for entropy models trained here and by
    ``bltjax.pretrained`` / ``bltjax.eval`` to read training runs.
    """
    import jax

    from bltjax.checkpoint import CheckpointManager
    from bltjax.train_config import config_from_dict
    from bltjax.train_step import make_steps

    workdir = pathlib.Path(workdir).expanduser()
    cfg_file = workdir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{workdir} is not a bltjax training workdir (no config.json)")
    cfg = config_from_dict(json.loads(cfg_file.read_text()))
    mesh = mesh if mesh is not None else _single_device_mesh()
    with jax.set_mesh(mesh):
        abstract = make_steps(cfg, mesh).abstract_state
        mngr = CheckpointManager(workdir / CHECKPOINT_SUBDIR, save_every=1, keep_latest=1_000_000,
                                 async_save=False, read_only=True)  # the run may still be writing
        try:
            got_step, state, _ = mngr.restore(step, abstract_state=abstract)
        finally:
            mngr.close()
    return cfg, state["params"], got_step


def load_entropy_model(cfg, mesh):
    """Frozen entropy-model params for entropy patching, from ``cfg.entropy_model_checkpoint``.

    A bltjax training workdir of an entropy model (``train_entropy_model=True``) is restored directly;
    anything else goes through ``bltjax.patching.load_entropy_model`` (releases, HF, conversions).
    ``model.entropy_model`` is filled in from the checkpoint when unset, and must otherwise match it.
    """
    import jax
    import numpy as np

    from bltjax import sharding
    from bltjax.train_config import ENTROPY_SHAPE_FIELDS

    path = pathlib.Path(cfg.entropy_model_checkpoint).expanduser()
    if not path.exists():
        raise UsageError(f"entropy_model_checkpoint {str(path)!r} does not exist")
    if (path / "config.json").is_file() and (path / CHECKPOINT_SUBDIR).is_dir():
        ecfg_run, params, _ = load_run(path, mesh=mesh)  # restored straight onto this run's mesh
        if not ecfg_run.train_entropy_model:
            raise UsageError(f"entropy_model_checkpoint {path} is a BLT training run, not an entropy-model run")
        ecfg = ecfg_run.model.entropy_model
    else:
        from bltjax.patching import load_entropy_model as load_any

        try:
            em = load_any(path)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"entropy_model_checkpoint {path}: {_one_line(e)}") from e
        ecfg = em.config
        host = jax.tree.map(np.asarray, em.params)  # every process holds the same host copy
        params = jax.device_put(host, sharding.param_shardings(host, mesh))
    want = cfg.model.entropy_model
    if want is not None:
        bad = [f"{f}: {getattr(want, f)!r} (config) vs {getattr(ecfg, f)!r} (checkpoint)"
               for f in ENTROPY_SHAPE_FIELDS if getattr(want, f) != getattr(ecfg, f)]
        if bad:
            raise UsageError(f"model.entropy_model does not match entropy_model_checkpoint {path}: {'; '.join(bad)}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, entropy_model=want or ecfg))
    return cfg, params


# ====================================================================== the run
class StopFlag:
    """Set by SIGTERM; the loop saves at the next step boundary and exits 0."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            self.requested = True

        signal.signal(signal.SIGTERM, handler)

    def should_stop(self, step: int, mngr, at_log_step: bool) -> bool:
        """Whether to save and stop after ``step``; the same answer on every process.

        Single process: SIGTERM or an Orbax preemption notice, checked every step.  Several processes:
        the preemption notice every step (an Orbax sync point), the SIGTERM flags OR-ed across processes
        at log steps only (a collective, kept off the per-step path).
        """
        import jax

        stop = bool(mngr.reached_preemption(step))
        if jax.process_count() == 1:
            return stop or self.requested
        if at_log_step:
            import numpy as np
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
            stop = stop or bool(np.any(flags))
        return stop


def count_params(tree) -> int:
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def describe(cfg, mesh, abstract_state, start_step: int, workdir: pathlib.Path, flops_per_byte: float) -> str:
    import jax

    from bltjax.data.pipeline import stream_index

    n_params = count_params(abstract_state["params"])
    if cfg.train_entropy_model:
        em = cfg.model.entropy_model
        what = f"entropy model (byte LM) {n_params / 1e6:.2f}M params: dim {em.dim}, {em.n_layers} layers"
    else:
        from bltjax.train_step import max_patches_for

        m, pc = cfg.model, cfg.model.patcher
        hash_p = int(math.prod(abstract_state["params"]["hash_embeddings"].shape))
        what = (f"BLT {n_params / 1e6:.2f}M params ({hash_p / 1e6:.2f}M hash embeddings): local {m.dim_local_encoder}"
                f"x{m.n_layers_local_encoder}+{m.n_layers_local_decoder}, global {m.dim_global}x{m.n_layers_global}"
                f" | patching {pc.mode} (patch_size {pc.patch_size:g}, max_patches {max_patches_for(m, cfg.seq_len)})")
    train_tok = stream_index(cfg.data, "train")[1].num_tokens
    lines = [
        f"bltjax.train: {cfg.name} -> {workdir}",
        f"  model: {what} | precision {cfg.precision} | remat {cfg.model.remat}",
        f"  data: {cfg.data.source}{' ' + cfg.data.path if cfg.data.path else ''} ({train_tok / 1e6:.2f}M train tokens) | seq_len "
        f"{cfg.seq_len} x batch {cfg.global_batch_size} = {cfg.bytes_per_step} bytes/step | {cfg.steps} steps",
        f"  mesh: {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es) | {flops_per_byte / 1e6:.2f} MFLOPs/byte (train)",
        f"  {'resuming from step ' + str(start_step) if start_step else 'starting from scratch'}; "
        f"eval every {cfg.eval_every or '-'} steps, checkpoint every {cfg.checkpoint.every}",
    ]
    return "\n".join(lines)


def write_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def compile_steps(steps, state, batch, entropy_params, with_eval: bool):
    """Ahead-of-time compiled ``(train, eval)`` executables for these input shapes and shardings.

    Compiling before the first step (instead of at the first call) lets every process finish compiling
    before any of them runs a collective: on CPU, gloo gives a peer only 30 s to show up, less than
    compile-time skew between busy processes.  ``eval`` is None when evaluation is off.
    """
    train_exec = steps.train.lower(state, batch, entropy_params).compile()
    eval_exec = steps.eval.lower(state["params"], batch, entropy_params).compile() if with_eval else None
    return train_exec, eval_exec


def evaluate(cfg, eval_fn, params, entropy_params, mesh) -> dict[str, float]:
    """Validation loss / bits per byte over up to ``eval_batches`` batches of the held-out split, and
    for a BLT the mean patch size and overflow fraction of the trainer's patching on that split."""
    import jax

    from bltjax import sharding

    total = None
    for local in itertools.islice(make_data_iterator(cfg, split="validation"), cfg.eval_batches):
        sums = eval_fn(params, sharding.shard_batch(local, mesh), entropy_params)
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    if total is None:
        return {}
    total = {k: float(v) for k, v in jax.device_get(total).items()}
    ce, n = total["ce_sum"], max(total["n_tokens"], 1.0)
    out = {"val_loss": ce / n, "val_bpb": ce / (math.log(2.0) * n), "val_tokens": n}
    if "n_patches_sum" in total:
        out["val_avg_patch_size"] = total["n_positions_sum"] / max(total["n_patches_sum"], 1.0)
        out["val_overflow_frac"] = total["n_overflow_sum"] / max(total["n_rows_sum"], 1.0)
    return out


class RunLog:
    """Deferred metric records with throughput measured between *completed* logged steps.

    ``add(step, arrays)`` keeps this log step's device arrays and writes the previous log step's record
    (one ``device_get``; that step finished long ago, so the device never waits for the host) -- the
    ``MetricsWriter.write_deferred`` pattern, done here so that the record also carries the rates of the
    interval that ended with it.  Rates (bytes/s, MFU) compare the completion times of consecutive
    records; after a sync point (start, eval, save check) the first two records only restart the clock,
    because the host was not waiting for the device in between.  ``elapsed_s`` / ``process_cpu_s``: wall
    and CPU seconds of this process since the (re)start, compile included.
    """

    def __init__(self, cfg, writer, progress, flops_per_step: float, n_devices: int):
        from bltjax.metrics import Throughput

        self.cfg, self.writer, self.progress = cfg, writer, progress
        self.rates = Throughput(cfg.bytes_per_step, flops_per_step, n_devices)
        self.pending: Optional[tuple[int, Any]] = None
        self.warm = 0
        self.t0_wall, self.t0_cpu = time.time(), time.process_time()

    def restart_clock(self) -> None:
        self.rates._last = None
        self.warm = 0

    def add(self, step: int, arrays: dict) -> Optional[int]:
        """Keep ``arrays``; write the previous record; return its step (None on the first call)."""
        previous, self.pending = self.pending, (step, arrays)
        return None if previous is None else self._write(*previous)

    def add_eval(self, step: int, scalars: dict) -> None:
        """Validation metrics of ``step``: merged into that step's training record when it is pending
        (one record per step, as ``read_jsonl`` keeps only the last record of a step), else written."""
        if self.pending is not None and self.pending[0] == step:
            self.pending = (step, {**self.pending[1], **scalars})
        else:
            self.writer.write(step, scalars)

    def flush(self) -> Optional[int]:
        previous, self.pending = self.pending, None
        return None if previous is None else self._write(*previous)

    def _write(self, step: int, arrays: dict) -> int:
        from bltjax.metrics import to_scalars, train_flops_per_step

        scalars = to_scalars(arrays)  # blocks until `step` is done
        rates = self.rates.update(step)
        if self.warm < 2:
            self.warm += 1
            rates = {}
        cfg = self.cfg
        if "avg_patch_size" in scalars and cfg.model.patcher.mode != "static" and math.isfinite(scalars["avg_patch_size"]):
            self.rates.flops_per_step = train_flops_per_step(cfg, scalars["avg_patch_size"])
        scalars.update(rates, flops_per_byte=self.rates.flops_per_step / cfg.bytes_per_step,
                       elapsed_s=time.time() - self.t0_wall, process_cpu_s=time.process_time() - self.t0_cpu)
        self.writer.write(step, scalars)
        self.progress.update(step, scalars)
        return step

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.progress.close()


def run(setup: Setup) -> int:
    """The training loop (see the module doc for workdir layout and exit codes)."""
    import jax

    from bltjax import sharding
    from bltjax.checkpoint import CheckpointManager
    from bltjax.metrics import ConsoleProgress, MetricsWriter, train_flops_per_step
    from bltjax.train_config import config_to_dict
    from bltjax.train_step import make_steps

    cfg, mesh, workdir, train_iter = setup.cfg, setup.mesh, setup.workdir, setup.train_iter
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    main = jax.process_index() == 0
    cfg_dict = config_to_dict(cfg)
    topology = {"process_count": jax.process_count(), "device_count": jax.device_count(),
                "mesh": {k: int(v) for k, v in mesh.shape.items()}, "data_worker_count": cfg.data.worker_count}
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
    # Every process reads the previous topology (the workdir is shared): they must agree on how to restore.
    previous_topology = {}
    if (workdir / "run.json").is_file():
        previous_topology = json.loads((workdir / "run.json").read_text()).get("topology", {})
    ckpt = cfg.checkpoint
    mngr = CheckpointManager(workdir / CHECKPOINT_SUBDIR, save_every=ckpt.every, keep_latest=ckpt.keep_latest,
                             keep_every=ckpt.keep_every, async_save=ckpt.async_save,
                             metadata={"config": cfg_dict, "topology": topology})
    stop = StopFlag()
    stop.install()
    with jax.set_mesh(mesh):
        ent_abstract = None if setup.entropy_params is None else jax.eval_shape(lambda x: x, setup.entropy_params)
        steps = make_steps(cfg, mesh, ent_abstract)
        state, start = None, 0
        if setup.resuming:
            state, start = restore(cfg, mngr, steps, train_iter, previous_topology, topology, workdir)
        if main:  # written only once the run is known to be valid
            write_json(workdir / "config.json", cfg_dict)
            write_json(workdir / "run.json", {"topology": topology, "started_at_step": start, "time": time.time()})
        if state is None:
            state = steps.init(jax.random.key(cfg.seed))
        ps = None if cfg.train_entropy_model else cfg.model.patcher.patch_size
        flops = train_flops_per_step(cfg, ps)
        log(describe(cfg, mesh, steps.abstract_state, start, workdir, flops / cfg.bytes_per_step))
        if start >= cfg.steps:
            log(f"already at step {start} >= steps={cfg.steps}: nothing to do")
            mngr.close()
            return EXIT_OK
        metrics_log = RunLog(cfg, MetricsWriter(workdir, tensorboard=cfg.tensorboard),
                             ConsoleProgress(cfg.steps, start, stream=sys.stdout), flops, jax.device_count())
        batch = sharding.shard_batch(next(train_iter), mesh)  # the first step's batch
        t0 = time.time()
        train_fn, eval_fn = compile_steps(steps, state, batch, setup.entropy_params, bool(cfg.eval_every))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("bltjax_train_compiled")
        log(f"compiled the train{' and eval' if eval_fn else ''} step in {time.time() - t0:.1f} s")
        flags: list[tuple[int, Any]] = []  # (step, device "nonfinite" flag) not yet checked
        last_saved = start

        def check_flags(upto: int) -> None:
            """Raise Diverged at the first NaN/inf step <= ``upto`` (blocks until ``upto`` is done)."""
            nonlocal flags
            due = [(s, f) for s, f in flags if s <= upto]
            flags = [(s, f) for s, f in flags if s > upto]
            for (s, _), v in zip(due, jax.device_get([f for _, f in due])):
                if float(v) != 0.0:
                    raise Diverged(s)

        def save(step: int, force: bool) -> None:
            nonlocal last_saved
            check_flags(step)  # never save a diverged state
            if step != last_saved and mngr.save(step, state, train_iter, force=force):
                last_saved = step

        step = start
        try:
            while step < cfg.steps:
                if batch is None:
                    batch = sharding.shard_batch(next(train_iter), mesh)
                state, metrics = train_fn(state, batch, setup.entropy_params)
                batch = None
                step += 1
                flags.append((step, metrics["nonfinite"]))
                at_log = step % cfg.log_every == 0 or step == cfg.steps
                if at_log:
                    written = metrics_log.add(step, metrics)  # writes the previous log step's record
                    if written is not None:
                        check_flags(written)
                stopping = stop.should_stop(step, mngr, at_log)
                if stopping or step == cfg.steps or mngr.should_save(step):
                    save(step, force=stopping or step == cfg.steps)
                    metrics_log.restart_clock()
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    check_flags(step)
                    val = evaluate(cfg, eval_fn, state["params"], setup.entropy_params, mesh)
                    if val:
                        metrics_log.add_eval(step, val)
                        patches = (f" | val bytes/patch {val['val_avg_patch_size']:.3f}"
                                   if "val_avg_patch_size" in val else "")
                        log(f"eval step {step}: val_loss {val['val_loss']:.4f} | val_bpb {val['val_bpb']:.4f}"
                            + patches)
                    metrics_log.restart_clock()
                if stopping:
                    log(f"SIGTERM: saved step {step}, exiting")
                    break
            metrics_log.flush()
            check_flags(step)
        except Diverged as e:
            metrics_log.close()
            mngr.wait_until_finished()
            good = mngr.latest_step()
            mngr.close()
            print(f"error: loss/gradient became NaN or inf at step {e.args[0]}; stopping. Last good checkpoint: "
                  f"{'step ' + str(good) if good is not None else 'none'} in {workdir / CHECKPOINT_SUBDIR} "
                  f"(nothing saved after the divergence). Lower optim.lr or raise optim.warmup_steps.",
                  file=sys.stderr, flush=True)
            return EXIT_DIVERGED
        metrics_log.close()
        mngr.close()
        log(f"done: step {step}; latest checkpoint: step {last_saved} in {workdir / CHECKPOINT_SUBDIR}")
    return EXIT_OK


def restore(cfg, mngr, steps, train_iter, previous: dict, topology: dict, workdir: pathlib.Path):
    """Restore ``(state, step)`` from the newest usable checkpoint; position the data iterator.

    Same process count and data worker count as the run that saved: the Grain iterator state is
    restored with the checkpoint.  Otherwise the iterator is positioned with ``seek`` (the pipeline is
    a pure function of the step, whatever the process count).
    """
    import jax

    from bltjax.data.pipeline import seek

    same = (previous.get("process_count") == topology["process_count"]
            and previous.get("data_worker_count") == topology["data_worker_count"])
    try:
        step, state, meta = mngr.restore(abstract_state=steps.abstract_state,
                                         data_iterator=train_iter if same else None)
    except FileNotFoundError:
        log(f"no usable checkpoint in {workdir / CHECKPOINT_SUBDIR}: starting from scratch")
        return None, 0
    if isinstance(meta.get("config"), dict):
        from bltjax.train_config import config_to_dict

        check_compatible(meta["config"], config_to_dict(cfg), workdir)
    if not same:
        seek(train_iter, step, cfg.data.worker_count)
    else:
        st = train_iter.get_state()
        if isinstance(st, dict) and "next_index" in st and int(st["next_index"]) != step:
            log(f"warning: restored data iterator is at batch {st['next_index']}, not {step}; repositioning")
            seek(train_iter, step, cfg.data.worker_count)
    saved = int(jax.device_get(state["step"]))
    if saved != step:
        raise RuntimeError(f"checkpoint {step} holds state step {saved}")
    return state, step


# ====================================================================== entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup = prepare(args)
    except (UsageError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        return run(setup)
    except UsageError as e:  # found while restoring (checkpoint metadata of another model)
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    from bltjax import hugepages

    hugepages.reexec()
    sys.exit(main())
