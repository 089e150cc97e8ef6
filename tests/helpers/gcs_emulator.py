"""A Google Cloud Storage emulator on loopback for the ``gs://`` tests.

``gcs_emulator()`` starts ``gcp-storage-emulator`` (PyPI, in the ``test`` extra; with the header fix of
``gcs_emulator_server.py``) as a subprocess on a free 127.0.0.1 port with an in-memory store and one
bucket, waits until it answers, and yields the environment variables that point every GCS client of
bltjax at it:

* ``STORAGE_EMULATOR_HOST``: gcsfs, hence ``etils.epath`` (config.json, metrics, TensorBoard events,
  data files, Orbax's own metadata files);
* ``TENSORSTORE_GCS_HTTP_URL``: tensorstore, hence Orbax's array data;
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs would otherwise ask the (absent) storage-control
  API for the bucket's layout on every open and log a warning each time.

They are set in ``os.environ`` for this process (restored afterwards); subprocesses must be given them
(``env={**os.environ, ...}`` or the returned dict).  The emulator is killed on exit.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

BUCKET = "bltjax-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gcp-storage-emulator did not answer at {url} within {timeout_s:.0f} s")
        time.sleep(0.1)


def _reset_gcsfs() -> None:
    """Forget GCS filesystems cached for another emulator (gcsfs and etils.epath cache them per process)."""
    with contextlib.suppress(ImportError):
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    with contextlib.suppress(ImportError, AttributeError):
        from etils.epath import backend

        backend.fsspec_backend._get_filesystem.cache_clear()


def _start(log_path: pathlib.Path, timeout_s: float, attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """Start the emulator on a free port; retry on another port if it dies first (port taken meanwhile)."""
    for attempt in range(attempts):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, str(pathlib.Path(__file__).with_name("gcs_emulator_server.py")), str(port), BUCKET]
        with open(log_path, "ab") as log:  # the emulator prints harmless BrokenPipe tracebacks
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(url, proc, timeout_s)
            return proc, url
        except RuntimeError:
            proc.kill()
            proc.wait(timeout=30)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def gcs_emulator(log_path: pathlib.Path, timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """Run the emulator; yield the environment variables for clients (also set in ``os.environ``)."""
    proc, url = _start(log_path, timeout_s)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        _reset_gcsfs()
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_gcsfs()
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Module-scoped emulator; the value is the client environment (for subprocess ``env=``)."""
    with gcs_emulator(tmp_path_factory.mktemp("gcs") / "emulator.log") as env:
        yield env
