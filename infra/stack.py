"""The autostop stack: a thin composition of one construct per concern, with the grants between them."""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, CfnOutput, Duration, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import AutostopConfig
from infra.constructs.documents import InstanceDocuments
from infra.constructs.functions import ControlPlaneFunctions
from infra.constructs.monitoring import Monitoring
from infra.constructs.notifications import OutcomeNotifications
from infra.constructs.records import RunRecordsTable
from infra.constructs.storage import CheckpointStorage
from infra.constructs.triggers import Triggers
from infra.constructs.workflow import LifecycleStateMachine
from infra.nag import acknowledge
from lambdas.shared import constants as c

SWEEP_TIMEOUT = Duration.minutes(5)


class AutostopStack(Stack):
    """Checkpoint bucket, run records table, SSM documents, eight functions, the lifecycle state machine,
    triggers, SNS."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AutostopConfig, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        storage = CheckpointStorage(self, "CheckpointStorage", config=config)
        documents = InstanceDocuments(self, "Documents")
        notifications = OutcomeNotifications(self, "Notifications", emails=config.notification_emails)
        runs = RunRecordsTable(self, "RunRecords").table

        functions = ControlPlaneFunctions(
            self,
            "Functions",
            config=config,
            environment={
                c.ENV_TAG_PREFIX: config.tag_prefix,
                c.ENV_CHECKPOINT_BUCKET: storage.bucket.bucket_name,
                # What IAM puts in ${ec2:SourceInstanceARN} minus the instance id: the instances' own key prefixes.
                c.ENV_INSTANCE_ARN_PREFIX: f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:instance/",
                c.ENV_DEFAULT_ACTION: config.default_action,
                c.ENV_DEFAULT_GRACE_SECONDS: str(config.default_grace_seconds),
                c.ENV_MAX_GRACE_SECONDS: str(config.max_grace_seconds),
                c.ENV_PROBE_DOCUMENT: documents.probe.ref,
                c.ENV_CHECKPOINT_DOCUMENT: documents.checkpoint.ref,
                c.ENV_RESTORE_DOCUMENT: documents.restore.ref,
                c.ENV_RUNS_TABLE: runs.table_name,
                c.ENV_EXECUTION_TIMEOUT_SECONDS: str(config.execution_timeout_seconds),
                c.ENV_CHECKPOINT_TIMEOUT_SECONDS: str(config.checkpoint_timeout_seconds),
                c.ENV_PART_SIZE_BYTES: str(config.part_size_bytes),
                c.ENV_OUTCOME_TOPIC_ARN: notifications.topic.topic_arn,
                c.ENV_SCHEDULE_MINUTES: str(config.schedule_minutes),
                c.ENV_MARKER_RECHECK_MINUTES: str(config.sweep_marker_recheck_minutes),
            },
        )
        evaluate = functions.function(
            "EvaluateCompletion",
            handler_package="evaluate_completion",
            description="autostop Task state: evaluate a run's completion signals and plan its checkpoint",
            timeout=Duration.minutes(2),
        )
        verify = functions.function(
            "VerifyCheckpoint",
            handler_package="verify_checkpoint",
            description="autostop Task state: verify the checkpoint manifest and objects in S3",
            timeout=Duration.minutes(5),
            memory_mb=512,
        )
        stop = functions.function(
            "StopInstance",
            handler_package="stop_instance",
            description="autostop Task state: re-check the instance, then StopInstances/TerminateInstances",
            timeout=Duration.minutes(3),  # longer than its calls with their retries (a timeout is retried, see workflow)
        )

        confirm_resume = functions.function(
            "ConfirmResume",
            handler_package="confirm_resume",
            description="autostop Task state: judge the restore command (Resumed or ResumeFailed)",
            timeout=Duration.seconds(30),
        )
        record = functions.function(
            "RecordOutcome",
            handler_package="record_outcome",
            description="autostop Task state: write the outcome into the run record and the instance's informational tags",
            timeout=Duration.minutes(1),
        )
        find_command = functions.function(
            "FindCommand",
            handler_package="find_command",
            description="autostop Task state: after an ambiguous SendCommand failure, find the command by its comment (never re-send)",
            timeout=Duration.seconds(30),
        )
        send_command = functions.function(
            "SendCommand",
            handler_package="send_command",
            description="autostop Task state (task token): record the token, send the checkpoint or restore command once",
            timeout=Duration.seconds(90),  # longer than its calls' own timeouts, so that a SendCommand timeout is seen
        )

        workflow = LifecycleStateMachine(
            self,
            "Lifecycle",
            config=config,
            evaluate=evaluate,
            verify=verify,
            stop=stop,
            confirm_resume=confirm_resume,
            record=record,
            find_command=find_command,
            send_command=send_command,
            topic=notifications.topic,
            log_retention=getattr(logs.RetentionDays, config.log_retention),
        )
        state_machine = workflow.state_machine

        trigger_env = {c.ENV_STATE_MACHINE_ARN: state_machine.state_machine_arn}
        sweep = functions.function(
            "ScheduleSweep",
            handler_package="on_schedule_tick",
            description="autostop trigger: sweep opted-in running instances and start executions for finished runs",
            timeout=SWEEP_TIMEOUT,
            extra_environment=trigger_env,
        )
        on_marker = functions.function(
            "MarkerCreated",
            handler_package="on_object_created",
            description="autostop trigger: a completion marker landed in S3",
            timeout=Duration.minutes(2),
            extra_environment=trigger_env,
        )
        on_instance = functions.function(
            "InstanceEvent",
            handler_package="on_instance_event",
            description="autostop trigger: Spot interruption warning, rebalance recommendation, or an instance started",
            timeout=Duration.minutes(1),
            extra_environment=trigger_env,
        )
        ended = functions.function(
            "ExecutionEnded",
            handler_package="on_execution_ended",
            description="autostop: record and notify executions that timed out, were aborted or failed without their own Notify",
            timeout=Duration.minutes(1),
            extra_environment=trigger_env,
        )
        on_status = functions.function(
            "StatusEvent",
            handler_package="on_status_event",
            description="autostop: a command ended or an instance stopped; complete the execution's waiting task token",
            timeout=Duration.seconds(30),
        )
        triggers = Triggers(
            self,
            "Triggers",
            schedule_minutes=config.schedule_minutes,
            sweep=sweep,
            on_marker=on_marker,
            on_instance=on_instance,
            bucket=storage.bucket,
            on_execution_ended=ended,
            state_machine_arn=state_machine.state_machine_arn,
            on_status=on_status,
            command_documents=[documents.checkpoint.ref, documents.restore.ref],
        )

        # --- grants, where producer and consumer meet ----------------------------------------------------
        instances_arn = self.format_arn(service="ec2", resource="instance", resource_name="*")
        opted_in = {"StringEqualsIgnoreCase": {f"aws:ResourceTag/{config.tag_prefix}:{c.TAG_ENABLED}": "true"}}
        for fn in (evaluate, sweep, on_marker):
            self._grant_evaluation(fn, storage=storage, documents=documents, instances_arn=instances_arn, opted_in=opted_in)
        for fn in (sweep, on_marker, on_instance):
            state_machine.grant_start_execution(fn)
            state_machine.grant_execution(fn, "states:DescribeExecution")
        on_instance.add_to_role_policy(iam.PolicyStatement(sid="DescribeInstances", actions=["ec2:DescribeInstances"], resources=["*"]))
        # Exactly the calls shared/records.py makes: no DeleteItem, BatchWriteItem or Scan anywhere.
        on_instance.add_to_role_policy(
            iam.PolicyStatement(sid="ReadRunRecords", actions=["dynamodb:GetItem", "dynamodb:Query"], resources=[runs.table_arn])
        )
        # The sweep reads run records' locks (shared/records.py lock_holders): a handled run costs no StartExecution.
        sweep.add_to_role_policy(iam.PolicyStatement(sid="ReadRunLocks", actions=["dynamodb:BatchGetItem"], resources=[runs.table_arn]))
        # A sweep short of time hands the pages left to an Event invocation of itself (on_schedule_tick/logic.py). In the
        # function's resource policy, for its own role only: in its role's policy the function's ARN would be a circular
        # reference (the function depends on that policy); within one account either policy allows the call.
        sweep.add_permission("ContinuationBySweep", principal=sweep.role, action="lambda:InvokeFunction")
        for fn in (evaluate, verify, record):
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    sid="WriteRunRecords",
                    actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                    resources=[runs.table_arn],
                )
            )
        for fn in (evaluate, stop):
            fn.add_to_role_policy(iam.PolicyStatement(sid="SpotRequestType", actions=["ec2:DescribeSpotInstanceRequests"], resources=["*"]))
        record.add_to_role_policy(
            iam.PolicyStatement(
                sid="InformationalTags",
                actions=["ec2:CreateTags", "ec2:DeleteTags"],
                resources=[instances_arn],
                conditions={
                    **opted_in,
                    "ForAllValues:StringEquals": {"aws:TagKeys": [f"{config.tag_prefix}:{t}" for t in c.INFO_TAGS]},
                    # ForAllValues is true when the request names no keys: a DeleteTags without Tags would
                    # delete every tag of the instance. Require the key list to be present.
                    "Null": {"aws:TagKeys": "false"},
                },
            )
        )
        for statement in self._read_checkpoints(storage):
            verify.add_to_role_policy(statement)
        # Verify reads exactly the versions the instance wrote (GetObject/HeadObject with VersionId): S3 authorizes a
        # read of a named version with s3:GetObjectVersion. Only Verify reads versions.
        verify.add_to_role_policy(
            iam.PolicyStatement(sid="ReadPinnedVersions", actions=["s3:GetObjectVersion"], resources=[storage.bucket.arn_for_objects("*")])
        )
        stop.add_to_role_policy(iam.PolicyStatement(sid="DescribeInstances", actions=["ec2:DescribeInstances"], resources=["*"]))
        stop.add_to_role_policy(
            iam.PolicyStatement(
                sid="StopOptedInInstances",
                actions=["ec2:StopInstances", "ec2:TerminateInstances"],
                resources=[instances_arn],
                conditions=opted_in,
            )
        )
        # The stop mark (shared/records.py mark_stop_requested), written right before StopInstances.
        stop.add_to_role_policy(
            iam.PolicyStatement(
                sid="StopMarkInRunRecords",
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                resources=[runs.table_arn],
            )
        )
        # ListCommands lists no resource type in the Service Authorization Reference (AWS Systems Manager): '*'.
        find_command.add_to_role_policy(iam.PolicyStatement(sid="FindOwnCommand", actions=["ssm:ListCommands"], resources=["*"]))
        ended.add_to_role_policy(
            iam.PolicyStatement(sid="RecordEndings", actions=["dynamodb:GetItem", "dynamodb:PutItem"], resources=[runs.table_arn])
        )
        # Who tells people: Record outcome (every execution), the triggers (instances they could not act on), and
        # the function for executions that ended without Record outcome. Events only with source autostop.
        default_bus = self.format_arn(service="events", resource="event-bus", resource_name="default")
        for fn in (ended, record, sweep, on_marker):
            notifications.grant_publish(fn)
        for fn in (record, sweep, on_marker):
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    sid="OutcomeEvents",
                    actions=["events:PutEvents"],
                    resources=[default_bus],
                    conditions={"StringEquals": {"events:source": "autostop"}},
                )
            )
        record.add_to_role_policy(iam.PolicyStatement(sid="InstanceName", actions=["ec2:DescribeInstances"], resources=["*"]))
        # The triggers' last-error tag on instances they could not act on (shared/visibility.py): that key only, on
        # instances that carry the opt-in key with any value (enabled=yes is a mistake to report, not a refusal: the
        # condition key ignores the key's case, so Autostop:Enabled is covered too).
        for fn in (sweep, on_marker):
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    sid="NotEvaluatedTag",
                    actions=["ec2:CreateTags", "ec2:DeleteTags"],
                    resources=[instances_arn],
                    conditions={
                        "ForAllValues:StringEquals": {"aws:TagKeys": [f"{config.tag_prefix}:{c.TAG_LAST_ERROR}"]},
                        "Null": {"aws:TagKeys": "false", f"aws:ResourceTag/{config.tag_prefix}:{c.TAG_ENABLED}": "false"},
                    },
                )
            )
        self._grant_task_tokens(
            runs=runs,
            documents=documents,
            instances_arn=instances_arn,
            opted_in=opted_in,
            state_machine_arn=state_machine.state_machine_arn,
            send_command=send_command,
            stop=stop,
            on_status=on_status,
            sweep=sweep,
        )
        self._acknowledge(functions, workflow, storage)

        CfnOutput(
            self,
            "CheckpointBucket",
            value=storage.bucket.bucket_name,
            description="Checkpoints: instances/<instance ARN>/runs/<run-id>/; pipeline markers: markers/<run-id>/_SUCCESS",
        )
        CfnOutput(self, "StateMachineArn", value=state_machine.state_machine_arn, description="Watch executions here")
        CfnOutput(self, "OutcomeTopicArn", value=notifications.topic.topic_arn, description="Subscribe for outcomes")
        CfnOutput(
            self,
            "InstancePolicyArn",
            value=storage.instance_policy.managed_policy_arn,
            description="Attach to instance roles: write and read instances/<own instance ARN>/ only",
        )
        CfnOutput(
            self,
            "PipelineMarkerPolicyArn",
            value=storage.pipeline_marker_policy.managed_policy_arn,
            description="Attach to a pipeline role that puts completion markers: markers/* only",
        )
        CfnOutput(self, "ProbeDocument", value=documents.probe.ref)
        CfnOutput(self, "CheckpointDocument", value=documents.checkpoint.ref)
        CfnOutput(self, "RestoreDocument", value=documents.restore.ref)
        CfnOutput(self, "PreflightDocument", value=documents.preflight.ref, description="Sent by `autostop preflight INSTANCE`")
        CfnOutput(self, "RunRecordsTable", value=runs.table_name, description="One record per run and session")

        # --- what operators watch: dashboard and alarms, alarm actions to the outcome topic -----------------
        notifications.grant_publish(state_machine)  # the fallback Notify state (SnsPublish grants no KMS use)
        named = {
            "Evaluate": evaluate,
            "Verify": verify,
            "Stop": stop,
            "ConfirmResume": confirm_resume,
            "RecordOutcome": record,
            "FindCommand": find_command,
            "Sweep": sweep,
            "MarkerCreated": on_marker,
            "InstanceEvent": on_instance,
            "ExecutionEnded": ended,
        }
        monitoring = Monitoring(
            self,
            "Monitoring",
            topic=notifications.topic,
            state_machine=state_machine,
            functions=named,
            sweep=sweep,
            sweep_timeout=SWEEP_TIMEOUT,
            undelivered=triggers.undelivered,
        )
        CfnOutput(self, "DashboardName", value=monitoring.dashboard.dashboard_name, description="CloudWatch dashboard")

    def _grant_task_tokens(
        self,
        *,
        runs: Any,
        documents: InstanceDocuments,
        instances_arn: str,
        opted_in: dict[str, Any],
        state_machine_arn: str,
        send_command: lambda_.Function,
        stop: lambda_.Function,
        on_status: lambda_.Function,
        sweep: lambda_.Function,
    ) -> None:
        """The event-driven waits (shared/waiters.py): Send command sends the checkpoint and restore documents to opted-in
        instances and records waiters; Stop instance records its waiter; on_status_event and the sweep complete them."""
        for doc, sid in ((documents.checkpoint, "CheckpointDocument"), (documents.restore, "RestoreDocument")):
            send_command.add_to_role_policy(iam.PolicyStatement(sid=sid, actions=["ssm:SendCommand"], resources=[documents.arn(doc)]))
        send_command.add_to_role_policy(
            iam.PolicyStatement(sid="CommandOptedInInstances", actions=["ssm:SendCommand"], resources=[instances_arn], conditions=opted_in)
        )
        # GetCommandInvocation has no resource-level permissions (Service Authorization Reference, AWS Systems Manager).
        for fn in (send_command, on_status, sweep):
            fn.add_to_role_policy(iam.PolicyStatement(sid="ReadCommandInvocation", actions=["ssm:GetCommandInvocation"], resources=["*"]))
        # Waiters live in the run records table under the partition key "waiter" (never an instance id): these grants
        # reach those items only (dynamodb:LeadingKeys), so no function can delete or overwrite a run record.
        waiter_actions = {
            send_command: ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            stop: ["dynamodb:PutItem", "dynamodb:DeleteItem"],
            on_status: ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:DeleteItem"],
            sweep: ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:DeleteItem"],
        }
        for fn, actions in waiter_actions.items():
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    sid="Waiters",
                    actions=actions,
                    resources=[runs.table_arn],
                    conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [c.WAITER_PARTITION]}},
                )
            )
        sweep.add_to_role_policy(iam.PolicyStatement(sid="StoppedInstances", actions=["ec2:DescribeInstances"], resources=["*"]))
        # A standalone policy, not the functions' default policies: the state machine's definition names Send command
        # and Stop instance, so their default policies (which each function depends on) cannot name the state machine.
        responses = iam.Policy(
            self,
            "TaskTokenResponses",
            statements=[
                iam.PolicyStatement(
                    sid="CompleteTaskTokens",
                    actions=["states:SendTaskSuccess"],
                    resources=[state_machine_arn],
                )
            ],
        )
        for fn in (send_command, stop, on_status, sweep):
            responses.attach_to_role(fn.role)  # type: ignore[arg-type]
        acknowledge(
            responses,
            "NIST.800.53.R5-IAMNoInlinePolicy",
            "SendTaskSuccess on the lifecycle state machine only, attached to the four roles that complete "
            "its task tokens; inline because their default policies cannot name the state machine (it names two of them).",
        )

    def _grant_evaluation(
        self,
        fn: lambda_.Function,
        *,
        storage: CheckpointStorage,
        documents: InstanceDocuments,
        instances_arn: str,
        opted_in: dict[str, dict[str, str]],
    ) -> None:
        """What evaluating completion needs: DescribeInstances, marker HeadObject, the batched probe."""
        for statement in self._read_checkpoints(storage):
            fn.add_to_role_policy(statement)
        fn.add_to_role_policy(iam.PolicyStatement(sid="DescribeInstances", actions=["ec2:DescribeInstances"], resources=["*"]))
        fn.add_to_role_policy(
            iam.PolicyStatement(sid="ProbeDocument", actions=["ssm:SendCommand"], resources=[documents.arn(documents.probe)])
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(sid="ProbeOptedInInstances", actions=["ssm:SendCommand"], resources=[instances_arn], conditions=opted_in)
        )
        # '*' because AWS allows nothing narrower: in the Service Authorization Reference, "Actions, resources, and
        # condition keys for AWS Systems Manager" (https://docs.aws.amazon.com/service-authorization/latest/reference/
        # list_awssystemsmanager.html), CancelCommand, ListCommandInvocations and DescribeInstanceInformation list no
        # resource type and no condition key, and "If there is no value for this column, you must specify all
        # resources ("*")". So CancelCommand cannot carry the opt-in tag condition SendCommand has (SendCommand lists
        # the instance and document resource types). These three stay with the roles that send the probe, which
        # cancel only the probe commands they sent; a cancelled command can only make a run wait (never a stop).
        fn.add_to_role_policy(
            iam.PolicyStatement(
                sid="ReadProbeResults",
                actions=["ssm:DescribeInstanceInformation", "ssm:ListCommandInvocations", "ssm:CancelCommand"],
                resources=["*"],
            )
        )

    @staticmethod
    def _read_checkpoints(storage: CheckpointStorage) -> list[iam.PolicyStatement]:
        """HeadObject/GetObject in the checkpoint bucket (markers, manifests, checkpoint objects), and
        s3:ListBucket on it: without it S3 answers HeadObject of a missing key with 403 instead of 404, and
        an absent marker would read as an unreadable one."""
        return [
            iam.PolicyStatement(sid="ReadCheckpoints", actions=["s3:GetObject"], resources=[storage.bucket.arn_for_objects("*")]),
            iam.PolicyStatement(sid="TellMissingFromForbidden", actions=["s3:ListBucket"], resources=[storage.bucket.bucket_arn]),
        ]

    def _nag_arn(self, service: str, resource: str) -> str:
        """An ARN of this stack as cdk-nag prints it in a finding: unresolved parts as ``<AWS::...>``."""
        region = "<AWS::Region>" if Token.is_unresolved(self.region) else self.region
        account = "<AWS::AccountId>" if Token.is_unresolved(self.account) else self.account
        return f"arn:<AWS::Partition>:{service}:{region}:{account}:{resource}"

    def _logical(self, element: object) -> str:
        return str(self.resolve(self.get_logical_id(element)))  # type: ignore[arg-type]

    def _acknowledge(self, functions: ControlPlaneFunctions, workflow: LifecycleStateMachine, storage: CheckpointStorage) -> None:
        """Each wildcard and managed policy cdk-nag reports, with the reason it is needed."""
        # As cdk-nag prints the bucket's ARN: the created bucket's GetAtt, or an existing bucket's literal ARN.
        if storage.created:
            bucket_arn = f"<{self._logical(storage.bucket.node.default_child)}.Arn>"
        else:
            bucket_arn = f"arn:<AWS::Partition>:s3:::{self.config.checkpoint_bucket}"
        acknowledge(
            functions,
            "AwsSolutions-IAM5",
            "Read-only access to objects of the checkpoint bucket: markers and manifests sit under every instance's "
            "prefix and under markers/, so their readers need the bucket's objects, nothing outside it.",
            finding=f"Resource::{bucket_arn}/*",
        )
        # cdk-nag prints the policy variable ${ec2:SourceInstanceARN} as <ec2:SourceInstanceARN>.
        acknowledge(
            storage.instance_policy,
            "AwsSolutions-IAM5",
            "One instance's own prefix: ${ec2:SourceInstanceARN} is the ARN of the instance whose instance-profile "
            "credentials sign the request, so each instance reaches instances/<its ARN>/* only (and, without the key, "
            "nothing); the trailing * is the keys it writes there.",
            finding=f"Resource::{bucket_arn}/instances/<ec2:SourceInstanceARN>/*",
        )
        acknowledge(
            storage.pipeline_marker_policy,
            "AwsSolutions-IAM5",
            "PutObject of completion markers only, under markers/ (markers/<run-id>/_SUCCESS): run ids are chosen by "
            "the user, so the pipeline role needs the prefix, nothing else in the bucket.",
            finding=f"Resource::{bucket_arn}/markers/*",
        )
        for scope in (functions, workflow):
            acknowledge(
                scope,
                "AwsSolutions-IAM5",
                "Required '*': ec2:DescribeInstances, ec2:DescribeSpotInstanceRequests, ssm:DescribeInstanceInformation, "
                "ssm:ListCommandInvocations, ssm:GetCommandInvocation, ssm:CancelCommand and the X-Ray/log-delivery actions "
                "have no resource-level permissions.",
                finding="Resource::*",
            )
            acknowledge(
                scope,
                "AwsSolutions-IAM5",
                "instance/* is narrowed by the condition StringEqualsIgnoreCase aws:ResourceTag/<prefix>:enabled = true: "
                "SendCommand, StopInstances, TerminateInstances, CreateTags and DeleteTags only reach opted-in instances "
                "(tags: only the informational keys, by aws:TagKeys).",
                finding=f"Resource::{self._nag_arn('ec2', 'instance/*')}",
            )
        machine = self._logical(workflow.state_machine.node.default_child)
        acknowledge(
            functions,
            "AwsSolutions-IAM5",
            "DescribeExecution on executions of the lifecycle state machine only (checking an existing execution "
            "before starting a new attempt).",
            finding="Resource::" + self._nag_arn("states", f'execution:{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{machine}"}}]}}]}}:*'),
        )
        for fn_id in (
            "EvaluateCompletion",
            "VerifyCheckpoint",
            "StopInstance",
            "ConfirmResume",
            "RecordOutcome",
            "FindCommand",
            "SendCommand",
        ):
            fn = functions.node.find_child(fn_id).node.default_child
            acknowledge(
                workflow,
                "AwsSolutions-IAM5",
                "LambdaInvoke grants '<function>:*' so that versions and aliases of this one task function can be invoked.",
                finding=f"Resource::<{self._logical(fn)}.Arn>:*",
            )
            acknowledge(
                fn,
                "NIST.800.53.R5-LambdaDLQ",
                "Invoked synchronously by the state machine (LambdaInvoke), never asynchronously, so a dead-letter queue "
                "would never receive anything: errors reach the task's Retry and Catch and end in a named outcome.",
            )
        acknowledge(
            functions,
            "AwsSolutions-L1",
            "Pinned to Python 3.13 on purpose: the Powertools layer version is pinned for python3.13 and the code is "
            "tested on 3.11-3.13; move runtime and layer together.",
        )
        acknowledge(
            self,
            "AwsSolutions-IAM4",
            "AWSLambdaBasicExecutionRole on CDK's own BucketNotificationsHandler, which turns on EventBridge "
            "notifications for the checkpoint bucket at deploy time; it writes only its own logs.",
            finding="Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        )
