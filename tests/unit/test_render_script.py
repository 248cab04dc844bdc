"""The documents carry the on-instance Python minified (no docstrings, comments, four-space indents): the same code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from infra.constructs.documents import (
    narrow_indents,
    render_script,
    single_quoted,
    without_comments,
    without_docstrings,
    without_standalone_imports,
)

LIB = Path(__file__).resolve().parents[2] / "infra" / "documents" / "lib"


@pytest.mark.parametrize("name", sorted(p.name for p in LIB.glob("*.py")))
def test_minified_python_is_the_same_program(name: str) -> None:
    source = (LIB / name).read_text()
    minified = single_quoted(narrow_indents(without_comments(without_docstrings(source))))

    assert ast.dump(ast.parse(minified)) == ast.dump(ast.parse(without_docstrings(source)))
    assert len(minified) < 0.8 * len(source)
    assert not any(line.lstrip().startswith("#") for line in minified.splitlines())


def test_double_quoted_strings_become_single_quoted_where_that_changes_nothing() -> None:
    source = 'a = "x" + f"{b}" + rb"c" + "it\'s" + "q\\"" + """t""" + ""\nd = {"k": "v"}["k"]\n'

    out = single_quoted(source)

    assert out == "a = 'x' + f'{b}' + rb'c' + \"it's\" + \"q\\\"\" + \"\"\"t\"\"\" + ''\nd = {'k': 'v'}['k']\n"
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(source))


def test_multi_line_strings_keep_their_lines() -> None:
    source = (
        'def f():\n    x = """a\n        b\n    c"""\n    if x:\n'
        '        return (1,\n                2)  # two\n    return f"""{x}\n  y"""\n'
    )

    out = narrow_indents(without_comments(source))

    assert out == 'def f():\n x = """a\n        b\n    c"""\n if x:\n  return (1,\n  2)\n return f"""{x}\n  y"""\n'
    namespace: dict[str, object] = {}
    exec(compile(out, "<minified>", "exec"), namespace)  # noqa: S102 - the test's own source
    assert namespace["f"]() == (1, 2)  # type: ignore[operator]


@pytest.mark.parametrize("script", ["probe.sh", "checkpoint.sh", "restore.sh", "preflight.sh"])
def test_rendered_helpers_compile(script: str) -> None:
    """The python3 program between PYHELPER's heredoc markers compiles as pasted."""
    text = render_script(script)
    body = text.split("<<'PY' || true\n", 1)[1].split("\nPY\n", 1)[0]
    compile(body, script, "exec")


def test_only_the_standalone_imports_are_dropped() -> None:
    source = (
        "import os\n"
        'if "select" not in globals():  # run on its own\n'
        "    from selection import select\n"
        "    from transfer import (\n"
        "        b64,\n"
        "    )\n"
        'if "x" not in locals():\n'
        "    y = 1\n"
        'if "z" not in globals():\n'
        "    z = 1\n"
        "else:\n"
        "    z = 2\n"
    )

    out = without_standalone_imports(source)

    assert "selection" not in out and "b64" not in out
    assert out.startswith("import os\n") and 'if "x" not in locals():' in out and "else:" in out


@pytest.mark.parametrize(
    ("script", "subcommand"),
    [("probe.sh", "probe"), ("checkpoint.sh", "checkpoint"), ("restore.sh", "restore"), ("preflight.sh", "preflight")],
)
def test_each_document_starts_its_subcommand_of_the_one_program(script: str, subcommand: str) -> None:
    """A few lines of bash start the program; every module the program imports on its own is pasted in."""
    text = render_script(script)
    bash = text.split("<<'PY' || true\n", 1)[0].splitlines() + text.split("\nPY\n", 1)[1].splitlines()
    assert bash[-1] == f'exec python3 -I -c "$PYHELPER" {subcommand}'
    assert len(bash) <= 12
    body = text.split("<<'PY' || true\n", 1)[1].split("\nPY\n", 1)[0]
    assert "not in globals()" not in body
    namespace: dict[str, object] = {"__name__": "document"}
    exec(compile(body, script, "exec"), namespace)  # noqa: S102 - the document's own program, not run (__name__)
    assert callable(namespace[f"main_{subcommand}"]) and callable(namespace["run"])
