"""The SNS topic every execution publishes its outcome to (message attribute ``outcome`` for filtering)."""

from __future__ import annotations

from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class OutcomeNotifications(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, emails: tuple[str, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self,
            "Outcomes",
            display_name="autostop outcomes",
            enforce_ssl=True,
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
        )
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
