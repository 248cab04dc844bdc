"""Which deployment the CLI talks to, and the boto3 Session it talks through.

A deployment (:class:`Target`) is found from the stack's outputs, either read with CloudFormation
DescribeStacks (``--stack NAME``, default ``Autostop``) or from a file in the format
``cdk deploy --outputs-file`` writes (``--outputs FILE``: ``{"StackName": {"OutputKey": "value"}}``).
Its :class:`~shared.settings.Settings` come from the environment of one of the stack's functions
(Lambda GetFunctionConfiguration), so the CLI reads tags exactly as the Lambdas do.

Commands get an :class:`AwsContext` (the Session, the endpoint and the lazily resolved target) with::

    @click.command()
    @target_options
    @pass_aws
    def status(aws: AwsContext) -> None:
        target = aws.target           # resolves on first use; click.ClickException when it cannot
        ec2 = aws.client("ec2")       # in the target's region, through --endpoint-url if given
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import click
from botocore.exceptions import BotoCoreError, ClientError

from shared import constants as c
from shared.settings import Settings, SettingsError

DEFAULT_STACK = "Autostop"
"""The stack name infra/config.py deploys by default (``stack_name``)."""

OUTPUT_KEYS = {
    "bucket": "CheckpointBucket",
    "state_machine_arn": "StateMachineArn",
    "topic_arn": "OutcomeTopicArn",
    "probe_document": "ProbeDocument",
    "checkpoint_document": "CheckpointDocument",
    "restore_document": "RestoreDocument",
    "runs_table": "RunRecordsTable",
}
"""Target field to the CfnOutput of infra/stack.py that carries it."""


class TargetError(click.ClickException):
    """The deployment cannot be found or read (exit 1 with the message)."""


@dataclass(frozen=True)
class Target:
    """One deployed autostop stack: the names the CLI needs, from the stack's outputs.

    ``environment`` is the ``AUTOSTOP_*`` environment of ``function_name`` (one of the stack's functions),
    empty when no function could be read; then :attr:`settings` falls back to the outputs and the defaults.
    ``outputs`` holds every stack output as read.
    """

    stack_name: str
    region: str
    account: str
    state_machine_arn: str
    bucket: str
    runs_table: str
    topic_arn: str
    probe_document: str
    checkpoint_document: str
    restore_document: str
    function_name: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False, repr=False)
    outputs: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False, repr=False)
    """Every output of the stack, ``OutputKey`` to value (also those added after this class, e.g. ``PreflightDocument``)."""

    @property
    def settings(self) -> Settings:
        """The deployment's function settings (tag prefix, bucket, instance ARN prefix, defaults).

        Raises:
            TargetError: the function environment does not validate as :class:`Settings`.
        """
        base = {
            c.ENV_CHECKPOINT_BUCKET: self.bucket,
            c.ENV_INSTANCE_ARN_PREFIX: f"arn:{self.partition}:ec2:{self.region}:{self.account}:instance/",
            c.ENV_PROBE_DOCUMENT: self.probe_document,
            c.ENV_CHECKPOINT_DOCUMENT: self.checkpoint_document,
            c.ENV_RESTORE_DOCUMENT: self.restore_document,
            c.ENV_RUNS_TABLE: self.runs_table,
            c.ENV_STATE_MACHINE_ARN: self.state_machine_arn,
        }
        try:
            return Settings.from_env({**base, **dict(self.environment)})
        except SettingsError as exc:
            raise TargetError(str(exc)) from exc

    @property
    def settings_source(self) -> str:
        """Where :attr:`settings` come from, in words."""
        if self.function_name:
            return f"environment of function {self.function_name}"
        return "stack outputs and default settings (no function of the stack could be read)"

    @property
    def partition(self) -> str:
        return self.state_machine_arn.split(":")[1] if self.state_machine_arn.count(":") >= 5 else "aws"

    def console_url(self, execution_arn: str) -> str:
        """The Step Functions console page of one execution."""
        return f"https://{self.region}.console.aws.amazon.com/states/home?region={self.region}#/v2/executions/details/{execution_arn}"


# --- resolution ------------------------------------------------------------------------------------------


def read_outputs_file(path: Path, stack: str | None) -> tuple[str, dict[str, str]]:
    """``(stack name, outputs)`` from a ``cdk deploy --outputs-file`` file.

    The file maps stack names to ``{OutputKey: value}``; ``stack`` picks one, else the file must hold one stack.

    Raises:
        TargetError: unreadable file, not that shape, or no (single) matching stack.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read outputs file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise TargetError(f'{path} is not a cdk outputs file ({{"StackName": {{"OutputKey": "value"}}}})')
    if stack and stack in data:
        return stack, {str(k): str(v) for k, v in data[stack].items()}
    if len(data) == 1:
        ((name, outputs),) = data.items()
        return str(name), {str(k): str(v) for k, v in outputs.items()}
    raise TargetError(f"{path} holds the stacks {sorted(data)}; pick one with --stack")


def describe_stack_outputs(cfn: Any, stack: str) -> dict[str, str]:
    """``{OutputKey: OutputValue}`` of ``stack`` (CloudFormation DescribeStacks).

    Raises:
        TargetError: the stack does not exist or cannot be described.
    """
    try:
        stacks = [s for page in cfn.get_paginator("describe_stacks").paginate(StackName=stack) for s in page["Stacks"]]
    except (ClientError, BotoCoreError) as exc:
        raise TargetError(f"cannot describe stack {stack!r}: {exc}") from exc
    if not stacks:
        raise TargetError(f"stack {stack!r} not found")
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def _stack_function_names(cfn: Any, stack: str) -> list[str]:
    """Physical names of the stack's Lambda functions (ListStackResources); empty when CloudFormation cannot say."""
    try:
        pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack)
        return [
            r["PhysicalResourceId"]
            for page in pages
            for r in page["StackResourceSummaries"]
            if r["ResourceType"] == "AWS::Lambda::Function" and r.get("PhysicalResourceId")
        ]
    except (ClientError, BotoCoreError):
        return []


def _functions_of_bucket(lam: Any, bucket: str) -> list[str]:
    """Functions whose environment names ``bucket`` as the checkpoint bucket (ListFunctions, all pages)."""
    try:
        return [
            fn["FunctionName"]
            for page in lam.get_paginator("list_functions").paginate()
            for fn in page["Functions"]
            if (fn.get("Environment") or {}).get("Variables", {}).get(c.ENV_CHECKPOINT_BUCKET) == bucket
        ]
    except (ClientError, BotoCoreError):
        return []


def function_environment(lam: Any, names: list[str], bucket: str) -> tuple[str | None, dict[str, str]]:
    """The ``AUTOSTOP_*`` environment of the first of ``names`` that is an autostop function of ``bucket``.

    A trigger function (it carries the state machine ARN) is preferred. AWS call: GetFunctionConfiguration per name
    tried. Returns ``(None, {})`` when none can be read.
    """
    found: list[tuple[str, dict[str, str]]] = []
    for name in names:
        try:
            env = lam.get_function_configuration(FunctionName=name).get("Environment", {}).get("Variables", {})
        except (ClientError, BotoCoreError):
            continue
        if env.get(c.ENV_CHECKPOINT_BUCKET) != bucket:
            continue
        ours = {k: v for k, v in env.items() if k.startswith("AUTOSTOP_")}
        if c.ENV_STATE_MACHINE_ARN in ours:
            return name, ours
        found.append((name, ours))
    return found[0] if found else (None, {})


def resolve_target(session: boto3.Session, *, stack: str | None, outputs_file: Path | None, endpoint_url: str | None = None) -> Target:
    """Find the deployment: outputs from ``outputs_file`` if given, else DescribeStacks of ``stack``.

    Args:
        session: credentials and (optional) region; the target's region is the state machine's.
        stack: stack name (default :data:`DEFAULT_STACK`); with ``outputs_file``, picks the file's stack.
        outputs_file: a ``cdk deploy --outputs-file`` file.
        endpoint_url: one endpoint for every service (a local emulator); None uses boto3's own (AWS_ENDPOINT_URL).

    AWS calls: DescribeStacks and ListStackResources (``--stack`` only), ListFunctions (when the stack's resources
    cannot be listed), GetFunctionConfiguration.

    Raises:
        TargetError: outputs missing, stack not found, no region.
    """
    region = session.region_name
    if outputs_file is not None:
        name, outputs = read_outputs_file(outputs_file, stack)
        cfn = None
    else:
        name = stack or DEFAULT_STACK
        if not region:
            raise TargetError("no AWS region: pass --region or set AWS_REGION")
        cfn = session.client("cloudformation", region_name=region, endpoint_url=endpoint_url)
        outputs = describe_stack_outputs(cfn, name)
    missing = [key for key in OUTPUT_KEYS.values() if not outputs.get(key)]
    if missing:
        raise TargetError(f"stack {name!r} has no output {', '.join(missing)} (is it an autostop stack?)")
    values = {attr: outputs[key] for attr, key in OUTPUT_KEYS.items()}
    arn = values["state_machine_arn"].split(":")
    if len(arn) < 7 or arn[2] != "states":
        raise TargetError(f"StateMachineArn {values['state_machine_arn']!r} is not a state machine ARN")
    region, account = arn[3], arn[4]
    lam = session.client("lambda", region_name=region, endpoint_url=endpoint_url)
    names = _stack_function_names(cfn, name) if cfn is not None else []
    fn, env = function_environment(lam, names or _functions_of_bucket(lam, values["bucket"]), values["bucket"])
    return Target(stack_name=name, region=region, account=account, function_name=fn, environment=env, outputs=dict(outputs), **values)


# --- click plumbing ----------------------------------------------------------------------------------------


@dataclass
class AwsContext:
    """What every command gets: options, the Session, clients, and the target (resolved once, on first use)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    stack: str | None = None
    outputs: Path | None = None
    _session: boto3.Session | None = field(default=None, repr=False)
    _target: Target | None = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def session(self) -> boto3.Session:
        """boto3 Session of ``--profile`` and ``--region`` (boto3's own chain where not given)."""
        if self._session is None:
            try:
                # AWS_REGION is what the AWS SDKs and Lambda set; this botocore reads only AWS_DEFAULT_REGION itself
                region = self.region or os.environ.get("AWS_REGION") or None
                self._session = boto3.Session(profile_name=self.profile, region_name=region)
            except BotoCoreError as exc:
                raise TargetError(str(exc)) from exc
        return self._session

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = resolve_target(self.session, stack=self.stack, outputs_file=self.outputs, endpoint_url=self.endpoint_url)
        return self._target

    def client(self, service: str) -> Any:
        """A client of ``service`` in the target's region, through ``--endpoint-url`` if given (cached)."""
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.target.region, endpoint_url=self.endpoint_url)
        return self._clients[service]


pass_aws = click.make_pass_decorator(AwsContext, ensure=True)
"""Passes the :class:`AwsContext` as the command's first argument."""

F = TypeVar("F", bound=Callable[..., Any])


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        aws = ctx.ensure_object(AwsContext)
        typed = ctx.get_parameter_source(param.name or attr) is click.core.ParameterSource.COMMANDLINE
        if value is not None and (typed or getattr(aws, attr) is None):  # an environment value never overrides a typed one
            setattr(aws, attr, value)

    return callback


def target_options(fn: F) -> F:
    """Add ``--stack``, ``--outputs``, ``--region``, ``--profile``, ``--endpoint-url`` to a command or group.

    The values land on the shared :class:`AwsContext` (a subcommand's value overrides its group's) rather than
    in the command's arguments; use :data:`pass_aws` to receive it.
    """
    common: dict[str, Any] = {"expose_value": False}
    options = [
        click.option(
            "--stack",
            envvar="AUTOSTOP_STACK",
            callback=_store("stack"),
            help=f"Stack whose outputs to read (DescribeStacks) [default: {DEFAULT_STACK}].",
            **common,
        ),
        click.option(
            "--outputs",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar="AUTOSTOP_OUTPUTS",
            callback=_store("outputs"),
            help="Outputs file of `cdk deploy --outputs-file`, instead of DescribeStacks.",
            **common,
        ),
        click.option("--region", callback=_store("region"), help="AWS region (default: the profile's, AWS_REGION).", **common),
        click.option("--profile", callback=_store("profile"), help="AWS named profile.", **common),
        click.option(
            "--endpoint-url",
            envvar="AWS_ENDPOINT_URL",
            callback=_store("endpoint_url"),
            help="One endpoint for every AWS service (an emulator such as moto).",
            **common,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
