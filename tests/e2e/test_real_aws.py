"""Checks that only real AWS can answer. Marker-gated: run with ``pytest -m aws`` and credentials;
skipped otherwise. They create nothing: they validate the synthesized template and state machine."""

from __future__ import annotations

import json
import os

import boto3
import pytest

pytestmark = pytest.mark.aws


def _credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") == "testing":
        return False
    return boto3.Session().get_credentials() is not None


@pytest.fixture(scope="module")
def template() -> dict:
    if not _credentials():
        pytest.skip("needs real AWS credentials (tests run with fake ones)")
    from local.deploy import synthesize

    return synthesize()


def test_state_machine_definition_is_valid_on_step_functions(template: dict) -> None:
    from local.deploy import Resolver, _names

    physical, arns = _names(template)
    sm = next(r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine")
    definition = Resolver(template, physical, arns)(sm["Properties"]["DefinitionString"])
    result = boto3.client("stepfunctions").validate_state_machine_definition(definition=definition, type="STANDARD")
    assert result["result"] == "OK", result["diagnostics"]


def test_template_is_valid_for_cloudformation(template: dict) -> None:
    body = json.dumps(template)
    if len(body) > 51200:
        pytest.skip("template larger than ValidateTemplate's inline limit; deploy with `npx cdk deploy`")
    boto3.client("cloudformation").validate_template(TemplateBody=body)
