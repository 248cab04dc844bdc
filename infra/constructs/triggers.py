"""EventBridge rules that start work: the schedule sweep, S3 Object Created (completion markers), Spot
interruption warnings and rebalance recommendations, and instances entering the running state."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.nag import acknowledge
from lambdas.shared import constants as c

EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"
COMMAND_INVOCATION_STATUS_CHANGE = "EC2 Command Invocation Status-change Notification"
STILL_RUNNING = ("Pending", "InProgress", "Delayed", "Cancelling")
"""Invocation statuses of a command that has not ended (shared/waiters.py STILL_RUNNING)."""
LAST_ATTEMPT = 20
"""shared/executions.py MAX_ATTEMPTS (tests/infra/test_stack.py checks they agree)."""


class Triggers(Construct):
    """``Schedule`` runs the sweep every ``schedule_minutes``; ``MarkerCreated`` sends Object Created events of
    keys ending in ``_SUCCESS`` in the checkpoint bucket to the marker function. Events that cannot be
    delivered after retries, and invocations of the three functions that still fail after Lambda's own
    retries, go to the ``Undelivered`` queue (kept 14 days)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        schedule_minutes: int,
        sweep: lambda_.IFunction,
        on_marker: lambda_.IFunction,
        on_instance: lambda_.IFunction,
        bucket: s3.IBucket,
        on_execution_ended: lambda_.IFunction | None = None,
        state_machine_arn: str | None = None,
        on_status: lambda_.IFunction | None = None,
        command_documents: list[str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.undelivered = sqs.Queue(
            self,
            "Undelivered",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        acknowledge(
            self.undelivered,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of the EventBridge targets; it needs no DLQ of its own.",
        )
        delivery = {"dead_letter_queue": self.undelivered, "retry_attempts": 4, "max_event_age": Duration.hours(2)}
        for fn in (sweep, on_marker, on_instance, *[f for f in (on_execution_ended, on_status) if f is not None]):
            # EventBridge invokes asynchronously: an invocation that fails after Lambda's retries is kept, not lost.
            fn.configure_async_invoke(on_failure=destinations.SqsDestination(self.undelivered))
            acknowledge(
                fn,
                "NIST.800.53.R5-LambdaDLQ",
                "Failed asynchronous invocations go to the Undelivered queue through an on-failure destination "
                "(AWS::Lambda::EventInvokeConfig), which records the event and the error; a DeadLetterConfig would "
                "only duplicate it.",
            )
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="autostop sweep over opted-in running instances",
            schedule=events.Schedule.rate(Duration.minutes(schedule_minutes)),
            targets=[targets.LambdaFunction(sweep, **delivery)],
        )
        self.marker_created = events.Rule(
            self,
            "MarkerCreated",
            description="autostop: a completion marker landed in the checkpoint bucket",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [bucket.bucket_name]},
                    "object": {"key": events.Match.suffix(c.DEFAULT_MARKER_NAME)},
                },
            ),
            targets=[targets.LambdaFunction(on_marker, **delivery)],
        )
        # Only the warning and the recommendation: our own stop's state changes must never look like one.
        self.spot = events.Rule(
            self,
            "SpotEvents",
            description="autostop: Spot interruption warnings and rebalance recommendations",
            event_pattern=events.EventPattern(source=["aws.ec2"], detail_type=[c.SPOT_WARNING, c.REBALANCE_RECOMMENDATION]),
            targets=[targets.LambdaFunction(on_instance, **delivery)],
        )
        self.started = events.Rule(
            self,
            "InstanceStarted",
            description="autostop: an instance entered the running state (resume after a stop)",
            event_pattern=events.EventPattern(source=["aws.ec2"], detail_type=[c.STATE_CHANGE], detail={"state": ["running"]}),
            targets=[targets.LambdaFunction(on_instance, **delivery)],
        )
        if on_status is not None:
            self._status_rules(on_status, command_documents or [], delivery)
        if on_execution_ended is not None and state_machine_arn is not None:
            # Executions that end without their own Notify: the state machine's timeout, StopExecution, a failure
            # no Catch handles (the Lambda ignores FAILED executions whose error is one of the failure outcomes:
            # those were notified). Step Functions sends these events to the default bus on a best-effort basis.
            self.execution_ended = events.Rule(
                self,
                "ExecutionEnded",
                description="autostop: a lifecycle execution timed out, was aborted or failed",
                event_pattern=events.EventPattern(
                    source=["aws.states"],
                    detail_type=[EXECUTION_STATUS_CHANGE],
                    detail={"stateMachineArn": [state_machine_arn], "status": ["TIMED_OUT", "ABORTED", "FAILED"]},
                ),
                targets=[targets.LambdaFunction(on_execution_ended, **delivery)],
            )
            # The last attempt a trigger may start (shared/executions.py MAX_ATTEMPTS, named ...-<MAX_ATTEMPTS>) ended
            # before anything was done: no trigger starts another one, so say so.
            self.attempts_exhausted = events.Rule(
                self,
                "LastAttemptEnded",
                description="autostop: the last attempt of a run ended; the Lambda notifies when it did nothing",
                event_pattern=events.EventPattern(
                    source=["aws.states"],
                    detail_type=[EXECUTION_STATUS_CHANGE],
                    detail={
                        "stateMachineArn": [state_machine_arn],
                        "status": ["SUCCEEDED"],
                        "name": events.Match.suffix(f"-{LAST_ATTEMPT}"),
                    },
                ),
                targets=[targets.LambdaFunction(on_execution_ended, **delivery)],
            )

    def _status_rules(self, on_status: lambda_.IFunction, documents: list[str], delivery: dict[str, object]) -> None:
        """The events that complete waiting executions (shared/waiters.py): the end of a command of autostop's own
        checkpoint and restore documents ("Amazon EventBridge events for Systems Manager": SSM sends Run Command
        status changes directly to EventBridge, best effort), and instances reaching stopped or terminated."""
        self.command_ended = events.Rule(
            self,
            "CommandEnded",
            description="autostop: a checkpoint or restore command ended on an instance",
            event_pattern=events.EventPattern(
                source=["aws.ssm"],
                detail_type=[COMMAND_INVOCATION_STATUS_CHANGE],
                detail={"document-name": documents, "status": events.Match.anything_but(*STILL_RUNNING)},
            ),
            targets=[targets.LambdaFunction(on_status, **delivery)],  # type: ignore[arg-type]
        )
        self.instance_stopped = events.Rule(
            self,
            "InstanceStopped",
            description="autostop: an instance reached stopped or terminated (confirms autostop's own stop)",
            event_pattern=events.EventPattern(
                source=["aws.ec2"], detail_type=[c.STATE_CHANGE], detail={"state": ["stopped", "terminated"]}
            ),
            targets=[targets.LambdaFunction(on_status, **delivery)],  # type: ignore[arg-type]
        )
