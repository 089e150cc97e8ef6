"""The shared-data helpers of conftest: quiet skip on a developer machine, loud failure in CI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.subprocess_env import REPO

SCRIPT = textwrap.dedent('''
    import conftest
    def test_needs_data():
        conftest.require_shared("no-such-corpus", "x.txt")
    def test_optional_data():
        assert conftest.shared_path("no-such-corpus") is None
''')


def _run(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    test = tmp_path / "test_helper_probe.py"
    test.write_text(SCRIPT)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{REPO / 'tests'}:{REPO}", "BLTJAX_SHARED_DIR": str(tmp_path / "shared")}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           str(test)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_shared_data_skips_locally_and_fails_in_ci(tmp_path):
    local = _run(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout[-2000:]
    assert "1 passed, 1 skipped" in local.stdout
    ci = _run(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "2 failed" in ci.stdout and "is missing and CI is set" in ci.stdout
