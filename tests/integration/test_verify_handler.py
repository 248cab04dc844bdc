"""The Verify checkpoint Task state's Lambda handler under moto, against checkpoints the real document made.

Each checkpoint is made the way the state machine makes it: the Evaluate handler plans the command, the
stack's checkpoint document is sent with SSM SendCommand and really runs ``checkpoint.sh`` on a
simulated instance (AWS CLI against moto), and GetCommandInvocation is polled until the command ends.
The Verify handler then gets ``{"evaluation", "invocation", "execution_name"}`` as from the state machine.
Tampering happens in S3 after the upload; every tampered checkpoint must come out UploadUnverified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.records import RecordConflict, RunKey, RunRecords
from tests.integration.conftest import BUCKET, CTX, RUNS_TABLE, World

MIB = 1024 * 1024
PENDING = ("Pending", "InProgress", "Delayed")
INVOCATION_FIELDS = ("Status", "StatusDetails", "ResponseCode", "StandardOutputContent", "StandardErrorContent")
SUCCESS = {"Status": "Success", "StatusDetails": "Success", "ResponseCode": 0, "StandardOutputContent": "", "StandardErrorContent": ""}


@dataclass
class Checkpoint:
    """One planned (and usually uploaded) checkpoint: what the state machine holds after its Wait loop."""

    evaluation: dict[str, Any]
    invocation: dict[str, Any]
    execution: str
    instance_id: str

    @property
    def manifest_key(self) -> str:
        return str(self.evaluation["checkpoint"]["manifest_key"])

    @property
    def upload_prefix(self) -> str:
        return str(self.evaluation["checkpoint"]["upload_prefix"])

    @property
    def manifest_uri(self) -> str:
        return str(self.evaluation["checkpoint"]["manifest_uri"])


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def b64crc(data: bytes) -> str:
    """S3's ChecksumCRC32 of DATA (what the checkpoint document sends): base64 of the big-endian CRC32."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def plan(world: World, name: str, run: str, files: dict[str, bytes], **tags: str) -> tuple[Any, dict[str, Any], str]:
    """An opted-in instance holding ``files`` below ``<root>/ckpt``, its marker written, evaluated complete."""
    from evaluate_completion.handler import lambda_handler
    from shared.naming import execution_name

    inst = world.instance(name, {"autostop:enabled": "true", "autostop:run-id": run, "autostop:checkpoint-dir": "{root}/ckpt", **tags})
    for rel, data in files.items():
        write(inst.root / "ckpt" / rel, data)
    world.client("s3").put_object(Bucket=BUCKET, Key=world.run_key(run, f"runs/{run}/_SUCCESS"), Body=b"done")
    execution = execution_name(inst.instance_id, run, "complete")
    lifecycle = {"instance_id": inst.instance_id, "run_id": run, "reason": "complete"}
    evaluation = lambda_handler({"input": lifecycle, "execution_name": execution}, CTX)
    assert evaluation["decision"] == "complete", evaluation["reason"]
    return inst, evaluation, execution


def send_checkpoint(world: World, evaluation: dict[str, Any], **overrides: str) -> str:
    """SendCommand as the Send command function does for the Run checkpoint command state; returns the command id."""
    params = {k: list(v) for k, v in evaluation["command"]["parameters"].items()}
    params.update({k: [v] for k, v in overrides.items()})
    resp = world.client("ssm").send_command(
        DocumentName=evaluation["command"]["document"],
        InstanceIds=[evaluation["instance_id"]],
        Parameters=params,
        TimeoutSeconds=evaluation["command"]["delivery_timeout_seconds"],
    )
    return str(resp["Command"]["CommandId"])


def get_invocation(world: World, command_id: str, instance_id: str) -> dict[str, Any]:
    inv = world.client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    return {k: inv.get(k) for k in INVOCATION_FIELDS}


def wait_invocation(world: World, command_id: str, instance_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll GetCommandInvocation until the command is no longer pending (the state machine's Wait loop)."""
    deadline = time.monotonic() + timeout
    while True:
        inv = get_invocation(world, command_id, instance_id)
        if inv["Status"] not in PENDING:
            return inv
        if time.monotonic() > deadline:
            raise AssertionError(f"checkpoint command still {inv['Status']} after {timeout} s")
        time.sleep(0.1)


def checkpoint(world: World, files: dict[str, bytes], *, run: str = "run-v", name: str = "v", **overrides: str) -> Checkpoint:
    inst, evaluation, execution = plan(world, name, run, files)
    command_id = send_checkpoint(world, evaluation, **overrides)
    invocation = wait_invocation(world, command_id, inst.instance_id)
    return Checkpoint(evaluation=evaluation, invocation=invocation, execution=execution, instance_id=inst.instance_id)


def verify(ck: Checkpoint, *, evaluation: dict[str, Any] | None = None, invocation: dict[str, Any] | None = None) -> dict[str, Any]:
    from verify_checkpoint.handler import lambda_handler

    event = {"evaluation": evaluation or ck.evaluation, "invocation": invocation or ck.invocation, "execution_name": ck.execution}
    return lambda_handler(event, CTX)


def read_manifest(world: World, ck: Checkpoint) -> dict[str, Any]:
    return json.loads(world.client("s3").get_object(Bucket=BUCKET, Key=ck.manifest_key)["Body"].read())


def result_line(invocation: dict[str, Any]) -> dict[str, Any]:
    line = json.loads(str(invocation["StandardOutputContent"]).strip().splitlines()[-1])
    assert isinstance(line, dict)
    return line


def naming(ck: Checkpoint, version_id: str | None, body: bytes, **changes: Any) -> dict[str, Any]:
    """The command's invocation, its result line naming manifest version VERSION_ID with BODY's SHA-256: what the
    instance would report had it written that manifest (a forged manifest the instance itself would have to name)."""
    line = {**result_line(ck.invocation), "manifest_version_id": version_id, "manifest_sha256": hashlib.sha256(body).hexdigest(), **changes}
    return {**ck.invocation, "StandardOutputContent": json.dumps(line) + "\n"}


def put_manifest(world: World, ck: Checkpoint, manifest: dict[str, Any] | bytes) -> dict[str, Any]:
    """Write a new version of the manifest; returns an invocation whose result line names that version."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    resp = world.client("s3").put_object(Bucket=BUCKET, Key=ck.manifest_key, Body=body, ChecksumAlgorithm="SHA256")
    return naming(ck, resp["VersionId"], body)


def delete_version(world: World, key: str, version_id: str) -> None:
    """Permanently delete one version (only the bucket's owner can: instances have no DeleteObject*)."""
    world.client("s3").delete_object(Bucket=BUCKET, Key=key, VersionId=version_id)


def assert_unverified(result: dict[str, Any], ck: Checkpoint, *needles: str) -> None:
    assert result["verified"] is False, result
    assert result["outcome"] == "UploadUnverified", result
    assert result["manifest_uri"] == ck.manifest_uri
    assert (result["files"], result["bytes"]) == (0, 0)
    for needle in needles:
        assert needle in result["reason"], (needle, result["reason"])


MODEL = b"weights-" * 512 + b"end"  # 4099 bytes
OPTIM = b"\x00\x01optimizer-state" * 100
IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


# --- verified, until tampered with -----------------------------------------------------------------------


def test_uploaded_checkpoint_is_verified_until_its_objects_are_tampered_with(world: World) -> None:
    # Given a checkpoint uploaded by the real checkpoint document
    ck = checkpoint(world, {"step-000005/model.bin": MODEL, "step-000005/optim/state.pt": OPTIM})
    assert ck.invocation["Status"] == "Success", ck.invocation
    manifest = read_manifest(world, ck)

    # When the Verify step runs
    result = verify(ck)

    # Then the upload is verified, and the counts are the manifest's
    assert result["verified"] is True, result["reason"]
    assert result["outcome"] == "Verified"
    assert result["manifest_uri"] == ck.manifest_uri
    assert result["files"] == len(manifest["files"]) == 2
    assert result["bytes"] == manifest["total_bytes"] == len(MODEL) + len(OPTIM)
    assert result["step"] == manifest["step"] == 5
    s3 = world.client("s3")
    for f in manifest["files"]:
        assert f["key"].startswith(ck.upload_prefix)
        body = s3.get_object(Bucket=BUCKET, Key=f["key"])["Body"].read()
        assert body == {"model.bin": MODEL, "optim/state.pt": OPTIM}[f["path"]]
        assert (f["checksum_crc32"], f["parts"], "sha256" in f) == (b64crc(body), 0, False)
    line = result_line(ck.invocation)
    assert line["manifest_sha256"] == hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=ck.manifest_key)["Body"].read()).hexdigest()
    assert line["manifest_version_id"] and all(f["version_id"] for f in manifest["files"])
    entry = next(f for f in manifest["files"] if f["path"] == "model.bin")
    key = entry["key"]

    # When another writer overwrites the object with other bytes (even with their own valid S3 checksum), Verify
    # still reads the version the instance wrote: the new version is never looked at
    other = bytes(reversed(MODEL))
    s3.put_object(Bucket=BUCKET, Key=key, Body=other, ChecksumAlgorithm="SHA256")
    assert verify(ck)["verified"] is True
    # and when it deletes the key (a delete marker), the instance's version is still there
    s3.delete_object(Bucket=BUCKET, Key=key)
    assert verify(ck)["verified"] is True

    # When the exact version the instance wrote is gone, Verify names it as missing
    delete_version(world, key, entry["version_id"])
    assert_unverified(verify(ck), ck, "1 of 2 objects failed verification", f"{key}: missing")


def test_another_tenant_cannot_forge_what_verify_reads(world: World) -> None:
    """Finding 1: an opted-in instance overwrites another's objects and rewrites its manifest with its own sizes
    and checksums right after the victim wrote it. Verify reads the victim's versions; the record lists the
    victim's checksums."""
    ck = checkpoint(world, {"step-000005/model.bin": MODEL, "step-000005/optim/state.pt": OPTIM})
    s3 = world.client("s3")
    original = read_manifest(world, ck)
    forged_files = []
    for f in original["files"]:
        body = b"forged by the other tenant " + f["path"].encode()
        resp = s3.put_object(Bucket=BUCKET, Key=f["key"], Body=body, ChecksumAlgorithm="CRC32")
        forged_files.append(dict(f, size=len(body), checksum_crc32=b64crc(body), version_id=resp["VersionId"]))
    forged = dict(original, files=forged_files, total_bytes=sum(f["size"] for f in forged_files))
    put_manifest(world, ck, forged)  # the attacker's version is now the current one

    result = verify(ck)

    assert result["verified"] is True, result["reason"]
    assert result["bytes"] == len(MODEL) + len(OPTIM)
    record = RunRecords(world.client("dynamodb"), RUNS_TABLE).get(RunKey(ck.instance_id, "run-v", ck.evaluation["session"]))
    assert record is not None
    last = record["last_checkpoint"]
    assert last["manifest_version_id"] == result_line(ck.invocation)["manifest_version_id"]
    assert last["manifest_sha256"] == result_line(ck.invocation)["manifest_sha256"]
    assert {o["checksum_crc32"] for o in last["objects"]} == {b64crc(MODEL), b64crc(OPTIM)}

    # A result line that names the forged manifest's version but the instance's SHA-256 is refused
    forged_version = s3.head_object(Bucket=BUCKET, Key=ck.manifest_key)["VersionId"]
    mixed = {**ck.invocation, "StandardOutputContent": json.dumps({**result_line(ck.invocation), "manifest_version_id": forged_version})}
    assert_unverified(verify(ck, invocation=mixed), ck, "is not what the instance wrote: its SHA-256 differs")
    # Counts that differ from the instance's own are refused
    wrong_counts = {**ck.invocation, "StandardOutputContent": json.dumps({**result_line(ck.invocation), "files": 3})}
    assert_unverified(verify(ck, invocation=wrong_counts), ck, "the instance reported 3 file(s)")


def test_a_result_without_a_manifest_version_is_unverified(world: World) -> None:
    """An unversioned bucket (or an old checkpoint document) gives no VersionId: nothing pins what was written."""
    ck = checkpoint(world, {"step-000005/model.bin": MODEL})
    unpinned = {**ck.invocation, "StandardOutputContent": json.dumps({**result_line(ck.invocation), "manifest_version_id": None})}
    assert_unverified(verify(ck, invocation=unpinned), ck, "names no S3 VersionId", "S3 Versioning")


def test_multipart_upload_is_verified_with_its_composite_checksum(world: World) -> None:
    # Given an 11 MiB file uploaded in 5 MiB parts (3 parts)
    data = os.urandom(11 * MIB)
    ck = checkpoint(world, {"step-000009/model.bin": data}, PartSizeBytes=str(5 * MIB))
    assert ck.invocation["Status"] == "Success", ck.invocation
    (entry,) = read_manifest(world, ck)["files"]
    assert entry["parts"] == 3
    assert entry["checksum_crc32"].endswith("-3")

    result = verify(ck)

    assert result["verified"] is True, result["reason"]
    assert (result["outcome"], result["files"], result["bytes"], result["step"]) == ("Verified", 1, len(data), 9)


# --- unverified: tampered manifests -----------------------------------------------------------------------


def test_tampered_manifests_are_unverified(world: World) -> None:
    """Manifests the instance's result line would have to name (defence in depth: the line pins the version and
    SHA-256, so these can only come from the instance itself): each is refused with its reason."""
    ck = checkpoint(world, {"step-000005/model.bin": MODEL, "step-000005/optim/state.pt": OPTIM})
    assert verify(ck)["verified"] is True
    s3 = world.client("s3")
    original = s3.get_object(Bucket=BUCKET, Key=ck.manifest_key)["Body"].read()
    manifest = json.loads(original)
    model_key = next(f["key"] for f in manifest["files"] if f["path"] == "model.bin")

    def tampered(**changes: Any) -> dict[str, Any]:
        return {**json.loads(original), **changes}

    # Not JSON
    assert_unverified(verify(ck, invocation=put_manifest(world, ck, b'{"schema_version": 1, "files": [')), ck, "is not a valid manifest")
    # JSON, but not a manifest (no files)
    assert_unverified(verify(ck, invocation=put_manifest(world, ck, tampered(files=[], total_bytes=0))), ck, "is not a valid manifest")
    # A version that does not exist
    assert_unverified(verify(ck, invocation=naming(ck, "no-such-version", original)), ck, f"manifest {ck.manifest_uri} (version")

    # A key outside this execution's upload prefix (the object exists, a copy of a verified one)
    outside = f"runs/run-v/checkpoints/elsewhere/{model_key.rsplit('/', 1)[-1]}"
    s3.put_object(Bucket=BUCKET, Key=outside, Body=MODEL, ChecksumAlgorithm="SHA256")
    files = [dict(f, key=outside) if f["key"] == model_key else f for f in manifest["files"]]
    assert_unverified(verify(ck, invocation=put_manifest(world, ck, tampered(files=files))), ck, f"outside {ck.upload_prefix}", outside)

    # Another run's, another instance's, another execution's manifest
    others = {"run_id": "other-run", "instance_id": "i-0aaaaaaaaaaaaaaaa", "execution_name": "someone-else", "bucket": "other-bucket"}
    for field, value in others.items():
        invocation = put_manifest(world, ck, tampered(**{field: value}))
        assert_unverified(verify(ck, invocation=invocation), ck, f"manifest {field} is {value!r}, expected {manifest[field]!r}")

    # Sizes that do not add up
    invocation = put_manifest(world, ck, tampered(total_bytes=manifest["total_bytes"] + 1))
    assert_unverified(verify(ck, invocation=invocation), ck, "total_bytes does not equal the sum of its file sizes")

    # An object whose listed version holds other bytes than the manifest says
    other = bytes(reversed(MODEL))
    resp = s3.put_object(Bucket=BUCKET, Key=model_key, Body=other, ChecksumAlgorithm="CRC32")
    files = [dict(f, version_id=resp["VersionId"]) if f["key"] == model_key else f for f in manifest["files"]]
    invocation = put_manifest(world, ck, tampered(files=files))
    assert_unverified(verify(ck, invocation=invocation), ck, f"{model_key}: S3 CRC32 checksum {b64crc(other)} differs from the instance's")
    # ... or the same bytes with S3 holding no CRC32 for them (another algorithm): not verified either
    resp = s3.put_object(Bucket=BUCKET, Key=model_key, Body=MODEL, ChecksumAlgorithm="SHA256")
    files = [dict(f, version_id=resp["VersionId"]) if f["key"] == model_key else f for f in manifest["files"]]
    invocation = put_manifest(world, ck, tampered(files=files))
    assert_unverified(verify(ck, invocation=invocation), ck, f"{model_key}: S3 CRC32 checksum none differs from the instance's")
    # ... or no version at all
    files = [dict(f, version_id=None) if f["key"] == model_key else f for f in manifest["files"]]
    assert_unverified(
        verify(ck, invocation=put_manifest(world, ck, tampered(files=files))), ck, f"{model_key}: the manifest names no S3 VersionId"
    )

    # The instance's own manifest, deleted (its exact version: only the bucket owner can)
    assert verify(ck)["verified"] is True
    delete_version(world, ck.manifest_key, result_line(ck.invocation)["manifest_version_id"])
    assert_unverified(verify(ck), ck, f"manifest {ck.manifest_uri} (version", "missing")


def test_a_manifest_older_than_the_decision_is_unverified(world: World) -> None:
    ck = checkpoint(world, {"step-000005/model.bin": MODEL, "step-000005/optim/state.pt": OPTIM})
    s3 = world.client("s3")
    original = s3.get_object(Bucket=BUCKET, Key=ck.manifest_key)["Body"].read()
    manifest = json.loads(original)
    model_key = next(f["key"] for f in manifest["files"] if f["path"] == "model.bin")

    # A manifest older than the decision (the decision is moved after the upload)
    not_before = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    later = dict(ck.evaluation, decided_at=not_before.isoformat())
    assert_unverified(verify(ck, evaluation=later), ck, f"manifest {ck.manifest_uri} is older than the decision")

    # A fresh manifest that answers another decision
    while datetime.now(UTC) < not_before:
        time.sleep(0.05)
    rewritten = put_manifest(world, ck, original)  # the same manifest, now newer than the decision, for the earlier decision
    assert_unverified(verify(ck, evaluation=later, invocation=rewritten), ck, "manifest answers the decision of")

    # A fresh manifest for this decision listing objects older than it (left over from before it)
    invocation = put_manifest(world, ck, {**manifest, "decision_time": not_before.strftime("%Y-%m-%dT%H:%M:%SZ")})
    result = verify(ck, evaluation=later, invocation=invocation)
    assert_unverified(result, ck, "2 of 2 objects", f"{model_key}: last modified", "is older than the decision")


def test_large_manifest_is_verified_with_a_small_result(world: World) -> None:
    # Given a planned checkpoint whose manifest lists 3000 objects that all exist with S3 SHA-256 checksums (the form
    # manifests had before CRC32: still verified)
    n = 3000
    inst, evaluation, execution = plan(world, "big", "run-big", {"step-000001/x": b"x"})
    prefix = evaluation["checkpoint"]["upload_prefix"]
    s3 = world.client("s3")
    files = []
    for i in range(n):
        body = f"shard {i}\n".encode()
        key = f"{prefix}step-000001/shard-{i:05d}.bin"
        resp = s3.put_object(Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm="SHA256")
        files.append(
            {
                "key": key,
                "path": f"shard-{i:05d}.bin",
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "checksum_sha256": b64sha(body),
                "parts": 0,
                "version_id": resp["VersionId"],
            }
        )
    manifest = {
        "schema_version": 1,
        "run_id": "run-big",
        "instance_id": inst.instance_id,
        "execution_name": execution,
        "decision_time": evaluation["decided_at"],
        "created_at": datetime.now(UTC).isoformat(),
        "checkpoint": {"name": "step-000001", "path": f"{inst.root}/ckpt/step-000001", "mtime": datetime.now(UTC).isoformat()},
        "step": 1,
        "bucket": BUCKET,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
    }
    counts = {"files": n, "bytes": manifest["total_bytes"]}
    ck = Checkpoint(
        evaluation=evaluation,
        invocation={**SUCCESS, "StandardOutputContent": json.dumps(counts)},
        execution=execution,
        instance_id=inst.instance_id,
    )
    ck.invocation = put_manifest(world, ck, manifest)

    # When Verify runs, then every object is checked and the result stays small
    result = verify(ck)
    assert result["verified"] is True, result["reason"]
    assert (result["files"], result["bytes"]) == (n, manifest["total_bytes"])
    assert len(json.dumps(result)) < 2048

    # And when many listed objects are gone, the reason names the first few and counts the rest, still small
    # (a 300-file manifest: the bound on the reason does not depend on the manifest's size)
    subset = files[:300]
    ck.invocation = {**ck.invocation, "StandardOutputContent": json.dumps({"files": 300, "bytes": sum(f["size"] for f in subset)})}
    ck.invocation = put_manifest(world, ck, {**manifest, "files": subset, "total_bytes": sum(f["size"] for f in subset)})
    for f in subset[100:140]:
        delete_version(world, f["key"], f["version_id"])
    result = verify(ck)
    assert_unverified(result, ck, "40 of 300 objects failed verification", f"{subset[100]['key']}: missing", "(and 35 more)")
    assert subset[105]["key"] not in result["reason"]
    assert len(json.dumps(result)) < 2048


# --- the command did not succeed -------------------------------------------------------------------------------


def test_failed_command_is_checkpoint_failed_with_the_scripts_error(world: World) -> None:
    # Given a checkpoint command that failed on the instance: the checkpoint directory is empty
    inst, evaluation, execution = plan(world, "f", "run-f", {})
    (inst.root / "ckpt").mkdir()
    (inst.root / "ckpt" / "step-000003.pt.tmp").write_bytes(b"half written")
    invocation = wait_invocation(world, send_checkpoint(world, evaluation), inst.instance_id)
    assert (invocation["Status"], invocation["ResponseCode"]) == ("Failed", 66), invocation
    ck = Checkpoint(evaluation=evaluation, invocation=invocation, execution=execution, instance_id=inst.instance_id)

    result = verify(ck)

    assert (result["verified"], result["outcome"]) == (False, "CheckpointFailed")
    assert result["reason"].startswith("NoCheckpoint: no complete checkpoint in " + str(inst.root / "ckpt")), result["reason"]
    assert result["manifest_uri"] == ck.manifest_uri
    # nothing was uploaded for this execution
    own = world.own(inst.instance_id)
    listed = world.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=own).get("Contents", [])
    assert [o["Key"] for o in listed] == [f"{own}runs/run-f/_SUCCESS"]


def test_failure_line_after_other_output_and_non_json_failures(world: World) -> None:
    inst, evaluation, execution = plan(world, "g", "run-g", {"step-000001/m": b"m"})
    ck = Checkpoint(evaluation=evaluation, invocation=SUCCESS, execution=execution, instance_id=inst.instance_id)
    failed_line = json.dumps({"result": "failed", "error": "UploadFailed", "message": "uploading m failed: AccessDenied"})

    # The script's failure line is the last JSON line of stdout, whatever came before it
    stdout = f"noise\n{{not json\n{failed_line}\n"
    result = verify(ck, invocation={**SUCCESS, "Status": "Failed", "ResponseCode": 67, "StandardOutputContent": stdout})
    assert (result["verified"], result["outcome"]) == (False, "CheckpointFailed")
    assert result["reason"] == "UploadFailed: uploading m failed: AccessDenied"

    # Without a failure line: the status, details, exit code and the last stderr line
    result = verify(
        ck,
        invocation={
            **SUCCESS,
            "Status": "TimedOut",
            "StatusDetails": "ExecutionTimedOut",
            "ResponseCode": -1,
            "StandardErrorContent": "a\nkilled by timeout\n",
        },
    )
    assert result["outcome"] == "CheckpointFailed"
    assert result["reason"] == "checkpoint command TimedOut (ExecutionTimedOut), exit code -1; stderr: killed by timeout"

    # A success status with no result line naming a manifest is still not a verified checkpoint
    result = verify(ck)
    assert_unverified(result, ck, f"manifest {ck.manifest_uri}: the checkpoint command's result names no S3 VersionId")


def test_command_still_in_progress_is_checkpoint_failed(world: World) -> None:
    # Given a checkpoint command still waiting for a trainer that ignores SIGTERM
    inst, evaluation, execution = plan(world, "p", "run-p", {"step-000001/model.bin": MODEL})
    trainer = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    try:
        assert trainer.stdout is not None and trainer.stdout.readline() == b"ready\n"
        pid_file = inst.root / "train.pid"
        pid_file.write_text(f"{trainer.pid}\n")
        command_id = send_checkpoint(world, evaluation, PidFile=str(pid_file), GraceSeconds="30")
        deadline = time.monotonic() + 15
        while get_invocation(world, command_id, inst.instance_id)["Status"] == "Pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the 30 s grace period
        invocation = get_invocation(world, command_id, inst.instance_id)
        assert invocation["Status"] == "InProgress", invocation
        assert trainer.poll() is None
        ck = Checkpoint(evaluation=evaluation, invocation=invocation, execution=execution, instance_id=inst.instance_id)

        # When the state machine stops waiting and Verify runs
        result = verify(ck)
    finally:
        inst.power_off()  # ends the checkpoint script before the trainer goes away
        trainer.kill()
        trainer.wait()

    # Then the checkpoint failed, and nothing was written
    assert (result["verified"], result["outcome"]) == (False, "CheckpointFailed")
    assert result["reason"] == "checkpoint command still InProgress when the state machine stopped waiting"
    listed = world.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=world.run_key("run-p", "runs/run-p/checkpoints/")).get("Contents", [])
    assert listed == []


# --- the run record is informational for the verdict --------------------------------------------------------


def test_a_run_record_that_cannot_be_written_leaves_the_checkpoint_verified(world: World) -> None:
    ck = checkpoint(world, {"step-000003/model.bin": MODEL}, name="norec")
    key = RunKey(ck.instance_id, "run-v", ck.evaluation["session"])
    records = RunRecords(world.client("dynamodb"), RUNS_TABLE)

    # the control: with the table there, the checkpoint is recorded and the reason says nothing of it
    written = verify(ck)
    assert written["verified"] is True, written["reason"]
    assert "run record not written" not in written["reason"]
    assert records.get(key)["last_checkpoint"]["manifest_uri"] == ck.manifest_uri  # type: ignore[index]

    # a non-transient DynamoDB error (the table is gone) does not fail the verification: the reason says so
    world.client("dynamodb").delete_table(TableName=RUNS_TABLE)
    result = verify(ck)

    assert (result["verified"], result["outcome"]) == (True, "Verified"), result["reason"]
    assert result["manifest_uri"] == ck.manifest_uri
    assert (result["files"], result["bytes"], result["step"]) == (1, len(MODEL), 3)
    assert result["reason"].endswith(" (run record not written: ResourceNotFoundException)")
    assert result["reason"].removesuffix(" (run record not written: ResourceNotFoundException)") == written["reason"]


class FailingRecords(RunRecords):
    """Run records whose every update raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(dynamodb=None, table="unused")
        self.error = error
        self.updates = 0

    def update(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.updates += 1
        raise self.error


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UpdateItem")


@pytest.mark.parametrize(
    ("error", "noted"),
    [
        (client_error("AccessDeniedException", 400), "AccessDeniedException"),
        (client_error("ValidationException", 400), "ValidationException"),
        (RecordConflict("run record i-x run-v#s kept changing; gave up after 8 attempts"), "run record i-x run-v#s kept changing"),
    ],
)
def test_a_non_transient_record_error_is_noted_in_the_reason_of_a_verified_checkpoint(world: World, error: Exception, noted: str) -> None:
    from shared.workflow import EvaluateOutput
    from verify_checkpoint.logic import Verifier

    ck = checkpoint(world, {"step-000004/model.bin": MODEL}, name="stub")
    records = FailingRecords(error)

    result = Verifier(world.client("s3"), records).verify(EvaluateOutput.model_validate(ck.evaluation), ck.invocation, ck.execution)

    assert records.updates == 1
    assert (result.verified, result.outcome, result.manifest_uri) == (True, "Verified", ck.manifest_uri), result.reason
    assert f" (run record not written: {noted}" in result.reason
    assert result.reason.endswith(")")


@pytest.mark.parametrize(
    ("code", "status"), [("ThrottlingException", 400), ("ProvisionedThroughputExceededException", 400), ("InternalServerError", 500)]
)
def test_a_transient_record_error_still_retries_the_verification(world: World, code: str, status: int) -> None:
    from shared.errors import TransientAwsError
    from shared.workflow import EvaluateOutput
    from verify_checkpoint.logic import Verifier

    ck = checkpoint(world, {"step-000004/model.bin": MODEL}, name="transient")

    with pytest.raises(TransientAwsError, match=f"run record update: {code}"):
        Verifier(world.client("s3"), FailingRecords(client_error(code, status))).verify(
            EvaluateOutput.model_validate(ck.evaluation), ck.invocation, ck.execution
        )
