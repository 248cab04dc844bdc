"""``autostop preflight INSTANCE``: would a stop of INSTANCE succeed now? Each prerequisite, checked, with what to do.

Two halves:

* the control plane's view (no document): the instance exists and runs, is opted in, its tags parse as the
  Lambdas parse them (:func:`shared.tags.parse_instance_config` with the deployment's settings), the tagged action
  can be carried out, its SSM agent is online and at least :data:`MIN_AGENT_VERSION`, an instance profile is
  associated;
* the instance's view: the stack's preflight document (``infra/documents/preflight.sh``), sent with SendCommand
  and followed with GetCommandInvocation: the AWS CLI and python3, the instance's credentials, a test write under
  its own prefix (its VersionId), a write outside that prefix that must be refused, the checkpoint the
  checkpoint command would choose now and why, and the trainer named by the PID file.

Exit status 0 only when every check passed (skipped checks do not count against it), 1 otherwise.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from autostop_cli.output import emit_json
from autostop_cli.target import AwsContext, TargetError, describe_stack_outputs, pass_aws, read_outputs_file, target_options
from shared import constants as c
from shared.evaluation import tag_policy
from shared.instances import action_refusal, describe_instance
from shared.models import InstanceConfig, InstanceSnapshot
from shared.probe import last_json_line
from shared.tags import InvalidTags, TagPolicy, is_opted_in, parse_instance_config

MIN_AGENT_VERSION = "3.3.2746.0"
"""The documents pass parameters as environment variables (``interpolationType: ENV_VAR``) from this agent on."""
OUTPUT_KEY = "PreflightDocument"
"""The stack output (infra/stack.py) naming the preflight document."""
INSTANCE_CHECKS = ("aws_cli", "python3", "credentials", "own_prefix", "isolation", "checkpoint", "trainer")
"""The document's checks, in the order they are shown."""
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "Cancelling", "DeliveryTimedOut", "Undeliverable", "Terminated"}


@dataclass
class Check:
    """One prerequisite: ``status`` pass, fail or skip, and a sentence a user can act on."""

    name: str
    status: str
    message: str
    where: str = "control plane"
    details: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def version_tuple(text: str) -> tuple[int, ...] | None:
    """``"3.3.2746.0"`` as ``(3, 3, 2746, 0)``; None when it is not dotted whole numbers."""
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9}){0,5}", text or ""):
        return None
    return tuple(int(part) for part in text.split("."))


def agent_version_ok(version: str, minimum: str = MIN_AGENT_VERSION) -> bool | None:
    """Is ``version`` at least ``minimum``, compared number by number (3.3.10 > 3.3.9)? None when unreadable."""
    have, need = version_tuple(version), version_tuple(minimum)
    if have is None or need is None:
        return None
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def preflight_document(aws: AwsContext) -> str:
    """The preflight document's name: the stack output ``PreflightDocument``.

    Raises:
        TargetError: the stack (or outputs file) has no such output (a deployment older than the command).
    """
    target = aws.target
    if aws.outputs is not None:
        _, outputs = read_outputs_file(aws.outputs, aws.stack)
    else:
        outputs = describe_stack_outputs(aws.client("cloudformation"), target.stack_name)
    name = outputs.get(OUTPUT_KEY)
    if not name:
        raise TargetError(f"stack {target.stack_name!r} has no output {OUTPUT_KEY}: deploy the current stack first (or pass --document)")
    return name


# --- the control plane's view -------------------------------------------------------------------------------


def agent_information(ssm: Any, instance_id: str) -> dict[str, Any] | None:
    """DescribeInstanceInformation of one instance, or None when SSM does not know it (never registered)."""
    resp = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
    for info in resp.get("InstanceInformationList", []):
        if info.get("InstanceId") == instance_id:
            return dict(info)
    return None


def profile_check(ec2: Any, instance_id: str) -> Check:
    """An instance profile associated (DescribeIamInstanceProfileAssociations)."""
    try:
        resp = ec2.describe_iam_instance_profile_associations(Filters=[{"Name": "instance-id", "Values": [instance_id]}])
    except (ClientError, BotoCoreError) as exc:
        return Check("instance_profile", "fail", f"cannot read the instance's profile association ({exc})")
    live = [a for a in resp.get("IamInstanceProfileAssociations", []) if a.get("State") in ("associated", "associating")]
    if not live:
        return Check(
            "instance_profile",
            "fail",
            "no instance profile is associated: the agent and the checkpoint upload have no credentials. Associate one whose "
            "role has AmazonSSMManagedInstanceCore and the stack's InstancePolicyArn (aws ec2 associate-iam-instance-profile)",
        )
    arn = live[0].get("IamInstanceProfile", {}).get("Arn", "unknown")
    return Check("instance_profile", "pass", f"instance profile {arn} is associated", details={"arn": arn})


def agent_checks(ssm: Any, instance_id: str) -> list[Check]:
    """``ssm_agent`` (registered and Online) and ``agent_version`` (at least :data:`MIN_AGENT_VERSION`)."""
    try:
        info = agent_information(ssm, instance_id)
    except (ClientError, BotoCoreError) as exc:
        return [Check("ssm_agent", "fail", f"cannot read the SSM agent's status ({exc})"), Check("agent_version", "skip", "not known")]
    if info is None:
        return [
            Check(
                "ssm_agent",
                "fail",
                "the instance is not registered with Systems Manager: install and start the SSM agent, and give the instance "
                "profile's role AmazonSSMManagedInstanceCore",
            ),
            Check("agent_version", "skip", "not known: the agent is not registered"),
        ]
    ping = info.get("PingStatus", "Unknown")
    if ping == "Online":
        agent = Check("ssm_agent", "pass", "the SSM agent is online")
    else:
        agent = Check(
            "ssm_agent",
            "fail",
            f"the SSM agent is not online (PingStatus {ping}): start it (systemctl start amazon-ssm-agent) and check that the "
            "instance reaches the SSM endpoints; no document can run until it is online",
        )
    version = str(info.get("AgentVersion", ""))
    ok = agent_version_ok(version)
    if ok is None:
        return [agent, Check("agent_version", "fail", f"the SSM agent reports no readable version ({version!r}): update the agent")]
    if not ok:
        return [
            agent,
            Check(
                "agent_version",
                "fail",
                f"SSM Agent {version} is older than {MIN_AGENT_VERSION}, which the documents need (parameters as environment "
                "variables): update it (AWS-UpdateSSMAgent)",
                details={"version": version},
            ),
        ]
    return [agent, Check("agent_version", "pass", f"SSM Agent {version} (>= {MIN_AGENT_VERSION})", details={"version": version})]


def tag_checks(ec2: Any, snap: InstanceSnapshot, policy: TagPolicy) -> tuple[list[Check], InstanceConfig | None]:
    """``opted_in``, ``tags`` and ``action``; the parsed configuration when the tags are valid."""
    p = policy.prefix
    checks = []
    if is_opted_in(snap.tags, p):
        checks.append(Check("opted_in", "pass", f"{p}:{c.TAG_ENABLED} is true"))
    else:
        value = snap.tags.get(f"{p}:{c.TAG_ENABLED}")
        shown = "missing" if value is None else f"{value!r}"
        checks.append(Check("opted_in", "fail", f"not opted in: {p}:{c.TAG_ENABLED} is {shown}; tag it true (autostop tag)"))
    try:
        config = parse_instance_config(snap.instance_id, snap.tags, policy)
    except InvalidTags as exc:
        problems = [q for q in exc.problems if not q.startswith(f"{p}:{c.TAG_ENABLED} ")] or exc.problems
        checks.append(Check("tags", "fail", "the autostop tags do not parse, so the instance is skipped: " + "; ".join(problems)))
        checks.append(Check("action", "skip", "not checked: the tags do not parse"))
        return checks, None
    summary = f"run {config.run_id}, checkpoint-dir {config.checkpoint_dir}, action {config.action}"
    checks.append(Check("tags", "pass", f"the tags parse: {summary}"))
    try:
        refusal = action_refusal(ec2, snap, config)
    except (ClientError, BotoCoreError) as exc:
        refusal = f"cannot tell whether the action can be carried out ({exc})"
    if refusal:
        checks.append(Check("action", "fail", refusal))
    else:
        checks.append(Check("action", "pass", f"EC2 allows the tagged action ({config.action}) on this instance"))
    return checks, config


# --- the instance's view: the preflight document ----------------------------------------------------------------


def document_parameters(config: InstanceConfig, policy: TagPolicy) -> dict[str, list[str]]:
    """SendCommand ``Parameters`` of the preflight document (every value also checked by its allowedPattern)."""
    return {
        "Bucket": [policy.checkpoint_bucket],
        "InstancePrefix": [policy.instance_prefix(config.instance_id)],
        "CheckpointDir": [config.checkpoint_dir],
        "PidFile": [config.pid_file or ""],
        "SaveOnSignal": ["true" if config.save_on_signal else "false"],
    }


def run_document(
    ssm: Any, document: str, instance_id: str, parameters: dict[str, list[str]], *, timeout: float, poll: float = 1.0
) -> dict[str, Any]:
    """SendCommand, then GetCommandInvocation until the invocation ends. Returns the invocation (Status,
    StandardOutputContent, ...); Status ``TimedOut`` (ours) when it has not ended within ``timeout`` seconds."""
    resp = ssm.send_command(
        InstanceIds=[instance_id],
        DocumentName=document,
        DocumentVersion=c.PINNED_DOCUMENT_VERSION,
        Parameters=parameters,
        TimeoutSeconds=max(30, int(timeout)),
        Comment="autostop preflight",
    )
    command_id = resp["Command"]["CommandId"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":  # not yet, right after SendCommand
                raise
            inv = {"Status": "Pending"}
        if inv.get("Status") in TERMINAL:
            return dict(inv, CommandId=command_id)
        if time.monotonic() >= deadline:
            with contextlib.suppress(ClientError, BotoCoreError):
                ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
            return dict(inv, Status="TimedOut", CommandId=command_id, StatusDetails=f"no answer within {timeout:g} s")
        time.sleep(poll)


def instance_checks(invocation: dict[str, Any]) -> list[Check]:
    """The document's checks from its result line; a ``document`` failure when there is none."""
    out = invocation.get("StandardOutputContent") or ""
    status = invocation.get("Status")
    line = last_json_line(out)
    where = "instance"
    if line and line.get("preflight") == 1 and isinstance(line.get("checks"), list):
        checks = []
        for raw in line["checks"]:
            extra = {k: v for k, v in raw.items() if k not in ("name", "status", "message")}
            checks.append(Check(str(raw.get("name")), str(raw.get("status")), str(raw.get("message")), where, extra or None))
        order = {name: i for i, name in enumerate(INSTANCE_CHECKS)}
        checks.sort(key=lambda ch: order.get(ch.name, len(order)))
        return [Check("document", "pass", f"the preflight document ran (command {invocation.get('CommandId')})", where), *checks]
    if line and line.get("result") == "failed":
        why = f"{line.get('error')}: {line.get('message')}"
    elif status == "DeliveryTimedOut":
        why = "the command was never delivered: the SSM agent did not pick it up (offline, or no route to the SSM endpoints)"
    elif status == "TimedOut":
        why = f"the command did not finish ({invocation.get('StatusDetails') or 'timed out'})"
    else:
        err = (invocation.get("StandardErrorContent") or "").strip().splitlines()[-3:]
        why = f"the command ended {status} without a result line" + (f": {' | '.join(err)}" if err else "")
    return [Check("document", "fail", f"the preflight document did not report: {why}", where)]


# --- the command -------------------------------------------------------------------------------------------------


def run_preflight(aws: AwsContext, instance_id: str, *, document: str | None, timeout: float) -> list[Check]:
    """Every check, in order; later checks are skipped (with the reason) when an earlier one makes them moot."""
    target = aws.target
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    snap = describe_instance(ec2, instance_id)
    if snap is None:
        return [Check("instance", "fail", f"instance {instance_id} does not exist in {target.region} (account {target.account})")]
    checks = [Check("instance", "pass", f"instance {instance_id} exists in {target.region}")]
    if snap.state == "running":
        checks.append(Check("running", "pass", "the instance is running"))
    else:
        checks.append(Check("running", "fail", f"the instance is {snap.state}: only a running instance is evaluated and stopped"))
    policy = tag_policy(target.settings)
    tag_results, config = tag_checks(ec2, snap, policy)
    checks += tag_results
    agent = agent_checks(ssm, instance_id)
    checks += agent
    checks.append(profile_check(ec2, instance_id))
    blockers = [ch.name for ch in checks if ch.failed and ch.name in ("running", "tags", "ssm_agent", "agent_version")]
    if config is None or blockers:
        why = ", ".join(blockers) or "tags"
        skipped = f"not checked on the instance: fix {why} first"
        checks += [Check(name, "skip", skipped, "instance") for name in ("document", *INSTANCE_CHECKS)]
        return checks
    try:
        name = document or preflight_document(aws)
        invocation = run_document(ssm, name, instance_id, document_parameters(config, policy), timeout=timeout)
    except (ClientError, BotoCoreError) as exc:
        return [*checks, Check("document", "fail", f"SendCommand of the preflight document failed: {exc}", "instance")]
    return checks + instance_checks(invocation)


MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


@click.command("preflight")
@click.argument("instance_id", metavar="INSTANCE")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--timeout", type=click.FloatRange(10, 3600), default=180, show_default=True, help="Seconds to wait for the document.")
@click.option("--document", default=None, help="Preflight document name [default: the stack output PreflightDocument].")
@target_options
@pass_aws
def preflight(aws: AwsContext, instance_id: str, as_json: bool, timeout: float, document: str | None) -> None:
    """Would a stop of INSTANCE succeed now? Checks every prerequisite and says what to fix.

    From here: the instance runs, is opted in, its tags parse, the tagged action is possible, its SSM agent is
    online and recent enough, an instance profile is associated. On the instance (the stack's preflight
    document, read-only but for one small test object under the instance's own S3 prefix): the AWS CLI and
    python3, its credentials, a write under its own prefix (VersionId), a write outside it that must be refused,
    the checkpoint that would be chosen now and why, and the trainer named by the PID file.

    Exit 0 only when no check failed; 1 otherwise.
    """
    checks = run_preflight(aws, instance_id, document=document, timeout=timeout)
    failed = [ch.name for ch in checks if ch.failed]
    if as_json:
        emit_json({"instance_id": instance_id, "ok": not failed, "failed": failed, "checks": [asdict(ch) for ch in checks]})
    else:
        width = max(len(ch.name) for ch in checks)
        for ch in checks:
            click.echo(f"{MARK.get(ch.status, ch.status.upper()):4}  {ch.name.ljust(width)}  {ch.message}")
        if failed:
            click.echo(f"\na stop of {instance_id} would not succeed: {len(failed)} check(s) failed ({', '.join(failed)})")
        else:
            click.echo(f"\nevery check passed: a stop of {instance_id} would succeed now")
    sys.exit(1 if failed else 0)
