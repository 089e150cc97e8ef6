"""Training checkpoints: a thin wrapper around Orbax's v0 ``CheckpointManager``.

This is the only module of bltjax that imports Orbax, so a move to ``ocp.v1.training.Checkpointer``
stays local.  Layout of one step (``<directory>/<step>/``)::

    state/              the train-state pytree (StandardSave, sharded, OCDBT)
    metadata/           JSON (resolved config, ...) saved with every step
    data/               Grain iterator state, one JSON per process (only when an iterator is given)
    commit_success.txt  written by Orbax when the step is complete

Restoring always goes onto the shardings of an abstract target (``jax.ShapeDtypeStruct`` with
``sharding=``), which is what makes restores onto another mesh shape or process count work.

A step left half-written (SIGKILL during an async save, a deleted or truncated file, a missing
commit marker) never crashes a resume: ``restore()`` warns, names the bad step, moves it aside to
``<step>.corrupt-<time>`` (otherwise Orbax would refuse to save that step number again) and falls
back to the previous good step.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import sys
import time
import traceback
import warnings
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from bltjax.storage import as_path, move_tree

log = logging.getLogger(__name__)

STATE, DATA, METADATA = "state", "data", "metadata"
COMMIT_MARKER = "commit_success.txt"


class CheckpointCorruptionWarning(UserWarning):
    """A checkpoint step was incomplete or unreadable and was skipped."""


_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def short_error(e: BaseException, limit: int = 300) -> str:
    """One short line for a restore failure: TensorStore's spec dumps and driver chains cut away.

    ``DATA_LOSS: Error opening "cast" driver: ... Error decoding local file ".../manifest.ocdbt":
    Error decoding manifest: Encoded length (0) ... [tensorstore_spec=...]`` becomes
    ``.../manifest.ocdbt: Error decoding manifest: Encoded length (0) ...``.
    """
    text = " ".join(str(e).split()) or type(e).__name__
    os_reason = re.search(r"([^:\[]+?)\s*\[os_error", text)  # a failed OS call: its reason + the file
    quoted = re.findall(r'"(/[^"]+)"', text)
    if os_reason and quoted:
        return f"{quoted[-1]}: {os_reason.group(1).strip()}"
    text = text.split(" [tensorstore_spec", 1)[0].split(" [source locations", 1)[0]
    files = re.findall(r'local file "([^"]+)"', text)
    if files:
        tail = text.rsplit(f'local file "{files[-1]}"', 1)[1].lstrip(": ")
        text = f"{files[-1]}: {tail}" if tail else files[-1]
    else:
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class CheckpointSaveError(OSError):
    """Writing a checkpoint step failed (disk full, permissions, ...).  The step is discarded:
    it has no commit marker and is never chosen on resume; older complete steps stay usable."""


def _is_disk_full(e: BaseException) -> bool:
    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text or "No space left" in text


class _OrbaxSaveNoise(logging.Filter):
    """Drops the ERROR records (with tracebacks) Orbax's background threads log when a save fails:
    CheckpointManager reports the failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio":  # "Task exception was never retrieved" for an abandoned Orbax write
            return not ("never retrieved" in record.getMessage() and "orbax" in record.getMessage())
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _install_noise_filters() -> None:
    """Once per process: silence Orbax/TensorStore's secondary tracebacks after a failed async save
    (``RuntimeError: Event loop is closed`` from TensorStore callbacks into closed event loops,
    ``Exception ignored in <coroutine ...>`` of abandoned writes at exit).  Nothing else changes."""
    if getattr(sys.excepthook, "_bltjax", False):
        return
    logging.getLogger("absl").addFilter(_OrbaxSaveNoise())
    logging.getLogger("asyncio").addFilter(_OrbaxSaveNoise())
    previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(tp, value, tb):  # noqa: ANN001
        if tp is RuntimeError and str(value) == "Event loop is closed" and tb is not None:
            frames = traceback.extract_tb(tb)
            if frames and frames[0].name == "call_soon_threadsafe":
                return
        previous_hook(tp, value, tb)

    def unraisablehook(u):  # noqa: ANN001
        code = getattr(u.object, "cr_code", None)
        if code is not None and ("orbax" in code.co_filename or "tensorstore" in code.co_filename):
            return
        previous_unraisable(u)

    excepthook._bltjax = True  # type: ignore[attr-defined]
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook

    # TensorStore completes the writes of an abandoned save from its own threads by calling
    # ``call_soon_threadsafe`` on the (closed) event loop of the failed save, and prints each
    # RuntimeError itself.  A call with no Python caller (straight from C++) on a closed loop is
    # dropped instead; Python callers still get the RuntimeError.
    import asyncio

    original = asyncio.BaseEventLoop.call_soon_threadsafe

    def call_soon_threadsafe(self, callback, *args, context=None):  # noqa: ANN001
        if self.is_closed():
            try:
                sys._getframe(1)
            except ValueError:  # called from C++, nobody to raise to
                return None
        return original(self, callback, *args, context=context)

    asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]


def _warn(msg: str) -> None:
    """One warning per event, on process 0 only (every process sees the same directory)."""
    if jax.process_index() == 0:
        warnings.warn(msg, CheckpointCorruptionWarning, stacklevel=3)


def _as_path(directory: Any) -> epath.Path:
    return as_path(directory)  # local paths made absolute (Orbax wants them so), gs:// kept


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _absl_warnings_muted(mute: bool):
    logger = logging.getLogger("absl")
    level = logger.level
    if mute:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CheckpointManager:
    """Periodic, async, multi-host checkpoints of a train state (+ Grain iterator + JSON metadata).

    Args:
      directory: checkpoint root (local path or ``gs://...``), created if missing.
      save_every: save when ``step % save_every == 0`` (and on a preemption sync point).
      keep_latest: keep the latest ``keep_latest`` steps...
      keep_every: ...plus every step that is a multiple of ``keep_every`` (permanent checkpoints).
      async_save: write in a background thread; ``save`` returns once arrays are copied to host.
      metadata: default JSON metadata saved with every step (``save(metadata=...)`` overrides it).
      read_only: for readers of a directory that a training run may be writing (eval, patching tools,
        a frozen entropy model): Orbax temporary directories are left alone and unusable steps are
        only skipped, never moved aside; ``save`` raises.
    """

    def __init__(self, directory: Any, *, save_every: int, keep_latest: int,
                 keep_every: Optional[int] = None, async_save: bool = True,
                 metadata: Optional[dict] = None, read_only: bool = False):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep_latest < 1:
            raise ValueError(f"keep_latest must be >= 1, got {keep_latest}")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be >= 1 or None, got {keep_every}")
        self.directory = _as_path(directory)
        self.read_only = bool(read_only)
        self._pending_step: Optional[int] = None  # the async save in flight (or last started)
        _install_noise_filters()
        if not read_only:
            self._report_half_written()
        self._default_metadata = dict(metadata or {})
        keep: list[Any] = [ocm.LatestN(keep_latest)]
        if keep_every is not None:
            keep.append(ocm.EveryNSteps(keep_every))
        with _absl_warnings_muted(read_only):  # Orbax warns that read-only mode does not save
            options = ocp.CheckpointManagerOptions(
                save_decision_policy=ocm.AnySavePolicy(
                    [ocm.FixedIntervalPolicy(save_every), ocm.PreemptionCheckpointingPolicy()]),
                preservation_policy=ocm.AnyPreservationPolicy(keep),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=not read_only,
                create=not read_only,
                read_only=read_only,
            )
            self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def _report_half_written(self) -> None:
        """Name the saves a crash left unfinished (Orbax temporary step directories), which Orbax
        deletes when the manager opens; they are never chosen on resume."""
        try:
            names = [p.name for p in self.directory.iterdir()] if self.directory.exists() else []
        except OSError:
            return
        for step in sorted({int(m.group(1)) for n in names if (m := _TMP_STEP.match(n))}):
            _warn(f"checkpoint step {step} in {self.directory} was half-written (its save did not finish): "
                  f"discarded; resuming from the newest complete step")

    # ------------------------------------------------------------------ queries
    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _incomplete_reason(self, step: int, need_data: bool = False) -> Optional[str]:
        """Cheap structural check of a step directory; None when it looks complete."""
        d = self._step_dir(step)
        if not d.exists():
            return "its directory is missing"
        if not (d / COMMIT_MARKER).exists():
            return f"it has no commit marker ({COMMIT_MARKER}): the save did not finish"
        for item in (STATE, METADATA) + ((DATA,) if need_data else ()):
            if not (d / item).exists():
                return f"its {item!r} item is missing"
        return None

    def all_steps(self) -> list[int]:
        """Steps that look complete on disk, ascending (a save still in flight is not listed)."""
        return [s for s in sorted(self._mngr.all_steps()) if self._incomplete_reason(s) is None]

    def latest_step(self) -> Optional[int]:
        """The newest complete step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return self._mngr.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster signalled preemption and all hosts reached ``step`` (then save+exit)."""
        return self._mngr.reached_preemption(step)

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any, data_iterator: Any = None,
             metadata: Optional[dict] = None, force: bool = False) -> bool:
        """Save ``state`` (+ iterator, + JSON metadata) if the policy says so (or ``force``).

        Returns whether a save was started.  Must be called on every process.
        """
        if self.read_only:
            raise RuntimeError(f"checkpoint directory {self.directory} was opened read-only")
        items: dict[str, Any] = {
            STATE: ocp.args.StandardSave(state),
            METADATA: ocp.args.JsonSave(dict(self._default_metadata if metadata is None else metadata)),
        }
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            started = self._mngr.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 -- this save, or the previous async one, failed
            raise self._save_error(e, self._pending_step if self._pending_step is not None else step) from e
        if started:
            self._pending_step = step
        return started

    def _save_error(self, e: BaseException, step: int) -> CheckpointSaveError:
        reason = "no space left on device (the disk is full)" if _is_disk_full(e) else short_error(e)
        try:
            good = [s for s in self.all_steps() if s != step]
        except Exception:  # noqa: BLE001 -- the error being reported matters more
            good = []
        keep = f"newest complete checkpoint: step {good[-1]}" if good else "no complete checkpoint"
        return CheckpointSaveError(errno.ENOSPC if _is_disk_full(e) else errno.EIO,
                                   f"saving checkpoint step {step} failed: {reason}; {keep} "
                                   f"(the unfinished step is never used on resume)", str(self.directory))

    # ------------------------------------------------------------------ restore
    def restore(self, step: Optional[int] = None, abstract_state: Any = None,
                data_iterator: Any = None) -> tuple[int, Any, dict]:
        """Restore ``(step, state, metadata)``; ``data_iterator`` (if given) is restored in place.

        ``abstract_state``: tree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` (or arrays)
        for the *current* mesh; the saved arrays are resharded onto it.  None restores onto the
        saved shardings, which only works on the same topology.

        ``step=None``: the newest step that restores cleanly; incomplete or unreadable newer steps
        are skipped with a :class:`CheckpointCorruptionWarning` and moved aside.  An explicit
        ``step`` is restored or raises.  Raises ``FileNotFoundError`` when there is no usable step and
        ``RuntimeError`` (chained to the first error) when every complete step failed to restore.
        """
        need_data = data_iterator is not None
        if step is not None:
            reason = self._incomplete_reason(step, need_data)
            if reason is not None:
                raise FileNotFoundError(f"checkpoint step {step} in {self.directory} is unusable: {reason}")
            return self._restore_step(step, abstract_state, data_iterator)

        self.wait_until_finished()
        skipped: list[str] = []
        incomplete: list[int] = []  # structurally broken: always moved aside
        unreadable: list[int] = []  # restore raised: moved aside only if an older step restores
        first_error: Optional[Exception] = None
        for s in sorted(self._mngr.all_steps(), reverse=True):
            reason = self._incomplete_reason(s, need_data=False)
            if reason is not None:
                incomplete.append(s)
            elif need_data and not (self._step_dir(s) / DATA).exists():
                reason = "it has no data-iterator state (saved without data_iterator)"
            else:
                try:
                    result = self._restore_step(s, abstract_state, data_iterator)
                except Exception as e:  # noqa: BLE001 -- any read failure means "try an older step"
                    reason = f"it cannot be read ({short_error(e)})"
                    unreadable.append(s)
                    first_error = first_error or e
                else:
                    self._quarantine(incomplete + unreadable)
                    return result
            msg = f"checkpoint step {s} in {self.directory} is skipped: {reason}"
            _warn(msg)
            skipped.append(msg)
        # Every complete step failed to restore: more likely a wrong abstract_state than corruption
        # of all of them, so only the structurally incomplete steps are moved aside.
        self._quarantine(incomplete)
        details = "".join(f"\n  {m}" for m in skipped)
        if first_error is not None:
            raise RuntimeError(f"no checkpoint in {self.directory} could be restored (check that "
                               f"abstract_state matches the saved state){details}") from first_error
        raise FileNotFoundError(f"no restorable checkpoint in {self.directory}{details}")

    def _restore_step(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[int, Any, dict]:
        items: dict[str, Any] = {
            STATE: ocp.args.StandardRestore(abstract_state),
            METADATA: ocp.args.JsonRestore(),
        }
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return step, restored[STATE], dict(restored[METADATA] or {})

    def _quarantine(self, steps: list[int]) -> None:
        """Move bad step directories aside so the step numbers can be saved again (not when read-only:
        a step that looks incomplete to a reader may be one the writer is still saving)."""
        if not steps or self.read_only:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for s in steps:
                src = self._step_dir(s)
                dst = self.directory / f"{s}.corrupt-{stamp}"
                try:
                    move_tree(src, dst)
                    log.info("moved unusable checkpoint step %d to %s", s, dst)
                except OSError as e:  # leave it; a later save of this step will then fail loudly
                    log.error("could not move unusable checkpoint step %d aside: %s", s, e)
        _sync("bltjax_checkpoint_quarantine")
        self._mngr.reload()

    # ------------------------------------------------------------------ lifecycle
    def wait_until_finished(self) -> None:
        """Block until in-flight async saves are committed; ``CheckpointSaveError`` if one failed."""
        try:
            self._mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            step, self._pending_step = self._pending_step, None
            raise self._save_error(e, step if step is not None else -1) from e
        self._pending_step = None

    def close(self) -> None:
        """Wait for pending saves and release Orbax resources (``CheckpointSaveError`` if a save failed)."""
        try:
            self.wait_until_finished()
        finally:
            with contextlib.suppress(Exception):
                self._mngr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# One-off params checkpoints (model conversion, eval exports)
# ----------------------------------------------------------------------------------------------

PARAMS = "params"


def _params_checkpointer() -> Any:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        **{PARAMS: ocp.StandardCheckpointHandler(), METADATA: ocp.JsonCheckpointHandler()}))


def save_params(directory: Any, params: Any, metadata: Optional[dict] = None, *,
                overwrite: bool = False) -> None:
    """Synchronously write ``params`` (any pytree of arrays) + JSON ``metadata`` to ``directory``.

    Layout: ``<directory>/params/`` (Orbax StandardSave) and ``<directory>/metadata/``.
    """
    path = _as_path(directory)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        if jax.process_index() == 0:
            path.rmtree()
        _sync("bltjax_save_params_rmtree")
    ckptr = _params_checkpointer()
    ckptr.save(path, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        METADATA: ocp.args.JsonSave(dict(metadata or {})),
    }))
    ckptr.close()


def load_params(directory: Any, abstract: Any = None) -> tuple[Any, dict]:
    """Read a :func:`save_params` checkpoint: ``(params, metadata)``.

    ``abstract``: target tree of ``jax.ShapeDtypeStruct`` with shardings (e.g.
    ``bltjax.sharding.abstract_params``).  None loads every array onto the first local device,
    whatever topology wrote it.
    """
    path = _as_path(directory)
    if not (path / PARAMS).exists():
        raise FileNotFoundError(f"no params checkpoint at {path}")
    ckptr = _params_checkpointer()
    if abstract is None:
        tree = ckptr.metadata(path).item_metadata[PARAMS].tree
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree)
    items: dict[str, Any] = {PARAMS: ocp.args.StandardRestore(abstract)}
    if (path / METADATA).exists():
        items[METADATA] = ocp.args.JsonRestore()
    restored = ckptr.restore(path, args=ocp.args.Composite(**items))
    ckptr.close()
    metadata = restored[METADATA] if METADATA in items else {}
    return restored[PARAMS], dict(metadata or {})


__all__ = ["CheckpointManager", "CheckpointCorruptionWarning", "CheckpointSaveError", "short_error", "save_params",
           "load_params"]
