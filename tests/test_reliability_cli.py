"""The CLI error boundary: expected failures are one ``error:`` line and exit 2, nothing is written.

Real command-line runs (subprocesses) for the failures that used to end in tracebacks; small in-process
checks for the helpers.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import pytest
from helpers.subprocess_env import REPO, env_with_devices

from bltjax import cli

TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
ONE_DEVICE = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=1", "--set", "mesh.ici_tensor=1"]


def run(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env_with_devices(1), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_train_workdir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
    line = one_error_line(run("bltjax.train", "--config", TINY, *ONE_DEVICE, "--workdir", str(workdir)))
    assert "cannot be created" in line and str(tmp_path / "file") in line


def test_train_checks_data_val_path_with_eval_off(tmp_path):
    (tmp_path / "train.txt").write_text("some text " * 200)
    line = one_error_line(run("bltjax.train", "--config", TINY, *ONE_DEVICE, "--workdir", str(tmp_path / "run"),
                              "--set", "data.source=text", "--set", f"data.path={tmp_path / 'train.txt'}",
                              "--set", f"data.val_path={tmp_path / 'missing.txt'}", "--set", "eval_every=0"))
    assert line.startswith("error: data.val_path: ") and "missing.txt" in line
    assert not (tmp_path / "run").exists()


def test_changed_shape_refused_from_checkpoint_config_when_config_json_is_gone(tmp_path):
    """With config.json deleted, the config saved in the newest checkpoint's metadata decides."""
    from bltjax.train_config import config_to_dict, load_config

    workdir = tmp_path / "run"
    step = workdir / "checkpoints" / "3"
    (step / "metadata").mkdir(parents=True)
    (step / "commit_success.txt").write_text("ok")
    (step / "metadata" / "metadata").write_text(json.dumps({"config": config_to_dict(load_config(TINY))}))
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    line = one_error_line(run("bltjax.train", "--config", TINY, *ONE_DEVICE, "--workdir", str(workdir),
                              "--set", "model.dim_global=128"))
    assert "holds checkpoints of a different model (dim_global: 64 -> 128)" in line
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_tensorboard_nan_values_are_not_warned_about(tmp_path, caplog):
    from bltjax.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=True)
    with caplog.at_level(logging.WARNING):
        writer.write(1, {"loss": math.nan, "grad_norm": math.inf})
    writer.close()
    assert not [r for r in caplog.records if "NaN or Inf" in r.getMessage()]


def test_run_cli_sorts_failures_into_one_line_and_bugs(capsys, monkeypatch):
    monkeypatch.delenv("BLTJAX_TRACEBACK", raising=False)

    def fails(exc):
        def main(argv):
            raise exc
        return main

    assert cli.run_cli(fails(ValueError("model.dim_global must be > 0\nsecond line"))) == 2
    assert capsys.readouterr().err == "error: model.dim_global must be > 0\n"
    assert cli.run_cli(fails(PermissionError(13, "Permission denied", "/x/run"))) == 2
    assert capsys.readouterr().err == "error: /x/run: Permission denied\n"
    assert cli.run_cli(fails(OSError(28, "No space left on device", "/x/ckpt"))) == 2
    assert capsys.readouterr().err == "error: /x/ckpt: No space left on device (the disk is full)\n"
    assert cli.run_cli(fails(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.run_cli(fails(ZeroDivisionError("division by zero")))
    assert cli.run_cli(lambda argv: 3) == 3 and cli.run_cli(lambda argv: None) == 0


def _release_with_unknown_field(tmp_path):
    import shutil

    src = REPO / "tests" / "data" / "tiny-entropy"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    params = json.loads((dst / "params.json").read_text())
    params["frobnicate"] = 1
    (dst / "params.json").write_text(json.dumps(params))
    return dst


@pytest.mark.parametrize("case", ["generate_missing", "generate_unknown_field", "generate_prompt_file", "eval_missing",
                                  "convert_missing", "entropy_tools_missing"])
def test_every_cli_reports_bad_paths_in_one_line(tmp_path, case):
    missing = str(tmp_path / "missing")
    module, args, expected = {
        "generate_missing": ("bltjax.generation", ["--checkpoint", missing, "--prompt", "hi"], missing),
        "generate_unknown_field": ("bltjax.generation", ["--checkpoint", "UNKNOWN", "--prompt", "hi"], "frobnicate"),
        "generate_prompt_file": ("bltjax.generation", ["--checkpoint", missing, "--prompt-file", missing + ".txt"],
                                 missing + ".txt"),
        "eval_missing": ("bltjax.eval", ["--checkpoint", missing, "--data", missing + ".txt"], missing),
        "convert_missing": ("bltjax.convert", [missing, "--out", str(tmp_path / "out")], missing),
        "entropy_tools_missing": ("bltjax.entropy_tools", ["calibrate", "--entropy-model", missing, "--data",
                                                           missing + ".txt"], missing),
    }[case]
    if "UNKNOWN" in args:
        args[args.index("UNKNOWN")] = str(_release_with_unknown_field(tmp_path))
    line = one_error_line(run(module, *args, cwd=tmp_path))
    assert expected in line, line
    assert not (tmp_path / "out").exists()
