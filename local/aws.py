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
import sys
import threading
import traceback
import types
import uuid
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

    def invoke(self, handler: str, event: Any, function_name: str, function_arn: str) -> tuple[Any, bool]:
        """Import ``module.function`` from ``lambdas/`` and call it; returns (result, errored)."""
        module_name, func_name = handler.rsplit(".", 1)
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
        self._patch_events()
        self._patch_time()
        self._patch_ec2()
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

    def _patch_events(self) -> None:
        from moto.awslambda.models import lambda_backends
        from moto.events.models import Rule
        from moto.utilities.arns import parse_arn

        original = Rule.send_to_targets
        invocations = self.lambdas

        def send_to_targets(rule: Any, event: dict[str, Any], transform_input: bool = True) -> None:
            moto_event = event
            event = aws_event_shape(event)
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

        Used for the events AWS services emit (``aws.*`` sources). Returns the event as rules see it.
        """
        from moto.events.models import events_backends

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
