"""Least privilege, proved on the synthesized template.

Every proof here ranges over *every* identity-policy statement of the template (``AWS::IAM::Policy``,
``AWS::IAM::ManagedPolicy``, inline role policies) rather than over the grants that exist today, so it keeps
holding as resources are added: a new grant either fits one of the shapes allowed below or fails here, and
the allow-lists say why each shape is allowed.

Sources:

* SAR: the AWS Service Authorization Reference, "Actions, resources, and condition keys for <service>"
  (https://docs.aws.amazon.com/service-authorization/latest/reference/). An action whose "Resource types"
  column is empty supports no resource-level permissions and can only be granted on ``"*"``.
* IAM global condition keys, ``aws:ResourceTag/tag-key``
  (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html): tag keys in
  this condition key are *not* case-sensitive ("matches a resource tag key named either TagKey1 or
  tagkey1, but not both"); tag values are compared by the operator (``StringEqualsIgnoreCase`` here).
* IAM multivalued context keys (reference_policies_condition_examples-multi-valued-context-keys.html):
  ``ForAllValues`` is also true when the request has no such key, hence the ``Null`` check on ``aws:TagKeys``.
* IAM policy variables (reference_policies_variables.html): a variable may stand in the resource part of an ARN
  (after the fifth colon); ``ec2:SourceInstanceARN`` is "the ARN of the Amazon EC2 instance from which the request
  is made", present only for an instance profile's credentials; "If a variable that has no value in the
  authorization context is used as part of the Resource ... element of a policy, the resource that includes a
  policy variable with no value will not match any resource." (infra/constructs/storage.py has the quotes.)
* SendCommand (API_SendCommand.html), DocumentVersion: "$DEFAULT, $LATEST, or a specific version number".
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from infra.constructs.documents import PINNED_DOCUMENT_VERSION
from infra.constructs.storage import INSTANCE_ACTIONS as INSTANCE_S3_ACTIONS
from lambdas.shared import constants as c
from tests.infra.test_stack import (
    CDK_NOTIFICATIONS_HANDLER,
    CONTEXT,
    REPO,
    Statement,
    _statements,
    allows,
    build_model,
    flat,
    of_type,
    ref,
    resolve_definition,
)

PREFIX: str = CONTEXT["tag_prefix"]
OPT_IN_KEY = f"aws:ResourceTag/{PREFIX}:{c.TAG_ENABLED}"
ARN_HEAD = "arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}:"
DEFAULT_BUS = ARN_HEAD % "events" + "event-bus/default"
INSTANCES = ARN_HEAD % "ec2" + "instance/*"
DOCUMENT = re.compile(re.escape(ARN_HEAD % "ssm") + r"document/\$\{(?P<logical>[A-Za-z0-9]+)\}")

INSTANCE_ACTIONS = (
    "ec2:StopInstances",
    "ec2:TerminateInstances",
    "ec2:StartInstances",
    "ec2:RebootInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "ssm:SendCommand",
)
"""Actions that change an instance or run code on it: each needs the opt-in tag condition wherever granted."""
REQUIRED_INSTANCE_ACTIONS = ("ec2:StopInstances", "ec2:TerminateInstances", "ssm:SendCommand")
"""Granted today; a proof over them must not pass vacuously."""

INFORMATIONAL_TAGS = ("state", "last-checkpoint", "last-error")
"""``<prefix>:<name>`` tags autostop may write on an instance to show progress. Never ``enabled``, the run or
the action: a tag-write grant must not be able to opt an instance in or change what is done to it."""

WILDCARD_OK: dict[str, str] = {
    # EC2 (SAR "Amazon EC2"): the Describe* actions list no resource type; the EC2 User Guide: "Amazon EC2
    # ec2:Describe* API actions do not support resource-level permissions ... the Resource element requires *".
    "ec2:describeinstances": "EC2 Describe*: no resource-level permissions (SAR, Amazon EC2)",
    "ec2:describespotinstancerequests": "EC2 Describe*: no resource-level permissions (SAR, Amazon EC2)",
    # Systems Manager (SAR "AWS Systems Manager"): these four list no resource type. The probe and the state
    # machine read back / cancel their own command by id; the instance side is guarded by SendCommand's tag.
    "ssm:describeinstanceinformation": "no resource type in SAR (AWS Systems Manager)",
    "ssm:listcommandinvocations": "no resource type in SAR (AWS Systems Manager)",
    "ssm:getcommandinvocation": "no resource type in SAR (AWS Systems Manager)",
    "ssm:cancelcommand": "no resource type in SAR (AWS Systems Manager)",
    "ssm:listcommands": "no resource type in SAR (AWS Systems Manager): finding a command by its comment",
    # X-Ray (SAR "AWS X-Ray"): trace upload and sampling list no resource type (Lambda and state machine tracing).
    "xray:puttracesegments": "no resource type in SAR (AWS X-Ray)",
    "xray:puttelemetryrecords": "no resource type in SAR (AWS X-Ray)",
    "xray:getsamplingrules": "no resource type in SAR (AWS X-Ray)",
    "xray:getsamplingtargets": "no resource type in SAR (AWS X-Ray)",
    # CloudWatch Logs vended log delivery (SAR "Amazon CloudWatch Logs": no resource type), the set CDK grants
    # for a state machine's `logs=`; the Step Functions guide ("IAM policies for logging to CloudWatch Logs")
    # grants exactly these on "*".
    "logs:createlogdelivery": "vended log delivery: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:getlogdelivery": "vended log delivery: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:updatelogdelivery": "vended log delivery: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:deletelogdelivery": "vended log delivery: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:listlogdeliveries": "vended log delivery: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:putresourcepolicy": "account-level log resource policy for the delivery: no resource type in SAR",
    "logs:describeresourcepolicies": "account-level listing: no resource type in SAR (Amazon CloudWatch Logs)",
    "logs:describeloggroups": "account-level listing: no resource type in the current SAR (older editions listed log-group)",
}
"""Actions that may be granted on ``Resource: "*"``, each because it has no resource-level permissions."""

SOURCE_INSTANCE_ARN = "${ec2:SourceInstanceARN}"
S3_SHAPES = {
    "objects": "${%s.Arn}/*",
    "bucket": "${%s.Arn}",
    "own prefix": "${%s.Arn}/instances/" + SOURCE_INSTANCE_ARN + "/*",
    "markers": "${%s.Arn}/markers/*",
}
"""What an S3 grant may name (``%s`` = the checkpoint bucket's logical id): the bucket's objects, the bucket, the
objects under the requesting instance's own prefix, the pipelines' marker prefix."""
S3_GRANTS: dict[str, dict[str, str]] = {
    # action: {holder: the one shape it may name}
    "s3:getobject": {"stack role": "objects", "instance policy": "own prefix"},
    "s3:getobjectversion": {"stack role": "objects", "instance policy": "own prefix"},  # Verify and the restore read versions
    "s3:listbucket": {"stack role": "bucket"},  # so that HeadObject of a missing marker is 404, not 403
    "s3:putobject": {"instance policy": "own prefix", "pipeline policy": "markers"},
    "s3:abortmultipartupload": {"instance policy": "own prefix"},
    "s3:listmultipartuploadparts": {"instance policy": "own prefix"},
    "s3:putbucketnotification": {"notifications handler": "bucket"},  # CDK's own handler turns on EventBridge
}
"""Every S3 action the stack may grant, by holder. Writes only through the two managed policies users attach to
their own roles (never to a role of this stack): an instance under its own prefix, a pipeline under markers/. No
delete, ACL or bucket-policy action at all."""
INSTANCE_POLICY_OUTPUT = "InstancePolicyArn"
PIPELINE_POLICY_OUTPUT = "PipelineMarkerPolicyArn"

PASS_ROLE_OK: dict[str, str] = {}
"""Role logical-id prefix -> why that role may pass a role. Empty: nothing in the stack passes a role."""

MANAGED_POLICIES_OK: dict[str, set[str]] = {CDK_NOTIFICATIONS_HANDLER: {"service-role/AWSLambdaBasicExecutionRole"}}
"""Role logical-id prefix -> the AWS managed policies it may carry: only CDK's notifications handler (its logs)."""


@pytest.fixture(scope="module")
def template(synthesized: Any) -> dict[str, Any]:
    return synthesized.raw


@pytest.fixture(scope="module")
def statements(template: dict[str, Any]) -> list[Statement]:
    return [s for s in build_model(template).statements if s.effect == "Allow"]


@pytest.fixture(scope="module")
def bucket(template: dict[str, Any]) -> str:
    return build_model(template).bucket


def granting(statements: list[Statement], action: str) -> list[Statement]:
    return [s for s in statements if allows(list(s.actions), action)]


def logical_ids_in(resource: str, template: dict[str, Any]) -> set[str]:
    """Logical ids of this template's resources that ``resource`` (rendered with ``flat``) names."""
    return set(re.findall(r"[A-Za-z][A-Za-z0-9]+", resource)) & set(template["Resources"])


def opt_in(condition: Mapping[str, Any] | None) -> Any:
    """The values the statement's ``StringEqualsIgnoreCase`` requires of the opt-in tag (None when absent)."""
    return ((condition or {}).get("StringEqualsIgnoreCase") or {}).get(OPT_IN_KEY)


def last_error_only(s: Statement) -> bool:
    """A tag write of ``<prefix>:last-error`` alone (CreateTags/DeleteTags, the key list required)."""
    condition = s.condition or {}
    keys = condition.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
    return (
        set(s.actions) <= {"ec2:createtags", "ec2:deletetags"}
        and keys in (f"{PREFIX}:{c.TAG_LAST_ERROR}", [f"{PREFIX}:{c.TAG_LAST_ERROR}"])
        and condition.get("Null", {}).get("aws:TagKeys") == "false"
    )


# --- instance actions: the opt-in tag, and only informational tags -----------------------------------------------


@pytest.mark.parametrize("action", INSTANCE_ACTIONS)
def test_every_grant_of_an_instance_action_requires_the_opt_in_tag(statements: list[Statement], action: str) -> None:
    grants = granting(statements, action)
    if action in REQUIRED_INSTANCE_ACTIONS:
        assert grants, f"no statement grants {action}: the proof would be vacuous"
    for s in grants:
        if action == "ssm:SendCommand" and all(DOCUMENT.fullmatch(r) for r in s.resources):
            continue  # the document half of SendCommand; documents carry no instance tag (next test)
        assert s.resources == (INSTANCES,), f"{s.policy}: {action} on {s.resources}, not only on instances"
        if last_error_only(s):  # the triggers' not-evaluated tag: on instances carrying the opt-in key, any value
            assert (s.condition or {}).get("Null", {}).get(OPT_IN_KEY) == "false", f"{s.policy}: {action} without {OPT_IN_KEY}"
            continue
        assert opt_in(s.condition) in ("true", ["true"]), f"{s.policy}: {action} without {OPT_IN_KEY} = true: {s.raw}"
        for operator in s.condition or {}:
            # An ...IfExists form of the same key would let an instance *without* the tag through.
            assert not (operator.endswith("IfExists") and OPT_IN_KEY in s.condition[operator]), (s.policy, operator)


@pytest.mark.parametrize("action", ["ec2:CreateTags", "ec2:DeleteTags"])
def test_tag_writes_only_touch_the_informational_tags(statements: list[Statement], action: str) -> None:
    grants = granting(statements, action)
    if not grants:
        pytest.skip(f"no statement grants {action} (yet)")
    allowed = {f"{PREFIX}:{name}" for name in INFORMATIONAL_TAGS}
    for s in grants:
        condition = s.condition or {}
        keys = condition.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
        assert keys, f"{s.policy}: {action} without ForAllValues:StringEquals aws:TagKeys: {s.raw}"
        keys = set(keys if isinstance(keys, list) else [keys])
        assert keys <= allowed, f"{s.policy}: {action} may write {sorted(keys - allowed)}"
        # ForAllValues is true when the request names no tag keys, and DeleteTags without Tags deletes *every*
        # tag of the instance: the key must be present.
        assert condition.get("Null", {}).get("aws:TagKeys") == "false", f"{s.policy}: {action} without Null aws:TagKeys = false"


def test_send_command_runs_only_the_stacks_own_documents(statements: list[Statement], template: dict[str, Any]) -> None:
    documents = set(of_type(template, "AWS::SSM::Document"))
    named: set[str] = set()
    for s in granting(statements, "ssm:SendCommand"):
        assert "*" not in s.resources, f"{s.policy}: SendCommand on '*'"
        docs = [r for r in s.resources if r != INSTANCES]
        assert not docs or len(docs) == len(s.resources), f"{s.policy}: documents and instances share a statement: {s.resources}"
        for r in docs:
            match = DOCUMENT.fullmatch(r)
            assert match, f"{s.policy}: SendCommand on {r} (not a document of this stack by Ref)"
            assert match["logical"] in documents, f"{s.policy}: SendCommand on {r}: not an AWS::SSM::Document of this stack"
            named.add(match["logical"])
    assert named, "no SendCommand statement names a document"


# --- resources: "*" only where AWS requires it, every other resource the stack's own ----------------------------


def test_wildcard_resource_only_with_actions_that_have_no_resource_level_permissions(statements: list[Statement]) -> None:
    for s in statements:
        if "*" in s.resources:
            extra = sorted(set(s.actions) - set(WILDCARD_OK))
            assert not extra, (
                f"{s.policy}: Resource '*' with {extra}; name the resource, or add the action to WILDCARD_OK with the SAR's reason"
            )


def test_every_other_resource_is_this_stacks_own_or_tag_guarded(statements: list[Statement], template: dict[str, Any]) -> None:
    for s in statements:
        for r in s.resources:
            if r == "*" or (r == INSTANCES and (opt_in(s.condition) or last_error_only(s))):
                continue
            if r == DEFAULT_BUS:  # PutEvents on the account's default bus, only events whose source is autostop's own
                assert s.actions == ("events:putevents",) and s.condition == {"StringEquals": {"events:source": "autostop"}}, s
                continue
            assert logical_ids_in(r, template), f"{s.policy}: {s.actions} on {r}, which is not a resource of this stack"


def test_every_partial_wildcard_in_a_resource_is_a_known_shape(statements: list[Statement], template: dict[str, Any], bucket: str) -> None:
    kinds = {logical: res["Type"] for logical, res in template["Resources"].items()}
    for s in statements:
        for r in s.resources:
            if "*" not in r or r == "*":
                continue
            shape = None
            if r == INSTANCES:
                shape = "tag-guarded instances" if opt_in(s.condition) or last_error_only(s) else None
            elif m := re.fullmatch(r"\$\{(\w+)\.Arn\}/\*", r):
                shape = "checkpoint objects" if m[1] == bucket else None
            elif r == S3_SHAPES["own prefix"] % bucket:
                shape = "the requesting instance's own prefix" if s.policy == output_policy(template, INSTANCE_POLICY_OUTPUT) else None
            elif r == S3_SHAPES["markers"] % bucket:
                shape = "pipeline markers" if s.policy == output_policy(template, PIPELINE_POLICY_OUTPUT) else None
            elif m := re.fullmatch(r"\$\{(\w+)\.Arn\}:\*", r):
                shape = "versions/aliases of a function" if kinds.get(m[1]) == "AWS::Lambda::Function" else None
            elif m := re.fullmatch(r"\$\{(\w+)\.Arn\}/index/\*", r):
                shape = "indexes of a table" if kinds.get(m[1]) == "AWS::DynamoDB::Table" else None
            elif r.startswith(ARN_HEAD % "states" + "execution:") and r.endswith(":*"):
                machines = logical_ids_in(r, template)
                shape = (
                    "executions of a state machine"
                    if machines and {kinds[x] for x in machines} == {"AWS::StepFunctions::StateMachine"}
                    else None
                )
            assert shape, f"{s.policy}: {s.actions} on {r}: a wildcard of no known shape"


def output_policy(template: dict[str, Any], output: str) -> str:
    """Logical id of the managed policy a stack output hands to users."""
    return ref(template["Outputs"][output]["Value"])


def s3_holder(s: Statement, template: dict[str, Any]) -> str:
    """Who holds ``s``: one of the two managed policies for users' roles, CDK's notifications handler, or a role of
    this stack (an unattached managed policy that is neither output is nobody's: "unknown")."""
    if s.policy == output_policy(template, INSTANCE_POLICY_OUTPUT):
        return "instance policy"
    if s.policy == output_policy(template, PIPELINE_POLICY_OUTPUT):
        return "pipeline policy"
    if s.roles and all(r.startswith(CDK_NOTIFICATIONS_HANDLER) for r in s.roles):
        return "notifications handler"
    return "stack role" if s.roles else "unknown"


def test_s3_only_on_the_checkpoint_bucket_and_its_objects(template: dict[str, Any], bucket: str) -> None:
    for policy in (output_policy(template, INSTANCE_POLICY_OUTPUT), output_policy(template, PIPELINE_POLICY_OUTPUT)):
        # Managed policies for users to attach to their own roles, attached to no principal of this stack.
        props = template["Resources"][policy]["Properties"]
        assert not any(props.get(k) for k in ("Roles", "Users", "Groups")), f"{policy} is attached to {props}"
    seen: set[str] = set()
    for s in build_model(template).statements:
        for action in (a for a in s.actions if a.startswith("s3:") or a == "*"):
            assert action in S3_GRANTS, f"{s.policy}: {action} is not an S3 action the stack may grant"
            holder = s3_holder(s, template)
            assert holder in S3_GRANTS[action], f"{s.policy}: {action} held by {holder}; allowed: {sorted(S3_GRANTS[action])}"
            expected = S3_SHAPES[S3_GRANTS[action][holder]] % bucket
            assert s.resources == (expected,), f"{s.policy}: {action} on {s.resources}, expected {expected}"
            seen.add(action)
    assert {"s3:getobject", "s3:putobject", "s3:getobjectversion"} <= seen


# --- one writer per prefix: the instance policy and the pipeline marker policy -----------------------------------


def _allow_statements(template: dict[str, Any], policy: str) -> list[Statement]:
    statements = [s for s in build_model(template).statements if s.policy == policy]
    assert statements, f"{policy} has no statement"
    for s in statements:
        assert s.effect == "Allow", f"{policy}: {s.raw}"
    return statements


def test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix(template: dict[str, Any], bucket: str) -> None:
    own = S3_SHAPES["own prefix"] % bucket
    granted: set[str] = set()
    for s in _allow_statements(template, output_policy(template, INSTANCE_POLICY_OUTPUT)):
        assert s.resources == (own,), f"instance policy: {s.actions} on {s.resources}, not only on {own}"
        granted |= set(s.actions)
        # Only the one condition that repeats what the variable already requires; never an ...IfExists operator,
        # which would let credentials without ec2:SourceInstanceARN through wherever the key is tested.
        assert s.condition in (None, {"Null": {"ec2:SourceInstanceARN": "false"}}), f"instance policy condition: {s.condition}"
        # The variable exactly, no default value ("${ec2:SourceInstanceARN, 'shared'}" would give every
        # non-instance principal one shared prefix) and no second variable.
        raw_resource = json.dumps(s.raw["Resource"])
        assert raw_resource.count("${") == 1 and SOURCE_INSTANCE_ARN in raw_resource, raw_resource
    assert granted == {a.lower() for a in INSTANCE_S3_ACTIONS}, f"instance policy grants {sorted(granted)}"
    assert granted == {"s3:putobject", "s3:getobject", "s3:getobjectversion", "s3:abortmultipartupload", "s3:listmultipartuploadparts"}


def test_the_preflight_document_is_granted_to_no_role_and_writes_only_what_the_instance_policy_allows(
    statements: list[Statement], template: dict[str, Any], bucket: str
) -> None:
    # The operator's CLI sends it (autostop preflight): no role of this stack may, and no grant was added for it.
    (preflight,) = [k for k in of_type(template, "AWS::SSM::Document") if k.startswith("DocumentsPreflight")]
    for s in granting(statements, "ssm:SendCommand"):
        assert not any(preflight in logical_ids_in(r, template) for r in s.resources), f"{s.policy} may send the preflight"
    # On the instance it puts one object under instances/<its ARN>/preflight/ (allowed) and tries one outside (refused);
    # it needs no delete, and the instance policy grants none.
    instance = _allow_statements(template, output_policy(template, INSTANCE_POLICY_OUTPUT))
    own = S3_SHAPES["own prefix"] % bucket
    assert any(allows(list(s.actions), "s3:PutObject") and s.resources == (own,) for s in instance)
    assert not any(allows(list(s.actions), "s3:DeleteObject") for s in instance)


def test_no_instance_statement_names_the_whole_bucket_or_any_resource(template: dict[str, Any], bucket: str) -> None:
    whole = {"*", S3_SHAPES["objects"] % bucket, S3_SHAPES["bucket"] % bucket, "arn:${AWS::Partition}:s3:::*"}
    for s in _allow_statements(template, output_policy(template, INSTANCE_POLICY_OUTPUT)):
        for r in s.resources:
            assert r not in whole, f"instance policy: {s.actions} on {r}"
            assert SOURCE_INSTANCE_ARN in r, f"instance policy: {s.actions} on {r}, not bound to the requesting instance"
            assert not allows(list(s.actions), "s3:ListBucket"), f"instance policy lists the bucket: {s.actions}"


def test_the_pipeline_policy_puts_only_markers(template: dict[str, Any], bucket: str) -> None:
    markers = S3_SHAPES["markers"] % bucket
    for s in _allow_statements(template, output_policy(template, PIPELINE_POLICY_OUTPUT)):
        assert s.actions == ("s3:putobject",), f"pipeline policy: {s.actions}"
        assert s.resources == (markers,), f"pipeline policy: PutObject on {s.resources}, not only on {markers}"


# --- SSM: CancelCommand / ListCommandInvocations, and every SendCommand pinned to a document version -------------

PROBE_SENDERS = ("evaluate_completion", "on_schedule_tick", "on_object_created")
UNSCOPABLE_SSM = ("ssm:CancelCommand", "ssm:ListCommandInvocations")
"""SAR, "Actions, resources, and condition keys for AWS Systems Manager": both list no resource type and no
condition key, so neither can carry the opt-in condition; the proof is who holds them instead."""


def test_cancel_and_list_commands_only_with_the_probe(template: dict[str, Any]) -> None:
    model = build_model(template)
    probe = model.doc_arn("probe")
    senders = {role for s in model.statements if s.effect == "Allow" and probe in s.resources for role in s.roles}
    assert {model.roles[h] for h in PROBE_SENDERS} <= senders
    for action in UNSCOPABLE_SSM:
        grants = [s for s in model.statements if s.effect == "Allow" and allows(list(s.actions), action)]
        assert grants, f"no statement grants {action}: the proof would be vacuous"
        for s in grants:
            assert s.roles and set(s.roles) <= senders, f"{s.policy}: {action} for {s.roles}, which send no probe"
            # Beside it only actions that also have no resource type, all on "*": no instance action rides along.
            assert s.resources == ("*",) and set(s.actions) <= set(WILDCARD_OK), f"{s.policy}: {s.actions} on {s.resources}"
        assert model.state_machine_role not in {r for s in grants for r in s.roles}


def _send_command_tasks(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    definition = resolve_definition(template, build_model(template).state_machine)
    return {n: st for n, st in definition["States"].items() if st.get("Resource", "").lower().endswith("aws-sdk:ssm:sendcommand")}


def test_the_state_machine_sends_no_command_itself(template: dict[str, Any]) -> None:
    # Commands go through the Send command function (its send_command call names the pinned version: the test below),
    # so the state machine's role holds no SendCommand at all.
    assert _send_command_tasks(template) == {}
    model = build_model(template)
    grants = [s for s in model.statements if model.state_machine_role in s.roles and allows(list(s.actions), "ssm:SendCommand")]
    assert grants == [], f"the state machine's role may send commands: {grants}"
    assert re.fullmatch(r"[1-9][0-9]*", PINNED_DOCUMENT_VERSION)


def test_each_document_is_named_by_its_content_so_version_1_is_this_content(template: dict[str, Any]) -> None:
    # The pinned version is "1": that is this template's content only if any other content is another document.
    documents = of_type(template, "AWS::SSM::Document")
    assert len(documents) == 4
    for logical, res in documents.items():
        props = res["Properties"]
        digest = hashlib.sha256(json.dumps([props["DocumentType"], props["DocumentFormat"], props["Content"]], sort_keys=True).encode())
        name = props.get("Name")
        assert isinstance(name, str) and name.endswith("-" + digest.hexdigest()[:20]), f"{logical}: Name {name!r} is not its content's"
        assert re.fullmatch(r"[A-Za-z0-9_.-]{3,128}", name) and not name.lower().startswith(("aws", "amazon", "amzn")), name


def _send_command_calls(path: Any) -> list[tuple[str, int, set[str]]]:
    calls = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "send_command":
            calls.append((str(path.relative_to(REPO)), node.lineno, {k.arg for k in node.keywords if k.arg}))
    return calls


def test_every_send_command_of_the_functions_names_a_pinned_version() -> None:
    from infra.constructs.documents import PINNED_DOCUMENT_VERSION
    from shared.constants import PINNED_DOCUMENT_VERSION as FUNCTIONS_VERSION

    calls = [call for path in sorted((REPO / "lambdas").rglob("*.py")) for call in _send_command_calls(path)]
    assert calls, "no send_command call found in lambdas/: the proof would be vacuous"
    for where, line, keywords in calls:
        assert "DocumentVersion" in keywords, f"{where}:{line}: send_command without DocumentVersion runs $DEFAULT"
    assert FUNCTIONS_VERSION == PINNED_DOCUMENT_VERSION  # the functions name the version the stack creates


def test_dynamodb_only_on_the_stacks_tables(statements: list[Statement], template: dict[str, Any]) -> None:
    tables = set(of_type(template, "AWS::DynamoDB::Table")) | set(of_type(template, "AWS::DynamoDB::GlobalTable"))
    grants = [s for s in statements if any(a.startswith("dynamodb:") for a in s.actions)]
    if not grants:
        pytest.skip("no DynamoDB grant (yet)")
    for s in grants:
        for r in s.resources:
            match = re.fullmatch(r"\$\{(\w+)\.Arn\}(/index/\*)?", r)
            assert match and match[1] in tables, f"{s.policy}: {s.actions} on {r}, not a table of this stack"


# --- roles and actions ------------------------------------------------------------------------------------------


def test_each_function_and_state_machine_has_a_role_of_its_own(template: dict[str, Any]) -> None:
    owners: dict[str, list[str]] = {}
    principal = {"AWS::Lambda::Function": "lambda.amazonaws.com", "AWS::StepFunctions::StateMachine": "states.amazonaws.com"}
    for kind, prop in (("AWS::Lambda::Function", "Role"), ("AWS::StepFunctions::StateMachine", "RoleArn")):
        for logical, res in of_type(template, kind).items():
            role = ref(res["Properties"][prop])
            owners.setdefault(role, []).append(logical)
            trust = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
            assert [st["Principal"] for st in trust] == [{"Service": principal[kind]}], f"{role} ({logical}) trusts {trust}"
    shared = {role: users for role, users in owners.items() if len(users) > 1}
    assert not shared, f"roles shared: {shared}"
    assert len(owners) >= 6


def test_no_role_can_pass_a_role_or_act_on_iam(statements: list[Statement]) -> None:
    for s in statements:
        if allows(list(s.actions), "iam:PassRole"):
            assert PASS_ROLE_OK and s.roles and all(r.startswith(tuple(PASS_ROLE_OK)) for r in s.roles), (
                f"{s.policy}: iam:PassRole for {s.roles}"
            )
        assert not [a for a in s.actions if a.startswith("iam:") and a != "iam:passrole"], f"{s.policy}: {s.actions}"


def test_no_wildcard_actions_anywhere(template: dict[str, Any]) -> None:
    resource_policies = ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy")
    documents = [(s.policy, s.raw) for s in build_model(template).statements]
    for kind in resource_policies:
        documents += [(k, st) for k, v in of_type(template, kind).items() for st in v["Properties"]["PolicyDocument"]["Statement"]]
    for policy, st in documents:
        if st["Effect"] != "Allow":
            continue  # a Deny s3:* (the SSL-only bucket policy) narrows, it grants nothing
        assert "NotAction" not in st and "NotResource" not in st, f"{policy}: {st}"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert not [a for a in actions if "*" in a], f"{policy}: wildcard action in {actions}"


def test_aws_managed_policies_only_on_cdks_notifications_handler(template: dict[str, Any]) -> None:
    for logical, res in of_type(template, "AWS::IAM::Role").items():
        arns = res["Properties"].get("ManagedPolicyArns", [])
        names = {flat(a).rsplit(":policy/", 1)[-1] for a in arns}
        allowed = next((ok for prefix, ok in MANAGED_POLICIES_OK.items() if logical.startswith(prefix)), set())
        assert names <= allowed, f"{logical}: AWS managed policies {sorted(names - allowed)}"


# --- the opt-in test in IAM and in the code agree -------------------------------------------------------------------


def template_opt_in_conditions(statements: list[Statement]) -> list[dict[str, Any]]:
    return [s.condition for s in statements for a in INSTANCE_ACTIONS if allows(list(s.actions), a) and opt_in(s.condition)]


def iam_opt_in(tags: Mapping[str, str], condition: Mapping[str, Any]) -> bool | None:
    """What ``StringEqualsIgnoreCase {aws:ResourceTag/<key>: <values>}`` decides for an instance with ``tags``.

    The tag key is matched ignoring case (IAM: "matches a resource tag key named either TagKey1 or tagkey1,
    but not both"), the value is compared ignoring case, nothing is trimmed. ``None`` when two tag keys differ
    only in case: AWS does not say which one IAM reads, so either answer is possible.
    """
    ((key, expected),) = condition["StringEqualsIgnoreCase"].items()
    tag_key = key.removeprefix("aws:ResourceTag/")
    values = [v for k, v in tags.items() if k.lower() == tag_key.lower()]
    if len(values) > 1:
        return None
    expected = expected if isinstance(expected, list) else [expected]
    return bool(values) and values[0].lower() in [e.lower() for e in expected]


def code_opt_in(tags: Mapping[str, str]) -> bool:
    """Whether the control plane would act on an instance with ``tags``: opted in *and* its tags valid (the same
    two steps as ``shared.evaluation`` and ``stop_instance``)."""
    from shared.tags import InvalidTags, TagPolicy, is_opted_in, parse_instance_config

    if not is_opted_in(tags, PREFIX):
        return False
    required = {f"{PREFIX}:{c.TAG_RUN_ID}": "run-1", f"{PREFIX}:{c.TAG_CHECKPOINT_DIR}": "/data/ckpt"}
    try:
        parse_instance_config("i-0123456789abcdef0", {**required, **tags}, TagPolicy(prefix=PREFIX, checkpoint_bucket="ckpt"))
    except InvalidTags:
        return False
    return True


KEY = f"{PREFIX}:{c.TAG_ENABLED}"
OPT_IN_VARIANTS: list[tuple[str, dict[str, str], bool, bool | None]] = [
    # (case, enabled tag(s), the code acts, IAM allows)
    ("exact", {KEY: "true"}, True, True),
    ("value upper case", {KEY: "TRUE"}, True, True),
    ("value mixed case", {KEY: "tRuE"}, True, True),
    ("leading space", {KEY: " true"}, False, False),
    ("trailing space", {KEY: "true "}, False, False),
    ("trailing newline", {KEY: "true\n"}, False, False),
    ("inner space", {KEY: "t rue"}, False, False),
    ("yes", {KEY: "yes"}, False, False),
    ("one", {KEY: "1"}, False, False),
    ("empty", {KEY: ""}, False, False),
    ("false", {KEY: "false"}, False, False),
    ("full-width letters", {KEY: "\uff54\uff52\uff55\uff45"}, False, False),
    ("Cyrillic e", {KEY: "tru\u0435"}, False, False),
    ("zero-width space", {KEY: "true\u200b"}, False, False),
    ("no tag", {}, False, False),
    # IAM ignores the key's case; the code insists on the exact key (README "Tags"), so it acts on fewer.
    ("key prefix capitalised", {f"{PREFIX.capitalize()}:{c.TAG_ENABLED}": "true"}, False, True),
    ("key upper case", {KEY.upper(): "true"}, False, True),
    ("key name capitalised", {f"{PREFIX}:{c.TAG_ENABLED.capitalize()}": "true"}, False, True),
    ("key with trailing space", {KEY + " ": "true"}, False, False),
    ("other prefix", {f"{PREFIX}2:{c.TAG_ENABLED}": "true"}, False, False),
    # Two keys that differ only in case: IAM may read either; the code refuses the case variant outright.
    ("exact and case variant agree", {KEY: "true", KEY.upper(): "true"}, False, None),
    ("exact true, case variant false", {KEY: "true", KEY.upper(): "false"}, False, None),
    ("exact false, case variant true", {KEY: "false", KEY.upper(): "true"}, False, None),
]


@pytest.fixture(scope="module")
def opt_in_condition(statements: list[Statement]) -> dict[str, Any]:
    conditions = template_opt_in_conditions(statements)
    assert conditions
    distinct = {repr(cond["StringEqualsIgnoreCase"]) for cond in conditions}
    assert len(distinct) == 1, f"the template guards instances with different opt-in conditions: {distinct}"
    return {"StringEqualsIgnoreCase": conditions[0]["StringEqualsIgnoreCase"]}


def test_the_templates_opt_in_condition_is_the_codes_key_and_value(opt_in_condition: dict[str, Any]) -> None:
    from shared.tags import TRUE_VALUES

    assert opt_in_condition == {"StringEqualsIgnoreCase": {OPT_IN_KEY: "true"}}
    assert TRUE_VALUES == ("true",)


@pytest.mark.parametrize(("case", "tags", "code", "iam"), OPT_IN_VARIANTS, ids=[v[0] for v in OPT_IN_VARIANTS])
def test_the_code_acts_only_on_instances_iam_lets_it_act_on(
    opt_in_condition: dict[str, Any], case: str, tags: dict[str, str], code: bool, iam: bool | None
) -> None:
    decided = (code_opt_in(tags), iam_opt_in(tags, opt_in_condition))
    assert decided == (code, iam), f"{case}: (code, IAM) = {decided}"
    if decided[0]:
        assert decided[1] is True, f"{case}: the code would act on an instance IAM may refuse"


def test_no_non_ascii_character_lowercases_into_the_opt_in_value() -> None:
    # The code compares str.lower() with "true"; IAM's case folding is not specified beyond "ignoring case". No
    # character outside "trueTRUE" lower-cases into t, r, u or e, so the code accepts only ASCII spellings of true,
    # which any case-insensitive comparison accepts too.
    odd = [hex(i) for i in range(sys.maxunicode + 1) if chr(i) not in "trueTRUE" and chr(i).lower() in ("t", "r", "u", "e")]
    assert not odd


# --- the proofs are not vacuous: each rejects a template with one bad grant added --------------------------------


def _arn(service: str, rest: str, *, region: bool = True) -> dict[str, Any]:
    parts: list[Any] = ["arn:", {"Ref": "AWS::Partition"}, f":{service}:"]
    parts += [{"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"}, ":"] if region else ["::", {"Ref": "AWS::AccountId"}, ":"]
    return {"Fn::Join": ["", [*parts, rest]]}


def _bad_grant(action: str | list[str], resource: Any, condition: dict[str, Any] | None = None) -> Callable[[dict[str, Any]], None]:
    """A mutation: a new policy on the stop function's role granting ``action`` on ``resource``."""

    def mutate(raw: dict[str, Any]) -> None:
        model = build_model(raw)
        role = model.roles["stop_instance"]
        resolved = json.loads(json.dumps(resource).replace('"BUCKET"', json.dumps(model.bucket)))  # "BUCKET": the checkpoint bucket
        statement = {"Effect": "Allow", "Action": action, "Resource": resolved, **({"Condition": condition} if condition else {})}
        raw["Resources"]["MutantPolicy"] = {
            "Type": "AWS::IAM::Policy",
            "Properties": {"PolicyName": "mutant", "Roles": [{"Ref": role}], "PolicyDocument": {"Statement": [statement]}},
        }

    return mutate


def _state_machine_sends(raw: dict[str, Any]) -> None:
    """A mutation: a policy on the state machine's role granting SendCommand (as before the commands moved into Send command)."""
    role = build_model(raw).state_machine_role
    statement = {"Effect": "Allow", "Action": "ssm:SendCommand", "Resource": "*"}
    raw["Resources"]["MutantPolicy"] = {
        "Type": "AWS::IAM::Policy",
        "Properties": {"PolicyName": "mutant", "Roles": [{"Ref": role}], "PolicyDocument": {"Statement": [statement]}},
    }


def _share_a_role(raw: dict[str, Any]) -> None:
    model = build_model(raw)
    raw["Resources"][model.functions["verify_checkpoint"]]["Properties"]["Role"] = {"Fn::GetAtt": [model.roles["stop_instance"], "Arn"]}


def _objects(suffix: str) -> dict[str, Any]:
    return {"Fn::Join": ["", [{"Fn::GetAtt": ["BUCKET", "Arn"]}, suffix]]}


def _edit_policy(output: str, edit: Callable[[list[dict[str, Any]]], None]) -> Callable[[dict[str, Any]], None]:
    """A mutation: ``edit`` changes the statements of the managed policy a stack output names ("BUCKET" in what it
    adds = the checkpoint bucket)."""

    def mutate(raw: dict[str, Any]) -> None:
        bucket = build_model(raw).bucket
        document = raw["Resources"][output_policy(raw, output)]["Properties"]["PolicyDocument"]
        edit(document["Statement"])
        document["Statement"] = json.loads(json.dumps(document["Statement"]).replace('"BUCKET"', json.dumps(bucket)))

    return mutate


def _add_statement(output: str, action: str | list[str], resource: Any) -> Callable[[dict[str, Any]], None]:
    return _edit_policy(output, lambda sts: sts.append({"Effect": "Allow", "Action": action, "Resource": resource}))


def _set_first(output: str, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return _edit_policy(output, lambda sts: sts[0].update(fields))


def _edit_definition(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    """A mutation: replace ``old`` by ``new`` in the state machine's definition text (every occurrence)."""

    def mutate(raw: dict[str, Any]) -> None:
        props = raw["Resources"][build_model(raw).state_machine]["Properties"]
        definition = props["DefinitionString"]
        if isinstance(definition, str):
            assert old in definition
            props["DefinitionString"] = definition.replace(old, new)
            return
        parts = definition["Fn::Join"][1]
        assert any(isinstance(part, str) and old in part for part in parts), f"{old!r} not in the definition"
        definition["Fn::Join"][1] = [part.replace(old, new) if isinstance(part, str) else part for part in parts]

    return mutate


def _probe_statement_also_sends(raw: dict[str, Any]) -> None:
    for res in of_type(raw, "AWS::IAM::Policy").values():
        for st in res["Properties"]["PolicyDocument"]["Statement"]:
            if st.get("Sid") == "ReadProbeResults":
                st["Action"] = [*st["Action"], "ssm:SendCommand"]


def _change_document_content(raw: dict[str, Any]) -> None:
    (doc,) = (res for logical, res in of_type(raw, "AWS::SSM::Document").items() if "Checkpoint" in logical)
    doc["Properties"]["Content"]["description"] += " (changed after the name was taken)"


PINNED = f'"DocumentVersion":"{PINNED_DOCUMENT_VERSION}"'
OPT_IN = {"StringEqualsIgnoreCase": {OPT_IN_KEY: "true"}}
TAG_KEYS = {"ForAllValues:StringEquals": {"aws:TagKeys": [f"{PREFIX}:state"]}}
MUTANTS: list[tuple[str, Callable[[dict[str, Any]], None], Callable[..., None], dict[str, Any]]] = [
    (
        "stop without the tag",
        _bad_grant("ec2:StopInstances", _arn("ec2", "instance/*")),
        test_every_grant_of_an_instance_action_requires_the_opt_in_tag,
        {"action": "ec2:StopInstances"},
    ),
    (
        "ec2:* on *",
        _bad_grant("ec2:*", "*"),
        test_every_grant_of_an_instance_action_requires_the_opt_in_tag,
        {"action": "ec2:TerminateInstances"},
    ),
    (
        "opt-in as IfExists",
        _bad_grant("ec2:StartInstances", _arn("ec2", "instance/*"), {"StringEqualsIgnoreCaseIfExists": {OPT_IN_KEY: "true"}}),
        test_every_grant_of_an_instance_action_requires_the_opt_in_tag,
        {"action": "ec2:StartInstances"},
    ),
    (
        "CreateTags of any key",
        _bad_grant("ec2:CreateTags", _arn("ec2", "instance/*"), OPT_IN),
        test_tag_writes_only_touch_the_informational_tags,
        {"action": "ec2:CreateTags"},
    ),
    (
        "CreateTags of the opt-in key",
        _bad_grant(
            "ec2:CreateTags",
            _arn("ec2", "instance/*"),
            {**OPT_IN, "ForAllValues:StringEquals": {"aws:TagKeys": [KEY]}, "Null": {"aws:TagKeys": "false"}},
        ),
        test_tag_writes_only_touch_the_informational_tags,
        {"action": "ec2:CreateTags"},
    ),
    (
        "DeleteTags without the Null check",
        _bad_grant("ec2:DeleteTags", _arn("ec2", "instance/*"), {**OPT_IN, **TAG_KEYS}),
        test_tag_writes_only_touch_the_informational_tags,
        {"action": "ec2:DeleteTags"},
    ),
    (
        "an AWS-owned document",
        _bad_grant("ssm:SendCommand", _arn("ssm", "document/AWS-RunShellScript")),
        test_send_command_runs_only_the_stacks_own_documents,
        {},
    ),
    (
        "GetObject on *",
        _bad_grant("s3:GetObject", "*"),
        test_wildcard_resource_only_with_actions_that_have_no_resource_level_permissions,
        {},
    ),
    (
        "another bucket",
        _bad_grant("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/*"),
        test_every_other_resource_is_this_stacks_own_or_tag_guarded,
        {},
    ),
    (
        "DeleteObject",
        _bad_grant("s3:DeleteObject", {"Fn::Join": ["", [{"Fn::GetAtt": ["BUCKET", "Arn"]}, "/*"]]}),
        test_s3_only_on_the_checkpoint_bucket_and_its_objects,
        {},
    ),
    (
        "all functions' versions",
        _bad_grant("lambda:InvokeFunction", _arn("lambda", "function:*")),
        test_every_partial_wildcard_in_a_resource_is_a_known_shape,
        {},
    ),
    (
        "a table not of this stack",
        _bad_grant("dynamodb:GetItem", _arn("dynamodb", "table/other")),
        test_dynamodb_only_on_the_stacks_tables,
        {},
    ),
    ("PassRole", _bad_grant("iam:PassRole", "*"), test_no_role_can_pass_a_role_or_act_on_iam, {}),
    ("s3:Get*", _bad_grant("s3:Get*", {"Fn::GetAtt": ["BUCKET", "Arn"]}), test_no_wildcard_actions_anywhere, {}),
    ("a shared role", _share_a_role, test_each_function_and_state_machine_has_a_role_of_its_own, {}),
    # one writer per prefix
    (
        "instance policy on the bucket's objects",
        _set_first(INSTANCE_POLICY_OUTPUT, Resource=_objects("/*")),
        test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix,
        {},
    ),
    (
        "instance policy on every instance's prefix",
        _set_first(INSTANCE_POLICY_OUTPUT, Resource=_objects("/instances/*")),
        test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix,
        {},
    ),
    (
        "instance prefix with a default value",
        _set_first(INSTANCE_POLICY_OUTPUT, Resource=_objects("/instances/${ec2:SourceInstanceARN, 'shared'}/*")),
        test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix,
        {},
    ),
    (
        "instance prefix bound by IfExists",
        _set_first(INSTANCE_POLICY_OUTPUT, Condition={"ArnLikeIfExists": {"ec2:SourceInstanceARN": "*"}}),
        test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix,
        {},
    ),
    (
        "instance DeleteObject",
        _edit_policy(INSTANCE_POLICY_OUTPUT, lambda sts: sts[0]["Action"].append("s3:DeleteObject")),
        test_the_instance_policy_writes_and_reads_only_its_own_instance_prefix,
        {},
    ),
    (
        "instance statement on *",
        _add_statement(INSTANCE_POLICY_OUTPUT, "s3:GetObject", "*"),
        test_no_instance_statement_names_the_whole_bucket_or_any_resource,
        {},
    ),
    (
        "instance statement on the bucket's objects",
        _add_statement(INSTANCE_POLICY_OUTPUT, "s3:PutObject", _objects("/*")),
        test_no_instance_statement_names_the_whole_bucket_or_any_resource,
        {},
    ),
    (
        "instance ListBucket",
        _add_statement(INSTANCE_POLICY_OUTPUT, "s3:ListBucket", {"Fn::GetAtt": ["BUCKET", "Arn"]}),
        test_no_instance_statement_names_the_whole_bucket_or_any_resource,
        {},
    ),
    (
        "pipeline on the bucket's objects",
        _set_first(PIPELINE_POLICY_OUTPUT, Resource=_objects("/*")),
        test_the_pipeline_policy_puts_only_markers,
        {},
    ),
    (
        "pipeline reads markers",
        _set_first(PIPELINE_POLICY_OUTPUT, Action=["s3:PutObject", "s3:GetObject"]),
        test_the_pipeline_policy_puts_only_markers,
        {},
    ),
    (
        "pipeline writes instance prefixes",
        _set_first(PIPELINE_POLICY_OUTPUT, Resource=_objects("/instances/*")),
        test_s3_only_on_the_checkpoint_bucket_and_its_objects,
        {},
    ),
    # SSM
    ("CancelCommand for the stop function", _bad_grant("ssm:CancelCommand", "*"), test_cancel_and_list_commands_only_with_the_probe, {}),
    (
        "ListCommandInvocations for the stop function",
        _bad_grant("ssm:ListCommandInvocations", "*"),
        test_cancel_and_list_commands_only_with_the_probe,
        {},
    ),
    ("SendCommand on * beside CancelCommand", _probe_statement_also_sends, test_cancel_and_list_commands_only_with_the_probe, {}),
    ("the state machine's role may send commands", _state_machine_sends, test_the_state_machine_sends_no_command_itself, {}),
    (
        "a document's content changed under its name",
        _change_document_content,
        test_each_document_is_named_by_its_content_so_version_1_is_this_content,
        {},
    ),
]


@pytest.mark.parametrize(("case", "mutate", "proof", "extra"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_each_proof_rejects_a_bad_grant(
    template: dict[str, Any], case: str, mutate: Callable[[dict[str, Any]], None], proof: Callable[..., None], extra: dict[str, Any]
) -> None:
    raw = copy.deepcopy(template)
    mutate(raw)
    model = build_model(raw)
    available = {"template": raw, "statements": [s for s in model.statements if s.effect == "Allow"], "bucket": model.bucket, **extra}
    kwargs = {name: available[name] for name in inspect.signature(proof).parameters}
    with pytest.raises(AssertionError):
        proof(**kwargs)


def test_a_well_formed_tag_write_grant_passes_every_proof(template: dict[str, Any]) -> None:
    # The shape a grant of the informational tags must take (what the proofs above accept).
    condition = {**OPT_IN, **TAG_KEYS, "Null": {"aws:TagKeys": "false"}}
    raw = copy.deepcopy(template)
    _bad_grant(["ec2:CreateTags", "ec2:DeleteTags"], _arn("ec2", "instance/*"), condition)(raw)
    model = build_model(raw)
    statements = [s for s in model.statements if s.effect == "Allow"]
    for action in ("ec2:CreateTags", "ec2:DeleteTags"):
        test_every_grant_of_an_instance_action_requires_the_opt_in_tag(statements, action)
        test_tag_writes_only_touch_the_informational_tags(statements, action)
    test_every_other_resource_is_this_stacks_own_or_tag_guarded(statements, raw)
    test_every_partial_wildcard_in_a_resource_is_a_known_shape(statements, raw, model.bucket)
    test_wildcard_resource_only_with_actions_that_have_no_resource_level_permissions(statements)


def test_an_existing_bucket_gets_the_same_per_instance_prefix() -> None:
    # checkpoint_bucket = <name>: the bucket is imported, its ARN a literal; synthesis (cdk-nag included) must pass
    # and the two user policies keep their shapes (regression: the nag acknowledgement once needed a created bucket).
    from local.deploy import synthesize

    raw = synthesize({"checkpoint_bucket": "existing-ckpt-bucket"}, use_cache=False)
    arn = "arn:${AWS::Partition}:s3:::existing-ckpt-bucket"
    shapes = {
        INSTANCE_POLICY_OUTPUT: (arn + "/instances/" + SOURCE_INSTANCE_ARN + "/*", {a.lower() for a in INSTANCE_S3_ACTIONS}),
        PIPELINE_POLICY_OUTPUT: (arn + "/markers/*", {"s3:putobject"}),
    }
    every = list(_statements(raw))  # build_model wants a created bucket
    for output, (resource, actions) in shapes.items():
        statements = [s for s in every if s.policy == output_policy(raw, output)]
        assert statements and all(s.resources == (resource,) for s in statements), [s.resources for s in statements]
        assert {a for s in statements for a in s.actions} == actions
