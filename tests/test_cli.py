"""Console entry points: every ``console_scripts`` line of setup.cfg names a function of ``bltjax.cli`` that
runs the right module's ``main``, and the command-line programs themselves start (``--help``)."""

import configparser
import importlib
import pathlib

import pytest

from bltjax import cli

REPO = pathlib.Path(__file__).resolve().parent.parent


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    return dict((part.strip() for part in ln.split("=", 1)) for ln in lines)


def resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_every_console_script_resolves_to_a_callable():
    scripts = console_scripts()
    assert set(scripts) == set(cli.COMMANDS)
    assert {"bltjax-train", "bltjax-eval", "bltjax-generate", "bltjax-convert", "bltjax-entropy",
            "bltjax-fetch"} <= set(scripts)
    for name, target in scripts.items():
        fn = resolve(target)
        assert callable(fn), name
        module = importlib.import_module(cli.COMMANDS[name][0])
        assert callable(module.main), name


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_console_script_runs_the_module_main(name, monkeypatch, capsys):
    """``<script> --help`` prints the module's usage and exits 0 (no re-exec in tests)."""
    monkeypatch.setenv("BLTJAX_HUGEPAGES", "0")
    monkeypatch.setattr("sys.argv", [name, "--help"])
    with pytest.raises(SystemExit) as e:
        resolve(console_scripts()[name])()
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out
