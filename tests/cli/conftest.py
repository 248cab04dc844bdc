"""The ``autostop`` CLI against the local runtime: one control plane for the package, the CLI run in-process.

moto's in-process mock and its server share one state, so a :class:`click.testing.CliRunner` in this process
sees what the control plane's executions did. The deployment is found as on AWS from a
``cdk deploy --outputs-file`` file, written by :meth:`LocalControlPlane.write_outputs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from autostop_cli.main import cli
from local.runtime import LocalControlPlane


@dataclass
class Cli:
    """Runs ``autostop --outputs <file> ARGS`` in this process."""

    cp: LocalControlPlane
    outputs: Path

    def __call__(self, *args: str, code: int | None = 0) -> Result:
        result = CliRunner().invoke(cli, ["--outputs", str(self.outputs), *args], catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture(scope="package")
def cp() -> Iterator[LocalControlPlane]:
    with LocalControlPlane() as plane:
        yield plane


@pytest.fixture(scope="package")
def outputs(cp: LocalControlPlane) -> Path:
    return cp.write_outputs(cp.workdir / "outputs.json")


@pytest.fixture()
def autostop(cp: LocalControlPlane, outputs: Path) -> Cli:
    return Cli(cp, outputs)
