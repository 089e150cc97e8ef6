"""Run metrics: MFU (against the peaks of ``bltjax.peak``), throughput, JSONL + TensorBoard writer, console progress.

Non-blocking logging pattern (never stall the device on a metric)::

    writer = MetricsWriter(workdir, tensorboard=cfg.tensorboard)
    for step in range(start, cfg.steps):
        state, metrics = train_step(state, batch)        # dispatched asynchronously
        if step % cfg.log_every == 0:
            writer.write_deferred(step, metrics)          # writes the *previous* logged step's arrays
    writer.close()                                        # writes the last deferred record

``write_deferred`` keeps the device arrays of this call and converts (``jax.device_get``) the ones
from the previous call, which finished long ago, so the host never waits for the step in flight.
``write`` converts and writes immediately (for evals / end of run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import numpy as np

from bltjax.config import train_flops_per_step  # noqa: F401  (re-exported)
from bltjax.peak import (  # noqa: F401
    ENV_PEAK_FLOPS,
    PEAK_BF16_FLOPS,
    CpuInfo,
    cpu_info,
    cpu_peak_flops,
    measure_matmul_flops,
    measured_cpu_flops,
    peak_flops_for_kind,
    peak_flops_per_device,
)

log = logging.getLogger(__name__)


def mfu(flops_per_step: float, step_time_s: float, n_devices: int,
        peak_flops: Optional[float] = None) -> float:
    """Model FLOPs utilisation: ``flops_per_step / (step_time_s * n_devices * peak)``.

    ``peak_flops`` is per device (default ``peak_flops_per_device()``: the vendor's dense bf16 peak of
    an accelerator, the host's peak in its fastest matmul format for a CPU, see ``bltjax.peak``); NaN when
    it is unknown.
    """
    if step_time_s <= 0:
        raise ValueError(f"step_time_s must be > 0, got {step_time_s}")
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    peak = peak_flops if peak_flops is not None else peak_flops_per_device()
    if peak is None or peak <= 0:
        return float("nan")
    return float(flops_per_step) / (step_time_s * n_devices * peak)


# train_flops_per_step moved to bltjax.config (one home for FLOP formulas); re-exported here.


class Throughput:
    """Steps/s, bytes/s and MFU over the interval between two ``update`` calls (wall clock)."""

    def __init__(self, bytes_per_step: float, flops_per_step: Optional[float] = None, n_devices: int = 1,
                 peak_flops: Optional[float] = None, clock=time.perf_counter):
        self.bytes_per_step = bytes_per_step
        self.flops_per_step = flops_per_step
        self.n_devices = n_devices
        self.peak_flops = peak_flops
        self._clock = clock
        self._last: Optional[tuple[int, float]] = None

    def restart(self) -> None:
        """Forget the previous call: the next ``update`` only starts the clock again."""
        self._last = None

    def update(self, step: int) -> dict[str, float]:
        """Rates since the previous call; ``{}`` on the first call (it only starts the clock)."""
        now = self._clock()
        last, self._last = self._last, (step, now)
        if last is None or step <= last[0] or now <= last[1]:
            return {}
        dt = (now - last[1]) / (step - last[0])
        out = {"step_time_s": dt, "steps_per_s": 1.0 / dt, "bytes_per_s": self.bytes_per_step / dt}
        if self.flops_per_step is not None:
            out["mfu"] = mfu(self.flops_per_step, dt, self.n_devices, self.peak_flops)
        return out


# ====================================================================== writer
def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Device/numpy/python scalars (nested dicts flattened with '/') -> python numbers, one transfer."""
    flat = jax.device_get(_flatten(metrics))
    out: dict[str, float | int] = {}
    for k, v in flat.items():
        a = np.asarray(v)
        if a.size != 1:
            raise ValueError(f"metric {k!r} must be a scalar, got shape {a.shape}")
        item = a.reshape(()).item()
        if isinstance(item, bool):
            item = int(item)
        if not isinstance(item, (int, float)):
            raise ValueError(f"metric {k!r} must be numeric, got {type(item).__name__}")
        out[k] = item
    return out


class MetricsWriter:
    """Appends ``{"step", "time", **metrics}`` lines to ``workdir/metrics.jsonl`` and, optionally,
    scalars to TensorBoard event files under ``workdir/tensorboard`` (tensorboardX).

    Only process 0 writes by default (``enabled``).  Appending makes resumed runs continue the same
    file; ``read_jsonl`` keeps the last record of a step logged twice.

    ``workdir`` may be remote (``gs://...``): objects there cannot be appended to, so both files are
    written to a local temporary mirror (``bltjax.storage.LocalMirror``; an existing remote
    metrics.jsonl is downloaded first) and uploaded whole on ``flush()``/``close()`` and at most every
    ``sync_every_s`` seconds from ``write()``.  Records written since the last upload are lost if
    the process is killed; the trainer flushes whenever it saves a checkpoint, so the records of every
    checkpointed step are in the bucket.
    """

    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True, *,
                 filename: str = "metrics.jsonl", tb_subdir: str = "tensorboard",
                 enabled: Optional[bool] = None, sync_every_s: float = 60.0):
        from bltjax.storage import as_path

        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = as_path(workdir)
        self.path = self.workdir / filename
        self.sync_every_s = sync_every_s
        self._pending: Optional[tuple[int, Mapping[str, Any]]] = None
        self._file = None
        self._tb = None
        self._mirror = None
        self._last_sync = time.monotonic()
        if not self.enabled:
            return
        from bltjax.storage import LocalMirror

        self._mirror = LocalMirror(self.workdir, download=(filename,))
        self._file = open(self._mirror.local / filename, "a", buffering=1, encoding="utf-8")
        if tensorboard:
            import logging

            from tensorboardX import SummaryWriter

            # NaN/inf values are logged on purpose (a diverging run): the trainer reports them in one
            # error line, so tensorboardX's per-scalar "NaN or Inf found in input tensor." is muted.
            logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
            self._tb = SummaryWriter(logdir=str(self._mirror.local / tb_subdir))

    @property
    def remote(self) -> bool:
        """True when the files live in a local mirror uploaded on flush (remote workdir)."""
        return self._mirror is not None and self._mirror.mirrored

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float | int]:
        """Convert ``metrics`` (one device_get) and write them now; returns the python scalars."""
        scalars = to_scalars(metrics)
        if self.enabled and self._file is not None:
            now = time.time()
            self._file.write(json.dumps({"step": int(step), "time": now, **scalars}) + "\n")
            if self._tb is not None:
                for k, v in scalars.items():
                    self._tb.add_scalar(k, v, global_step=int(step), walltime=now)
            if self.remote and time.monotonic() - self._last_sync >= self.sync_every_s:
                self._sync()
        return scalars

    def write_deferred(self, step: int, metrics: Mapping[str, Any]) -> Optional[tuple[int, dict]]:
        """Keep ``metrics`` (device arrays) for later; write the previously kept ones now.

        Returns ``(step, scalars)`` of the record written, or None on the first call.
        """
        previous, self._pending = self._pending, (int(step), dict(metrics))
        if previous is None:
            return None
        return previous[0], self.write(*previous)

    def _sync(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()
        if self._mirror is not None:
            self._mirror.sync()
        self._last_sync = time.monotonic()

    def flush(self) -> Optional[tuple[int, dict]]:
        """Write the deferred record (if any), flush files (and upload them to a remote workdir)."""
        previous, self._pending = self._pending, None
        out = None if previous is None else (previous[0], self.write(*previous))
        self._sync()
        return out

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._mirror is not None:
            self._mirror.close()  # uploads the closed files
            self._mirror = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (local or ``gs://``), sorted by step; a step logged twice (resume)
    keeps its last record."""
    from bltjax.storage import as_path

    by_step: dict[int, dict[str, Any]] = {}
    for line in as_path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


# ====================================================================== console
def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.1f}"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_progress(step: int, total_steps: int, scalars: Mapping[str, float],
                    eta_s: Optional[float] = None) -> str:
    """``step 120/1000 | loss 2.3456 | bpb 1.2345 | lr 3.00e-04 | 1.23M B/s | MFU 41.2% | ETA 0:12:34``.

    Uses the keys ``loss``, ``bpb``, ``lr``, ``bytes_per_s``, ``mfu`` when present.
    """
    parts = [f"step {step}/{total_steps}"]
    if "loss" in scalars:
        parts.append(f"loss {scalars['loss']:.4f}")
    if "bpb" in scalars:
        parts.append(f"bpb {scalars['bpb']:.4f}")
    if "lr" in scalars:
        parts.append(f"lr {scalars['lr']:.2e}")
    if "bytes_per_s" in scalars:
        parts.append(f"{_si(scalars['bytes_per_s'])} B/s")
    if "mfu" in scalars and math.isfinite(scalars["mfu"]):
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class ConsoleProgress:
    """A tqdm bar on a terminal, else one plain ``format_progress`` line per ``update`` (log files).

    ETA comes from the mean step rate since construction.  Only process 0 prints by default.
    """

    def __init__(self, total_steps: int, start_step: int = 0, *, bar: Optional[bool] = None,
                 enabled: Optional[bool] = None, stream=None, clock=time.perf_counter):
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.stream = stream or sys.stderr
        self._clock = clock
        self._start = (start_step, clock())
        self._tqdm = None
        use_bar = bar if bar is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        if self.enabled and use_bar:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total_steps, initial=start_step, file=self.stream, dynamic_ncols=True,
                              unit="step")

    def eta(self, step: int) -> Optional[float]:
        s0, t0 = self._start
        done, elapsed = step - s0, self._clock() - t0
        if done <= 0 or elapsed <= 0:
            return None
        return (self.total_steps - step) * elapsed / done

    def update(self, step: int, scalars: Mapping[str, float]) -> str:
        """Show progress at ``step`` (python scalars); returns the text line."""
        line = format_progress(step, self.total_steps, scalars, self.eta(step))
        if not self.enabled:
            return line
        if self._tqdm is not None:
            self._tqdm.n = step
            self._tqdm.set_postfix_str(line.split(" | ", 1)[-1].rsplit(" | ETA", 1)[0], refresh=True)
        else:
            print(line, file=self.stream, flush=True)
        return line

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def progress_bar(iterable=None, *, total: Optional[int] = None, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr for the command-line tools: redrawn at most every 30 s when stderr is not
    a terminal, so logs of long runs get a few progress lines instead of thousands of redraws."""
    from tqdm.auto import tqdm

    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=sys.stderr,
                mininterval=0.1 if tty else 30.0)



class OverflowWatch:
    """Patch overflow on the console: a warning the first time a logged step has ``overflow_frac`` > 0
    (rows that needed more patches than the static budget were truncated), and a closing summary."""

    def __init__(self, limit: str, warn: Callable[[str], None]):
        self.limit, self.warn = limit, warn  # limit: e.g. "model.patcher.max_patches=17"
        self.steps: list[tuple[int, float]] = []
        self.logged = 0

    def update(self, step: int, frac: float) -> None:
        self.logged += 1
        if not frac > 0:
            return
        self.steps.append((step, float(frac)))
        if len(self.steps) == 1:
            self.warn(f"step {step}: {frac:.0%} of rows needed more patches than {self.limit} and were truncated "
                      f"(their last patch absorbs the rest); raise model.patcher.max_patches or "
                      f"model.patcher.patch_size (overflow_frac in metrics.jsonl)")

    def summary(self) -> Optional[str]:
        if not self.steps:
            return None
        worst = max(f for _, f in self.steps)
        return (f"patch overflow in {len(self.steps)} of {self.logged} logged steps (up to {worst:.0%} of rows "
                f"truncated at {self.limit})")

    def summarize(self) -> None:
        text = self.summary()
        if text:
            self.warn(text)


__all__ = [
    "PEAK_BF16_FLOPS", "ENV_PEAK_FLOPS", "CpuInfo", "cpu_info", "measure_matmul_flops", "measured_cpu_flops",
    "cpu_peak_flops", "peak_flops_for_kind",
    "peak_flops_per_device", "mfu", "train_flops_per_step", "Throughput", "to_scalars", "MetricsWriter", "read_jsonl",
    "format_duration", "format_progress", "ConsoleProgress", "progress_bar", "OverflowWatch",
]

