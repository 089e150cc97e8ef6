"""Data failures a user meets end in one line, at once: TFDS not prepared, binary files; bytes are bytes."""

from __future__ import annotations

import subprocess
import sys
import time

from helpers.subprocess_env import REPO, env_with_devices

from bltjax.data import DataConfig, pipeline
from bltjax.train_config import apply_overrides, load_config


def train(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bltjax.train", "--workdir", str(tmp_path / "run")]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, env=env_with_devices(1), cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_tfds_dataset_not_prepared_fails_at_once_saying_where_to_put_it(tmp_path):
    (tmp_path / "tfds").mkdir()
    t0 = time.time()
    proc = train(tmp_path, "data.source=tfds", "data.tfds_name=tiny_shakespeare",
                 f"data.tfds_data_dir={tmp_path / 'tfds'}")
    elapsed = time.time() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "not prepared" in lines[0] and "never downloaded" in lines[0] and "data.tfds_data_dir" in lines[0]
    assert "importlib_resources" not in lines[0]
    assert elapsed < 90, elapsed  # no download retries (a retrying run took minutes); bound is loose for busy CI
    assert not (tmp_path / "run").exists() and list((tmp_path / "tfds").iterdir()) == []


def test_binary_file_refused_with_pasteable_override_and_non_utf8_accepted(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain text, " * 50)
    (corpus / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, ".encode("latin-1") * 40)
    (corpus / "blob.bin").write_bytes(b"\x00\x01\x02binary" * 40)
    proc = train(tmp_path, "data.source=text", f"data.path={corpus}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "blob.bin" in lines[0] and "binary" in lines[0], proc.stderr[-3000:]
    override = lines[0].split("pass --set ", 1)[1].split()[0]
    assert override == "data.allow_binary=true"
    assert not (tmp_path / "run").exists()
    # the override can be pasted as written; the Latin-1 file is read as raw bytes by default and counted
    cfg = apply_overrides(load_config(REPO / "experiments" / "default.py"),
                          ["data.source=text", f"data.path={corpus}", "data.val_fraction=0.0", override]).data
    src, index = pipeline.stream_index(cfg, "train")
    assert len(src) == 3 and src.n_invalid_utf8 == 1
    assert index.num_tokens == sum(len(p.read_bytes()) + 2 for p in corpus.iterdir())
    strict = DataConfig(source="text", path=str(corpus / "latin1.txt"), val_fraction=0.0, allow_invalid_utf8=False)
    try:
        pipeline.stream_index(strict, "train")
    except ValueError as e:
        assert "latin1.txt: invalid UTF-8 at byte offset 3" in str(e) and "--set data.allow_invalid_utf8=true" in str(e)
    else:
        raise AssertionError("allow_invalid_utf8=False accepted Latin-1 text")
