"""The on-instance probe: one SSM SendCommand per batch of up to 50 instances that share parameters.

Instances whose paths differ only by their run id share parameters too: where the run id stands as a whole token in
PidFile, LogFile or CheckpointDir (:func:`templated`), it is sent as ``{run-id}`` with a ``RunIds`` parameter of
``<instance id>=<run id>`` pairs, and the probe substitutes its own (infra/documents/probe.sh). A fleet that logs to
``/data/runs/<run id>/train.log`` costs one SendCommand per 50 instances, like one whose paths are all alike.
The probe finds its pair by ``AWS_SSM_INSTANCE_ID``, which the SSM agent sets for every process it runs (amazon-ssm-agent,
agent/executers/executers.go: ``envVarInstanceId``). 50 pairs are at most 4,200 characters; SSM's 64 KB document
limit "also includes the content specified for input parameters at runtime" (CreateDocument ``Content``,
https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_CreateDocument.html), and the probe document is
about 18 KB.

AWS calls per probe: ceil(n/50) DescribeInstanceInformation, one SendCommand per batch, and one
ListCommandInvocations page per batch per poll. Results come from each invocation's plugin output
(ListCommandInvocations ``Details=True`` returns up to 2,500 characters of it; the probe prints one
short JSON line).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from shared import constants as c
from shared.errors import error_code
from shared.models import LogState, PidState, ProbeResult

TERMINAL_FAILURES = {"Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "Undeliverable", "Terminated", "Cancelling"}
RUN_ID_TEMPLATE = "{run-id}"
"""Stands for the instance's run id in a probe path parameter (PROBE_PATH_OR_EMPTY in infra/constructs/documents.py)."""
TEMPLATED_PARAMETERS = ("PidFile", "LogFile", "CheckpointDir")


def templated(parameters: Mapping[str, list[str]], run_id: str) -> dict[str, list[str]] | None:
    """``parameters`` with ``run_id`` replaced by ``{run-id}`` in the path parameters, or None when no path holds it.

    Replaced only where the run id is a whole token, not run on by a letter or digit on either side (as
    :func:`shared.tags.names_run` finds it): run ``exp1`` templates ``/logs/exp1/train.log`` and ``/logs/exp1.log``,
    never ``/logs/exp10/train.log``. Putting the run id back gives each path exactly (checked), so the probe reads
    the same files as with the plain parameters.
    """
    token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(run_id)}(?![A-Za-z0-9])")
    out = {name: list(values) for name, values in parameters.items()}
    for name in TEMPLATED_PARAMETERS:
        path = (parameters.get(name) or [""])[0]
        template = token.sub(lambda _: RUN_ID_TEMPLATE, path)
        if template != path and template.replace(RUN_ID_TEMPLATE, run_id) == path:
            out[name] = [template]
    return out if out != parameters else None


def batches(parameters: Mapping[str, dict[str, list[str]]], run_ids: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """SendCommand ``InstanceIds`` and ``Parameters`` for every batch of up to 50 instances sharing parameters.

    An instance with a run id in ``run_ids`` that :func:`templated` applies to joins the batches of its template,
    which carry ``RunIds``; any other is sent its plain parameters (without ``RunIds``).
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for iid, params in parameters.items():
        run_id = run_ids.get(iid)
        template = templated(params, run_id) if run_id else None
        groups[json.dumps([template is not None, template or params], sort_keys=True)].append(iid)
    for key, ids in groups.items():
        uses_run_ids, params = json.loads(key)
        for batch in chunks(ids):
            extra = {"RunIds": [" ".join(f"{iid}={run_ids[iid]}" for iid in batch)]} if uses_run_ids else {}
            yield {"InstanceIds": batch, "Parameters": {**params, **extra}}


def chunks(items: Sequence[str], size: int = c.SSM_BATCH_SIZE) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def last_json_line(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def parse_probe_output(text: str) -> ProbeResult:
    """Read the probe document's JSON line (``{"probe":1,"pid":{...},"log":{...}}``)."""
    data = last_json_line(text)
    if data is None or data.get("probe") != 1:
        return ProbeResult(ok=False, error="probe printed no result line")
    try:
        return ProbeResult(ok=True, pid=PidState.model_validate(data.get("pid")), log=LogState.model_validate(data.get("log")))
    except ValidationError as exc:
        return ProbeResult(ok=False, error=f"probe result is malformed: {exc.errors()[0]['msg']}")


def agents_online(ssm: Any, instance_ids: Sequence[str]) -> dict[str, str]:
    """PingStatus of each instance's SSM agent (``Online``, ``ConnectionLost``, ... or ``NotRegistered``)."""
    status = dict.fromkeys(instance_ids, "NotRegistered")
    for batch in chunks(instance_ids):
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Filters": [{"Key": "InstanceIds", "Values": batch}], "MaxResults": 50}
            if token:
                kwargs["NextToken"] = token
            resp = ssm.describe_instance_information(**kwargs)
            for info in resp.get("InstanceInformationList", []):
                status[info["InstanceId"]] = info.get("PingStatus", "Unknown")
            token = resp.get("NextToken")
            if not token:
                break
    return status


def probe_instances(
    ssm: Any,
    document: str,
    parameters: Mapping[str, dict[str, list[str]]],
    *,
    run_ids: Mapping[str, str] | None = None,
    timeout_seconds: float,
    poll_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, ProbeResult]:
    """Run the probe document on each instance and return its result per instance id.

    Args:
        ssm: boto3 SSM client.
        document: name of the stack's probe Command document.
        parameters: instance id to SendCommand ``Parameters`` (see ``InstanceConfig.probe_parameters``).
        run_ids: instance id to its run id (tag run-id): instances whose paths hold it share batches (:func:`batches`).
        timeout_seconds: give up waiting after this long; unfinished invocations count as failed probes.
        poll_seconds: pause between ListCommandInvocations polls.

    Returns:
        A :class:`ProbeResult` for every requested instance; ``ok=False`` with ``error`` explains a missing
        result (agent not online, SendCommand refused, command failed or still running at the deadline).
    """
    results: dict[str, ProbeResult] = {}
    if not parameters:
        return results
    deadline = clock() + timeout_seconds
    ping = agents_online(ssm, list(parameters))
    online: dict[str, dict[str, list[str]]] = {}
    for iid, params in parameters.items():
        if ping[iid] != "Online":
            results[iid] = ProbeResult(ok=False, error=f"SSM agent is not online (PingStatus={ping[iid]})")
        else:
            online[iid] = params

    pending: dict[str, set[str]] = {}
    for batch in batches(online, run_ids or {}):
        try:
            resp = ssm.send_command(
                **batch,
                DocumentName=document,
                DocumentVersion=c.PINNED_DOCUMENT_VERSION,
                TimeoutSeconds=max(30, int(timeout_seconds)),
                Comment="autostop completion probe",
            )
        except ClientError as exc:
            for iid in batch["InstanceIds"]:
                results[iid] = ProbeResult(ok=False, error=f"SendCommand refused: {error_code(exc)}")
            continue
        pending[resp["Command"]["CommandId"]] = set(batch["InstanceIds"])

    while pending:
        for command_id in list(pending):
            for inv in _invocations(ssm, command_id):
                iid = inv["InstanceId"]
                if iid not in pending[command_id]:
                    continue
                status = inv.get("Status", "")
                if status == "Success":
                    output = "".join(p.get("Output", "") for p in inv.get("CommandPlugins", []))
                    results[iid] = parse_probe_output(output)
                elif status in TERMINAL_FAILURES:
                    results[iid] = ProbeResult(ok=False, error=f"probe command {status}")
                else:
                    continue
                pending[command_id].discard(iid)
            if not pending[command_id]:
                del pending[command_id]
        if not pending:
            break
        if clock() >= deadline:
            for command_id, ids in pending.items():
                for iid in ids:
                    results[iid] = ProbeResult(ok=False, error=f"probe did not finish within {timeout_seconds:g} s")
                with contextlib.suppress(ClientError, NotImplementedError):  # best effort; the probe has no side effects
                    ssm.cancel_command(CommandId=command_id)
            break
        sleep(poll_seconds)
    return results


def _invocations(ssm: Any, command_id: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"CommandId": command_id, "Details": True}
        if token:
            kwargs["NextToken"] = token
        try:
            resp = ssm.list_command_invocations(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "InvalidCommandId":  # eventual consistency right after SendCommand
                return
            raise
        yield from resp.get("CommandInvocations", [])
        token = resp.get("NextToken")
        if not token:
            return
