"""The invariant, as a property test: whatever the world, the events and the faults, the control plane stops,
hibernates or terminates an instance only after that run's newest checkpoint is in S3 and verified.

Each example draws a small world (1-3 fresh instances: opted in or not, action, completion signals, PID
file, a trainer that cooperates, ignores signals or has exited, a checkpoint on disk or none, Spot or
on-demand, agent online or offline, faults on the instance), a sequence of events (markers, unknown and
duplicate markers, sweeps, a sweep racing a marker, a marker before its checkpoint, Spot interruption
warnings, rebalance recommendations, a person stopping and starting the instance, pauses) and a schedule of
faults on the control plane's AWS calls (local/faults.py). It plays them on the module's control plane,
waits for every execution (bounded), and then checks, from what the control plane observably did:

1. every StopInstances / TerminateInstances / hibernate it made that EC2 accepted was made inside a Step
   Functions execution and preceded by that execution's manifest in S3, for that instance and run, whose
   objects are all present with the manifest's size and checksum (HeadObject ChecksumMode=ENABLED and the
   bytes themselves, re-read here), written after the manifest's decision_time and before the call, and
   that decision_time is not older than the instance's session (LaunchTime) at the call;
2. an instance without the opt-in tag (exact key ``autostop:enabled``, value ``true`` in any case) was never
   stopped or terminated, got no checkpoint command and no tag written;
3. per (instance, run id, session, reason) at most one checkpoint command was sent, and the trainer
   acknowledged at most one signal per such command;
4. with a second tenant forging other runs' objects and manifests (``second_tenant``: new versions at the same
   keys, each the moment the victim's manifest appears), no stop is proven by, and no run record keeps, a
   version it wrote: the proofs of 1 read exactly the versions the instance's own result line names.

Run longer with ``make property-long`` (200 examples) or ``AUTOSTOP_PROPERTY_EXAMPLES=N``;
``AUTOSTOP_PROPERTY_SEED=S`` draws other examples than the default, derandomized ones.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from local import faults as lf
from local.report import outcome_of
from tests.property.conftest import EXAMPLES, SEED, Caller, Destroy, Plane, Stats
from tests.workflow.conftest import write_checkpoint

OPT_IN_KEY = "autostop:enabled"
SETTLE_TIMEOUT = 150.0
"""Seconds every execution of an example gets to close (the longest path, a resume waiting for an agent
that never comes back, polls about a minute with the local runtime's capped waits)."""
REASON = re.compile(r"-(complete|interruption|rebalance|resume)-\d{12}(?:-\d+)?$")
_example_numbers = itertools.count(1)

# --- the world ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSpec:
    enabled: str | None
    """Value of the opt-in tag; None: no such tag."""
    enabled_key: str
    action: str
    marker: str
    """``success``: tagged ``runs/<run>/_SUCCESS`` (S3 events start executions); ``done``: tagged
    ``runs/<run>/DONE`` (only the sweep finds it); ``default``: no marker tag."""
    pid_file: bool
    trainer: str | None
    """``cooperates`` (saves and exits on the signal), ``ignores`` (signals), ``exited`` (finished), None."""
    checkpoint: bool
    """A complete checkpoint on disk before the events."""
    spot: bool
    on_rebalance: bool
    agent: str
    faults: tuple[str, ...]

    @property
    def opted_in(self) -> bool:
        return self.enabled_key == OPT_IN_KEY and self.enabled is not None and self.enabled.lower() == "true"


@dataclass(frozen=True)
class FaultSpec:
    service: str
    operation: str
    kind: str
    origins: tuple[str, ...]
    first: int
    times: int | None
    after: bool = False

    @property
    def label(self) -> str:
        return f"{self.service}:{self.operation}:{self.kind}{':after' if self.after else ''}"


@dataclass(frozen=True)
class World:
    instances: tuple[InstanceSpec, ...]
    events: tuple[tuple[Any, ...], ...]
    faults: tuple[FaultSpec, ...]


INSTANCE_FAULTS = ("kill_midway", "interrupt_upload", "lose_object", "corrupt_upload", "disk_full_manifest")
CALLS = {
    # (service, operation): the callers that make it
    ("ec2", "DescribeInstances"): (("lambda",), ("sfn",), ("lambda", "sfn")),
    ("s3", "HeadObject"): (("lambda",),),
    ("s3", "GetObject"): (("lambda",),),
    ("ssm", "SendCommand"): (("sfn",), ("lambda",)),
    ("ssm", "GetCommandInvocation"): (("sfn",),),
    ("ec2", "StopInstances"): (("lambda",),),
    ("ec2", "TerminateInstances"): (("lambda",),),
    ("dynamodb", "UpdateItem"): (("lambda",),),
    ("dynamodb", "PutItem"): (("lambda",),),
}
AMBIGUOUS = {("ssm", "SendCommand"), ("ec2", "StopInstances"), ("ec2", "TerminateInstances")}
"""Calls for which a fault may lose the response after the service acted (``after=True``)."""


def weighted(*pairs: tuple[Any, int]) -> st.SearchStrategy[Any]:
    """``sampled_from`` with whole-number weights; Hypothesis shrinks towards the first value. It also favours
    both ends of the list, so the first value is put at the end too: the rare values sit in the middle."""
    values = [value for value, weight in pairs for _ in range(weight)]
    return st.sampled_from(values + [values[0]] if len(pairs) > 1 else values)


instance_specs = st.builds(
    InstanceSpec,
    enabled=weighted(("true", 6), ("TRUE", 1), ("false", 1), (None, 1)),
    enabled_key=weighted((OPT_IN_KEY, 9), ("Autostop:enabled", 1)),
    action=weighted(("stop", 3), ("terminate", 2), ("hibernate", 1)),
    marker=st.sampled_from(["success", "done", "default"]),
    pid_file=weighted((True, 2), (False, 1)),
    trainer=st.sampled_from(["cooperates", "ignores", "exited", None]),
    checkpoint=weighted((True, 2), (False, 1)),
    spot=st.booleans(),
    on_rebalance=st.booleans(),
    agent=weighted(("online", 7), ("offline", 1)),
    faults=weighted(((), 8), *(((name,), 1) for name in INSTANCE_FAULTS)),
)


@st.composite
def fault_specs(draw: st.DrawFn) -> FaultSpec:
    service, operation = draw(st.sampled_from(sorted(CALLS)))
    kind = draw(st.sampled_from(["throttle", "5xx", "timeout", "access_denied"]))
    after = (service, operation) in AMBIGUOUS and kind in ("5xx", "timeout") and draw(st.booleans())
    return FaultSpec(
        service=service,
        operation=operation,
        kind=kind,
        origins=draw(st.sampled_from(CALLS[(service, operation)])),
        first=draw(st.integers(1, 3)),
        times=draw(st.sampled_from([1, 2, None])),
        after=after,
    )


EVENT_KINDS = weighted(
    ("marker", 4),
    ("sweep", 2),
    ("sweep_and_marker", 2),
    ("duplicate_marker", 1),
    ("unknown_marker", 1),
    ("marker_before_checkpoint", 1),
    ("spot_interruption", 2),
    ("rebalance", 1),
    ("person_stop", 1),
    ("person_start", 1),
    ("pause", 1),
    ("settle", 2),
    ("second_tenant", 2),
)
NO_INSTANCE = {"sweep", "unknown_marker", "settle"}


@st.composite
def events(draw: st.DrawFn, n: int) -> tuple[Any, ...]:
    """One event: its kind, then what it needs (an instance index; seconds left; seconds to pause)."""
    kind = draw(EVENT_KINDS)
    if kind == "pause":
        return (kind, draw(st.sampled_from([0.3, 1.5])))
    if kind in NO_INSTANCE:
        return (kind,)
    i = draw(st.integers(0, n - 1))
    if kind == "spot_interruption":
        return (kind, i, draw(st.sampled_from([120, 60, 5])))
    return (kind, i)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    instances = draw(st.lists(instance_specs, min_size=1, max_size=3))
    drawn = draw(st.lists(events(len(instances)), min_size=2, max_size=8))
    faults = draw(st.lists(fault_specs(), max_size=3))
    return World(tuple(instances), tuple(drawn), tuple(faults))


def spec(**overrides: Any) -> InstanceSpec:
    """An opted-in, on-demand instance to stop, completion by its ``_SUCCESS`` marker, with a cooperative
    trainer behind a PID file and a checkpoint on disk; ``overrides`` change any of that."""
    values: dict[str, Any] = {
        "enabled": "true",
        "enabled_key": OPT_IN_KEY,
        "action": "stop",
        "marker": "success",
        "pid_file": True,
        "trainer": "cooperates",
        "checkpoint": True,
        "spot": False,
        "on_rebalance": False,
        "agent": "online",
        "faults": (),
    }
    values.update(overrides)
    return InstanceSpec(**values)


EXPLICIT = [
    # Completion by marker (twice, and raced by a sweep), stop, then a person starts it: resume, and a sweep
    # must not stop the new session on the old marker. Throttled reads on the way.
    World(
        (spec(),),
        (("marker", 0), ("sweep_and_marker", 0), ("settle",), ("person_start", 0), ("settle",), ("sweep",)),
        (FaultSpec("ec2", "DescribeInstances", "throttle", ("lambda",), 1, 2), FaultSpec("s3", "HeadObject", "5xx", ("lambda",), 2, 1)),
    ),
    # A finished trainer (PID file only) terminated through an ambiguous TerminateInstances; beside it an
    # instance that opted out and one whose key is misspelled, both given every trigger too.
    World(
        (
            spec(action="terminate", marker="default", trainer="exited"),
            spec(enabled="false", trainer="exited"),
            spec(enabled_key="Autostop:enabled"),
        ),
        (("sweep",), ("marker", 1), ("duplicate_marker", 2), ("sweep_and_marker", 0), ("settle",), ("sweep",)),
        (FaultSpec("ec2", "TerminateInstances", "timeout", ("lambda",), 1, 1, after=True),),
    ),
    # Spot: a trainer that ignores signals gets an interruption warning, a rebalance and its marker; another
    # instance loses an object after its manifest; a third is hibernated without hibernation.
    World(
        (
            spec(trainer="ignores", spot=True, on_rebalance=True),
            spec(enabled="TRUE", faults=("lose_object",)),
            spec(action="hibernate", trainer=None),
        ),
        (("spot_interruption", 0, 120), ("rebalance", 0), ("marker", 0), ("marker", 1), ("marker", 2), ("settle",)),
        (FaultSpec("ssm", "SendCommand", "5xx", ("sfn",), 1, 1, after=True),),
    ),
    # A second tenant forges each manifest of the first run the moment it appears (objects and manifest, with
    # their own valid checksums); the run completes, is stopped, started again and resumed.
    World(
        (spec(), spec(marker="default")),
        (("second_tenant", 0), ("second_tenant", 1), ("marker", 0), ("marker", 1), ("settle",), ("person_start", 0), ("settle",)),
        (),
    ),
    # The marker before the checkpoint exists, a person stopping the instance mid-way, and a corrupted upload.
    World(
        (spec(checkpoint=False, trainer=None, pid_file=False), spec(trainer=None, faults=("corrupt_upload",))),
        (("marker_before_checkpoint", 0), ("marker", 1), ("pause", 1.5), ("person_stop", 1), ("person_start", 1), ("sweep",)),
        (FaultSpec("dynamodb", "UpdateItem", "throttle", ("lambda",), 1, 2), FaultSpec("ec2", "StopInstances", "5xx", ("lambda",), 1, 1)),
    ),
]
"""Worlds every run plays before the drawn ones, so that even a short run crosses the main paths."""


# --- playing one example --------------------------------------------------------------------------------


def trainer_argv(kind: str) -> list[str]:
    argv = ["--checkpoint-dir", "{root}/ckpt", "--pid-file", "{root}/train.pid", "--checkpoint-every", "1000000"]
    if kind == "exited":
        return [*argv, "--steps", "2", "--step-seconds", "0.01"]
    on_signal = "save-and-exit" if kind == "cooperates" else "ignore"
    return [*argv, "--steps", "1000000", "--step-seconds", "0.05", "--on-signal", on_signal]


@dataclass
class Launched:
    spec: InstanceSpec
    name: str
    run_id: str
    instance_id: str
    marker_uri: str
    tags: dict[str, str]
    first_session: datetime | None
    next_step: int = 10


@dataclass
class Example:
    plane: Plane
    world: World
    number: int = field(default_factory=lambda: next(_example_numbers))
    launched: list[Launched] = field(default_factory=list)
    added: list[lf.AwsFault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    forged: set[str] = field(default_factory=set)
    """S3 VersionIds the second tenant wrote over other instances' objects and manifests."""
    tenants: list[SecondTenant] = field(default_factory=list)

    @property
    def cp(self) -> Any:
        return self.plane.cp

    @property
    def bucket(self) -> str:
        return str(self.cp.deployment.bucket)

    def ids(self) -> set[str]:
        return {x.instance_id for x in self.launched}

    # --- set-up ----------------------------------------------------------------------------------------

    def launch(self) -> None:
        p = self.plane
        self.marks = {
            "destroys": len(p.observer.destroys),
            "commands": len(p.observer.commands),
            "tag_writes": len(p.observer.tag_writes),
            "problems": len(p.observer.problems),
            "destructive_calls": len(p.faults.destructive_calls),
            "ec2_events": len(self.cp.aws.ec2_events),
            "fault_log": len(p.faults.log),
        }
        for i, spec in enumerate(self.world.instances):
            name, run_id = f"prop{self.number}-{i}", f"run-prop{self.number}-{i}"
            marker_key = {"success": f"runs/{run_id}/_SUCCESS", "done": f"runs/{run_id}/DONE", "default": f"runs/{run_id}/_SUCCESS"}
            tags = {
                "autostop:run-id": run_id,
                "autostop:checkpoint-dir": "{root}/ckpt",
                "autostop:action": spec.action,
                "autostop:grace-seconds": "1",
                "autostop:spot-grace-seconds": "1",
            }
            if spec.enabled is not None:
                tags[spec.enabled_key] = spec.enabled
            if spec.marker != "default":
                tags["autostop:completion-marker"] = f"s3://{{bucket}}/{marker_key[spec.marker]}"
            if spec.pid_file:
                tags["autostop:pid-file"] = "{root}/train.pid"
            if spec.on_rebalance:
                tags["autostop:on-rebalance"] = "checkpoint"
            iid = self.cp.launch_instance(
                name,
                tags=tags,
                spot="persistent" if spec.spot else None,
                agent=spec.agent,
                trainer=trainer_argv(spec.trainer) if spec.trainer else None,
                faults=list(spec.faults) or None,
            )
            root = self.cp.by_name[name].root
            if spec.checkpoint:
                write_checkpoint(root, 1)
            # The trainer puts its marker below its instance's own prefix (tagged keys are relative to it).
            marker_uri = f"s3://{self.bucket}/{self.cp.instance_prefix(iid)}{marker_key[spec.marker]}"
            launched = Launched(spec, name, run_id, iid, marker_uri, self._tags(iid), None)
            launched.first_session = _launch_time(self.cp, iid)
            self.launched.append(launched)
        for x in self.launched:
            root = self.cp.by_name[x.name].root
            if x.spec.trainer == "exited":
                self.cp.wait_for_trainer_exit(x.name, timeout=30)
            elif x.spec.trainer:
                _wait_for(lambda root=root: (root / "train.pid").exists(), timeout=15)

    def _tags(self, iid: str) -> dict[str, str]:
        raw = self.cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}

    def add_faults(self) -> None:
        for f in self.world.faults:
            self.added.append(
                self.plane.faults.add(f.service, f.operation, f.kind, origins=f.origins, first=f.first, times=f.times, after=f.after)
            )

    # --- events ----------------------------------------------------------------------------------------

    def play(self) -> None:
        for event in self.world.events:
            getattr(self, f"_{event[0]}")(*event[1:])

    def _sweep(self) -> None:
        try:
            self.cp.schedule_tick()
        except RuntimeError as exc:  # the sweep Lambda itself failed (an injected fault): EventBridge would retry
            self.notes.append(str(exc)[:200])

    def _marker(self, i: int) -> None:
        self.cp.put_object(self.launched[i].marker_uri, "done")

    def _unknown_marker(self) -> None:
        self.cp.put_object(f"s3://{self.bucket}/runs/run-prop{self.number}-unknown/_SUCCESS", "done")

    def _duplicate_marker(self, i: int) -> None:
        self._marker(i)
        self._marker(i)

    def _sweep_and_marker(self, i: int) -> None:
        sweep = threading.Thread(target=self._sweep, name="property-sweep")
        sweep.start()
        self._marker(i)
        sweep.join(timeout=120)

    def _marker_before_checkpoint(self, i: int) -> None:
        x = self.launched[i]
        self._marker(i)
        time.sleep(0.3)
        write_checkpoint(self.cp.by_name[x.name].root, x.next_step)
        x.next_step += 1

    def _spot_interruption(self, i: int, seconds_left: int) -> None:
        self.cp.spot_interruption(self.launched[i].name, seconds_left=seconds_left)

    def _rebalance(self, i: int) -> None:
        self.cp.rebalance_recommendation(self.launched[i].name)

    def _person_stop(self, i: int) -> None:
        self.cp.stop_instance(self.launched[i].name)

    def _person_start(self, i: int) -> None:
        self.cp.start_instance(self.launched[i].name)

    def _second_tenant(self, i: int) -> None:
        """Another opted-in instance (or anyone with the bucket's keys) watches instance ``i``'s manifests and,
        the moment one appears, overwrites its objects and rewrites the manifest with its own sizes and checksums."""
        tenant = SecondTenant(self.cp.aws.client("s3"), self.bucket, self.launched[i].run_id, self.forged)
        tenant.start()
        self.tenants.append(tenant)

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def _settle(self) -> None:
        self.cp.wait_executions(timeout=SETTLE_TIMEOUT)

    # --- the end -----------------------------------------------------------------------------------------

    def stop_tenants(self) -> None:
        for tenant in self.tenants:
            tenant.stop()
        self.tenants.clear()

    def remove_faults(self) -> None:
        for fault in self.added:
            self.plane.faults.remove(fault)
        self.added.clear()

    def executions(self) -> list[dict[str, Any]]:
        sfn = self.cp.aws.client("stepfunctions")
        ids = self.ids()
        out = []
        for e in self.cp.executions():
            if any(e["name"].startswith(f"{iid}-") for iid in ids):
                out.append(sfn.describe_execution(executionArn=e["executionArn"]))
        return out

    def cleanup(self) -> None:
        self.stop_tenants()
        self.remove_faults()
        ids = sorted(self.ids())
        if ids:
            try:
                self.cp.aws.client("ec2").terminate_instances(InstanceIds=ids)
            except ClientError as exc:
                self.notes.append(f"cleanup: {exc}")
        try:
            self.cp.wait_executions(timeout=SETTLE_TIMEOUT)
        except TimeoutError as exc:
            self.notes.append(f"cleanup: {exc}")


class SecondTenant(threading.Thread):
    """Forges what a victim run's Verify would read, as fast as it can: every new manifest version whose key
    names the victim's run is answered by new versions of each object it lists (other bytes, with their own valid
    S3 SHA-256) and a new manifest version listing those. IAM keeps a real instance out of other prefixes; this
    one writes anyway, so the property checks that Verify and the restore never read what it wrote."""

    def __init__(self, s3: Any, bucket: str, victim_run: str, forged: set[str]) -> None:
        super().__init__(name=f"second-tenant-{victim_run}", daemon=True)
        self.s3, self.bucket, self.victim_run, self.forged = s3, bucket, victim_run, forged
        self.seen: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            try:
                versions = self.s3.list_object_versions(Bucket=self.bucket).get("Versions", [])
            except ClientError:
                continue
            for v in versions:
                key, version = v["Key"], v["VersionId"]
                if self.victim_run in key and "/manifests/" in key and version not in self.seen and version not in self.forged:
                    self.seen.add(version)
                    self.forge(key, version)

    def forge(self, key: str, version: str) -> None:
        try:
            manifest = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"].read())
            files = []
            for f in manifest["files"]:
                body = f"forged by the second tenant: {f['key']}".encode()
                put = self.s3.put_object(Bucket=self.bucket, Key=f["key"], Body=body, ChecksumAlgorithm="CRC32")
                self.forged.add(put["VersionId"])
                checksum = base64.b64encode(_crc32(body)).decode()
                files.append(dict(f, size=len(body), checksum_crc32=checksum, parts=0, version_id=put["VersionId"]))
            forged = dict(manifest, files=files, total_bytes=sum(f["size"] for f in files))
            put = self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(forged).encode(), ChecksumAlgorithm="SHA256")
            self.forged.add(put["VersionId"])
        except (ClientError, ValueError, KeyError, TypeError):
            pass  # a manifest it cannot parse or a failed write: nothing forged

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def _launch_time(cp: Any, iid: str) -> datetime | None:
    raw = cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    value = raw.get("LaunchTime")
    return value.astimezone(UTC).replace(microsecond=0) if isinstance(value, datetime) else None


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the invariant ------------------------------------------------------------------------------------------


def carries_opt_in_key(tags: dict[str, str]) -> bool:
    """True when a tag key equals the opt-in key ignoring case: what IAM's ``aws:ResourceTag`` condition key matches."""
    return any(k.lower() == OPT_IN_KEY for k in tags)


def opted_in(tags: dict[str, str]) -> bool:
    return tags.get(OPT_IN_KEY, "").lower() == "true"


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def pinned(ssm: Any, commands: list[Any], d: Destroy) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """(the checkpoint command's parameters, its result line) for ``d``'s execution, or why there is none. The
    result line is the instance's own report (stdout of the command invocation), which pins the manifest."""
    sent = [c for c in commands if "Checkpoint" in c.document and c.parameters.get("ExecutionName") == d.caller.execution]
    if not sent:
        return f"no checkpoint command of execution {d.caller.execution}"
    c = sent[-1]
    try:
        out = ssm.get_command_invocation(CommandId=c.command_id, InstanceId=d.instance_id)["StandardOutputContent"]
        line = json.loads(out.strip().splitlines()[-1])
    except (ClientError, ValueError, IndexError) as exc:
        return f"no result line from checkpoint command {c.command_id}: {exc}"
    return c.parameters, line


def prove(s3: Any, ssm: Any, bucket: str, d: Destroy, commands: list[Any], forged: set[str]) -> list[str]:
    """Why ``d`` is not proven by a verified checkpoint of its own execution (empty when it is).

    Re-reads S3 itself at exactly the versions the instance's result line and its manifest name: GetObject and
    HeadObject (ChecksumMode=ENABLED) with VersionId for the manifest and every object, their bytes hashed here;
    no version a second tenant wrote (FORGED) may be among them."""
    what = f"{d.kind} of {d.instance_id} at {d.at.isoformat()}"
    if d.caller.execution is None:
        return [f"{what}: made by {d.caller.origin} outside any Step Functions execution"]
    if not opted_in(d.tags):
        return [f"{what}: the instance was not opted in at the call"]
    run = d.tags.get("autostop:run-id", "")
    execution = d.caller.execution
    found = pinned(ssm, commands, d)
    if isinstance(found, str):
        return [f"{what}: {found}"]
    params, line = found
    key, version = params.get("ManifestKey", ""), line.get("manifest_version_id")
    if not version or version in forged:
        return [f"{what} by {execution}: manifest version {version!r} is not one the instance wrote"]
    try:
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=version, ChecksumMode="ENABLED")
        body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
    except ClientError as exc:
        return [f"{what} by {execution}: no manifest s3://{bucket}/{key}@{version} ({exc.response['Error']['Code']})"]
    problems = []
    if hashlib.sha256(body).hexdigest() != line.get("manifest_sha256"):
        problems.append(f"{what}: manifest {key}@{version} is not the SHA-256 the instance reported")
    if head["LastModified"] > d.at:
        problems.append(f"{what}: manifest last modified {head['LastModified']} after the call")
    try:
        m = json.loads(body)
        decision = _parse_time(m["decision_time"])
        files = list(m["files"])
    except (ValueError, KeyError, TypeError) as exc:
        return [*problems, f"{what}: manifest {key} unreadable: {exc}"]
    for name, want in (("instance_id", d.instance_id), ("run_id", run), ("execution_name", execution), ("bucket", bucket)):
        if m.get(name) != want:
            problems.append(f"{what}: manifest {name} is {m.get(name)!r}, not {want!r}")
    if d.session is None or decision < d.session:
        problems.append(f"{what}: decision {decision} is older than the session (LaunchTime {d.session})")
    if decision > d.at:
        problems.append(f"{what}: decision {decision} is after the call")
    if head["LastModified"] < decision:
        problems.append(f"{what}: manifest last modified {head['LastModified']} before the decision {decision}")
    if not files:
        problems.append(f"{what}: manifest lists no object")
    if (line.get("files"), line.get("bytes")) != (len(files), sum(int(f.get("size", -1)) for f in files)):
        problems.append(f"{what}: the instance reported {line.get('files')} files / {line.get('bytes')} bytes, the manifest differs")
    prefix = params.get("UploadPrefix", "")
    for f in files:
        problems += _prove_object(s3, bucket, f, prefix, forged, what, decision, d.at)
    return problems


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _s3_checksum(data: bytes, f: dict[str, Any]) -> tuple[str, str]:
    """(S3's algorithm, the base64 checksum S3 must hold for DATA without a parts suffix) by manifest entry F:
    CRC32 where it lists checksum_crc32, else SHA-256; a multipart entry's composite over its part_size parts.
    Computed here from zlib and hashlib, not with the code under test."""
    algorithm, fn = ("CRC32", _crc32) if f.get("checksum_crc32") else ("SHA256", lambda b: hashlib.sha256(b).digest())
    part = f.get("part_size") if f.get("parts") else None
    digest = fn(b"".join(fn(data[i : i + part]) for i in range(0, len(data), part))) if part else fn(data)
    return algorithm, base64.b64encode(digest).decode()


def _prove_object(
    s3: Any, bucket: str, f: dict[str, Any], prefix: str, forged: set[str], what: str, decision: datetime, at: datetime
) -> list[str]:
    fkey, version = str(f.get("key")), f.get("version_id")
    if not fkey.startswith(prefix):
        return [f"{what}: {fkey} is not under {prefix}"]
    if not version or version in forged:
        return [f"{what}: {fkey} version {version!r} is not one the instance wrote"]
    try:
        h = s3.head_object(Bucket=bucket, Key=fkey, VersionId=version, ChecksumMode="ENABLED")
        data = s3.get_object(Bucket=bucket, Key=fkey, VersionId=version)["Body"].read()
    except ClientError as exc:
        return [f"{what}: {fkey}@{version} missing ({exc.response['Error']['Code']})"]
    problems = []
    if h["ContentLength"] != f.get("size") or len(data) != f.get("size"):
        problems.append(f"{what}: {fkey} is {h['ContentLength']} bytes, manifest says {f.get('size')}")
    if f.get("sha256") is not None and hashlib.sha256(data).hexdigest() != f["sha256"]:
        problems.append(f"{what}: {fkey} SHA-256 differs from the manifest's {f['sha256']}")
    algorithm, mine = _s3_checksum(data, f)
    listed = str(f.get("checksum_crc32") or f.get("checksum_sha256") or "").partition("-")[0]
    if f.get("sha256") is None and mine != listed:  # the bytes, checked here, against the manifest's checksum
        problems.append(f"{what}: {fkey} has {algorithm} {mine}, the manifest says {listed or 'none'}")
    s3_sum = str(h.get(f"Checksum{algorithm}") or "").partition("-")[0]
    if s3_sum != mine:
        problems.append(f"{what}: {fkey} S3 Checksum{algorithm} {s3_sum or 'none'} is not {mine}")
    if not decision <= h["LastModified"] <= at:
        problems.append(f"{what}: {fkey} last modified {h['LastModified']} outside [decision {decision}, call {at}]")
    return problems


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    destructive: Counter[str] = field(default_factory=Counter)
    proven: Counter[str] = field(default_factory=Counter)
    checkpoint_commands: int = 0
    signals: int = 0


def check(ex: Example) -> Verdict:
    p, cp = ex.plane, ex.cp
    s3, ssm = cp.aws.client("s3"), cp.aws.client("ssm")
    v = Verdict()
    ids = ex.ids()
    by_id = {x.instance_id: x for x in ex.launched}
    obs = p.observer
    v.violations += [f"observer: {msg}" for msg in obs.problems[ex.marks["problems"] :]]
    destroys = [d for d in obs.destroys[ex.marks["destroys"] :] if d.instance_id in ids]
    ours = [d for d in destroys if d.caller.origin != "other"]

    # 1. Every destructive call by the control plane is proven by its own execution's verified checkpoint.
    for d in ours:
        v.destructive[d.kind] += 1
        problems = prove(s3, ssm, ex.bucket, d, obs.commands, ex.forged)
        if not by_id[d.instance_id].spec.opted_in:
            problems.append(f"{d.kind} of {d.instance_id}, which never opted in ({by_id[d.instance_id].spec})")
        if d.hibernate and not _hibernation_configured(cp, d.instance_id):
            problems.append(f"hibernate of {d.instance_id}, which was launched without hibernation")
        if problems:
            v.violations += [f"[1] {msg}" for msg in problems]
        else:
            v.proven[d.kind] += 1
    # ... and every one EC2 reports is one the observer saw.
    injected_calls = Counter(i for c in p.faults.destructive_calls[ex.marks["destructive_calls"] :] for i in c["instance_ids"])
    events = Counter(
        e["detail"]["instance-id"]
        for e in cp.aws.ec2_events[ex.marks["ec2_events"] :]
        if e["detail"].get("state") in ("stopping", "shutting-down")
    )
    for iid in ids:
        seen_ours = sum(d.instance_id == iid for d in ours)
        seen_all = sum(d.instance_id == iid for d in destroys)
        if injected_calls[iid] > seen_ours:
            v.violations.append(f"[1] {iid}: {injected_calls[iid]} destructive calls in FaultInjector, {seen_ours} observed")
        if events[iid] > seen_all:
            v.violations.append(f"[1] {iid}: {events[iid]} stopping/shutting-down events, {seen_all} accepted calls observed")

    # 4. No run record keeps, as the checkpoint a resume restores, a version the second tenant wrote.
    for x in ex.launched:
        for record in _records(cp, x.instance_id):
            last = record.get("last_checkpoint") or {}
            versions = {last.get("manifest_version_id")} | {o.get("version_id") for o in last.get("objects", [])}
            if versions & ex.forged:
                v.violations.append(f"[4] run record {x.instance_id} {record.get('run')} keeps a forged version: {versions & ex.forged}")

    # 2. Instances that never opted in: no checkpoint command, no tag written (stops are covered above).
    commands = [c for c in obs.commands[ex.marks["commands"] :] if ids & set(c.instance_ids)]
    checkpoints = [c for c in commands if "Checkpoint" in c.document]
    v.checkpoint_commands = len(checkpoints)
    for c in checkpoints:
        for iid in set(c.instance_ids) & ids:
            if not by_id[iid].spec.opted_in:
                v.violations.append(f"[2] checkpoint command {c.command_id} sent to {iid}, which never opted in")
    # The one exception: a trigger's "not evaluated" last-error tag on an instance carrying the opt-in key in any case
    # (the IAM condition key ignores case), to tell its owner why it is not evaluated.
    told = "autostop:last-error"
    for w in obs.tag_writes[ex.marks["tag_writes"] :]:
        for iid in set(w.resources) & ids:
            if not by_id[iid].spec.opted_in and not (set(w.keys) == {told} and carries_opt_in_key(by_id[iid].tags)):
                v.violations.append(f"[2] {w.operation} {w.keys} on {iid} (never opted in) by {w.caller.origin}")
    for x in ex.launched:
        now = ex._tags(x.instance_id)
        if not x.spec.opted_in and {k: v for k, v in now.items() if k != told} != x.tags:
            v.violations.append(f"[2] the tags of {x.instance_id} (never opted in) changed: {x.tags} -> {now}")
        if not x.spec.opted_in and told in now and not now[told].startswith("not evaluated: "):
            v.violations.append(f"[2] {x.instance_id} (never opted in) has an execution's last-error tag: {now[told]}")

    # 3. At most one checkpoint command per (instance, run, session, reason); at most one signal per command.
    per_key: Counter[tuple[str, str, str, str]] = Counter()
    for c in checkpoints:
        execution = c.caller.execution
        named = c.parameters.get("ExecutionName")
        if execution is None or named != execution:
            v.violations.append(f"[3] checkpoint command {c.command_id} names execution {named!r} but was sent by {execution!r}")
        match = REASON.search(str(named or ""))
        reason = match.group(1) if match else "?"
        for iid in set(c.instance_ids) & ids:
            per_key[(iid, c.parameters.get("RunId", ""), str(c.sessions.get(iid)), reason)] += 1
    for key, n in per_key.items():
        if n > 1:
            v.violations.append(f"[3] {n} checkpoint commands for (instance, run, session, reason) {key}")
    for x in ex.launched:
        if not x.spec.trainer:
            continue
        lines = lf.trainer_signals(cp.by_name[x.name].root)
        v.signals += len(lines)
        allowed = sum(1 for (iid, _, session, _) in per_key if iid == x.instance_id and session == str(x.first_session))
        if len(lines) > allowed:
            v.violations.append(
                f"[3] trainer of {x.instance_id} acknowledged {len(lines)} signals for {allowed} checkpoint command(s): {lines}"
            )
    return v


def _records(cp: Any, iid: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    ddb, plain = cp.aws.client("dynamodb"), TypeDeserializer()
    table = cp.deployment.table
    items = ddb.query(TableName=table, KeyConditionExpression="instance_id = :i", ExpressionAttributeValues={":i": {"S": iid}})["Items"]
    return [{k: plain.deserialize(v) for k, v in item.items()} for item in items]


def _hibernation_configured(cp: Any, iid: str) -> bool:
    raw = cp.aws.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return bool((raw.get("HibernationOptions") or {}).get("Configured"))


# --- the property ------------------------------------------------------------------------------------------


def _explicit(test: Any) -> Any:
    for world in reversed(EXPLICIT):
        test = example(world=world)(test)
    return test


def _seeded(test: Any) -> Any:
    return seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.property
@pytest.mark.timeout(120 + 90 * EXAMPLES)
@_seeded
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
@given(world=worlds())
@_explicit
def test_instances_are_only_destroyed_after_a_verified_checkpoint_of_their_run(plane: Plane, stats: Stats, world: World) -> None:
    started = time.monotonic()
    ex = Example(plane, world)
    verdict = Verdict()
    try:
        ex.launch()
        ex.add_faults()
        ex.play()
        try:
            ex.cp.wait_executions(timeout=SETTLE_TIMEOUT)
        except TimeoutError as exc:
            verdict.violations.append(f"[bounded time] {exc}")
        ex.stop_tenants()
        ex.remove_faults()
        checked = check(ex)
        checked.violations[:0] = verdict.violations
        verdict = checked
        for d in ex.executions():
            if d["status"] != "RUNNING":
                stats.outcomes[str(outcome_of(d)[0] or d["status"])] += 1
    finally:
        ex.cleanup()
        _account(stats, ex, verdict, time.monotonic() - started)
    assert not verdict.violations, "\n".join(verdict.violations)


def _account(stats: Stats, ex: Example, verdict: Verdict, seconds: float) -> None:
    stats.examples += 1
    stats.seconds.append(seconds)
    for spec in ex.world.instances:
        stats.instances["opted_in" if spec.opted_in else "not_opted_in"] += 1
        stats.instances[f"action:{spec.action}"] += 1
        stats.instances[f"trainer:{spec.trainer or 'none'}"] += 1
        stats.instances[f"marker:{spec.marker}"] += 1
        stats.instances[f"checkpoint_on_disk:{spec.checkpoint}"] += 1
        stats.instances[f"agent:{spec.agent}"] += 1
        stats.instances["spot" if spec.spot else "on_demand"] += 1
        for name in spec.faults:
            stats.instance_faults[name] += 1
        if spec.agent == "offline":
            stats.instance_faults["agent_offline"] += 1
    for event in ex.world.events:
        stats.events[str(event[0])] += 1
    for f in ex.world.faults:
        stats.aws_faults[f.label] += 1
    for entry in ex.plane.faults.log[ex.marks.get("fault_log", len(ex.plane.faults.log)) :]:
        label = f"{entry['service']}:{entry['operation']}:{entry['kind']}" if entry["where"] == "aws" else str(entry.get("fault"))
        stats.faults_injected[label] += 1
    stats.destructive.update(verdict.destructive)
    stats.proven.update(verdict.proven)
    stats.checkpoint_commands += verdict.checkpoint_commands
    stats.forged_versions += len(ex.forged)
    stats.trainer_signals += verdict.signals
    if verdict.violations:
        stats.failed_examples += 1
        stats.violations.append({"example": ex.number, "world": repr(ex.world), "violations": verdict.violations, "notes": ex.notes})


def test_the_checker_refuses_a_stop_that_no_verified_checkpoint_of_its_execution_proves(plane: Plane) -> None:
    """The property is only as good as :func:`prove`: it accepts a stop whose own execution's manifest and
    objects are in S3 and intact, and refuses every way of falling short of that."""
    s3, bucket = plane.cp.aws.client("s3"), plane.cp.deployment.bucket
    run, iid = "run-prove", "i-0123456789abcdef0"
    execution = f"{iid}-{run}-complete-261130000000"
    now = datetime.now(UTC).replace(microsecond=0)
    decision, session = now - timedelta(seconds=5), now - timedelta(minutes=10)
    data = bytes(range(256)) * 8
    key = f"runs/{run}/checkpoints/{execution}/step-000001/model.bin"
    put = s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
    sha = hashlib.sha256(data).hexdigest()
    checksum = base64.b64encode(bytes.fromhex(sha)).decode()
    entry = {"key": key, "size": len(data), "sha256": sha, "checksum_sha256": checksum, "parts": 0, "version_id": put["VersionId"]}
    manifest = {
        "schema_version": 1,
        "run_id": run,
        "instance_id": iid,
        "execution_name": execution,
        "decision_time": decision.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bucket": bucket,
        "files": [entry],
    }
    mkey, body = f"runs/{run}/manifests/{execution}.json", json.dumps(manifest).encode()
    mput = s3.put_object(Bucket=bucket, Key=mkey, Body=body)
    line = {"manifest_version_id": mput["VersionId"], "manifest_sha256": hashlib.sha256(body).hexdigest(), "files": 1, "bytes": len(data)}

    @dataclass
    class Sent:  # what the observer records of a SendCommand
        document: str
        parameters: dict[str, str]
        command_id: str = "command-1"

    class Ssm:  # the instance's result line, as GetCommandInvocation returns it
        def __init__(self, result: dict[str, Any]) -> None:
            self.result = result

        def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:  # noqa: N803
            return {"StandardOutputContent": "checkpoint: ...\n" + json.dumps(self.result) + "\n"}

    parameters = {"ExecutionName": execution, "ManifestKey": mkey, "UploadPrefix": f"runs/{run}/checkpoints/{execution}/"}
    sent = [Sent("stack-Checkpoint-abc", parameters)]
    tags = {OPT_IN_KEY: "True", "autostop:run-id": run}
    good = Destroy(iid, "StopInstances", False, now + timedelta(seconds=2), Caller("lambda", execution, "Stop instance"), session, tags)

    def proof(d: Destroy = good, result: dict[str, Any] = line, forged: frozenset[str] = frozenset()) -> list[str]:
        return prove(s3, Ssm(result), bucket, d, sent, set(forged))

    assert proof() == []
    assert proof(replace(good, caller=Caller("other", None, None)))  # not inside an execution
    assert proof(replace(good, caller=Caller("lambda", execution + "-2", "Stop instance")))  # another execution's
    assert proof(replace(good, tags={**tags, OPT_IN_KEY: "false"}))
    assert proof(replace(good, session=now))  # decided in an earlier session
    assert proof(replace(good, at=decision - timedelta(seconds=1)))  # before the upload
    assert proof(result={**line, "manifest_version_id": None})  # the instance named no version
    assert proof(result={**line, "manifest_sha256": "0" * 64})  # not the manifest the instance wrote
    assert proof(result={**line, "files": 2})  # counts the instance did not report
    assert proof(forged=frozenset({put["VersionId"]}))  # an object version the second tenant wrote
    assert proof(forged=frozenset({mput["VersionId"]}))  # a manifest version the second tenant wrote
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(len(data)))  # a new version, same size, other bytes: never read
    assert proof() == []
    s3.delete_object(Bucket=bucket, Key=key, VersionId=put["VersionId"])  # the instance's version is gone
    assert any("missing" in p for p in proof())
