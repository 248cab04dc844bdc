"""One place for the defaults of every autostop Lambda function."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra.config import LAMBDA_ARCH, LAMBDA_PYTHON, POWERTOOLS_VERSION, AutostopConfig

LAMBDAS_DIR = Path(__file__).resolve().parents[2] / "lambdas"
ASSET_EXCLUDE = ["**/__pycache__", "**/*.pyc", "requirements.txt", ".pytest_cache"]


def powertools_layer(scope: Construct) -> lambda_.ILayerVersion:
    """The public Powertools for AWS Lambda (Python) layer, pinned by version through its public SSM parameter."""
    arn = ssm.StringParameter.value_for_string_parameter(
        scope, f"/aws/service/powertools/python/{LAMBDA_ARCH}/{LAMBDA_PYTHON}/{POWERTOOLS_VERSION}"
    )
    return lambda_.LayerVersion.from_layer_version_arn(scope, "PowertoolsLayer", arn)


class ControlPlaneFunctions(Construct):
    """Factory for the stack's functions: Python 3.13 on arm64, code from ``lambdas/`` (no bundling, no
    Docker), Powertools layer, JSON logs in a log group with retention, X-Ray tracing, its own role."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AutostopConfig, environment: dict[str, str]) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._environment = {
            "POWERTOOLS_SERVICE_NAME": "autostop",
            "POWERTOOLS_METRICS_NAMESPACE": "Autostop",
            **environment,
        }
        self._layer = powertools_layer(self)
        self._code = lambda_.Code.from_asset(str(LAMBDAS_DIR), exclude=ASSET_EXCLUDE)

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
            tracing=lambda_.Tracing.ACTIVE,
        )
