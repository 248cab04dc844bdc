"""Invariants of the synthesized Autostop stack: least privilege, safe SSM documents, a state machine that
stops only after a verified checkpoint, live triggers, a locked-down bucket, and the cdk-nag / cfn-lint /
CDK CLI gates.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Capture, Match

from infra.config import LAMBDA_ARCH, LAMBDA_PYTHON, POWERTOOLS_VERSION, AutostopConfig, ConfigError
from infra.nag import PACKS as NAG_PACKS
from lambdas.shared import constants as c
from tests import events

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONTEXT: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]
TAG_PREFIX: str = CONTEXT["tag_prefix"]
OPT_IN = {"StringEqualsIgnoreCase": {f"aws:ResourceTag/{TAG_PREFIX}:{c.TAG_ENABLED}": "true"}}
INSTANCES = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*"
TASK_HANDLERS = (
    "evaluate_completion",
    "verify_checkpoint",
    "stop_instance",
    "confirm_resume",
    "record_outcome",
    "find_command",
    "send_command",
)
"""Functions of the state machine's Task states."""
TOKEN_HANDLERS = ("send_command", "stop_instance", "on_status_event", "on_schedule_tick")
"""Functions that complete the state machine's task tokens (shared/waiters.py)."""
TRIGGER_HANDLERS = ("on_schedule_tick", "on_object_created", "on_instance_event")
OBSERVER_HANDLERS = ("on_execution_ended", "on_status_event")
"""Functions that react to the state machine's own events (Step Functions Execution Status Change) and to the
events its waits end on (command status, instance stopped)."""
HANDLERS = TASK_HANDLERS + TRIGGER_HANDLERS + OBSERVER_HANDLERS
CDK_NOTIFICATIONS_HANDLER = "BucketNotificationsHandler"
"""Logical-id prefix of CDK's own singleton function behind Custom::S3BucketNotifications."""

ACCOUNT, REGION = "123456789012", "eu-west-1"


# --- template helpers ---------------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def flat(node: Any) -> str:
    """An intrinsic as readable text: ``Ref X`` -> ``${X}``, ``GetAtt X.Arn`` -> ``${X.Arn}``, Join -> concatenation."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key == "Ref":
            return "${%s}" % value
        if key == "Fn::GetAtt":
            return "${%s}" % (".".join(value) if isinstance(value, list) else value)
        if key == "Fn::Join":
            return value[0].join(flat(part) for part in value[1])
    return json.dumps(node, sort_keys=True)


def of_type(raw: dict[str, Any], cfn_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in raw["Resources"].items() if v["Type"] == cfn_type}


def ref(node: Any) -> str:
    """The logical id in ``{"Ref": X}`` or ``{"Fn::GetAtt": [X, ...]}``."""
    assert isinstance(node, dict) and len(node) == 1, node
    ((key, value),) = node.items()
    assert key in ("Ref", "Fn::GetAtt"), node
    return value if key == "Ref" else value[0]


def allows(actions: list[str], action: str) -> bool:
    """True when one of the statement's action patterns (``s3:*``, ``ec2:Stop*``, ``*``) covers ``action``."""
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in actions)


@dataclass(frozen=True)
class Statement:
    policy: str
    roles: tuple[str, ...]
    effect: str
    actions: tuple[str, ...]
    """Lower-cased (IAM action names are case-insensitive; CDK's aws-sdk tasks emit ``ssm:sendCommand``)."""
    resources: tuple[str, ...]
    """Rendered with :func:`flat`."""
    condition: dict[str, Any] | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Model:
    raw: dict[str, Any]
    functions: dict[str, str]
    """Handler package -> function logical id (the stack's own five functions)."""
    roles: dict[str, str]
    """Handler package -> role logical id."""
    state_machine: str
    state_machine_role: str
    bucket: str
    documents: dict[str, str]
    """``probe`` / ``checkpoint`` / ``restore`` -> SSM document logical id."""
    statements: tuple[Statement, ...]

    def of_role(self, role: str) -> list[Statement]:
        return [s for s in self.statements if role in s.roles]

    def doc_arn(self, which: str) -> str:
        return "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:document/${%s}" % self.documents[which]

    @property
    def bucket_objects(self) -> str:
        return "${%s.Arn}/*" % self.bucket


def _statements(raw: dict[str, Any]) -> Iterator[Statement]:
    docs: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
    for logical, res in raw["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs.append((logical, tuple(ref(r) for r in props.get("Roles", [])), props["PolicyDocument"]))
        elif res["Type"] == "AWS::IAM::Role":
            docs.extend((logical, (logical,), p["PolicyDocument"]) for p in props.get("Policies", []))
    for logical, roles, doc in docs:
        for st in doc["Statement"]:
            assert "NotAction" not in st and "NotResource" not in st, f"{logical}: NotAction/NotResource in {st}"
            yield Statement(
                policy=logical,
                roles=roles,
                effect=st["Effect"],
                actions=tuple(a.lower() for a in as_list(st["Action"])),
                resources=tuple(flat(r) for r in as_list(st["Resource"])),
                condition=st.get("Condition"),
                raw=st,
            )


@pytest.fixture(scope="module")
def model(synthesized: Any) -> Model:
    return build_model(synthesized.raw)


def build_model(raw: dict[str, Any]) -> Model:
    functions: dict[str, str] = {}
    roles: dict[str, str] = {}
    env: dict[str, Any] = {}
    for logical, res in of_type(raw, "AWS::Lambda::Function").items():
        if logical.startswith(CDK_NOTIFICATIONS_HANDLER):
            continue
        package = res["Properties"]["Handler"].split(".", 1)[0]
        assert package not in functions, f"two functions run {package}"
        functions[package] = logical
        roles[package] = ref(res["Properties"]["Role"])
        env = res["Properties"]["Environment"]["Variables"]
    ((machine, props),) = ((k, v["Properties"]) for k, v in of_type(raw, "AWS::StepFunctions::StateMachine").items())
    return Model(
        raw=raw,
        functions=functions,
        roles=roles,
        state_machine=machine,
        state_machine_role=ref(props["RoleArn"]),
        bucket=ref(env[c.ENV_CHECKPOINT_BUCKET]),
        documents={
            "probe": ref(env[c.ENV_PROBE_DOCUMENT]),
            "checkpoint": ref(env[c.ENV_CHECKPOINT_DOCUMENT]),
            "restore": ref(env[c.ENV_RESTORE_DOCUMENT]),
        },
        statements=tuple(_statements(raw)),
    )


# --- IAM ----------------------------------------------------------------------------------------------


def test_stack_has_the_expected_functions_and_one_state_machine(synthesized: Any, model: Model) -> None:
    assert sorted(model.functions) == sorted(HANDLERS)
    synthesized.template.resource_count_is("AWS::Lambda::Function", len(HANDLERS) + 1)  # + CDK's notifications handler
    synthesized.template.resource_count_is("AWS::StepFunctions::StateMachine", 1)


def test_every_function_and_the_state_machine_have_their_own_role(model: Model) -> None:
    roles = of_type(model.raw, "AWS::IAM::Role")
    function_roles = list(model.roles.values())
    assert len(set(function_roles)) == len(HANDLERS), f"roles shared between functions: {model.roles}"
    assert model.state_machine_role not in function_roles
    every_function_role = [ref(f["Properties"]["Role"]) for f in of_type(model.raw, "AWS::Lambda::Function").values()]
    for role in function_roles:
        assert every_function_role.count(role) == 1, f"{role} is used by more than one function"
        principals = [st["Principal"] for st in roles[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]]
        assert principals == [{"Service": "lambda.amazonaws.com"}]
        # Logs are written through the log group grant; no AWS managed policy (e.g. AWSLambdaBasicExecutionRole).
        assert "ManagedPolicyArns" not in roles[role]["Properties"]
    sm_trust = roles[model.state_machine_role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [st["Principal"] for st in sm_trust] == [{"Service": "states.amazonaws.com"}]
    assert "ManagedPolicyArns" not in roles[model.state_machine_role]["Properties"]


@pytest.mark.parametrize("action", ["ec2:StopInstances", "ec2:TerminateInstances", "ssm:SendCommand"])
def test_actions_on_instances_require_the_opt_in_tag(model: Model, action: str) -> None:
    hits = [s for s in model.statements if s.effect == "Allow" and allows(list(s.actions), action)]
    on_instances = [s for s in hits if any(":instance/" in r or r == "*" for r in s.resources)]
    assert on_instances, f"no statement allows {action} on instances (the test would be vacuous)"
    for s in on_instances:
        assert s.resources == (INSTANCES,), f"{s.policy}: {action} on {s.resources} (expected exactly {INSTANCES})"
        assert s.condition == OPT_IN, f"{s.policy}: {action} on instances without the opt-in condition: {s.raw}"
    if action == "ssm:SendCommand":
        # the three evaluating functions (probe) and Send command (checkpoint and restore commands)
        expected = {model.roles[h] for h in ("evaluate_completion", "on_schedule_tick", "on_object_created", "send_command")}
        assert {r for s in on_instances for r in s.roles} == expected
    else:
        assert [s.roles for s in on_instances] == [(model.roles["stop_instance"],)]


def test_send_command_reaches_only_the_stacks_documents(model: Model) -> None:
    send = [s for s in model.statements if s.effect == "Allow" and allows(list(s.actions), "ssm:SendCommand")]
    assert send
    documents_by_role: dict[str, set[str]] = {}
    for s in send:
        assert "*" not in s.resources, f"{s.policy}: SendCommand on Resource '*'"
        assert not any(r.endswith("document/*") for r in s.resources), f"{s.policy}: SendCommand on every document"
        assert s.actions == ("ssm:sendcommand",), f"{s.policy}: SendCommand shares a statement with {s.actions}"
        for r in s.resources:
            if r == INSTANCES:
                continue
            assert r in (model.doc_arn("probe"), model.doc_arn("checkpoint"), model.doc_arn("restore")), f"{s.policy}: SendCommand on {r}"
            for role in s.roles:
                documents_by_role.setdefault(role, set()).add(r)
    probe_users = {model.roles[h] for h in ("evaluate_completion", "on_schedule_tick", "on_object_created")}
    assert documents_by_role == {
        **{role: {model.doc_arn("probe")} for role in probe_users},
        model.roles["send_command"]: {model.doc_arn("checkpoint"), model.doc_arn("restore")},
    }


def test_stop_and_terminate_only_in_the_stop_instance_role(model: Model) -> None:
    for action in ("ec2:StopInstances", "ec2:TerminateInstances"):
        holders = {role for s in model.statements if s.effect == "Allow" and allows(list(s.actions), action) for role in s.roles}
        assert holders == {model.roles["stop_instance"]}, f"{action} granted to {holders}"


def test_state_machine_role_cannot_stop_or_terminate(model: Model) -> None:
    statements = model.of_role(model.state_machine_role)
    assert statements
    for s in statements:
        for a in s.actions:
            assert not a.startswith(("ec2:stop", "ec2:terminate")), f"state machine role has {a}"
        for action in ("ec2:StopInstances", "ec2:TerminateInstances", "ec2:ModifyInstanceAttribute"):
            assert not allows(list(s.actions), action), f"state machine role can {action} via {s.actions}"


def test_function_roles_only_read_objects_of_the_checkpoint_bucket(model: Model) -> None:
    readers = set()
    for package, role in model.roles.items():
        for s in model.of_role(role):
            s3_actions = [a for a in s.actions if a.startswith("s3:") or a == "*"]
            if not s3_actions:
                continue
            for forbidden in ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutBucketPolicy", "s3:PutObjectAcl"):
                assert not allows(list(s.actions), forbidden), f"{package}: {forbidden} via {s.actions}"
            if s.resources == (model.bucket_objects,):
                # GetObject for every reader; GetObjectVersion (reads of the exact versions the instance wrote)
                # for Verify only.
                allowed = {("s3:getobject",)} | ({("s3:getobjectversion",)} if package == "verify_checkpoint" else set())
                assert s.actions in allowed, f"{package}: {s.actions} on the checkpoint objects"
                readers.add(package)
            else:
                # The only other shape: s3:ListBucket on the bucket itself (so a missing key reads as 404).
                assert s.actions == ("s3:listbucket",) and s.resources == ("${%s.Arn}" % model.bucket,), (
                    f"{package}: {s.actions} on {s.resources}"
                )
    assert readers == {"evaluate_completion", "verify_checkpoint", "on_schedule_tick", "on_object_created"}
    assert not [s for s in model.of_role(model.state_machine_role) if any(a.startswith("s3:") for a in s.actions)]


def test_marker_readers_can_tell_a_missing_key_from_a_forbidden_one(model: Model) -> None:
    bucket_arn = "${%s.Arn}" % model.bucket
    for package in ("evaluate_completion", "verify_checkpoint", "on_schedule_tick", "on_object_created"):
        assert any(allows(list(s.actions), "s3:ListBucket") and bucket_arn in s.resources for s in model.of_role(model.roles[package])), (
            f"{package} has no s3:ListBucket on the checkpoint bucket"
        )


def test_instance_policy_only_has_object_actions_on_the_instances_own_prefix(model: Model) -> None:
    policies = of_type(model.raw, "AWS::IAM::ManagedPolicy")
    instance = ref(model.raw["Outputs"]["InstancePolicyArn"]["Value"])
    pipeline = ref(model.raw["Outputs"]["PipelineMarkerPolicyArn"]["Value"])
    assert set(policies) == {instance, pipeline}
    own_prefix = "${%s.Arn}/instances/${ec2:SourceInstanceARN}/*" % model.bucket
    object_actions = {"s3:putobject", "s3:getobject", "s3:getobjectversion", "s3:abortmultipartupload", "s3:listmultipartuploadparts"}
    statements = [s for s in model.statements if s.policy == instance]
    assert statements
    for s in statements:
        assert s.effect == "Allow"
        assert s.resources == (own_prefix,), s.resources
        assert set(s.actions) <= object_actions, f"not an object upload/read action: {set(s.actions) - object_actions}"
        assert not any("*" in a for a in s.actions)
        assert not allows(list(s.actions), "s3:DeleteObject")
    assert {a for s in statements for a in s.actions} == object_actions
    markers = [s for s in model.statements if s.policy == pipeline]
    assert [(s.effect, s.actions, s.resources) for s in markers] == [("Allow", ("s3:putobject",), ("${%s.Arn}/markers/*" % model.bucket,))]
    for policy in (instance, pipeline):  # for users to attach to their own roles: attached to nothing of this stack
        assert not any(policies[policy]["Properties"].get(k) for k in ("Roles", "Users", "Groups"))


# Resource "*", the opt-in condition in general, S3/DynamoDB scope and wildcards: tests/infra/test_least_privilege.py.


TOKEN_ACTIONS = {"states:sendtasksuccess"}


def test_trigger_functions_step_functions_access_is_start_and_describe_execution(model: Model) -> None:
    for package in TRIGGER_HANDLERS:
        states = {a for s in model.of_role(model.roles[package]) for a in s.actions if a.startswith("states:")}
        extra = TOKEN_ACTIONS if package in TOKEN_HANDLERS else set()  # the sweep settles waits whose event was lost
        assert states == {"states:startexecution", "states:describeexecution"} | extra, f"{package}: {sorted(states)}"


def test_only_the_token_functions_complete_task_tokens_and_only_of_the_lifecycle_state_machine(model: Model) -> None:
    grants = [s for s in model.statements if s.effect == "Allow" and any(a in TOKEN_ACTIONS for a in s.actions)]
    assert {r for s in grants for r in s.roles} == {model.roles[h] for h in TOKEN_HANDLERS}
    for s in grants:
        assert set(s.actions) == TOKEN_ACTIONS and s.resources == ("${%s}" % model.state_machine,), s.raw


def test_trigger_functions_can_start_only_the_lifecycle_state_machine(model: Model) -> None:
    for package in TRIGGER_HANDLERS:
        start = [s for s in model.of_role(model.roles[package]) if allows(list(s.actions), "states:StartExecution")]
        assert start and all(s.resources == ("${%s}" % model.state_machine,) for s in start), start
    for package in TASK_HANDLERS:
        held = {a for s in model.of_role(model.roles[package]) for a in s.actions if a.startswith("states:")}
        assert held <= (TOKEN_ACTIONS if package in TOKEN_HANDLERS else set()), f"{package}: {sorted(held)}"


def test_state_machine_invokes_only_its_task_functions(model: Model) -> None:
    invoke = [s for s in model.of_role(model.state_machine_role) if allows(list(s.actions), "lambda:InvokeFunction")]
    targets = {r for s in invoke for r in s.resources}
    expected = set()
    for package in TASK_HANDLERS:
        expected |= {"${%s.Arn}" % model.functions[package], "${%s.Arn}:*" % model.functions[package]}
    assert targets == expected


# --- SSM documents ------------------------------------------------------------------------------------

FREE_TEXT_PARAMETERS = {"LogPattern"}
"""An extended regular expression: printable ASCII by design (it legitimately contains ``$ ( ) | ;``). It is
safe only because it reaches the script as an environment variable (asserted below) that the probe hands to grep -E
as one argument, never through a shell."""
OPAQUE_TOKENS = {"ManifestVersionId"}
"""An S3 VersionId, as S3 issued it (it may hold ``/ + = .``): restore.sh passes it as the one argument of
``--version-id`` and never as a path; its pattern still refuses every shell metacharacter."""
ARGV_PARAMETERS = {"ResumeCommand"}
"""An absolute program path and plain arguments separated by single spaces: a space is legitimate there, every
shell metacharacter is not (restore.sh word-splits it with globbing off and runs the argv without a shell)."""


def _documents(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in of_type(raw, "AWS::SSM::Document").items()}


def test_documents_fit_the_ssm_content_limit(synthesized: Any) -> None:
    # SSM Command documents may hold at most 64 KB of content; the checkpoint script grows with hardening.
    for logical, props in _documents(synthesized.raw).items():
        size = len(json.dumps(props["Content"]).encode())
        assert size <= 64 * 1024, f"{logical}: {size} bytes of content"


def test_documents_are_schema_2_2_command_documents(synthesized: Any) -> None:
    synthesized.template.resource_count_is("AWS::SSM::Document", 4)  # probe, checkpoint, restore, preflight
    synthesized.template.all_resources_properties(
        "AWS::SSM::Document",
        {
            "DocumentType": "Command",
            "DocumentFormat": "JSON",
            "Content": Match.object_like(
                {
                    "schemaVersion": "2.2",
                    "mainSteps": [Match.object_like({"action": "aws:runShellScript", "inputs": Match.object_like({})})],
                }
            ),
        },
    )


def test_the_preflight_document_is_an_output_with_its_parameters(synthesized: Any) -> None:
    from infra.constructs.documents import PREFLIGHT_PARAMETERS

    (logical,) = [k for k in _documents(synthesized.raw) if k.startswith("DocumentsPreflight")]
    assert ref(synthesized.raw["Outputs"]["PreflightDocument"]["Value"]) == logical
    content = _documents(synthesized.raw)[logical]["Content"]
    assert set(content["parameters"]) == set(PREFLIGHT_PARAMETERS)
    assert set(PREFLIGHT_PARAMETERS) == {"Bucket", "InstancePrefix", "CheckpointDir", "PidFile", "SaveOnSignal"}
    assert content["mainSteps"][0]["inputs"]["timeoutSeconds"] == "120"


def _pattern_is_ascii_and_anchored(pattern: str) -> bool:
    """Anchored, and no class (``. \\w \\d \\s``) that some regex engines widen to Unicode."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        return False
    in_class = escaped = False
    for ch in pattern:
        if escaped:
            if ch in "wdsWDS":
                return False
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "." and not in_class:
            return False
    return True


def test_every_parameter_is_a_patterned_string_passed_as_an_environment_variable(synthesized: Any) -> None:
    for logical, props in _documents(synthesized.raw).items():
        params = props["Content"]["parameters"]
        assert params, logical
        for name, spec in params.items():
            assert spec["type"] == "String", f"{logical}.{name}"
            assert spec.get("allowedPattern"), f"{logical}.{name} has no allowedPattern"
            assert _pattern_is_ascii_and_anchored(spec["allowedPattern"]), f"{logical}.{name}: {spec['allowedPattern']}"
            if "default" in spec:
                assert re.fullmatch(spec["allowedPattern"], spec["default"]), f"{logical}.{name}: default fails its own pattern"
            if name == "executionTimeout":
                # Consumed by the agent itself (timeoutSeconds), never by the script.
                assert spec["allowedPattern"] == "^[0-9]{1,6}$"
                assert "interpolationType" not in spec
            else:
                assert spec.get("interpolationType") == "ENV_VAR", f"{logical}.{name} is pasted into the script"


def test_run_command_never_interpolates_and_starts_with_a_bash_shebang(synthesized: Any) -> None:
    for logical, props in _documents(synthesized.raw).items():
        content = props["Content"]
        (step,) = content["mainSteps"]
        lines = step["inputs"]["runCommand"]
        assert isinstance(lines, list) and lines
        assert re.fullmatch(r"#!(/usr/bin/env bash|/bin/bash)( .*)?", lines[0]), f"{logical}: first line {lines[0]!r}"
        assert not [line for line in lines if "{{" in line], f"{logical}: '{{{{' in runCommand"
        assert "eval " not in "\n".join(lines), f"{logical}: eval in the script"
        # The only {{ }} in the whole document is the agent-side timeout.
        rest = json.dumps(
            {**content, "mainSteps": [{**step, "inputs": {k: v for k, v in step["inputs"].items() if k != "timeoutSeconds"}}]}
        )
        assert "{{" not in rest, logical
        timeout = step["inputs"]["timeoutSeconds"]
        if "{{" in timeout:
            assert re.fullmatch(r"\{\{ *executionTimeout *\}\}", timeout)
            assert "executionTimeout" in content["parameters"]
        else:
            assert timeout.isdigit()


def test_scripts_read_every_parameter_from_its_environment_variable(synthesized: Any) -> None:
    for logical, props in _documents(synthesized.raw).items():
        script = "\n".join(props["Content"]["mainSteps"][0]["inputs"]["runCommand"])
        for name in props["Content"]["parameters"]:
            if name != "executionTimeout":
                assert f"SSM_{name}" in script, f"{logical}: parameter {name} is never read from SSM_{name}"


HOSTILE = [
    "; rm -rf /",
    "$(reboot)",
    "`reboot`",
    "x`id`",
    "/tmp/$(reboot)",
    "/tmp/a;reboot",
    "/tmp/a b",
    "a\nb",
    "/tmp/a\n",
    "i-0123456789abcdef0\n",
    "../..",
    "../../etc/passwd",
    "'",
    '"',
    "x' || 'y",
    "ünïcødé",
    "/tmp/ünï",
    "ｉ-0123456789abcdef0",  # full-width i
    "i-0123456789abcdef0\u200b",
    "runs/\u202eexe.json",
    "A" * 300,
    "/" + "a" * 299,
    "",
]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v)[:30] for v in HOSTILE])
def test_hostile_values_fail_every_path_id_and_bucket_pattern(synthesized: Any, value: str) -> None:
    checked = 0
    for logical, props in _documents(synthesized.raw).items():
        for name, spec in props["Content"]["parameters"].items():
            if name in FREE_TEXT_PARAMETERS or (name in OPAQUE_TOKENS and not re.search(r"[^A-Za-z0-9._+/=-]", value)):
                continue
            if value == "" and "default" in spec and spec["default"] == "":
                continue  # optional parameters (PidFile, LogFile) are empty by design
            if name in ARGV_PARAMETERS and value == "/tmp/a b":
                continue  # program /tmp/a with the argument b
            checked += 1
            assert not re.fullmatch(spec["allowedPattern"], value), f"{logical}.{name} accepts {value!r}"
    assert checked >= 12


# --- state machine ------------------------------------------------------------------------------------


def _placeholder(raw: dict[str, Any], token: dict[str, Any]) -> str:
    pseudo = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com"}
    if "Ref" in token and token["Ref"] in pseudo:
        return pseudo[token["Ref"]]
    logical = ref(token)
    cfn_type = raw["Resources"][logical]["Type"]
    if cfn_type == "AWS::Lambda::Function":
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical}"
    if cfn_type == "AWS::SNS::Topic":
        return f"arn:aws:sns:{REGION}:{ACCOUNT}:{logical}"
    if cfn_type == "AWS::SSM::Document":
        return logical
    return f"arn:aws:placeholder:{REGION}:{ACCOUNT}:{logical}"


def resolve_definition(raw: dict[str, Any], machine: str) -> dict[str, Any]:
    definition = raw["Resources"][machine]["Properties"]["DefinitionString"]
    if isinstance(definition, str):
        return json.loads(definition)
    sep, parts = definition["Fn::Join"]
    return json.loads(sep.join(p if isinstance(p, str) else _placeholder(raw, p) for p in parts))


@pytest.fixture(scope="module")
def asl(model: Model) -> dict[str, Any]:
    return resolve_definition(model.raw, model.state_machine)


def _edges(state: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, target) for every transition out of ``state``."""
    out = [("next", state["Next"])] if "Next" in state else []
    out += [(f"choice{i}", rule["Next"]) for i, rule in enumerate(state.get("Choices", []))]
    out += [("default", state["Default"])] if "Default" in state else []
    out += [(f"catch{i}", catch["Next"]) for i, catch in enumerate(state.get("Catch", []))]
    return out


def _reachable(
    asl: dict[str, Any], start: str, *, cut: AbstractSet[tuple[str, str]] = frozenset(), removed: AbstractSet[str] = frozenset()
) -> set[str]:
    """States reachable from ``start`` without the edges ``cut`` ((state, label)) or the states ``removed``."""
    seen, queue = {start}, deque([start])
    while queue:
        name = queue.popleft()
        for label, target in _edges(asl["States"][name]):
            if (name, label) in cut or target in removed or target in seen:
                continue
            seen.add(target)
            queue.append(target)
    return seen


def _lambda_tasks(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, st in asl["States"].items():
        if st["Type"] != "Task":
            continue
        resource = st["Resource"]
        lambda_invoke = resource.endswith((":states:::lambda:invoke", ":lambda:invoke.waitForTaskToken"))
        if ":lambda:" in resource and ":function:" in resource or lambda_invoke:
            out[name] = st
    return out


def _outcome_states(asl: dict[str, Any]) -> dict[str, str]:
    """Pass state name -> the ``outcome`` literal it writes."""
    return {
        name: st["Parameters"]["outcome"]
        for name, st in asl["States"].items()
        if st["Type"] == "Pass" and "outcome" in st.get("Parameters", {})
    }


def test_state_machine_is_standard_logged_and_traced(synthesized: Any, model: Model) -> None:
    log_group = Capture()
    synthesized.template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineType": "STANDARD",
            "TracingConfiguration": {"Enabled": True},
            "LoggingConfiguration": {
                "Level": "ALL",
                "IncludeExecutionData": True,
                "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": [log_group, "Arn"]}}}],
            },
        },
    )
    group = model.raw["Resources"][log_group.as_string()]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == CONTEXT["log_retention_days"]


def test_statelint_accepts_the_resolved_definition(asl: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "definition.asl.json"
    path.write_text(json.dumps(asl, indent=1))
    proc = subprocess.run([str(BIN / "statelint"), "--ignore=FLOAT", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_only_one_task_stops_instances_and_it_is_the_stop_instance_function(asl: dict[str, Any], model: Model) -> None:
    stop_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{model.functions['stop_instance']}"
    invokers = [
        name
        for name, st in asl["States"].items()
        if st["Type"] == "Task" and (stop_arn in st["Resource"] or stop_arn in json.dumps(st.get("Parameters", {})))
    ]
    assert invokers == ["Stop instance"]
    for name, st in asl["States"].items():
        if st["Type"] == "Task":
            resource = st["Resource"].lower()
            assert not re.search(r"aws-sdk:ec2:(stop|terminate|modifyinstance)", resource), f"{name} calls {resource} directly"


def test_stop_instance_is_reachable_only_through_a_verified_checkpoint(asl: dict[str, Any]) -> None:
    states = asl["States"]
    choice = states["Checkpoint verified?"]
    assert choice["Type"] == "Choice"
    verified = [
        i
        for i, rule in enumerate(choice["Choices"])
        if rule == {"Variable": "$.verification.verified", "BooleanEquals": True, "Next": "Stop instance"}
    ]
    assert len(verified) == 1, choice
    assert choice.get("Default") != "Stop instance", "the Default branch of Checkpoint verified? stops the instance"
    into_stop = [(name, label) for name, st in states.items() for label, target in _edges(st) if target == "Stop instance"]
    assert into_stop == [("Checkpoint verified?", f"choice{verified[0]}")], into_stop
    into_choice = [(name, label) for name, st in states.items() for label, target in _edges(st) if target == "Checkpoint verified?"]
    assert into_choice == [("Verify checkpoint", "next")], into_choice
    start = asl["StartAt"]
    assert "Stop instance" in _reachable(asl, start)
    assert "Stop instance" not in _reachable(asl, start, cut={("Checkpoint verified?", f"choice{verified[0]}")})
    # The instance-changing outcomes exist only behind the Stop instance task.
    destructive = {n for n, o in _outcome_states(asl).items() if o in c.DESTRUCTIVE_OUTCOMES}
    assert destructive and not destructive & _reachable(asl, start, removed={"Stop instance"})


def test_every_task_has_retry_and_catch(asl: dict[str, Any]) -> None:
    outcomes = _outcome_states(asl)
    tasks = {n: st for n, st in asl["States"].items() if st["Type"] == "Task"}
    assert len(tasks) >= 7
    for name, st in tasks.items():
        assert st.get("Retry"), f"{name} has no Retry"
        catches = st.get("Catch", [])
        if name.startswith("Run ") and name.endswith(" command"):
            # Refused: the path's failure outcome. Ambiguous or no end seen in time: look the command up, never re-send.
            refused, unknown, other = catches
            errors = [cat["ErrorEquals"] for cat in catches]
            unknown_errors = ["CommandOutcomeUnknown", "States.Timeout", "Sandbox.Timedout", "Lambda.Unknown"]
            assert errors == [["CommandNotSent"], unknown_errors, ["States.ALL"]], errors
            assert unknown["Next"] == "Find " + name.removeprefix("Run "), f"{name}: catch goes to {unknown['Next']}"
            assert outcomes[refused["Next"]] in c.FAILED_OUTCOMES and outcomes[other["Next"]] in c.FAILED_OUTCOMES
            continue
        if name.startswith("Follow ") and name.endswith(" command"):
            # No end within the command's budget: read it once (Get ... once more), then Verify judges it.
            timeout, other = catches
            assert timeout["ErrorEquals"] == ["States.Timeout"]
            assert timeout["Next"].startswith("Get ") and timeout["Next"].endswith("once more")
            assert other["ErrorEquals"] == ["States.ALL"] and outcomes[other["Next"]] in c.FAILED_OUTCOMES
            continue
        assert [cat["ErrorEquals"] for cat in catches] == [["States.ALL"]], f"{name}: {catches}"
        (catch,) = catches
        if name == "Notify (fallback)":
            # A notification that cannot be published must not change the outcome: on to the verdict,
            # keeping $.result (the error goes to its own path).
            assert catch["Next"] == st["Next"] == "Outcome is a failure?"
            assert catch["ResultPath"] == "$.notify_error"
            continue
        if name == "Record outcome":
            # Record outcome notifies itself; when it fails, the fallback Notify publishes the raw $.result.
            assert st["Next"] == "Outcome is a failure?" and catch["Next"] == "Notify (fallback)"
            assert catch["ResultPath"] == "$.record_error" and st["ResultPath"] == "$.result"
            continue
        assert catch["Next"] in outcomes, f"{name}: catch goes to {catch['Next']}, not an outcome"
        assert catch["ResultPath"] == "$.error"
        outcome = outcomes[catch["Next"]]
        assert outcome not in c.DESTRUCTIVE_OUTCOMES
        if name != "Evaluate completion":  # nothing was done to the instance before the checkpoint command
            assert outcome in c.FAILED_OUTCOMES, f"{name}: an error ends in {outcome}"


def test_lambda_tasks_have_exactly_one_lambda_service_retry(asl: dict[str, Any]) -> None:
    tasks = _lambda_tasks(asl)
    assert set(tasks) == {
        "Evaluate completion",
        "Verify checkpoint",
        "Verify emergency checkpoint",
        "Find checkpoint command",
        "Find emergency checkpoint command",
        "Find restore command",
        "Stop instance",
        "Confirm resume",
        "Record outcome",
        *(f"{verb} {what} command" for verb in ("Run", "Follow") for what in ("checkpoint", "emergency checkpoint", "restore")),
    }
    for name, st in tasks.items():
        lambda_retries = [r for r in st["Retry"] if "Lambda.ServiceException" in r["ErrorEquals"]]
        assert len(lambda_retries) == 1, f"{name}: {st['Retry']}"
        # CDK's default LambdaInvoke retry (retry_on_service_exceptions) carries this error; it must be off.
        assert not any("Lambda.ClientExecutionTimeoutException" in r["ErrorEquals"] for r in st["Retry"]), name
        assert {"Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.TooManyRequestsException"} <= set(
            lambda_retries[0]["ErrorEquals"]
        )


def test_checkpoint_command_is_not_resent_after_an_ambiguous_failure(asl: dict[str, Any]) -> None:
    send = asl["States"]["Run checkpoint command"]
    assert send["Resource"].endswith(":states:::lambda:invoke.waitForTaskToken")
    assert send["TimeoutSecondsPath"] == "$.evaluation.command.wait_seconds"
    errors = {e for r in send["Retry"] for e in r["ErrorEquals"]}
    # TransientAwsError: SSM throttled SendCommand (accepted nothing); never an error that may follow an accepted command.
    assert errors and not errors & {"States.ALL", "States.TaskFailed", "States.Timeout", "CommandOutcomeUnknown"}, errors


def test_every_path_ends_in_done_or_failed(asl: dict[str, Any]) -> None:
    states = asl["States"]
    terminal = {n for n, st in states.items() if st["Type"] in ("Succeed", "Fail") or st.get("End")}
    assert terminal == {"Done", "Failed"}, f"terminal states: {sorted(terminal)}"
    assert states["Done"]["Type"] == "Succeed" and states["Failed"]["Type"] == "Fail"
    assert _reachable(asl, asl["StartAt"]) == set(states), "unreachable states"
    for name in states:
        assert _reachable(asl, name) & terminal, f"{name} cannot reach Done or Failed"


def test_every_outcome_is_written_by_name_and_routed_by_failure(asl: dict[str, Any]) -> None:
    outcomes = _outcome_states(asl)
    assert set(outcomes.values()) == set(c.ALL_OUTCOMES), (
        f"missing {set(c.ALL_OUTCOMES) - set(outcomes.values())}, unknown {set(outcomes.values()) - set(c.ALL_OUTCOMES)}"
    )
    assert all(asl["States"][n]["Next"] == "Record outcome" for n in outcomes)
    verdict = asl["States"]["Outcome is a failure?"]
    (rule,) = verdict["Choices"]
    assert rule["Next"] == "Failed" and verdict["Default"] == "Done"
    failed = {cond["StringEquals"] for cond in rule["Or"] if cond["Variable"] == "$.result.outcome"}
    assert failed == set(c.FAILED_OUTCOMES) and len(rule["Or"]) == len(failed)


# --- triggers -----------------------------------------------------------------------------------------


def test_schedule_rule_targets_the_sweep_with_a_dead_letter_queue(synthesized: Any, model: Model) -> None:
    minutes = CONTEXT["schedule_minutes"]
    synthesized.template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": f"rate({minutes} minute{'s' if minutes != 1 else ''})",
            "State": "ENABLED",
            "Targets": [
                Match.object_like(
                    {
                        "Arn": {"Fn::GetAtt": [model.functions["on_schedule_tick"], "Arn"]},
                        "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.any_value(), "Arn"]}},
                    }
                )
            ],
        },
    )


def _pattern_rule(raw: dict[str, Any], source: str) -> dict[str, Any]:
    (rule,) = [
        r["Properties"]
        for r in of_type(raw, "AWS::Events::Rule").values()
        if "EventPattern" in r["Properties"]
        and r["Properties"]["EventPattern"]["source"] == [source]
        and "state" not in r["Properties"]["EventPattern"].get("detail", {})
    ]
    return rule


def _marker_rule(raw: dict[str, Any]) -> dict[str, Any]:
    return _pattern_rule(raw, "aws.s3")


def test_marker_rule_sends_success_markers_of_the_checkpoint_bucket(synthesized: Any, model: Model) -> None:
    synthesized.template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {"bucket": {"name": [{"Ref": model.bucket}]}, "object": {"key": [{"suffix": c.DEFAULT_MARKER_NAME}]}},
            },
            "State": "ENABLED",
            "Targets": [
                Match.object_like(
                    {
                        "Arn": {"Fn::GetAtt": [model.functions["on_object_created"], "Arn"]},
                        "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [Match.any_value(), "Arn"]}},
                    }
                )
            ],
        },
    )


def test_every_rule_dead_letters_to_a_queue_that_accepts_them(model: Model) -> None:
    rules = of_type(model.raw, "AWS::Events::Rule")
    assert len(rules) == 8
    queues = {ref(t["DeadLetterConfig"]["Arn"]) for r in rules.values() for t in r["Properties"]["Targets"]}
    (queue,) = queues
    assert model.raw["Resources"][queue]["Type"] == "AWS::SQS::Queue"
    (policy,) = [p["Properties"] for p in of_type(model.raw, "AWS::SQS::QueuePolicy").values()]
    senders = {
        ref(st["Condition"]["ArnEquals"]["aws:SourceArn"])
        for st in policy["PolicyDocument"]["Statement"]
        if st["Effect"] == "Allow" and st["Action"] == "sqs:SendMessage" and st["Principal"] == {"Service": "events.amazonaws.com"}
    }
    assert senders == set(rules)
    permissions = of_type(model.raw, "AWS::Lambda::Permission").values()
    permitted = {ref(p["Properties"]["SourceArn"]) for p in permissions if "SourceArn" in p["Properties"]}
    assert set(rules) <= permitted


def test_the_sweep_may_invoke_itself_and_no_one_else_without_a_rule(model: Model) -> None:
    # A sweep short of time hands the pages left to an Event invocation of itself (on_schedule_tick/logic.py).
    (own,) = [p["Properties"] for p in of_type(model.raw, "AWS::Lambda::Permission").values() if "SourceArn" not in p["Properties"]]
    assert own["Action"] == "lambda:InvokeFunction"
    assert ref(own["FunctionName"]) == model.functions["on_schedule_tick"]
    assert ref(own["Principal"]) == model.roles["on_schedule_tick"]


def test_failed_trigger_invocations_go_to_the_undelivered_queue(model: Model) -> None:
    # EventBridge invokes the trigger functions asynchronously: what still fails after Lambda's retries is kept.
    (queue,) = of_type(model.raw, "AWS::SQS::Queue")
    configs = {ref(p["Properties"]["FunctionName"]): p["Properties"] for p in of_type(model.raw, "AWS::Lambda::EventInvokeConfig").values()}
    assert set(configs) == {model.functions[h] for h in TRIGGER_HANDLERS + OBSERVER_HANDLERS}
    for props in configs.values():
        assert ref(props["DestinationConfig"]["OnFailure"]["Destination"]) == queue


def _s3_event(bucket: str, key: str, detail_type: str = "Object Created") -> dict[str, Any]:
    return events.object_created(bucket, key, detail_type=detail_type, account=ACCOUNT, region=REGION)


@pytest.mark.parametrize(
    ("bucket", "key", "detail_type", "expected"),
    [
        ("ckpt", "runs/x/_SUCCESS", "Object Created", True),
        ("ckpt", "runs/x/checkpoints/a.bin", "Object Created", False),
        ("ckpt", "runs/x/_SUCCESS.tmp", "Object Created", False),
        ("other-bucket", "runs/x/_SUCCESS", "Object Created", False),
        ("ckpt", "runs/x/_SUCCESS", "Object Deleted", False),
    ],
)
def test_marker_pattern_matches_only_marker_creation(model: Model, bucket: str, key: str, detail_type: str, expected: bool) -> None:
    from moto.events.models import EventPattern

    pattern = json.loads(json.dumps(_marker_rule(model.raw)["EventPattern"]).replace(json.dumps({"Ref": model.bucket}), '"ckpt"'))
    assert pattern["detail"]["bucket"]["name"] == ["ckpt"]
    assert EventPattern.load(json.dumps(pattern)).matches_event(_s3_event(bucket, key, detail_type)) is expected


# --- bucket -------------------------------------------------------------------------------------------


def test_checkpoint_bucket_is_encrypted_private_and_versioned(synthesized: Any, model: Model) -> None:
    props = model.raw["Resources"][model.bucket]["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props.get("VersioningConfiguration") == {"Status": "Enabled"}
    synthesized.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": model.bucket},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Principal": {"AWS": "*"},
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                "Resource": Match.array_with(
                                    [
                                        {"Fn::GetAtt": [model.bucket, "Arn"]},
                                        {"Fn::Join": ["", [{"Fn::GetAtt": [model.bucket, "Arn"]}, "/*"]]},
                                    ]
                                ),
                            }
                        )
                    ]
                )
            },
        },
    )


def test_checkpoint_bucket_sends_events_to_eventbridge(synthesized: Any, model: Model) -> None:
    synthesized.template.has_resource_properties(
        "Custom::S3BucketNotifications",
        {"BucketName": {"Ref": model.bucket}, "NotificationConfiguration": Match.object_like({"EventBridgeConfiguration": {}})},
    )


# --- Lambda, logs, SNS --------------------------------------------------------------------------------


def test_functions_runtime_layer_tracing_and_json_logs(model: Model) -> None:
    params = model.raw["Parameters"]
    for package, logical in model.functions.items():
        props = model.raw["Resources"][logical]["Properties"]
        assert props["Runtime"] == LAMBDA_PYTHON == "python3.13", package
        assert props["Architectures"] == [LAMBDA_ARCH] == ["arm64"], package
        assert props["TracingConfig"] == {"Mode": "Active"}, package
        (layer,) = props["Layers"]
        param = params[ref(layer)]
        assert param["Type"] == "AWS::SSM::Parameter::Value<String>", package
        assert param["Default"] == f"/aws/service/powertools/python/{LAMBDA_ARCH}/{LAMBDA_PYTHON}/{POWERTOOLS_VERSION}"
        assert props["LoggingConfig"]["LogFormat"] == "JSON", package
        group = model.raw["Resources"][ref(props["LoggingConfig"]["LogGroup"])]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["RetentionInDays"] == CONTEXT["log_retention_days"], package


def test_powertools_layer_matches_the_pinned_package() -> None:
    pins = re.findall(r"^aws-lambda-powertools\S*==(\S+)$", (REPO / "lambdas" / "requirements.txt").read_text(), re.M)
    assert pins == [POWERTOOLS_VERSION]


def test_outcome_topic_is_encrypted_and_ssl_only(synthesized: Any) -> None:
    synthesized.template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    synthesized.template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            }
        },
    )


# --- cdk-nag, cfn-lint, CDK CLI -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_tree() -> Any:
    """(app, stack) as constructed, not synthesized: cdk-nag acknowledgements live in node metadata."""
    from app import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
        mp.delenv("CDK_DEFAULT_REGION", raising=False)
        return build_app()


def test_synthesis_with_cdk_nag_succeeded(synthesized: Any) -> None:
    # The fixture synthesizes through build_app() with AwsSolutionsChecks and NIST80053R5Checks (or reuses the
    # template cached by such a synthesis of identical inputs); any unacknowledged finding raises there.
    assert synthesized.raw["Resources"]


def test_cdk_nag_gate_rejects_an_unacknowledged_noncompliant_resource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aws_cdk import aws_s3 as s3

    from app import build_app

    monkeypatch.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
    monkeypatch.delenv("CDK_DEFAULT_REGION", raising=False)
    app, stack = build_app(outdir=str(tmp_path))
    s3.Bucket(stack, "Bad")  # no server access logs, no SSL-only policy
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert sorted(plugin["pluginName"] for plugin in report["pluginReports"]) == sorted(NAG_PACKS)
    violations = [
        (v["ruleName"], v["severity"], vc["constructPath"])
        for plugin in report["pluginReports"]
        for v in plugin["violations"]
        for vc in v["violatingConstructs"]
    ]
    rules = {rule for rule, _, _ in violations}
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules
    assert {"NIST.800.53.R5-S3BucketLoggingEnabled", "NIST.800.53.R5-S3BucketVersioningEnabled"} <= rules
    # ...and nothing else in the stack is reported, error or warning: the real app is clean under both packs.
    assert all(path.startswith(f"{stack.node.path}/Bad/") for _, _, path in violations), violations


def test_every_acknowledgement_is_granular_and_has_a_reason(app_tree: Any) -> None:
    app, stack = app_tree
    acks: list[tuple[str, str, str]] = []
    for node in app.node.find_all():
        for entry in node.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                acks.extend((node.node.path, rule, reason) for rule, reason in entry.data.items())
    assert len(acks) >= 10, "acknowledgements not found in node metadata (did the Validations API change?)"
    for path, rule, reason in acks:
        pack, _, rule_id = rule.partition("::")
        assert pack in NAG_PACKS and rule_id.startswith(f"{pack}-"), (path, rule)
        assert isinstance(reason, str) and len(reason.strip()) >= 30, (path, rule, reason)
        if rule.split("::", 1)[1].startswith(("AwsSolutions-IAM4", "AwsSolutions-IAM5")):
            assert re.search(r"\[.+\]$", rule), f"{path}: blanket {rule} (name the finding)"
        # Nothing is waived for the whole app or stack except CDK's own notifications handler role.
        if path in (app.node.path, stack.node.path):
            assert rule.startswith("AwsSolutions::AwsSolutions-IAM4[Policy::"), (path, rule)


def test_environment_bound_synthesis_passes_cdk_nag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CDK CLI always sets CDK_DEFAULT_REGION (us-east-1 when nothing is configured; `cdk deploy` also sets the
    account), so findings then name a concrete region/account and the acknowledgements must still match them
    (regression: stack.py once hard-coded '<AWS::Region>:<AWS::AccountId>' in the IAM5 finding strings)."""
    from app import build_app

    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("CDK_DEFAULT_REGION", REGION)
    app, stack = build_app(outdir=str(tmp_path))
    app.synth()
    assert (tmp_path / f"{stack.artifact_id}.template.json").exists()


def test_cfn_lint_is_clean(synthesized: Any, tmp_path: Path) -> None:
    path = tmp_path / "Autostop.template.json"
    path.write_text(json.dumps(synthesized.raw, indent=1))
    proc = subprocess.run([str(BIN / "cfn-lint"), "--ignore-checks", "W3005", "--", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"cfn-lint findings:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
def test_cdk_cli_synth(tmp_path: Path) -> None:
    if not (REPO / "node_modules" / ".bin" / "cdk").exists():
        pytest.skip("the pinned CDK CLI is not installed (node_modules/.bin/cdk missing): run `npm ci`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_DEFAULT_"))}  # no (fake) credentials
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python3 app.py` (cdk.json) must be the venv's python
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
        CDK_DISABLE_CLI_TELEMETRY="true",
        CDK_DISABLE_VERSION_CHECK="true",
        AWS_EC2_METADATA_DISABLED="true",
    )
    out = tmp_path / "cdk.out"
    proc = subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "--no-notices", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"cdk synth exit {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    assert (out / "Autostop.template.json").exists()
    assert "feature flags are not configured" not in proc.stdout + proc.stderr  # cdk.json sets every recommended flag


# --- configuration --------------------------------------------------------------------------------------


def test_cdk_json_context_is_a_valid_config() -> None:
    import aws_cdk as cdk

    config = AutostopConfig.from_context(cdk.App(context=CONTEXT).node)
    assert config.tag_prefix == TAG_PREFIX and config.default_action == "stop"
    assert config.schedule_minutes == CONTEXT["schedule_minutes"]


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({"default_action": "terminate"}, ["default_action"]),
        ({"tag_prefix": "auto stop"}, ["tag_prefix"]),
        ({"tag_prefix": ""}, ["tag_prefix"]),
        ({"default_grace_seconds": 900, "max_grace_seconds": 600}, ["default_grace_seconds", "max_grace_seconds"]),
        ({"max_grace_seconds": c.HARD_MAX_GRACE_SECONDS + 1}, ["max_grace_seconds"]),
        ({"checkpoint_bucket": "My_Bucket"}, ["checkpoint_bucket"]),
        ({"checkpoint_bucket": "ab"}, ["checkpoint_bucket"]),
        ({"checkpoint_bucket": "bucket; rm -rf /"}, ["checkpoint_bucket"]),
        ({"schedule_minutes": 0}, ["schedule_minutes"]),
        ({"tracing": False, "trace_aws_calls": True}, ["trace_aws_calls", "tracing"]),
    ],
)
def test_config_rejects_bad_values_naming_the_key(overrides: dict[str, Any], keys: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        AutostopConfig(**overrides)
    for key in keys:
        assert key in str(info.value)


@pytest.mark.parametrize(
    ("context", "key"),
    [
        ({"default_action": "terminate"}, "default_action"),
        ({"schedule_minutes": "five"}, "schedule_minutes"),
        ({"tag_prefix": "has spaces"}, "tag_prefix"),
    ],
)
def test_cdk_context_is_validated(context: dict[str, Any], key: str) -> None:
    import aws_cdk as cdk

    with pytest.raises(ConfigError, match=key):
        AutostopConfig.from_context(cdk.App(context={**CONTEXT, **context}).node)


def test_misspelt_context_key_is_rejected() -> None:
    import aws_cdk as cdk

    with pytest.raises(ConfigError, match="schedule_minute"):
        AutostopConfig.from_context(cdk.App(context={**CONTEXT, "schedule_minute": 10}).node)


def test_log_retention_setting_reaches_every_log_group() -> None:
    from aws_cdk import aws_logs as logs

    from app import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
        mp.delenv("CDK_DEFAULT_REGION", raising=False)
        _, stack = build_app(context={"log_retention_days": 90})
    groups = {n.node.path: n.retention_in_days for n in stack.node.find_all() if isinstance(n, logs.CfnLogGroup)}
    assert len(groups) == len(HANDLERS) + 1
    assert set(groups.values()) == {90}, groups


# --- Spot, state-change rules and run records (issue 3) ------------------------------------------------


def _ec2_event(detail_type: str, **detail: str) -> dict[str, Any]:
    return events.ec2_event(detail_type, {"instance-id": "i-0123456789abcdef0", **detail}, account=ACCOUNT, region=REGION)


EC2_EVENTS = [
    (_ec2_event(c.SPOT_WARNING, **{"instance-action": "terminate"}), "interruption"),
    (_ec2_event(c.REBALANCE_RECOMMENDATION), "rebalance"),
    (_ec2_event(c.STATE_CHANGE, state="running"), "resume"),
    (_ec2_event(c.STATE_CHANGE, state="stopping"), None),
    (_ec2_event(c.STATE_CHANGE, state="stopped"), "stop confirmed"),
    (_ec2_event(c.STATE_CHANGE, state="pending"), None),
    (_ec2_event(c.STATE_CHANGE, state="shutting-down"), None),
    (_ec2_event(c.STATE_CHANGE, state="terminated"), "stop confirmed"),
    (_ec2_event("EC2 Instance Scheduled Change"), None),
]


@pytest.mark.parametrize(("event", "reason"), EC2_EVENTS, ids=[f"{e['detail-type']}:{e['detail'].get('state', '')}" for e, _ in EC2_EVENTS])
def test_ec2_rules_deliver_only_warnings_recommendations_and_starts(model: Model, event: dict[str, Any], reason: str | None) -> None:
    # Our own StopInstances produces stopping/stopped state changes: no trigger may see them; stopped and terminated
    # go only to on_status_event, which completes the stop's waiting task token and starts nothing.
    from moto.events.models import EventPattern

    rules = [
        r["Properties"]
        for r in of_type(model.raw, "AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("source") == ["aws.ec2"]
    ]
    assert len(rules) == 3
    matched = [r for r in rules if EventPattern.load(json.dumps(r["EventPattern"])).matches_event(event)]
    assert len(matched) == (reason is not None)
    for rule in matched:
        (target,) = rule["Targets"]
        receiver = "on_status_event" if reason == "stop confirmed" else "on_instance_event"
        assert target["Arn"] == {"Fn::GetAtt": [model.functions[receiver], "Arn"]}
        assert "DeadLetterConfig" in target


def test_run_records_table_is_on_demand_recoverable_encrypted_and_kept(synthesized: Any) -> None:
    synthesized.template.resource_count_is("AWS::DynamoDB::Table", 1)
    synthesized.template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": Match.object_like(
                {
                    "BillingMode": "PAY_PER_REQUEST",
                    "KeySchema": [
                        {"AttributeName": c.RECORDS_PARTITION_KEY, "KeyType": "HASH"},
                        {"AttributeName": c.RECORDS_SORT_KEY, "KeyType": "RANGE"},
                    ],
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                    "SSESpecification": {"SSEEnabled": True},
                }
            ),
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_only_the_writers_of_run_records_may_write_them(model: Model) -> None:
    writers = set()
    for s in model.statements:
        if s.condition == WAITERS_ONLY:
            continue  # the waiter items only (test_waiter_grants_reach_only_the_waiter_partition)
        if s.effect == "Allow" and any(
            a.startswith("dynamodb:") and a.split(":")[1].startswith(("put", "update", "delete", "batchwrite")) for a in s.actions
        ):
            writers.update(s.roles)
    # stop_instance: the stop mark right before the call; on_execution_ended: the ending of an execution that
    # recorded nothing (timed out, aborted).
    writers_ok = ("evaluate_completion", "verify_checkpoint", "record_outcome", "stop_instance", "on_execution_ended")
    assert writers == {model.roles[h] for h in writers_ok}


WAITERS_ONLY = {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [c.WAITER_PARTITION]}}


def test_waiter_grants_reach_only_the_waiter_partition(model: Model) -> None:
    (table,) = of_type(model.raw, "AWS::DynamoDB::Table")
    expected = {
        "send_command": {"dynamodb:putitem", "dynamodb:updateitem", "dynamodb:deleteitem"},
        "stop_instance": {"dynamodb:putitem", "dynamodb:deleteitem"},
        "on_status_event": {"dynamodb:getitem", "dynamodb:query", "dynamodb:deleteitem"},
        "on_schedule_tick": {"dynamodb:getitem", "dynamodb:query", "dynamodb:deleteitem"},
    }
    deleting = [s for s in model.statements if s.effect == "Allow" and allows(list(s.actions), "dynamodb:DeleteItem")]
    assert deleting and all(s.condition == WAITERS_ONLY for s in deleting), [s.raw for s in deleting]
    waiter_grants = {r: s for s in model.statements if s.condition == WAITERS_ONLY for r in s.roles}
    assert {package for package, role in model.roles.items() if role in waiter_grants} == set(expected)
    for package, actions in expected.items():
        statement = waiter_grants[model.roles[package]]
        assert set(statement.actions) == actions and statement.resources == ("${%s.Arn}" % table,), f"{package}: {statement.raw}"


RUN_RECORD_READS = {"dynamodb:getitem", "dynamodb:query"}
RUN_RECORD_WRITES = RUN_RECORD_READS | {"dynamodb:putitem", "dynamodb:updateitem"}


def test_run_record_grants_are_exactly_the_calls_shared_records_makes(model: Model) -> None:
    (table,) = of_type(model.raw, "AWS::DynamoDB::Table")
    expected = {
        "on_instance_event": RUN_RECORD_READS,
        **dict.fromkeys(("evaluate_completion", "verify_checkpoint", "record_outcome"), RUN_RECORD_WRITES),
        "stop_instance": {"dynamodb:getitem", "dynamodb:putitem", "dynamodb:updateitem"},  # the stop mark
        "on_execution_ended": {"dynamodb:getitem", "dynamodb:putitem"},  # RunRecords.get / update (versioned PutItem)
        "on_schedule_tick": {"dynamodb:batchgetitem"},  # RunRecords.lock_holders: runs already handled
    }
    for package, role in {**model.roles, "state machine": model.state_machine_role}.items():
        grants = [s for s in model.of_role(role) if any(a.startswith("dynamodb:") or a == "*" for a in s.actions)]
        grants = [s for s in grants if s.condition != WAITERS_ONLY]
        if package not in expected:
            assert grants == [], f"{package} has DynamoDB grants: {[s.actions for s in grants]}"
            continue
        (statement,) = grants  # one explicit statement, no CDK grant helper's extra actions
        assert statement.effect == "Allow" and statement.condition is None
        assert set(statement.actions) == expected[package] and len(statement.actions) == len(expected[package]), (
            f"{package}: {statement.actions}"
        )
        assert statement.resources == ("${%s.Arn}" % table,), f"{package}: {statement.resources}"  # the table only, no index
        for never in ("dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:Scan", "dynamodb:DeleteTable"):
            assert not allows(list(statement.actions), never), f"{package} can {never}"


def test_the_claim_lease_outlasts_the_state_machines_timeout(model: Model, asl: dict[str, Any]) -> None:
    import aws_cdk as cdk

    from evaluate_completion.logic import lease_seconds
    from shared.settings import Settings
    from tests.conftest import function_env

    config = AutostopConfig.from_context(cdk.App(context=CONTEXT).node)
    assert asl["TimeoutSeconds"] == config.execution_timeout_seconds
    for package, logical in model.functions.items():
        env = model.raw["Resources"][logical]["Properties"]["Environment"]["Variables"]
        assert env[c.ENV_EXECUTION_TIMEOUT_SECONDS] == str(config.execution_timeout_seconds), package
    settings = Settings.from_env(function_env(**{c.ENV_EXECUTION_TIMEOUT_SECONDS: config.execution_timeout_seconds}))
    assert settings.execution_timeout_seconds == config.execution_timeout_seconds
    assert lease_seconds(settings) == config.execution_timeout_seconds + 600 > asl["TimeoutSeconds"]
    assert lease_seconds(Settings.from_env(function_env())) == 21600 + 600  # the default without the variable


def test_informational_tags_are_the_only_tags_written_and_only_on_opted_in_instances(model: Model) -> None:
    tagging = [s for s in model.statements if s.effect == "Allow" and any(a in ("ec2:createtags", "ec2:deletetags") for a in s.actions)]
    # Record outcome: the informational tags; the two triggers: only last-error (instances they could not act on)
    by_role = {st.roles: st for st in tagging}
    triggers = {(model.roles["on_schedule_tick"],), (model.roles["on_object_created"],)}
    assert set(by_role) == {(model.roles["record_outcome"],), *triggers}, by_role
    for roles, statement in by_role.items():
        assert statement.resources == (INSTANCES,)
        keys = statement.condition["ForAllValues:StringEquals"]["aws:TagKeys"]
        allowed = (c.TAG_LAST_ERROR,) if roles in triggers else c.INFO_TAGS
        assert sorted(keys) == sorted(f"{TAG_PREFIX}:{t}" for t in allowed)
        if roles in triggers:  # any instance carrying the opt-in key (enabled=yes is reported, not refused)
            assert statement.condition["Null"] == {"aws:TagKeys": "false", f"aws:ResourceTag/{TAG_PREFIX}:enabled": "false"}
            assert "StringEqualsIgnoreCase" not in statement.condition
        else:
            assert statement.condition["StringEqualsIgnoreCase"] == OPT_IN["StringEqualsIgnoreCase"]
            assert statement.condition["Null"] == {"aws:TagKeys": "false"}


def test_spot_and_resume_paths_never_reach_the_stop_task(asl: dict[str, Any]) -> None:
    route = asl["States"]["Run complete?"]
    entries = {ch["StringEquals"]: ch["Next"] for ch in route["Choices"]}
    assert set(entries) >= {"complete", "spot_checkpoint", "resume"}
    for decision in ("spot_checkpoint", "resume"):
        reachable = _reachable(asl, entries[decision])
        assert "Stop instance" not in reachable, decision
        assert not {n for n, o in _outcome_states(asl).items() if o in c.DESTRUCTIVE_OUTCOMES} & reachable, decision


# --- executions that end without their own Notify ------------------------------------------------------------


def _states_rules(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in of_type(raw, "AWS::Events::Rule").values()]
    return [r for r in rules if r.get("EventPattern", {}).get("source") == ["aws.states"]]


def test_execution_ended_rules_match_only_this_state_machines_silent_endings(model: Model) -> None:
    from infra.constructs.triggers import LAST_ATTEMPT
    from shared.executions import MAX_ATTEMPTS

    rules = _states_rules(model.raw)
    assert len(rules) == 2
    by_status = {tuple(r["EventPattern"]["detail"]["status"]): r for r in rules}
    assert set(by_status) == {("TIMED_OUT", "ABORTED", "FAILED"), ("SUCCEEDED",)}
    for rule in rules:
        pattern = rule["EventPattern"]
        assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
        assert pattern["detail"]["stateMachineArn"] == [{"Ref": model.state_machine}]
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [model.functions["on_execution_ended"], "Arn"]}
        assert "DeadLetterConfig" in target
    # Only the last attempt's success is sent (to say "attempts exhausted" when it did nothing).
    assert by_status[("SUCCEEDED",)]["EventPattern"]["detail"]["name"] == [{"suffix": f"-{MAX_ATTEMPTS}"}]
    assert LAST_ATTEMPT == MAX_ATTEMPTS


def test_execution_ended_function_publishes_to_the_outcome_topic_and_writes_only_run_records(model: Model) -> None:
    statements = model.of_role(model.roles["on_execution_ended"])
    actions = {a for s in statements for a in s.actions}
    assert "sns:publish" in actions
    assert not any(a.startswith(("ec2:", "ssm:", "s3:", "states:")) for a in actions), sorted(actions)
    assert {a for a in actions if a.startswith("dynamodb:")} == {"dynamodb:getitem", "dynamodb:putitem"}
    env = model.raw["Resources"][model.functions["on_execution_ended"]]["Properties"]["Environment"]["Variables"]
    assert "AUTOSTOP_OUTCOME_TOPIC_ARN" in env


def test_an_ambiguous_send_command_failure_is_looked_up_never_resent(asl: dict[str, Any]) -> None:
    for what in ("checkpoint", "emergency checkpoint", "restore"):
        run = asl["States"][f"Run {what} command"]
        payload = run["Parameters"]["Payload"]
        assert payload["execution_name.$"] == "$$.Execution.Name" and payload["task_token.$"] == "$$.Task.Token"
        unknown = next(cat for cat in run["Catch"] if "CommandOutcomeUnknown" in cat["ErrorEquals"])
        assert unknown["Next"] == f"Find {what} command"
        found = asl["States"][f"{what.capitalize()} command found?"]
        assert found["Choices"][0]["Next"] == f"Follow {what} command"
        follow = asl["States"][f"Follow {what} command"]
        # Follow only waits for the command found (its command_id); it never sends one.
        assert follow["Parameters"]["Payload"]["command_id.$"] == "$.lookup.command_id" and follow["Next"] == run["Next"]


def test_the_stop_wait_ends_stopped_when_the_instance_was_started_again(asl: dict[str, Any]) -> None:
    final = asl["States"]["Instance stopped?"]
    assert any(ch.get("Next") == "Started again after the stop" for ch in final["Choices"])
    assert asl["States"]["Started again after the stop"]["Parameters"]["outcome.$"] == "$.stop.outcome"
    assert asl["States"]["Stop instance"]["Parameters"]["Payload"]["execution_name.$"] == "$$.Execution.Name"
