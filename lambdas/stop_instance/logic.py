"""Stop instance Task state: re-read the instance, mark the run record, then StopInstances / TerminateInstances.

The guard runs right before the call, in the same function, so nothing the decision relied on can
have changed unseen: the instance must still be running, opted in, on the same run and action, and
the checkpoint must be verified. Any doubt ends in Skipped or StopFailed, never in a call.

Right before the call the run record gets a **stop mark** (``stop_requested``, a conditional write): a call
whose answer is lost (read timeout, 5xx after EC2 accepted it) is retried by the Task state, and the retry
finds the instance stopping or stopped *with this execution's mark*, which is this execution's own stop
(``Stopped`` / ``Hibernated`` / ``Terminated``), not someone else's (``Skipped``). The mark also makes the
session resumable at once, so a start right after the stop resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import constants as c
from shared.errors import error_code, is_transient, transient
from shared.instances import action_refusal, describe_instance
from shared.models import Action
from shared.records import RunKey, RunRecords, stop_was_requested
from shared.tags import InvalidTags, TagPolicy, parse_instance_config
from shared.workflow import EvaluateOutput, StopOutput, VerifyOutput

OUTCOME_OF = {Action.STOP: c.OUTCOME_STOPPED, Action.HIBERNATE: c.OUTCOME_HIBERNATED, Action.TERMINATE: c.OUTCOME_TERMINATED}
AFTER_OUR_CALL = {
    Action.STOP: ("stopping", "stopped"),
    Action.HIBERNATE: ("stopping", "stopped"),
    Action.TERMINATE: ("shutting-down", "terminated"),
}
"""States an instance reaches after our own accepted call, by action."""


def _skip(reason: str) -> StopOutput:
    return StopOutput(outcome=c.OUTCOME_SKIPPED, reason=reason, called=False)


def _fail(reason: str) -> StopOutput:
    return StopOutput(outcome=c.OUTCOME_STOP_FAILED, reason=reason, called=False)


def _accepted(action: Action, reason: str) -> StopOutput:
    expected = "terminated" if action is Action.TERMINATE else "stopped"
    return StopOutput(outcome=OUTCOME_OF[action], reason=reason, called=True, expected_state=expected)


def stop_instance(
    ec2: Any,
    policy: TagPolicy,
    evaluation: EvaluateOutput,
    verification: VerifyOutput,
    *,
    records: RunRecords | None = None,
    execution: str = "",
    before_call: Callable[[StopOutput], None] | None = None,
) -> StopOutput:
    """Guard, mark the run record, then act on the instance named by ``evaluation``.

    Args:
        ec2: boto3 EC2 client (DescribeInstances, DescribeSpotInstanceRequests, StopInstances, TerminateInstances).
        policy: tag prefix and checkpoint bucket, to re-read the instance's tags.
        evaluation: the Evaluate completion output (instance, run, action, dry run, decision time).
        verification: the Verify checkpoint output; must be ``verified``.
        records: run records: the stop mark is written there before the call (None only in tests of the guard).
        execution: this execution's name (the owner of the mark).
        before_call: called with the output an accepted call will return, right before StopInstances /
            TerminateInstances (the Task state records its waiter there, so that the state-change event finds it).

    Returns:
        Stopped / Terminated / Hibernated with ``called=True`` when EC2 accepted the call, or when a retry finds
        the instance on its way to the final state and this execution's stop mark in the run record (the state
        machine then waits for the final state); else DryRun, Skipped, StopFailed without any call.

    Raises:
        TransientAwsError: DescribeInstances, the run record or the stop call was throttled, failed server-side
            or timed out; the Task state's Retry runs the whole guard again.
    """
    if not verification.verified:
        return _fail(f"refusing to act without a verified checkpoint ({verification.reason})")
    if evaluation.action is None:
        return _fail("the evaluation planned no action")
    iid = evaluation.instance_id
    key = RunKey(iid, evaluation.run_id, evaluation.session) if records is not None and evaluation.session and execution else None
    try:
        snap = describe_instance(ec2, iid)
    except ClientError as exc:
        if is_transient(exc):
            raise transient(f"DescribeInstances {iid}", exc) from exc
        return _fail(f"cannot re-read the instance: {error_code(exc)}")
    except BotoCoreError as exc:
        raise transient(f"DescribeInstances {iid}", exc) from exc
    if snap is None:
        return _skip("instance no longer exists")
    if snap.state != "running":
        ours = _our_earlier_call(records, key, execution, evaluation.action, snap.state, snap.session, evaluation.session)
        if ours:
            return _accepted(evaluation.action, ours + f" after {verification.reason}")
        return _skip(f"instance is {snap.state}, not running; someone else changed it since the decision")
    if evaluation.session is not None and snap.session != evaluation.session:
        return _skip(f"the instance was restarted since the decision (LaunchTime {snap.session}, decided in {evaluation.session})")
    try:
        config = parse_instance_config(iid, snap.tags, policy)
    except InvalidTags as exc:
        return _skip("tags changed since the decision and are no longer valid: " + "; ".join(exc.problems))
    if config.run_id != evaluation.run_id:
        return _skip(f"run id changed from {evaluation.run_id!r} to {config.run_id!r} since the decision")
    if config.action != evaluation.action:
        return _skip(f"action tag changed from {evaluation.action} to {config.action} since the decision")
    if config.dry_run or evaluation.dry_run:
        return StopOutput(
            outcome=c.OUTCOME_DRY_RUN,
            reason=f"dry run: would {config.action} the instance after the verified checkpoint {verification.manifest_uri}",
            called=False,
        )
    refusal = action_refusal(ec2, snap, config)
    if refusal:
        return _fail(refusal)

    if records is not None and key is not None:
        try:
            refused = records.mark_stop_requested(key, execution, config.action.value)
        except ClientError as exc:
            if is_transient(exc):
                raise transient("run record stop mark", exc) from exc
            return _fail(f"the run record's stop mark could not be written ({error_code(exc)}); nothing was stopped")
        except BotoCoreError as exc:
            raise transient("run record stop mark", exc) from exc
        if refused:
            return _fail(f"not stopping: {refused}")

    verb = "TerminateInstances" if config.action is Action.TERMINATE else "StopInstances"
    accepted = _accepted(config.action, f"{verb} accepted after {verification.reason}")
    if before_call is not None:
        before_call(accepted)
    try:
        if config.action is Action.TERMINATE:
            ec2.terminate_instances(InstanceIds=[iid])
        else:
            ec2.stop_instances(InstanceIds=[iid], Hibernate=config.action is Action.HIBERNATE)
    except ClientError as exc:
        if is_transient(exc):
            # EC2 may have accepted it (a 5xx after the fact): the mark stays, the retry tells.
            raise transient(f"{config.action} {iid}", exc) from exc
        why = f"EC2 refused to {config.action} the instance: {error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}"
        if records is not None and key is not None:
            # The outcome stands if this fails; a leftover mark only makes a later start try a restore.
            with contextlib.suppress(Exception):
                records.clear_stop_request(key, execution, why)
        return _fail(why)
    except BotoCoreError as exc:
        # A read timeout or a lost connection: EC2 may have accepted the call. The mark stays, the retry tells.
        raise transient(f"{config.action} {iid}", exc) from exc
    return accepted


def _our_earlier_call(
    records: RunRecords | None,
    key: RunKey | None,
    execution: str,
    action: Action,
    state: str,
    session: str | None,
    decided_session: str | None,
) -> str | None:
    """When the instance is no longer running because of this execution's own earlier call (a retry after a lost
    answer): the reason to give, else None. Needs this execution's stop mark for this action in this session's
    record and the instance on its way to that action's final state in the same session."""
    if records is None or key is None or state not in AFTER_OUR_CALL[action] or session != decided_session:
        return None
    try:
        record = records.get(key) or {}
    except ClientError as exc:
        if is_transient(exc):
            raise transient("run record read", exc) from exc
        return None
    except BotoCoreError as exc:
        raise transient("run record read", exc) from exc
    mark = stop_was_requested(record) or {}
    if mark.get("execution") != execution or mark.get("action") != action.value:
        return None
    when = mark.get("at")
    return f"the instance is {state} after this execution's own {action.value} call (its answer was lost; stop mark {when})"
