"""TPU chip figures and topology names, for ahead-of-time compiles from a CPU machine (``bltjax.aot``).

Topology names are accepted as users write them:

* ``v5p-256``, ``v4-32``: **v5p and v4 count TensorCores** (two per chip), so ``v5p-256`` is 128 chips
  (a ``4x4x8`` slice); Cloud TPU's v5p and v4 pages list each slice as "Topology | Cores | Chips";
* ``v5e-16``, ``v6e-64`` (also ``v5litepod-16``): **v5e and v6e count chips** (one TensorCore each);
* ``v5p:8x8x4``, ``v6e:8x8``: the explicit chip grid, as ``jax.experimental.topologies`` takes it;
* ``cpu:8``: eight (fake) CPU devices of this process, for quick checks and tests.

Chip figures (per chip, dense bf16) come from the Cloud TPU documentation pages cited in
:data:`CHIPS`; ``xla_usable_gib`` is the HBM limit the TPU compiler (libtpu 0.0.50.1) enforces per
device, read from its ``CompileTimeHbmOom`` message for each chip kind.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, per chip (``cores_per_chip`` TensorCores)."""

    kind: str
    hbm_gib: float  # capacity per chip, as documented
    xla_usable_gib: float  # per JAX device, the compiler's limit (see module docstring)
    peak_bf16_flops: float  # per chip
    hbm_bytes_per_s: float  # per chip
    ici_bytes_per_s: Optional[float]  # bidirectional inter-chip bandwidth per chip (None: not documented)
    cores_per_chip: int
    name_counts_cores: bool  # "v5p-256" counts TensorCores (True) or chips (False)
    grid_dims: int  # 3 (3D torus) or 2 (2D torus)
    source: str


CHIPS: dict[str, Chip] = {
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs bf16, 95 GiB HBM2e, 2765 GBps,
    # bidirectional ICI 1200 GBps per chip, 2 TensorCores per chip;
    # slices listed by cores (4x4x8 = 256 cores, 128 chips)
    "v5p": Chip("v5p", 95, 95.73, 459e12, 2765e9, 1200e9, 2, True, 3, "https://cloud.google.com/tpu/docs/v5p"),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs bf16, 16 GB HBM2, 819 GBps, bidirectional ICI
    # 400 GBps per chip, 1 TensorCore per chip; accelerator types count chips (v5litepod-16 = 4x4)
    "v5e": Chip("v5e", 16, 15.75, 197e12, 819e9, 400e9, 1, False, 2, "https://cloud.google.com/tpu/docs/v5e"),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs bf16, 32 GB HBM, 1640 GBps, bidirectional ICI
    # 800 GBps per chip, 1 TensorCore per chip; v6e-8 = 2x4 = 8 chips
    "v6e": Chip("v6e", 32, 31.24, 918e12, 1640e9, 800e9, 1, False, 2, "https://cloud.google.com/tpu/docs/v6e"),
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOPs bf16, 32 GiB HBM2, 1200 GBps, 2 TensorCores per
    # chip (the page gives no per-chip ICI figure); v4-32 = 16 chips.  The topology compiler exposes one
    # device per TensorCore (no megacore), so each device holds half a chip's HBM.
    "v4": Chip("v4", 32, 15.25, 275e12, 1200e9, None, 2, True, 3, "https://cloud.google.com/tpu/docs/v4"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}

# Slice shapes for a chip count (3D: the v5p / v4 tables; 2D: the v5e / v6e tables of the pages above).
GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
            6144: (16, 16, 24)}
GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology name: chip kind (``None`` for CPU), chip grid per slice, number of slices."""

    name: str
    chip: Optional[Chip]
    grid: tuple[int, ...]
    num_slices: int = 1

    @property
    def is_cpu(self) -> bool:
        return self.chip is None

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.grid)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology_name(self) -> str:
        """The name ``jax.experimental.topologies.get_topology_desc`` takes, e.g. ``v5p:4x4x8``."""
        return f"{self.chip.kind}:{'x'.join(map(str, self.grid))}" if self.chip else f"cpu:{self.grid[0]}"

    def describe(self) -> str:
        if self.chip is None:
            return f"{self.grid[0]} CPU device(s)"
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return f"{self.name} = TPU {self.chip.kind} {self.topology_name.split(':')[1]}{slices} ({self.num_chips} chips)"


def _chip(kind: str) -> Chip:
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind not in CHIPS:
        raise ValueError(f"unknown TPU kind {kind!r}: known {sorted(CHIPS)} (or cpu:N)")
    return CHIPS[kind]


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """``v5p-256`` / ``v6e-64`` / ``v5p:8x8x4`` / ``cpu:8`` -> :class:`Topology` (ValueError when unknown)."""
    text = name.strip()
    if num_slices < 1:
        raise ValueError(f"--num-slices must be >= 1, got {num_slices}")
    m = re.fullmatch(r"cpu:(\d+)", text, re.I)
    if m:
        if num_slices != 1:
            raise ValueError("--num-slices applies to TPU topologies, not cpu:N")
        return Topology(text, None, (int(m.group(1)),))
    m = re.fullmatch(r"([a-z0-9]+?)(?:pod)?:(\d+(?:x\d+)*)", text, re.I)
    if m:
        chip = _chip(m.group(1))
        grid = tuple(int(v) for v in m.group(2).split("x"))
        if len(grid) != chip.grid_dims:
            raise ValueError(f"topology {text!r}: TPU {chip.kind} grids have {chip.grid_dims} dimensions")
        return Topology(text, chip, grid, num_slices)
    m = re.fullmatch(r"([a-z0-9]+?)-(\d+)", text, re.I)
    if not m:
        raise ValueError(f"topology {text!r} not understood: write e.g. v5p-256, v6e-64, v5p:8x8x4 or cpu:8")
    chip, count = _chip(m.group(1)), int(m.group(2))
    chips = count // chip.cores_per_chip if chip.name_counts_cores else count
    if chip.name_counts_cores and count % chip.cores_per_chip:
        raise ValueError(f"topology {text!r}: TPU {chip.kind} names count TensorCores ({chip.cores_per_chip} "
                         f"per chip), so the number must be even")
    grids = GRIDS_3D if chip.grid_dims == 3 else GRIDS_2D
    if chips not in grids:
        unit = "TensorCores" if chip.name_counts_cores else "chips"
        sizes = [n * chip.cores_per_chip if chip.name_counts_cores else n for n in grids]
        raise ValueError(f"topology {text!r}: no standard {chip.kind} slice of {count} {unit} "
                         f"(known: {sizes}); give the grid instead, e.g. {chip.kind}:"
                         f"{'x'.join(map(str, next(iter(grids.values()))))}")
    return Topology(text, chip, grids[chips], num_slices)


def topology_devices(topo: Topology) -> list[Any]:
    """The devices to compile for: TPU topology devices (no chips needed) or this process's CPU devices."""
    import jax

    if topo.is_cpu:
        n = topo.grid[0]
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ValueError(f"--topology cpu:{n} needs {n} CPU devices, this process has {len(devices)} "
                             f"(set XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting)")
        return devices[:n]
    import glob
    import os

    from jax.experimental import topologies

    # compiling touches no chip: let several compiles (sweep workers, other users) load libtpu at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
        # a host without TPU chips: name a local "runtime" so that loading libtpu does not print a page
        # of errors about the missing TPU metadata (the topology compiled for is given separately)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    try:
        desc = topologies.get_topology_desc(topology_name=topo.topology_name, platform="tpu",
                                            num_slices=topo.num_slices)
    except Exception as e:  # noqa: BLE001 -- libtpu missing or a grid it rejects
        raise ValueError(f"cannot build TPU topology {topo.topology_name} x {topo.num_slices} slice(s): "
                         f"{str(e).strip().splitlines()[0]} (TPU compiles need libtpu: "
                         f"pip install 'bltjax[tpu]')") from e
    return list(desc.devices)


def devices_per_chip(topo: Topology, devices: list[Any]) -> int:
    """JAX devices per chip on this topology (2 on v4, whose topology devices are TensorCores)."""
    return max(1, len(devices) // topo.num_chips) if not topo.is_cpu else 1


__all__ = ["Chip", "CHIPS", "Topology", "parse_topology", "topology_devices", "devices_per_chip", "GiB"]
