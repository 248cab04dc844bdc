"""AWS-shaped EventBridge events for tests: one builder per kind the triggers receive.

Shapes follow the EventBridge envelope (version, id, detail-type, source, account, time, region,
resources, detail) and the detail AWS documents for each source; tests override what they probe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
TIME = "2026-11-30T10:00:00Z"


def envelope(
    detail_type: str,
    source: str,
    detail: Any,
    resources: list[str],
    *,
    event_id: str = "evt-1",
    time: str = TIME,
    account: str = ACCOUNT,
    region: str = REGION,
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id,
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": time,
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def scheduled_event(*, account: str = ACCOUNT, region: str = REGION) -> dict[str, Any]:
    """The schedule rule's "Scheduled Event"."""
    rule = f"arn:aws:events:{region}:{account}:rule/Schedule"
    return envelope("Scheduled Event", "aws.events", {}, [rule], event_id="tick-1", account=account, region=region)


def object_created(
    bucket: str, key: str, *, size: int = 0, detail_type: str = "Object Created", account: str = ACCOUNT, region: str = REGION
) -> dict[str, Any]:
    """S3's "Object Created" (EventBridge notifications on the bucket)."""
    detail = {
        "version": "0",
        "bucket": {"name": bucket},
        "object": {"key": key, "size": size, "etag": "e", "sequencer": "1"},
        "request-id": "r",
        "requester": account,
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    }
    return envelope(detail_type, "aws.s3", detail, [f"arn:aws:s3:::{bucket}"], account=account, region=region)


def ec2_event(
    detail_type: str,
    detail: Any,
    *,
    when: datetime | None = None,
    account: str = ACCOUNT,
    region: str = REGION,
    resources: list[str] | None = None,
) -> dict[str, Any]:
    """An EC2 event (Spot interruption warning, rebalance recommendation, state change) sent at ``when``
    (default: now, since an interruption's deadline counts from it); ``resources`` defaults to the ARN of
    ``detail["instance-id"]``."""
    time = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if resources is None:
        iid = detail.get("instance-id", "i-unknown") if isinstance(detail, dict) else "i-unknown"
        resources = [f"arn:aws:ec2:{region}:{account}:instance/{iid}"]
    return envelope(detail_type, "aws.ec2", detail, resources, time=time, account=account, region=region)
