"""The completion-marker trigger: an S3 object landed; evaluate the instances whose marker it is."""

from __future__ import annotations

import re
from typing import Any

from shared import constants as c
from shared.evaluation import Evaluator
from shared.instances import describe_instance, snapshot
from shared.models import InstanceConfig, InstanceSnapshot, S3Uri
from shared.notifications import Outlets
from shared.observability import logger
from shared.triggers import TriggerSummary, evaluate_and_start

INSTANCE_ID = re.compile(c.INSTANCE_ID_PATTERN)


def on_marker(
    *, ec2: Any, sfn: Any, evaluator: Evaluator, bucket: str, key: str, event_time: str, outlets: Outlets | None = None
) -> TriggerSummary:
    """Find the running opted-in instances whose completion marker is ``s3://bucket/key`` and evaluate them.

    Instances with invalid tags cannot name a marker and are not considered here (the sweep reports
    them). AWS calls: one DescribeInstances (:func:`marker_owners`: never a scan of the fleet), then what
    :func:`evaluate_and_start` needs for the matches.
    """
    uri = S3Uri(bucket=bucket, key=key)
    matches = []
    for snap in marker_owners(ec2, evaluator, uri):
        config = evaluator.configure(snap)
        if isinstance(config, InstanceConfig) and config.completion_marker == uri:
            matches.append(snap)
    if not matches:
        logger.info("object is nobody's completion marker", extra={"uri": str(uri)})
    trigger = {"source": "s3-marker", "uri": str(uri), "time": event_time}
    return evaluate_and_start(matches, evaluator=evaluator, sfn=sfn, trigger=trigger, ec2=ec2, outlets=outlets)


def marker_owners(ec2: Any, evaluator: Evaluator, uri: S3Uri) -> list[InstanceSnapshot]:
    """The instances that can own the marker ``uri``, from one DescribeInstances.

    A key below an instance's own prefix (``instances/<instance ARN>/``, the only keys a trainer may write) names its
    instance: DescribeInstances of that id. Any other key (``markers/...``, put by a pipeline) can only be a marker
    tagged explicitly: DescribeInstances filtered on ``<prefix>:completion-marker`` = the URI.
    """
    prefix = f"{c.INSTANCES_PREFIX}{evaluator.settings.instance_arn_prefix}"
    if uri.key.startswith(prefix):
        instance_id = uri.key[len(prefix) :].split("/", 1)[0]
        snap = describe_instance(ec2, instance_id) if INSTANCE_ID.fullmatch(instance_id) else None
        return [snap] if snap is not None and snap.state == "running" else []
    tag = f"{evaluator.settings.tag_prefix}:{c.TAG_COMPLETION_MARKER}"
    filters = [{"Name": f"tag:{tag}", "Values": [str(uri)]}, {"Name": "instance-state-name", "Values": ["running"]}]
    found = ec2.describe_instances(Filters=filters, MaxResults=1000)
    return [snapshot(raw) for r in found.get("Reservations", []) for raw in r.get("Instances", [])]
