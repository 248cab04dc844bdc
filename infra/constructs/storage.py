"""The checkpoint bucket, its access-log bucket, and the policies that let training instances and external
pipelines write to it: each instance only under a prefix bound to its own identity, pipelines only markers.

Why ``instances/${ec2:SourceInstanceARN}/*`` names exactly one instance's objects (IAM User Guide, "IAM policy
elements: Variables and tags", https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html):

* "You can use a policy variable in the ``Resource`` element, but only in the resource portion of the ARN. This
  portion of the ARN appears after the fifth colon (:)." The variable sits in the S3 key part, after ``:::``.
* Section "Request information that you can use for policy variables" lists ``ec2:SourceInstanceARN``: "This is
  the Amazon Resource Name (ARN) of the Amazon EC2 instance from which the request is made. This key is present
  only when the request comes from an Amazon EC2 instance using an IAM role associated with an EC2 instance
  profile." (awsdocs/iam-user-guide, doc_source/reference_policies_variables.md)
* Section "Policy variables with no value": "If a variable that has no value in the authorization context is used
  as part of the ``Resource`` or ``NotResource`` element of a policy, the resource that includes a policy variable
  with no value will not match any resource." So credentials that are not an instance profile's (a user, another
  role, a session assumed from the instance role by ``AssumeRole``) match nothing here. No default value
  (``${ec2:SourceInstanceARN, '...'}``) and no ``...IfExists`` operator may widen that; the statement also
  requires the key (``Null`` = false), which says the same thing twice.
* EC2 User Guide, "Condition keys for Amazon EC2" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/
  iam-policies-for-amazon-ec2.html): "Use ec2:SourceInstanceARN to specify the ARN of the instance from which a
  request is made. This is an AWS global condition key, which means that you can use it with services other than
  Amazon EC2."
* The IAM page's table "Principal key values" gives, for a "Role assigned to an Amazon EC2 instance",
  ``aws:userid`` = ``role-id:ec2-instance-id``: the documented alternative, should ``ec2:SourceInstanceARN`` ever
  not resolve in an S3 request (``instances/${aws:userid}/*`` binds the prefix to role and instance).

The value is ``arn:<partition>:ec2:<region>:<account>:instance/<instance-id>``: keys under it contain ``:``, which
S3 allows (one of the characters its key naming guide says "might require special handling").
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import AutostopConfig
from infra.nag import acknowledge

INSTANCES_PREFIX = "instances/"
"""Every key an instance writes or reads: ``instances/<its instance ARN>/...``."""
SOURCE_INSTANCE_ARN = "${ec2:SourceInstanceARN}"
"""The IAM policy variable the instance policy's Resource is bound to (see the module docstring)."""
INSTANCE_OBJECTS = f"{INSTANCES_PREFIX}{SOURCE_INSTANCE_ARN}/*"
INSTANCE_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
"""Upload (PutObject also authorizes Create/UploadPart/CompleteMultipartUpload), read back for a restore (GetObject,
and GetObjectVersion: the restore reads the verified versions only), abort or list its own multipart uploads.
No ListBucket, no delete, nothing on the bucket itself."""
MARKERS_PREFIX = "markers/"
"""Completion markers written by pipelines outside the instance: ``markers/<run-id>/_SUCCESS``."""


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
            description="Attach to the instance role of opted-in training instances: each instance may upload and read "
            "back objects only under instances/<its own instance ARN>/ of the checkpoint bucket.",
            statements=[
                iam.PolicyStatement(
                    sid="OwnPrefixOnly",
                    actions=INSTANCE_ACTIONS,
                    resources=[self.bucket.arn_for_objects(INSTANCE_OBJECTS)],
                    # Present only in requests signed with an instance profile's credentials; without it the
                    # Resource above already matches nothing ("Policy variables with no value").
                    conditions={"Null": {"ec2:SourceInstanceARN": "false"}},
                ),
            ],
        )
        self.pipeline_marker_policy = iam.ManagedPolicy(
            self,
            "PipelineMarkerPolicy",
            description="Attach to the role of a pipeline outside the training instance that signals completion: it may "
            "put objects under markers/ of the checkpoint bucket (tag autostop:completion-marker = "
            "s3://<bucket>/markers/<run-id>/_SUCCESS), nothing else.",
            statements=[
                iam.PolicyStatement(
                    sid="PutCompletionMarkers",
                    actions=["s3:PutObject"],
                    resources=[self.bucket.arn_for_objects(f"{MARKERS_PREFIX}*")],
                ),
            ],
        )
