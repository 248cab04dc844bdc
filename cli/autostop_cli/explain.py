"""``autostop explain``: what a sweep would decide for one instance now, and why, without acting.

The steps are those of :meth:`shared.evaluation.Evaluator.evaluate` for one instance (configure, marker,
probe, completion decision, agent check), kept apart so that each signal can be shown.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import BaseModel

from autostop_cli.output import emit_json, iso
from autostop_cli.target import AwsContext, pass_aws, target_options
from shared import constants as c
from shared.completion import decide_completion, marker_is_negative
from shared.evaluation import Clients, Evaluator
from shared.instances import action_refusal, describe_instance
from shared.models import CompletionFacts, InstanceConfig, InstanceSnapshot
from shared.naming import execution_name
from shared.probe import agents_online, probe_instances
from shared.tags import InvalidTags, is_opted_in, parse_instance_config


class Explanation(BaseModel):
    """What ``explain`` found (its ``--json`` output)."""

    instance_id: str
    state: str
    session: str | None
    run_id: str | None
    opted_in: bool
    decision: str
    """complete, not_complete, inconclusive or skipped (as the sweep's Evaluation), or refused."""
    reason: str
    signals: list[dict[str, str]] = []
    """``{signal: marker|pid|log|agent, verdict, reason}``."""
    tag_problems: list[str] = []
    notes: list[str] = []
    """Facts worth knowing: not running, not opted in, case-variant keys, agent offline, refused action."""
    next_step: str = ""


def case_variant_keys(tags: dict[str, str], prefix: str) -> list[str]:
    """Keys that look like ``<prefix>:<name>`` but are not spelled exactly so (e.g. ``Autostop:Enabled``)."""
    return sorted(k for k in tags if "".join(k.split()).lower().startswith(f"{prefix.lower()}:") and not k.startswith(f"{prefix}:"))


def tag_problems(evaluator: Evaluator, snap: InstanceSnapshot) -> list[str]:
    """The parser's problems with the instance's tags (empty when they are valid)."""
    try:
        parse_instance_config(snap.instance_id, snap.tags, evaluator.policy)
    except InvalidTags as exc:
        return list(exc.problems)
    return []


def notes_for(evaluator: Evaluator, snap: InstanceSnapshot, ping: str) -> list[str]:
    """Plain facts about the instance that explain a skip or a wait."""
    prefix = evaluator.policy.prefix
    notes = []
    if snap.state != "running":
        notes.append(f"the instance is {snap.state}: only running instances are evaluated")
    if not is_opted_in(snap.tags, prefix):
        value = snap.tags.get(f"{prefix}:{c.TAG_ENABLED}")
        notes.append(f"not opted in: {prefix}:{c.TAG_ENABLED} is " + ("missing" if value is None else f"{value!r}, not 'true'"))
    for key in case_variant_keys(snap.tags, prefix):
        notes.append(f"tag key {key!r} is a case/space variant of an autostop key; keys are exact ({prefix}:<name>)")
    if snap.state == "running" and ping != "Online":
        notes.append(f"the SSM agent is not online (PingStatus={ping}): no probe or checkpoint can run")
    return notes


Signals = list[dict[str, str]]


def judge(evaluator: Evaluator, ec2: Any, snap: InstanceSnapshot, config: InstanceConfig, ping: str) -> tuple[str, str, Signals]:
    """(decision, reason, signals) for an opted-in running instance with valid tags, as the sweep decides.

    AWS calls: HeadObject of the marker, the probe (SendCommand of the read-only probe document and
    ListCommandInvocations) when an on-instance signal is tagged, DescribeSpotInstanceRequests for a Spot Instance.
    """
    iid = snap.instance_id
    facts = CompletionFacts(launch_time=snap.launch_time)
    if config.completion_marker is not None:
        facts = facts.model_copy(update={"marker": evaluator.head_marker(config.completion_marker)})
    probes: dict[str, Any] = {}
    if config.probe_needed and not marker_is_negative(config, facts):
        settings = evaluator.settings
        probes = probe_instances(
            evaluator.clients.ssm,
            settings.probe_document,
            {iid: config.probe_parameters()},
            timeout_seconds=settings.probe_timeout_seconds,
            poll_seconds=settings.poll_seconds,
            sleep=evaluator.sleep,
        )
    decision = decide_completion(config, facts.model_copy(update={"probe": probes.get(iid)}))
    signals = [s.model_dump() for s in decision.signals]
    verdict, reason = decision.verdict, decision.reason
    signals.append({"signal": "agent", "verdict": "complete" if ping == "Online" else "inconclusive", "reason": f"PingStatus={ping}"})
    if verdict == "complete" and iid not in probes and ping != "Online":
        verdict, reason = "inconclusive", f"{reason}; but the SSM agent is not online (PingStatus={ping}), so no checkpoint can be taken"
    if verdict == "complete":
        refusal = action_refusal(ec2, snap, config)
        if refusal:
            return "refused", refusal, signals
    return verdict, reason, signals


def next_step(decision: str, snap: InstanceSnapshot, run_id: str | None) -> str:
    if decision == "complete" and run_id:
        name = execution_name(snap.instance_id, run_id, c.REASON_COMPLETE, 1, snap.session)
        return f"the next sweep starts execution {name} (or its next attempt): checkpoint, verify, then the tagged action"
    if decision == "refused":
        return "the execution would end StopFailed before touching the trainer: fix the tags, then `autostop retry`"
    if decision in ("not_complete", "inconclusive"):
        return "no execution: the sweep waits and looks again at its next tick"
    return "no execution: the instance is skipped"


def explain_instance(evaluator: Evaluator, ec2: Any, snap: InstanceSnapshot) -> Explanation:
    """The full explanation of one instance (see the module docstring)."""
    ping = "-"
    if snap.state == "running":
        ping = agents_online(evaluator.clients.ssm, [snap.instance_id]).get(snap.instance_id, "NotRegistered")
    configured = evaluator.configure(snap)
    run_id = snap.tags.get(evaluator.policy.key(c.TAG_RUN_ID))
    signals: list[dict[str, str]] = []
    if isinstance(configured, InstanceConfig):
        decision, reason, signals = judge(evaluator, ec2, snap, configured, ping)
    else:
        decision, reason = configured.decision, configured.reason
    return Explanation(
        instance_id=snap.instance_id,
        state=snap.state,
        session=snap.session,
        run_id=run_id,
        opted_in=is_opted_in(snap.tags, evaluator.policy.prefix),
        decision=decision,
        reason=reason,
        signals=signals,
        tag_problems=tag_problems(evaluator, snap),
        notes=notes_for(evaluator, snap, ping),
        next_step=next_step(decision, snap, run_id),
    )


def print_explanation(ex: Explanation, launch: str | None) -> None:
    click.echo(f"{ex.instance_id}  state {ex.state}  launched {launch or 'unknown'}  run {ex.run_id or '-'}")
    click.echo(f"decision: {ex.decision}")
    click.echo(f"  why: {ex.reason}")
    if ex.signals:
        click.echo("signals:")
        for s in ex.signals:
            click.echo(f"  {s['signal']:<7} {s['verdict']:<13} {s['reason']}")
    if ex.tag_problems:
        click.echo("tag problems:")
        for problem in ex.tag_problems:
            click.echo(f"  - {problem}")
    for note in ex.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: {ex.next_step}")


@click.command("explain")
@click.argument("instance_id", metavar="INSTANCE")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@target_options
@pass_aws
def explain(aws: AwsContext, instance_id: str, as_json: bool) -> None:
    """What a sweep would decide for INSTANCE now and why: each signal, each tag problem, the decision.

    Nothing is changed; an on-instance signal (PID file, log pattern) is read with the stack's read-only probe
    document, as the sweep does. Exit 0 whatever the decision; exit 1 when the instance does not exist.
    AWS calls: DescribeInstances, DescribeInstanceInformation, HeadObject, SendCommand/ListCommandInvocations (probe).
    """
    target = aws.target
    ec2 = aws.client("ec2")
    snap = describe_instance(ec2, instance_id)
    if snap is None:
        click.echo(f"instance {instance_id} not found in {target.region}", err=True)
        sys.exit(1)
    evaluator = Evaluator(Clients(s3=aws.client("s3"), ssm=aws.client("ssm")), target.settings)
    ex = explain_instance(evaluator, ec2, snap)
    if as_json:
        emit_json(ex.model_dump())
    else:
        print_explanation(ex, iso(snap.launch_time))
