"""The run directory of ``python -m bltjax.train`` (a *workdir*) and reading a run back.

Layout::

    <workdir>/config.json        resolved TrainConfig (written once the run is known to be valid)
    <workdir>/run.json           topology of the last start (process / device count, mesh, data workers)
    <workdir>/metrics.jsonl      one record per logged step (process 0; ``bltjax.metrics.MetricsWriter``)
    <workdir>/tensorboard/       the same as TensorBoard events (process 0)
    <workdir>/checkpoints/<step>/  Orbax: train state, Grain iterator state, metadata

``is_workdir`` is the one "is this a training run?" probe; ``load_run`` restores a run's parameters.

A workdir may be a Cloud Storage URL (``gs://bucket/run``): every function here takes one, and
:func:`resolve` turns it into an ``etils.epath.Path`` (local paths stay ``pathlib.Path``).  See
``docs/cloud_storage.md``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
CHECKPOINT_SUBDIR = "checkpoints"


def resolve(workdir: str | os.PathLike) -> pathlib.Path:
    """The workdir as a path object: ``etils.epath.Path`` for ``gs://...`` (and other fsspec URLs),
    else ``pathlib.Path`` with ``~`` expanded."""
    from bltjax.storage import as_path, is_remote

    if is_remote(workdir):
        return as_path(workdir)
    return pathlib.Path(workdir).expanduser()


def config_file(workdir: str | os.PathLike) -> pathlib.Path:
    return resolve(workdir) / CONFIG_FILE


def run_file(workdir: str | os.PathLike) -> pathlib.Path:
    return resolve(workdir) / RUN_FILE


def metrics_file(workdir: str | os.PathLike) -> pathlib.Path:
    return resolve(workdir) / METRICS_FILE


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
    return resolve(workdir) / CHECKPOINT_SUBDIR


def is_workdir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``bltjax.train`` run directory (``config.json`` and ``checkpoints/``)."""
    return config_file(path).is_file() and checkpoint_dir(path).is_dir()


def has_checkpoints(workdir: str | os.PathLike) -> bool:
    """Whether the run has saved at least one step (a numbered ``checkpoints/<step>`` directory)."""
    ckpt = checkpoint_dir(workdir)
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (local: temporary file, then rename; GCS: one object write)."""
    from bltjax.storage import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_previous_topology(workdir: str | os.PathLike) -> dict:
    """The topology recorded by the run's last start (empty for a new run)."""
    f = run_file(workdir)
    return json.loads(f.read_text()).get("topology", {}) if f.is_file() else {}


def read_config(workdir: str | os.PathLike):
    """The ``TrainConfig`` stored in a workdir's ``config.json``."""
    from bltjax.train_config import config_from_dict

    f = config_file(workdir)
    if not f.is_file():
        raise FileNotFoundError(f"{f.parent} is not a bltjax training workdir (no {CONFIG_FILE})")
    return config_from_dict(json.loads(f.read_text()))


def single_device_mesh():
    """A one-device mesh on the first local device (what reading a run uses by default)."""
    import jax

    from bltjax import sharding

    return sharding.make_mesh(sharding.MeshConfig(ici_fsdp=1), devices=jax.local_devices()[:1])


def load_run(workdir: str | os.PathLike, step: Optional[int] = None, mesh: Any = None):
    """``(TrainConfig, params, step)`` of a training workdir (newest usable checkpoint by default).

    The state is restored onto ``mesh`` (default: the first local device) with the shardings of the
    rules table and the optimizer state dropped.  Used for entropy models trained here and by
    ``bltjax.pretrained`` to read training runs.
    """
    import jax

    from bltjax.checkpoint import CheckpointManager
    from bltjax.train_step import make_steps

    workdir = resolve(workdir)
    cfg = read_config(workdir)
    mesh = mesh if mesh is not None else single_device_mesh()
    with jax.set_mesh(mesh):
        abstract = make_steps(cfg, mesh).abstract_state
        mngr = CheckpointManager(checkpoint_dir(workdir), save_every=1, keep_latest=1_000_000,
                                 async_save=False, read_only=True)  # the run may still be writing
        try:
            got_step, state, _ = mngr.restore(step, abstract_state=abstract)
        finally:
            mngr.close()
    return cfg, state["params"], got_step


__all__ = ["resolve", "CONFIG_FILE", "RUN_FILE", "METRICS_FILE", "TENSORBOARD_SUBDIR", "CHECKPOINT_SUBDIR",
           "config_file", "run_file", "metrics_file", "checkpoint_dir", "is_workdir", "has_checkpoints", "write_json",
           "read_previous_topology", "read_config", "single_device_mesh", "load_run"]
