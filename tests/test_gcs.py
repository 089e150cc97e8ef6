"""``gs://`` paths against a Cloud Storage emulator on loopback (tests/helpers/gcs_emulator.py): storage helpers,
the metrics writer's local mirror, Orbax checkpoints (save, restore, corrupt-step quarantine) and data
sources (text files, ArrayRecord shards staged to a local cache)."""

from __future__ import annotations

import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gcs_emulator import BUCKET, gcs  # noqa: F401  (fixture)

from bltjax import storage
from bltjax.metrics import MetricsWriter, read_jsonl

pytestmark = pytest.mark.usefixtures("gcs")


def url(*parts: str) -> str:
    return "/".join([f"gs://{BUCKET}", *parts])


def test_storage_paths_atomic_write_and_staging(tmp_path, caplog):
    p = storage.as_path(url("s", "a", "config.json"))
    assert storage.is_remote(p) and storage.display(p) == url("s", "a", "config.json")
    storage.write_text_atomic(p, '{"x": 1}')
    assert json.loads(p.read_text()) == {"x": 1}
    assert sorted(q.name for q in storage.as_path(url("s", "a")).iterdir()) == ["config.json"]
    local = tmp_path / "l.json"
    storage.write_text_atomic(local, "y")
    assert local.read_text() == "y" and not (tmp_path / "l.json.tmp").exists()
    assert storage.stage_local(local) == local  # local paths are not copied

    blob = storage.as_path(url("s", "blob.bin"))
    blob.write_bytes(bytes(range(256)) * 10)
    with caplog.at_level("WARNING", logger="bltjax.storage"):
        got = storage.stage_local(blob, root=tmp_path / "cache")
    assert got.read_bytes() == bytes(range(256)) * 10 and str(got).startswith(str(tmp_path / "cache"))
    assert "staging file gs://" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bltjax.storage"):
        assert storage.stage_local(blob, root=tmp_path / "cache") == got  # cached: no second download
    assert "staging" not in caplog.text


def test_metrics_writer_on_gcs_mirrors_jsonl_and_tensorboard_and_resumes():
    workdir = url("m", "run")
    with MetricsWriter(workdir, tensorboard=True, enabled=True, sync_every_s=1e9) as w:
        assert w.remote
        w.write(1, {"loss": 2.5})
        w.write_deferred(2, {"loss": jnp.float32(2.25)})
        assert not storage.as_path(workdir, ).joinpath("metrics.jsonl").exists()  # not uploaded yet
        w.flush()  # writes step 2 and uploads
        assert [r["step"] for r in read_jsonl(workdir + "/metrics.jsonl")] == [1, 2]
        w.write(3, {"loss": 2.0})
    tb = list(storage.as_path(workdir + "/tensorboard").iterdir())
    assert len(tb) == 1 and tb[0].name.startswith("events.out.tfevents") and tb[0].stat().length > 0
    # a resumed run continues the same file (downloaded into the new mirror first)
    with MetricsWriter(workdir, tensorboard=False, enabled=True) as w2:
        w2.write(3, {"loss": 1.75})
        w2.write(4, {"loss": 1.5})
    recs = read_jsonl(workdir + "/metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 2.5), (2, 2.25), (3, 1.75), (4, 1.5)]


def test_checkpoint_manager_on_gcs_save_restore_and_quarantine():
    from bltjax.checkpoint import CheckpointCorruptionWarning, CheckpointManager

    directory = url("c", "ckpt")
    state = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.int32(0)}
    with CheckpointManager(directory, save_every=1, keep_latest=5, metadata={"k": "v"}) as mngr:
        for s in (1, 2):
            mngr.save(s, {**state, "w": state["w"] + s, "step": jnp.int32(s)})
        mngr.wait_until_finished()
        assert mngr.all_steps() == [1, 2]
    # truncate step 2's array data: a resume warns, falls back to step 1 and moves step 2 aside
    for f in storage.files_under(directory + "/2/state"):
        if f.parent.name == "d":
            f.write_bytes(b"")
    abstract = jax.eval_shape(lambda x: x, state)
    with CheckpointManager(directory, save_every=1, keep_latest=5) as mngr:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step, restored, meta = mngr.restore(abstract_state=abstract)
        assert step == 1 and meta == {"k": "v"}
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(12.0).reshape(3, 4) + 1)
        assert any(issubclass(c.category, CheckpointCorruptionWarning) for c in caught)
        names = [p.name for p in storage.as_path(directory).iterdir()]
        assert any(n.startswith("2.corrupt-") for n in names) and "2" not in names, names
        mngr.save(2, {**state, "step": jnp.int32(2)})  # the step number is free again
        mngr.wait_until_finished()
        assert mngr.latest_step() == 2


def test_text_and_array_record_sources_read_from_gcs(tmp_path, monkeypatch):
    from array_record.python.array_record_module import ArrayRecordWriter

    from bltjax.data.sources import ArrayRecordSource, DataError, text_files

    monkeypatch.setenv(storage.ENV_CACHE_DIR, str(tmp_path / "cache"))
    for name, text in (("b.txt", "second file"), ("a.txt", "first file"), ("sub/c.txt", "third")):
        storage.as_path(url("d", "txt", name)).write_text(text)
    src = text_files(url("d", "txt"))
    assert [src[i] for i in range(len(src))] == [b"first file", b"second file", b"third"]
    src = text_files(url("d", "txt", "*.txt"))
    assert len(src) == 2 and src.names[0] == url("d", "txt", "a.txt")
    with pytest.raises(DataError, match="does not exist"):
        text_files(url("d", "nope.txt"))

    docs = [[b"alpha", b"beta"], [b"gamma"]]
    for k, shard in enumerate(docs):
        local = tmp_path / f"shard{k}.array_record"
        w = ArrayRecordWriter(str(local), "group_size:1")
        for d in shard:
            w.write(d)
        w.close()
        storage.as_path(url("d", "ar", local.name)).write_bytes(local.read_bytes())
    src = ArrayRecordSource(url("d", "ar", "*.array_record"))
    assert [src[i] for i in range(len(src))] == [b"alpha", b"beta", b"gamma"]
    assert src.locate(2) == (url("d", "ar", "shard1.array_record"), 0)
    assert all(str(p).startswith(str(tmp_path / "cache")) for p in src.local_paths)


def test_train_refuses_a_workdir_in_a_missing_bucket(capsys):
    from bltjax import train

    tiny = str(pathlib.Path(__file__).parent / "helpers" / "train_child_tiny.py")
    rc = train.main(["--config", tiny, "--workdir", "gs://no-such-bucket-bltjax/run"])
    assert rc == train.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == ("error: --workdir gs://no-such-bucket-bltjax/run: bucket gs://no-such-bucket-bltjax does not "
                   "exist or is not visible with the current credentials")


def test_precomputed_entropies_written_to_and_read_from_gcs(fixture_dir, tmp_path, monkeypatch):
    from bltjax import entropy_tools
    from bltjax.data.entropy_file import load_precomputed

    monkeypatch.setenv(storage.ENV_CACHE_DIR, str(tmp_path / "cache"))
    model = entropy_tools.load_entropy_model(fixture_dir / "entropy_model")
    data = tmp_path / "docs"
    data.mkdir()
    (data / "a.txt").write_text("Bytes, not tokens: the patcher reads entropies.\n" * 3)
    (data / "b.txt").write_text("caf\u00e9 au lait\n" * 5)
    local = entropy_tools.precompute_entropies(model, str(data), tmp_path / "ent", chunk_len=64, progress=False)
    remote = entropy_tools.precompute_entropies(model, str(data), url("ent"), chunk_len=64, progress=False)
    assert remote["train"].path == url("ent")
    index = json.loads(storage.as_path(url("ent", "index.json")).read_text())
    assert index["entropies_path"] == url("ent", "entropies_{split}.npy")
    back = load_precomputed(url("ent"))  # the .npy is staged to the local cache to be memory-mapped
    np.testing.assert_array_equal(back.entropies, local["train"].entropies)
    np.testing.assert_array_equal(back.offsets, local["train"].offsets)


def test_tfds_data_dir_on_gcs_is_refused_with_advice():
    from bltjax.data.sources import DataError, TfdsSource

    with pytest.raises(DataError, match="use data.source='array_record'"):
        TfdsSource("my_corpus", data_dir=url("tfds"))


def _upload(local_dir: pathlib.Path, dest: str, names: list[str]) -> None:
    for name in names:
        storage.as_path(f"{dest}/{name}").write_bytes((local_dir / name).read_bytes())


def _assert_same_model(a, b) -> None:
    assert a.config == b.config and a.source == b.source
    for tree_a, tree_b in ((a.params, b.params), (a.entropy_params, b.entropy_params)):
        assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(tree_a), jax.device_get(tree_b))


def test_load_pretrained_release_and_hf_layouts_from_gcs(fixture_dir, tmp_path, monkeypatch, caplog):
    """Layouts whose weight files need local readers (torch .pth, safetensors) are staged, then loaded."""
    from bltjax.pretrained import load_pretrained

    monkeypatch.setenv(storage.ENV_CACHE_DIR, str(tmp_path / "cache"))
    release = url("models", "release")  # a release BLT with its entropy model in entropy_model/
    _upload(fixture_dir, release, ["params.json", "consolidated.pth", "entropy_model/params.json",
                                   "entropy_model/consolidated.pth"])
    with caplog.at_level("WARNING", logger="bltjax.storage"):
        got = load_pretrained(release)
    assert "staging release weights gs://" in caplog.text
    _assert_same_model(got, load_pretrained(fixture_dir))
    assert got.source == "release" and got.entropy_params is not None

    hf_local = fixture_dir.parent / "hf-tiny"
    hf = url("models", "hf")
    _upload(hf_local, hf, ["config.json", "generation_config.json", "model.safetensors"])
    _assert_same_model(load_pretrained(hf), load_pretrained(hf_local))
