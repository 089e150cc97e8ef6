"""A training run whose workdir and data live in Cloud Storage (an emulator on loopback, started here).

``python -m bltjax.train --workdir gs://...`` reading ArrayRecord shards from ``gs://`` is SIGKILLed
while its async save of step 6 is in flight (so step 3 is the newest committed checkpoint), restarted on
the same workdir, and finishes.  Its per-step losses in the bucket's metrics.jsonl must equal, bit for
bit, those of an uninterrupted run on a local workdir reading local copies of the same shards.  Then the
run is read back from the bucket: ``load_run``, ``load_pretrained``, ``bltjax.eval`` (data and JSON output
on ``gs://`` too) and generation must give exactly what the local run gives.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers.gcs_emulator import BUCKET, gcs  # noqa: F401  (fixture)
from helpers.subprocess_env import env_with_devices

from bltjax import storage, workdir
from bltjax.metrics import read_jsonl

REPO = pathlib.Path(__file__).parent.parent
TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
KILLER = str(REPO / "tests" / "helpers" / "train_child_kill.py")
ONE_DEVICE = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=1", "--set", "mesh.ici_tensor=1"]
STEPS = 9
GS_RUN = f"gs://{BUCKET}/runs/tiny"
GS_DATA = f"gs://{BUCKET}/corpus"


def corpus_documents() -> list[list[bytes]]:
    """Two ArrayRecord shards of text documents (Python stdlib sources: real text, always present)."""
    import string
    import textwrap

    docs = [pathlib.Path(m.__file__).read_bytes() for m in (textwrap, string, json.decoder, json.encoder)]
    return [docs[:2], docs[2:]]


def write_shards(local_dir: pathlib.Path) -> list[pathlib.Path]:
    from array_record.python.array_record_module import ArrayRecordWriter

    local_dir.mkdir(parents=True)
    paths = []
    for k, shard in enumerate(corpus_documents()):
        path = local_dir / f"train-{k:05d}.array_record"
        w = ArrayRecordWriter(str(path), "group_size:1")
        for doc in shard:
            w.write(doc)
        w.close()
        paths.append(path)
    return paths


def train_cmd(run_dir: str, data: str, killer: list[str] | None = None) -> list[str]:
    args = ["--config", TINY, "--workdir", run_dir, *ONE_DEVICE, "--set", f"steps={STEPS}",
            "--set", "data.source=array_record", "--set", f"data.path={data}", "--set", "tensorboard=True"]
    if killer is not None:
        return [sys.executable, KILLER, *killer, "--", *args]
    return [sys.executable, "-m", "bltjax.train", *args]


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)


def committed_steps(run_dir: str) -> list[int]:
    ckpt = workdir.checkpoint_dir(run_dir)
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(workdir.metrics_file(run_dir))}


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):  # noqa: F811
    """``(local reference workdir, gs:// workdir, local shard dir)`` after both runs finished."""
    tmp = tmp_path_factory.mktemp("train_gcs")
    shards = write_shards(tmp / "corpus")
    for p in shards:
        storage.as_path(f"{GS_DATA}/{p.name}").write_bytes(p.read_bytes())
    env = {**env_with_devices(1), **gcs, storage.ENV_CACHE_DIR: str(tmp / "cache")}

    ref = str(tmp / "ref")
    proc = run(train_cmd(ref, str(tmp / "corpus" / "*.array_record")), env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # 1. killed while the async save of step 6 is in flight (Orbax finished step 3's save before starting it)
    proc = run(train_cmd(GS_RUN, f"{GS_DATA}/*.array_record", killer=["--after-save-start", "6"]), env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "KILL after starting the save of step 6" in proc.stdout
    assert "staging ArrayRecord shard gs://" in proc.stderr  # the shards went through the local cache
    committed = committed_steps(GS_RUN)
    assert committed in ([3], [3, 6])
    # 2. restarted on the same bucket workdir: resumes and finishes
    proc = run(train_cmd(GS_RUN, f"{GS_DATA}/*.array_record"), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_from = int(re.search(r"resuming from step (\d+)", proc.stdout).group(1))
    assert resumed_from == committed[-1]
    return ref, GS_RUN, tmp


def test_killed_and_resumed_gcs_run_matches_an_uninterrupted_local_run(runs):
    ref, gs_run, _ = runs
    want = losses(ref)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert losses(gs_run) == want  # bitwise: same batches in the same order, same state
    assert STEPS in committed_steps(gs_run)
    cfg = json.loads(workdir.config_file(gs_run).read_text())
    assert cfg["workdir"] == gs_run and cfg["data"]["path"] == f"{GS_DATA}/*.array_record"
    assert json.loads(workdir.run_file(gs_run).read_text())["topology"]["device_count"] == 1
    events = [p.name for p in storage.as_path(f"{gs_run}/{workdir.TENSORBOARD_SUBDIR}").iterdir()]
    assert len(events) == 2 and all(n.startswith("events.out.tfevents") for n in events)  # one file per start
    assert workdir.is_workdir(gs_run) and workdir.has_checkpoints(gs_run)


def test_load_run_eval_and_generate_from_the_bucket(runs):
    from bltjax import eval as eval_cli
    from bltjax.generation import generate
    from bltjax.pretrained import load_pretrained

    ref, gs_run, tmp = runs
    _, params_gs, step_gs = workdir.load_run(gs_run)
    _, params_ref, step_ref = workdir.load_run(ref)
    assert step_gs == step_ref == STEPS
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params_gs), jax.device_get(params_ref))

    # evaluation: checkpoint, data and the JSON report in the bucket; the same numbers as the local run
    texts = {"a.txt": b"The quick brown fox jumps over the lazy dog.\n" * 4,
             "b.txt": "caf\u00e9 na\u00efve\n".encode() * 8}
    for name, data in texts.items():
        storage.as_path(f"gs://{BUCKET}/eval/{name}").write_bytes(data)
        (tmp / name).write_bytes(data)
    out = f"gs://{BUCKET}/eval/report.json"
    assert eval_cli.main(["--checkpoint", gs_run, "--data", f"gs://{BUCKET}/eval/*.txt", "--seq-len", "64",
                          "--json", out, "--report", "--out-dir", f"gs://{BUCKET}/eval/report", "--no-progress"]) == 0
    got = json.loads(storage.as_path(out).read_text())
    report = {p.name: p for p in storage.as_path(f"gs://{BUCKET}/eval/report").iterdir()}
    assert sorted(report) == ["report.json", "report.md", "report.png"]
    assert json.loads(report["report.json"].read_text()) == got
    local = eval_cli.evaluate_paths(ref, f"{tmp}/a.txt,{tmp}/b.txt", seq_len=64, progress=False).to_dict()
    assert got["total"]["bits_per_byte"] == local["total"]["bits_per_byte"]
    assert [f["name"] for f in got["files"]] == [f"gs://{BUCKET}/eval/a.txt", f"gs://{BUCKET}/eval/b.txt"]

    # generation from the bucket checkpoint: the same bytes as from the local one
    model_gs, model_ref = load_pretrained(gs_run), load_pretrained(ref)
    assert model_gs.source == "workdir" and str(model_gs.path) == gs_run
    prompts = ["def ", "import "]
    a = generate(model_gs, prompts, max_new_bytes=12)
    b = generate(model_ref, prompts, max_new_bytes=12)
    assert [r.completion for r in a] == [r.completion for r in b]
    assert all(len(r.completion) > 0 for r in a)
