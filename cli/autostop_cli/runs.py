"""Reading run records (the DynamoDB table of :mod:`shared.records`) and the executions they name."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from shared import constants as c
from shared.errors import error_code
from shared.executions import execution_arn
from shared.records import from_item


def is_instance_id(text: str) -> bool:
    return text.startswith("i-") and text[2:].isalnum()


def read_records(dynamodb: Any, table: str, selector: str | None = None) -> list[dict[str, Any]]:
    """Run records, oldest session first within each instance.

    ``selector``: an instance id (Query on the partition key), a run id (Scan filtered on ``run_id``), or None
    (Scan of every record). AWS calls: DynamoDB Query or Scan, all pages (boto3 paginators).
    """
    if selector and is_instance_id(selector):
        pages = dynamodb.get_paginator("query").paginate(
            TableName=table,
            KeyConditionExpression="#i = :i",
            ExpressionAttributeNames={"#i": c.RECORDS_PARTITION_KEY},
            ExpressionAttributeValues={":i": {"S": selector}},
            ConsistentRead=True,
        )
    elif selector:
        pages = dynamodb.get_paginator("scan").paginate(
            TableName=table,
            FilterExpression="run_id = :r",
            ExpressionAttributeValues={":r": {"S": selector}},
            ConsistentRead=True,
        )
    else:
        pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    records = [from_item(item) for page in pages for item in page.get("Items", [])]
    return sorted(records, key=lambda r: (str(r.get("instance_id")), str(r.get("session")), str(r.get("run_id"))))


def execution_names(record: dict[str, Any]) -> list[str]:
    """Every execution the record names (recorded outcomes, locks, the active one), first seen first."""
    names = [*(record.get("executions") or []), *(record.get("locks") or {}).values()]
    if record.get("active"):
        names.append(record["active"])
    names += [h.get("execution") for h in record.get("history") or [] if h.get("execution")]
    return list(dict.fromkeys(str(n) for n in names if n))


def describe_execution(sfn: Any, state_machine_arn: str, name: str) -> dict[str, Any]:
    """``{name, arn, status, outcome?, error?}`` of one execution (DescribeExecution); status ``unknown`` when it cannot be read."""
    arn = execution_arn(state_machine_arn, name)
    try:
        d = sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        return {"name": name, "arn": arn, "status": "unknown", "error": error_code(exc)}
    out: dict[str, Any] = {"name": name, "arn": arn, "status": d["status"], "start": d.get("startDate"), "stop": d.get("stopDate")}
    if d.get("error"):
        out["error"] = d["error"]
    return out


def history_time(record: dict[str, Any], *statuses: str) -> str | None:
    """``at`` of the first history entry whose status is one of ``statuses``, or None."""
    for entry in record.get("history") or []:
        if entry.get("status") in statuses:
            return str(entry.get("at"))
    return None
