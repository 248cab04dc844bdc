"""boto3 clients, created once per container with one retry policy; passed into logic as arguments."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@cache
def client(service: str) -> Any:
    """A cached boto3 client for ``service`` (``ec2``, ``s3``, ``ssm``, ``stepfunctions``)."""
    return boto3.client(service, config=CLIENT_CONFIG)


SINGLE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
"""``total_max_attempts`` counts the first request (botocore's ``max_attempts`` counts only the retries)."""


@cache
def single_attempt_client(service: str) -> Any:
    """A cached boto3 client that never repeats a request: for calls that must not run twice (SendCommand of a
    command that signals the trainer). Its caller decides what a failure means."""
    return boto3.client(service, config=SINGLE_ATTEMPT)
