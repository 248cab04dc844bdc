"""The two EventBridge events the trigger functions parse: the schedule's "Scheduled Event" and S3's "Object Created".

Field for field the models of Powertools' parser (``EventBridgeModel``, ``S3EventNotificationEventBridgeModel`` of
``aws_lambda_powertools.utilities.parser.models``): the same order, types and aliases, and the nested models keep
Powertools' class names (pydantic's messages quote them), so a bad event is refused with the same first error
(tests/unit/test_events.py compares the two). Copied rather than imported: importing any one of Powertools' models
loads all of them (that package's ``__init__``), about a fifth of a trigger's cold import. Event shapes: "Amazon
EventBridge events" (EventBridge User Guide) and "Using EventBridge" (Amazon S3 User Guide).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator

RawDictOrModel = dict[str, Any] | type[BaseModel] | BaseModel
"""Powertools' type of an EventBridge event's ``detail`` (``utilities.parser.types``)."""


class EventBridgeEventModel(BaseModel):
    """An EventBridge event: the envelope fields every event has; ``detail`` is the source's own object."""

    model_config = ConfigDict(populate_by_name=True)

    version: str
    id: str
    source: str
    account: str
    time: datetime
    region: str
    resources: list[str]
    detail_type: str = Field(alias="detail-type")
    detail: RawDictOrModel
    replay_name: str | None = Field(None, alias="replay-name")

    @field_validator("detail", mode="before")
    @classmethod
    def _scheduler_detail(cls, value: Any, info: Any) -> Any:
        """EventBridge Scheduler sends ``"{}"`` as the detail of an event without payload (as Powertools reads it)."""
        return {} if info.data.get("source") == "aws.scheduler" and value == "{}" else value


class S3EventNotificationEventBridgeBucketModel(BaseModel):
    name: str


class S3EventNotificationObjectModel(BaseModel):
    key: str
    size: NonNegativeFloat | None = None
    etag: str = ""
    version_id: str | None = Field(None, alias="version-id")
    sequencer: str | None = None


class S3EventNotificationEventBridgeDetailModel(BaseModel):
    """The ``detail`` of an S3 event on EventBridge (all fields of Powertools' detail model, in its order)."""

    version: str
    bucket: S3EventNotificationEventBridgeBucketModel
    object: S3EventNotificationObjectModel
    request_id: str = Field(alias="request-id")
    requester: str
    source_ip_address: str | None = Field(None, alias="source-ip-address")
    reason: str | None = None
    deletion_type: str | None = Field(None, alias="deletion-type")
    restore_expiry_time: str | None = Field(None, alias="restore-expiry-time")
    source_storage_class: str | None = Field(None, alias="source-storage-class")
    destination_storage_class: str | None = Field(None, alias="destination-storage-class")
    destination_access_tier: str | None = Field(None, alias="destination-access-tier")


class ObjectCreatedEventModel(EventBridgeEventModel):
    """An S3 event on EventBridge ("Object Created" is the one the marker trigger's rule matches)."""

    detail: S3EventNotificationEventBridgeDetailModel  # type: ignore[assignment]
