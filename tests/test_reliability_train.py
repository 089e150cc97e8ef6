"""The trainer CLI under interruption and questionable input: Ctrl-C, patch overflow, non-UTF-8 text.

Real ``python -m bltjax.train`` subprocesses on one CPU device with the tiny test experiment.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

from helpers.subprocess_env import REPO, env_with_devices

TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
ONE_DEVICE = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=1", "--set", "mesh.ici_tensor=1"]


def cmd(workdir: pathlib.Path, *sets: str) -> list[str]:
    out = [sys.executable, "-m", "bltjax.train", "--config", TINY, "--workdir", str(workdir), *ONE_DEVICE]
    for s in sets:
        out += ["--set", s]
    return out


def run(workdir: pathlib.Path, *sets: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(workdir, *sets), env=env_with_devices(1), cwd=REPO, capture_output=True, text=True,
                          timeout=400)


def interrupt(workdir: pathlib.Path, times: int, *sets: str) -> tuple[int, str, str]:
    """Start a run, send SIGINT ``times`` times (0.2 s apart) once its first step is logged."""
    proc = subprocess.Popen(cmd(workdir, *sets), env=env_with_devices(1), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("step "):
                for _ in range(times):
                    proc.send_signal(signal.SIGINT)
                    time.sleep(0.2)
                break
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(out) + rest, err


def committed(workdir: pathlib.Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def test_ctrl_c_saves_at_the_step_boundary_and_a_second_one_aborts(tmp_path):
    workdir = tmp_path / "run"
    code, out, err = interrupt(workdir, 1, "steps=200")
    assert code == 0, err[-3000:]
    saved = int(out.split("SIGINT: saved step ", 1)[1].split(",")[0])
    assert committed(workdir)[-1] == saved and saved < 200
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    # resumed, then Ctrl-C twice: abort at once with one line, exit 130, nothing newer saved than it had
    code, out, err = interrupt(workdir, 2, "steps=200")
    assert f"resuming from step {saved}" in out
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted", err[-3000:]
    assert all(s <= 200 for s in committed(workdir))


def test_overflow_warned_on_console_and_latin1_text_trains(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 300)
    latin = "le c\u0153ur a ses raisons que la raison ne conna\u00eet point. ".encode("cp1252")
    (corpus / "b.txt").write_bytes(latin * 200)
    proc = run(tmp_path / "run", "steps=3", "data.source=text", f"data.path={corpus}", "model.patcher.mode=space",
               "model.patcher.max_patches=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 file(s) not valid UTF-8" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, proc.stderr[-3000:]  # the first overflow, and the final summary
    assert warnings[0].startswith("warning: step 1: 100% of rows") and "model.patcher.max_patches=4" in warnings[0]
    assert "patch overflow in 3 of 3 logged steps" in warnings[1]


def test_static_max_patches_below_the_need_refused_before_anything_is_written(tmp_path):
    proc = run(tmp_path / "run", "model.patcher.max_patches=8")  # static, patch_size 4, seq_len 64: needs 17
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.patcher.max_patches=8 is too small" in lines[0] and "needs 17" in lines[0]
    assert not (tmp_path / "run").exists()
