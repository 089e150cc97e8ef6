"""``python -m bltjax.aot``: compile the real train step for a topology and report memory / FLOPs / collectives.

Fast tests use ``--topology cpu:8`` (the 8 fake CPU devices of the test process) and the tiny trainer
experiment; one test compiles for a real TPU topology (``v5p-8``, 4 chips) from this CPU machine.
"""

import json
import math
import pathlib
import subprocess
import sys
import time

import pytest
from conftest import REPO

from bltjax import aot, aot_sweep, hlo_stats, tpu_chips
from bltjax.config import tiny_blt_config
from bltjax.train_loop import UsageError

TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")


def run(capsys, *argv):
    code = aot.main(["--config", TINY, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "report.json"
    assert aot.main(["--config", TINY, "--topology", "cpu:8", "--json", str(path)]) == 0
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- topologies
@pytest.mark.parametrize("name,kind,chips,grid", [
    ("v5p-256", "v5p", 128, (4, 4, 8)),  # v5p names count TensorCores
    ("v4-32", "v4", 16, (2, 2, 4)),
    ("v5e-16", "v5e", 16, (4, 4)),  # v5e / v6e names count chips
    ("v6e-64", "v6e", 64, (8, 8)),
    ("v5litepod-8", "v5e", 8, (2, 4)),
    ("v5p:8x8x4", "v5p", 256, (8, 8, 4)),
])
def test_topology_names(name, kind, chips, grid):
    topo = tpu_chips.parse_topology(name)
    assert (topo.chip.kind, topo.num_chips, topo.grid) == (kind, chips, grid)
    assert tpu_chips.parse_topology(name, num_slices=2).num_chips == 2 * chips


@pytest.mark.parametrize("name", ["v5p-100", "v7x-8", "v5e:4x4x4", "tpu", "v5p-7"])
def test_bad_topology_names(name):
    with pytest.raises(ValueError, match="topology|TPU kind"):
        tpu_chips.parse_topology(name)


def test_multislice_topology_has_slices():
    topo = tpu_chips.parse_topology("v5p-8", num_slices=2)
    devices = tpu_chips.topology_devices(topo)
    assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}


# ---------------------------------------------------------------------------------------------- HLO reading
def test_collectives_inside_loops_count_per_iteration():
    text = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %ag = bf16[4,16]{1,0:T(8,128)(2,1)} all-gather(bf16[1,16]{1,0} %x), channel_id=1, dimensions={0}
  %ar-start = f32[8]{0} all-reduce-start(f32[8]{0} %y), to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %y)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"25"}}
  %cp = (f32[2,3]{1,0}, f32[2,3]{1,0}, u32[], u32[]) collective-permute-start(f32[2,3]{1,0} %z), channel_id=2
  ROOT %rs = f32[2]{0} reduce-scatter(f32[8]{0} %a), dimensions={0}, to_apply=%add
}
"""
    stats = hlo_stats.collective_stats(text)
    assert stats.ops["all-gather"] == 1 and stats.executions["all-gather"] == 25
    assert stats.bytes["all-gather"] == 25 * 4 * 16 * 2
    assert stats.bytes["all-reduce"] == 25 * 8 * 4
    assert stats.bytes["collective-permute"] == 2 * 3 * 4  # the moved buffer, not the whole tuple
    assert stats.bytes["reduce-scatter"] == 2 * 4 and stats.executions["reduce-scatter"] == 1


# ---------------------------------------------------------------------------------------------- the report
def test_cpu_report_figures_are_consistent(cpu_report):
    r = cpu_report
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and r["devices"] == 8
    mem = r["memory"]
    parts = mem["parts"]
    assert mem["total"] == pytest.approx(sum(parts.values()))
    # fp32 parameters: each device holds at least 1/8 of them (most weights are split), at most all
    n_params = tiny_blt_config().num_params()["total"]
    assert 4 * n_params / 8 <= parts["parameters"] <= 4 * n_params
    # AdamW: two fp32 moments shaped and sharded like the parameters (+ small counters)
    assert 2 * parts["parameters"] <= parts["optimizer state"] <= 2 * parts["parameters"] + 1024
    assert parts["temporaries"] > 0 and mem["fits"] is None  # no HBM figure for CPU devices
    f = r["flops"]
    assert f["model_per_device"] == pytest.approx(f["model_per_step"] / 8)
    assert 0.3 < f["xla_per_device"] / f["model_per_device"] < 5  # same order: XLA counts what runs
    assert 0.3 < f["hlo_matmul_per_device"] / f["model_per_device"] < 5
    assert r["collectives"]["all-reduce"]["ops"] + r["collectives"]["reduce-scatter"]["ops"] > 0  # gradients
    assert r["collective_bytes"] == pytest.approx(sum(c["bytes"] for c in r["collectives"].values()))
    assert r["estimate"] == {}  # no roofline without a chip


def test_does_not_fit_is_one_line(capsys, cpu_report):
    code, out, err = run(capsys, "--topology", "cpu:8", "--hbm-gib", "0.0001")
    assert code == aot.EXIT_NO_FIT
    line = err.strip().splitlines()[-1]
    assert line.startswith("does not fit: needs ") and "available" in line and "largest part:" in line


def test_mesh_that_does_not_divide_the_devices(capsys):
    code, out, err = run(capsys, "--topology", "cpu:8", "--set", "mesh.ici_data=3")
    assert code == aot.EXIT_USAGE and err.startswith("error: mesh:") and "8 devices available" in err
    assert "compiled" not in out


def test_batch_the_mesh_cannot_split(capsys):
    code, out, err = run(capsys, "--topology", "cpu:8", "--set", "global_batch_size=6")
    assert code == aot.EXIT_USAGE and "global_batch_size=6 is not divisible by the 4 batch shards" in err


def test_oom_message_becomes_one_line():
    e = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
                     "required for HLO temporaries (108.76G) exceeds available HBM (95.73G). HLO module: x\nmore")
    assert aot._oom_line(e) == ("needs 108.76GiB of HLO temporaries per device, 95.73GiB of HBM available "
                                "(XLA compile-time check)")
    assert aot._oom_line(RuntimeError("INTERNAL: something else")) is None


def test_roofline_estimate():
    est = aot.roofline(flops=2e12, hbm_traffic=1e9, coll_bytes=4e8, peak=1e14, hbm_bw=1e12, ici_bw=1e11,
                       model_flops=1e12)
    assert est["compute_s"] == pytest.approx(0.02) and est["bound"] == "compute"
    assert est["step_s"] == pytest.approx(0.02) and est["mfu"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- sweep
def test_sweep_writes_table_json_and_chart(tmp_path, cpu_report, capsys):
    out = tmp_path / "sweep"
    code = aot_sweep.main(["--config", TINY, "--topology", "cpu:8", "--grid", "global_batch_size=8,6",
                           "--out", str(out), "--workers", "2"])
    assert code == aot.EXIT_OK
    data = json.loads((out / "sweep.json").read_text())
    status = {tuple(r["point"]): r["status"] for r in data["results"]}
    assert status == {("global_batch_size=8",): "fits", ("global_batch_size=6",): "error"}
    ok = next(r for r in data["results"] if r["status"] == "fits")["report"]
    assert ok["memory"]["total"] == cpu_report["memory"]["total"]  # the same program as the single compile
    md = (out / "sweep.md").read_text()
    assert "| global_batch_size=6 | error |" in md and "not divisible" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["points"] == 2 and data["wall_s"] > 0 and ok["compile_s"] > 0 and "2 of 2 points" in md


def test_sweep_outputs_are_rewritten_after_every_point(tmp_path):
    """An interrupted sweep keeps what it compiled: the files hold the points finished so far."""
    args = aot_sweep.build_parser().parse_args(["--topology", "cpu:8", "--out", str(tmp_path), "--workers", "1"])
    first = {"point": ["model.remat=full", "global_batch_size=8"], "status": "error", "reason": "r"}
    aot_sweep.write_outputs([first, None, None], ["sweep"], args, tmp_path, 12.0)
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["points"] == 3 and [r["point"] for r in data["results"]] == [first["point"]]
    assert "1 of 3 points in 0.2 minutes" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.png").exists()
    assert aot_sweep.short_label("model.remat=full, global_batch_size=8") == "remat=full\nglobal_batch_size=8"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_killed_sweep_leaves_no_compile_running(tmp_path):
    from helpers.subprocess_env import env_with_devices

    proc = subprocess.Popen([sys.executable, "-m", "bltjax.aot", "sweep", "--config", TINY, "--topology", "cpu:8",
                             "--grid", "global_batch_size=8,16", "--out", str(tmp_path), "--workers", "1"],
                            env=env_with_devices(8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[str] = []
    deadline = time.monotonic() + 120
    while not children and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        children = [c for c in found if "spawn_main" in pathlib.Path(f"/proc/{c}/cmdline").read_text(errors="ignore")]
    assert children, "no worker process started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 120  # a worker killed while still starting (importing) ends once started
    while any(pathlib.Path(f"/proc/{c}").exists() and "Z" not in _state(c) for c in children):
        assert time.monotonic() < deadline, "a sweep worker outlived its sweep"
        time.sleep(0.2)


def _state(pid: str) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


def test_grid_parsing():
    assert aot_sweep.parse_grid(["a=1,2", "b=x"]) == [["a=1", "b=x"], ["a=2", "b=x"]]
    with pytest.raises(ValueError, match="KEY=V1"):
        aot_sweep.parse_grid(["a"])


# ---------------------------------------------------------------------------------------------- a real TPU topology
def test_train_step_compiles_for_a_v5p_topology(tmp_path, capsys):
    path = tmp_path / "v5p.json"
    code, out, err = run(capsys, "--topology", "v5p-8", "--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=4",
                         "--set", "mesh.ici_tensor=1", "--json", str(path))
    assert code == 0, err
    r = json.loads(path.read_text())
    assert r["device_kind"] == "TPU v5" and r["devices"] == 4 and r["mesh"]["fsdp"] == 4
    mem = r["memory"]
    assert mem["fits"] and mem["hbm"] == pytest.approx(95.73 * 2**30)
    est = r["estimate"]
    assert est["step_s"] == pytest.approx(max(est["compute_s"], est["hbm_s"], est["ici_s"]))
    f = r["flops"]
    assert est["compute_s"] == pytest.approx(max(f["xla_per_device"], f["hlo_matmul_per_device"],
                                                 f["model_per_device"]) / 459e12)
    assert f["hlo_matmul_per_device"] >= 0.5 * f["xla_per_device"]  # loops counted per iteration
    assert 0 < est["mfu"] < 1
    assert "step time ESTIMATE" in out and "fits" in out
    assert math.isfinite(r["collective_bytes"]) and r["collectives"]["all-gather"]["ops"] > 0  # FSDP weights


@pytest.mark.parametrize("topology,slices,mesh", [
    ("v5e-16", 1, {"data": 1, "fsdp": 16, "tensor": 1}),  # 4 hosts, one slice: no DCN axis
    ("v5p-8", 2, {"data": 2, "fsdp": 4, "tensor": 1}),  # dcn_data=-1 spans the slices
])
def test_mesh_on_a_topology_is_built_like_training(topology, slices, mesh):
    args = aot.build_parser().parse_args(["--config", TINY, "--topology", topology, "--num-slices", str(slices),
                                          "--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=-1",
                                          "--set", "mesh.ici_tensor=1", "--set", "mesh.dcn_data=-1",
                                          "--set", "global_batch_size=16"])
    cfg, topo, devices, built = aot.load_target(args)
    assert dict(built.shape) == mesh and len(devices) == topo.num_chips


@pytest.mark.parametrize("topology,slices,accum", [
    ("v5p-8", 1, 4),  # 4 chips x 2 rows at once: 32 rows in 4 micro-batches
    ("v5p-8", 2, 2),  # twice the chips, half the micro-batches, same rows per chip
    ("v5p-16", 2, 1),
])
def test_rows_per_device_derives_micro_batches_from_the_mesh(topology, slices, accum):
    base = ["--config", TINY, "--topology", topology, "--num-slices", str(slices), "--set", "mesh.ici_data=1",
            "--set", "mesh.ici_fsdp=-1", "--set", "mesh.ici_tensor=1", "--set", "mesh.dcn_data=-1",
            "--set", "global_batch_size=32", "--set", "rows_per_device=2"]
    cfg, _, _, mesh = aot.load_target(aot.build_parser().parse_args(base))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    assert cfg.optim.grad_accum_steps == accum and cfg.micro_batch_size == 2 * shards
    assert cfg.rows_per_device is None and cfg.validate() is cfg  # the resolved config is a plain one


def test_rows_per_device_errors():
    base = ["--config", TINY, "--topology", "v5p-8", "--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=-1",
            "--set", "mesh.ici_tensor=1"]
    bad = base + ["--set", "global_batch_size=12", "--set", "rows_per_device=2"]
    with pytest.raises(UsageError, match="not a multiple of rows_per_device=2 x the 4 batch shards"):
        aot.load_target(aot.build_parser().parse_args(bad))
    both = base + ["--set", "rows_per_device=2", "--set", "optim.grad_accum_steps=2"]
    with pytest.raises(UsageError, match="not both"):
        aot.load_target(aot.build_parser().parse_args(both))


def test_needed_bytes_of_an_xla_refusal():
    e = aot.DoesNotFit("needs 2.50GiB of HLO temporaries per device, 1.00GiB of HBM available", {"parameters": 1024})
    assert e.needed_bytes == 2.5 * 2**30 + 1024
    assert aot.DoesNotFit("something else").needed_bytes is None


def test_trip_count_from_the_loop_condition():
    text = """HloModule m

%cond (p: (s32[])) -> pred[] {
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p: (s32[])) -> (s32[]) {
  %ag = f32[4]{0} all-gather(f32[1]{0} %x), dimensions={0}
  %cc = f32[2]{0} custom-call(%ag), custom_call_target="tpu_custom_call", backend_config={"a":{"b":1
}}, metadata={op_name="x"}
  %ag2 = f32[4]{0} all-gather(f32[1]{0} %x), dimensions={0}
}

ENTRY %main () -> s32[] {
  %w = (s32[]) while(%init), condition=%cond, body=%body
}
"""
    stats = hlo_stats.collective_stats(text)
    assert stats.ops["all-gather"] == 2 and stats.executions["all-gather"] == 14  # after a "}}" line too


# A scanned layer stack as XLA's TPU backend prints it: the body slices one layer of a stacked
# weight inside a nested fusion, writes one layer of a stacked output in place, and keeps a scalar
# on chip (S(1)).  Sizes: x f32[8,128] = 4 KiB, w f32[10,128,128] = 640 KiB (64 KiB per layer).
STATE = "(s32[]{:T(128)}, f32[8,128]{1,0:T(8,128)}, f32[10,128,128]{2,1,0:T(8,128)}, f32[10,8,128]{2,1,0:T(8,128)})"
STATE_TYPE = "(s32[], f32[8,128], f32[10,128,128], f32[10,8,128])"
SCAN_HLO = """HloModule m

%slice_w (param_0.1: f32[10,128,128], param_1.1: s32[]) -> f32[128,128] {
  %param_0.1 = f32[10,128,128]{2,1,0:T(8,128)} parameter(0)
  %param_1.1 = s32[]{:T(128)} parameter(1)
  %c = s32[]{:T(128)} constant(0)
  %ds = f32[1,128,128]{2,1,0:T(8,128)} dynamic-slice(%param_0.1, %param_1.1, %c, %c), dynamic_slice_sizes=$W
  ROOT %bc = f32[128,128]{1,0:T(8,128)} bitcast(%ds)
}

%matmul (param_0.2: f32[8,128], param_1.2: f32[10,128,128], param_2.2: s32[]) -> f32[8,128] {
  %param_0.2 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %param_1.2 = f32[10,128,128]{2,1,0:T(8,128)} parameter(1)
  %param_2.2 = s32[]{:T(128)} parameter(2)
  %w1 = f32[128,128]{1,0:T(8,128)} fusion(%param_1.2, %param_2.2), kind=kLoop, calls=%slice_w
  ROOT %dot = f32[8,128]{1,0:T(8,128)} convolution(%param_0.2, %w1), dim_labels=bf_io->bf
}

%store (param_0.3: f32[10,8,128], param_1.3: f32[8,128], param_2.3: s32[]) -> f32[10,8,128] {
  %param_0.3 = f32[10,8,128]{2,1,0:T(8,128)} parameter(0)
  %param_1.3 = f32[8,128]{1,0:T(8,128)} parameter(1)
  %param_2.3 = s32[]{:T(128)} parameter(2)
  %c3 = s32[]{:T(128)} constant(0)
  %b3 = f32[1,8,128]{2,1,0:T(8,128)} bitcast(%param_1.3)
  ROOT %dus = f32[10,8,128]{2,1,0:T(8,128)} dynamic-update-slice(%param_0.3, %b3, %param_2.3, %c3, %c3)
}

%cond (p: $TYPE) -> pred[] {
  %p = $STATE parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(10)
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
}

%body (q: $TYPE) -> $TYPE {
  %q = $STATE parameter(0)
  %i2 = s32[]{:T(128)S(1)} get-tuple-element(%q), index=0
  %x = f32[8,128]{1,0:T(8,128)} get-tuple-element(%q), index=1
  %w = f32[10,128,128]{2,1,0:T(8,128)} get-tuple-element(%q), index=2
  %ys = f32[10,8,128]{2,1,0:T(8,128)} get-tuple-element(%q), index=3
  %y = f32[8,128]{1,0:T(8,128)} fusion(%x, %w, %i2), kind=kOutput, calls=%matmul
  %ys2 = f32[10,8,128]{2,1,0:T(8,128)} fusion(%ys, %y, %i2), kind=kLoop, calls=%store
  %one = s32[]{:T(128)S(1)} constant(1)
  %i3 = s32[]{:T(128)S(1)} add(%i2, %one)
  ROOT %t = $STATE tuple(%i3, %y, %w, %ys2)
}

ENTRY %main (x0: f32[8,128], w0: f32[10,128,128], ys0: f32[10,8,128]) -> f32[10,8,128] {
  %x0 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %w0 = f32[10,128,128]{2,1,0:T(8,128)} parameter(1)
  %ys0 = f32[10,8,128]{2,1,0:T(8,128)} parameter(2)
  %z = s32[]{:T(128)} constant(0)
  %init = $STATE tuple(%z, %x0, %w0, %ys0)
  %loop = $STATE while(%init), condition=%cond, body=%body
  ROOT %out = f32[10,8,128]{2,1,0:T(8,128)} get-tuple-element(%loop), index=3
}
""".replace("$STATE", STATE).replace("$TYPE", STATE_TYPE).replace("$W", "{1,128,128}")


def test_hbm_traffic_counts_loops_slices_and_in_place_updates():
    kib = 1024
    # per iteration: matmul reads x (4 KiB) and one layer of w (64 KiB), writes y (4 KiB); the in-place
    # store reads y (4 KiB) and writes its update (4 KiB), not the stacked [10, 8, 128] buffer
    per_iteration = (4 + 64 + 4) * kib + (4 + 4) * kib
    compare = 4 + 4 + 1  # the loop condition: two s32 scalars in, a pred out
    assert hlo_stats.hbm_traffic(SCAN_HLO) == 10 * (per_iteration + compare)
    assert hlo_stats.hbm_traffic(SCAN_HLO, loops=False) == per_iteration + compare  # XLA's way: bodies once


def test_hbm_bytes_pad_to_tiles_and_skip_on_chip_buffers():
    assert hlo_stats.hbm_bytes("f32[6,500002,16]{2,1,0:T(8,128)}") == 6 * 500008 * 128 * 4  # minor dim 16 -> 128
    assert hlo_stats.hbm_bytes("f32[16,6]{0,1:T(8,128)}") == 128 * 8 * 4  # minor-to-major order {0,1}
    assert hlo_stats.hbm_bytes("(f32[8,128]{1,0:T(8,128)S(1)}, f32[3]{0})") == 12  # VMEM buffer, untiled array


def test_matmul_flops_of_dots_and_tpu_convolutions():
    text = """HloModule m

%fused (param_0: bf16[4096,512], param_1: bf16[512,1024]) -> bf16[4096,1024] {
  %param_0 = bf16[4096,512]{1,0} parameter(0)
  %param_1 = bf16[512,1024]{1,0} parameter(1)
  ROOT %conv = bf16[4096,1024]{1,0:T(8,128)(2,1)} convolution(%param_0, %param_1), dim_labels=bf_io->bf
}

ENTRY %main (a: bf16[4096,512], b: bf16[512,1024], c: f32[8,64,32]) -> bf16[4096,1024] {
  %a = bf16[4096,512]{1,0} parameter(0)
  %b = bf16[512,1024]{1,0} parameter(1)
  %c = f32[8,64,32]{2,1,0} parameter(2)
  %d = f32[8,64,64]{2,1,0} dot(%c, %c), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_contracting_dims={2}
  ROOT %f = bf16[4096,1024]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused
}
"""
    assert hlo_stats.matmul_flops(text) == 2 * 4096 * 1024 * 512 + 2 * 8 * 64 * 64 * 32
    assert hlo_stats.matmul_flops(SCAN_HLO) == 10 * 2 * 8 * 128 * 128  # the scanned matmul, ten times


def test_hbm_traffic_of_a_static_slice_is_the_slice():
    """An unrolled layer loop takes layer i of a stacked weight with a static ``slice``: one layer is read."""
    text = """HloModule m

%take (param_0.1: f32[25,128,128]) -> f32[128,128] {
  %param_0.1 = f32[25,128,128]{2,1,0:T(8,128)} parameter(0)
  %s = f32[1,128,128]{2,1,0:T(8,128)} slice(%param_0.1), slice={[22:23], [0:128], [0:128]}
  ROOT %b = f32[128,128]{1,0:T(8,128)} bitcast(%s)
}

ENTRY %main (w: f32[25,128,128]) -> f32[128,128] {
  %w = f32[25,128,128]{2,1,0:T(8,128)} parameter(0)
  ROOT %f = f32[128,128]{1,0:T(8,128)} fusion(%w), kind=kLoop, calls=%take
}
"""
    assert hlo_stats.hbm_traffic(text) == 2 * 128 * 128 * 4  # one layer read, one written
