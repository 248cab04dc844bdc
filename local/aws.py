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
* EC2 stop/terminate: the instance's processes end and its agent goes offline, as on a real machine.
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
            if others:
                saved = rule.targets
                rule.targets = others
                try:
                    original(rule, event, transform_input)
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
        from moto.ec2.models.instances import InstanceBackend

        listeners = self.on_instances_stopped
        original_stop = InstanceBackend.stop_instances
        original_terminate = InstanceBackend.terminate_instances

        def notify(ids: list[str]) -> None:
            for listener in listeners:
                listener(list(ids))

        def stop_instances(backend: Any, instance_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            result = original_stop(backend, instance_ids, *args, **kwargs)
            notify(instance_ids)
            return result

        def terminate_instances(backend: Any, instance_ids: list[str], *args: Any, **kwargs: Any) -> Any:
            result = original_terminate(backend, instance_ids, *args, **kwargs)
            notify(instance_ids)
            return result

        self._stack.enter_context(mock.patch.object(InstanceBackend, "stop_instances", stop_instances))
        self._stack.enter_context(mock.patch.object(InstanceBackend, "terminate_instances", terminate_instances))

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


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
