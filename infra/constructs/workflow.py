"""The lifecycle state machine (Step Functions Standard): Evaluate → Checkpoint → Verify → Stop → Notify.

Every path ends in exactly one outcome Pass state, which writes ``$.result`` ({outcome, reason,
instance_id, run_id, execution, ...}); ``Record outcome`` records it and publishes it (SNS, EventBridge), or
``Notify (fallback)`` publishes it when Record outcome fails; failure outcomes then end in
the ``Failed`` state (error = outcome, cause = reason), the others in ``Done`` (output = ``$.result``).
Only the Stopped / Terminated / Hibernated outcomes change the instance, and the only way into the
Stop instance Task state is through ``Checkpoint verified?`` with ``verified = true``.

Nothing polls. ``Run <what> command`` and ``Stop instance`` are ``.waitForTaskToken`` Task states whose tokens are
completed by events (``lambdas/shared/waiters.py``: SSM's command status change, EC2's stopped state change, the
sweep for a lost event), so a run costs the same transitions whatever its checkpoint's size or its stop's duration:
11 from Evaluate to Done on the stop path, 6 of them up to and including Stop instance. The floor, and why it is
not lower: Evaluate (a Task) and its routing Choice; the command (a Task); Verify (a Task) and ``Checkpoint
verified?``, the Choice kept as the single door into Stop so that the invariant can be read (and proved) in the
definition; Stop instance (a Task) and the Choice that routes its result; the outcome Pass that names the outcome in
the console; Record outcome (a Task); the Choice between Done and Failed; the end state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra.config import AutostopConfig
from infra.nag import acknowledge
from lambdas.shared import constants as c

LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
"""CDK's built-in LambdaInvoke retry is turned off (``retry_on_service_exceptions=False``) so that one
explicit policy applies: these errors plus our own TransientAwsError, 4 attempts, 2 s doubling."""
TRANSIENT_ERROR = "TransientAwsError"
FUNCTION_ENDED = ["Sandbox.Timedout", "Lambda.Unknown"]
"""The function itself ended (timeout, out of memory) before answering: whatever it was doing may have happened."""
STOP_WAIT_SECONDS = 1260
"""How long Stop instance waits for the final state after the call (21 minutes; the sweep confirms a stop whose
event was lost within one schedule period)."""
COMMAND_TIMEOUT = sfn.Timeout.at("$.evaluation.command.wait_seconds")
"""How long a Run command Task state waits for its token: the command's delivery and execution timeouts plus a
minute (``shared.workflow.CheckpointCommand.wait_seconds``); SSM has ended the command by then."""


class LifecycleStateMachine(Construct):
    """Builds the state machine back to front; ``state_machine`` is the L2 construct."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AutostopConfig,
        evaluate: lambda_.IFunction,
        verify: lambda_.IFunction,
        stop: lambda_.IFunction,
        confirm_resume: lambda_.IFunction,
        record: lambda_.IFunction,
        find_command: lambda_.IFunction,
        send_command: lambda_.IFunction,
        topic: sns.ITopic,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._find_command = find_command
        self._send_command = send_command
        self._finish = self._build_finish(record, topic)
        stop_entry = self._build_stop(stop)
        verify_entry = self._build_verify(verify, stop_entry)
        checkpoint_entry = self._build_checkpoint(verify_entry)
        spot_entry = self._build_spot(verify)
        resume_entry = self._build_resume(confirm_resume)
        definition = self._build_evaluate(evaluate, checkpoint_entry, spot_entry, resume_entry)

        budget = config.execution_timeout_seconds
        log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        acknowledge(
            log_group,
            "NIST.800.53.R5-CloudWatchLogGroupEncrypted",
            "CloudWatch Logs encrypts every log group at rest with service keys. A customer managed KMS key would add "
            "a monthly key charge and a key policy for the logs service, for execution histories that hold instance "
            "ids, run ids, paths, command output and outcomes, and no credentials.",
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            comment="autostop: one lifecycle action on one training instance: checkpoint, verify, then stop "
            "(complete); checkpoint, verify, no stop (Spot interruption, rebalance); restore (resume)",
            timeout=Duration.seconds(budget),
            tracing_enabled=config.tracing,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
        )
        if not config.tracing:
            acknowledge(
                self.state_machine,
                "AwsSolutions-SF2",
                "X-Ray tracing is off because the deployment set cdk.json's tracing to false (cold starts without the "
                "X-Ray SDK); every execution's history and its CloudWatch log (level ALL) still show each step.",
            )
        acknowledge(
            self.state_machine.role,
            "NIST.800.53.R5-IAMNoInlinePolicy",
            "The state machine's DefaultPolicy is attached to its own role only and lives and dies with it; "
            "tests/infra/test_least_privilege.py proves its statements. A managed policy adds no control.",
        )

    # --- helpers -------------------------------------------------------------------------------------

    def _lambda(
        self, name: str, fn: lambda_.IFunction, payload: dict[str, Any], result_path: str, *, wait: sfn.Timeout | None = None
    ) -> tasks.LambdaInvoke:
        """A Task state invoking ``fn`` with ``payload``; its result goes to ``result_path``. With ``wait``, a
        ``lambda:invoke.waitForTaskToken`` state instead: the result is what completes its token, within ``wait``."""
        waits = {"integration_pattern": sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN, "task_timeout": wait} if wait else {}
        task = tasks.LambdaInvoke(
            self,
            name,
            lambda_function=fn,
            payload=sfn.TaskInput.from_object(payload),
            payload_response_only=not waits,
            retry_on_service_exceptions=False,
            result_path=result_path,
            **waits,  # type: ignore[arg-type]
        )
        task.add_retry(errors=[*LAMBDA_SERVICE_ERRORS, TRANSIENT_ERROR], interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
        return task

    def _outcome(self, name: str, outcome: str, reason: str, *, known_instance: bool = True, checkpoint: bool = False) -> sfn.Pass:
        """A Pass state that writes ``$.result`` and goes on to Record outcome and Notify.

        ``outcome`` is an outcome name, or a JSONPath (``$.``...) to one. ``reason`` is a JSONPath or
        intrinsic function. ``known_instance`` False is for paths where ``$.evaluation`` does not exist
        (the execution input is then included for the reader).
        """
        result: dict[str, Any] = {"reason.$": reason, "execution.$": "$$.Execution.Name"}
        result["outcome.$" if outcome.startswith("$.") else "outcome"] = outcome
        if known_instance:
            result.update({"instance_id.$": "$.evaluation.instance_id", "run_id.$": "$.evaluation.run_id"})
        else:
            result["input.$"] = "$$.Execution.Input"
        if checkpoint:
            result["manifest_uri.$"] = "$.verification.manifest_uri"
        state = sfn.Pass(self, name, parameters=result, result_path="$.result")
        state.next(self._finish)
        return state

    def _get_invocation(self, name: str) -> tasks.CallAwsService:
        """GetCommandInvocation of ``$.lookup.command_id`` on the instance, its status and output into ``$.invocation``."""
        return tasks.CallAwsService(
            self,
            name,
            service="ssm",
            action="getCommandInvocation",
            iam_resources=["*"],  # GetCommandInvocation has no resource-level permissions
            parameters={"CommandId.$": "$.lookup.command_id", "InstanceId.$": "$.evaluation.instance_id"},
            result_selector={
                "Status.$": "$.Status",
                "StatusDetails.$": "$.StatusDetails",
                "ResponseCode.$": "$.ResponseCode",
                "StandardOutputContent.$": "$.StandardOutputContent",
                "StandardErrorContent.$": "$.StandardErrorContent",
            },
            result_path="$.invocation",
        )

    @staticmethod
    def _retry_read_only(task: sfn.TaskStateBase) -> None:
        """A read-only AWS call may be retried on any failure: repeating it changes nothing."""
        task.add_retry(errors=["States.TaskFailed"], interval=Duration.seconds(5), max_attempts=5, backoff_rate=2)

    def _on_error(self, task: sfn.TaskStateBase, name: str, outcome: str, what: str, **outcome_options: bool) -> None:
        """Catch every error of ``task`` (after its retries) into the outcome Pass ``name``; the reason is
        ``"<what>: <the error's cause>"`` and the error object is kept at ``$.error``."""
        reason = f"States.Format('{what}: {{}}', $.error.Cause)"
        task.add_catch(self._outcome(name, outcome, reason, **outcome_options), errors=["States.ALL"], result_path="$.error")

    def _poll_loop(
        self,
        label: str,
        wait_name: str,
        task: sfn.TaskStateBase,
        until: Callable[[sfn.Wait, str], sfn.Choice],
        *,
        interval: int | None = None,
    ) -> sfn.Chain:
        """``Start <label> polls`` → Wait (``interval`` s, default the config's) → ``task`` → ``Count <label> polls``
        → the Choice ``until(wait, counter)`` builds; the counter (``$.<label>_polls.n``) lets that Choice bound the loop."""
        counter = f"$.{label.replace(' ', '_')}_polls"
        start = sfn.Pass(self, f"Start {label} polls", result=sfn.Result.from_object({"n": 0}), result_path=counter)
        seconds = interval or self._config.poll_interval_seconds
        wait = sfn.Wait(self, wait_name, time=sfn.WaitTime.duration(Duration.seconds(seconds)))
        count = sfn.Pass(self, f"Count {label} polls", parameters={"n.$": f"States.MathAdd({counter}.n, 1)"}, result_path=counter)
        return start.next(wait).next(task).next(count).next(until(wait, counter))

    # --- the end: Record outcome, Notify, then Failed or Done -----------------------------------------------

    def _build_finish(self, record: lambda_.IFunction, topic: sns.ITopic) -> sfn.IChainable:
        """Record outcome (run record, tags, the readable notification, the ``autostop`` event; its output is the new
        ``$.result``), then Failed or Done. Only when Record outcome fails does the fallback Notify publish the raw
        ``$.result``: an outcome is never left unannounced, and never announced twice by the state machine."""
        verdict = (
            sfn.Choice(self, "Outcome is a failure?")
            .when(
                sfn.Condition.or_(*[sfn.Condition.string_equals("$.result.outcome", o) for o in sorted(c.FAILED_OUTCOMES)]),
                sfn.Fail(self, "Failed", error_path="$.result.outcome", cause_path="$.result.reason"),
            )
            .otherwise(sfn.Succeed(self, "Done", output_path="$.result"))
        )
        fallback = tasks.SnsPublish(
            self,
            "Notify (fallback)",
            topic=topic,
            # outcome names are short: the subject stays within SNS's 100 characters (an execution name would not)
            subject=sfn.JsonPath.format("autostop {} (fallback notification)", sfn.JsonPath.string_at("$.result.outcome")),
            message=sfn.TaskInput.from_json_path_at("$.result"),
            message_attributes={"outcome": tasks.MessageAttribute(value=sfn.JsonPath.string_at("$.result.outcome"))},
            result_path=sfn.JsonPath.DISCARD,
        )
        fallback.add_retry(errors=["States.TaskFailed"], interval=Duration.seconds(2), max_attempts=3, backoff_rate=2)
        # A notification that cannot be published must not change the outcome.
        fallback.add_catch(verdict, errors=["States.ALL"], result_path="$.notify_error")
        fallback.next(verdict)
        payload = {
            "state.$": "$",
            "execution_name.$": "$$.Execution.Name",
            "execution_arn.$": "$$.Execution.Id",
            "started_at.$": "$$.Execution.StartTime",
        }
        recorder = self._lambda("Record outcome", record, payload, "$.result")
        recorder.add_catch(fallback, errors=["States.ALL"], result_path="$.record_error")
        recorder.next(verdict)
        return recorder

    # --- Evaluate -----------------------------------------------------------------------------------------

    def _build_evaluate(
        self, evaluate: lambda_.IFunction, on_complete: sfn.IChainable, on_spot: sfn.IChainable, on_resume: sfn.IChainable
    ) -> sfn.IChainable:
        task = self._lambda("Evaluate completion", evaluate, {"input.$": "$", "execution_name.$": "$$.Execution.Name"}, "$.evaluation")
        self._on_error(task, "Evaluation failed", c.OUTCOME_INCONCLUSIVE, "Evaluate completion failed", known_instance=False)
        decision = "$.evaluation.decision"
        route = (
            sfn.Choice(self, "Run complete?")
            .when(sfn.Condition.string_equals(decision, "complete"), on_complete)
            .when(sfn.Condition.string_equals(decision, "spot_checkpoint"), on_spot)
            .when(sfn.Condition.string_equals(decision, "resume"), on_resume)
            .when(
                sfn.Condition.string_equals(decision, "not_complete"),
                self._outcome("Not complete", c.OUTCOME_NOT_COMPLETE, "$.evaluation.reason"),
            )
            .when(
                sfn.Condition.string_equals(decision, "skipped"),
                self._outcome("Skipped", c.OUTCOME_SKIPPED, "$.evaluation.reason"),
            )
            .when(
                sfn.Condition.string_equals(decision, "refused"),
                self._outcome("Action not possible", "$.evaluation.outcome", "$.evaluation.reason"),
            )
            .otherwise(self._outcome("Inconclusive", c.OUTCOME_INCONCLUSIVE, "$.evaluation.reason"))
        )
        return task.next(route)

    # --- Commands: record the task token, SendCommand, wait for SSM's status-change event ------------------------

    def _send_and_wait(self, what: str, on_finished: sfn.IChainable, *, failed_outcome: str, timeout: sfn.Timeout) -> sfn.IChainable:
        """``Run <what> command``: the Send command Lambda records this Task state's token and sends the command
        (document and parameters from ``$.evaluation.command``); the execution waits, with no polling, until the
        command's end completes the token with its invocation (``$.invocation``), then ``on_finished``.

        SSM refused the command: the failure outcome. An ambiguous SendCommand failure, or no completion within
        ``timeout`` (the status event and the sweep's fallback both lost): ``Find <what> command`` by its comment
        (never re-sent), ``Follow <what> command`` (waits for it, completed at once if it has ended), and after a
        second timeout one last GetCommandInvocation before ``on_finished`` judges it."""
        run = self._wait_for_token(f"Run {what} command", self._send_command, {}, "$.invocation", timeout)
        run.add_catch(
            self._outcome(
                f"{what.capitalize()} command not sent", failed_outcome, "States.Format('SendCommand failed: {}', $.error.Cause)"
            ),
            errors=["CommandNotSent"],
            result_path="$.error",
        )
        find = self._lambda(
            f"Find {what} command",
            self._find_command,
            {"evaluation.$": "$.evaluation", "error.$": "$.error", "execution_name.$": "$$.Execution.Name"},
            "$.lookup",
        )
        # Also the function's own end (Sandbox.Timedout, Lambda.Unknown): it may have sent the command. Find never re-sends.
        run.add_catch(find, errors=["CommandOutcomeUnknown", "States.Timeout", *FUNCTION_ENDED], result_path="$.error")
        self._on_error(run, f"{what.capitalize()} status unknown", failed_outcome, f"the end of the {what} command is not known")
        self._on_error(
            find, f"{what.capitalize()} command lookup failed", failed_outcome, "SendCommand failed and the command lookup failed"
        )
        follow = self._wait_for_token(
            f"Follow {what} command", self._send_command, {"command_id.$": "$.lookup.command_id"}, "$.invocation", timeout
        )
        last_get = self._get_invocation(f"Get {what} command invocation once more")
        self._retry_read_only(last_get)
        self._on_error(
            last_get,
            f"{what.capitalize()} status unknown at the end",
            failed_outcome,
            f"GetCommandInvocation failed, so the {what} is not known to be done",
        )
        follow.add_catch(last_get, errors=["States.Timeout"], result_path="$.error")
        self._on_error(follow, f"{what.capitalize()} not followed", failed_outcome, f"the end of the {what} command is not known")
        last_get.next(on_finished)
        follow.next(on_finished)
        found = (
            sfn.Choice(self, f"{what.capitalize()} command found?")
            .when(sfn.Condition.boolean_equals("$.lookup.found", True), follow)
            .otherwise(self._outcome(f"{what.capitalize()} command not found", failed_outcome, "$.lookup.reason"))
        )
        find.next(found)
        return run.next(on_finished)

    def _wait_for_token(
        self, name: str, fn: lambda_.IFunction, extra: dict[str, Any], result_path: str, timeout: sfn.Timeout
    ) -> tasks.LambdaInvoke:
        """A ``lambda:invoke.waitForTaskToken`` Task state: ``fn`` gets the evaluation, the execution's name and the
        token (plus ``extra``); the state's result is what completes the token."""
        payload = {"evaluation.$": "$.evaluation", "execution_name.$": "$$.Execution.Name", "task_token": sfn.JsonPath.task_token}
        return self._lambda(name, fn, {**payload, **extra}, result_path, wait=timeout)

    def _build_checkpoint(self, on_finished: sfn.IChainable) -> sfn.IChainable:
        return self._send_and_wait("checkpoint", on_finished, failed_outcome=c.OUTCOME_CHECKPOINT_FAILED, timeout=COMMAND_TIMEOUT)

    # --- Spot interruption / rebalance: checkpoint now, verify, never stop ---------------------------------------

    def _build_spot(self, verify: lambda_.IFunction) -> sfn.IChainable:
        failed = c.OUTCOME_SPOT_CHECKPOINT_FAILED
        task = self._lambda(
            "Verify emergency checkpoint",
            verify,
            {"evaluation.$": "$.evaluation", "invocation.$": "$.invocation", "execution_name.$": "$$.Execution.Name"},
            "$.verification",
        )
        self._on_error(task, "Emergency verification error", failed, "Verify checkpoint failed")
        route = (
            sfn.Choice(self, "Emergency checkpoint verified?")
            .when(
                sfn.Condition.boolean_equals("$.verification.verified", True),
                self._outcome("Spot checkpoint saved", c.OUTCOME_SPOT_CHECKPOINT_SAVED, "$.verification.reason", checkpoint=True),
            )
            .otherwise(self._outcome("Spot checkpoint failed", failed, "$.verification.reason", checkpoint=True))
        )
        return self._send_and_wait("emergency checkpoint", task.next(route), failed_outcome=failed, timeout=COMMAND_TIMEOUT)

    # --- Resume: wait for the SSM agent, restore the last verified checkpoint, start the trainer -----------------

    def _build_resume(self, confirm: lambda_.IFunction) -> sfn.IChainable:
        failed = c.OUTCOME_RESUME_FAILED
        task = self._lambda("Confirm resume", confirm, {"evaluation.$": "$.evaluation", "invocation.$": "$.invocation"}, "$.resume")
        self._on_error(task, "Resume confirmation error", failed, "Confirm resume failed")
        judged = (
            sfn.Choice(self, "Resumed?")
            .when(sfn.Condition.boolean_equals("$.resume.resumed", True), self._outcome("Resumed", c.OUTCOME_RESUMED, "$.resume.reason"))
            .otherwise(self._outcome("Resume failed", failed, "$.resume.reason"))
        )
        restore = self._send_and_wait("restore", task.next(judged), failed_outcome=failed, timeout=COMMAND_TIMEOUT)
        describe = tasks.CallAwsService(
            self,
            "Describe SSM agent",
            service="ssm",
            action="describeInstanceInformation",
            iam_resources=["*"],  # DescribeInstanceInformation has no resource-level permissions
            # Only an Online agent is listed, so "online" is "the list has an element" (IsPresent on [0]).
            parameters={
                "Filters": [
                    {"Key": "InstanceIds", "Values.$": "States.Array($.evaluation.instance_id)"},
                    {"Key": "PingStatus", "Values": ["Online"]},
                ]
            },
            result_selector={"online.$": "$.InstanceInformationList"},
            result_path="$.agent",
        )
        self._retry_read_only(describe)
        self._on_error(describe, "Agent status unknown", failed, "DescribeInstanceInformation failed")

        def online(wait: sfn.Wait, counter: str) -> sfn.Choice:
            keep_waiting = (
                sfn.Choice(self, "Keep waiting for the agent?")
                .when(sfn.Condition.number_less_than_json_path(f"{counter}.n", "$.evaluation.poll_limit"), wait)
                .otherwise(
                    self._outcome(
                        "Agent not online",
                        failed,
                        f"States.Format('the SSM agent did not come online after {{}} checks {c.SPOT_POLL_SECONDS} s apart; "
                        f"nothing was restored and the instance keeps running', {counter}.n)",
                    )
                )
            )
            return sfn.Choice(self, "Agent online?").when(sfn.Condition.is_present("$.agent.online[0]"), restore).otherwise(keep_waiting)

        return self._poll_loop("agent", "Wait for SSM agent", describe, online, interval=c.SPOT_POLL_SECONDS)

    # --- Verify -----------------------------------------------------------------------------------------------

    def _build_verify(self, verify: lambda_.IFunction, on_verified: sfn.IChainable) -> sfn.IChainable:
        task = self._lambda(
            "Verify checkpoint",
            verify,
            {"evaluation.$": "$.evaluation", "invocation.$": "$.invocation", "execution_name.$": "$$.Execution.Name"},
            "$.verification",
        )
        self._on_error(task, "Verification error", c.OUTCOME_UPLOAD_UNVERIFIED, "Verify checkpoint failed")
        route = (
            sfn.Choice(self, "Checkpoint verified?")
            .when(sfn.Condition.boolean_equals("$.verification.verified", True), on_verified)
            .when(
                sfn.Condition.string_equals("$.verification.outcome", c.OUTCOME_CHECKPOINT_FAILED),
                self._outcome("Checkpoint failed", c.OUTCOME_CHECKPOINT_FAILED, "$.verification.reason"),
            )
            .otherwise(self._outcome("Upload unverified", c.OUTCOME_UPLOAD_UNVERIFIED, "$.verification.reason", checkpoint=True))
        )
        return task.next(route)

    # --- Stop: guard + StopInstances/TerminateInstances, then wait for the final state ---------------------------

    def _build_stop(self, stop: lambda_.IFunction) -> sfn.IChainable:
        """``Stop instance`` (token): the guard, the stop mark and the call; its result comes back at once when no
        call was made, else with the state the instance reached (EC2's state-change event, or the sweep). One
        Choice routes every result: the action's outcome, started again, dry run, the guard's skip, a refusal."""
        task = self._wait_for_token(
            "Stop instance", stop, {"verification.$": "$.verification"}, "$.stop", sfn.Timeout.duration(Duration.seconds(STOP_WAIT_SECONDS))
        )
        # The function timing out may follow an accepted call: run it again (the guard and the stop mark make that safe).
        task.add_retry(errors=FUNCTION_ENDED, interval=Duration.seconds(5), max_attempts=2, backoff_rate=2)
        self._on_error(task, "Stop error", c.OUTCOME_STOP_FAILED, "Stop instance failed or its final state was not seen")
        called = sfn.Condition.boolean_equals("$.stop.called", True)
        reached = sfn.Condition.and_(called, sfn.Condition.string_equals_json_path("$.stop.state", "$.stop.expected_state"))
        route = sfn.Choice(self, "Instance stopped?")
        for outcome in (c.OUTCOME_STOPPED, c.OUTCOME_HIBERNATED, c.OUTCOME_TERMINATED):
            route.when(
                sfn.Condition.and_(reached, sfn.Condition.string_equals("$.stop.outcome", outcome)),
                self._outcome(outcome, outcome, "$.stop.reason", checkpoint=True),
            )
        # Started again while we waited (a new LaunchTime: a new session): our call was accepted and the instance
        # stopped; the new session resumes (the run record's stop mark made this one resumable before the call).
        restarted = sfn.Condition.and_(
            called,
            sfn.Condition.or_(*[sfn.Condition.string_equals("$.stop.state", st) for st in ("pending", "running")]),
            sfn.Condition.is_timestamp("$.stop.launch_time"),
            sfn.Condition.is_timestamp("$.evaluation.session"),
            sfn.Condition.not_(sfn.Condition.timestamp_equals_json_path("$.stop.launch_time", "$.evaluation.session")),
            sfn.Condition.not_(sfn.Condition.string_equals("$.stop.expected_state", "terminated")),
        )
        route.when(
            restarted,
            self._outcome(
                "Started again after the stop",
                "$.stop.outcome",
                "States.Format('{}; the instance was then started again (LaunchTime {}), a new session that resumes from this "
                "checkpoint', $.stop.reason, $.stop.launch_time)",
                checkpoint=True,
            ),
        )
        route.when(
            called,
            self._outcome(
                "Final state not reached",
                c.OUTCOME_STOP_FAILED,
                "States.Format('instance is {} after the stop call; expected {}', $.stop.state, $.stop.expected_state)",
                checkpoint=True,
            ),
        )
        route.when(
            sfn.Condition.string_equals("$.stop.outcome", c.OUTCOME_DRY_RUN),
            self._outcome("Dry run", c.OUTCOME_DRY_RUN, "$.stop.reason", checkpoint=True),
        )
        route.when(
            sfn.Condition.string_equals("$.stop.outcome", c.OUTCOME_SKIPPED),
            self._outcome("Skipped by guard", c.OUTCOME_SKIPPED, "$.stop.reason", checkpoint=True),
        )
        route.otherwise(self._outcome("Stop refused", c.OUTCOME_STOP_FAILED, "$.stop.reason", checkpoint=True))
        return task.next(route)
