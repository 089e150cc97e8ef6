"""Peak FLOP/s of one device: the denominator of MFU (model FLOPs utilisation).

* Accelerators: the vendor's dense (no sparsity) bf16 rating of the chip, from ``PEAK_BF16_FLOPS``
  (sources below), matched on ``device.device_kind``; an unknown chip has no peak (MFU not reported).
* CPUs: ``cpu_peak_flops`` -- the host's dense-matmul peak in its fastest format, computed from
  cores x vector width x FMA units x clock and never below a matmul rate measured once per machine.
* ``$BLTJAX_PEAK_FLOPS`` (FLOP/s per device) overrides both.

Model FLOPs of a step cannot be executed faster than these peaks, so MFU is at most 100 %.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import platform
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 peak FLOP/s per chip from the vendors' spec sheets, matched as lower-case
# substrings of ``device.device_kind``; first match wins, so specific names precede their prefixes.
# Sources (dense = half the "with sparsity" figure where a sheet quotes only that):
#   GPUs: NVIDIA data sheets -- H100 SXM 989 / H100 PCIe 756 TFLOPS bf16 ("H100 Tensor Core GPU"
#   datasheet), H200 989 ("H200 Tensor Core GPU" datasheet; same compute as H100 SXM), A100 312 ("A100
#   Tensor Core GPU" datasheet), L4 121 ("L4 Tensor Core GPU" datasheet, 242 with sparsity), L40S 362,
#   L40 181, T4 65 fp16 (no bf16 units; "T4 Tensor Core GPU" datasheet), V100 125 fp16, B200 2250,
#   GB200 2500 per GPU; AMD MI300X 1307 ("Instinct MI300X" data sheet).
#   TPUs: Google Cloud TPU system-architecture pages (bf16 per chip): v2 45, v3 123, v4 275, v5e 197,
#   v5p 459, v6e (Trillium) 918, v7 (Ironwood) 2307.  Kept to the figures themselves; a TPU chip table
#   with more properties belongs in one place (replace these rows by it when there is one).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("tpu7x", 2307e12),       # Ironwood
    ("tpu v7", 2307e12),
    ("tpu v6 lite", 918e12),  # v6e / Trillium
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),       # v5p reports "TPU v5"
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 45e12),
    ("gb200", 2500e12),
    ("b200", 2250e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),         # SXM
    ("h800", 989e12),
    ("h200", 989e12),         # also GH200
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("v100", 125e12),         # fp16 tensor cores (no bf16)
    ("t4", 65e12),            # fp16 tensor cores (no bf16)
    ("mi300x", 1307e12),
)

ENV_PEAK_FLOPS = "BLTJAX_PEAK_FLOPS"  # overrides the per-device peak (FLOP/s) when set
CPU_PEAK_CACHE = pathlib.Path("~/.cache/bltjax/cpu_peak.json")  # measured matmul rate per host
FMA_UNITS_PER_CORE = 2  # the most any x86 / Arm server core has (Zen 2-5, Skylake-SP Gold/Platinum+, Neoverse V)
AMX_BF16_FLOPS_PER_CYCLE = 1024  # per core (Intel: AMX does 1024 bf16 operations per cycle per core)


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """What the CPU peak is computed from (see ``cpu_peak_flops``)."""

    model: str
    cores: int  # cores this process may run on (affinity)
    fp32_lanes: int  # fp32 values per vector register: 16 (AVX-512), 8 (AVX/AVX2), 4 (SSE / NEON)
    clock_hz: float  # highest clock known: cpufreq max, else the highest "cpu MHz", else "@ x.xGHz"
    bf16_dot: bool = False  # AVX512_BF16: a bf16 dot product does 2 multiply-adds per fp32 lane
    amx_bf16: bool = False  # AMX tiles: AMX_BF16_FLOPS_PER_CYCLE per core

    @property
    def fp32_flops(self) -> float:
        """cores x fp32 lanes x FMA units x 2 FLOPs per FMA x clock."""
        return self.cores * self.fp32_lanes * FMA_UNITS_PER_CORE * 2.0 * self.clock_hz

    @property
    def formula_flops(self) -> float:
        """The arithmetic peak in the fastest matmul format the CPU has: bf16 with AMX or AVX512_BF16
        (2x the fp32 rate), else fp32."""
        amx = self.cores * AMX_BF16_FLOPS_PER_CYCLE * self.clock_hz if self.amx_bf16 else 0.0
        return max(self.fp32_flops * (2.0 if self.bf16_dot else 1.0), amx)


def cpu_info() -> CpuInfo:
    """The host CPU as Linux describes it (``/proc/cpuinfo``, cpufreq); defaults where unknown."""
    text = _read("/proc/cpuinfo")
    fields: dict[str, str] = {}
    mhz = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
        fields.setdefault(key, value)
    model = fields.get("model name") or fields.get("cpu model") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "avx" in flags) else 4
    clock = 0.0
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        clock = int(max_khz) * 1e3
    if mhz:
        clock = max(clock, max(mhz) * 1e6)
    named = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    if named:
        clock = max(clock, float(named.group(1)) * 1e9)
    if clock <= 0:
        clock = 3.0e9  # unknown (not Linux): a typical clock; the measured matmul rate bounds it below
    return CpuInfo(model=model, cores=_cpu_cores(), fp32_lanes=lanes, clock_hz=clock,
                   bf16_dot="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)


@functools.cache
def measure_matmul_flops(n: int = 1024, repeats: int = 3, dtype: str = "float32") -> float:
    """Best-of-``repeats`` ``n x n`` matmul FLOP/s in ``dtype`` on the default device (cached per process)."""
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def measured_cpu_flops(cache: Optional[os.PathLike | str] = None) -> float:
    """Matmul FLOP/s of this host in its faster of fp32 and bf16, measured once (``measure_matmul_flops``,
    1024 x 1024, best of 5) and kept in ``~/.cache/bltjax/cpu_peak.json`` under ``"<CPU model> x <cores>"``."""
    path = pathlib.Path(cache or CPU_PEAK_CACHE).expanduser()
    info = cpu_info()
    key = f"{info.model} x {info.cores}"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if isinstance(table.get(key), (int, float)) and table[key] > 0:
        return float(table[key])
    flops = max(measure_matmul_flops(1024, 5, "float32"), measure_matmul_flops(1024, 5, "bfloat16"))
    table[key] = flops
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:  # a read-only home: measured again next time
        log.debug("cannot cache the CPU peak in %s: %s", path, e)
    return flops


@functools.cache
def cpu_peak_flops() -> float:
    """Peak dense-matmul FLOP/s of the host CPU (all cores this process may use), in its fastest
    format (like the accelerator table, which rates chips by bf16): the larger of

    * the arithmetic peak (``CpuInfo.formula_flops``): ``cores x fp32 lanes x 2 FMA units x 2 x clock``,
      with the vector width from the CPU flags (AVX-512: 16 lanes, AVX2: 8, else 4), 2 FMA pipes per
      core (the most current x86 / Arm server cores have; a core with fewer, or one that splits AVX-512
      in two halves such as Zen 4, has a lower real peak, so this is an upper bound) and the highest
      clock Linux reports; doubled with AVX512_BF16 (XLA runs bf16 matmuls on it at twice the fp32
      rate), or the AMX rate where the CPU has AMX; and
    * the matmul rate XLA reaches on this host (``measured_cpu_flops``, fp32 and bf16, cached per
      machine), which guards against a clock reported below the one the CPU really runs at (VMs, turbo).

    Model FLOPs of a training step cannot be executed faster than that, in fp32 or bf16, so MFU stays
    below 100 %; an fp32 run on a CPU with bf16 instructions can reach at most about half of it.
    """
    info = cpu_info()
    return max(info.formula_flops, measured_cpu_flops())


def peak_flops_for_kind(device_kind: str) -> Optional[float]:
    """Peak bf16 FLOP/s of one chip named ``device_kind`` (None when unknown)."""
    kind = device_kind.lower()
    for pattern, flops in PEAK_BF16_FLOPS:
        if pattern in kind:
            return flops
    return None


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
    """Peak FLOP/s of one device: ``$BLTJAX_PEAK_FLOPS``, else the accelerator table
    (``PEAK_BF16_FLOPS``), else for a CPU ``cpu_peak_flops()``, else None (unknown chip: no MFU).

    On CPU the host peak is divided among the process's CPU devices, so fake multi-device CPU runs
    (``--xla_force_host_platform_device_count``) report MFU against the real host.
    """
    if os.environ.get(ENV_PEAK_FLOPS):
        return float(os.environ[ENV_PEAK_FLOPS])
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops() / max(len(jax.local_devices(backend="cpu")), 1)
    peak = peak_flops_for_kind(device.device_kind)
    if peak is None:
        log.warning("unknown device kind %r: no peak FLOP/s, MFU not reported (set %s)",
                    device.device_kind, ENV_PEAK_FLOPS)
    return peak


__all__ = ["PEAK_BF16_FLOPS", "ENV_PEAK_FLOPS", "CpuInfo", "cpu_info", "measure_matmul_flops", "measured_cpu_flops",
           "cpu_peak_flops", "peak_flops_for_kind", "peak_flops_per_device"]
