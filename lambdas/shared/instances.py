"""Reading instances from EC2 (DescribeInstances) into :class:`InstanceSnapshot` values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from shared import constants as c
from shared.models import InstanceSnapshot


def snapshot(raw: dict[str, Any]) -> InstanceSnapshot:
    """Convert one ``Reservations[].Instances[]`` element of DescribeInstances."""
    return InstanceSnapshot(
        instance_id=raw["InstanceId"],
        state=raw.get("State", {}).get("Name", "unknown"),
        tags={t["Key"]: t.get("Value", "") for t in raw.get("Tags", [])},
        launch_time=raw.get("LaunchTime"),
        lifecycle=raw.get("InstanceLifecycle", "on-demand"),
        hibernation_configured=bool(raw.get("HibernationOptions", {}).get("Configured", False)),
    )


def opted_in_candidates(ec2: Any, prefix: str, states: Iterable[str] = ("running",)) -> Iterator[InstanceSnapshot]:
    """Instances carrying the ``<prefix>:enabled`` tag key in the given states, page by page.

    The tag *value* is not filtered here (EC2 filters are case-sensitive); callers apply
    :func:`shared.tags.is_opted_in`. AWS calls: one DescribeInstances per page of up to 1000 instances.
    """
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": "tag-key", "Values": [f"{prefix}:{c.TAG_ENABLED}"]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                yield snapshot(raw)


def describe_instance(ec2: Any, instance_id: str) -> InstanceSnapshot | None:
    """One instance, or None when EC2 does not know it (InvalidInstanceID.NotFound)."""
    try:
        resp = ec2.describe_instances(InstanceIds=[instance_id])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "").startswith("InvalidInstanceID"):
            return None
        raise
    for reservation in resp.get("Reservations", []):
        for raw in reservation.get("Instances", []):
            return snapshot(raw)
    return None
