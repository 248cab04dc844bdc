"""The functions' code asset: ``lambdas/`` as sources plus the bytecode of the Lambda runtime's Python version.

Lambda's /var/task is read-only, so a function whose asset holds only sources compiles every module it imports at
every cold start (about 15-25 ms of a handler's import: benchmarks/imports.py). Python reads a module's
``__pycache__/<name>.cpython-3NN.pyc`` only when it was written by the same minor version (PEP 3147 cache tag and
magic number, which stay the same across a minor version's patch releases), so the bytecode is compiled by a
Python of the runtime's version found on the machine that synthesizes; without one the asset holds the sources only,
as before, and the functions compile them at each cold start.

The ``.pyc`` files are unchecked-hash ones (PEP 552): Python uses them without comparing the source's mtime, which
a zip asset does not keep exactly. Python looks for them in ``__pycache__`` beside each module since Lambda's
runtime environment sets no ``PYTHONPYCACHEPREFIX`` (AWS Lambda Developer Guide, "Defined runtime environment
variables"); tests/unit/test_asset.py shows a 3.13 interpreter running them. Nothing else here imports the CDK, so
the benchmarks build the same tree.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

SOURCE_IGNORE = ("__pycache__", "*.pyc", "requirements.txt", ".pytest_cache")
"""What of ``lambdas/`` never goes into the asset (the requirements come from the Powertools layer and the runtime)."""
ENV_ASSET_PYTHON = "AUTOSTOP_ASSET_PYTHON"
"""An interpreter to compile the asset's bytecode with (it must be of the runtime's minor version)."""
TASK_ROOT = "/var/task"
"""Where Lambda unpacks the asset: the file names compiled into the bytecode (Python's loader puts the real path in
their place), the same whatever directory the asset is staged in."""


def version_of(python: str) -> str | None:
    """``"3.13"`` for a Python 3.13 interpreter at ``python`` (a path or a command), None if it does not run."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@cache
def python_for(version: str) -> str | None:
    """A Python interpreter of ``version`` (``"3.13"``) on this machine, or None: ``$AUTOSTOP_ASSET_PYTHON``, else
    ``python3.13`` on PATH, else pyenv's ``$PYENV_ROOT/versions/3.13.*`` (pyenv's shim refuses a version that is
    not selected)."""
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [os.environ.get(ENV_ASSET_PYTHON), shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"), reverse=True)
    return next((p for p in candidates if p and version_of(p) == version), None)


def stage(source: Path, into: Path, python: str | None) -> Path:
    """Copy ``source`` to the new directory ``into`` without SOURCE_IGNORE and, with a ``python``, compile every
    module there into ``__pycache__`` (unchecked-hash, file names under TASK_ROOT). Returns ``into``.

    Raises ``subprocess.CalledProcessError`` when a module does not compile."""
    shutil.copytree(source, into, ignore=shutil.ignore_patterns(*SOURCE_IGNORE))
    if python:
        compile_all = [python, "-I", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash"]
        subprocess.run([*compile_all, "-s", str(into), "-p", TASK_ROOT, str(into)], check=True, capture_output=True)
    return into


def source_hash(source: Path) -> str:
    """SHA-256 (hex) of the asset's sources: every file's relative path and bytes, SOURCE_IGNORE left out."""
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not any(relative.match(p) or any(part == p for part in relative.parts) for p in SOURCE_IGNORE):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def staged(source: Path, version: str) -> tuple[Path, str]:
    """``source`` staged once per process (in a directory removed at exit) with the bytecode of Python ``version``
    when this machine has one; returns the directory and its asset hash (sources and the bytecode's version, or
    ``src`` for sources only), the same on every machine that compiles with the same version."""
    python = python_for(version)
    into = Path(tempfile.mkdtemp(prefix="autostop-asset-"))
    atexit.register(shutil.rmtree, into, ignore_errors=True)
    tree = stage(source, into / "lambdas", python)
    return tree, f"{source_hash(source)}-{'py' + version if python else 'src'}"
