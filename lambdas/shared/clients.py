"""AWS clients, created once per container with one retry policy; passed into logic as arguments.

They come from one botocore session, as ``boto3.client`` would make them from boto3's default session (the same
credential, region and endpoint resolution, the same client class), without importing boto3: its package loads
s3transfer and the resource layer, which no function uses (about 10 ms of every cold start).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from botocore.config import Config
from botocore.session import Session, get_session

from shared.observability import trace_aws_calls

trace_aws_calls()  # with tracing on, every call of every client below is an X-Ray subsegment

CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@cache
def session() -> Session:
    """This container's botocore session (boto3's default session holds one too)."""
    return get_session()


@cache
def client(service: str) -> Any:
    """A cached client for ``service`` (``ec2``, ``s3``, ``ssm``, ``stepfunctions``, ``dynamodb``, ``sns``...)."""
    return session().create_client(service, config=CLIENT_CONFIG)


SINGLE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=20)
"""``total_max_attempts`` counts the first request (botocore's ``max_attempts`` counts only the retries)."""


@cache
def single_attempt_client(service: str) -> Any:
    """A cached client that never repeats a request: for calls that must not run twice (SendCommand of a command that
    signals the trainer). Its caller decides what a failure means."""
    return session().create_client(service, config=SINGLE_ATTEMPT)
