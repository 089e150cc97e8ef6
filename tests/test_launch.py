"""The launch scripts' ``--dry-run``: the exact commands they would run, checked word by word."""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["common.sh", "tpu_vm.sh", "gpu_single.sh", "slurm.sbatch", "xpk.sh"]
WORKDIR = "gs://my-bucket/runs/blt_1b"
CONFIG = "experiments/blt_paper.py:1b"


def dry(script: str, *args: str) -> list[list[str]]:
    """Run ``launch/<script> --dry-run ARGS`` and split each printed line into its words."""
    out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def flag(cmd: list[str], name: str) -> str:
    """The value of ``--name=VALUE`` in ``cmd`` (exactly one)."""
    values = [w.split("=", 1)[1] for w in cmd if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, cmd)
    return values[0]


def remote_argv(cmd: list[str]) -> list[str]:
    """The ``python -m bltjax.train`` words of a ``--command=`` remote shell line."""
    words = shlex.split(flag(cmd, "command"))
    start = words.index("bltjax.train")
    end = words.index(">", start) if ">" in words[start:] else len(words)
    return words[start + 1:end]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
    if shutil.which("shellcheck"):
        res = subprocess.run(["shellcheck", "-x", f"launch/{script}"], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout


def test_tpu_create_single_and_multislice():
    (create, describe), = [dry("tpu_vm.sh", "create", "n1", "us-east5-a", "v5p-128", "--spot")]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "n1-qr"]
    assert flag(create, "node-id") == "n1" and "--spot" in create
    assert flag(create, "runtime-version") == "v2-alpha-tpuv5" and flag(create, "zone") == "us-east5-a"
    assert describe[4] == "describe"
    create = dry("tpu_vm.sh", "create", "n1", "z", "v6e-256", "--num-slices", "4")[0]
    assert flag(create, "node-count") == "4" and flag(create, "node-prefix") == "n1"
    assert not any(w.startswith("--node-id") for w in create) and "--spot" not in create


def test_tpu_setup_provisions_python312_on_every_worker():
    tar, scp, ssh = dry("tpu_vm.sh", "setup", "n1", "z")
    assert tar[0] == "tar" and "--exclude=.venv" in tar and pathlib.Path(tar[tar.index("-C") + 1]) == ROOT
    assert scp[3:5] == ["tpu-vm", "scp"] and flag(scp, "worker") == "all"
    assert ssh[3:5] == ["tpu-vm", "ssh"] and flag(ssh, "worker") == "all"
    remote = flag(ssh, "command")
    steps = [remote.index(s) for s in ("tar xzf", "uv python install 3.12", "--python 3.12 .venv",
                                       ".venv/bin/pip install -q -e '.[tpu]'")]
    assert steps == sorted(steps), remote  # unpack, provision 3.12, venv on it, install
    assert "python3 -m venv" not in remote
    # multi-slice: every node and every worker
    _, scp, ssh = dry("tpu_vm.sh", "setup", "n1", "z", "--num-slices", "2")
    for c in (scp, ssh):
        assert c[3] == "queued-resources" and flag(c, "node") == "all" and flag(c, "worker") == "all"
    assert "uv python install 3.12" in flag(ssh, "command")


def test_tpu_train_runs_on_all_workers_with_workdir_and_config():
    (ssh,) = dry("tpu_vm.sh", "train", "n1", "z", CONFIG, WORKDIR, "--set", "optim.lr=1e-3", "--project", "p")
    assert ssh[3:6] == ["tpu-vm", "ssh", "n1"] and flag(ssh, "worker") == "all" and flag(ssh, "project") == "p"
    argv = remote_argv(ssh)
    assert argv == ["--config", CONFIG, "--workdir", WORKDIR, "--distributed", "--set", "optim.lr=1e-3"]
    assert flag(ssh, "command").startswith("cd ~/bltjax && nohup .venv/bin/python -m bltjax.train")


def test_tpu_train_multislice_sets_dcn_axis_and_megascale_env():
    (ssh,) = dry("tpu_vm.sh", "train", "n1", "z", CONFIG, WORKDIR, "--num-slices", "2")
    assert ssh[3:6] == ["queued-resources", "ssh", "n1-qr"] and flag(ssh, "node") == "all"
    assert remote_argv(ssh)[-2:] == ["--set", "mesh.dcn_data=2"]
    (ssh,) = dry("tpu_vm.sh", "train", "n1", "z", CONFIG, WORKDIR, "--num-slices", "2",
                 "--set", "mesh.dcn_fsdp=2")  # the user's own DCN layout is kept
    assert "mesh.dcn_data=2" not in remote_argv(ssh) and "mesh.dcn_fsdp=2" in remote_argv(ssh)
    per_slice = dry("tpu_vm.sh", "train", "n1", "z", CONFIG, WORKDIR, "--num-slices", "3",
                    "--megascale-coordinator", "10.0.0.7")
    assert [c[5] for c in per_slice] == ["n1-0", "n1-1", "n1-2"]
    for s, c in enumerate(per_slice):
        words = shlex.split(flag(c, "command"))
        assert f"MEGASCALE_SLICE_ID={s}" in words and "MEGASCALE_NUM_SLICES=3" in words
        assert "MEGASCALE_COORDINATOR_ADDRESS=10.0.0.7:8080" in words and flag(c, "worker") == "all"


def test_tpu_logs_status_ssh_stop_delete():
    (logs,) = dry("tpu_vm.sh", "logs", "n1", "z")
    assert flag(logs, "worker") == "0" and "tail -n 100 -F ~/train.log" == flag(logs, "command")
    (logs,) = dry("tpu_vm.sh", "logs", "n1", "z", "--worker", "5", "--slice", "1")
    assert flag(logs, "worker") == "5" and logs[5] == "n1-1"
    describe, ps = dry("tpu_vm.sh", "status", "n1", "z")
    assert describe[4] == "describe" and flag(ps, "worker") == "all" and "train.pid" in flag(ps, "command")
    (ssh,) = dry("tpu_vm.sh", "ssh", "n1", "z", "--worker", "2")
    assert flag(ssh, "worker") == "2" and not any(w.startswith("--command") for w in ssh)
    (stop,) = dry("tpu_vm.sh", "stop", "n1", "z")
    assert flag(stop, "worker") == "all" and "kill -TERM" in flag(stop, "command")
    (delete,) = dry("tpu_vm.sh", "delete", "n1", "z")
    assert delete[4:6] == ["delete", "n1-qr"] and "--force" in delete


def test_tpu_bad_input_is_one_line_error():
    res = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "train", "n1", "z", CONFIG, "runs/x"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.startswith("error: the workdir")
    res = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run", "create", "n1", "z", "v5p-8",
                          "--num-slices", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--num-slices" in res.stderr


def test_gpu_single():
    cmds = dry("gpu_single.sh", CONFIG, WORKDIR, "--set", "steps=10")
    assert cmds[0] == ["cd", str(ROOT)]
    assert "uv python install 3.12" in cmds[1][2] and cmds[2][:4] == [".venv/bin/pip", "install", "-q", "-e"]
    assert cmds[-1] == [".venv/bin/python", "-m", "bltjax.train", "--config", CONFIG, "--workdir", WORKDIR,
                        "--set", "steps=10"]


def test_slurm_srun_line():
    setup, srun = dry("slurm.sbatch", CONFIG, WORKDIR, "--set", "steps=10")
    assert "uv python install 3.12" in setup[2] and ".[cuda]" in setup[2]
    assert srun[0] == "srun" and srun[srun.index("--config") + 1] == CONFIG
    assert srun[srun.index("--workdir") + 1] == WORKDIR and "--distributed" in srun
    assert srun[-2:] == ["--set", "steps=10"] and "mesh.dcn_data=-1" in srun
    assert "#SBATCH --signal=TERM@120" in (LAUNCH / "slurm.sbatch").read_text()


def test_xpk_tpu_and_gpu_workloads():
    (create,) = dry("xpk.sh", "cluster", "c1", "us-east5-a", "v5p-128", "--num-slices", "2", "--spot")
    assert create[:3] == ["xpk", "cluster", "create"] and flag(create, "num-slices") == "2" and "--spot" in create
    (wl,) = dry("xpk.sh", "train", "c1", "z", "job1", "v5p-128", CONFIG, WORKDIR, "--num-slices", "2",
                "--max-restarts", "3")
    assert flag(wl, "max-restarts") == "3"
    assert wl[:3] == ["xpk", "workload", "create"] and flag(wl, "tpu-type") == "v5p-128"
    assert flag(wl, "base-docker-image") == "python:3.12-slim" and flag(wl, "script-dir") == str(ROOT)
    words = shlex.split(flag(wl, "command"))
    assert words[:4] == ["pip", "install", "-q", "-e"] and words[4] == ".[tpu]"
    assert words[words.index("--workdir") + 1] == WORKDIR and words[words.index("--config") + 1] == CONFIG
    assert words[-2:] == ["--set", "mesh.dcn_data=2"] and "--distributed" in words
    (wl,) = dry("xpk.sh", "train", "c1", "z", "job2", "h100-80gb-8", CONFIG, WORKDIR, "--num-nodes", "4")
    assert flag(wl, "device-type") == "h100-80gb-8" and flag(wl, "num-nodes") == "4"
    assert ".[cuda]" in shlex.split(flag(wl, "command"))
    assert dry("xpk.sh", "delete", "c1", "z", "job1")[0][:3] == ["xpk", "workload", "delete"]
