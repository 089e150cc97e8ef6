"""Test setup: 8 fake CPU devices, persistent compile cache, absl flags parsed (Grain workers), and
``shared_path`` / ``require_shared`` for the optional data next to the repository."""

import os
import pathlib
from typing import Optional

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
# Corpora kept next to the repository (development machines and CI): ../shared, or the nearest
# ancestor's shared/ (git worktrees one level further down).
# $BLTJAX_SHARED_DIR overrides both.
SHARED = pathlib.Path(os.environ["BLTJAX_SHARED_DIR"]) if os.environ.get("BLTJAX_SHARED_DIR") else next(
    (p / "shared" for p in REPO.resolve().parents if (p / "shared" / "corpora").is_dir()), REPO.parent / "shared")


@pytest.fixture(scope="session")
def shared_corpora() -> pathlib.Path:
    """``../shared/corpora`` (tiny Shakespeare, UDHR): required in CI (``$CI`` set), else optional."""
    path = SHARED / "corpora"
    if not (path / "tinyshakespeare" / "input.txt").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the corpora at {path} (../shared/corpora next to the repository)")
        pytest.skip(f"corpora not present at {path}")
    return path


@pytest.fixture
def data_cache(shared_corpora, monkeypatch) -> pathlib.Path:
    """``$BLTJAX_DATA_DIR`` pointed at ``../shared/corpora``: ``fetch:tinyshakespeare`` resolves offline."""
    monkeypatch.setenv("BLTJAX_DATA_DIR", str(shared_corpora))
    return shared_corpora


def shared_path(*parts: str) -> Optional[pathlib.Path]:
    """``SHARED/<parts>`` when present.  Missing: None on a developer machine, but a test failure when
    the ``CI`` environment variable is set, so a CI machine that lost the data cannot turn the tests
    that use it into quiet skips."""
    path = SHARED.joinpath(*parts)
    if path.exists():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{path} is missing and CI is set: put the shared data next to the repository "
                    f"(../shared) or point BLTJAX_SHARED_DIR at it", pytrace=False)
    return None


def require_shared(*parts: str) -> pathlib.Path:
    """``shared_path`` for a test that cannot run without the data: skipped locally, failed in CI."""
    path = shared_path(*parts)
    if path is None:
        pytest.skip(f"{SHARED.joinpath(*parts)} not present (set BLTJAX_SHARED_DIR; required when CI is set)")
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> pathlib.Path:
    """The tiny-entropy release-format checkpoint copied into tests/data."""
    return DATA / "tiny-entropy"


@pytest.fixture(scope="session")
def expected(fixture_dir):
    import numpy as np

    return dict(np.load(fixture_dir / "expected.npz"))
