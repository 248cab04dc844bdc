"""The stack's SSM Command documents: the completion probe, the checkpoint command and the restore command.

Each script lives in ``infra/documents/*.sh`` and runs unchanged as the document's
``aws:runShellScript`` step. Every parameter is a typed String with an ``allowedPattern`` (SendCommand
rejects anything else) and ``interpolationType: ENV_VAR``: the agent hands the value to the script as
the environment variable ``SSM_<Name>``, so no tag value is ever pasted into shell text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ssm as ssm
from constructs import Construct

SCRIPTS = Path(__file__).resolve().parents[1] / "documents"

ABS_PATH_OR_EMPTY = r"^(|/[A-Za-z0-9._/-]{0,254})$"
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
EXECUTION_NAME = r"^[A-Za-z0-9_-]{1,80}$"
CHECKPOINT_DIR = r"^/[A-Za-z0-9._/-]{0,254}$"
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
MANIFEST_KEY = r"^[A-Za-z0-9._/=+-]{1,1000}\.json$"
RESUME_COMMAND = r"^(|/[A-Za-z0-9._/-]{1,254}( [A-Za-z0-9._/=:,+@%-]{1,255}){0,31})$"
"""An absolute program path, then up to 31 arguments separated by single spaces: no quotes, no shell syntax."""
PROBE_PARAMETERS: dict[str, dict[str, Any]] = {
    "PidFile": {"description": "Trainer PID file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "LogFile": {"description": "Trainer log file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "LogPattern": {
        "description": "Extended regular expression that marks completion, or empty",
        "allowedPattern": r"^[ -~]{0,200}$",
        "default": "",
    },
}
CHECKPOINT_PARAMETERS: dict[str, dict[str, Any]] = {
    "RunId": {"description": "Run id (tag run-id)", "allowedPattern": RUN_ID},
    "InstanceId": {"description": "EC2 instance id", "allowedPattern": INSTANCE_ID},
    "ExecutionName": {"description": "Step Functions execution name", "allowedPattern": EXECUTION_NAME},
    "CheckpointDir": {"description": "Checkpoint directory (absolute path)", "allowedPattern": CHECKPOINT_DIR},
    "PidFile": {"description": "Trainer PID file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "Signal": {"description": "Signal sent to the trainer", "allowedPattern": r"^(TERM|INT|HUP|USR1|USR2)$", "default": "TERM"},
    "GraceSeconds": {
        "description": "Seconds the trainer has to exit after the signal",
        "allowedPattern": r"^[0-9]{1,5}$",
        "default": "300",
    },
    "Bucket": {"description": "Checkpoint bucket", "allowedPattern": BUCKET},
    "UploadPrefix": {"description": "Key prefix of this upload (ends with /)", "allowedPattern": r"^[A-Za-z0-9._/=+-]{1,900}/$"},
    "ManifestKey": {"description": "Key of the manifest, written last", "allowedPattern": MANIFEST_KEY},
    "PartSizeBytes": {"description": "Multipart part size in bytes (>= 5 MiB)", "allowedPattern": r"^[0-9]{7,11}$", "default": "536870912"},
    "DecisionTime": {
        "description": "When the state machine decided (UTC)",
        "allowedPattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
    },
    "Mode": {
        "description": "stop: the trainer must exit within GraceSeconds; interruption (spot): upload the newest complete "
        "checkpoint on disk even if the trainer is still running",
        "allowedPattern": r"^(stop|interruption)$",
        "default": "stop",
    },
}
RESTORE_PARAMETERS: dict[str, dict[str, Any]] = {
    "RunId": {"description": "Run id (tag run-id)", "allowedPattern": RUN_ID},
    "InstanceId": {"description": "EC2 instance id", "allowedPattern": INSTANCE_ID},
    "ExecutionName": {"description": "Step Functions execution name", "allowedPattern": EXECUTION_NAME},
    "CheckpointDir": {"description": "Checkpoint directory to restore into (absolute path)", "allowedPattern": CHECKPOINT_DIR},
    "Bucket": {"description": "Checkpoint bucket", "allowedPattern": BUCKET},
    "ManifestKey": {"description": "Key of the verified checkpoint's manifest", "allowedPattern": MANIFEST_KEY},
    "PidFile": {"description": "Trainer PID file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "LogFile": {"description": "Trainer log file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "ResumeCommand": {
        "description": "Command that resumes training (absolute program path and arguments separated by single spaces, "
        "run without a shell) or empty",
        "allowedPattern": RESUME_COMMAND,
        "default": "",
    },
}


INCLUDE = "# @include "


def render_script(script: str) -> str:
    """The text of ``infra/documents/<script>`` with each ``# @include <file>`` line replaced by that file.

    A document runs one script, so code shared by the probe and the checkpoint script (``lib/``) is pasted
    in here, at synth time; the tests run this same rendered text.
    """
    lines = []
    for line in (SCRIPTS / script).read_text().splitlines():
        if line.startswith(INCLUDE):
            lines.extend((SCRIPTS / line.removeprefix(INCLUDE).strip()).read_text().splitlines())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def command_content(description: str, script: str, parameters: dict[str, dict[str, Any]], *, step: str, timeout: str) -> dict[str, Any]:
    """A schema 2.2 Command document running ``script`` (a file in ``infra/documents``) on Linux."""
    params = {name: {"type": "String", "interpolationType": "ENV_VAR", **spec} for name, spec in parameters.items()}
    inputs: dict[str, Any] = {"runCommand": render_script(script).splitlines(), "timeoutSeconds": timeout}
    if timeout.startswith("{{"):
        params["executionTimeout"] = {
            "type": "String",
            "description": "Seconds the script may run (grace and transfer budget)",
            "allowedPattern": r"^[0-9]{1,6}$",
            "default": "3600",
        }
    return {
        "schemaVersion": "2.2",
        "description": description,
        "parameters": params,
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": step,
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": inputs,
            }
        ],
    }


class InstanceDocuments(Construct):
    """``probe`` (read-only completion check, 60 s), ``checkpoint`` (signal, upload, manifest) and ``restore``
    (download and verify a checkpoint, start the resume command)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.probe = ssm.CfnDocument(
            self,
            "Probe",
            document_type="Command",
            document_format="JSON",
            update_method="NewVersion",
            content=command_content(
                "autostop: report whether the trainer has exited and whether its log shows completion (read-only)",
                "probe.sh",
                PROBE_PARAMETERS,
                step="probe",
                timeout="60",
            ),
        )
        self.checkpoint = ssm.CfnDocument(
            self,
            "Checkpoint",
            document_type="Command",
            document_format="JSON",
            update_method="NewVersion",
            content=command_content(
                "autostop: signal the trainer, upload its newest complete checkpoint with S3-checked SHA-256 "
                "checksums, then write the manifest",
                "checkpoint.sh",
                CHECKPOINT_PARAMETERS,
                step="checkpoint",
                timeout="{{ executionTimeout }}",
            ),
        )
        self.restore = ssm.CfnDocument(
            self,
            "Restore",
            document_type="Command",
            document_format="JSON",
            update_method="NewVersion",
            content=command_content(
                "autostop: download a verified checkpoint with S3-checked SHA-256 checksums, verify it on the instance, "
                "move it into place without overwriting anything, then start the resume command",
                "restore.sh",
                RESTORE_PARAMETERS,
                step="restore",
                timeout="{{ executionTimeout }}",
            ),
        )

    def arn(self, document: ssm.CfnDocument) -> str:
        stack = Stack.of(self)
        return stack.format_arn(service="ssm", resource="document", resource_name=document.ref)
