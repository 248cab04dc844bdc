"""The functions' asset (infra/asset.py): lambdas/ as sources plus the bytecode of the runtime's Python version."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.asset import python_for, source_hash, stage
from infra.config import LAMBDA_PYTHON

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"
RUNTIME = LAMBDA_PYTHON.removeprefix("python")
"""The functions' runtime (tests/infra/test_stack.py checks every function's Runtime is LAMBDA_PYTHON)."""


def test_sources_only_without_an_interpreter(tmp_path: Path) -> None:
    tree = stage(LAMBDAS, tmp_path / "lambdas", None)
    assert (tree / "shared" / "models.py").read_bytes() == (LAMBDAS / "shared" / "models.py").read_bytes()
    assert not list(tree.rglob("*.pyc")) and not list(tree.rglob("__pycache__"))
    assert not (tree / "requirements.txt").exists()


def test_the_hash_follows_the_sources_and_ignores_bytecode(tmp_path: Path) -> None:
    tree = stage(LAMBDAS, tmp_path / "lambdas", None)
    before = source_hash(tree)
    (tree / "shared" / "__pycache__").mkdir()
    (tree / "shared" / "__pycache__" / "models.cpython-313.pyc").write_bytes(b"stale")
    assert source_hash(tree) == before
    (tree / "shared" / "constants.py").write_text("X = 1\n")
    assert source_hash(tree) != before


def test_a_runtime_interpreter_uses_the_bytecode_without_reading_the_source(tmp_path: Path) -> None:
    python = python_for(RUNTIME)
    if python is None:
        pytest.skip(f"no Python {RUNTIME} on this machine: the asset holds sources only (its annotation says so)")
    tree = stage(LAMBDAS, tmp_path / "lambdas", python)
    sources = sorted(tree.rglob("*.py"))
    compiled = {p.parent.parent / (p.name.split(".")[0] + ".py") for p in tree.rglob(f"*.cpython-{RUNTIME.replace('.', '')}.pyc")}
    assert compiled == set(sources)
    # A source changed after the build: the runtime's Python still runs the bytecode (unchecked-hash, PEP 552), which
    # proves it reads it at all.
    (tree / "shared" / "constants.py").write_text("raise SystemExit('source compiled')\n")
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import shared.constants as c; print(c.DEFAULT_TAG_PREFIX)"
    out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "autostop", out.stderr


def test_the_bytecode_is_the_same_whatever_the_staging_directory(tmp_path: Path) -> None:
    python = python_for(RUNTIME)
    if python is None:
        pytest.skip(f"no Python {RUNTIME} on this machine")
    one, two = stage(LAMBDAS, tmp_path / "a" / "lambdas", python), stage(LAMBDAS, tmp_path / "bb" / "lambdas", python)
    pyc = "shared/__pycache__/constants.cpython-" + RUNTIME.replace(".", "") + ".pyc"
    assert (one / pyc).read_bytes() == (two / pyc).read_bytes()
