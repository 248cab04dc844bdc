"""cdk-nag (v3, CDK policy validation) helpers: every acknowledgement carries a reason, next to its construct."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str, *, finding: str | None = None) -> None:
    """Acknowledge an AwsSolutions finding on ``scope`` (and its children).

    ``rule`` is e.g. ``AwsSolutions-IAM5``; ``finding`` narrows a granular rule to one finding, e.g.
    ``Resource::*`` (the text cdk-nag prints in brackets).
    """
    rule_id = f"AwsSolutions::{rule}" + (f"[{finding}]" if finding else "")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))
