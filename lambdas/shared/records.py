"""Run records: one DynamoDB item per (instance, run, session), the lock that makes each action happen once.

Table (``infra/constructs/storage.py``): partition key ``instance_id`` (S), sort key ``run`` (S) =
``<run_id>#<session>``, where the session is the instance's LaunchTime (``YYYY-MM-DDTHH:MM:SSZ``; EC2
updates it on every start, so a run resumed after a stop gets a new record).

Item attributes::

    instance_id, run, run_id, session      keys
    status                                 the latest state (an outcome, or "checkpointing", "resuming"...)
    outcome                                the latest execution outcome
    history      [{at, status, execution, detail}]      oldest first, the last HISTORY_MAX entries
    locks        {reason: execution name}  who acted for each reason (complete, interruption, rebalance, resume)
    active       execution name            the execution that is acting on the trainer now (absent when none)
    active_until epoch seconds             when ``active`` lapses if its execution never recorded an outcome
                                           (aborted, timed out): the lease is as long as the longest execution
    last_checkpoint {manifest_uri, execution, files, bytes, step, fresh, verified_at,
                     objects: [{key, size, checksum_crc32 | sha256, version_id}] (first OBJECTS_MAX), objects_truncated}
    auto_stopped bool                      autostop stopped the instance at the end of this session
    stop_requested {execution, action, at} written (conditional UpdateItem) right BEFORE StopInstances /
                                           TerminateInstances / hibernate; removed when EC2 refused the call. A
                                           session carrying it is resumable even if the call's answer was lost
    version      int                       optimistic lock of every read-modify-write

Every write is conditional: :meth:`RunRecords.claim` succeeds for one execution per (record, reason), and
no execution may start acting on the trainer while another one is (``active``), so the trainer is never
signalled twice. AWS calls: GetItem, PutItem, UpdateItem, Query, BatchGetItem (DynamoDB).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from shared.dynamodb_types import TypeDeserializer, TypeSerializer
from shared.errors import error_code

HISTORY_MAX = 50
OBJECTS_MAX = 100
"""The record lists at most this many checkpoint objects; the manifest (its URI is kept) lists them all."""
MAX_CONFLICT_RETRIES = 8
BATCH_GET_MAX = 100
"""BatchGetItem reads at most 100 items per call."""
DEFAULT_LEASE_SECONDS = 6 * 3600
"""How long an ``active`` claim holds without a recorded outcome: longer than any execution may run."""

_ser = TypeSerializer()
_de = TypeDeserializer()


class RecordConflict(RuntimeError):
    """Another writer changed the record MAX_CONFLICT_RETRIES times in a row (raised by :meth:`RunRecords.update`)."""


@dataclass(frozen=True)
class RunKey:
    """Which record: the instance, the run id and the session (LaunchTime, ``YYYY-MM-DDTHH:MM:SSZ``)."""

    instance_id: str
    run_id: str
    session: str

    @property
    def sort_key(self) -> str:
        return f"{self.run_id}#{self.session}"

    def item_key(self) -> dict[str, Any]:
        return {"instance_id": {"S": self.instance_id}, "run": {"S": self.sort_key}}


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`RunRecords.claim`."""

    owned: bool
    """True when this execution now holds the record's lock for the reason (or already did)."""
    owner: str | None = None
    """When not owned: the execution that holds the reason's lock, or that is acting on the trainer."""
    why: str = ""


def to_item(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_numbers(v)) for k, v in value.items() if v is not None}


def _numbers(value: Any) -> Any:
    """``value`` with floats as Decimal (DynamoDB's number type; boto3 refuses float), read back by :func:`_plain`."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def query_all(dynamodb: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item a DynamoDB Query (``kwargs`` as for ``query``) returns, all pages (botocore's Query paginator), as
    plain values."""
    return [from_item(item) for page in dynamodb.get_paginator("query").paginate(**kwargs) for item in page.get("Items", [])]


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; records are read as JSON-like values (int where whole)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunRecords:
    """Reads and writes run records in the table ``table`` through the DynamoDB client ``dynamodb``."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        clock: Callable[[], str] = _now,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.clock = clock
        self.sleep = sleep
        self.now = now

    # --- reads ----------------------------------------------------------------------------------------------

    def get(self, key: RunKey) -> dict[str, Any] | None:
        """The record, or None. Consistent read."""
        resp = self.dynamodb.get_item(TableName=self.table, Key=key.item_key(), ConsistentRead=True)
        return from_item(resp["Item"]) if "Item" in resp else None

    def sessions(self, instance_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every record of ``run_id`` on ``instance_id``, newest session first (Query, all pages)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "instance_id = :i AND begins_with(#run, :prefix)",
            "ExpressionAttributeNames": {"#run": "run"},
            "ExpressionAttributeValues": {":i": {"S": instance_id}, ":prefix": {"S": f"{run_id}#"}},
            "ScanIndexForward": False,
            "ConsistentRead": True,
        }
        return query_all(self.dynamodb, **kwargs)

    def any_for(self, instance_id: str) -> bool:
        """True when ``instance_id`` has at least one run record (one Query, ``Limit=1``, ``Select=COUNT``)."""
        resp = self.dynamodb.query(
            TableName=self.table,
            KeyConditionExpression="instance_id = :i",
            ExpressionAttributeValues={":i": {"S": instance_id}},
            Select="COUNT",
            Limit=1,
        )
        return int(resp.get("Count", 0)) > 0

    def lock_holders(self, keys: list[RunKey], reason: str) -> dict[RunKey, str]:
        """Which of ``keys`` have the lock for ``reason``, and the execution holding it (records without it are absent).

        A lock is never released (:meth:`claim`): every later execution of that reason for the record ends without
        acting, so a trigger need not start one. BatchGetItem per BATCH_GET_MAX keys, eventually consistent (a lock
        missed here only costs the StartExecution it would have saved), unprocessed keys retried
        MAX_CONFLICT_RETRIES times and then left out.
        """
        wanted = {(k.instance_id, k.sort_key): k for k in keys}
        pending = [k.item_key() for k in dict.fromkeys(keys)]
        out: dict[RunKey, str] = {}
        for attempt in range(MAX_CONFLICT_RETRIES):
            unprocessed: list[dict[str, Any]] = []
            for start in range(0, len(pending), BATCH_GET_MAX):
                names = {"#i": "instance_id", "#run": "run", "#locks": "locks"}  # RUN and LOCKS are reserved words
                spec = {"Keys": pending[start : start + BATCH_GET_MAX], "ProjectionExpression": "#i, #run, #locks"}
                resp = self.dynamodb.batch_get_item(RequestItems={self.table: {**spec, "ExpressionAttributeNames": names}})
                for item in resp.get("Responses", {}).get(self.table, []):
                    record = from_item(item)
                    holder = (record.get("locks") or {}).get(reason)
                    key = wanted.get((str(record.get("instance_id")), str(record.get("run"))))
                    if holder and key is not None:
                        out[key] = str(holder)
                unprocessed += resp.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
            if not unprocessed:
                break
            pending = unprocessed
            self.sleep(0.05 * (attempt + 1))
        return out

    # --- writes ---------------------------------------------------------------------------------------------

    def ensure(self, key: RunKey) -> None:
        """Create the record if it does not exist (PutItem, condition attribute_not_exists)."""
        item = {
            "instance_id": key.instance_id,
            "run": key.sort_key,
            "run_id": key.run_id,
            "session": key.session,
            "status": "new",
            "history": [],
            "locks": {},
            "version": 0,
            "created_at": self.clock(),
        }
        try:
            self.dynamodb.put_item(TableName=self.table, Item=to_item(item), ConditionExpression="attribute_not_exists(instance_id)")
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def claim(
        self, key: RunKey, reason: str, execution: str, *, acting: bool = True, lease_seconds: int = DEFAULT_LEASE_SECONDS, detail: str = ""
    ) -> Claim:
        """Take the record's lock for ``reason`` for ``execution``; idempotent for the same execution.

        ``acting`` True also makes ``execution`` the one acting on the trainer (``active``): refused while
        another execution is, until that one's lease (``lease_seconds`` from its claim) has lapsed. ``acting``
        False (an upload that signals nothing) only needs the reason's lock.
        One conditional UpdateItem; a lost race reads the record to name the owner.
        """
        self.ensure(key)
        names = {"#locks": "locks", "#r": reason, "#history": "history", "#status": "status", "#v": "version"}
        values: dict[str, Any] = {
            ":e": {"S": execution},
            ":h": {"L": [_ser.serialize({"at": self.clock(), "status": f"claimed:{reason}", "execution": execution, "detail": detail})]},
            ":s": {"S": f"acting:{reason}"},
            ":one": {"N": "1"},
        }
        condition = "(attribute_not_exists(#locks.#r) OR #locks.#r = :e)"
        update = "SET #locks.#r = :e, #history = list_append(#history, :h), #status = :s ADD #v :one"
        if acting:
            now = int(self.now())
            names.update({"#active": "active", "#until": "active_until"})
            values.update({":now": {"N": str(now)}, ":until": {"N": str(now + lease_seconds)}})
            condition += " AND (attribute_not_exists(#active) OR #active = :e OR #until < :now)"
            update = update.replace("#status = :s", "#status = :s, #active = :e, #until = :until")
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=key.item_key(),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            record = self.get(key) or {}
            holder = (record.get("locks") or {}).get(reason)
            if holder and holder != execution:
                return Claim(owned=False, owner=holder, why=f"{reason} of this run was already handled by execution {holder}")
            active = record.get("active")
            who = f"execution {active}" if active else "another execution"
            return Claim(owned=False, owner=active, why=f"{who} is acting on the trainer of this run now")
        return Claim(owned=True)

    def update(
        self, key: RunKey, change: Callable[[dict[str, Any]], None], *, status: str, execution: str, detail: str = ""
    ) -> dict[str, Any]:
        """Read, apply ``change`` to the record (a dict, in place), append a history entry, write back.

        The write is conditional on the version read, retried on a concurrent change. ``last_checkpoint`` only
        moves forward: a change that would replace it with an older one (:func:`checkpoint_is_newer`) keeps the
        recorded one, whichever writer came last. Returns the record written. Raises :class:`RecordConflict`
        after MAX_CONFLICT_RETRIES lost races.
        """
        self.ensure(key)
        for attempt in range(MAX_CONFLICT_RETRIES):
            record = self.get(key) or {}
            version = int(record.get("version", 0))
            before = record.get("last_checkpoint")
            change(record)
            after = record.get("last_checkpoint")
            if before and after is not before and not checkpoint_is_newer(after, before):
                # last_checkpoint only moves forward (by step, then verified_at): a Verify that finishes after a
                # newer one (a rebalance upload overtaken by the completion checkpoint) must not replace it.
                record["last_checkpoint"] = before
                note = f"{detail} (older than the recorded checkpoint {before.get('manifest_uri')}; kept that one)"
            else:
                note = detail
            history = list(record.get("history") or [])
            history.append({"at": self.clock(), "status": status, "execution": execution, "detail": note[:500]})
            record.update(history=history[-HISTORY_MAX:], status=status, version=version + 1, updated_at=self.clock())
            try:
                self.dynamodb.put_item(
                    TableName=self.table,
                    Item=to_item(record),
                    ConditionExpression="#v = :v",
                    ExpressionAttributeNames={"#v": "version"},
                    ExpressionAttributeValues={":v": {"N": str(version)}},
                )
                return record
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                self.sleep(0.05 * (attempt + 1))
        raise RecordConflict(f"run record {key.instance_id} {key.sort_key} kept changing; gave up after {MAX_CONFLICT_RETRIES} attempts")

    def mark_stop_requested(self, key: RunKey, execution: str, action: str) -> str | None:
        """Record that ``execution`` is about to call StopInstances/TerminateInstances (``action``): one conditional
        UpdateItem, written BEFORE the call, so that a call whose answer is lost (timeout, 5xx after EC2 accepted
        it) still leaves the session resumable. Only the execution holding the record's ``complete`` lock may
        write it; idempotent for that execution. Returns None when written, else why not (then nothing is called).

        Raises:
            botocore ClientError: any error but the condition failing (the caller retries transient ones).
        """
        names = {"#locks": "locks", "#c": "complete", "#stop": "stop_requested", "#x": "execution", "#history": "history", "#v": "version"}
        names["#status"] = "status"
        mark = {"execution": execution, "action": action, "at": self.clock()}
        values: dict[str, Any] = {
            ":e": {"S": execution},
            ":m": _ser.serialize(mark),
            ":h": {"L": [_ser.serialize({"at": mark["at"], "status": "stop-requested", "execution": execution, "detail": action})]},
            ":s": {"S": "stop-requested"},
            ":one": {"N": "1"},
        }
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=key.item_key(),
                UpdateExpression="SET #stop = :m, #history = list_append(#history, :h), #status = :s ADD #v :one",
                ConditionExpression="#locks.#c = :e AND (attribute_not_exists(#stop) OR #stop.#x = :e)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            record = self.get(key) or {}
            holder = (record.get("locks") or {}).get("complete")
            if holder != execution:
                return f"the run record's complete lock is held by {holder or 'no execution'}, not {execution}"
            other = (record.get("stop_requested") or {}).get("execution")
            return f"execution {other} already asked EC2 to stop this session"
        return None

    def clear_stop_request(self, key: RunKey, execution: str, why: str) -> None:
        """Remove ``execution``'s stop mark after EC2 refused the call outright (nothing was stopped)."""

        def change(record: dict[str, Any]) -> None:
            if (record.get("stop_requested") or {}).get("execution") == execution:
                record.pop("stop_requested")

        self.update(key, change, status="stop-refused", execution=execution, detail=why)


def checkpoint_is_newer(candidate: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """True when the ``last_checkpoint`` value ``candidate`` may replace ``current``: a higher trainer step, or the
    same step verified later (a None step counts lowest; the same entry again counts as newer, so a retried
    Verify rewrites its own entry)."""
    if not candidate:
        return False
    if not current:
        return True

    def rank(entry: dict[str, Any]) -> tuple[int, int]:
        step = entry.get("step")
        return (0, 0) if step is None else (1, int(step))

    new, old = rank(candidate), rank(current)
    if new != old:
        return new > old
    return str(candidate.get("verified_at") or "") >= str(current.get("verified_at") or "")


def stop_was_requested(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's stop mark (see :meth:`RunRecords.mark_stop_requested`), or None."""
    mark = record.get("stop_requested")
    return mark if isinstance(mark, dict) and mark.get("execution") else None


def resume_source(earlier: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """Which earlier session of a run a resume restores from, or None and why not.

    ``earlier``: the run's records of sessions before the current one, newest first (:meth:`RunRecords.sessions`).
    The newest session that ended ``resumable`` (stopped by autostop, or reclaimed by EC2 after a saved Spot
    checkpoint, with a verified checkpoint on record) is the source; a later failure outcome of that session
    does not undo it. A ``hibernated`` session ends the search: its trainer comes back from memory.
    """
    if not earlier:
        return None, "the run has no earlier session on this instance"
    for record in earlier:
        mark = stop_was_requested(record) or {}
        if record.get("hibernated") or mark.get("action") == "hibernate":
            return None, f"session {record.get('session')} was hibernated: the trainer comes back from memory, nothing to restore"
        # A stop mark counts as soon as it is written (before StopInstances): a start right after autostop's stop
        # (before the execution recorded Stopped), or a stop whose answer was lost, still resumes.
        stopped = record.get("resumable") or mark.get("action") == "stop"
        if stopped and (record.get("last_checkpoint") or {}).get("manifest_uri"):
            return record, ""
    last = earlier[0]
    has = "a verified checkpoint" if (last.get("last_checkpoint") or {}).get("manifest_uri") else "no verified checkpoint"
    why = f"the last, {last.get('session')}, ended {last.get('outcome')} with {has}"
    return None, f"no earlier session ended stopped with a verified checkpoint ({why})"


def _checksum(f: dict[str, Any]) -> dict[str, Any]:
    """A manifest file's checksum for the record: ``checksum_crc32``, or ``sha256`` (hex, None for a multipart
    object) from manifests written before CRC32."""
    if f.get("checksum_crc32"):
        return {"checksum_crc32": f["checksum_crc32"]}
    return {"sha256": f.get("sha256")}


def checkpoint_entry(
    *,
    manifest_uri: str,
    execution: str,
    files: list[dict[str, Any]],
    total_bytes: int,
    step: int | None,
    fresh: bool | None,
    verified_at: str,
    manifest_version_id: str | None = None,
    manifest_sha256: str | None = None,
    upload_prefix: str | None = None,
    upload_seconds: float | None = None,
) -> dict[str, Any]:
    """The ``last_checkpoint`` value of a record: the manifest's URI, the S3 VersionId and SHA-256 (hex) of the
    manifest Verify read (the restore reads exactly that version), the upload prefix every object key must start
    with, the seconds the instance spent uploading (None when its result line had none), and the first OBJECTS_MAX
    objects (key, size, checksum_crc32 or, from manifests written before CRC32, sha256, VersionId)."""
    objects = [{"key": f["key"], "size": f["size"], **_checksum(f), "version_id": f.get("version_id")} for f in files[:OBJECTS_MAX]]
    return {
        "manifest_uri": manifest_uri,
        "manifest_version_id": manifest_version_id,
        "manifest_sha256": manifest_sha256,
        "upload_prefix": upload_prefix,
        "execution": execution,
        "files": len(files),
        "bytes": total_bytes,
        "step": step,
        "fresh": fresh,
        "verified_at": verified_at,
        "upload_seconds": upload_seconds,
        "objects": objects,
        "objects_truncated": len(files) > OBJECTS_MAX,
    }
