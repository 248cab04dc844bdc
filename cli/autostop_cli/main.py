"""The ``autostop`` command group (console script ``autostop``)."""

from __future__ import annotations

import os
from typing import Any

# The CLI reuses the Lambdas' shared modules: it wants none of their X-Ray tracing (whose client would read the
# AWS profile at import time) and none of their metrics output.
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

import click
from botocore.exceptions import BotoCoreError, ClientError

from autostop_cli.explain import explain
from autostop_cli.report import report
from autostop_cli.retry import retry
from autostop_cli.status import status
from autostop_cli.tagging import tag
from autostop_cli.target import target_options

try:
    from autostop_cli.preflight import preflight
except ImportError:  # written separately; the CLI works without it
    preflight = None


class AwsErrorsGroup(click.Group):
    """A group whose commands report an AWS error (AccessDenied, no credentials, ...) as one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ClientError, BotoCoreError) as exc:
            raise click.ClickException(f"AWS error: {exc}") from exc


@click.group(cls=AwsErrorsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@target_options
def cli() -> None:
    """Operate autostop: tag instances, explain decisions, check instances before a run (preflight), follow runs,
    retry executions, report savings.

    The deployment is found from a stack's outputs (--stack, DescribeStacks) or a `cdk deploy --outputs-file`
    file (--outputs); these options work before or after the command name.
    """


for command in (tag, explain, status, retry, report):
    cli.add_command(command)
if preflight is not None:
    cli.add_command(preflight)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="autostop")
