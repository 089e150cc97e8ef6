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
import logging
import time
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
        return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

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
                    reason = f"restoring it failed with {type(e).__name__}: {str(e)[:500]}"
                    unreadable.append(s)
                    first_error = first_error or e
                else:
                    self._quarantine(incomplete + unreadable)
                    return result
            msg = f"checkpoint step {s} in {self.directory} is skipped: {reason}"
            warnings.warn(msg, CheckpointCorruptionWarning, stacklevel=2)
            log.warning(msg)
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
                    log.warning("moved unusable checkpoint step %d to %s", s, dst)
                except OSError as e:  # leave it; a later save of this step will then fail loudly
                    log.error("could not move unusable checkpoint step %d aside: %s", s, e)
        _sync("bltjax_checkpoint_quarantine")
        self._mngr.reload()

    # ------------------------------------------------------------------ lifecycle
    def wait_until_finished(self) -> None:
        """Block until in-flight async saves are committed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release Orbax resources."""
        self._mngr.wait_until_finished()
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


__all__ = ["CheckpointManager", "CheckpointCorruptionWarning", "save_params", "load_params"]
