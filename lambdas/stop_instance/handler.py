"""Lambda entry point of the Stop instance Task state."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.clients import client
from shared.evaluation import tag_policy
from shared.observability import logger, metrics, tracer
from shared.records import RunRecords
from shared.settings import settings
from shared.workflow import EvaluateOutput, VerifyOutput
from stop_instance.logic import stop_instance


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    evaluation = EvaluateOutput.model_validate(event["evaluation"])
    verification = VerifyOutput.model_validate(event["verification"])
    logger.append_keys(instance_id=evaluation.instance_id, run_id=evaluation.run_id)
    result = stop_instance(
        client("ec2"),
        tag_policy(config),
        evaluation,
        verification,
        records=RunRecords(client("dynamodb"), config.runs_table) if config.runs_table else None,
        execution=str(event.get("execution_name", "")),
    )
    logger.info("stop instance", extra={"outcome": result.outcome, "reason": result.reason, "called": result.called})
    metrics.add_metric(name=f"Stop_{result.outcome}", unit="Count", value=1)
    return result.model_dump(mode="json")
