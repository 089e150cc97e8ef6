"""Checkpoint wrapper: sharded roundtrips, keep policies, mesh changes, corruption fallback, Grain state."""

from __future__ import annotations

import glob
import os
import shutil

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax import sharding as sh
from bltjax.checkpoint import CheckpointCorruptionWarning, CheckpointManager, load_params, save_params

MESH_222 = sh.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2)

# state leaf -> PartitionSpec (same specs on every mesh; only the mesh changes)
SPECS = {"params": {"w": P("fsdp", "tensor"), "emb": P(None, ("fsdp", "tensor")), "b": P("tensor")},
         "step": P()}


def _mesh(data: int, fsdp: int, tensor: int):
    return sh.make_mesh(sh.MeshConfig(ici_data=data, ici_fsdp=fsdp, ici_tensor=tensor))


def _host_state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": {"w": rng.normal(size=(8, 16)).astype(np.float32),
                       "emb": rng.normal(size=(4, 8)).astype(np.float32),
                       "b": np.arange(16, dtype=np.float32) + seed},
            "step": np.asarray(seed, np.int32)}


def _shardings(mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS, is_leaf=lambda s: isinstance(s, P))


def _state(seed: int, mesh) -> dict:
    return jax.device_put(_host_state(seed), _shardings(mesh))


def _abstract(mesh) -> dict:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        _host_state(0), _shardings(mesh))


def _assert_state(restored, seed: int, mesh) -> None:
    want = _host_state(seed)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), want)  # per-leaf message on a mismatch
    jax.tree.map(lambda r, s: r.sharding.is_equivalent_to(s, r.ndim) or pytest.fail(f"{r.sharding} != {s}"),
                 restored, _shardings(mesh))


@pytest.fixture(scope="module")
def mesh222():
    return sh.make_mesh(MESH_222)


def test_roundtrip_sync_with_metadata(tmp_path, mesh222):
    meta = {"config": {"dim": 32, "sizes": [3, 4]}, "name": "tiny"}
    with CheckpointManager(tmp_path / "ckpt", save_every=1, keep_latest=3, async_save=False) as m:
        assert m.latest_step() is None
        assert m.save(5, _state(5, mesh222), metadata=meta)
        assert m.all_steps() == [5]
        step, state, got_meta = m.restore(abstract_state=_abstract(mesh222))
    assert step == 5 and got_meta == meta
    _assert_state(state, 5, mesh222)


def test_async_saves_and_keep_policies(tmp_path, mesh222):
    m = CheckpointManager(tmp_path, save_every=2, keep_latest=2, keep_every=4,
                          metadata={"run": "default"})
    saved = [s for s in range(11) if m.save(s, _state(s, mesh222))]
    assert saved == [0, 2, 4, 6, 8, 10]  # save_every
    assert m.save(11, _state(11, mesh222), force=True)  # force ignores the interval
    m.wait_until_finished()
    # latest 2 (10, 11) + every multiple of 4 (0, 4, 8)
    assert m.all_steps() == [0, 4, 8, 10, 11]
    assert m.latest_step() == 11
    step, state, meta = m.restore(abstract_state=_abstract(mesh222))
    assert step == 11 and meta == {"run": "default"}
    _assert_state(state, 11, mesh222)
    step, state, _ = m.restore(4, abstract_state=_abstract(mesh222))
    assert step == 4
    _assert_state(state, 4, mesh222)
    assert m.reached_preemption(11) is False
    m.close()


def test_restore_onto_other_mesh_shapes(tmp_path, mesh222):
    with CheckpointManager(tmp_path, save_every=1, keep_latest=1) as m:
        m.save(3, _state(3, mesh222))
    for shape in ((1, 4, 2), (8, 1, 1)):
        mesh = _mesh(*shape)
        with CheckpointManager(tmp_path, save_every=1, keep_latest=1) as m:
            step, state, _ = m.restore(abstract_state=_abstract(mesh))
        assert step == 3
        _assert_state(state, 3, mesh)
        assert state["params"]["w"].sharding.mesh.devices.shape == shape


def _save_steps(directory, steps, mesh, **kw) -> None:
    with CheckpointManager(directory, save_every=1, keep_latest=10, **kw) as m:
        for s in steps:
            m.save(s, _state(s, mesh), metadata={"step": s})


def _remove_marker(step_dir: str) -> None:
    os.remove(os.path.join(step_dir, "commit_success.txt"))


def _delete_array_files(step_dir: str) -> None:
    files = glob.glob(os.path.join(step_dir, "state", "d", "*"))
    assert files
    for f in files:
        os.remove(f)


def _truncate_array_files(step_dir: str) -> None:
    for f in glob.glob(os.path.join(step_dir, "state", "d", "*")):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _truncate_metadata(step_dir: str) -> None:
    path = os.path.join(step_dir, "metadata", "metadata")
    with open(path, "r+b") as fh:
        fh.truncate(3)


# a failed tensorstore read leaves an un-awaited future inside Orbax: harmless "Exception ignored"
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corrupt", [_remove_marker, _delete_array_files, _truncate_array_files,
                                     _truncate_metadata])
def test_corrupt_latest_step_falls_back(tmp_path, mesh222, corrupt):
    _save_steps(tmp_path, [1, 2], mesh222)
    corrupt(str(tmp_path / "2"))
    m = CheckpointManager(tmp_path, save_every=1, keep_latest=10)
    with pytest.warns(CheckpointCorruptionWarning, match="step 2 .* is skipped"):
        step, state, meta = m.restore(abstract_state=_abstract(mesh222))
    assert step == 1 and meta == {"step": 1}
    _assert_state(state, 1, mesh222)
    # the bad step was moved aside, so training can save step 2 again
    assert not (tmp_path / "2").exists()
    assert glob.glob(str(tmp_path / "2.corrupt-*"))
    assert m.all_steps() == [1]
    assert m.save(2, _state(22, mesh222), metadata={"step": 2})
    m.wait_until_finished()
    step, state, _ = m.restore(abstract_state=_abstract(mesh222))
    assert step == 2
    _assert_state(state, 22, mesh222)
    m.close()


def test_killed_async_save_leaves_no_trace(tmp_path, mesh222):
    """A save killed before commit leaves an Orbax tmp directory: ignored, previous step restored."""
    _save_steps(tmp_path, [1, 2], mesh222)
    # what SIGKILL during the (atomic-rename) save of step 2 leaves behind
    shutil.move(str(tmp_path / "2"), str(tmp_path / "2.orbax-checkpoint-tmp-1234567890"))
    _remove_marker(str(tmp_path / "2.orbax-checkpoint-tmp-1234567890"))
    with CheckpointManager(tmp_path, save_every=1, keep_latest=10) as m:
        assert m.latest_step() == 1
        step, state, _ = m.restore(abstract_state=_abstract(mesh222))
        assert step == 1
        _assert_state(state, 1, mesh222)
        assert m.save(2, _state(2, mesh222))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_explicit_bad_step_raises_and_wrong_target_moves_nothing(tmp_path, mesh222):
    _save_steps(tmp_path, [1, 2], mesh222)
    _remove_marker(str(tmp_path / "2"))
    m = CheckpointManager(tmp_path, save_every=1, keep_latest=10)
    assert m.all_steps() == [1] and m.latest_step() == 1
    with pytest.raises(FileNotFoundError, match="step 2 .* no commit marker"):
        m.restore(2, abstract_state=_abstract(mesh222))
    # a target that matches no step: every step fails -> error, and the good step is left alone
    wrong = _abstract(mesh222)
    wrong["params"]["w"] = jax.ShapeDtypeStruct((3, 3), jnp.float32)
    with pytest.warns(CheckpointCorruptionWarning), pytest.raises(RuntimeError, match="could be restored"):
        m.restore(abstract_state=wrong)
    assert (tmp_path / "1").exists()
    m.close()


def test_no_checkpoint_and_bad_arguments(tmp_path):
    m = CheckpointManager(tmp_path, save_every=1, keep_latest=1)
    with pytest.raises(FileNotFoundError, match="no restorable checkpoint"):
        m.restore()
    m.close()
    for kw in (dict(save_every=0, keep_latest=1), dict(save_every=1, keep_latest=0),
               dict(save_every=1, keep_latest=1, keep_every=0)):
        with pytest.raises(ValueError):
            CheckpointManager(tmp_path, **kw)


def _iterator():
    ds = grain.MapDataset.range(64).shuffle(seed=7).map(lambda i: np.int64(i) * 10).batch(4)
    return iter(ds.to_iter_dataset())


def test_grain_iterator_state_roundtrip(tmp_path, mesh222):
    it = _iterator()
    for _ in range(3):
        next(it)
    with CheckpointManager(tmp_path, save_every=1, keep_latest=2) as m:
        m.save(3, _state(3, mesh222), data_iterator=it)
        m.save(4, _state(4, mesh222))  # a step saved without iterator state
    expected = [next(it) for _ in range(2)]
    fresh = _iterator()
    with CheckpointManager(tmp_path, save_every=1, keep_latest=2) as m:
        # the newest step has no iterator state: it is skipped (with a warning), not moved aside
        with pytest.warns(CheckpointCorruptionWarning, match="step 4 .* no data-iterator state"):
            step, state, _ = m.restore(abstract_state=_abstract(mesh222), data_iterator=fresh)
        assert step == 3 and (tmp_path / "4").exists()
    _assert_state(state, 3, mesh222)
    for want in expected:
        np.testing.assert_array_equal(next(fresh), want)


def test_save_and_load_params(tmp_path, mesh222):
    params = _state(9, mesh222)["params"]
    save_params(tmp_path / "model", params, {"config": {"dim": 8}})
    with pytest.raises(FileExistsError):
        save_params(tmp_path / "model", params)
    loaded, meta = load_params(tmp_path / "model")  # no target: first local device
    assert meta == {"config": {"dim": 8}}
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, loaded), _host_state(9)["params"])
    assert loaded["w"].sharding.device_set == {jax.local_devices()[0]}
    mesh = _mesh(8, 1, 1)
    abstract = _abstract(mesh)["params"]
    loaded, _ = load_params(tmp_path / "model", abstract)
    assert loaded["w"].sharding.is_equivalent_to(abstract["w"].sharding, 2)
    save_params(tmp_path / "model", {"x": jnp.ones(3)}, overwrite=True)
    loaded, meta = load_params(tmp_path / "model")
    assert meta == {} and list(loaded) == ["x"]
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "nothing")


def test_read_only_reader_leaves_a_writers_files_alone(tmp_path, mesh222):
    """A reader (eval, patching tools) opening a directory that a run is saving into: an in-flight
    Orbax tmp directory and an uncommitted step survive, the newest committed step is restored."""
    _save_steps(tmp_path, [1, 2], mesh222)
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp-1234567890")
    shutil.copytree(tmp_path / "2", tmp_path / "4")
    _remove_marker(str(tmp_path / "4"))
    with CheckpointManager(tmp_path, save_every=1, keep_latest=10, read_only=True) as m:
        with pytest.warns(CheckpointCorruptionWarning, match="step 4 .* is skipped"):
            step, state, _ = m.restore(abstract_state=_abstract(mesh222))
        assert step == 2
        _assert_state(state, 2, mesh222)
        with pytest.raises(RuntimeError, match="read-only"):
            m.save(5, _state(5, mesh222))
    assert (tmp_path / "3.orbax-checkpoint-tmp-1234567890").is_dir() and (tmp_path / "4").is_dir()
    assert not glob.glob(str(tmp_path / "4.corrupt-*"))
