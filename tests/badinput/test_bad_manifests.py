"""Bad and huge checkpoint manifests, through the Verify handler with the manifest in moto S3.

One instance is evaluated complete by the real Evaluate handler (its plan names the manifest's key); each case
then writes a manifest there and runs the Verify handler as the state machine does (command Success). Every bad
manifest must be UploadUnverified with a clear reason (never an exception), so the state machine never reaches
the stop. Manifests of 5,000 and 20,000 files verify with an output (what the state machine carries) that holds
counts and the manifest's URI only: measured far below Step Functions' 256 KB payload limit (5,000 with one real
HeadObject per file; 20,000, and the all-missing variants, with HeadObject read from moto's backend for time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared import constants as c
from tests.badinput.cases import base_tags, key
from tests.badinput.conftest import LogLines, Report, checkpoint_commands, instance_state, shared_world
from tests.integration.conftest import BUCKET, CTX, World

SFN_PAYLOAD_LIMIT = 256 * 1024
FAR_BELOW = 8 * 1024
SUCCESS = {"Status": "Success", "StatusDetails": "Success", "ResponseCode": 0, "StandardOutputContent": "", "StandardErrorContent": ""}
BODY = b"checkpoint bytes"


@dataclass
class Planned:
    world: World
    evaluation: dict[str, Any]
    execution: str
    instance_id: str
    version_id: str
    """S3 VersionId of the one checkpoint object the instance "uploaded"."""

    @property
    def prefix(self) -> str:
        return str(self.evaluation["checkpoint"]["upload_prefix"])


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64crc(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planned]:
    from evaluate_completion.handler import lambda_handler
    from shared.naming import execution_name

    with shared_world(tmp_path_factory.mktemp("bad-manifests")) as world:
        inst = world.instance("verify", {**base_tags(), key("run-id"): "run-v"})
        world.client("s3").put_object(Bucket=BUCKET, Key=world.run_key("run-v", "runs/run-v/_SUCCESS"), Body=b"done")
        execution = execution_name(inst.instance_id, "run-v", "complete")
        lifecycle = {"instance_id": inst.instance_id, "run_id": "run-v", "reason": "complete"}
        evaluation = lambda_handler({"input": lifecycle, "execution_name": execution}, CTX)
        assert evaluation["decision"] == "complete", evaluation["reason"]
        put = world.client("s3").put_object(
            Bucket=BUCKET, Key=evaluation["checkpoint"]["upload_prefix"] + "step-1/model.bin", Body=BODY, ChecksumAlgorithm="SHA256"
        )
        yield Planned(world=world, evaluation=evaluation, execution=execution, instance_id=inst.instance_id, version_id=put["VersionId"])


def file_entry(p: Planned, name: str = "model.bin", body: bytes = BODY, **changes: Any) -> dict[str, Any]:
    entry = {
        "key": f"{p.prefix}step-1/{name}",
        "path": name,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "checksum_sha256": b64sha(body),
        "parts": 0,
        "version_id": p.version_id,
    }
    return {**entry, **changes}


def crc_entry(p: Planned, **changes: Any) -> dict[str, Any]:
    """file_entry in the form the checkpoint writes now (checksum_crc32 alone); the planned object holds a SHA-256."""
    entry = {k: v for k, v in file_entry(p).items() if k not in ("sha256", "checksum_sha256")}
    return {**entry, "checksum_crc32": b64crc(BODY), **changes}


def manifest(p: Planned, files: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    files = [file_entry(p)] if files is None else files
    now = datetime.now(UTC).isoformat()
    body = {
        "schema_version": 1,
        "run_id": "run-v",
        "instance_id": p.instance_id,
        "execution_name": p.execution,
        "decision_time": p.evaluation["decided_at"],
        "created_at": now,
        "checkpoint": {"name": "step-1", "path": "/data/ckpt/step-1", "mtime": now},
        "step": 1,
        "bucket": BUCKET,
        "files": files,
        "total_bytes": sum(f["size"] for f in files if isinstance(f.get("size"), int)),
    }
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def verify(p: Planned, body: bytes, s3: Any = None) -> dict[str, Any]:
    from verify_checkpoint import handler

    put = p.world.client("s3").put_object(Bucket=BUCKET, Key=p.evaluation["checkpoint"]["manifest_key"], Body=body)
    event = {"evaluation": p.evaluation, "invocation": naming(put["VersionId"], body), "execution_name": p.execution}
    if s3 is None:
        return handler.lambda_handler(event, CTX)  # type: ignore[no-any-return]
    original = handler.client
    handler.client = lambda service: s3 if service == "s3" else original(service)  # type: ignore[assignment]
    try:
        return handler.lambda_handler(event, CTX)  # type: ignore[no-any-return]
    finally:
        handler.client = original  # type: ignore[assignment]


def naming(version_id: str, body: bytes) -> dict[str, Any]:
    """The command's invocation as the instance that wrote BODY (at VERSION_ID) reports it: its result line pins the
    manifest's version and SHA-256, with the file and byte counts the manifest claims."""
    try:
        claimed = json.loads(body)
        counts = {"files": len(claimed["files"]), "bytes": claimed["total_bytes"]}
    except Exception:  # not a manifest: the counts are never reached
        counts = {}
    line = {"result": "uploaded", "manifest_version_id": version_id, "manifest_sha256": hashlib.sha256(body).hexdigest(), **counts}
    return {**SUCCESS, "StandardOutputContent": json.dumps(line) + "\n"}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD: list[tuple[str, Any, str]] = [
    ("not JSON", lambda p: b"{not json", "is not a valid manifest"),
    ("invalid UTF-8", lambda p: b"\xff\xfe\x00{", "is not a valid manifest"),
    ("empty body", lambda p: b"", "is not a valid manifest"),
    ("a JSON array", lambda p: dumps([manifest(p)]), "valid dictionary"),
    ("a JSON string", lambda p: dumps("manifest"), "valid dictionary"),
    ("JSON null", lambda p: b"null", "valid dictionary"),
    ("nested 100,000 deep", lambda p: b"[" * 100_000 + b"]" * 100_000, "is not a valid manifest"),
    ("missing files", lambda p: dumps(_drop(manifest(p), "files")), "files"),
    ("missing run_id", lambda p: dumps(_drop(manifest(p), "run_id")), "run_id"),
    ("empty files", lambda p: dumps(manifest(p, files=[])), "files"),
    ("schema_version 2", lambda p: dumps(manifest(p, schema_version=2)), "schema_version"),
    ("the same key twice", lambda p: dumps(manifest(p, files=[file_entry(p), file_entry(p)])), "same key twice"),
    ("duplicate JSON member (run_id)", lambda p: _dup_member(manifest(p), "run_id", "other-run"), "appears twice"),
    ("duplicate JSON member (files)", lambda p: _dup_member(manifest(p), "files", []), "appears twice"),
    ("key outside the upload prefix", lambda p: dumps(manifest(p, files=[file_entry(p, key="runs/other/x.bin")])), "outside"),
    ("key in another run", lambda p: dumps(manifest(p, files=[file_entry(p, key="runs/run-w/checkpoints/x/model.bin")])), "outside"),
    ("key with ..", lambda p: dumps(manifest(p, files=[file_entry(p, key=f"{p.prefix}../../x.bin")])), "'..' segment"),
    ("negative size", lambda p: dumps(manifest(p, files=[file_entry(p, size=-1)])), "greater than or equal to 0"),
    ("size a word", lambda p: dumps(manifest(p, files=[file_entry(p, size="big")])), "size"),
    ("sha256 upper-case", lambda p: dumps(manifest(p, files=[file_entry(p, sha256=hashlib.sha256(BODY).hexdigest().upper())])), "sha256"),
    ("sha256 short", lambda p: dumps(manifest(p, files=[file_entry(p, sha256="ab" * 31)])), "sha256"),
    (
        "checksum hex, not base64",
        lambda p: dumps(manifest(p, files=[file_entry(p, checksum_sha256=hashlib.sha256(BODY).hexdigest())])),
        "checksum",
    ),
    ("checksum without =", lambda p: dumps(manifest(p, files=[file_entry(p, checksum_sha256=b64sha(BODY)[:-1])])), "checksum"),
    ("checksum of other bytes", lambda p: dumps(manifest(p, files=[file_entry(p, checksum_sha256=b64sha(b"other"))])), "differs"),
    ("no checksum", lambda p: dumps(manifest(p, files=[file_entry(p, sha256=None, checksum_sha256=None)])), "exactly one of"),
    ("CRC32 and SHA-256 checksums", lambda p: dumps(manifest(p, files=[file_entry(p, checksum_crc32=b64crc(BODY))])), "exactly one of"),
    ("CRC32 beside a sha256", lambda p: dumps(manifest(p, files=[crc_entry(p, sha256=hashlib.sha256(BODY).hexdigest())])), "beside"),
    ("CRC32 of SHA-256 length", lambda p: dumps(manifest(p, files=[crc_entry(p, checksum_crc32=b64sha(BODY))])), "checksum_crc32"),
    (
        "composite CRC32, no part_size",
        lambda p: dumps(manifest(p, files=[crc_entry(p, checksum_crc32="AAAAAA==-2", parts=2)])),
        "part_size",
    ),
    (
        "CRC32 without its parts suffix",
        lambda p: dumps(manifest(p, files=[crc_entry(p, parts=2, part_size=5 * 1024 * 1024)])),
        "does not fit parts 2",
    ),
    ("version_id null", lambda p: dumps(manifest(p, files=[crc_entry(p, version_id="null")])), "version_id 'null'"),
    ("CRC32 S3 does not hold", lambda p: dumps(manifest(p, files=[crc_entry(p)])), "S3 CRC32 checksum none differs"),
    ("parts 10001", lambda p: dumps(manifest(p, files=[file_entry(p, parts=10001)])), "parts"),
    ("total_bytes wrong", lambda p: dumps(manifest(p, total_bytes=1)), "total_bytes"),
    ("another instance's manifest", lambda p: dumps(manifest(p, instance_id="i-0000000000000000f")), "instance_id"),
    ("another execution's manifest", lambda p: dumps(manifest(p, execution_name="other")), "execution_name"),
    ("another bucket", lambda p: dumps(manifest(p, bucket="other-bucket")), "bucket"),
    ("a missing object", lambda p: dumps(manifest(p, files=[file_entry(p, name="gone.bin")])), "missing"),
    ("over MAX_MANIFEST_BYTES", lambda p: b" " * (c.MAX_MANIFEST_BYTES + 1), f"larger than {c.MAX_MANIFEST_BYTES} bytes"),
]


def _drop(body: dict[str, Any], name: str) -> dict[str, Any]:
    body.pop(name)
    return body


def _dup_member(body: dict[str, Any], name: str, first: Any) -> bytes:
    # {"<name>": <first>, ..., "<name>": <the valid value>}: json.loads would silently keep the last one
    text = json.dumps(body)
    return ("{" + json.dumps(name) + ": " + json.dumps(first) + ", " + text[1:]).encode()


@pytest.mark.parametrize(("cid", "make", "expect"), BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_unverified_with_its_reason(
    planned: Planned, cid: str, make: Any, expect: str, logs: LogLines, report: Report
) -> None:
    mark = logs.mark()
    body = make(planned)
    out = verify(planned, body)
    assert (out["verified"], out["outcome"]) == (False, "UploadUnverified"), out
    assert expect in out["reason"], out["reason"]
    assert len(json.dumps(out)) < FAR_BELOW
    assert any(line["message"] == "verified" and expect in line["reason"] for line in logs.since(mark))
    assert checkpoint_commands(planned.world) == [] and instance_state(planned.world, planned.instance_id) == "running"
    shown = body if len(body) < 200 else body[:100] + f"... ({len(body)} bytes)".encode()
    report.add(cid, "manifest", shown.decode("utf-8", "backslashreplace"), out["outcome"], out["reason"], acted=False)


def test_the_control_manifest_verifies(planned: Planned) -> None:
    out = verify(planned, dumps(manifest(planned)))
    assert out["verified"] is True, out["reason"]


# --- thousands of files: only references and counts pass through the state machine ---------------------------------------


class BackendHeads:
    """The moto S3 client, except that HeadObject reads moto's backend directly (same object state, no request
    serialization): 20,000 HeadObject calls through botocore take about a minute here. The 20,000-file case checks
    this shortcut against real HeadObject answers first; the 5,000-file case uses real HeadObject throughout."""

    def __init__(self, s3: Any) -> None:
        from moto.s3.models import s3_backends

        self._s3 = s3
        self._backend = s3_backends["123456789012"]["aws"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def head_object(self, Bucket: str, Key: str, ChecksumMode: str | None = None, VersionId: str | None = None) -> dict[str, Any]:  # noqa: N803
        obj = self._backend.get_object(Bucket, Key, version_id=VersionId)
        if obj is None:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")
        return {
            "ContentLength": obj.size,
            "ChecksumSHA256": obj.checksum_value,
            "LastModified": obj.last_modified.replace(microsecond=0, tzinfo=UTC),
        }


def many_files(p: Planned, n: int, tag: str) -> list[dict[str, Any]]:
    """``n`` one-line objects in moto (through its backend: 20,000 PutObject calls would take a minute), with the
    SHA-256 checksums S3 keeps, and their manifest entries."""
    from moto.s3.models import s3_backends

    backend = s3_backends["123456789012"]["aws"]
    files = []
    for i in range(n):
        body = f"{tag} shard {i}\n".encode()
        k = f"{p.prefix}step-1/{tag}/shard-{i:05d}.bin"
        obj = backend.put_object(BUCKET, k, body, checksum_value=b64sha(body))
        obj.checksum_algorithm = "SHA256"
        files.append(file_entry(p, name=f"{tag}/shard-{i:05d}.bin", body=body, key=k, version_id=obj.version_id))
    return files


def payload_sizes(p: Planned, out: dict[str, Any]) -> dict[str, int]:
    """The JSON sizes of what the state machine carries after Verify, with SSM's 24,000-character stdout maximum."""
    invocation = {**SUCCESS, "StandardOutputContent": "x" * 24_000}
    state = {"input": {"instance_id": p.instance_id, "run_id": "run-v", "reason": "complete"}, "evaluation": p.evaluation}
    state |= {"invocation": invocation, "verification": out}
    return {"verification": len(json.dumps(out)), "evaluation": len(json.dumps(p.evaluation)), "state": len(json.dumps(state))}


@pytest.mark.parametrize("n", [5_000, 20_000])
def test_a_manifest_of_thousands_of_files_passes_only_counts_and_a_reference(planned: Planned, n: int, report: Report) -> None:
    files = many_files(planned, n, f"n{n}")
    body = dumps(manifest(planned, files=files))
    s3 = None  # 5,000: the handler's own client, one real HeadObject per file
    if n > 5_000:  # the shortcut, checked to answer as HeadObject does
        s3 = BackendHeads(planned.world.client("s3"))
        real = planned.world.client("s3")
        for f in files[:: n // 50]:
            head = real.head_object(Bucket=BUCKET, Key=f["key"], ChecksumMode="ENABLED", VersionId=f["version_id"])
            fields = ("ContentLength", "ChecksumSHA256", "LastModified")
            assert s3.head_object(Bucket=BUCKET, Key=f["key"], VersionId=f["version_id"]) == {k: head[k] for k in fields}

    out = verify(planned, body, s3)
    assert out["verified"] is True, out["reason"]
    assert (out["files"], out["bytes"]) == (n, sum(f["size"] for f in files))
    sizes = payload_sizes(planned, out)
    assert sizes["verification"] < 1024 and sizes["evaluation"] < 4096, sizes
    assert sizes["state"] < SFN_PAYLOAD_LIMIT // 8, sizes
    assert files[1]["key"] not in json.dumps(out)
    record = planned.world.client("dynamodb").get_item(
        TableName="autostop-runs", Key={"instance_id": {"S": planned.instance_id}, "run": {"S": f"run-v#{planned.evaluation['session']}"}}
    )["Item"]
    assert len(json.dumps(record)) < 400 * 1024 // 4  # the run record keeps the first objects only (DynamoDB: 400 KB items)

    # And with every object gone, the reason names five and counts the rest
    gone = [file_entry(planned, name=f"gone/{i}.bin") for i in range(n)]
    unverified = verify(planned, dumps(manifest(planned, files=gone)), s3 or BackendHeads(planned.world.client("s3")))
    assert unverified["outcome"] == "UploadUnverified" and f"{n} of {n} objects failed verification" in unverified["reason"]
    assert len(json.dumps(unverified)) < FAR_BELOW
    for result, what in ((out, "verified"), (unverified, "all objects missing")):
        report.add(
            f"manifest of {n} files, {what}",
            "manifest",
            f"{len(body)} byte manifest, {n} entries",
            result["outcome"],
            result["reason"],
            acted=False,
            payload_bytes=payload_sizes(planned, result),
            sfn_limit_bytes=SFN_PAYLOAD_LIMIT,
        )
    assert checkpoint_commands(planned.world) == [] and instance_state(planned.world, planned.instance_id) == "running"
