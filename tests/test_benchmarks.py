"""The benchmark scripts' code paths on CPU, small: the train-step benchmark with a fake peer worker
(the same JSON-lines protocol as ``benchmarks/hf_peer.py``, no torch needed), and ``gpu_check``'s dry run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bltjax.config import spec19_blt_config, tiny_blt_config
from bltjax.io.hf import config_from_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_step as bench  # noqa: E402

FAKE_PEER = textwrap.dedent("""
    import json, sys
    log = open(sys.argv[1], "a")
    mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
    for line in sys.stdin:
        req = json.loads(line)
        log.write(line); log.flush()
        cmd = req["cmd"]
        if mode == "fail" and cmd == "train":
            print(json.dumps({"ok": False, "error": "ValueError: no"}), flush=True); continue
        if mode == "die" and cmd == "train":
            sys.exit(3)
        reply = {"ok": True}
        if cmd == "setup":
            reply.update(params=123, torch="fake", transformers="fake", threads=req["threads"])
        elif cmd in ("train", "forward"):
            reply["times"] = [0.25 if cmd == "train" else 0.125] * req["steps"]
            reply["loss"] = 5.0
        print(json.dumps(reply), flush=True)
        if cmd == "quit":
            break
""")


@pytest.fixture
def fake_peer(tmp_path):
    script = tmp_path / "fake_peer.py"
    script.write_text(FAKE_PEER)
    return lambda mode="ok": (f"{sys.executable} {script} {tmp_path / 'requests.jsonl'} {mode}",
                              tmp_path / "requests.jsonl")


def test_dry_run_with_fake_peer(tmp_path, fake_peer, capsys):
    command, log = fake_peer()
    out = tmp_path / "r.json"
    assert bench.main(["--dry-run", "--peer", "hf", "--peer-command", command, "--steps", "3", "--rounds", "2",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    setup = requests[0]
    # the peer got the same architecture, batch and patch layout as the bltjax side
    assert setup["cmd"] == "setup" and setup["config"] == bench.hf_config_dict(tiny_blt_config())
    tokens, targets = np.asarray(setup["tokens"]), np.asarray(setup["targets"])
    assert tokens.shape == targets.shape == (2, 64) and (tokens[:, 0] == 1).all()
    np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])
    assert setup["patch_lengths"] == [[1] + [4] * 16] * 2 == [res["patch_lengths_row"]] * 2
    assert setup["optim"] == bench.ADAMW
    # warm-up (1 step each), then 3 timed steps in rounds of 2 + 1, the peer first in round 1, then quit
    timed = [(r["cmd"], r["steps"]) for r in requests[1:-2]]
    assert timed == [("train", 1), ("forward", 1), ("train", 2), ("forward", 2), ("train", 1), ("forward", 1)]
    assert [r["cmd"] for r in requests[-2:]] == ["train", "quit"]
    assert res["schedule"] == ["0:bltjax:train:2", "0:peer:train:2", "0:bltjax:forward:2", "0:peer:forward:2",
                               "1:peer:train:1", "1:bltjax:train:1", "1:peer:forward:1", "1:bltjax:forward:1"]
    # both sides reported, ratio = peer median / bltjax median
    assert res["peer"]["train"]["median_s"] == 0.25 and res["peer"]["forward"]["n"] == 3
    for kind in ("train", "forward"):
        b = res["bltjax"][kind]
        assert b["n"] == 3 and b["min_s"] <= b["median_s"]
        assert res["speedup_bltjax_over_peer"][kind] == pytest.approx(res["peer"][kind]["median_s"] / b["median_s"])
    assert res["cpu"]["logical_cores"] >= 1 and "model" in res["cpu"]
    printed = capsys.readouterr().out
    assert "CPU: " in printed and "peer/bltjax time" in printed and "fake peer" not in printed


def test_peer_errors_are_reported(tmp_path, fake_peer):
    for mode, message in (("fail", "peer 'train' failed: ValueError: no"), ("die", "exited without answering")):
        command, _ = fake_peer(mode)
        with pytest.raises(bench.PeerError, match=message):
            bench.main(["--dry-run", "--peer", "hf", "--peer-command", command, "--out", str(tmp_path / "x.json")])


def test_peer_needs_an_interpreter(monkeypatch, capsys):
    monkeypatch.delenv("BLTJAX_PEER_PYTHON", raising=False)
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)  # as without torch
    assert bench.main(["--dry-run", "--peer", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --peer hf needs torch and transformers") and "--peer-python" in err


@pytest.mark.parametrize("make", [tiny_blt_config, spec19_blt_config])
def test_hf_config_is_the_same_architecture(make):
    cfg = make()
    back = config_from_hf({"model_type": "blt", **bench.hf_config_dict(cfg)})
    for field in ("dim_local_encoder", "dim_local_decoder", "n_layers_local_encoder", "n_layers_local_decoder",
                  "n_heads_local_encoder", "dim_global", "n_layers_global", "n_heads_global", "cross_attn_k",
                  "cross_attn_nheads", "encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab",
                  "encoder_hash_byte_group_nb_functions", "local_attention_window_len", "rope_theta", "norm_eps"):
        assert getattr(back, field) == getattr(cfg, field), field
    from bltjax.config import ffn_hidden_dim
    for dim in (cfg.dim_local_encoder, cfg.dim_global):
        assert ffn_hidden_dim(dim, back.multiple_of, back.ffn_dim_multiplier) == \
            ffn_hidden_dim(dim, cfg.multiple_of, cfg.ffn_dim_multiplier)


def test_cpu_info_parses_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse avx avx2 fma avx512f\n\n"
            "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse avx avx2 fma avx512f\n")
    info = bench.cpu_info(text)
    assert info["model"] == "Example CPU 9000" and info["logical_cores"] == 2
    assert info["avx_flags"] == ["avx", "avx2", "avx512f", "fma"]
    assert bench.rounds_plan(7, 3) == [3, 2, 2] and bench.rounds_plan(2, 5) == [1, 1]


# ---------------------------------------------------------------- gpu_check
import gpu_check  # noqa: E402


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: tiny shapes through the same code as the GPU run."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["backend"] == "cpu"
    t = r["train"]
    assert t["same_outputs"]["impls"] == ["auto", "xla"] and t["same_outputs"]["ok"]
    for impl in ("auto", "xla"):
        s = t[impl]
        assert len(s["losses"]) == 3 and all(np.isfinite(s["losses"]))  # 1 warm-up + 2 timed steps
        assert s["step_s_median"] > 0 and s["xla_tflop_per_step"] > 0
        if s["mfu"] is not None:
            assert s["mfu"] == pytest.approx(s["model_tflop_per_step"] * 1e12 / s["step_s_median"]
                                             / r["peak_flops_per_device"])
    assert t["auto"]["losses"] == pytest.approx(t["xla"]["losses"], rel=1e-6)  # "auto" is xla off GPU
    f, g = r["forward"], r["generate"]
    assert f["bytes_per_s"] > 0 and 2.0 <= f["mean_patch_bytes"] <= 10.0
    assert g["new_bytes"] == 8 and g["bytes_per_s"] == pytest.approx(g["batch"] * 8 / g["s_median"])
    assert "same outputs auto vs xla" in res.stdout and "-> ok" in res.stdout


def test_gpu_check_flags_disagreeing_implementations():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 260)).astype(np.float32)
    assert gpu_check.same_outputs(logits, logits + 1e-3, [5.0, 4.0], [5.0, 4.001])["ok"]
    off = logits.copy()
    off[1, 3, 7] += 0.5 * np.abs(logits).max()
    assert not gpu_check.same_outputs(off, logits, [5.0], [5.0])["ok"]
    assert not gpu_check.same_outputs(logits, logits, [5.0, 4.5], [5.0, 4.0])["ok"]
    nan = logits.copy()
    nan[0, 0, 0] = np.nan
    assert not gpu_check.same_outputs(nan, nan, [5.0], [5.0])["ok"]
