"""Synthesize the CDK app and "deploy" its template into moto: the resources the control plane runs on.

Only what the control plane uses at run time is created: buckets (with EventBridge notifications where
the template turns them on), DynamoDB tables (key schema and on-demand billing; point-in-time recovery
and encryption settings have no effect in moto and are not applied), SSM documents (any number), IAM
roles (moto's Lambda needs them; moto does not enforce IAM), Lambda functions (handlers run in-process,
see :mod:`local.aws`), the state machine (its definition string resolved from the template, not a copy),
SNS topics, SQS queues and EventBridge rules with their targets. Log groups, policies, permissions and
CDK's custom resources have no effect in moto and are skipped. Physical names are fixed up front, so
references resolve in any order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Any

from local.aws import ACCOUNT, REGION, REPO

SYNTH_INPUTS = ["app.py", "cdk.json", "infra", "lambdas/shared/constants.py"]
CACHE = REPO / ".autostop-local" / "synth"
LOCAL_BUCKET = "autostop-local-checkpoints"
LOCAL_TABLE = "autostop-local-runs"


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in SYNTH_INPUTS:
        path = REPO / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(REPO)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def synthesize(context: dict[str, Any] | None = None, *, use_cache: bool = True) -> dict[str, Any]:
    """The stack's CloudFormation template, synthesized by the real CDK app (cdk-nag included).

    Cached under ``.autostop-local/synth/<digest of app.py, cdk.json, infra/ and the shared constants>``
    so repeated local runs skip the ~10 s synth; any change to those inputs synthesizes again.
    """
    key = _inputs_digest() + (hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:8] if context else "")
    cached = CACHE / key / "template.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import tempfile

    from app import build_app

    with tempfile.TemporaryDirectory() as outdir:
        app, stack = build_app(context=context, outdir=outdir)
        assembly = app.synth()
        template = assembly.get_stack_by_name(stack.stack_name).template
    if use_cache:
        if CACHE.exists():
            shutil.rmtree(CACHE, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(template))
    return dict(template)


@dataclass
class Deployment:
    """What :func:`deploy` created: physical names/ARNs by logical id, and the handy ones by role."""

    template: dict[str, Any]
    physical: dict[str, str] = field(default_factory=dict)
    arns: dict[str, str] = field(default_factory=dict)
    bucket: str = ""
    table: str = ""
    """Physical name of the run records table (the DynamoDB table whose logical id contains ``Runs``)."""
    tables: dict[str, str] = field(default_factory=dict)
    """Table logical id to table name."""
    state_machine_arn: str = ""
    topic_arn: str = ""
    notifications_queue_url: str = ""
    documents: dict[str, str] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)
    """Handler package (e.g. ``on_schedule_tick``) to function name."""
    rules: dict[str, str] = field(default_factory=dict)
    """Rule logical id to rule name."""
    environment: dict[str, str] = field(default_factory=dict)
    """Union of every function's environment (identical keys have identical values)."""

    def resources(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == cfn_type}

    @property
    def stack_name(self) -> str:
        return str(Resolver.PSEUDO["AWS::StackName"])

    def outputs(self) -> dict[str, str]:
        """The stack's outputs as DescribeStacks would give them (``OutputKey`` to value): the template's own
        ``Outputs`` (infra/stack.py's CfnOutputs) resolved to this deployment's names. A managed policy's Ref is
        its ARN, as in CloudFormation (moto gets no managed policies; the ARN is what the stack would output)."""
        resolve = Resolver(self.template, self.physical, self.arns)
        resources = self.template["Resources"]
        out: dict[str, str] = {}
        for key, spec in self.template.get("Outputs", {}).items():
            ref = spec["Value"].get("Ref") if isinstance(spec["Value"], dict) else None
            if ref in resources and resources[ref]["Type"] == "AWS::IAM::ManagedPolicy":
                out[key] = f"arn:aws:iam::{ACCOUNT}:policy/{ref}"
            else:
                out[key] = str(resolve(spec["Value"]))
        return out

    def outputs_file(self) -> dict[str, dict[str, str]]:
        """``{stack name: outputs}``: what ``cdk deploy --outputs-file`` writes for this stack."""
        return {self.stack_name: self.outputs()}


def _names(template: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    physical: dict[str, str] = {}
    arns: dict[str, str] = {}
    for logical, res in template["Resources"].items():
        t = res["Type"]
        if t == "AWS::S3::Bucket":
            name = LOCAL_BUCKET if "Checkpoints" in logical else f"autostop-local-{logical.lower()[:40]}"
            physical[logical], arns[logical] = name, f"arn:aws:s3:::{name}"
        elif t == "AWS::DynamoDB::Table":
            name = res.get("Properties", {}).get("TableName")
            if not isinstance(name, str):  # unnamed (or named by an expression): a fixed local name
                name = LOCAL_TABLE if "Runs" in logical else f"autostop-local-{logical.lower()[:40]}"
            physical[logical], arns[logical] = name, f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        elif t == "AWS::Lambda::Function":
            physical[logical], arns[logical] = logical[:64], f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical[:64]}"
        elif t == "AWS::IAM::Role":
            physical[logical], arns[logical] = logical[:64], f"arn:aws:iam::{ACCOUNT}:role/{logical[:64]}"
        elif t == "AWS::StepFunctions::StateMachine":
            arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{logical}"
            physical[logical], arns[logical] = arn, arn  # Ref of a state machine is its ARN
        elif t == "AWS::SNS::Topic":
            arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:{logical}"
            physical[logical], arns[logical] = arn, arn
        elif t == "AWS::SQS::Queue":
            physical[logical] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{logical}"
            arns[logical] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{logical}"
        elif t == "AWS::SSM::Document":
            physical[logical] = f"Autostop-{logical}"
            arns[logical] = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/Autostop-{logical}"
        elif t == "AWS::Events::Rule":
            physical[logical], arns[logical] = logical[:64], f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{logical[:64]}"
        else:
            physical[logical] = logical
            arns[logical] = f"arn:aws:local:{REGION}:{ACCOUNT}:{logical}"
    return physical, arns


class Resolver:
    """Evaluates the intrinsic functions CDK emits (Ref, Fn::GetAtt, Fn::Join, Fn::Select, Fn::Split, Fn::Sub)."""

    PSEUDO = {
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::StackName": "Autostop",
    }

    def __init__(self, template: dict[str, Any], physical: dict[str, str], arns: dict[str, str]) -> None:
        self.parameters = {name: p.get("Default", f"local-{name}") for name, p in template.get("Parameters", {}).items()}
        self.physical = physical
        self.arns = arns

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref":
                return self.PSEUDO.get(value) or self.parameters.get(value) or self.physical[value]
            if key == "Fn::GetAtt":
                logical, attr = value if isinstance(value, list) else value.split(".", 1)
                return self.arns[logical] if attr in ("Arn", "TopicArn", "QueueArn") else self.physical[logical]
            if key == "Fn::Join":
                return value[0].join(str(self(p)) for p in value[1])
            if key == "Fn::Select":
                return self(value[1])[int(self(value[0]))]
            if key == "Fn::Split":
                return str(self(value[1])).split(value[0])
            if key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                for name, val in {**self.PSEUDO, **self.physical}.items():
                    text = text.replace("${" + name + "}", str(val))
                return text
        return {k: self(v) for k, v in node.items()}


def _dummy_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "handlers run in-process from lambdas/ (local/aws.py)")
    return buf.getvalue()


def _create_table(dynamodb: Any, name: str, props: dict[str, Any]) -> None:
    """CreateTable with the template's keys and indexes, always on-demand (PITR and SSE are not applied)."""
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(key):
            kwargs[key] = [{k: v for k, v in index.items() if k != "ProvisionedThroughput"} for index in props[key]]
    if props.get("StreamSpecification"):
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    dynamodb.create_table(**kwargs)
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]})


def deploy(template: dict[str, Any], clients: Any) -> Deployment:
    """Create the template's run-time resources in moto. ``clients(service)`` returns a boto3 client."""
    physical, arns = _names(template)
    resolve = Resolver(template, physical, arns)
    dep = Deployment(template=template, physical=physical, arns=arns)
    services = ("s3", "ssm", "iam", "lambda", "stepfunctions", "sns", "sqs", "events", "dynamodb")
    s3, ssm, iam, lam, sfn, sns, sqs, events, dynamodb = (clients(s) for s in services)
    resources = template["Resources"]
    for logical, res in resources.items():
        props = res.get("Properties", {})
        t = res["Type"]
        if t == "AWS::S3::Bucket":
            s3.create_bucket(Bucket=physical[logical])
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=physical[logical], VersioningConfiguration={"Status": "Enabled"})
            if "Checkpoints" in logical:
                dep.bucket = physical[logical]
        elif t == "AWS::DynamoDB::Table":
            _create_table(dynamodb, physical[logical], props)
            dep.tables[logical] = physical[logical]
            if "Runs" in logical:
                dep.table = physical[logical]
        elif t == "AWS::SSM::Document":
            ssm.create_document(
                Name=physical[logical],
                Content=json.dumps(props["Content"]),
                DocumentType=props.get("DocumentType", "Command"),
                DocumentFormat="JSON",
            )
            dep.documents[logical] = physical[logical]
        elif t == "AWS::IAM::Role":
            iam.create_role(RoleName=physical[logical], AssumeRolePolicyDocument=json.dumps(resolve(props["AssumeRolePolicyDocument"])))
        elif t == "AWS::SNS::Topic":
            sns.create_topic(Name=logical)
            dep.topic_arn = arns[logical]
        elif t == "AWS::SQS::Queue":
            sqs.create_queue(QueueName=logical)
    zipped = _dummy_zip()
    for logical, res in dep.resources("AWS::Lambda::Function").items():
        props = res["Properties"]
        env = resolve(props.get("Environment", {}).get("Variables", {}))
        lam.create_function(
            FunctionName=physical[logical],
            Runtime="python3.11",
            Role=resolve(props["Role"]),
            Handler=props["Handler"],
            Code={"ZipFile": zipped},
            Environment={"Variables": env},
            Timeout=int(props.get("Timeout", 60)),
        )
        dep.functions[props["Handler"].split(".", 1)[0]] = physical[logical]
        for key, value in env.items():
            if dep.environment.setdefault(key, value) != value:
                raise ValueError(f"functions disagree on {key}: {dep.environment[key]!r} vs {value!r}")
    for logical, res in dep.resources("AWS::StepFunctions::StateMachine").items():
        props = res["Properties"]
        definition = resolve(props["DefinitionString"])
        sfn.create_state_machine(
            name=logical, definition=definition, roleArn=resolve(props["RoleArn"]), type=props.get("StateMachineType", "STANDARD")
        )
        dep.state_machine_arn = arns[logical]
    for res in dep.resources("Custom::S3BucketNotifications").values():
        props = res["Properties"]
        if "EventBridgeConfiguration" in props.get("NotificationConfiguration", {}):
            s3.put_bucket_notification_configuration(
                Bucket=resolve(props["BucketName"]), NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
    for logical, res in dep.resources("AWS::Events::Rule").items():
        props = res["Properties"]
        kwargs: dict[str, Any] = {"Name": physical[logical], "State": props.get("State", "ENABLED")}
        if "ScheduleExpression" in props:
            kwargs["ScheduleExpression"] = props["ScheduleExpression"]
        if "EventPattern" in props:
            kwargs["EventPattern"] = json.dumps(resolve(props["EventPattern"]))
        events.put_rule(**kwargs)
        targets = [{"Id": t["Id"], "Arn": resolve(t["Arn"])} for t in props.get("Targets", [])]
        if targets:
            events.put_targets(Rule=physical[logical], Targets=targets)
        dep.rules[logical] = physical[logical]
    # A queue subscribed to the outcome topic, so reports can list the notifications sent.
    queue = sqs.create_queue(QueueName="autostop-local-notifications")
    dep.notifications_queue_url = queue["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=dep.topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    return dep
