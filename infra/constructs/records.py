"""The run records table (DynamoDB): one item per (instance, run, session); see ``lambdas/shared/records.py``."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from infra.nag import acknowledge
from lambdas.shared import constants as c


class RunRecordsTable(Construct):
    """On-demand capacity, point-in-time recovery, encrypted with an AWS managed KMS key, kept on stack deletion
    (the records say which checkpoint each run can be resumed from)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Runs",
            partition_key=dynamodb.Attribute(name=c.RECORDS_PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=c.RECORDS_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            removal_policy=RemovalPolicy.RETAIN,
            time_to_live_attribute="expires",  # waiters of executions (shared/waiters.py) go after three days
        )
        acknowledge(
            self.table,
            "NIST.800.53.R5-DynamoDBInBackupPlan",
            "Point-in-time recovery (35 days, to the second) is on, which covers what a backup plan would restore; "
            "an AWS Backup vault and plan are an account-level choice with their own cost, left to the user's "
            "organisation.",
        )
