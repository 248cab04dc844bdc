"""The checkpoint bucket, its access-log bucket, and the policy training instances need to write to it."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import AutostopConfig
from infra.nag import acknowledge

RUNS_PREFIX = "runs/"


class CheckpointStorage(Construct):
    """Checkpoint bucket: S3-managed encryption, public access blocked, SSL only, versioned (an overwritten
    checkpoint can be recovered for 30 days), EventBridge notifications on (completion markers), access logs.

    With ``checkpoint_bucket`` set to an existing bucket, that bucket is used as is: turn on its
    EventBridge notifications yourself, or markers are only found by the schedule sweep.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: AutostopConfig) -> None:
        super().__init__(scope, construct_id)
        self.created = config.checkpoint_bucket == "create"
        if self.created:
            access_logs = s3.Bucket(
                self,
                "AccessLogs",
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                # Versioned, so a deleted or overwritten log stays recoverable for 30 days (NIST 800-53 AU-9).
                versioned=True,
                lifecycle_rules=[
                    s3.LifecycleRule(expiration=Duration.days(365), noncurrent_version_expiration=Duration.days(30)),
                    s3.LifecycleRule(expired_object_delete_marker=True),
                ],
                removal_policy=RemovalPolicy.RETAIN,
            )
            acknowledge(
                access_logs,
                "AwsSolutions-S1",
                "This is the access-log bucket of the checkpoint bucket; logging it to itself would loop.",
            )
            acknowledge(
                access_logs,
                "NIST.800.53.R5-S3DefaultEncryptionKMS",
                "S3 server access logging delivers only to target buckets encrypted with SSE-S3 (SSE-KMS targets are "
                "not supported), so this bucket keeps S3-managed AES-256 encryption.",
            )
            acknowledge(
                access_logs,
                "NIST.800.53.R5-S3BucketReplicationEnabled",
                "Access logs of the checkpoint bucket, versioned and kept 365 days; a replica would need a second bucket "
                "in another region at the user's cost. Users who must keep a copy elsewhere can add replication.",
            )
            self.bucket: s3.IBucket = s3.Bucket(
                self,
                "Checkpoints",
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                versioned=True,
                event_bridge_enabled=True,
                server_access_logs_bucket=access_logs,
                server_access_logs_prefix="checkpoints/",
                lifecycle_rules=[
                    s3.LifecycleRule(
                        noncurrent_version_expiration=Duration.days(30),
                        abort_incomplete_multipart_upload_after=Duration.days(7),
                    )
                ],
                removal_policy=RemovalPolicy.RETAIN,
            )
            acknowledge(
                self.bucket,
                "NIST.800.53.R5-S3DefaultEncryptionKMS",
                "SSE-S3 (AES-256) encrypts every checkpoint at rest. SSE-KMS would add kms:GenerateDataKey/Decrypt to "
                "the instance role and every reader, a customer managed key's monthly charge and key policy, or with "
                "the AWS managed aws/s3 key no way to let another account read (restore) checkpoints.",
            )
            acknowledge(
                self.bucket,
                "NIST.800.53.R5-S3BucketReplicationEnabled",
                "Replication needs a second bucket in another region and doubles the storage of multi-GB checkpoints; "
                "versioning keeps overwritten or deleted checkpoints for 30 days. Users who need a copy elsewhere can "
                "add replication to this bucket.",
            )
            acknowledge(
                self.bucket,
                "NIST.800.53.R5-IAMNoInlinePolicy",
                "CDK's own BucketNotificationsHandler policy (s3:PutBucketNotification on this bucket only), attached to "
                "that handler's role only; it turns on EventBridge notifications at deploy time.",
            )
        else:
            self.bucket = s3.Bucket.from_bucket_name(self, "Checkpoints", config.checkpoint_bucket)

        self.instance_policy = iam.ManagedPolicy(
            self,
            "InstancePolicy",
            description="Attach to the instance role of opted-in training instances: lets the checkpoint document "
            "upload checkpoints and manifests and read them back for resume.",
            statements=[
                iam.PolicyStatement(
                    sid="WriteAndReadCheckpoints",
                    actions=["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                    resources=[self.bucket.arn_for_objects("*")],
                ),
            ],
        )
