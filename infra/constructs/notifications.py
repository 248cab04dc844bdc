"""The SNS topic every outcome goes to (message attribute ``outcome`` for filtering), and its KMS key.

The topic is encrypted with a customer managed key because CloudWatch alarm actions cannot publish to a topic
encrypted with the AWS managed key ``alias/aws/sns`` (its key policy cannot grant the CloudWatch service principal;
"Enable compatibility between event sources from AWS services and encrypted topics" in the SNS developer guide).
The key's policy lets CloudWatch alarms of this account and region use it, and nothing else outside the account's
IAM; it costs USD 1 per month (README, cost).
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class OutcomeNotifications(Construct):
    """``topic`` (SNS, SSE with ``key``) and the e-mail subscriptions of ``emails``."""

    def __init__(self, scope: Construct, construct_id: str, *, emails: tuple[str, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "TopicKey",
            description="autostop: encrypts the outcome topic (CloudWatch alarms may use it to publish)",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(7),
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"},
                },
            )
        )
        self.topic = sns.Topic(self, "Outcomes", display_name="autostop outcomes", enforce_ssl=True, master_key=self.key)
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        """sns:Publish on the topic and the two KMS actions SNS needs for it (``kms:GenerateDataKey``, ``kms:Decrypt``),
        named exactly instead of CDK's ``kms:GenerateDataKey*``."""
        iam.Grant.add_to_principal(grantee=grantee, actions=["sns:Publish"], resource_arns=[self.topic.topic_arn])
        self.key.grant(grantee, "kms:Decrypt", "kms:GenerateDataKey")
