"""Peak FLOP/s lookup, MFU, throughput, the JSONL/TensorBoard writer and the console line."""

from __future__ import annotations

import io
import json
import struct
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import metrics as M
from bltjax import peak as P


def test_peak_flops_table():
    cases = {
        "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
        "TPU v6 lite": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12, "NVIDIA GH200 480GB": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA L4": 121e12, "Tesla T4": 65e12, "NVIDIA L40S": 362e12,
    }
    for kind, flops in cases.items():
        assert M.peak_flops_for_kind(kind) == flops, kind
    assert M.peak_flops_for_kind("Some Future Chip") is None


def test_cpu_peak_is_split_over_fake_devices(monkeypatch):
    monkeypatch.delenv(M.ENV_PEAK_FLOPS, raising=False)
    n_cpu = len(jax.local_devices(backend="cpu"))
    assert n_cpu == 8  # conftest: 8 fake CPU devices
    peak = M.peak_flops_per_device(jax.devices("cpu")[0])
    assert peak == pytest.approx(M.cpu_peak_flops() / n_cpu)
    # the host peak bounds what XLA really reaches on a matmul, and the arithmetic peak
    assert M.cpu_peak_flops() >= max(M.measure_matmul_flops(256, 2), M.measure_matmul_flops(256, 2, "bfloat16"))
    assert M.cpu_peak_flops() >= M.cpu_info().formula_flops
    monkeypatch.setenv(M.ENV_PEAK_FLOPS, "1e12")
    assert M.peak_flops_per_device() == 1e12


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz
cpu MHz\t\t: 1000.000
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz
cpu MHz\t\t: 3900.000
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw
"""


def test_cpu_info_formula(monkeypatch):
    files = {"/proc/cpuinfo": CPUINFO}
    monkeypatch.setattr(P, "_read", lambda path: files.get(path, ""))
    monkeypatch.setattr(P, "_cpu_cores", lambda: 2)
    info = M.cpu_info()
    assert info.model.startswith("Intel(R) Xeon(R) Platinum 8280") and info.fp32_lanes == 16
    assert info.clock_hz == 3.9e9  # the highest clock seen (turbo above the 2.7 GHz in the name)
    assert info.formula_flops == info.fp32_flops == 2 * 16 * 2 * 2 * 3.9e9
    files["/proc/cpuinfo"] = CPUINFO.replace(" avx512f avx512bw", "").replace("3900.000", "1200.000")
    files["/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"] = "4000000\n"  # kHz
    info = M.cpu_info()
    assert info.fp32_lanes == 8 and info.clock_hz == 4.0e9 and info.formula_flops == 2 * 8 * 2 * 2 * 4.0e9
    # bf16 dot products double the peak; AMX tiles replace it
    del files["/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"]
    files["/proc/cpuinfo"] = CPUINFO.replace("avx512bw", "avx512bw avx512_bf16")
    info = M.cpu_info()
    assert info.bf16_dot and info.formula_flops == 2 * info.fp32_flops
    files["/proc/cpuinfo"] = CPUINFO.replace("avx512bw", "avx512bw avx512_bf16 amx_bf16 amx_tile")
    assert M.cpu_info().formula_flops == 2 * P.AMX_BF16_FLOPS_PER_CYCLE * 3.9e9


def test_measured_cpu_flops_is_cached_per_machine(monkeypatch, tmp_path):
    calls = []
    rates = {"float32": 5e10, "bfloat16": 4e10}
    monkeypatch.setattr(P, "measure_matmul_flops", lambda n, r, dtype: calls.append(dtype) or rates[dtype])
    cache = tmp_path / "peak.json"
    assert M.measured_cpu_flops(cache) == 5e10 and M.measured_cpu_flops(cache) == 5e10
    assert calls == ["float32", "bfloat16"]  # measured once (the faster format counts), then read back
    info = M.cpu_info()
    assert json.loads(cache.read_text()) == {f"{info.model} x {info.cores}": 5e10}
    monkeypatch.setattr(P, "_cpu_cores", lambda: info.cores + 1)  # another machine shape: measured again
    M.measured_cpu_flops(cache)
    assert len(calls) == 4


def test_mfu_of_a_real_run_is_at_most_one(tmp_path):
    """``python -m bltjax.train`` (the default experiment, which once reported MFU 113-138 % on a 2-core
    CPU) on one device for a few steps: every logged MFU is a fraction of the host's real peak."""
    import subprocess
    import sys

    from helpers.subprocess_env import env_with_devices

    env = env_with_devices(1)
    env.pop(M.ENV_PEAK_FLOPS, None)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bltjax.train", "--workdir", str(run), "--set", "steps=10",
         "--set", "optim.warmup_steps=2", "--set", "log_every=2", "--set", "eval_every=0",
         "--set", "checkpoint.every=1000", "--set", "tensorboard=false", "--set", "data.embedded_max_bytes=200000"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mfus = [r["mfu"] for r in M.read_jsonl(run / "metrics.jsonl") if "mfu" in r]
    assert mfus and all(0 < m <= 1 for m in mfus), mfus


def test_measure_matmul_flops_arithmetic_with_a_fake_clock(monkeypatch):
    """2 n^3 FLOPs over the best of the timed repeats (the clock is read before and after each)."""
    ticks = iter([10.0, 10.5, 20.0, 20.25, 30.0, 30.4])  # durations 0.5, 0.25, 0.4 -> best 0.25
    monkeypatch.setattr(P, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))  # peak's clock only
    assert P.measure_matmul_flops(64, 3) == 2 * 64 ** 3 / 0.25


def test_measure_matmul_flops_is_plausible_on_this_cpu():
    # loose on purpose: a shared, loaded CI core can be slow (0.1 GFLOP/s = 0.3 s for this matmul) and no
    # CPU reaches 10 TFLOP/s fp32; the arithmetic itself is pinned by the fake-clock test above
    flops = M.measure_matmul_flops(256, 2)
    assert 1e8 < flops < 1e13


def test_mfu():
    assert M.mfu(1e12, 1.0, 2, peak_flops=1e12) == pytest.approx(0.5)
    assert M.mfu(6e15, 2.0, 8, peak_flops=989e12) == pytest.approx(6e15 / (2 * 8 * 989e12))
    with pytest.raises(ValueError):
        M.mfu(1.0, 0.0, 1, peak_flops=1.0)
    with pytest.raises(ValueError):
        M.mfu(1.0, 1.0, 0, peak_flops=1.0)


def test_throughput_rates():
    t = iter([10.0, 12.0, 13.0])
    tp = M.Throughput(bytes_per_step=1000, flops_per_step=4e9, n_devices=2, peak_flops=1e9, clock=lambda: next(t))
    assert tp.update(0) == {}
    r = tp.update(4)  # 4 steps in 2 s
    assert r["step_time_s"] == pytest.approx(0.5) and r["bytes_per_s"] == pytest.approx(2000)
    assert r["mfu"] == pytest.approx(4e9 / (0.5 * 2 * 1e9))
    assert tp.update(6)["steps_per_s"] == pytest.approx(2.0)


def _read_tb_scalars(path):
    """Minimal TFRecord + Event proto reader (tensorboardX's own protos)."""
    from tensorboardX.proto import event_pb2

    out = []
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            out.append((event.step, v.tag, v.simple_value))
    return out


def test_writer_jsonl_and_tensorboard(tmp_path):
    with M.MetricsWriter(tmp_path, tensorboard=True, enabled=True) as w:
        written = w.write(10, {"loss": jnp.float32(2.5), "n_tokens": jnp.int32(7), "train": {"bpb": np.float64(1.25)}})
        assert written == {"loss": 2.5, "n_tokens": 7, "train/bpb": 1.25}
        w.write(20, {"loss": 2.0})
        with pytest.raises(ValueError, match="scalar"):
            w.write(30, {"vec": jnp.ones(3)})
    recs = M.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [10, 20]
    assert recs[0]["loss"] == 2.5 and recs[0]["train/bpb"] == 1.25 and isinstance(recs[0]["n_tokens"], int)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _read_tb_scalars(events[0])
    assert (10, "loss", 2.5) in scalars and (20, "loss", 2.0) in scalars and (10, "train/bpb", 1.25) in scalars


def test_writer_deferred_and_resume_dedup(tmp_path):
    w = M.MetricsWriter(tmp_path, tensorboard=False, enabled=True)
    assert w.write_deferred(0, {"loss": jnp.float32(3.0)}) is None  # kept, nothing written yet
    assert not (tmp_path / "metrics.jsonl").read_text()
    step, scalars = w.write_deferred(5, {"loss": jnp.float32(2.0)})
    assert step == 0 and scalars == {"loss": 3.0}
    w.close()  # flushes step 5
    w2 = M.MetricsWriter(tmp_path, tensorboard=False, enabled=True)  # a resumed run appends
    w2.write(5, {"loss": 1.5})
    w2.close()
    recs = M.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(0, 3.0), (5, 1.5)]
    assert not list(tmp_path.glob("tensorboard"))


def test_writer_disabled_writes_nothing(tmp_path):
    w = M.MetricsWriter(tmp_path / "sub", tensorboard=True, enabled=False)
    assert w.write(1, {"loss": 1.0}) == {"loss": 1.0}
    w.close()
    assert not (tmp_path / "sub").exists()


def test_console_line_and_eta():
    line = M.format_progress(120, 1000, {"loss": 2.34561, "bpb": 1.2, "lr": 3e-4, "bytes_per_s": 1.234e6,
                                         "mfu": 0.412}, eta_s=754)
    assert line == "step 120/1000 | loss 2.3456 | bpb 1.2000 | lr 3.00e-04 | 1.23M B/s | MFU 41.2% | ETA 0:12:34"
    assert "MFU" not in M.format_progress(1, 2, {"mfu": float("nan")})
    t = iter([0.0, 10.0])
    stream = io.StringIO()
    p = M.ConsoleProgress(100, start_step=0, bar=False, enabled=True, stream=stream, clock=lambda: next(t))
    out = p.update(10, {"loss": 1.0})  # 10 steps in 10 s -> 90 s left
    assert out.endswith("ETA 0:01:30") and stream.getvalue().strip() == out
    p.close()


def test_console_tqdm_bar():
    stream = io.StringIO()
    p = M.ConsoleProgress(50, start_step=5, bar=True, enabled=True, stream=stream)
    p.update(10, {"loss": 1.5, "bpb": 0.9})
    p.close()
    text = stream.getvalue()
    assert "10/50" in text and "loss 1.5000" in text and "bpb 0.9000" in text


def test_train_flops_per_step():
    import dataclasses

    from bltjax.config import TransformerConfig, tiny_blt_config
    from bltjax.train_config import OptimConfig, TrainConfig

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Stub:
        pass

    cfg = TrainConfig(model=tiny_blt_config(), data=Stub(), mesh=Stub(), seq_len=64, global_batch_size=4,
                      steps=10, optim=OptimConfig(warmup_steps=1))
    expected = cfg.model.flops_per_byte(4.0, 64, training=True) * 4 * 64
    assert M.train_flops_per_step(cfg) == pytest.approx(expected)
    assert M.train_flops_per_step(cfg, bytes_per_patch=8.0) < M.train_flops_per_step(cfg)
    em = TransformerConfig(dim=32, n_layers=2, n_heads=2, multiple_of=32, vocab_size=260, sliding_window=16,
                           max_seqlen=64)
    ecfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, entropy_model=em), train_entropy_model=True)
    # window 16 over 64 bytes: keys per query 1..16 then 16 -> mean (136 + 48*16) / 64
    ctx = (136 + 48 * 16) / 64
    # matmul weights: 2 layers x (q k v o 4*32*32 + SwiGLU 3*32*96) + head 260*32 = 34_944 (norms free)
    per_byte = 6 * 34_944 + 3 * 2 * 2 * 16 * ctx * 4
    assert M.train_flops_per_step(ecfg) == pytest.approx(per_byte * 4 * 64)
