"""One place for the defaults of every autostop Lambda function."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Annotations, AssetHashType, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra.asset import staged
from infra.config import LAMBDA_ARCH, LAMBDA_PYTHON, POWERTOOLS_VERSION, AutostopConfig
from infra.nag import acknowledge

LAMBDAS_DIR = Path(__file__).resolve().parents[2] / "lambdas"


def powertools_layer(scope: Construct) -> lambda_.ILayerVersion:
    """The public Powertools for AWS Lambda (Python) layer, pinned by version through its public SSM parameter."""
    arn = ssm.StringParameter.value_for_string_parameter(
        scope, f"/aws/service/powertools/python/{LAMBDA_ARCH}/{LAMBDA_PYTHON}/{POWERTOOLS_VERSION}"
    )
    return lambda_.LayerVersion.from_layer_version_arn(scope, "PowertoolsLayer", arn)


def function_code(scope: Construct) -> lambda_.Code:
    """``lambdas/`` with the bytecode of the runtime's Python when this machine has one (infra/asset.py: staged at
    synth, no Docker); otherwise the sources only, and an info annotation on ``scope`` says so."""
    tree, asset_hash = staged(LAMBDAS_DIR, LAMBDA_PYTHON.removeprefix("python"))
    if asset_hash.endswith("-src"):
        Annotations.of(scope).add_info(
            f"No {LAMBDA_PYTHON} interpreter found (PATH, pyenv or AUTOSTOP_ASSET_PYTHON): the functions' asset holds "
            "sources only, and every cold start compiles them."
        )
    return lambda_.Code.from_asset(str(tree), asset_hash=asset_hash, asset_hash_type=AssetHashType.CUSTOM)


class ControlPlaneFunctions(Construct):
    """Factory for the stack's functions: Python 3.13 on arm64, code from ``lambdas/`` with its bytecode (no
    Docker), Powertools layer, JSON logs in a log group with retention, X-Ray tracing, its own role."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AutostopConfig, environment: dict[str, str]) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._environment = {
            "POWERTOOLS_SERVICE_NAME": "autostop",
            "POWERTOOLS_METRICS_NAMESPACE": "Autostop",
            "POWERTOOLS_TRACE_DISABLED": "false" if config.tracing and config.trace_aws_calls else "true",
            **environment,
        }
        self._layer = powertools_layer(self)
        self._code = function_code(self)
        # NIST 800-53 rev 5 findings on every function this factory makes (and its role and log group):
        acknowledge(
            self,
            "NIST.800.53.R5-LambdaInsideVPC",
            "The functions reach only public AWS APIs (EC2, SSM, S3, Step Functions, X-Ray, Logs) and no private "
            "network resource; inside a VPC they would need a NAT gateway or about seven interface endpoints per AZ, "
            "a standing cost for users with nothing to protect behind it.",
        )
        acknowledge(
            self,
            "NIST.800.53.R5-LambdaConcurrency",
            "Reserved concurrency is taken from the account's unreserved pool, and Lambda refuses a reservation that "
            "leaves less than its minimum unreserved, so accounts with a low concurrency quota could not deploy. "
            "Callers bound the concurrency already: one sweep per schedule tick, one invocation per marker event, "
            "one per state-machine step of an execution (at most one execution per run).",
        )
        acknowledge(
            self,
            "NIST.800.53.R5-CloudWatchLogGroupEncrypted",
            "CloudWatch Logs encrypts every log group at rest with service keys. A customer managed KMS key would add "
            "a monthly key charge and a key policy for the logs service, for logs that hold instance ids, run ids, "
            "paths and outcomes, and no credentials.",
        )
        acknowledge(
            self,
            "NIST.800.53.R5-IAMNoInlinePolicy",
            "Each function's DefaultPolicy is attached to that function's own role only and lives and dies with it; "
            "tests/infra/test_least_privilege.py proves its statements. A managed policy per role adds no control.",
        )

    def function(
        self,
        construct_id: str,
        *,
        handler_package: str,
        description: str,
        timeout: Duration,
        memory_mb: int = 256,
        extra_environment: dict[str, str] | None = None,
    ) -> lambda_.Function:
        """A function whose handler is ``<handler_package>.handler.lambda_handler``."""
        log_group = logs.LogGroup(
            self,
            f"{construct_id}Logs",
            retention=getattr(logs.RetentionDays, self._config.log_retention),
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"autostop {handler_package}",
        )
        log_group.grant_write(role)
        return lambda_.Function(
            self,
            construct_id,
            description=description,
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=f"{handler_package}.handler.lambda_handler",
            code=self._code,
            layers=[self._layer],
            timeout=timeout,
            memory_size=memory_mb,
            role=role,
            environment={**self._environment, **(extra_environment or {})},
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE if self._config.tracing else lambda_.Tracing.DISABLED,
        )
