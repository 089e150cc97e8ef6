"""The training loop of ``python -m bltjax.train``: state, steps, logging, checkpoints, evaluation.

``bltjax.train`` parses the command line, resolves the config and checks everything (``prepare``)
before anything is written; :func:`run` then owns the workdir (``bltjax.workdir``): it restores or
initialises the state, compiles the steps ahead of time and runs :class:`TrainLoop`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import sys
import time
import warnings
from typing import Any, Optional

from bltjax import workdir as workdir_lib
from bltjax.stopping import StopFlag
from bltjax.storage import is_remote

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3


class UsageError(ValueError):
    """Bad command line, config or input data: reported as one ``error:`` line, exit code 2."""


class Diverged(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


def one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return first if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {first}"


def log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True)


def warn_console(msg: str) -> None:  # one ``warning: ...`` line on stderr (process 0)
    import jax

    if jax.process_index() == 0:
        sys.stdout.flush()
        print(f"warning: {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Setup:
    """Everything validated before the workdir is touched."""

    cfg: Any
    workdir: pathlib.Path
    mesh: Any
    train_iter: Any
    entropy_params: Any
    resuming: bool


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
    train_src, train_index = stream_index(cfg.data, "train")
    train_tok = train_index.num_tokens
    n_bad = getattr(train_src, "n_invalid_utf8", 0)
    not_utf8 = f"; {n_bad} file(s) not valid UTF-8, trained as raw bytes" if n_bad else ""
    lines = [
        f"bltjax.train: {cfg.name} -> {workdir}",
        f"  model: {what} | precision {cfg.precision} | remat {cfg.model.remat}",
        f"  data: {cfg.data.source}{' ' + cfg.data.path if cfg.data.path else ''} "
        f"({train_tok / 1e6:.2f}M train tokens{not_utf8}) | seq_len "
        f"{cfg.seq_len} x batch {cfg.global_batch_size} = {cfg.bytes_per_step} bytes/step"
        f"{f' in {cfg.optim.grad_accum_steps} micro-batches' if cfg.optim.grad_accum_steps > 1 else ''} | "
        f"{cfg.steps} steps",
        f"  mesh: {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es) | {flops_per_byte / 1e6:.2f} MFLOPs/byte (train)",
        f"  {'resuming from step ' + str(start_step) if start_step else 'starting from scratch'}; "
        f"eval every {cfg.eval_every or '-'} steps, checkpoint every {cfg.checkpoint.every}",
    ]
    return "\n".join(lines)


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
        from bltjax.metrics import OverflowWatch, Throughput

        self.cfg, self.writer, self.progress = cfg, writer, progress
        self.rates = Throughput(cfg.bytes_per_step, flops_per_step, n_devices)
        self.pending: Optional[tuple[int, Any]] = None
        self.last_written: Optional[tuple[int, dict]] = None  # (step, scalars) of the newest record
        self.warm = 0
        self.overflow = None if cfg.train_entropy_model else OverflowWatch(self._max_patches(), warn_console)
        self.t0_wall, self.t0_cpu = time.time(), time.process_time()

    def restart_clock(self) -> None:
        self.rates.restart()
        self.warm = 0

    def add(self, step: int, arrays: dict) -> Optional[int]:
        """Keep ``arrays``; write the previous record; return its step (None on the first call)."""
        previous, self.pending = self.pending, (step, arrays)
        return None if previous is None else self._write(*previous)

    def add_eval(self, step: int, scalars: dict) -> None:
        """Validation metrics of ``step``: merged into that step's training record when it is pending,
        or written again together with it when that record was already written (``sync`` at a save), as
        ``read_jsonl`` keeps only the last record of a step; else written alone."""
        if self.pending is not None and self.pending[0] == step:
            self.pending = (step, {**self.pending[1], **scalars})
        elif self.last_written is not None and self.last_written[0] == step:
            self.writer.write(step, {**self.last_written[1], **scalars})
        else:
            self.writer.write(step, scalars)

    def sync(self) -> None:
        """Write the pending record and flush the writer (for a ``gs://`` workdir: upload), so that the
        records of every step up to a checkpoint are stored before the checkpoint can commit."""
        self.flush()
        self.writer.flush()

    def flush(self) -> Optional[int]:
        previous, self.pending = self.pending, None
        return None if previous is None else self._write(*previous)

    def _write(self, step: int, arrays: dict) -> int:
        from bltjax.config import train_flops_per_step
        from bltjax.metrics import to_scalars

        scalars = to_scalars(arrays)  # blocks until `step` is done
        rates = self.rates.update(step)
        if self.warm < 2:
            self.warm += 1
            rates = {}
        cfg = self.cfg
        measured = scalars.get("avg_patch_size")
        if measured is not None and cfg.model.patcher.mode != "static" and math.isfinite(measured):
            self.rates.flops_per_step = train_flops_per_step(cfg, scalars["avg_patch_size"])
        scalars.update(rates, flops_per_byte=self.rates.flops_per_step / cfg.bytes_per_step,
                       elapsed_s=time.time() - self.t0_wall, process_cpu_s=time.process_time() - self.t0_cpu)
        self.writer.write(step, scalars)
        self.last_written = (step, scalars)
        self.progress.update(step, scalars)
        if self.overflow is not None:
            self.overflow.update(step, scalars.get("overflow_frac", 0.0))
        return step

    def _max_patches(self) -> str:
        from bltjax.train_step import max_patches_for

        return f"model.patcher.max_patches={max_patches_for(self.cfg.model, self.cfg.seq_len)}"

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.progress.close()
        if self.overflow is not None:
            self.overflow.summarize()


def run_topology(cfg, mesh) -> dict:
    """What a restart must compare with the run that saved: processes, devices, mesh, data workers."""
    import jax

    return {"process_count": jax.process_count(), "device_count": jax.device_count(),
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "data_worker_count": cfg.data.worker_count}


def make_manager(cfg, workdir: pathlib.Path, topology: dict):
    from bltjax.checkpoint import CheckpointManager
    from bltjax.train_config import config_to_dict

    ckpt = cfg.checkpoint
    return CheckpointManager(workdir_lib.checkpoint_dir(workdir), save_every=ckpt.every,
                             keep_latest=ckpt.keep_latest, keep_every=ckpt.keep_every, async_save=ckpt.async_save,
                             metadata={"config": config_to_dict(cfg), "topology": topology})


def start_state(setup: Setup, steps, mngr, previous_topology: dict, topology: dict):
    """``(state, start step)``: restored when resuming, else freshly initialised; writes ``config.json``
    and ``run.json`` (process 0) once the run is known to be valid."""
    import jax

    from bltjax.train_config import config_to_dict

    cfg, workdir = setup.cfg, setup.workdir
    state, start = None, 0
    if setup.resuming:
        state, start = restore(cfg, mngr, steps, setup.train_iter, previous_topology, topology, workdir)
    if jax.process_index() == 0:
        workdir_lib.write_json(workdir_lib.config_file(workdir), config_to_dict(cfg))
        workdir_lib.write_json(workdir_lib.run_file(workdir),
                               {"topology": topology, "started_at_step": start, "time": time.time()})
    if state is None:
        state = steps.init(jax.random.key(cfg.seed))
    return state, start


class TrainLoop:
    """The step loop of one run: train, log, check for NaN/inf, save, evaluate, stop on SIGTERM."""

    def __init__(self, setup: Setup, steps, mngr, stop: StopFlag, state, start: int, flops_per_step: float):
        import jax

        from bltjax import sharding
        from bltjax.metrics import ConsoleProgress, MetricsWriter

        cfg = setup.cfg
        self.setup, self.cfg, self.mngr, self.stop = setup, cfg, mngr, stop
        self.state, self.step, self.last_saved = state, start, start
        self.flags: list[tuple[int, Any]] = []  # (step, device "nonfinite" flag) not yet checked
        writer = MetricsWriter(setup.workdir, tensorboard=cfg.tensorboard, filename=workdir_lib.METRICS_FILE,
                               tb_subdir=workdir_lib.TENSORBOARD_SUBDIR)
        self.metrics_log = RunLog(cfg, writer, ConsoleProgress(cfg.steps, start, stream=sys.stdout), flops_per_step,
                                  jax.device_count())
        self.batch = sharding.shard_batch(next(setup.train_iter), setup.mesh)  # the first step's batch
        self.train_fn, self.eval_fn = self._compile(steps)

    def _compile(self, steps):
        import jax

        t0 = time.time()
        train_fn, eval_fn = compile_steps(steps, self.state, self.batch, self.setup.entropy_params,
                                          bool(self.cfg.eval_every))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("bltjax_train_compiled")
        log(f"compiled the train{' and eval' if eval_fn else ''} step in {time.time() - t0:.1f} s")
        return train_fn, eval_fn

    def check_flags(self, upto: int) -> None:
        """Raise Diverged at the first NaN/inf step <= ``upto`` (blocks until ``upto`` is done)."""
        import jax

        due = [(s, f) for s, f in self.flags if s <= upto]
        self.flags = [(s, f) for s, f in self.flags if s > upto]
        for (s, _), v in zip(due, jax.device_get([f for _, f in due])):
            if float(v) != 0.0:
                raise Diverged(s)

    def save(self, step: int, force: bool) -> None:
        self.check_flags(step)  # never save a diverged state
        if step == self.last_saved:
            return
        # Metrics first: a kill after the checkpoint commits must not lose the records of the steps it covers
        # (a remote workdir's metrics are uploaded here, not appended line by line).
        self.metrics_log.sync()
        if self.mngr.save(step, self.state, self.setup.train_iter, force=force):
            self.last_saved = step

    def train_one(self) -> bool:
        """One step, its log record and checkpoint; True when the run must stop (SIGTERM / preemption)."""
        from bltjax import sharding

        cfg = self.cfg
        if self.batch is None:
            self.batch = sharding.shard_batch(next(self.setup.train_iter), self.setup.mesh)
        self.state, metrics = self.train_fn(self.state, self.batch, self.setup.entropy_params)
        self.batch = None
        self.step += 1
        step = self.step
        self.flags.append((step, metrics["nonfinite"]))
        at_log = step % cfg.log_every == 0 or step == cfg.steps
        if at_log:
            written = self.metrics_log.add(step, metrics)  # writes the previous log step's record
            if written is not None:
                self.check_flags(written)
        stopping = self.stop.should_stop(step, self.mngr, at_log)
        if stopping or step == cfg.steps or self.mngr.should_save(step):
            self.save(step, force=stopping or step == cfg.steps)
            self.metrics_log.restart_clock()
        return stopping

    def evaluate(self) -> None:
        step = self.step
        self.check_flags(step)
        val = evaluate(self.cfg, self.eval_fn, self.state["params"], self.setup.entropy_params, self.setup.mesh)
        if val:
            self.metrics_log.add_eval(step, val)
            patches = f" | val bytes/patch {val['val_avg_patch_size']:.3f}" if "val_avg_patch_size" in val else ""
            log(f"eval step {step}: val_loss {val['val_loss']:.4f} | val_bpb {val['val_bpb']:.4f}" + patches)
        self.metrics_log.restart_clock()

    def diverged(self, e: Diverged) -> int:
        self.metrics_log.close()
        self.mngr.wait_until_finished()
        good = self.mngr.latest_step()
        self.mngr.close()
        print(f"error: loss/gradient became NaN or inf at step {e.args[0]}; stopping. Last good checkpoint: "
              f"{'step ' + str(good) if good is not None else 'none'} in "
              f"{workdir_lib.checkpoint_dir(self.setup.workdir)} (nothing saved after the divergence). "
              f"Lower optim.lr or raise optim.warmup_steps.", file=sys.stderr, flush=True)
        return EXIT_DIVERGED

    def run(self) -> int:
        cfg = self.cfg
        try:
            while self.step < cfg.steps:
                stopping = self.train_one()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    self.evaluate()
                if stopping:
                    log(f"{self.stop.signal_name}: saved step {self.step}, exiting")
                    break
            self.metrics_log.flush()
            self.check_flags(self.step)
        except Diverged as e:
            return self.diverged(e)
        self.metrics_log.close()
        self.mngr.close()
        log(f"done: step {self.step}; latest checkpoint: step {self.last_saved} in "
            f"{workdir_lib.checkpoint_dir(self.setup.workdir)}")
        return EXIT_OK


def run(setup: Setup) -> int:
    """The training run (see the module doc for workdir layout and exit codes)."""
    import jax

    from bltjax.config import train_flops_per_step
    from bltjax.train_step import make_steps

    cfg, mesh, workdir = setup.cfg, setup.mesh, setup.workdir
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    topology = run_topology(cfg, mesh)
    if jax.process_index() == 0 and not is_remote(workdir):  # GCS has no directories to create
        workdir.mkdir(parents=True, exist_ok=True)
    # Every process reads the previous topology (the workdir is shared): they must agree on how to restore.
    previous_topology = workdir_lib.read_previous_topology(workdir)
    mngr = make_manager(cfg, workdir, topology)
    stop = StopFlag()
    stop.install()
    with jax.set_mesh(mesh):
        ent_abstract = None if setup.entropy_params is None else jax.eval_shape(lambda x: x, setup.entropy_params)
        steps = make_steps(cfg, mesh, ent_abstract)
        state, start = start_state(setup, steps, mngr, previous_topology, topology)
        flops = train_flops_per_step(cfg, None if cfg.train_entropy_model else cfg.model.patcher.patch_size)
        log(describe(cfg, mesh, steps.abstract_state, start, workdir, flops / cfg.bytes_per_step))
        if start >= cfg.steps:
            log(f"already at step {start} >= steps={cfg.steps}: nothing to do")
            mngr.close()
            return EXIT_OK
        return TrainLoop(setup, steps, mngr, stop, state, start, flops).run()


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
        log(f"no usable checkpoint in {workdir_lib.checkpoint_dir(workdir)}: starting from scratch")
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
