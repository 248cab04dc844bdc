"""The triggers' own EventBridge models (shared.events) read every event as Powertools' parser models do: the same
accepted fields, and for a bad event the same first error, so the same "ignored" sentence."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel, S3EventNotificationEventBridgeModel

from shared.events import EventBridgeEventModel, ObjectCreatedEventModel
from shared.triggers import parse_trigger_event
from tests import events

KEY = "instances/arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0/runs/r1/_SUCCESS"
SCHEDULE = {"source": "aws.events", "detail_types": ("Scheduled Event",)}
S3 = {"source": "aws.s3", "detail_types": ("Object Created",)}
DROP = object()


def changed(event: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``event`` with ``value`` at ``path`` (DROP removes the key)."""
    out = copy.deepcopy(event)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is DROP:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


ENVELOPE_CHANGES = [
    (("version",), DROP),
    (("id",), 5),
    (("source",), DROP),
    (("account",), None),
    (("time",), "yesterday"),
    (("time",), "2026-11-30T10:00:00+02:00"),
    (("region",), DROP),
    (("resources",), "arn"),
    (("resources",), [1]),
    (("detail-type",), DROP),
    (("detail",), DROP),
    (("detail",), "{}"),
    (("detail",), ["x"]),
    (("replay-name",), "replay-1"),
    (("replay-name",), 3),
    (("extra",), "kept out"),
]
SCHEDULE_CASES = [events.scheduled_event()] + [changed(events.scheduled_event(), p, v) for p, v in ENVELOPE_CHANGES]
SCHEDULE_CASES.append(changed(changed(events.scheduled_event(), ("source",), "aws.scheduler"), ("detail",), "{}"))
S3_CHANGES = [
    *ENVELOPE_CHANGES,
    (("detail", "version"), DROP),
    (("detail", "bucket"), DROP),
    (("detail", "bucket", "name"), 7),
    (("detail", "object"), "key"),
    (("detail", "object", "key"), DROP),
    (("detail", "object", "key"), [KEY]),
    (("detail", "object", "size"), "big"),
    (("detail", "object", "size"), -1),
    (("detail", "object", "size"), 2.5),
    (("detail", "object", "etag"), DROP),
    (("detail", "object", "version-id"), "v1"),
    (("detail", "object", "sequencer"), 9),
    (("detail", "request-id"), DROP),
    (("detail", "requester"), DROP),
    (("detail", "source-ip-address"), 4),
    (("detail", "reason"), DROP),
    (("detail", "deletion-type"), "Permanently Deleted"),
    (("detail", "restore-expiry-time"), 1),
    (("detail", "source-storage-class"), "STANDARD"),
    (("detail", "destination-storage-class"), None),
    (("detail", "destination-access-tier"), []),
]
S3_CASES = [events.object_created("bucket-1", KEY, size=4)]
S3_CASES += [changed(S3_CASES[0], p, v) for p, v in S3_CHANGES]


def same_reading(raw: Any, ours: type, theirs: type, rule: dict[str, Any]) -> None:
    mine, powertools = parse_trigger_event(raw, ours, **rule), parse_trigger_event(raw, theirs, **rule)
    if isinstance(powertools, str):
        assert mine == powertools
    else:
        assert not isinstance(mine, str), mine
        assert mine.model_dump(by_alias=True) == powertools.model_dump(by_alias=True)


@pytest.mark.parametrize("raw", SCHEDULE_CASES, ids=range(len(SCHEDULE_CASES)))
def test_scheduled_event_read_as_powertools_reads_it(raw: dict[str, Any]) -> None:
    same_reading(raw, EventBridgeEventModel, EventBridgeModel, SCHEDULE)


@pytest.mark.parametrize("raw", S3_CASES, ids=range(len(S3_CASES)))
def test_object_created_read_as_powertools_reads_it(raw: dict[str, Any]) -> None:
    same_reading(raw, ObjectCreatedEventModel, S3EventNotificationEventBridgeModel, S3)


def test_the_cases_reach_both_answers() -> None:
    """The comparison means something only if some events are accepted and many refused."""
    answers = [parse_trigger_event(raw, ObjectCreatedEventModel, **S3) for raw in S3_CASES]
    refused = [a for a in answers if isinstance(a, str)]
    assert len(refused) >= 15 and len(answers) - len(refused) >= 5
    assert any("detail.object.size" in a for a in refused)
