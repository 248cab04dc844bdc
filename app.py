#!/usr/bin/env python3
"""CDK app: ``npx cdk synth`` / ``npx cdk deploy``. Settings come from cdk.json context (see infra/config.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from cdk_nag import AwsSolutionsChecks, NIST80053R5Checks  # noqa: E402

from infra.config import AutostopConfig  # noqa: E402
from infra.stack import AutostopStack  # noqa: E402

CDK_JSON = Path(__file__).resolve().parent / "cdk.json"


def build_app(context: dict[str, object] | None = None, outdir: str | None = None) -> tuple[cdk.App, AutostopStack]:
    """The app with the cdk-nag AwsSolutions and NIST 800-53 rev 5 packs enabled; synthesis fails on any
    unacknowledged finding of either.

    ``context`` overrides cdk.json's context (the CDK CLI's ``-c`` flags still take precedence).
    """
    defaults = json.loads(CDK_JSON.read_text()).get("context", {})
    app = cdk.App(context={**defaults, **(context or {})}, outdir=outdir)
    config = AutostopConfig.from_context(app.node)
    stack = AutostopStack(
        app,
        config.stack_name,
        config=config,
        description="autostop: stop GPU training instances only after a verified checkpoint",
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")),
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    cdk.Validations.of(app).add_plugins(NIST80053R5Checks(app))
    return app, stack


if __name__ == "__main__":
    build_app()[0].synth()
