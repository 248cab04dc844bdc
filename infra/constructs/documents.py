"""The stack's SSM Command documents: the completion probe, the checkpoint command, the restore command and the
operator's preflight check (``autostop preflight``).

Each script lives in ``infra/documents/*.sh`` and runs unchanged as the document's
``aws:runShellScript`` step. Every parameter is a typed String with an ``allowedPattern`` (SendCommand
rejects anything else) and ``interpolationType: ENV_VAR``: the agent hands the value to the script as
the environment variable ``SSM_<Name>``, so no tag value is ever pasted into shell text.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import tokenize
from pathlib import Path
from typing import Any

from aws_cdk import Stack, Token
from aws_cdk import aws_ssm as ssm
from constructs import Construct

SCRIPTS = Path(__file__).resolve().parents[1] / "documents"

ABS_PATH_OR_EMPTY = r"^(|/[A-Za-z0-9._/-]{0,254})$"
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
EXECUTION_NAME = r"^[A-Za-z0-9_-]{1,80}$"
CHECKPOINT_DIR = r"^/[A-Za-z0-9._/-]{0,254}$"
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
MANIFEST_KEY = r"^[A-Za-z0-9._/=+:-]{1,1000}\.json$"
"""':' for the instance ARN in ``instances/arn:aws:ec2:<region>:<account>:instance/<id>/...``."""
UPLOAD_PREFIX = r"^[A-Za-z0-9._/=+:-]{1,900}/$"
MANIFEST_VERSION_ID = r"^[A-Za-z0-9._+/=-]{1,1024}$"
SHA256_HEX = r"^[0-9a-f]{64}$"
RESUME_COMMAND = r"^(|/[A-Za-z0-9._/-]{1,254}( [A-Za-z0-9._/=:,+@%-]{1,255}){0,31})$"
"""An absolute program path, then up to 31 arguments separated by single spaces: no quotes, no shell syntax."""
INSTANCE_PREFIX = r"^instances/arn:[a-z-]+:ec2:[a-z0-9-]+:[0-9]{12}:instance/i-[0-9a-f]{8,17}/$"
"""``instances/<instance ARN>/``: the only keys the instance policy lets an instance write (infra/constructs/storage.py)."""
RUN_ID_TEMPLATE = "{run-id}"
"""In a probe path parameter: the run id RunIds gives the instance the command runs on (lambdas/shared/probe.py)."""
PROBE_PATH_OR_EMPTY = r"^(|/(\{run-id\}|[A-Za-z0-9._/-]){0,254})$"
"""ABS_PATH_OR_EMPTY, where ``{run-id}`` may stand for a run id anywhere after the first '/' (the probe, lib/probe.py,
substitutes it and checks the result against ABS_PATH_OR_EMPTY again); no other '{' or '}'."""
RUN_IDS = r"^(|i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}( i-[0-9a-f]{8,17}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,49})$"
"""Up to 50 (SendCommand batch) ``<instance id>=<run id>`` pairs separated by single spaces (RUN_ID without anchors)."""
PROBE_PARAMETERS: dict[str, dict[str, Any]] = {
    "PidFile": {
        "description": "Trainer PID file (absolute path, may hold {run-id}) or empty",
        "allowedPattern": PROBE_PATH_OR_EMPTY,
        "default": "",
    },
    "LogFile": {
        "description": "Trainer log file (absolute path, may hold {run-id}) or empty",
        "allowedPattern": PROBE_PATH_OR_EMPTY,
        "default": "",
    },
    "LogPattern": {
        "description": "Extended regular expression that marks completion, or empty",
        "allowedPattern": r"^[ -~]{0,200}$",
        "default": "",
    },
    "CheckpointDir": {
        "description": "Checkpoint directory (absolute path, may hold {run-id}) or empty: the log is read only when its owner owns it",
        "allowedPattern": PROBE_PATH_OR_EMPTY,
        "default": "",
    },
    "RunIds": {
        "description": "Space-separated <instance id>=<run id> pairs, one per instance of a batched command: {run-id} in "
        "the paths is the run id of the instance the probe runs on; or empty",
        "allowedPattern": RUN_IDS,
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
    "UploadPrefix": {"description": "Key prefix of this upload (ends with /)", "allowedPattern": UPLOAD_PREFIX},
    "ManifestKey": {"description": "Key of the manifest, written last", "allowedPattern": MANIFEST_KEY},
    "PartSizeBytes": {"description": "Multipart part size in bytes (>= 5 MiB)", "allowedPattern": r"^[0-9]{7,11}$", "default": "67108864"},
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
    "SaveOnSignal": {
        "description": "true: the trainer saves a checkpoint when signalled (tag save-on-signal), so Mode stop may signal it "
        "even when no complete checkpoint is on disk yet; false: it is signalled only when one is",
        "allowedPattern": r"^(true|false)$",
        "default": "false",
    },
}
RESTORE_PARAMETERS: dict[str, dict[str, Any]] = {
    "RunId": {"description": "Run id (tag run-id)", "allowedPattern": RUN_ID},
    "InstanceId": {"description": "EC2 instance id", "allowedPattern": INSTANCE_ID},
    "ExecutionName": {"description": "Step Functions execution name", "allowedPattern": EXECUTION_NAME},
    "CheckpointDir": {"description": "Checkpoint directory to restore into (absolute path)", "allowedPattern": CHECKPOINT_DIR},
    "Bucket": {"description": "Checkpoint bucket", "allowedPattern": BUCKET},
    "ManifestKey": {"description": "Key of the verified checkpoint's manifest", "allowedPattern": MANIFEST_KEY},
    "ManifestVersionId": {"description": "S3 VersionId of the verified manifest (only it is read)", "allowedPattern": MANIFEST_VERSION_ID},
    "ManifestSha256": {"description": "SHA-256 (hex) of the verified manifest's bytes", "allowedPattern": SHA256_HEX},
    "UploadPrefix": {
        "description": "Key prefix of the verified upload: every object key must start with it",
        "allowedPattern": UPLOAD_PREFIX,
    },
    "PidFile": {"description": "Trainer PID file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "LogFile": {"description": "Trainer log file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "ResumeCommand": {
        "description": "Command that resumes training (absolute program path and arguments separated by single spaces, "
        "run without a shell) or empty",
        "allowedPattern": RESUME_COMMAND,
        "default": "",
    },
}
PREFLIGHT_PARAMETERS: dict[str, dict[str, Any]] = {
    "Bucket": {"description": "Checkpoint bucket", "allowedPattern": BUCKET},
    "InstancePrefix": {
        "description": "The instance's own key prefix, instances/<instance ARN>/ (one test object is written there)",
        "allowedPattern": INSTANCE_PREFIX,
    },
    "CheckpointDir": {"description": "Checkpoint directory (absolute path)", "allowedPattern": CHECKPOINT_DIR},
    "PidFile": {"description": "Trainer PID file (absolute path) or empty", "allowedPattern": ABS_PATH_OR_EMPTY, "default": ""},
    "SaveOnSignal": {
        "description": "true: the trainer saves a checkpoint when signalled (tag save-on-signal)",
        "allowedPattern": r"^(true|false)$",
        "default": "false",
    },
}


PINNED_DOCUMENT_VERSION = "1"
"""The ``DocumentVersion`` every SendCommand names. Without it SSM runs the document's ``$DEFAULT`` version, which
whoever holds ssm:UpdateDocument + ssm:UpdateDocumentDefaultVersion on the document can point at content of their
own, run as root on every opted-in instance. Each document is named after a hash of its content
(:func:`content_name`), so a change of content is a new document (CloudFormation: ``Name`` is create-only, a new
name replaces the resource), created with version 1, and version 1 of that name is always the content this
template holds: a later UpdateDocument only adds version 2, 3, ... and moving the default changes nothing.
CloudFormation exposes no version number of an ``AWS::SSM::Document`` (its resource schema has no read-only
properties, so no Fn::GetAtt), which rules out pinning "the latest version" from the template.
SendCommand API reference (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html),
DocumentVersion: "The SSM document version to use in the request. You can specify $DEFAULT, $LATEST, or a specific
version number."
"""


def content_name(stack_name: str, document: ssm.CfnDocument) -> str:
    """``<stack>-<id>-<first 20 hex of the SHA-256 of type, format and content>``: a new name for every content, so
    that each content is version 1 of its own document (see PINNED_DOCUMENT_VERSION). SSM names: 3-128 of
    ``A-Z a-z 0-9 _ - .``, not starting with aws/amazon/amzn."""
    digest = hashlib.sha256(
        json.dumps([document.document_type, document.document_format, document.content], sort_keys=True).encode()
    ).hexdigest()[:20]
    stack = "autostop" if Token.is_unresolved(stack_name) else "".join(ch for ch in stack_name if ch.isalnum() or ch in "_-.")[:80]
    if stack.lower().startswith(("aws", "amazon", "amzn")):
        stack = f"autostop-{stack}"
    return f"{stack}-{document.node.id}-{digest}"


INCLUDE = "# @include "


def render_script(script: str) -> str:
    """The text of ``infra/documents/<script>`` as its document carries it.

    Each ``# @include <file>`` line is replaced by that file (a document runs one script, so code shared by the
    scripts, ``lib/``, is pasted in at synth time); then, to fit SSM's 64 KB document content limit, comment-only
    and blank lines are dropped, and included ``.py`` files lose their imports of each other (``if "name" not in
    globals(): from module import ...``: pasted into one program, the names are already there), their docstrings
    and comments, and are indented one space per level (the files in the repository keep all that; a test proves
    the code is the same). The tests run this same rendered text.
    """
    lines = []
    for line in (SCRIPTS / script).read_text().splitlines():
        if line.startswith(INCLUDE):
            name = line.removeprefix(INCLUDE).strip()
            text = (SCRIPTS / name).read_text()
            lines.extend((minified(text) if name.endswith(".py") else text).splitlines())
        else:
            lines.append(line)
    kept = [line for i, line in enumerate(lines) if i == 0 or (line.strip() and not line.lstrip().startswith("#"))]
    return "\n".join(kept) + "\n"


def minified(source: str) -> str:
    """SOURCE (a module of ``lib/``) as a document carries it (see ``render_script``)."""
    return single_quoted(narrow_indents(without_comments(without_docstrings(without_standalone_imports(source)))))


def single_quoted(source: str) -> str:
    """SOURCE (Python) with every one-line string literal written ``"..."`` written ``'...'`` instead where nothing
    inside it is a quote or a backslash (the same string): the document's JSON escapes each double quote, so each
    costs two bytes of SSM's 64 KB there and one as a single quote."""
    lines = source.splitlines()
    edits = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        text = token.string
        body = text.lstrip("rRbBuUfF")
        if token.type != tokenize.STRING or token.start[0] != token.end[0] or body.startswith('"""'):
            continue
        if len(body) >= 2 and body[0] == body[-1] == '"' and "'" not in body and "\\" not in body:
            edits.append((token.start, token.end[1], text[: len(text) - len(body)] + "'" + body[1:-1] + "'"))
    for (row, start), end, new in reversed(edits):  # right to left within a line
        lines[row - 1] = lines[row - 1][:start] + new + lines[row - 1][end:]
    return "\n".join(lines) + "\n"


def without_standalone_imports(source: str) -> str:
    """SOURCE (Python) without its top-level ``if "<name>" not in globals(): ...`` blocks, by which a module of
    ``lib/`` imports the others when it runs on its own (tests, linters) and that never run in a document."""
    drop: set[int] = set()
    for node in ast.parse(source).body:
        test = node.test if isinstance(node, ast.If) else None
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Constant)
            and [type(op) for op in test.ops] == [ast.NotIn]
            and isinstance(test.comparators[0], ast.Call)
            and getattr(test.comparators[0].func, "id", None) == "globals"
            and not node.orelse
        ):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return "\n".join(line for number, line in enumerate(source.splitlines(), start=1) if number not in drop) + "\n"


def narrow_indents(source: str) -> str:
    """SOURCE (Python) indented by one space per block level instead of four, found by the tokenizer: the lines of a
    multi-line string stay as they are, continuation lines get one space more than their block."""
    lines = source.splitlines()
    fixed: set[int] = set()  # rows (1-based) inside a multi-line string, after its first
    indent: dict[int, int] = {}
    depth, string_start = 0, 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row = token.start[0]
        if token.type == tokenize.INDENT:
            depth += 1
        elif token.type == tokenize.DEDENT:
            depth -= 1
        elif token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER):
            continue
        if token.type == getattr(tokenize, "FSTRING_START", None):
            string_start = row
        ends = token.type == tokenize.STRING or token.type == getattr(tokenize, "FSTRING_END", None)
        if ends and (string_start or row) < token.end[0]:
            fixed.update(range((string_start or row) + 1, token.end[0] + 1))
        if ends:
            string_start = 0
        if token.type not in (tokenize.INDENT, tokenize.DEDENT) and row not in indent:
            indent[row] = depth
    out = []
    for row, line in enumerate(lines, start=1):
        if row in fixed or not line.strip():
            out.append(line)
        else:
            out.append(" " * indent.get(row, depth + 1) + line.lstrip())
    return "\n".join(out) + "\n"


def without_comments(source: str) -> str:
    """SOURCE (Python) without its comments, found by the tokenizer (never a ``#`` inside a string)."""
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col].rstrip()
    return "\n".join(lines) + "\n"


def without_docstrings(source: str) -> str:
    """SOURCE (Python) with every docstring's lines removed (``pass`` where it was the whole body). Only whole
    lines go, so the rest of the code stays byte for byte as written."""
    drop: set[int] = set()
    passes: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if not isinstance(body, list) or not body or not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
            continue
        first = body[0]
        own_line = isinstance(node, ast.Module) or first.lineno > node.lineno  # never a docstring on the def line
        if own_line and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            drop.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
            if len(body) == 1:
                passes[first.lineno] = " " * first.col_offset + "pass"
    out = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number in passes:
            out.append(passes[number])
        elif number not in drop:
            out.append(line)
    return "\n".join(out) + "\n"


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
    """``probe`` (read-only completion check, 60 s), ``checkpoint`` (signal, upload, manifest), ``restore``
    (download and verify a checkpoint, start the resume command) and ``preflight`` (would a stop succeed? sent by
    the operator's ``autostop preflight``, never by a function)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.probe = self._document(
            "Probe",
            "autostop: report whether the trainer has exited and whether its log shows completion (read-only)",
            "probe.sh",
            PROBE_PARAMETERS,
            timeout="60",
        )
        self.checkpoint = self._document(
            "Checkpoint",
            "autostop: signal the trainer, upload its newest complete checkpoint with S3-checked SHA-256 "
            "checksums, then write the manifest",
            "checkpoint.sh",
            CHECKPOINT_PARAMETERS,
        )
        self.restore = self._document(
            "Restore",
            "autostop: download a verified checkpoint with S3-checked SHA-256 checksums, verify it on the instance, "
            "move it into place without overwriting anything, then start the resume command",
            "restore.sh",
            RESTORE_PARAMETERS,
        )
        self.preflight = self._document(
            "Preflight",
            "autostop: would a stop succeed? (read-only; writes one small object under the instance's prefix)",
            "preflight.sh",
            PREFLIGHT_PARAMETERS,
            timeout="120",
        )
        for document in (self.probe, self.checkpoint, self.restore, self.preflight):
            document.name = content_name(Stack.of(self).stack_name, document)

    def _document(
        self, construct_id: str, description: str, script: str, parameters: dict[str, Any], *, timeout: str = "{{ executionTimeout }}"
    ) -> ssm.CfnDocument:
        """A Command document running ``script`` (one step named after it), new content as a new version."""
        content = command_content(description, script, parameters, step=script.removesuffix(".sh"), timeout=timeout)
        return ssm.CfnDocument(
            self, construct_id, document_type="Command", document_format="JSON", update_method="NewVersion", content=content
        )

    def arn(self, document: ssm.CfnDocument) -> str:
        stack = Stack.of(self)
        return stack.format_arn(service="ssm", resource="document", resource_name=document.ref)
