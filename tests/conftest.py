"""Test setup: 8 fake CPU devices, persistent compile cache, absl flags parsed (Grain workers)."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path.home() / ".cache" / "bltjax" / "jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import absl.flags  # noqa: E402

absl.flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"
REPO = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="session")
def fixture_dir() -> pathlib.Path:
    """The tiny-entropy release-format checkpoint copied into tests/data."""
    return DATA / "tiny-entropy"


@pytest.fixture(scope="session")
def expected(fixture_dir):
    import numpy as np

    return dict(np.load(fixture_dir / "expected.npz"))
