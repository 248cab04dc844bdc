"""Infra tests: the stack is synthesized once per session, through the real app (cdk-nag on).

``local.deploy.synthesize()`` caches the template on disk, keyed by a digest of app.py, cdk.json,
infra/ and the shared constants, so a re-run with unchanged inputs costs nothing; any change to those
inputs synthesizes again (and a cdk-nag finding then fails the fixture, with the report in the error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass(frozen=True)
class Synthesized:
    template: Any
    """``aws_cdk.assertions.Template`` of the Autostop stack."""
    raw: dict[str, Any]
    """The same template as a plain dict."""


@pytest.fixture(scope="session")
def synthesized() -> Synthesized:
    from aws_cdk.assertions import Template

    from local.deploy import synthesize

    # The assertions expect the environment-agnostic template (<AWS::Region>/<AWS::AccountId> as
    # pseudo-parameter references), which is what the app produces without CDK_DEFAULT_* set.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CDK_DEFAULT_ACCOUNT", raising=False)
        mp.delenv("CDK_DEFAULT_REGION", raising=False)
        raw = synthesize()
    return Synthesized(template=Template.from_json(raw), raw=raw)
