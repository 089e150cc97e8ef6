"""The command-line entry points re-execute themselves once with glibc's huge-page malloc tunable."""

import os
import subprocess
import sys

import pytest

from bltjax import hugepages


def test_environment_appends_to_existing_tunables():
    env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
    assert env["X"] == "1"
    assert hugepages.environment({})["GLIBC_TUNABLES"] == hugepages.TUNABLE


def test_not_wanted_when_set_or_opted_out():
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not hugepages.wanted({"BLTJAX_HUGEPAGES": "0"})


SCRIPT = """
import os, sys
from bltjax import hugepages
print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
hugepages.reexec()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
"""


@pytest.mark.skipif(not hugepages.wanted({}), reason="needs Linux with glibc >= 2.35")
def test_reexec_runs_once_in_the_same_process_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BLTJAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, "--flag", "value"], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    first, second, after = out
    assert first.split()[2:] == [] and second.split()[2] == hugepages.TUNABLE
    assert first.split()[1] == second.split()[1] == after.split()[1]  # exec keeps the pid
    assert after.endswith("['--flag', 'value']")
    opted_out = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, "BLTJAX_HUGEPAGES": "0"},
                               capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert [line.split()[0] for line in opted_out] == ["run", "after"]
