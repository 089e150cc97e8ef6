"""Environment for test subprocesses: a chosen number of fake CPU devices, and this checkout importable."""

import os
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]


def env_with_devices(n: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
