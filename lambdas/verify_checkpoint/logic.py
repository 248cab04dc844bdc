"""Verify checkpoint Task state: judge the checkpoint command, then prove the upload from S3 by provenance.

The command's result line reaches the control plane through SSM from the instance that wrote the checkpoint,
so it pins what is read: the manifest's S3 VersionId and SHA-256, and the file and byte counts. The manifest
is read at exactly that version (GetObject/HeadObject with VersionId) and must hash to that SHA-256; every
object it lists is checked at the VersionId the instance got back from S3 (HeadObject, ChecksumMode=ENABLED)
for presence, size, S3's own checksum (CRC32; SHA-256 in manifests written before CRC32) and a LastModified no
older than the decision. Anything another writer put at the same keys is a different version and is never read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from shared import constants as c
from shared.errors import TransientAwsError, error_code, is_transient
from shared.models import Manifest, ManifestFile
from shared.probe import last_json_line
from shared.records import RecordConflict, RunKey, RunRecords, checkpoint_entry
from shared.workflow import EvaluateOutput, VerifyOutput

MAX_REASONS = 5


def command_failure(invocation: dict[str, Any]) -> str | None:
    """Why the checkpoint command did not succeed, or None when its status is Success.

    ``invocation`` holds GetCommandInvocation's Status, StatusDetails, ResponseCode,
    StandardOutputContent and StandardErrorContent (stdout is at most 24,000 characters there).
    """
    status = invocation.get("Status", "Unknown")
    if status == "Success":
        return None
    line = last_json_line(invocation.get("StandardOutputContent", "") or "")
    if line and line.get("result") == "failed":
        return f"{line.get('error', 'Failed')}: {line.get('message', '')}".strip()
    if status in ("Pending", "InProgress", "Delayed"):
        return f"checkpoint command still {status} when the state machine stopped waiting"
    detail = invocation.get("StatusDetails", status)
    rc = invocation.get("ResponseCode", -1)
    err = (invocation.get("StandardErrorContent", "") or "").strip().splitlines()
    tail = f"; stderr: {err[-1][:300]}" if err else ""
    return f"checkpoint command {status} ({detail}), exit code {rc}{tail}"


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a member name repeats (parsers disagree on which value counts)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"member {twice!r} appears twice in one JSON object")
    return out


def checksum_matches(expected: str, actual: str | None, parts: int) -> bool:
    """Compare the manifest's checksum with S3's (``ChecksumCRC32`` or ``ChecksumSHA256`` from HeadObject).

    S3 returns a composite multipart checksum as ``<base64>-<parts>``; some emulators omit the suffix.
    The base64 digest must always be equal; a suffix, where present on either side, must name the same
    number of parts.
    """
    if not actual:
        return False
    exp_digest, _, exp_parts = expected.partition("-")
    act_digest, _, act_parts = actual.partition("-")
    if exp_digest != act_digest:
        return False
    if act_parts and act_parts != str(parts):
        return False
    return not (exp_parts and exp_parts != str(parts))


CHECKSUM_NAMES = {"CRC32": "CRC32", "SHA256": "SHA-256"}
VERSION_ID_RE = re.compile(r"^[A-Za-z0-9._+/=-]{1,1024}$")
SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def pinned_manifest(line: dict[str, Any]) -> tuple[str, str] | str:
    """(VersionId, SHA-256 hex) of the manifest that the checkpoint command's result line names, or why not.

    ``line``: the command's final JSON line (``manifest_version_id``, ``manifest_sha256``)."""
    version, digest = line.get("manifest_version_id"), line.get("manifest_sha256")
    if not isinstance(version, str) or not VERSION_ID_RE.fullmatch(version):
        return (
            "the checkpoint command's result names no S3 VersionId for it, so what it wrote cannot be told from what "
            "another writer put at the same key; the checkpoint bucket must have S3 Versioning enabled"
        )
    if not isinstance(digest, str) or not SHA256_HEX_RE.fullmatch(digest):
        return "the checkpoint command's result names no SHA-256 for it"
    return version, digest


class Verifier:
    """Reads one manifest and checks its objects. ``s3`` is a boto3 S3 client; ``records`` (optional) gets
    the verified checkpoint as the run record's ``last_checkpoint``."""

    def __init__(self, s3: Any, records: RunRecords | None = None, max_workers: int = 16) -> None:
        self.s3 = s3
        self.records = records
        self.max_workers = max_workers

    def _head(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, Any] | str:
        pinned = {"VersionId": version_id} if version_id else {}
        try:
            return self.s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **pinned)  # type: ignore[no-any-return]
        except ClientError as exc:
            if is_transient(exc):
                raise TransientAwsError(f"HeadObject s3://{bucket}/{key}: {error_code(exc)}") from exc
            code = error_code(exc)
            return "missing" if code in ("404", "NoSuchKey", "NotFound") else f"HeadObject failed ({code})"

    def check_file(self, bucket: str, f: ManifestFile, not_before: datetime) -> str | None:
        if not f.version_id:
            return f"{f.key}: the manifest names no S3 VersionId (the checkpoint bucket must be versioned)"
        head = self._head(bucket, f.key, f.version_id)
        if isinstance(head, str):
            return f"{f.key}: {head}"
        if head.get("ContentLength") != f.size:
            return f"{f.key}: size {head.get('ContentLength')} bytes in S3, {f.size} in the manifest"
        algorithm, want = f.checksum
        if not checksum_matches(want, head.get(f"Checksum{algorithm}"), f.parts):
            got = head.get(f"Checksum{algorithm}") or "none"
            return f"{f.key}: S3 {CHECKSUM_NAMES[algorithm]} checksum {got} differs from the instance's {want}"
        ctype = head.get("ChecksumType")
        if ctype and ctype != ("COMPOSITE" if f.parts else "FULL_OBJECT"):
            return f"{f.key}: checksum type {ctype} does not match a {'multipart' if f.parts else 'single'} upload"
        if head["LastModified"] < not_before:
            return f"{f.key}: last modified {head['LastModified'].isoformat()} is older than the decision"
        return None

    def verify(self, evaluation: EvaluateOutput, invocation: dict[str, Any], execution: str) -> VerifyOutput:
        """Judge the command, then the manifest and each object; never raises for bad data.

        Raises:
            TransientAwsError: S3 throttled or failed; the Task state's Retry runs this step again.
        """
        loc = evaluation.checkpoint
        if loc is None:
            return VerifyOutput(verified=False, outcome="CheckpointFailed", reason="no checkpoint was planned")
        failure = command_failure(invocation)
        if failure:
            return VerifyOutput(verified=False, outcome="CheckpointFailed", reason=failure, manifest_uri=loc.manifest_uri)
        not_before = evaluation.decided_at.replace(microsecond=0)

        def unverified(reason: str) -> VerifyOutput:
            return VerifyOutput(verified=False, outcome="UploadUnverified", reason=reason, manifest_uri=loc.manifest_uri)

        line = last_json_line(invocation.get("StandardOutputContent", "") or "") or {}
        pinned = pinned_manifest(line)
        if isinstance(pinned, str):
            return unverified(f"manifest {loc.manifest_uri}: {pinned}")
        version, digest = pinned
        head = self._head(loc.bucket, loc.manifest_key, version)
        if isinstance(head, str):
            return unverified(f"manifest {loc.manifest_uri} (version {version}): {head}")
        if head.get("ContentLength", 0) > c.MAX_MANIFEST_BYTES:
            return unverified(f"manifest {loc.manifest_uri} is larger than {c.MAX_MANIFEST_BYTES} bytes")
        if head["LastModified"] < not_before:
            return unverified(f"manifest {loc.manifest_uri} is older than the decision")
        try:
            body = self.s3.get_object(Bucket=loc.bucket, Key=loc.manifest_key, VersionId=version)["Body"].read()
        except ClientError as exc:
            if is_transient(exc):
                raise TransientAwsError(f"GetObject {loc.manifest_uri}: {error_code(exc)}") from exc
            return unverified(f"manifest {loc.manifest_uri}: GetObject failed ({error_code(exc)})")
        if hashlib.sha256(body).hexdigest() != digest:
            return unverified(f"manifest {loc.manifest_uri} (version {version}) is not what the instance wrote: its SHA-256 differs")
        try:
            manifest = Manifest.model_validate(json.loads(body, object_pairs_hook=_unique_members))
        except ValidationError as exc:  # name the field and the rule, not "1 validation error for Manifest"
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "manifest"
            return unverified(f"manifest {loc.manifest_uri} is not a valid manifest: {where}: {err['msg'][:300]}")
        except (ValueError, RecursionError) as exc:  # not JSON, a repeated member, or nested too deep
            return unverified(f"manifest {loc.manifest_uri} is not a valid manifest: {str(exc).splitlines()[0][:300]}")

        expected = {
            "run_id": evaluation.run_id,
            "instance_id": evaluation.instance_id,
            "execution_name": execution,
            "bucket": loc.bucket,
        }
        for field_name, want in expected.items():
            if getattr(manifest, field_name) != want:
                return unverified(f"manifest {field_name} is {getattr(manifest, field_name)!r}, expected {want!r}")
        if manifest.decision_time.replace(microsecond=0) != not_before:
            return unverified(f"manifest answers the decision of {manifest.decision_time.isoformat()}, not {not_before.isoformat()}")
        outside = [f.key for f in manifest.files if not f.key.startswith(loc.upload_prefix)]
        if outside:
            return unverified(f"manifest lists {len(outside)} key(s) outside {loc.upload_prefix}, e.g. {outside[0]}")
        if manifest.total_bytes != sum(f.size for f in manifest.files):
            return unverified("manifest total_bytes does not equal the sum of its file sizes")
        if (line.get("files"), line.get("bytes")) != (len(manifest.files), manifest.total_bytes):
            return unverified(
                f"the instance reported {line.get('files')} file(s) and {line.get('bytes')} bytes, "
                f"the manifest lists {len(manifest.files)} and {manifest.total_bytes}"
            )

        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(manifest.files))) as pool:
            problems = [p for p in pool.map(lambda f: self.check_file(loc.bucket, f, not_before), manifest.files) if p]
        if problems:
            more = f" (and {len(problems) - MAX_REASONS} more)" if len(problems) > MAX_REASONS else ""
            return unverified(
                f"{len(problems)} of {len(manifest.files)} objects failed verification: " + "; ".join(problems[:MAX_REASONS]) + more
            )
        fresh = line.get("fresh") if isinstance(line.get("fresh"), bool) else None
        trainer = str(line["trainer"]) if isinstance(line.get("trainer"), str) else None
        names = "/".join(sorted({CHECKSUM_NAMES[f.checksum[0]] for f in manifest.files}))
        reason = f"{len(manifest.files)} object(s), {manifest.total_bytes} bytes verified against S3 {names} checksums"
        if manifest.selection is not None and manifest.selection.summary:
            reason += f" ({manifest.selection.summary})"
        if evaluation.decision == "spot_checkpoint":
            saved = manifest.checkpoint.mtime.isoformat()
            if trainer == "not_configured":
                how = f"the trainer was not signalled; the newest checkpoint on disk, from {saved}, was uploaded"
            elif fresh:
                how = "the trainer saved it after the signal"
            elif trainer == "exited":
                how = f"the trainer exited on the signal without a newer save, so this checkpoint (saved {saved}) is its last state"
            else:
                how = (
                    f"the trainer did not save a newer checkpoint in time (trainer {trainer or 'unknown'}), so the newest one "
                    f"already on disk, from {saved}, was uploaded"
                )
            reason = f"{evaluation.reason}. Checkpoint {manifest.checkpoint.name} (step {manifest.step}): {reason}; {how}"
        not_recorded = self._record(evaluation, execution, manifest, fresh, pinned, upload_seconds(line))
        if not_recorded:
            reason += f" (run record not written: {not_recorded})"
        return VerifyOutput(
            verified=True,
            outcome="Verified",
            reason=reason,
            manifest_uri=loc.manifest_uri,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            step=manifest.step,
            fresh=fresh,
            trainer=trainer,
            selection=manifest.selection.summary if manifest.selection is not None else None,
            verified_at=datetime.now(UTC),
            upload_seconds=upload_seconds(line),
        )

    def _record(
        self,
        evaluation: EvaluateOutput,
        execution: str,
        manifest: Manifest,
        fresh: bool | None,
        pinned: tuple[str, str],
        upload_secs: float | None = None,
    ) -> str | None:
        """Write the verified checkpoint into the run record (what a later resume restores); None when written,
        else why not (the checkpoint stays verified: a later resume just has nothing to restore).

        Raises:
            TransientAwsError: DynamoDB throttled or failed server-side; the Task state's Retry verifies again.
        """
        if self.records is None or evaluation.session is None:
            return None
        key = RunKey(evaluation.instance_id, evaluation.run_id, evaluation.session)
        loc = evaluation.checkpoint
        assert loc is not None  # verify() returned early without a planned checkpoint
        entry = checkpoint_entry(
            manifest_uri=loc.manifest_uri,
            manifest_version_id=pinned[0],
            manifest_sha256=pinned[1],
            upload_prefix=loc.upload_prefix,
            execution=execution,
            files=[f.model_dump() for f in manifest.files],
            total_bytes=manifest.total_bytes,
            step=manifest.step,
            fresh=fresh,
            verified_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            upload_seconds=upload_secs,
        )
        try:
            self.records.update(
                key, lambda r: r.update(last_checkpoint=entry), status="checkpoint-verified", execution=execution, detail=loc.manifest_uri
            )
        except ClientError as exc:
            if is_transient(exc):
                raise TransientAwsError(f"run record update: {error_code(exc)}") from exc
            return error_code(exc)
        except RecordConflict as exc:
            return str(exc)
        return None


def upload_seconds(line: dict[str, Any]) -> float | None:
    """The result line's ``upload_seconds`` (seconds the instance spent uploading), or None when absent or not a number."""
    value = line.get("upload_seconds")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) and value >= 0 else None
