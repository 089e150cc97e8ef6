"""The documentation cannot drift from the code: every command and Python name in README.md and docs/*.md
is checked against the package, without running anything.

* ```bash blocks: every command is split like the shell does (``\\`` continuations, quotes, ``$'...'``,
  comments, ``&&`` / ``;`` / ``|`` chains, ``VAR=value`` prefixes).  For ``python -m bltjax.<module> ...``
  and the ``bltjax-*`` console scripts (``setup.cfg`` ``console_scripts``), the module must exist, must not
  be a deprecated alias, and its ``build_parser()`` must accept the arguments.  For ``bltjax.train``,
  ``--config FILE[:ARG]`` must load and every ``--set key=value`` must be a valid override of that config
  (``bltjax.overrides``).  No argument may point outside the clone (``../``).
  ``python path/to/script.py`` and ``tools/*.sh`` must name files of the repository.
  Other programs (``pip``, ``git``, ``tensorboard``, ``gcloud``, ...) are not checked.
* ```python blocks: must parse; every ``import bltjax...`` / ``from bltjax... import name`` and every
  ``bltjax.a.b`` attribute chain must resolve (modules are imported, nothing is called).
* Inline ```python -m bltjax.<module>``` mentions in the prose must name an existing, non-deprecated module.

Placeholders are fine where a shell would accept them: paths need not exist (nothing is opened), a shell
variable (``$RANK``) stands for ``0``, and a ``--set`` value written ``<like-this>`` or in capitals
(``THRESHOLD``) only checks its key.  Run ``tools/check_docs.sh`` (the documented check script) or this file.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import dataclasses
import importlib
import importlib.util
import pathlib
import re
import shlex
import warnings
from typing import Any, Optional

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PYTHONS = {"python", "python3", "python3.12", "py"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER_VALUE = re.compile(r"^(<[^<>]+>|[A-Z][A-Z0-9_]*)$")
SHELL_VAR = re.compile(r"^\$(\w+|\{\w+\})$")
INLINE_MODULE = re.compile(r"python3? -m (bltjax(?:\.\w+)*)")
ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.)*)'")


@dataclasses.dataclass(frozen=True)
class Snippet:
    file: pathlib.Path
    line: int  # 1-based line of the snippet's first line in the file
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


# ====================================================================== extraction
def fenced_blocks(path: pathlib.Path) -> list[Snippet]:
    """The fenced code blocks of a Markdown file, with the line of their first content line."""
    blocks, lang, start, buf = [], None, 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if lang is None:
            if stripped.startswith("```"):
                lang, start, buf = stripped[3:].strip().lower() or "text", i + 1, []
        elif stripped.startswith("```"):
            blocks.append(Snippet(path, start, lang, "\n".join(buf)))
            lang = None
        else:
            buf.append(line)
    return blocks


def shell_commands(block: Snippet) -> list[Snippet]:
    """Logical command lines of a bash block (continuations joined), comment-only lines dropped."""
    out, lines = [], block.text.split("\n")
    i = 0
    while i < len(lines):
        first, text = i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if text.strip() and not text.strip().startswith("#"):
            out.append(Snippet(block.file, block.line + first, "bash", text.strip()))
    return out


def _ansi_c(match: re.Match) -> str:
    decoded = match.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape")
    return shlex.quote(decoded)


def split_command(text: str) -> list[list[str]]:
    """Shell words of one logical line, one list per simple command of a ``&&`` / ``;`` / ``|`` chain."""
    words = shlex.split(ANSI_C.sub(_ansi_c, text), comments=True)
    commands, cur = [], []
    for w in words:
        if w in SEPARATORS:
            commands.append(cur)
            cur = []
        else:
            cur.append(w)
    commands.append(cur)
    out = []
    for cmd in commands:
        while cmd and re.match(r"^[A-Za-z_]\w*=", cmd[0]):  # VAR=value prefixes
            cmd = cmd[1:]
        if cmd and cmd[0] in ("env", "exec", "time", "timeout"):
            cmd = cmd[1:]
            while cmd and (re.match(r"^[A-Za-z_]\w*=", cmd[0]) or re.match(r"^-|^\d", cmd[0])):
                cmd = cmd[1:]
        if cmd:
            out.append([("0" if SHELL_VAR.match(w) else w) for w in cmd])
    return out


def console_scripts() -> dict[str, str]:
    """``bltjax-*`` console script -> the module whose ``main()`` it runs."""
    cp = configparser.ConfigParser()
    cp.read(ROOT / "setup.cfg", encoding="utf-8")
    if not cp.has_option("options.entry_points", "console_scripts"):
        return {}
    scripts = {}
    for line in cp.get("options.entry_points", "console_scripts").strip().splitlines():
        name, _, target = (s.strip() for s in line.partition("="))
        module, _, func = target.partition(":")
        table = getattr(importlib.import_module(module), "COMMANDS", None)
        if isinstance(table, dict) and name in table:  # a dispatcher module (bltjax.cli) naming the module
            entry = table[name]
            scripts[name] = entry[0] if isinstance(entry, tuple) else entry
        else:
            scripts[name] = module
    return scripts


# ====================================================================== checks
class ParseError(Exception):
    pass


@contextlib.contextmanager
def parser_errors_raise():
    """argparse reports errors by printing usage and exiting; make every parser raise instead."""
    original = argparse.ArgumentParser.error

    def error(self, message):
        raise ParseError(f"{self.prog}: {message}")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def is_deprecated(module: Any) -> bool:
    return (module.__doc__ or "").lstrip().lower().startswith("deprecated")


def import_cli(name: str) -> Any:
    if not name.startswith("bltjax") or importlib.util.find_spec(name) is None:
        raise AssertionError(f"no module {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a deprecated alias is reported below
        module = importlib.import_module(name)
    if is_deprecated(module):
        raise AssertionError(f"{name} is deprecated: {(module.__doc__ or '').strip().splitlines()[0]}")
    if not callable(getattr(module, "build_parser", None)):
        raise AssertionError(f"{name} has no build_parser()")
    return module


def check_override_key(cfg: Any, key: str) -> None:
    """The dotted key names a field of the config (for placeholder values), walking it as --set does."""
    from bltjax.overrides import field_types, optional_dataclass

    obj, parts = cfg, key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth + 1])
        if part not in {f.name for f in dataclasses.fields(obj) if f.init}:
            raise AssertionError(f"--set {key}: unknown config key {where!r}")
        if depth < len(parts) - 1:
            current = getattr(obj, part)
            if current is None:
                section = optional_dataclass(field_types(type(obj)).get(part, Any))
                current = section() if section is not None else None
            if not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
                raise AssertionError(f"--set {key}: {where} is not a config section")
            obj = current


def check_train_config(ns: argparse.Namespace) -> None:
    from bltjax import train
    from bltjax.overrides import apply_overrides
    from bltjax.train_config import load_config

    path = train.config_path(ns.config)
    try:
        cfg = load_config(path)
    except Exception as e:  # noqa: BLE001 -- any failure to load is the finding
        raise AssertionError(f"--config {ns.config}: cannot load {path}: {type(e).__name__}: {e}") from e
    concrete = []
    for item in ns.overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise AssertionError(f"--set {item}: expected KEY=VALUE")
        if PLACEHOLDER_VALUE.match(value):
            check_override_key(cfg, key)
        else:
            concrete.append(item)
    try:
        apply_overrides(cfg, concrete, validate=len(concrete) == len(ns.overrides))
    except (ValueError, TypeError) as e:
        raise AssertionError(f"--set: {e}") from e


def check_paths_inside_clone(args: list[str]) -> None:
    """A user's clone has nothing beside it: no argument may reach outside it with ``../``."""
    for a in args:
        value = a.partition("=")[2] if a.startswith("-") or "=" in a else a
        if value.startswith("../") or "/../" in value or a.startswith("../"):
            raise AssertionError(f"{a}: a path outside the repository (a user's clone has nothing beside it)")


def check_cli(module_name: str, args: list[str]) -> None:
    module = import_cli(module_name)
    check_paths_inside_clone(args)
    try:
        with parser_errors_raise():
            ns = module.build_parser().parse_args(args)
    except ParseError as e:
        raise AssertionError(str(e)) from e
    except SystemExit as e:  # --help / --version
        if e.code not in (0, None):
            raise AssertionError(f"{module_name}: exit {e.code}") from e
        return
    if module_name == "bltjax.train":
        check_train_config(ns)


def check_shell_command(words: list[str], scripts: dict[str, str]) -> Optional[str]:
    """Check one simple command; return what was checked (None: not a bltjax command)."""
    prog = words[0]
    if prog in PYTHONS and len(words) >= 3 and words[1] == "-m" and words[2].startswith("bltjax"):
        check_cli(words[2], words[3:])
        return words[2]
    if prog.startswith("bltjax-"):
        if prog not in scripts:
            raise AssertionError(f"{prog} is not a console script in setup.cfg [options.entry_points]")
        check_cli(scripts[prog], words[1:])
        return scripts[prog]
    script = words[1] if prog in PYTHONS | {"bash", "sh"} and len(words) > 1 else prog
    if script.endswith((".py", ".sh")) and not script.startswith(("-", "/", "~")):
        if not (ROOT / script).is_file():
            raise AssertionError(f"{script}: no such file in the repository")
        return script
    return None


def resolve_dotted(dotted: str) -> None:
    """Import ``bltjax.a.b.c`` as far as modules go, then getattr the rest."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        name = ".".join(parts[:i + 1])
        if _find_spec(name):
            obj = importlib.import_module(name)
            continue
        raise AssertionError(f"{dotted}: {'.'.join(parts[:i])} has no attribute {part!r}")


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_python_block(block: Snippet) -> list[str]:
    try:
        tree = ast.parse(block.text)
    except SyntaxError as e:
        raise AssertionError(f"{block.file.relative_to(ROOT)}:{block.line + (e.lineno or 1) - 1}: "
                             f"python block does not parse: {e.msg}") from e
    aliases: dict[str, str] = {}  # local name -> dotted bltjax path
    checked = []

    def check(dotted: str, lineno: int) -> None:
        try:
            resolve_dotted(dotted)
        except (AssertionError, ImportError) as e:
            raise AssertionError(f"{block.file.relative_to(ROOT)}:{block.line + lineno - 1}: {e}") from e
        checked.append(dotted)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "bltjax":
                    check(a.name, node.lineno)
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases["bltjax"] = "bltjax"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bltjax":
            for a in node.names:
                if a.name == "*":
                    check(node.module, node.lineno)
                    continue
                check(f"{node.module}.{a.name}", node.lineno)
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):  # attribute chains on imported modules: bltjax.eval.evaluate_paths
        if isinstance(node, ast.Attribute):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                root = aliases[base.id]
                if _find_spec(root):  # a module: check the attribute chain (not attributes of values)
                    check(".".join([root, *reversed(chain)]), node.lineno)
    return checked


# ====================================================================== collection
def collect() -> tuple[list[Snippet], list[Snippet], list[Snippet]]:
    commands, pythons, prose = [], [], []
    for path in DOC_FILES:
        blocks = fenced_blocks(path)
        for b in blocks:
            if b.lang in ("bash", "sh", "shell", "console"):
                commands.extend(shell_commands(b))
            elif b.lang in ("python", "py"):
                pythons.append(b)
        in_block = False
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith("```"):
                in_block = not in_block
            elif not in_block:
                for m in INLINE_MODULE.finditer(line):
                    prose.append(Snippet(path, i, "inline", m.group(1)))
    return commands, pythons, prose


COMMANDS, PYTHON_BLOCKS, INLINE = collect()


@pytest.fixture(scope="module")
def scripts():
    return console_scripts()


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_shell_command(cmd: Snippet, scripts, monkeypatch):
    monkeypatch.chdir(ROOT)  # --config experiments/... is relative to the repository root
    problem = None
    try:
        for words in split_command(cmd.text):
            check_shell_command(words, scripts)
    except (AssertionError, ValueError, ImportError) as e:
        problem = f"{cmd.where}: {cmd.text}\n  -> {e}"
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block(block: Snippet):
    problem = None
    try:
        check_python_block(block)
    except AssertionError as e:
        problem = f"{e}\n--- block at {block.where} ---\n{block.text}"
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.mark.parametrize("mention", INLINE, ids=[m.where for m in INLINE])
def test_inline_module_mention(mention: Snippet):
    problem = None
    try:
        import_cli(mention.text)
    except AssertionError as e:
        problem = f"{mention.where}: `python -m {mention.text}` -> {e}"
    if problem:
        pytest.fail(problem, pytrace=False)


# ====================================================================== the checker itself
def console_script_problems(scripts: dict[str, str]) -> list[str]:
    problems = []
    for name, module in sorted(scripts.items()):
        try:
            import_cli(module)
        except AssertionError as e:
            problems.append(f"setup.cfg console script {name} -> {e}")
    return problems


def test_console_scripts_run_live_commands(scripts):
    """Every bltjax-* console script runs an existing, non-deprecated module with a build_parser()."""
    assert console_script_problems(scripts) == []
    assert console_script_problems({"bltjax-old": "bltjax.patching", "bltjax-gone": "bltjax.generate"}) == [
        "setup.cfg console script bltjax-gone -> no module bltjax.generate",
        "setup.cfg console script bltjax-old -> bltjax.patching is deprecated: " + (
            importlib.import_module("bltjax.patching").__doc__.strip().splitlines()[0])]


def test_checker_catches_stale_commands(scripts, monkeypatch):
    """Negative controls: each kind of drift is reported (so the checks above can fail)."""
    monkeypatch.chdir(ROOT)
    bad = {
        "python -m bltjax.nonexistent --x 1": "no module",
        "python -m bltjax.patching calibrate --entropy-model X --data Y": "deprecated",
        "python -m bltjax.generation --checkpoint X --prompt hi --tempreature 1": "unrecognized arguments",
        "python -m bltjax.train --set optim.lrr=1e-3": "optim.lrr",
        "python -m bltjax.train --set optim.lr=fast": "optim.lr",
        "python -m bltjax.train --set model.patcher.thresh=<calibrated>": "unknown config key",
        "python -m bltjax.train --set data.pathx=PATH": "unknown config key",
        "python -m bltjax.train --config experiments/no_such_experiment.py": "cannot load",
        "python -m bltjax.train --config experiments/blt_paper.py:3t": "cannot load",
        "python benchmarks/no_such_benchmark.py": "no such file",
        "python -m bltjax.eval --checkpoint c --data ../shared/corpora/x.txt": "outside the repository",
        "python -m bltjax.train --set data.path=../shared/x.txt": "outside the repository",
    }
    for text, expected in bad.items():
        with pytest.raises(AssertionError, match=re.escape(expected)):
            for words in split_command(text):
                check_shell_command(words, scripts)
    good = ("python -m bltjax.train --config experiments/tiny_shakespeare.py --workdir runs/ts "
            "--set optim.lr=2e-3 --set model.patcher.threshold=<calibrated> --set data.path=PATH --process-id $RANK")
    assert check_shell_command(split_command(good)[0], scripts) == "bltjax.train"
    assert check_shell_command(["pip", "install", "-e", ".[test]"], scripts) is None


def test_shell_splitting():
    block = Snippet(ROOT / "README.md", 10, "bash",
                    "# comment\nFOO=1 python -m bltjax.generation --checkpoint d \\\n"
                    "    --prompt $'ROMEO:\\n' --stop '\\n\\n'  # trailing\ncd x && bltjax-train --workdir $W")
    cmds = shell_commands(block)
    assert [c.line for c in cmds] == [11, 13]
    assert split_command(cmds[0].text) == [["python", "-m", "bltjax.generation", "--checkpoint", "d",
                                            "--prompt", "ROMEO:\n", "--stop", "\\n\\n"]]
    assert split_command(cmds[1].text) == [["cd", "x"], ["bltjax-train", "--workdir", "0"]]


def test_python_block_checker():
    ok = Snippet(ROOT / "README.md", 1, "python",
                 "import bltjax\nfrom bltjax.workdir import load_run\nbltjax.eval.evaluate_paths\n")
    assert "bltjax.eval.evaluate_paths" in check_python_block(ok)
    for text, expected in (("from bltjax.train import load_run_typo\n", "load_run_typo"),
                           ("import bltjax\nbltjax.generation.no_such_name()\n", "no_such_name"),
                           ("def f(:\n", "does not parse")):
        with pytest.raises(AssertionError, match=expected):
            check_python_block(Snippet(ROOT / "README.md", 1, "python", text))
