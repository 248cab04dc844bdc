"""cdk-nag (v3, CDK policy validation) helpers: every acknowledgement carries a reason, next to its construct."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

PACKS = ("AwsSolutions", "NIST.800.53.R5")
"""The rule packs app.py runs (AwsSolutionsChecks, NIST80053R5Checks); a rule id starts with its pack's name."""


def acknowledge(scope: IConstruct, rule: str, reason: str, *, finding: str | None = None) -> None:
    """Acknowledge a cdk-nag finding on ``scope`` (and its children).

    ``rule`` is the id cdk-nag prints, pack included: ``AwsSolutions-IAM5``, ``NIST.800.53.R5-LambdaDLQ``.
    ``finding`` narrows a granular rule to one finding, e.g. ``Resource::*`` (the text cdk-nag prints in
    brackets).
    """
    pack = rule.split("-", 1)[0]
    if pack not in PACKS:
        raise ValueError(f"{rule!r}: not a rule of {PACKS}")
    rule_id = f"{pack}::{rule}" + (f"[{finding}]" if finding else "")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))
