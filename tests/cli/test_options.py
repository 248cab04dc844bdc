"""The shared options: before or after the command name, from the environment, never overriding a typed value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from autostop_cli.main import cli
from autostop_cli.target import AwsContext, pass_aws, target_options
from tests.cli.conftest import Cli


@click.group()
@target_options
def group() -> None:
    pass


@group.command()
@target_options
@pass_aws
def show(aws: AwsContext) -> None:
    click.echo(f"{aws.stack}|{aws.outputs}|{aws.region}|{aws.profile}|{aws.endpoint_url}")


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_options_before_and_after_the_command() -> None:
    assert run("--region", "eu-west-1", "--stack", "S", "show") == "S|None|eu-west-1|None|None"
    assert run("show", "--region", "eu-west-1", "--profile", "p") == "None|None|eu-west-1|p|None"
    assert run("--region", "eu-west-1", "show", "--region", "us-west-2").split("|")[2] == "us-west-2"


def test_environment_values_and_precedence() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AUTOSTOP_STACK": "FromEnv"}
    assert run("show", env=env) == "FromEnv|None|None|None|http://127.0.0.1:5000"
    assert run("--stack", "Typed", "show", env=env).startswith("Typed|")  # the subcommand's env value does not override


def test_every_command_is_registered() -> None:
    assert {"tag", "explain", "status", "retry", "report"} <= set(cli.commands)
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "--outputs" in result.stdout and "--endpoint-url" in result.stdout


def test_aws_errors_are_one_line_and_exit_1(autostop: Cli) -> None:
    result = autostop("status", "--endpoint-url", "http://127.0.0.1:9", code=1)  # nothing listens there
    assert result.stderr.startswith("Error: AWS error: Could not connect") and "Traceback" not in result.stderr


def test_a_broken_aws_profile_or_aws_region_alone_gives_a_clear_answer_not_a_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "autostop"
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    out = subprocess.run([str(exe), "--help"], env={**base, "AWS_PROFILE": "nope"}, capture_output=True, text=True)
    assert out.returncode == 0 and "Traceback" not in out.stderr and "preflight" in out.stdout, out.stderr[-400:]
    out = subprocess.run([str(exe), "status", "x"], env={**base, "AWS_REGION": "eu-west-1"}, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-400:]
    assert "no AWS region" not in out.stderr and "credentials" in out.stderr  # AWS_REGION counts as the region
