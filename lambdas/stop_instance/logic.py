"""Stop instance Task state: re-read the instance, then StopInstances / TerminateInstances.

The guard runs right before the call, in the same function, so nothing the decision relied on can
have changed unseen: the instance must still be running, opted in, on the same run and action, and
the checkpoint must be verified. Any doubt ends in Skipped or StopFailed, never in a call.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from shared import constants as c
from shared.errors import TransientAwsError, error_code, is_transient
from shared.instances import action_refusal, describe_instance
from shared.models import Action
from shared.tags import InvalidTags, TagPolicy, parse_instance_config
from shared.workflow import EvaluateOutput, StopOutput, VerifyOutput


def _skip(reason: str) -> StopOutput:
    return StopOutput(outcome=c.OUTCOME_SKIPPED, reason=reason, called=False)


def _fail(reason: str) -> StopOutput:
    return StopOutput(outcome=c.OUTCOME_STOP_FAILED, reason=reason, called=False)


def stop_instance(ec2: Any, policy: TagPolicy, evaluation: EvaluateOutput, verification: VerifyOutput) -> StopOutput:
    """Guard, then act on the instance named by ``evaluation``.

    Args:
        ec2: boto3 EC2 client (DescribeInstances, DescribeSpotInstanceRequests, StopInstances, TerminateInstances).
        policy: tag prefix and checkpoint bucket, to re-read the instance's tags.
        evaluation: the Evaluate completion output (instance, run, action, dry run, decision time).
        verification: the Verify checkpoint output; must be ``verified``.

    Returns:
        Stopped / Terminated / Hibernated with ``called=True`` when EC2 accepted the call (the state
        machine then waits for the final state), or DryRun, Skipped, StopFailed without any call.

    Raises:
        TransientAwsError: DescribeInstances or the stop call was throttled or failed server-side before
            EC2 accepted it; the Task state's Retry runs the whole guard again.
    """
    if not verification.verified:
        return _fail(f"refusing to act without a verified checkpoint ({verification.reason})")
    if evaluation.action is None:
        return _fail("the evaluation planned no action")
    iid = evaluation.instance_id
    try:
        snap = describe_instance(ec2, iid)
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"DescribeInstances {iid}: {error_code(exc)}") from exc
        return _fail(f"cannot re-read the instance: {error_code(exc)}")
    if snap is None:
        return _skip("instance no longer exists")
    if snap.state != "running":
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

    try:
        if config.action is Action.TERMINATE:
            ec2.terminate_instances(InstanceIds=[iid])
            return StopOutput(
                outcome=c.OUTCOME_TERMINATED,
                reason=f"TerminateInstances accepted after {verification.reason}",
                called=True,
                expected_state="terminated",
            )
        ec2.stop_instances(InstanceIds=[iid], Hibernate=config.action is Action.HIBERNATE)
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"{config.action} {iid}: {error_code(exc)}") from exc
        return _fail(f"EC2 refused to {config.action} the instance: {error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}")
    outcome = c.OUTCOME_HIBERNATED if config.action is Action.HIBERNATE else c.OUTCOME_STOPPED
    return StopOutput(outcome=outcome, reason=f"StopInstances accepted after {verification.reason}", called=True, expected_state="stopped")
