"""Shared fixtures. Every test runs with fake AWS credentials and no real endpoint configured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

FAKE = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
}


@pytest.fixture(autouse=True, scope="session")
def _fake_aws_environment() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in [*FAKE, "AWS_PROFILE", "AWS_ENDPOINT_URL"]}
    os.environ.update(FAKE)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def function_env(**overrides: Any) -> dict[str, str]:
    """An environment like the stack gives the functions (see infra/stack.py)."""
    env = {
        "AUTOSTOP_TAG_PREFIX": "autostop",
        "AUTOSTOP_CHECKPOINT_BUCKET": "ckpt-bucket",
        "AUTOSTOP_INSTANCE_ARN_PREFIX": "arn:aws:ec2:us-east-1:123456789012:instance/",
        "AUTOSTOP_PROBE_DOCUMENT": "Autostop-Probe",
        "AUTOSTOP_CHECKPOINT_DOCUMENT": "Autostop-Checkpoint",
        "AUTOSTOP_POLL_SECONDS": "0.05",
        "AUTOSTOP_PROBE_TIMEOUT_SECONDS": "10",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env
