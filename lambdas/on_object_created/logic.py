"""The completion-marker trigger: an S3 object landed; evaluate the instances whose marker it is."""

from __future__ import annotations

from typing import Any

from shared.evaluation import Evaluator
from shared.instances import opted_in_candidates
from shared.models import InstanceConfig, S3Uri
from shared.notifications import Outlets
from shared.observability import logger
from shared.triggers import TriggerSummary, evaluate_and_start


def on_marker(
    *, ec2: Any, sfn: Any, evaluator: Evaluator, bucket: str, key: str, event_time: str, outlets: Outlets | None = None
) -> TriggerSummary:
    """Find the running opted-in instances whose completion marker is ``s3://bucket/key`` and evaluate them.

    Instances with invalid tags cannot name a marker and are not considered here (the sweep reports
    them). AWS calls: DescribeInstances pages, then what :func:`evaluate_and_start` needs for the matches.
    """
    uri = S3Uri(bucket=bucket, key=key)
    matches = []
    for snap in opted_in_candidates(ec2, evaluator.settings.tag_prefix):
        config = evaluator.configure(snap)
        if isinstance(config, InstanceConfig) and config.completion_marker == uri:
            matches.append(snap)
    if not matches:
        logger.info("object is nobody's completion marker", extra={"uri": str(uri)})
    trigger = {"source": "s3-marker", "uri": str(uri), "time": event_time}
    return evaluate_and_start(matches, evaluator=evaluator, sfn=sfn, trigger=trigger, ec2=ec2, outlets=outlets)
