"""Emulated AWS for the local runtime and the tests: moto, plus the few patches that make it run our code.

What is real here: the Lambda handler modules (imported and called in-process), the state machine
definition exactly as synthesized, moto's ASL interpreter and its EC2/S3/SSM/SNS/SQS/EventBridge state,
the SSM documents' scripts (run by :mod:`local.agent` with the real AWS CLI against a moto server).

What is patched, and why:
* ``LambdaFunction._invoke_lambda``: moto would need Docker; we import the handler and call it.
* ``Rule.send_to_targets``: moto silently drops Lambda targets; we deliver them asynchronously (as
  EventBridge does) on a worker pool, so ``drain()`` can wait for them.
* Wait states and Retry intervals: capped at 1 s / skipped, so executions take seconds, not minutes.
* SSM: moto's SendCommand never runs anything and lacks ListCommandInvocations,
  DescribeInstanceInformation and CancelCommand; :mod:`local.agent` supplies them.
* EC2 stop/terminate: the instance's processes end and its agent goes offline, as on a real machine;
  start: the machine boots again (listeners in :mod:`local.agent`) and, as on EC2, ``LaunchTime`` becomes
  the start time (moto keeps the first launch's; here it also never repeats the previous second, since
  the control plane names a power-on session by it and a real stop/start takes longer than a second).
  A start of a terminated instance fails with ``IncorrectInstanceState``, as on EC2.
* EC2 state-change events: moto emits none. RunInstances (pending, running), StartInstances (pending,
  running), StopInstances (stopping, stopped) and TerminateInstances (shutting-down, terminated) put
  "EC2 Instance State-change Notification" events, shaped as EC2's, on the default bus; the rules decide
  delivery (instances whose state did not change emit nothing).
* Spot: RunInstances with ``InstanceMarketOptions`` gets ``InstanceLifecycle=spot`` from moto but no spot
  request; here a spot request (``SpotInstanceType`` and ``InstanceInterruptionBehavior`` from the call,
  AWS's defaults one-time/terminate) is recorded as fulfilled by the instance, so DescribeInstances shows
  ``SpotInstanceRequestId`` and DescribeSpotInstanceRequests its ``Type``. Its state follows the
  instance (stopped: disabled; started: active; terminated: closed). StopInstances on an instance of a
  one-time request fails with ``UnsupportedOperation``, as on EC2.
* Step Functions status-change events: moto emits none. When an execution ends (SUCCEEDED, FAILED,
  TIMED_OUT, ABORTED) a "Step Functions Execution Status Change" event shaped as Step Functions' (source
  ``aws.states``, detail executionArn, stateMachineArn, name, status, startDate/stopDate in epoch ms, input,
  output, error, cause) is put on the default bus, so the execution-ended rule is tested end to end. (On AWS
  these events are delivered on a best-effort basis.)
* JSONPath: moto returns ``$.Reservations[0].Instances[0].LaunchTime`` (a field right after an array index)
  as a one-element list, a workaround of its own for moto issue 7825; Step Functions returns the value (as it
  does for ``...Instances[0].State.Name``). Here a single match of a path that does not end in an index,
  slice or wildcard is returned as the value.
* SDK-integration timestamps: moto's ``aws-sdk:*`` Tasks put boto3's response into the state as it is, so a
  timestamp such as DescribeInstances' ``LaunchTime`` is a Python ``datetime``, which no Choice operator takes
  for a timestamp (``IsTimestamp`` is false, ``TimestampEquals*`` never match; the history shows it as
  ``...+00:00`` only because it is serialized). Step Functions' result is JSON, its timestamps ISO 8601
  strings in UTC (``2026-01-01T00:00:00Z``, fractional seconds when there are any); here they are made so.
* Choice timestamps: moto's ``IsTimestamp`` and ``Timestamp*`` operators parse only ``YYYY-MM-DDTHH:MM:SSZ``,
  while the ASL takes any RFC 3339 timestamp (fractional seconds, a numeric offset) and compares instants.
  Here every RFC 3339 timestamp parses, to an aware UTC datetime.
* EventBridge ``time``: moto passes PutEvents' ``Time`` through as an epoch number (and adds a field
  of its own, ``ingestion-time``); events delivered to Lambda carry AWS's ``YYYY-MM-DDTHH:MM:SSZ`` string
  and no ``ingestion-time``. Targets moto delivers itself (SQS, logs) keep moto's shape, which its input
  templates need.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
import time as _time
import traceback
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = REPO / "lambdas"
REGION = "us-east-1"
ACCOUNT = "123456789012"
RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})")
"""An ASL timestamp: RFC 3339, an uppercase ``T``, and ``Z`` or a numeric offset."""

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
}


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that Powertools and our handlers read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    aws_request_id: str = ""
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


class LambdaInvocations:
    """Runs handlers in-process and keeps count of asynchronous deliveries still in flight."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="eventbridge")
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.calls: Counter[str] = Counter()
        """Invocations per handler package (``send_command``, ``on_status_event``, ...), for reports and benchmarks."""

    def invoke(self, handler: str, event: Any, function_name: str, function_arn: str) -> tuple[Any, bool]:
        """Import ``module.function`` from ``lambdas/`` and call it; returns (result, errored)."""
        module_name, func_name = handler.rsplit(".", 1)
        with self._lock:
            self.calls[module_name.split(".")[0]] += 1
        context = LambdaContext(function_name=function_name, invoked_function_arn=function_arn, aws_request_id=str(uuid.uuid4()))
        try:
            result = getattr(importlib.import_module(module_name), func_name)(event, context)
            return result, False
        except Exception as exc:  # shaped like the Lambda runtime's error payload
            self.errors.append(f"{function_name}: {type(exc).__name__}: {exc}")
            return {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": traceback.format_exc().splitlines()}, True

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future = self.pool.submit(fn)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(lambda f: self._discard(f))
        return future

    def _discard(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


class LocalAws:
    """Context manager: moto (in-process, Step Functions execution on) + a moto server + the patches.

    ``endpoint_url`` is the moto server's address, for subprocesses (AWS CLI, trainer) that cannot share
    the in-process mock. Both views share one state.
    """

    def __init__(self, *, wait_cap_seconds: int = 1) -> None:
        if not isinstance(wait_cap_seconds, int):
            raise TypeError("wait_cap_seconds must be an int: moto compares whole seconds")
        self.wait_cap_seconds = wait_cap_seconds
        self.lambdas = LambdaInvocations()
        self.on_instances_stopped: list[Callable[[list[str]], None]] = []
        """Called with the ids of instances StopInstances/TerminateInstances powered off."""
        self.on_instances_started: list[Callable[[list[str]], None]] = []
        """Called with the ids of stopped instances StartInstances powered on (before "running" is put)."""
        self.ec2_events: list[dict[str, Any]] = []
        """Every event the EC2 patches put on the bus, in order (for tests and reports)."""
        self.event_copies: Callable[[str, str, dict[str, Any]], int] | None = None
        """Fault hook for the events AWS services emit (:meth:`put_event`): given (source, detail-type, detail), how
        many copies reach the bus: 0 loses the event, 2 duplicates it (EventBridge delivers at least once, best
        effort). None: one copy each."""
        self.lost_events: list[dict[str, Any]] = []
        """Events the ``event_copies`` hook lost (source, detail-type, detail)."""
        self.task_timeout_cap: float | None = None
        """If set, no Task state's TimeoutSeconds(Path) exceeds this many seconds (tests of a command whose end never
        comes, without waiting the production budget)."""
        self._stack = ExitStack()
        self.endpoint_url = ""

    def __enter__(self) -> LocalAws:
        stack = self._stack
        stack.enter_context(mock.patch.dict(os.environ, FAKE_ENV))
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            os.environ.pop(var, None)
        if str(LAMBDAS) not in sys.path:
            sys.path.insert(0, str(LAMBDAS))
        from moto import mock_aws
        from moto.server import ThreadedMotoServer

        stack.enter_context(mock_aws(config={"stepfunctions": {"execute_state_machine": True}}))
        # moto's server logs every request, and its ASL interpreter logs every Fail state at ERROR.
        for noisy in ("werkzeug", "moto.stepfunctions.parser"):
            stack.enter_context(_quiet(noisy))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        stack.callback(server.stop)
        host, port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        stack.enter_context(mock.patch.dict(os.environ, {"MOTO_PORT": str(port)}))
        self._patch_lambda()
        self._patch_task_timeouts()
        self._patch_events()
        self._patch_time()
        self._patch_ec2()
        self._patch_execution_ends()
        self._patch_json_path()
        self._patch_timestamps()
        stack.callback(self.lambdas.pool.shutdown, wait=True, cancel_futures=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # --- patches ---------------------------------------------------------------------------------------

    def _patch_lambda(self) -> None:
        from moto.awslambda.models import LambdaFunction

        invocations = self.lambdas

        def _invoke_lambda(fn: Any, event: Any = None) -> tuple[str, bool, str]:
            payload = json.loads(event) if isinstance(event, str | bytes) else (event or {})
            result, errored = invocations.invoke(fn.handler, payload, fn.function_name, fn.function_arn)
            return json.dumps(result, default=str), errored, ""

        self._stack.enter_context(mock.patch.object(LambdaFunction, "_invoke_lambda", _invoke_lambda))

    def _patch_task_timeouts(self) -> None:
        from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import Timeout

        aws = self

        def _eval_body(timeout: Any, env: Any) -> None:
            seconds = timeout._eval_seconds(env=env)
            cap = aws.task_timeout_cap
            env.stack.append(seconds if cap is None or timeout.is_default_value() else min(seconds, max(1, int(cap))))

        self._stack.enter_context(mock.patch.object(Timeout, "_eval_body", _eval_body))
        self._patch_stoppable_waits()

    def _patch_stoppable_waits(self) -> None:
        """A ``.waitForTaskToken`` Task state waits in slices, so that StopExecution ends the wait as it does on AWS
        (moto would block until the token or the Task's whole timeout)."""
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
            StateTaskServiceCallback,
        )
        from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackOutcomeSuccess, CallbackOutcomeTimedOut

        original = StateTaskServiceCallback._eval_wait_for_task_token

        def _eval_wait_for_task_token(task: Any, env: Any, timeout_seconds: int, callback_endpoint: Any, heartbeat_endpoint: Any) -> Any:
            if heartbeat_endpoint is not None:
                return original(task, env, timeout_seconds, callback_endpoint, heartbeat_endpoint)
            deadline = _time.monotonic() + timeout_seconds
            while _time.monotonic() < deadline:
                if not env.is_running():
                    # Stopped (StopExecution): end the wait quietly; a failure here would turn ABORTED into FAILED.
                    return CallbackOutcomeSuccess(callback_id=callback_endpoint.callback_id, output="{}")
                outcome = callback_endpoint.wait(timeout=min(0.5, max(0.0, deadline - _time.monotonic())))
                if outcome is not None:
                    return outcome
            return CallbackOutcomeTimedOut(callback_id=callback_endpoint.callback_id)

        self._stack.enter_context(mock.patch.object(StateTaskServiceCallback, "_eval_wait_for_task_token", _eval_wait_for_task_token))

    def _patch_events(self) -> None:
        from moto.awslambda.models import lambda_backends
        from moto.events.models import Rule
        from moto.utilities.arns import parse_arn

        original = Rule.send_to_targets
        invocations = self.lambdas

        def send_to_targets(rule: Any, event: dict[str, Any], transform_input: bool = True) -> None:
            moto_event = event
            event = aws_event_shape(event)
            if getattr(rule, "scheduled_expression", None):
                return  # a schedule rule matches no event (moto's empty pattern would match every one)
            if not rule.event_pattern.matches_event(event):
                return
            others = [t for t in rule.targets if parse_arn(t["Arn"]).service != "lambda"]
            for target in rule.targets:
                arn = parse_arn(target["Arn"])
                if arn.service != "lambda":
                    continue
                fn = lambda_backends[arn.account][arn.region].get_function(target["Arn"])
                payload = json.dumps(event, default=str)
                invocations.submit(lambda fn=fn, payload=payload: fn.invoke(payload, {}, {}))
            if others:  # moto's own delivery (SQS, logs, ...), in moto's shape: its templates need it
                saved = rule.targets
                rule.targets = others
                try:
                    original(rule, moto_event, transform_input)
                finally:
                    rule.targets = saved

        self._stack.enter_context(mock.patch.object(Rule, "send_to_targets", send_to_targets))

    def _patch_time(self) -> None:
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
        from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction

        original_wait = WaitFunction._wait_interval
        cap = self.wait_cap_seconds

        def _wait_interval(fn: Any, env: Any, wait_seconds: int) -> None:
            original_wait(fn, env, min(int(wait_seconds), cap))

        self._stack.enter_context(mock.patch.object(WaitFunction, "_wait_interval", _wait_interval))
        self._stack.enter_context(mock.patch.object(retrier_decl, "time", types.SimpleNamespace(sleep=lambda s: None)))

    def _patch_ec2(self) -> None:
        from moto.ec2.exceptions import EC2ClientError
        from moto.ec2.models.instances import InstanceBackend
        from moto.ec2.responses.instances import InstanceResponse

        aws = self
        original_run = InstanceBackend.run_instances
        original_start = InstanceBackend.start_instances
        original_stop = InstanceBackend.stop_instances
        original_terminate = InstanceBackend.terminate_instances
        original_run_response = InstanceResponse.run_instances

        def changed(result: list[tuple[Any, Any]], *unchanged: str) -> list[Any]:
            return [inst for inst, previous in result if previous.name not in unchanged]

        def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
            reservation = original_run(backend, *args, **kwargs)
            aws._put_state_changes(backend, reservation.instances, "pending", "running")
            return reservation

        def start_instances(backend: Any, instance_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            for inst in backend.get_multi_instances_by_id(instance_ids):
                if inst.state in ("terminated", "shutting-down"):
                    message = f"The instance '{inst.id}' is not in a state from which it can be started."
                    raise EC2ClientError("IncorrectInstanceState", message)
            result = original_start(backend, instance_ids, *args, **kwargs)
            booted = changed(result, "running", "pending")
            for inst in booted:
                previous = inst.launch_time.replace(microsecond=0)
                now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # moto keeps naive UTC times
                inst.launch_time = max(now, previous + timedelta(seconds=1))
                _set_spot_request_state(inst, "active", "fulfilled")
            aws._notify(aws.on_instances_started, [i.id for i in booted])
            aws._put_state_changes(backend, booted, "pending", "running")
            return result

        def stop_instances(backend: Any, instance_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            for inst in backend.get_multi_instances_by_id(instance_ids):
                request = _spot_request(inst)
                if request is not None and request.type == "one-time":
                    raise EC2ClientError(
                        "UnsupportedOperation",
                        f"You can't stop the Spot Instance '{inst.id}' because it is associated with a one-time Spot Instance "
                        "request. You can only stop Spot Instances associated with persistent Spot Instance requests.",
                    )
            result = original_stop(backend, instance_ids, *args, **kwargs)
            aws._notify(aws.on_instances_stopped, list(instance_ids))
            stopped = changed(result, "stopped")
            for inst in stopped:
                _set_spot_request_state(inst, "disabled", "instance-stopped-by-user")
            aws._put_state_changes(backend, stopped, "stopping", "stopped")
            return result

        def terminate_instances(backend: Any, instance_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            result = original_terminate(backend, instance_ids, *args, **kwargs)
            aws._notify(aws.on_instances_stopped, list(instance_ids))
            ended = changed(result, "terminated")
            for inst in ended:
                _set_spot_request_state(inst, "closed", "instance-terminated-by-user")
            aws._put_state_changes(backend, ended, "shutting-down", "terminated")
            return result

        def run_instances_response(resp: Any) -> Any:
            result = original_run_response(resp)
            market = resp._get_param("InstanceMarketOptions") or {}
            if market.get("MarketType") == "spot":
                options = market.get("SpotOptions") or {}
                for inst in result.result.instances:
                    _attach_spot_request(
                        resp.ec2_backend,
                        inst,
                        options.get("SpotInstanceType") or "one-time",
                        options.get("InstanceInterruptionBehavior") or "terminate",
                    )
            return result

        self._stack.enter_context(mock.patch.object(InstanceBackend, "run_instances", run_instances))
        self._stack.enter_context(mock.patch.object(InstanceBackend, "start_instances", start_instances))
        self._stack.enter_context(mock.patch.object(InstanceBackend, "stop_instances", stop_instances))
        self._stack.enter_context(mock.patch.object(InstanceBackend, "terminate_instances", terminate_instances))
        self._stack.enter_context(mock.patch.object(InstanceResponse, "run_instances", run_instances_response))

    def _patch_json_path(self) -> None:
        from moto.stepfunctions.parser.asl.utils import json_path

        for user in (
            "component.common.string.string_expression",
            "component.intrinsic.argument.argument",
            "component.state.choice.comparison.operator.implementations.timestamp_operators",
            "component.state.choice.comparison.operator.implementations.boolean_equals",
            "component.state.choice.comparison.operator.implementations.numeric",
            "component.state.choice.comparison.operator.implementations.string_operators",
            "eval.states",
        ):
            importlib.import_module(f"moto.stepfunctions.parser.asl.{user}")
        original, index = json_path.extract_json, json_path.Index

        def extract_json(path: str, data: Any) -> Any:
            value = original(path, data)
            if isinstance(value, list) and len(value) == 1 and not path.rstrip().endswith("]"):
                matches = json_path.parse(path).find(data)
                if len(matches) == 1 and not isinstance(matches[0].path, index):
                    return matches[0].value
            return value

        for name, module in list(sys.modules.items()):
            if name.startswith("moto.stepfunctions.parser") and getattr(module, "extract_json", None) is original:
                self._stack.enter_context(mock.patch.object(module, "extract_json", extract_json))

    def _patch_timestamps(self) -> None:
        from moto.stepfunctions.parser.asl.component.state.choice.comparison.operator.implementations.is_operator import IsTimestamp
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
            StateTaskServiceAwsSdk,
        )

        original_task = StateTaskServiceAwsSdk._eval_service_task

        def _eval_service_task(task: Any, env: Any, *args: Any, **kwargs: Any) -> None:
            original_task(task, env, *args, **kwargs)
            env.stack[-1] = sdk_json(env.stack[-1])

        def string_to_timestamp(string: str) -> datetime | None:
            match = RFC3339.fullmatch(string) if isinstance(string, str) else None
            if match is None:
                return None
            date, fraction, zone = match.groups()
            try:
                when = datetime.fromisoformat(date + (fraction or "")[:7] + ("+00:00" if zone == "Z" else zone))
            except ValueError:
                return None
            return when.astimezone(UTC)

        self._stack.enter_context(mock.patch.object(IsTimestamp, "string_to_timestamp", staticmethod(string_to_timestamp)))
        self._stack.enter_context(mock.patch.object(StateTaskServiceAwsSdk, "_eval_service_task", _eval_service_task))

    def _patch_execution_ends(self) -> None:
        from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

        original = BaseExecutionWorkerCommunication.terminated
        aws = self

        def terminated(comm: Any) -> None:
            # Count the event as in flight before the status leaves RUNNING, so that waiting for "no delivery in
            # flight and no execution running" cannot slip between the two.
            ready = threading.Event()
            aws.lambdas.submit(lambda: (ready.wait(30), aws._put_execution_status(comm.execution)))
            try:
                original(comm)
            finally:
                ready.set()

        self._stack.enter_context(mock.patch.object(BaseExecutionWorkerCommunication, "terminated", terminated))

    def _put_execution_status(self, execution: Any) -> None:
        def millis(when: Any) -> int | None:
            return int(when.timestamp() * 1000) if isinstance(when, datetime) else None

        status = execution.exec_status.value if execution.exec_status is not None else "RUNNING"
        output = json.dumps(execution.output, separators=(",", ":")) if status == "SUCCEEDED" else None
        detail = {
            "executionArn": execution.exec_arn,
            "stateMachineArn": execution.state_machine_arn,
            "name": execution.name,
            "status": status,
            "startDate": millis(execution.start_date),
            "stopDate": millis(execution.stop_date),
            "input": json.dumps(execution.input_data, separators=(",", ":")),
            "inputDetails": {"included": True},
            "output": output,
            "outputDetails": {"included": True} if output is not None else None,
            "error": execution.error,
            "cause": execution.cause,
        }
        try:
            self.put_event(
                "aws.states",
                "Step Functions Execution Status Change",
                detail,
                resources=[execution.exec_arn],
                account=execution.account_id,
                region=execution.region_name,
            )
        except Exception as exc:  # a lost event is what "best effort" allows; say so in the errors
            self.lambdas.errors.append(f"execution status event for {execution.name}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _notify(listeners: list[Callable[[list[str]], None]], ids: list[str]) -> None:
        if ids:
            for listener in listeners:
                listener(list(ids))

    def _put_state_changes(self, backend: Any, instances: list[Any], *states: str) -> None:
        for state in states:
            for inst in instances:
                arn = f"arn:aws:ec2:{backend.region_name}:{backend.account_id}:instance/{inst.id}"
                event = self.put_event(
                    "aws.ec2",
                    "EC2 Instance State-change Notification",
                    {"instance-id": inst.id, "state": state},
                    resources=[arn],
                    account=backend.account_id,
                    region=backend.region_name,
                )
                self.ec2_events.append(event)

    def put_event(
        self,
        source: str,
        detail_type: str,
        detail: dict[str, Any],
        *,
        resources: list[str] | None = None,
        time: datetime | None = None,
        account: str = ACCOUNT,
        region: str = REGION,
    ) -> dict[str, Any]:
        """Put one event on the default bus through moto's own PutEvents (so every rule's pattern decides).

        Used for the events AWS services emit (``aws.*`` sources); :attr:`event_copies` may lose or repeat it.
        Returns the event as rules see it.
        """
        from moto.events.models import events_backends

        copies = 1 if self.event_copies is None else self.event_copies(source, detail_type, detail)
        if copies == 0:
            self.lost_events.append({"source": source, "detail-type": detail_type, "detail": detail})
        moment = (time or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        when = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        # Time as PutEvents receives it from an SDK (epoch seconds): moto's own targets need a number.
        entry = {
            "Source": source,
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "Resources": resources or [],
            "Time": moment.timestamp(),
        }
        result = {"EventId": "lost"}
        for _ in range(copies):
            [result] = events_backends[account][region].put_events([entry])
            if "EventId" not in result:
                raise RuntimeError(f"PutEvents refused {detail_type}: {result}")
        return {
            "version": "0",
            "id": result["EventId"],
            "detail-type": detail_type,
            "source": source,
            "account": account,
            "time": when,
            "region": region,
            "resources": resources or [],
            "detail": detail,
        }

    def patch(self, target: Any, name: str, value: Any) -> None:
        """Patch (or add) ``target.name`` for the lifetime of this context (used by :mod:`local.agent`)."""
        self._stack.enter_context(mock.patch.object(target, name, value, create=True))

    # --- helpers ---------------------------------------------------------------------------------------

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION)

    def subprocess_env(self) -> dict[str, str]:
        """Environment for processes that reach AWS through the moto server (AWS CLI, trainer)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOSTOP_", "POWERTOOLS_"))}
        env.update(FAKE_ENV)
        env["AWS_ENDPOINT_URL"] = self.endpoint_url
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env


def aws_event_shape(event: dict[str, Any]) -> dict[str, Any]:
    """An event as EventBridge delivers it: ``time`` as ``YYYY-MM-DDTHH:MM:SSZ``, no moto-only fields."""
    out = {k: v for k, v in event.items() if k != "ingestion-time"}
    when = out.get("time")
    if isinstance(when, int | float):
        out["time"] = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(when, datetime):
        out["time"] = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def sdk_json(value: Any) -> Any:
    """An SDK response as a Step Functions ``aws-sdk`` Task returns it: JSON, timestamps as UTC ISO 8601 strings."""
    if isinstance(value, dict):
        return {k: sdk_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sdk_json(v) for v in value]
    if isinstance(value, datetime):
        when = value.astimezone(UTC) if value.tzinfo else value
        fraction = (
            ""
            if not when.microsecond
            else f".{when.microsecond // 1000:03d}"
            if not when.microsecond % 1000
            else f".{when.microsecond:06d}"
        )
        return when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    return value


def _spot_request(instance: Any) -> Any:
    request_id = getattr(instance, "spot_instance_request_id", None)
    if not request_id:
        return None
    return instance.ec2_backend.spot_instance_requests.get(request_id)


def _set_spot_request_state(instance: Any, state: str, code: str) -> None:
    request = _spot_request(instance)
    if request is not None:
        request.state = state
        request._status_code = code
        request.status_message = ""


def _attach_spot_request(backend: Any, instance: Any, spot_type: str, interruption: str) -> None:
    """Record a spot request fulfilled by ``instance`` (moto's own request would launch another instance)."""
    from moto.ec2.models.spot_requests import SpotInstanceRequest
    from moto.ec2.utils import random_spot_request_id

    class Fulfilled(SpotInstanceRequest):
        def launch_instance(self) -> Any:
            return instance

    request = Fulfilled(
        backend,
        random_spot_request_id(),
        price="",
        image_id=instance.image_id,
        spot_instance_type=spot_type,
        valid_from=None,
        valid_until=None,
        launch_group=None,
        availability_zone_group=None,
        key_name=instance.key_name,
        security_groups=[],
        user_data=None,
        instance_type=instance.instance_type,
        placement=instance.placement.zone,
        kernel_id=None,
        ramdisk_id=None,
        monitoring_enabled=False,
        subnet_id=instance.subnet_id,
        tags={},
        spot_fleet_id=None,
        instance_interruption_behaviour=interruption,
    )
    backend.spot_instance_requests[request.id] = request
    instance.spot_instance_request_id = request.id
    instance.lifecycle = "spot"


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
