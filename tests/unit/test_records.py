"""Run records (shared/records.py) against moto's in-process DynamoDB: the conditional-write lock,
optimistic updates, session queries and the checkpoint entry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shared import constants as c
from shared.records import (
    HISTORY_MAX,
    MAX_CONFLICT_RETRIES,
    OBJECTS_MAX,
    RecordConflict,
    RunKey,
    RunRecords,
    checkpoint_entry,
    resume_source,
)

TABLE = "runs"
IID = "i-0123456789abcdef0"
KEY = RunKey(IID, "run-a", "2026-11-30T03:18:03Z")
EXEC_A = "i-0123456789abcdef0-run-a-complete-261130031803"
EXEC_B = "i-0123456789abcdef0-run-a-interruption-261130031803"


@pytest.fixture()
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": c.RECORDS_PARTITION_KEY, "KeyType": "HASH"},
                {"AttributeName": c.RECORDS_SORT_KEY, "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": c.RECORDS_PARTITION_KEY, "AttributeType": "S"},
                {"AttributeName": c.RECORDS_SORT_KEY, "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


@pytest.fixture()
def records(dynamodb: Any) -> RunRecords:
    return RunRecords(dynamodb, TABLE, sleep=lambda _s: None)


# --- claim ----------------------------------------------------------------------------------------------


def test_claim_creates_the_record_and_takes_the_reason_lock(records: RunRecords) -> None:
    assert records.get(KEY) is None

    claim = records.claim(KEY, "complete", EXEC_A, detail="marker exists")

    assert claim.owned and claim.owner is None
    record = records.get(KEY)
    assert record is not None
    assert (record["instance_id"], record["run"], record["run_id"], record["session"]) == (
        IID,
        "run-a#2026-11-30T03:18:03Z",
        "run-a",
        KEY.session,
    )
    assert record["locks"] == {"complete": EXEC_A}
    assert record["active"] == EXEC_A
    assert record["status"] == "acting:complete"
    assert record["version"] == 1
    assert [(h["status"], h["execution"], h["detail"]) for h in record["history"]] == [("claimed:complete", EXEC_A, "marker exists")]


def test_claim_is_once_per_record_and_reason(records: RunRecords) -> None:
    assert records.claim(KEY, "complete", EXEC_A).owned

    other = records.claim(KEY, "complete", "someone-else", acting=False)

    assert not other.owned
    assert other.owner == EXEC_A
    assert f"complete of this run was already handled by execution {EXEC_A}" in other.why
    assert records.get(KEY)["locks"] == {"complete": EXEC_A}  # type: ignore[index]


def test_claim_is_idempotent_for_the_same_execution(records: RunRecords) -> None:
    assert records.claim(KEY, "complete", EXEC_A).owned
    again = records.claim(KEY, "complete", EXEC_A)
    assert again.owned
    record = records.get(KEY)
    assert record["locks"] == {"complete": EXEC_A} and record["active"] == EXEC_A  # type: ignore[index]


def test_the_same_reason_in_another_session_is_a_separate_record(records: RunRecords) -> None:
    later = RunKey(IID, "run-a", "2026-12-01T08:00:00Z")
    assert records.claim(KEY, "complete", EXEC_A).owned
    assert records.claim(later, "complete", "exec-of-the-next-session").owned
    assert records.get(later)["locks"] == {"complete": "exec-of-the-next-session"}  # type: ignore[index]


def test_acting_claim_is_refused_while_another_execution_acts(records: RunRecords) -> None:
    assert records.claim(KEY, "complete", EXEC_A, acting=True).owned

    refused = records.claim(KEY, "interruption", EXEC_B, acting=True)

    assert not refused.owned
    assert refused.owner == EXEC_A
    assert f"execution {EXEC_A} is acting on the trainer" in refused.why
    record = records.get(KEY)
    assert record["locks"] == {"complete": EXEC_A}  # type: ignore[index]  # the refused claim wrote nothing
    assert record["active"] == EXEC_A  # type: ignore[index]


def test_non_acting_claim_succeeds_while_another_execution_acts(records: RunRecords) -> None:
    assert records.claim(KEY, "complete", EXEC_A, acting=True).owned

    claim = records.claim(KEY, "interruption", EXEC_B, acting=False)

    assert claim.owned
    record = records.get(KEY)
    assert record["locks"] == {"complete": EXEC_A, "interruption": EXEC_B}  # type: ignore[index]
    assert record["active"] == EXEC_A  # type: ignore[index]  # still the first one


def test_acting_claim_succeeds_once_the_active_execution_is_cleared(records: RunRecords) -> None:
    assert records.claim(KEY, "complete", EXEC_A).owned
    assert not records.claim(KEY, "interruption", EXEC_B).owned

    records.update(KEY, lambda r: r.pop("active", None), status="Stopped", execution=EXEC_A)

    assert records.claim(KEY, "interruption", EXEC_B).owned
    assert records.get(KEY)["active"] == EXEC_B  # type: ignore[index]


# --- update ---------------------------------------------------------------------------------------------


def test_update_applies_the_change_appends_history_and_bumps_version(records: RunRecords) -> None:
    records.claim(KEY, "complete", EXEC_A)  # version 1

    written = records.update(KEY, lambda r: r.update(outcome="Stopped"), status="Stopped", execution=EXEC_A, detail="x" * 800)

    stored = records.get(KEY)
    assert stored is not None
    assert stored["outcome"] == "Stopped" and stored["status"] == "Stopped"
    assert stored["version"] == written["version"] == 2
    assert stored["locks"] == {"complete": EXEC_A}  # what the claim wrote is kept
    assert [h["status"] for h in stored["history"]] == ["claimed:complete", "Stopped"]
    assert stored["history"][-1]["detail"] == "x" * 500


def test_update_caps_history_at_history_max_keeping_the_newest(records: RunRecords) -> None:
    total = HISTORY_MAX + 5
    for n in range(total):
        records.update(KEY, lambda r: None, status=f"s{n}", execution=EXEC_A)

    stored = records.get(KEY)
    assert stored is not None
    assert len(stored["history"]) == HISTORY_MAX
    assert stored["history"][0]["status"] == f"s{total - HISTORY_MAX}"
    assert stored["history"][-1]["status"] == f"s{total - 1}"
    assert stored["version"] == total


def test_update_survives_a_concurrent_writer(dynamodb: Any, records: RunRecords) -> None:
    other = RunRecords(dynamodb, TABLE)
    calls: list[int] = []

    def change(record: dict[str, Any]) -> None:
        calls.append(record["version"])
        if len(calls) == 1:
            # Between our read and our write, another function writes the record.
            other.update(KEY, lambda r: r.update(reason="written by the other one"), status="Other", execution="other")
        record["outcome"] = "Stopped"

    records.ensure(KEY)
    written = records.update(KEY, change, status="Stopped", execution=EXEC_A)

    assert calls == [0, 1]  # the change ran again on the record the other writer left
    stored = records.get(KEY)
    assert stored is not None
    assert stored["reason"] == "written by the other one"  # not overwritten
    assert stored["outcome"] == "Stopped"
    assert stored["version"] == written["version"] == 2
    assert [h["status"] for h in stored["history"]] == ["Other", "Stopped"]


def test_update_keeps_a_lock_claimed_between_its_read_and_write(dynamodb: Any, records: RunRecords) -> None:
    other = RunRecords(dynamodb, TABLE)
    state = {"claimed": False}

    def change(record: dict[str, Any]) -> None:
        if not state["claimed"]:
            state["claimed"] = other.claim(KEY, "interruption", EXEC_B).owned
        record["outcome"] = "Stopped"

    records.ensure(KEY)
    records.update(KEY, change, status="Stopped", execution=EXEC_A)

    stored = records.get(KEY)
    assert state["claimed"]
    assert stored["locks"] == {"interruption": EXEC_B}  # type: ignore[index]
    assert stored["active"] == EXEC_B  # type: ignore[index]
    assert stored["outcome"] == "Stopped"  # type: ignore[index]


def test_update_raises_record_conflict_after_too_many_lost_races(dynamodb: Any) -> None:
    sleeps: list[float] = []
    records = RunRecords(dynamodb, TABLE, sleep=sleeps.append)
    other = RunRecords(dynamodb, TABLE)

    def change(record: dict[str, Any]) -> None:
        other.update(KEY, lambda r: None, status="Other", execution="other")  # always first
        record["outcome"] = "Stopped"

    with pytest.raises(RecordConflict, match="gave up after"):
        records.update(KEY, change, status="Stopped", execution=EXEC_A)

    assert len(sleeps) == MAX_CONFLICT_RETRIES
    stored = records.get(KEY)
    assert stored is not None
    assert "outcome" not in stored  # none of our attempts was written
    assert stored["version"] == MAX_CONFLICT_RETRIES
    assert {h["status"] for h in stored["history"]} == {"Other"}


# --- sessions --------------------------------------------------------------------------------------------


class SmallPages:
    """A DynamoDB client whose Query returns one item per page, called or paginated (to exercise the pagination)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.queries = 0

    def query(self, **kwargs: Any) -> Any:
        self.queries += 1
        return self.real.query(Limit=1, **kwargs)

    def get_paginator(self, name: str) -> Any:
        real, outer = self.real.get_paginator(name), self

        class OneItemPages:
            def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
                for page in real.paginate(PaginationConfig={"PageSize": 1}, **kwargs):
                    outer.queries += 1
                    yield page

        return OneItemPages()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_sessions_returns_only_that_runs_records_newest_first(dynamodb: Any, records: RunRecords) -> None:
    sessions = ["2026-11-30T03:18:03Z", "2026-12-01T08:00:00Z", "2026-11-29T23:59:59Z"]
    for s in sessions:
        records.ensure(RunKey(IID, "run-a", s))
    records.ensure(RunKey(IID, "run-ab", "2026-12-02T00:00:00Z"))  # a run id that begins with run-a
    records.ensure(RunKey(IID, "run", "2026-12-02T00:00:00Z"))
    records.ensure(RunKey("i-0fedcba9876543210", "run-a", "2026-12-03T00:00:00Z"))  # same run, other instance

    got = records.sessions(IID, "run-a")

    assert [r["session"] for r in got] == sorted(sessions, reverse=True)
    assert {(r["instance_id"], r["run_id"]) for r in got} == {(IID, "run-a")}
    assert records.sessions(IID, "run-none") == []


def test_sessions_reads_every_page(dynamodb: Any) -> None:
    paged = SmallPages(dynamodb)
    records = RunRecords(paged, TABLE)
    sessions = [f"2026-11-{d:02d}T00:00:00Z" for d in (3, 1, 2)]
    for s in sessions:
        records.ensure(RunKey(IID, "run-a", s))

    got = records.sessions(IID, "run-a")

    assert [r["session"] for r in got] == sorted(sessions, reverse=True)
    assert paged.queries >= 3


# --- checkpoint entry ----------------------------------------------------------------------------------


def files(n: int) -> list[dict[str, Any]]:
    return [{"key": f"runs/run-a/ckpt/f{i:04d}", "size": i, "sha256": f"{i:064x}", "extra": "dropped"} for i in range(n)]


def test_checkpoint_entry_objects_carry_the_manifests_checksum() -> None:
    # A ManifestFile's model_dump: every checksum field present, the unused ones None
    crc = {"key": "k/crc", "size": 4, "checksum_crc32": "AAAAAA==", "sha256": None, "checksum_sha256": None, "version_id": "v1"}
    old = {"key": "k/sha", "size": 4, "checksum_crc32": None, "sha256": "ab" * 32, "checksum_sha256": "x", "version_id": "v2"}
    entry = checkpoint_entry(
        manifest_uri="s3://b/m.json",
        execution=EXEC_A,
        files=[crc, old],
        total_bytes=8,
        step=1,
        fresh=None,
        verified_at="2026-12-05T00:00:00Z",
    )
    assert entry["objects"] == [
        {"key": "k/crc", "size": 4, "checksum_crc32": "AAAAAA==", "version_id": "v1"},
        {"key": "k/sha", "size": 4, "sha256": "ab" * 32, "version_id": "v2"},
    ]


@pytest.mark.parametrize(("count", "truncated"), [(0, False), (1, False), (OBJECTS_MAX, False), (OBJECTS_MAX + 1, True), (250, True)])
def test_checkpoint_entry_lists_at_most_objects_max(count: int, truncated: bool) -> None:
    entry = checkpoint_entry(
        manifest_uri="s3://b/runs/run-a/manifests/e.json",
        execution=EXEC_A,
        files=files(count),
        total_bytes=12345,
        step=700,
        fresh=True,
        verified_at="2026-11-30T03:20:00Z",
    )
    assert entry["files"] == count
    assert entry["objects_truncated"] is truncated
    assert len(entry["objects"]) == min(count, OBJECTS_MAX)
    objects = [{"key": f["key"], "size": f["size"], "sha256": f["sha256"], "version_id": None} for f in files(count)[:OBJECTS_MAX]]
    assert entry["objects"] == objects
    assert (entry["manifest_uri"], entry["execution"], entry["bytes"], entry["step"], entry["fresh"]) == (
        "s3://b/runs/run-a/manifests/e.json",
        EXEC_A,
        12345,
        700,
        True,
    )


def test_checkpoint_entry_round_trips_through_the_table_as_plain_numbers(records: RunRecords) -> None:
    entry = checkpoint_entry(
        manifest_uri="s3://b/m.json", execution=EXEC_A, files=files(3), total_bytes=3, step=None, fresh=None, verified_at="t"
    )
    records.update(KEY, lambda r: r.update(last_checkpoint=entry), status="Verified", execution=EXEC_A)

    stored = records.get(KEY)["last_checkpoint"]  # type: ignore[index]

    assert stored["objects"] == entry["objects"]
    assert type(stored["files"]) is int and type(stored["objects"][2]["size"]) is int
    assert stored["objects_truncated"] is False
    assert stored["step"] is None and stored["fresh"] is None


def test_an_active_claim_lapses_after_its_lease_so_an_aborted_execution_cannot_block_a_run_forever(dynamodb: Any) -> None:
    clock = {"now": 1_000.0}
    records = RunRecords(dynamodb, TABLE, sleep=lambda _s: None, now=lambda: clock["now"])
    assert records.claim(KEY, "complete", "exec-aborted", lease_seconds=60).owned

    # The aborted execution never records an outcome: within its lease nobody else may act on the trainer...
    clock["now"] = 1_059.0
    held = records.claim(KEY, "interruption", "exec-spot", lease_seconds=60)
    assert not held.owned and held.owner == "exec-aborted"
    # ...after it, the next execution may, and the record says who acts now.
    clock["now"] = 1_061.0
    assert records.claim(KEY, "interruption", "exec-spot", lease_seconds=60).owned
    record = records.get(KEY)
    assert record is not None
    assert (record["active"], record["active_until"]) == ("exec-spot", 1_121)
    assert record["locks"] == {"complete": "exec-aborted", "interruption": "exec-spot"}


# --- resume_source ----------------------------------------------------------------------------------------


def session_record(session: str, outcome: str | None, *, checkpoint: bool = True, **flags: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"instance_id": IID, "run_id": "run-a", "session": session, "outcome": outcome, **flags}
    if checkpoint:
        record["last_checkpoint"] = {"manifest_uri": f"s3://b/runs/run-a/manifests/{session}.json", "step": 1}
    return record


def test_resume_source_without_earlier_sessions() -> None:
    assert resume_source([]) == (None, "the run has no earlier session on this instance")


def test_resume_source_is_the_newest_resumable_session_even_after_a_later_failure() -> None:
    earlier = [  # newest first, as RunRecords.sessions returns them
        session_record("2026-01-04T00:00:00Z", "ResumeFailed", checkpoint=False),
        session_record("2026-01-03T00:00:00Z", "CheckpointFailed"),
        session_record("2026-01-02T00:00:00Z", "SpotCheckpointSaved", resumable=True),
        session_record("2026-01-01T00:00:00Z", "Stopped", resumable=True),
    ]
    source, why = resume_source(earlier)
    assert source is earlier[2] and why == ""


def test_resume_source_follows_the_flag_not_the_last_outcome() -> None:
    # SpotCheckpointSaved, then another execution of the same session recorded a failure over it
    overwritten = session_record("2026-01-02T00:00:00Z", "StopFailed", resumable=True)
    assert resume_source([overwritten]) == (overwritten, "")
    # and an outcome that reads resumable without the flag (never set by record_outcome) is not
    unflagged = session_record("2026-01-02T00:00:00Z", "Stopped")
    source, why = resume_source([unflagged])
    assert source is None
    assert why == (
        "no earlier session ended stopped with a verified checkpoint "
        "(the last, 2026-01-02T00:00:00Z, ended Stopped with a verified checkpoint)"
    )


def test_resume_source_needs_a_checkpoint_with_a_manifest() -> None:
    bare = session_record("2026-01-02T00:00:00Z", "Stopped", checkpoint=False, resumable=True)
    no_uri = {**session_record("2026-01-01T00:00:00Z", "Stopped", resumable=True), "last_checkpoint": {"step": 1}}
    source, why = resume_source([bare, no_uri])
    assert source is None
    assert why.endswith("(the last, 2026-01-02T00:00:00Z, ended Stopped with no verified checkpoint)")


def test_resume_source_stops_at_a_hibernated_session() -> None:
    earlier = [
        session_record("2026-01-03T00:00:00Z", "NotComplete", checkpoint=False),
        session_record("2026-01-02T00:00:00Z", "SpotCheckpointSaved", resumable=True, hibernated=True),
        session_record("2026-01-01T00:00:00Z", "Stopped", resumable=True),
    ]
    assert resume_source(earlier) == (
        None,
        "session 2026-01-02T00:00:00Z was hibernated: the trainer comes back from memory, nothing to restore",
    )
    # a resumable session newer than the hibernated one still wins
    newer = session_record("2026-01-04T00:00:00Z", "Stopped", resumable=True)
    assert resume_source([newer, *earlier]) == (newer, "")


# --- lock holders (the sweep's one read per 100 runs judged complete) -------------------------------------------


def test_lock_holders_names_only_records_whose_reason_is_locked(records: RunRecords) -> None:
    keys = [RunKey(f"i-{n:017x}", f"run-{n}", "2026-11-30T03:18:03Z") for n in range(250)]
    for key in keys[::10]:
        records.claim(key, "complete", f"exec-{key.run_id}")
    records.claim(keys[1], "interruption", "exec-spot", acting=False)  # another reason's lock does not count
    records.ensure(keys[2])  # a record without any lock

    holders = records.lock_holders([*keys, keys[0]], "complete")

    assert holders == {key: f"exec-{key.run_id}" for key in keys[::10]}


class _Throttled:
    """BatchGetItem that leaves every second call's keys unprocessed once, and counts calls."""

    def __init__(self, dynamodb: Any) -> None:
        self.dynamodb, self.calls = dynamodb, []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        (spec,) = RequestItems.values()
        self.calls.append(len(spec["Keys"]))
        if len(self.calls) == 2:
            return {"Responses": {TABLE: []}, "UnprocessedKeys": RequestItems}
        return self.dynamodb.batch_get_item(RequestItems=RequestItems)


def test_lock_holders_reads_100_keys_a_call_and_retries_unprocessed_keys(records: RunRecords, dynamodb: Any) -> None:
    keys = [RunKey(f"i-{n:017x}", f"run-{n}", "2026-11-30T03:18:03Z") for n in range(150)]
    for key in keys:
        records.claim(key, "complete", f"exec-{key.run_id}")
    throttled = _Throttled(dynamodb)

    holders = RunRecords(throttled, TABLE, sleep=lambda _s: None).lock_holders(keys, "complete")

    assert len(holders) == 150
    assert throttled.calls == [100, 50, 50]
