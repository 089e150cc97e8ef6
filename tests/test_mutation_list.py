"""The mutation list of tools/mutation_check.py still matches the sources (cheap; the check itself is
slow and run by hand): every snippet occurs exactly once, so a refactor cannot turn a mutation into a
silent no-op."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("mutation_check", REPO / "tools" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_snippet_exists_exactly_once():
    tool = _tool()
    assert tool.check_snippets(REPO) == []
    assert len(tool.MUTATIONS) >= 15


def test_a_missing_snippet_is_an_error_not_a_no_op(tmp_path):
    tool = _tool()
    m = tool.MUTATIONS[0]
    (tmp_path / m.file).parent.mkdir(parents=True)
    (tmp_path / m.file).write_text("nothing to see here\n")
    with pytest.raises(tool.SnippetError, match="found 0 times"):
        tool.apply(tmp_path, m)
    assert f"{m.name}: snippet found 0 times in {m.file}" in tool.check_snippets(tmp_path, [m])
    (tmp_path / m.file).write_text(m.old + "\n" + m.old + "\n")
    with pytest.raises(tool.SnippetError, match="found 2 times"):
        tool.apply(tmp_path, m)
    (tmp_path / m.file).write_text("a\n" + m.old + "\nb\n")
    tool.apply(tmp_path, m)
    assert (tmp_path / m.file).read_text() == "a\n" + m.new + "\nb\n"
