"""Execution names (deterministic, valid, unique) and the S3 checksum comparison of the verifier."""

from __future__ import annotations

import base64
import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from shared.naming import execution_name
from verify_checkpoint.logic import checksum_matches

VALID_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
RUN_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)


def test_execution_name_reads_instance_run_reason() -> None:
    assert execution_name("i-0123456789abcdef0", "run-7", "complete") == "i-0123456789abcdef0-run-7-complete"
    assert execution_name("i-0123456789abcdef0", "run-7", "complete", 3) == "i-0123456789abcdef0-run-7-complete-3"


@given(run=RUN_IDS, attempt=st.integers(1, 20))
def test_execution_names_are_valid_and_deterministic(run: str, attempt: int) -> None:
    name = execution_name("i-0123456789abcdef0", run, "complete", attempt)
    assert VALID_NAME.match(name)
    assert name == execution_name("i-0123456789abcdef0", run, "complete", attempt)


@given(a=RUN_IDS, b=RUN_IDS)
def test_different_runs_never_share_a_name(a: str, b: str) -> None:
    if a != b:
        assert execution_name("i-0123456789abcdef0", a, "complete") != execution_name("i-0123456789abcdef0", b, "complete")


def b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_single_part_checksum() -> None:
    assert checksum_matches(b64(b"abc"), b64(b"abc"), 0)
    assert not checksum_matches(b64(b"abc"), b64(b"abd"), 0)
    assert not checksum_matches(b64(b"abc"), None, 0)


def test_composite_checksum_with_and_without_the_parts_suffix() -> None:
    composite = b64(hashlib.sha256(b"p1").digest() + hashlib.sha256(b"p2").digest())
    # AWS returns "<b64>-2"; moto returns "<b64>". Both must verify against the manifest's "<b64>-2".
    assert checksum_matches(f"{composite}-2", f"{composite}-2", 2)
    assert checksum_matches(f"{composite}-2", composite, 2)
    assert not checksum_matches(f"{composite}-2", f"{composite}-3", 2)
    assert not checksum_matches(f"{composite}-3", composite, 2)


def test_only_executions_that_never_reached_the_checkpoint_may_be_retried() -> None:
    import json

    from shared.executions import may_retry

    def closed(status: str, output: dict | None = None, error: str | None = None) -> dict:
        return {"status": status, "output": json.dumps(output) if output else None, "error": error}

    assert may_retry(closed("SUCCEEDED", {"outcome": "NotComplete", "reason": "no marker"}))
    assert may_retry(closed("SUCCEEDED", {"outcome": "Inconclusive"}))
    assert not may_retry(closed("SUCCEEDED", {"outcome": "Skipped", "manifest_uri": "s3://b/m.json"}))  # guard skip after checkpoint
    assert not may_retry(closed("SUCCEEDED", {"outcome": "Stopped", "manifest_uri": "s3://b/m.json"}))
    assert not may_retry(closed("FAILED", error="CheckpointFailed"))
    assert not may_retry(closed("ABORTED"))
    assert not may_retry(closed("SUCCEEDED", None))
