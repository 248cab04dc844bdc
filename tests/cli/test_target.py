"""Finding the deployment: an outputs file or DescribeStacks, and the functions' settings."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from autostop_cli.target import DEFAULT_STACK, OUTPUT_KEYS, TargetError, resolve_target
from local.runtime import LocalControlPlane
from tests.cli.conftest import Cli


def test_local_outputs_mirror_the_stack_outputs(cp: LocalControlPlane, outputs: Path) -> None:
    written = json.loads(outputs.read_text())
    assert list(written) == [DEFAULT_STACK]
    assert set(written[DEFAULT_STACK]) == set(cp.deployment.template["Outputs"])
    values = written[DEFAULT_STACK]
    assert values["CheckpointBucket"] == cp.deployment.bucket
    assert values["RunRecordsTable"] == cp.deployment.table
    assert values["StateMachineArn"] == cp.deployment.state_machine_arn
    assert values["InstancePolicyArn"].startswith("arn:aws:iam::123456789012:policy/")


def test_target_from_outputs_file_reads_the_functions_settings(cp: LocalControlPlane, outputs: Path) -> None:
    target = resolve_target(boto3.Session(), stack=None, outputs_file=outputs)
    env = cp.deployment.environment
    assert (target.stack_name, target.region, target.account) == ("Autostop", "us-east-1", "123456789012")
    assert target.bucket == cp.deployment.bucket and target.runs_table == cp.deployment.table
    assert target.function_name in cp.deployment.functions.values()
    settings = target.settings
    assert settings.tag_prefix == env["AUTOSTOP_TAG_PREFIX"]
    assert settings.instance_arn_prefix == env["AUTOSTOP_INSTANCE_ARN_PREFIX"]
    assert settings.probe_document == env["AUTOSTOP_PROBE_DOCUMENT"]
    assert settings.state_machine_arn == cp.deployment.state_machine_arn
    assert "environment of function" in target.settings_source
    assert target.outputs == cp.deployment.outputs()
    url = target.console_url(f"{target.state_machine_arn.replace(':stateMachine:', ':execution:')}:x")
    assert url.startswith("https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/arn:aws:states:")


def test_target_from_describe_stacks(cp: LocalControlPlane) -> None:
    values = cp.deployment.outputs()
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in values.items()},
    }
    cfn = cp.aws.client("cloudformation")
    cfn.create_stack(StackName="AutostopCliTest", TemplateBody=json.dumps(template))
    target = resolve_target(boto3.Session(region_name="us-east-1"), stack="AutostopCliTest", outputs_file=None)
    assert target.stack_name == "AutostopCliTest"
    assert target.state_machine_arn == values[OUTPUT_KEYS["state_machine_arn"]]
    assert target.function_name is not None  # no function among the stack's resources: found by its bucket
    with pytest.raises(TargetError, match="NoSuchStack|does not exist|not found"):
        resolve_target(boto3.Session(region_name="us-east-1"), stack="NoSuchStack", outputs_file=None)


def test_outputs_file_errors(tmp_path: Path, outputs: Path) -> None:
    two = tmp_path / "two.json"
    data = json.loads(outputs.read_text())
    two.write_text(json.dumps({"A": data[DEFAULT_STACK], "B": {"CheckpointBucket": "x"}}))
    with pytest.raises(TargetError, match="pick one with --stack"):
        resolve_target(boto3.Session(), stack=None, outputs_file=two)
    assert resolve_target(boto3.Session(), stack="A", outputs_file=two).stack_name == "A"
    with pytest.raises(TargetError, match="has no output"):
        resolve_target(boto3.Session(), stack="B", outputs_file=two)
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(TargetError, match="not a cdk outputs file"):
        resolve_target(boto3.Session(), stack=None, outputs_file=bad)


def test_unreadable_target_exits_1(autostop: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = autostop("--outputs", str(bad), "status", code=1)
    assert "cannot read outputs file" in result.stderr


def test_settings_fall_back_to_outputs_and_defaults_without_a_function() -> None:
    from autostop_cli.target import Target

    target = Target(
        stack_name="S",
        region="eu-west-1",
        account="111122223333",
        state_machine_arn="arn:aws:states:eu-west-1:111122223333:stateMachine:M",
        bucket="my-bucket",
        runs_table="runs",
        topic_arn="arn:aws:sns:eu-west-1:111122223333:t",
        probe_document="P",
        checkpoint_document="C",
        restore_document="R",
    )
    settings = target.settings
    assert (settings.tag_prefix, settings.checkpoint_bucket, settings.runs_table) == ("autostop", "my-bucket", "runs")
    assert settings.instance_arn_prefix == "arn:aws:ec2:eu-west-1:111122223333:instance/"
    assert "no function" in target.settings_source
