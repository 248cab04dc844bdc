"""Fault injection for the local runtime and the tests: AWS calls, the simulated instances, S3, the stop.

Three layers, all installed by :func:`install` into a running :class:`~local.aws.LocalAws` (undone with it):

* **AWS calls** (:class:`FaultInjector.aws`): every in-process botocore request goes through
  ``botocore.endpoint.Endpoint._do_get_response``, once per HTTP attempt, so botocore's own retries
  (the Lambdas' cached clients: standard mode, 5 attempts) see an injected error exactly as they would
  see AWS's. moto's Step Functions executor calls its SDK-integration Tasks (``aws-sdk:ssm:sendCommand``,
  ``aws-sdk:ec2:describeInstances``, ``sns:publish``, ``lambda:invoke``) through boto3 clients of its own
  (no retries), so the same hook reaches them, and the ASL Retry/Catch rules decide. A fault names the
  service and operation (botocore names: ``ec2`` / ``DescribeInstances``), an optional predicate on the
  call's parameters, the callers it applies to (``lambda``: code under ``lambdas/``; ``sfn``: the state
  machine's own Tasks; ``other``: tests and tools) and which matching attempts fail (``first`` ..
  ``first + times - 1``). Kinds: ``throttle``, ``5xx``, ``unavailable``, ``timeout``, ``connect_timeout``,
  ``access_denied``, ``error`` (an explicit ``code``), and ``call`` (no error: run ``before`` and proceed,
  e.g. someone else stopping the instance). ``after=True`` lets the request reach the service and then
  loses the response (an ambiguous failure: the command *was* sent).
  Also patched: moto names an SDK-integration error ``ssm.ThrottlingException``; Step Functions names it
  ``Ssm.ThrottlingException`` (service and error in PascalCase), which is what the ASL's Retry names.
* **On the instance** (names for ``launch_instance(faults=[...])`` / ``SimulatedInstance.faults``):
  ``never_deliver`` (the agent reports Online but never picks the command up: Pending, then
  DeliveryTimedOut), ``stuck_in_progress`` (InProgress until the instance powers off),
  ``ran_but_delivery_timed_out`` (the script runs to its end; SSM reports DeliveryTimedOut),
  ``kill_midway`` (SIGKILL of the script during the second checkpoint object's upload: Failed, partial
  objects, no manifest), ``interrupt_upload`` (the second object's PutObject loses its connection),
  ``disk_full_manifest`` (writing the manifest on the instance raises ENOSPC). Agent offline is the
  existing ``launch_instance(agent="offline")``.
* **S3 after the upload** (same switch; the instance's ``aws`` shim, local/faults.sh, tampers right after
  the manifest is uploaded, before the command reports): ``lose_object`` (existing), ``wrong_size``,
  ``checksum_mismatch``, ``old_checkpoint`` (the manifest answers an earlier decision), ``manifest_not_json``;
  and ``corrupt_upload`` (existing).

Every injection is appended to :attr:`FaultInjector.log`; every StopInstances / TerminateInstances that the
control plane made and EC2 accepted is in :attr:`FaultInjector.destructive_calls`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local.aws import LAMBDAS, LocalAws

AWS_KINDS = ("throttle", "5xx", "unavailable", "timeout", "connect_timeout", "access_denied", "error", "call")
INSTANCE_FAULTS = (
    "never_deliver",
    "stuck_in_progress",
    "ran_but_delivery_timed_out",
    "kill_midway",
    "interrupt_upload",
    "disk_full_manifest",
)
S3_FAULTS = ("lose_object", "wrong_size", "checksum_mismatch", "old_checkpoint", "manifest_not_json", "corrupt_upload")
ORIGINS = ("lambda", "sfn", "other")
DESTRUCTIVE_OPERATIONS = ("StopInstances", "TerminateInstances")

THROTTLE = {
    "ec2": ("RequestLimitExceeded", 503),
    "s3": ("SlowDown", 503),
    "ssm": ("ThrottlingException", 400),
    "dynamodb": ("ThrottlingException", 400),
    "sns": ("Throttling", 400),
    "lambda": ("TooManyRequestsException", 429),
    "stepfunctions": ("ThrottlingException", 400),
}
SERVER_ERROR = {"ec2": "InternalError", "s3": "InternalError", "ssm": "InternalServerError", "dynamodb": "InternalServerError"}
ACCESS_DENIED = {"ec2": ("UnauthorizedOperation", 403), "s3": ("AccessDenied", 403), "sns": ("AuthorizationError", 403)}

_MOTO_SERVICE_ERROR = {"dynamodb": "DynamoDb", "sfn": "Sfn", "ec2": "Ec2", "ssm": "Ssm", "s3": "S3", "sns": "Sns", "lambda": "Lambda"}
_SFN_DIR = os.sep + os.path.join("moto", "stepfunctions") + os.sep
_LAMBDAS_DIR = str(LAMBDAS) + os.sep
_local = threading.local()


@dataclass
class AwsFault:
    """One AWS-call fault; see the module docstring. ``calls`` counts matching attempts, ``injected`` faults."""

    service: str
    operation: str
    kind: str
    first: int = 1
    times: int | None = 1
    """How many matching attempts fail, from the ``first``; None: every one."""
    when: Callable[[dict[str, Any]], bool] | None = None
    origins: tuple[str, ...] = ("lambda", "sfn")
    code: str | None = None
    status: int | None = None
    after: bool = False
    before: Callable[[], None] | None = None
    calls: int = 0
    injected: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AWS_KINDS:
            raise ValueError(f"kind must be one of {AWS_KINDS}, not {self.kind!r}")
        if self.kind == "error" and not self.code:
            raise ValueError("kind 'error' needs a code")
        if self.kind == "call" and self.before is None:
            raise ValueError("kind 'call' needs a before callable")

    def matches(self, service: str, operation: str, params: dict[str, Any], origin: str) -> bool:
        if (service, operation) != (self.service, self.operation) or origin not in self.origins:
            return False
        return self.when is None or bool(self.when(params))

    def due(self) -> bool:
        """Count one matching attempt; True when it is one of those that fail."""
        self.calls += 1
        last = None if self.times is None else self.first + self.times - 1
        return self.calls >= self.first and (last is None or self.calls <= last)

    def error(self) -> tuple[str, int]:
        """(error code, HTTP status) as the service names it."""
        if self.code:
            return self.code, self.status or 400
        if self.kind == "throttle":
            return THROTTLE.get(self.service, ("Throttling", 400))
        if self.kind == "5xx":
            return SERVER_ERROR.get(self.service, "InternalFailure"), 500
        if self.kind == "unavailable":
            return "ServiceUnavailable", 503
        return ACCESS_DENIED.get(self.service, ("AccessDeniedException", 400))


@dataclass
class FaultInjector:
    """The faults in force and what they did. Made by :func:`install`."""

    faults: list[AwsFault] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    """Every injection: time, where (``aws`` / ``instance``), the fault and the call or instance."""
    destructive_calls: list[dict[str, Any]] = field(default_factory=list)
    """StopInstances / TerminateInstances calls by the control plane (``lambda`` / ``sfn``) that EC2 accepted."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- AWS calls ----------------------------------------------------------------------------------------

    def add(self, service: str, operation: str, kind: str, **options: Any) -> AwsFault:
        fault = AwsFault(service, operation, kind, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: AwsFault) -> None:
        with self._lock:
            if fault in self.faults:
                self.faults.remove(fault)

    @contextmanager
    def aws(self, service: str, operation: str, kind: str, **options: Any) -> Iterator[AwsFault]:
        """``with faults.aws("ec2", "DescribeInstances", "throttle", times=1) as fault: ...``"""
        fault = self.add(service, operation, kind, **options)
        try:
            yield fault
        finally:
            self.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def injected(self, service: str | None = None, operation: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.log
            if e["where"] == "aws" and (service is None or e["service"] == service) and (operation is None or e["operation"] == operation)
        ]

    def destroyed(self, instance_id: str) -> bool:
        """True when the control plane stopped, hibernated or terminated ``instance_id`` (EC2 accepted the call)."""
        return any(instance_id in c["instance_ids"] for c in self.destructive_calls)

    def _pick(self, service: str, operation: str, params: dict[str, Any], origin: str) -> AwsFault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(service, operation, params, origin) and fault.due():
                    fault.injected += 1
                    return fault
        return None

    def _record(self, entry: dict[str, Any]) -> None:
        entry["at"] = datetime.now(UTC).isoformat()
        with self._lock:
            self.log.append(entry)


def install(aws: LocalAws, *, retry_sleep_cap: float = 0.05) -> FaultInjector:
    """Install the three layers into ``aws`` (for its lifetime) and return the injector.

    ``retry_sleep_cap`` caps botocore's back-off between retry attempts (seconds; as the local runtime caps
    Wait states), so a fault that outlasts every retry costs milliseconds, not minutes.
    """
    import types

    import botocore.endpoint

    injector = FaultInjector()
    fast = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fast.sleep = lambda seconds: time.sleep(min(seconds, retry_sleep_cap))
    aws.patch(botocore.endpoint, "time", fast)
    _install_botocore(aws, injector)
    _install_sfn_error_names(aws)
    _install_agent(aws, injector)
    return injector


# --- AWS calls --------------------------------------------------------------------------------------------


def _origin() -> str:
    if getattr(_local, "external", False):
        return "other"
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_LAMBDAS_DIR):
            return "lambda"
        if _SFN_DIR in name:
            return "sfn"
        frame = frame.f_back  # type: ignore[assignment]
    return "other"


class _EmptyRaw:
    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        yield b""


def _error_response(url: str, code: str, status: int, message: str) -> tuple[Any, dict[str, Any]]:
    from botocore.awsrequest import AWSResponse

    request_id = str(uuid.uuid4())
    http = AWSResponse(url, status, {"x-amzn-requestid": request_id}, _EmptyRaw())
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"RequestId": request_id, "HTTPStatusCode": status, "HTTPHeaders": {}},
    }
    return http, parsed


def _install_botocore(aws: LocalAws, injector: FaultInjector) -> None:
    from botocore.client import BaseClient
    from botocore.endpoint import Endpoint
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    original_call = BaseClient._make_api_call
    original_get = Endpoint._do_get_response

    def _make_api_call(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        stack = getattr(_local, "params", None)
        if stack is None:
            stack = _local.params = []
        stack.append(api_params)
        try:
            return original_call(client, operation_name, api_params)
        finally:
            stack.pop()

    def _do_get_response(endpoint: Any, request: Any, operation_model: Any, context: Any) -> Any:
        service = operation_model.service_model.service_name
        operation = operation_model.name
        stack = getattr(_local, "params", None) or [{}]
        params = stack[-1] or {}
        origin = _origin()
        fault = injector._pick(service, operation, params, origin) if injector.faults else None
        if fault is not None and fault.kind == "call":
            injector._record(
                {"where": "aws", "service": service, "operation": operation, "kind": "call", "origin": origin, "attempt": fault.calls}
            )
            _local.external = True  # what ``before`` does is someone else's doing, not the control plane's
            try:
                fault.before()  # type: ignore[misc]
            finally:
                _local.external = False
            fault = None
        if fault is not None and not fault.after:
            return _inject(fault, request, service, operation, origin)
        result = original_get(endpoint, request, operation_model, context)
        if service == "ec2" and operation in DESTRUCTIVE_OPERATIONS and origin != "other":
            # An ``after`` fault loses the answer of a call EC2 accepted: the call still counts as made.
            response, exc = result
            if exc is None and response is not None and response[0].status_code < 300:
                with injector._lock:
                    injector.destructive_calls.append(
                        {"operation": operation, "instance_ids": list(params.get("InstanceIds") or []), "origin": origin}
                    )
        if fault is not None:
            return _inject(fault, request, service, operation, origin)
        return result

    def _inject(fault: AwsFault, request: Any, service: str, operation: str, origin: str) -> Any:
        entry = {"where": "aws", "service": service, "operation": operation, "kind": fault.kind, "origin": origin}
        entry.update(attempt=fault.calls, after=fault.after)
        if fault.kind in ("timeout", "connect_timeout"):
            injector._record(entry)
            cls = ReadTimeoutError if fault.kind == "timeout" else ConnectTimeoutError
            return None, cls(endpoint_url=request.url)
        code, status = fault.error()
        entry.update(code=code, status=status)
        injector._record(entry)
        return _error_response(request.url, code, status, f"injected by local.faults: {fault.kind} on {operation}"), None

    aws.patch(BaseClient, "_make_api_call", _make_api_call)
    aws.patch(Endpoint, "_do_get_response", _do_get_response)


def _install_sfn_error_names(aws: LocalAws) -> None:
    """Step Functions names an SDK-integration error ``<Service>.<Error>`` in PascalCase (``Ssm.ThrottlingException``);
    moto keeps the lower-case service name of the resource ARN (``ssm.ThrottlingException``)."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import StateTaskServiceAwsSdk

    def _normalise_service_error_name(service_name: str) -> str:
        return _MOTO_SERVICE_ERROR.get(service_name.lower(), service_name[:1].upper() + service_name[1:])

    aws.patch(StateTaskServiceAwsSdk, "_normalise_service_error_name", staticmethod(_normalise_service_error_name))


# --- on the instance --------------------------------------------------------------------------------------


class _ReportsDeliveryTimedOut(dict):  # type: ignore[type-arg]
    """An invocation whose final status SSM reports as DeliveryTimedOut, whatever the script did."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        values = dict(*args, **kwargs)
        if values.get("Status") in ("Success", "Failed", "TimedOut"):
            values.update(Status="DeliveryTimedOut", StatusDetails="DeliveryTimedOut", ResponseCode=-1)
        super().update(values)


SITECUSTOMIZE = """\
import builtins, errno, os
if "disk_full_manifest" in os.environ.get("AUTOSTOP_SIM_FAULTS", "").split(","):
    _open = builtins.open
    def open(file, mode="r", *args, **kwargs):
        if isinstance(file, str) and os.path.basename(file) == "manifest.json" and any(m in mode for m in "wax"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file)
        return _open(file, mode, *args, **kwargs)
    builtins.open = open
"""


def _install_agent(aws: LocalAws, injector: FaultInjector) -> None:
    from local.agent import AgentFleet

    original_run = AgentFleet._run
    original_bin = AgentFleet._fault_bin

    def _run(fleet: Any, command: Any, inv: dict[str, Any], instance: Any, *args: Any) -> None:
        faults = set(instance.faults)
        delivery = float(args[-1])
        entry = {"where": "instance", "instance_id": instance.instance_id, "command_id": command.command_id}
        if "never_deliver" in faults:
            injector._record({**entry, "fault": "never_deliver"})
            deadline = time.monotonic() + min(delivery, fleet.delivery_timeout_cap)
            while time.monotonic() < deadline and inv["Status"] == "Pending":
                time.sleep(0.05)
            if inv["Status"] == "Pending":
                inv.update(Status="DeliveryTimedOut", StatusDetails="DeliveryTimedOut")
                fleet._ended(command, inv)  # SSM's status-change event, as for any invocation that ended
            fleet._aggregate(command)
            return
        if "stuck_in_progress" in faults:  # never ends, so no status-change event: the Task state's timeout decides
            injector._record({**entry, "fault": "stuck_in_progress"})
            inv.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=datetime.now(UTC).isoformat())
            fleet._aggregate(command)
            while instance.running and inv["Status"] == "InProgress":
                time.sleep(0.1)
            return
        if "ran_but_delivery_timed_out" in faults:
            injector._record({**entry, "fault": "ran_but_delivery_timed_out"})
            wrapped = _ReportsDeliveryTimedOut(inv)
            command.invocations[command.invocations.index(inv)] = wrapped
            inv = wrapped
        for name in faults & {*INSTANCE_FAULTS, *S3_FAULTS} - {"ran_but_delivery_timed_out"}:
            injector._record({**entry, "fault": name})
        original_run(fleet, command, inv, instance, *args)

    def _fault_bin(fleet: Any, instance: Any) -> Path:
        bin_dir: Path = original_bin(fleet, instance)
        site = bin_dir.parent / "fault-site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        shim = bin_dir / "python3"
        real = _real_python3(bin_dir)
        # The documents run their helpers as ``python3 -I -c CODE`` (isolated: no PYTHONPATH), so the
        # faults' prelude is put in front of CODE, run by local/sdk_faults.py (the same faults at botocore's
        # calls as local/faults.sh applies to the AWS CLI's); other invocations get it as sitecustomize.
        sdk_faults = Path(__file__).parent / "sdk_faults.py"
        shim.write_text(
            "#!/bin/bash\n"
            'if [[ "$1" == -I && "$2" == -c ]]; then\n'
            f'  code=$3; shift 3; exec "{real}" "{sdk_faults}" -I -c "$(cat "{site}/sitecustomize.py")"$\'\\n\'"$code" "$@"\n'
            "fi\n"
            f'PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{real}" "$@"\n'
        )
        shim.chmod(0o755)
        return bin_dir

    aws.patch(AgentFleet, "_run", _run)
    aws.patch(AgentFleet, "_fault_bin", _fault_bin)


def _real_python3(exclude: Path) -> str:
    for directory in [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]:
        candidate = Path(directory) / "python3"
        if directory and Path(directory) != exclude and candidate.exists():
            return str(candidate)
    return sys.executable


# --- helpers for tests ------------------------------------------------------------------------------------


def trainer_signals(root: Path) -> list[str]:
    """Lines of the toy trainer's output (``<root>/.sim/trainer.out``) that acknowledge a signal."""
    out = root / ".sim" / "trainer.out"
    try:
        lines = out.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if "received SIG" in line or "ignoring SIG" in line]
