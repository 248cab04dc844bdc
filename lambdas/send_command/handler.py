"""Lambda entry point of the Run command Task states (``lambda:invoke.waitForTaskToken``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from send_command.logic import follow_command, send_command
from shared.clients import client, single_attempt_client
from shared.observability import logger, metrics, tracer
from shared.settings import settings
from shared.waiters import Waiters
from shared.workflow import EvaluateOutput

if TYPE_CHECKING:  # the type only: its module is no part of a cold start
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Event: ``{"evaluation": EvaluateOutput, "execution_name": str, "task_token": str, "command_id": str | None}``
    (``command_id`` only to follow a command found after an ambiguous failure)."""
    evaluation = EvaluateOutput.model_validate(event["evaluation"])
    logger.append_keys(instance_id=evaluation.instance_id, run_id=evaluation.run_id)
    waiters = Waiters(client("dynamodb"), settings().require_runs_table())
    execution, token = str(event["execution_name"]), str(event["task_token"])
    if event.get("command_id"):
        result = follow_command(
            client("ssm"),
            client("stepfunctions"),
            waiters,
            instance_id=evaluation.instance_id,
            execution=execution,
            token=token,
            command_id=str(event["command_id"]),
        )
    else:
        result = send_command(single_attempt_client("ssm"), waiters, evaluation, execution=execution, token=token)
    logger.info("command", extra=result.model_dump())
    metrics.add_metric(name="CommandsSent" if result.mode == "send" else "CommandsFollowed", unit="Count", value=1)
    return result.model_dump()
