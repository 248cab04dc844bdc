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
        for fn in (sweep, on_marker, on_instance):
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
