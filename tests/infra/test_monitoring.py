"""The operator's view in the template: dashboard, alarms (actions to the outcome topic, which CloudWatch can use),
and the outcome events on the default bus."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from infra.constructs.monitoring import ALARMED_OUTCOMES, SWEEP_TIMEOUT_SHARE
from infra.stack import SWEEP_TIMEOUT
from lambdas.shared import constants as c
from tests.infra.conftest import Synthesized

ALARMS = ("ExecutionsFailed", "FailedOutcomes", "UndeliveredEvents", "FunctionErrors", "SweepNearTimeout")


def one(raw: dict[str, Any], cfn_type: str, contains: str = "") -> tuple[str, dict[str, Any]]:
    (found,) = [(k, v) for k, v in raw["Resources"].items() if v["Type"] == cfn_type and contains in k]
    return found


def text_of(value: Any) -> str:
    """A Fn::Join's literal parts joined (references become ``<ref>``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(text_of(p) for p in parts)
    return "<ref>"


@pytest.fixture(scope="module")
def alarms(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    found = {k: v["Properties"] for k, v in synthesized.raw["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    return {name: next(p for k, p in found.items() if k.startswith(f"Monitoring{name}")) for name in ALARMS if len(found) == len(ALARMS)}


def test_five_alarms_each_acting_on_the_outcome_topic(synthesized: Synthesized, alarms: dict[str, dict[str, Any]]) -> None:
    topic, _ = one(synthesized.raw, "AWS::SNS::Topic")
    assert sorted(alarms) == sorted(ALARMS)
    for name, props in alarms.items():
        assert props["AlarmActions"] == props["OKActions"] == [{"Ref": topic}], name
        assert props["TreatMissingData"] == "notBreaching" and props["AlarmDescription"].startswith("autostop: ")


def test_the_failed_outcomes_alarm_watches_every_failed_outcome(alarms: dict[str, dict[str, Any]]) -> None:
    queries = alarms["FailedOutcomes"]["Metrics"]
    watched = {
        {d["Name"]: d["Value"] for d in q["MetricStat"]["Metric"]["Dimensions"]}["outcome"]
        for q in queries
        if "MetricStat" in q and q["MetricStat"]["Metric"]["MetricName"] == "Outcomes"
    }
    assert watched == set(ALARMED_OUTCOMES) == set(c.FAILED_OUTCOMES)
    (expression,) = [q for q in queries if "Expression" in q]
    assert expression["Expression"].count("FILL(") == len(c.FAILED_OUTCOMES)


def test_the_sweep_alarm_fires_before_its_timeout(synthesized: Synthesized, alarms: dict[str, dict[str, Any]]) -> None:
    props = alarms["SweepNearTimeout"]
    assert props["MetricName"] == "Duration" and props["Statistic"] == "Maximum"
    assert props["Threshold"] == SWEEP_TIMEOUT.to_milliseconds() * SWEEP_TIMEOUT_SHARE
    sweep, fn = one(synthesized.raw, "AWS::Lambda::Function", "ScheduleSweep")
    assert fn["Properties"]["Timeout"] == SWEEP_TIMEOUT.to_seconds()
    assert props["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": sweep}}]


def test_the_dashboard_shows_outcomes_evaluations_durations_and_alarms(synthesized: Synthesized) -> None:
    _, dashboard = one(synthesized.raw, "AWS::CloudWatch::Dashboard")
    body = json.loads(text_of(dashboard["Properties"]["DashboardBody"]).replace("<ref>", "REF"))
    titles = {w["properties"].get("title") for w in body["widgets"]}
    assert {"Alarms", "Outcomes", "Outcomes by reason and trigger", "Evaluations by decision and trigger", "Executions"} <= titles
    searches = json.dumps(body)
    for metric in ("Outcomes", "Evaluations", "DecisionToVerifiedSeconds", "VerifiedToStoppedSeconds", "CheckpointBytes"):
        assert f'MetricName=\\\\\\"{metric}\\\\\\"' in searches or f'MetricName=\\"{metric}\\"' in searches, metric


def test_cloudwatch_may_use_the_topic_key_only_for_this_accounts_alarms(synthesized: Synthesized) -> None:
    key, props = one(synthesized.raw, "AWS::KMS::Key")
    assert props["Properties"]["EnableKeyRotation"] is True
    _, topic = one(synthesized.raw, "AWS::SNS::Topic")
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    (cw,) = [s for s in props["Properties"]["KeyPolicy"]["Statement"] if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert sorted(cw["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert set(cw["Condition"]) == {"StringEquals", "ArnLike"} and "aws:SourceAccount" in cw["Condition"]["StringEquals"]


def test_outcome_events_go_to_the_default_bus_with_source_autostop(synthesized: Synthesized) -> None:
    synthesized.template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": "events:PutEvents",
                                "Sid": "OutcomeEvents",
                                "Condition": {"StringEquals": {"events:source": "autostop"}},
                            }
                        )
                    ]
                )
            }
        },
    )
    record, fn = one(synthesized.raw, "AWS::Lambda::Function", "RecordOutcome")
    assert c.ENV_OUTCOME_TOPIC_ARN in fn["Properties"]["Environment"]["Variables"]
    putters = [
        k
        for k, v in synthesized.raw["Resources"].items()
        if v["Type"] == "AWS::IAM::Policy" and any(s.get("Sid") == "OutcomeEvents" for s in v["Properties"]["PolicyDocument"]["Statement"])
    ]
    assert sorted(p.split("Role")[0] for p in putters) == ["FunctionsMarkerCreated", "FunctionsRecordOutcome", "FunctionsScheduleSweep"]
    assert record


def test_tracing_follows_cdk_json_and_off_keeps_xray_out_of_cold_starts(synthesized: Synthesized) -> None:
    import subprocess
    import sys

    from local.deploy import synthesize
    from tests.infra.test_stack import REPO

    def tracing(raw: dict[str, Any]) -> tuple[set[Any], set[Any], Any]:
        fns = [
            r["Properties"] for r in raw["Resources"].values() if r["Type"] == "AWS::Lambda::Function" and "Environment" in r["Properties"]
        ]
        (sm,) = [r["Properties"] for r in raw["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
        modes = {f.get("TracingConfig", {}).get("Mode") for f in fns}
        return modes, {f["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] for f in fns}, sm["TracingConfiguration"]

    # the default: the state machine and every invocation traced by X-Ray, no X-Ray SDK in the functions
    assert tracing(synthesized.raw) == ({"Active"}, {"true"}, {"Enabled": True})
    calls = synthesize({"trace_aws_calls": "true"}, use_cache=False)  # plus a subsegment per AWS call
    assert tracing(calls) == ({"Active"}, {"false"}, {"Enabled": True})
    assert tracing(synthesize({"tracing": "false"}, use_cache=False)) == ({None}, {"true"}, {"Enabled": False})
    # and a handler imported with POWERTOOLS_TRACE_DISABLED never loads the X-Ray SDK (about 0.1-0.2x of import boto3)
    probe = "import sys, record_outcome.handler; print(any(m.startswith('aws_xray_sdk') for m in sys.modules))"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "lambdas"), "POWERTOOLS_SERVICE_NAME": "autostop"}
    for disabled, loaded in (("true", "False"), ("false", "True")):
        out = subprocess.run(
            [sys.executable, "-c", probe], env={**env, "POWERTOOLS_TRACE_DISABLED": disabled}, capture_output=True, text=True
        )
        assert out.stdout.strip() == loaded, out.stderr[-500:]
