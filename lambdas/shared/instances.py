"""Reading instances from EC2 (DescribeInstances) into :class:`InstanceSnapshot` values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import error_code
from shared.models import Action, InstanceConfig, InstanceSnapshot
from shared.tags import opt_in_key_filters


def snapshot(raw: dict[str, Any]) -> InstanceSnapshot:
    """Convert one ``Reservations[].Instances[]`` element of DescribeInstances."""
    return InstanceSnapshot(
        instance_id=raw["InstanceId"],
        state=raw.get("State", {}).get("Name", "unknown"),
        tags={t["Key"]: t.get("Value", "") for t in raw.get("Tags", [])},
        launch_time=raw.get("LaunchTime"),
        lifecycle=raw.get("InstanceLifecycle", "on-demand"),
        hibernation_configured=bool(raw.get("HibernationOptions", {}).get("Configured", False)),
        spot_request_id=raw.get("SpotInstanceRequestId"),
    )


def opted_in_candidates(ec2: Any, prefix: str, states: Iterable[str] = ("running",)) -> Iterator[InstanceSnapshot]:
    """Instances carrying the ``<prefix>:enabled`` tag key, or a usual case variant of it (so the sweep can say it is
    misspelled: :func:`shared.tags.opt_in_key_filters`), in the given states, page by page.

    The tag *value* is not filtered here (EC2 filters are case-sensitive); callers apply
    :func:`shared.tags.is_opted_in`. AWS calls: one DescribeInstances per page of up to 1000 instances.
    """
    for page, _ in opted_in_pages(ec2, prefix, states):
        yield from page


def opted_in_pages(
    ec2: Any, prefix: str, states: Iterable[str] = ("running",), *, next_token: str | None = None
) -> Iterator[tuple[list[InstanceSnapshot], str | None]]:
    """:func:`opted_in_candidates` one DescribeInstances page (``MaxResults`` 1000) at a time, each with the
    ``NextToken`` of the pages after it (None after the last); ``next_token`` starts from such a token (the same
    filters and page size, as the API requires of a token's next request)."""
    filters = [
        {"Name": "tag-key", "Values": opt_in_key_filters(prefix)},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    while True:
        resp = ec2.describe_instances(Filters=filters, MaxResults=1000, **({"NextToken": next_token} if next_token else {}))
        next_token = resp.get("NextToken") or None
        yield [snapshot(raw) for reservation in resp.get("Reservations", []) for raw in reservation.get("Instances", [])], next_token
        if next_token is None:
            return


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


AUTO_SCALING_GROUP_TAG = "aws:autoscaling:groupName"
"""EC2 Auto Scaling tags every instance it launches with its group's name."""


def action_refusal(ec2: Any, snap: InstanceSnapshot, config: InstanceConfig) -> str | None:
    """Why the tagged action cannot be carried out on this instance, or None.

    A member of an Auto Scaling group is never stopped or terminated (the group would replace it). Hibernate
    needs an instance launched with hibernation. A Spot Instance can be stopped or hibernated
    only when its Spot request is persistent (EC2 refuses StopInstances for one-time requests); terminate
    always works. AWS call: DescribeSpotInstanceRequests for a Spot Instance that is to be stopped.
    """
    group = snap.tags.get(AUTO_SCALING_GROUP_TAG)
    if group is not None:
        return (
            f"the instance belongs to the Auto Scaling group {group!r}: a stopped member is marked unhealthy and replaced, "
            "and a terminated one is replaced too, so the run would not end as tagged. Scale the group in (or detach the "
            "instance) instead; autostop leaves members of Auto Scaling groups alone"
        )
    if config.action is Action.HIBERNATE and not snap.hibernation_configured:
        return (
            "hibernate requested but the instance was not launched with hibernation enabled; "
            "tag autostop:action=stop, or launch with hibernation, then start a new attempt"
        )
    if snap.lifecycle != "spot" or config.action is Action.TERMINATE:
        return None
    kind = spot_request_type(ec2, snap.spot_request_id)
    if kind == "persistent":
        return None
    why = "its Spot request is one-time" if kind == "one-time" else f"its Spot request type cannot be read ({kind})"
    return (
        f"{config.action.value} requested but this Spot Instance cannot be stopped: {why}. EC2 stops only Spot Instances "
        "of persistent requests; tag autostop:action=terminate to end it after the checkpoint, or launch it from a "
        "persistent request"
    )


def spot_request_type(ec2: Any, request_id: str | None) -> str:
    """``one-time``, ``persistent``, or a short description of why it is unknown (DescribeSpotInstanceRequests)."""
    if not request_id:
        return "no SpotInstanceRequestId"
    try:
        resp = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id])
    except ClientError as exc:
        return f"DescribeSpotInstanceRequests failed: {error_code(exc)}"
    requests = resp.get("SpotInstanceRequests", [])
    return str(requests[0].get("Type", "no Type")) if requests else "request not found"
