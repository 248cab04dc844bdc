"""Lambda entry point of the Stop instance Task state (``lambda:invoke.waitForTaskToken``).

With a ``task_token`` the result is delivered through the token: at once when no call was made (dry run, guard,
refusal), else when the instance reaches its final state (EC2's state-change event through on_status_event, or the
schedule sweep when that event was lost; or at once if it already has). Without one (direct invocation) the result
is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.clients import client
from shared.instances import describe_instance
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings
from shared.tags import tag_policy
from shared.waiters import STOP, Waiters, complete_stop, send_task_success, stop_settled
from shared.workflow import EvaluateOutput, StopOutput, VerifyOutput
from stop_instance.logic import stop_instance

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    evaluation = EvaluateOutput.model_validate(event["evaluation"])
    verification = VerifyOutput.model_validate(event["verification"])
    execution, token = str(event.get("execution_name", "")), event.get("task_token")
    logger.append_keys(instance_id=evaluation.instance_id, run_id=evaluation.run_id)
    waiters = Waiters(client("dynamodb"), config.require_runs_table()) if token else None

    def record_waiter(expected: StopOutput) -> None:
        if waiters is not None:
            waiters.put(
                evaluation.instance_id, execution, STOP, str(token), stop=expected.model_dump(mode="json"), session=evaluation.session
            )

    result = stop_instance(
        client("ec2"),
        tag_policy(config),
        evaluation,
        verification,
        records=RunRecords(client("dynamodb"), config.runs_table) if config.runs_table else None,
        execution=execution,
        before_call=record_waiter,
    )
    logger.info("stop instance", extra={"outcome": result.outcome, "reason": result.reason, "called": result.called})
    metrics.add_metric(name=f"Stop_{result.outcome}", unit="Count", value=1)
    if waiters is not None:
        deliver(waiters, evaluation, execution, str(token), result)
    return result.model_dump(mode="json")


def deliver(waiters: Waiters, evaluation: EvaluateOutput, execution: str, token: str, result: StopOutput) -> None:
    """Complete the token now when no call was made or the instance is already where the call takes it; otherwise the
    waiter (with this result) stays for the state-change event."""
    iid = evaluation.instance_id
    if not result.called:
        waiters.delete(iid, execution, STOP, token=token)
        send_task_success(client("stepfunctions"), token, result.model_dump(mode="json"))
        return
    waiter = {"instance_id_of": iid, "execution": execution, "token": token, "stop": result.model_dump(mode="json")}
    waiters.put(iid, execution, STOP, token, stop=waiter["stop"], session=evaluation.session)
    try:
        snap = describe_instance(client("ec2"), iid)
    except (ClientError, BotoCoreError):
        return  # the call was accepted: the state-change event (or the sweep) completes the wait
    if snap is not None and stop_settled(snap.state, snap.session, evaluation.session):
        complete_stop(client("stepfunctions"), waiters, waiter, state=snap.state, launch_time=snap.session)
