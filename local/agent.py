"""A simulated SSM agent fleet: SendCommand really runs the document's script on a simulated instance.

Each simulated instance is a folder (its "filesystem"), an agent that is online or offline, and the
processes started on it. For SendCommand the fleet does what SSM and its agent do:
* validates the document name, the parameters (unknown, missing, ``allowedPattern``) and the instance
  ids before anything is stored (``InvalidDocument`` / ``InvalidParameters`` / ``InvalidInstanceId``);
* for each instance: Pending → InProgress → Success / Failed / TimedOut, or DeliveryTimedOut when the
  agent is not online within the delivery timeout (capped; an agent still booting after a start gets the
  command once it is online); the script is written to ``_script.sh`` and run as ``sh -c <path>`` (so its
  shebang applies, as with the real agent), with every parameter as ``SSM_<Name>`` (interpolationType
  ENV_VAR), ``AWS_SSM_INSTANCE_ID`` and ``AWS_SSM_REGION_NAME``, the AWS CLI pointed at moto, and the
  machine's ``AUTOSTOP_STATE_DIR`` (``<root>/var/lib/autostop``) and ``AUTOSTOP_BOOT_TIME`` (epoch of
  its simulated boot), which the on-instance scripts honour in place of ``/var/lib/autostop`` and
  ``/proc/stat``'s ``btime``;
* keeps the first 24,000 characters of stdout and 8,000 of stderr (GetCommandInvocation) and 2,500 in
  ListCommandInvocations ``Details``, like the service.

It also answers DescribeInstanceInformation (PingStatus, the instance's ``agent_version``),
ListCommandInvocations and CancelCommand, which moto does not implement.

Two switches per instance serve ``autostop preflight`` and its tests: ``hidden_tools`` (command names such as
``aws`` or ``python3`` that its documents do not find on their PATH, as on an image without them), and
``instance_policy`` (its documents sign with credentials of their own, and S3 answers them as the stack's
instance policy would: only PutObject, GetObject(Version), AbortMultipartUpload and ListParts on keys under
``instances/<its instance ARN>/``; anything else is AccessDenied. moto enforces no IAM by itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from local.aws import ACCOUNT, REGION, LocalAws

SPAWN_LOCK = threading.Lock()
"""Held while a script file is written and while any process is started. Without it, a process forked by
another thread at the moment a script is being written inherits the open file, and exec'ing the script
then fails with ETXTBSY ("Text file busy")."""
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
DETAILS_LIMIT = 2_500
SIM_MARKER = "AUTOSTOP_SIM_INSTANCE_ID"
"""Environment variable naming the simulated instance a process runs on (how power-off finds them all)."""
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut", "Undeliverable", "Terminated"}
AGENT_VERSION = "3.3.2746.0"
"""The SSM Agent version DescribeInstanceInformation reports for a simulated instance (unless it says otherwise)."""


def host_boot_time() -> int:
    """The host kernel's boot time (``btime`` in /proc/stat), epoch seconds; now if it cannot be read."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return int(time.time())


@dataclass
class SimulatedInstance:
    """One EC2 instance's machine: a root folder (its disk), an agent, processes, and fault switches.

    Powered off (StopInstances/TerminateInstances), every process on it ends and the agent goes offline;
    powered on again (StartInstances), it keeps its disk, runs no process, and its agent (if it has one)
    comes online ``agent_boot_seconds`` later. ``boot_time`` is the epoch second of the last (simulated)
    boot: the scripts get it as ``AUTOSTOP_BOOT_TIME``, since the simulated machines share the host's kernel
    (whose ``btime`` it is until the first start).
    """

    instance_id: str
    name: str
    root: Path
    agent_online: bool = True
    faults: tuple[str, ...] = ()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    trainer: subprocess.Popen[bytes] | None = None
    running: bool = True
    has_agent: bool | None = None
    """Whether an agent is installed (comes online after each boot); defaults to ``agent_online``."""
    agent_boot_seconds: float = 2.0
    boot_time: int = field(default_factory=lambda: host_boot_time())
    """Epoch second of the machine's last boot: the host's own until the first StartInstances, so files
    written on the shared filesystem before a launch do not look older than the machine."""
    boots: int = 1
    """Power-ons so far (1 = the launch)."""
    agent_version: str = AGENT_VERSION
    """What DescribeInstanceInformation reports as its AgentVersion."""
    hidden_tools: tuple[str, ...] = ()
    """Commands its SSM documents do not find on their PATH (e.g. ``("aws",)``, ``("python3",)``)."""
    instance_policy: bool = False
    """Its documents' S3 requests are held to the stack's instance policy (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.has_agent is None:
            self.has_agent = self.agent_online

    @property
    def state_dir(self) -> Path:
        """``/var/lib/autostop`` on this machine (``AUTOSTOP_STATE_DIR`` for the scripts)."""
        return self.root / "var" / "lib" / "autostop"

    @property
    def resume_allowlist(self) -> Path:
        """``/etc/autostop/resume-commands`` on this machine (``AUTOSTOP_RESUME_ALLOWLIST`` for the scripts): the
        root-owned list of resume commands root may run (the simulated trainers run as root here)."""
        return self.root / "etc" / "autostop" / "resume-commands"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus what every process on this machine sees: its state dir, its boot time, its id, and where
        its resume-command allowlist is."""
        return {
            **base,
            "AUTOSTOP_STATE_DIR": str(self.state_dir),
            "AUTOSTOP_BOOT_TIME": str(self.boot_time),
            "AUTOSTOP_RESUME_ALLOWLIST": str(self.resume_allowlist),
            SIM_MARKER: self.instance_id,
        }

    def allow_resume_command(self, command: str) -> None:
        """What the machine's administrator does: put COMMAND in the root-owned allowlist (0755 dir, 0644 file)."""
        self.resume_allowlist.parent.mkdir(parents=True, exist_ok=True)
        self.resume_allowlist.parent.chmod(0o755)
        with self.resume_allowlist.open("a") as f:
            f.write(command + "\n")
        self.resume_allowlist.chmod(0o644)

    def start_process(self, argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        """Start a process on this instance (its own session, output to ``<root>/.sim/<log_name>``)."""
        sim = self.root / ".sim"
        sim.mkdir(parents=True, exist_ok=True)
        with SPAWN_LOCK, (sim / log_name).open("ab") as out:
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        # Reap it when it exits, so an exited trainer is not left as a zombie (init does this on a real host).
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{self.name}").start()
        return proc

    def power_off(self) -> None:
        """What StopInstances/TerminateInstances does to the machine: every process ends, the agent goes away.

        "Every process" includes those the scripts started detached in a session of their own (a resumed
        trainer): any process whose environment names this instance or whose working directory is on its disk.
        """
        self.running = False
        self.agent_online = False
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def power_on(self) -> None:
        """What StartInstances does: the machine boots with its disk and no process; the agent follows."""
        self.processes = []
        self.running = True
        self.agent_online = False
        self.boot_time = int(time.time())
        self.boots += 1
        boot = self.boots
        if self.has_agent:
            timer = threading.Timer(self.agent_boot_seconds, self._agent_started, args=(boot,))
            timer.daemon = True
            timer.start()

    def _agent_started(self, boot: int) -> None:
        if self.running and self.boots == boot:
            self.agent_online = True

    def pids(self) -> list[int]:
        """Live processes on this machine (see :meth:`power_off`), found in ``/proc``."""
        marker = f"{SIM_MARKER}={self.instance_id}".encode()
        root = str(self.root.resolve())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if marker in environ or cwd == root or cwd.startswith(root + os.sep):
                found.append(int(entry.name))
        return found


class InvalidRequest(Exception):
    pass


class AgentFleet:
    """Installs the SSM behaviour described in the module docstring into moto (for the life of ``aws``)."""

    def __init__(
        self,
        aws: LocalAws,
        *,
        delivery_timeout_cap: float = 3.0,
        execution_time_scale: float = 1.0,
        agent_boot_seconds: float | None = None,
    ) -> None:
        self.aws = aws
        self.agent_boot_seconds = agent_boot_seconds
        """If set, every added instance's agent takes this long to come online after a start."""
        self.instances: dict[str, SimulatedInstance] = {}
        self.delivery_timeout_cap = delivery_timeout_cap
        self.execution_time_scale = execution_time_scale
        self.sent: list[dict[str, Any]] = []
        """Every accepted SendCommand: document, instance ids, parameters (for tests and reports)."""
        self._lock = threading.Lock()
        self._install()
        aws.on_instances_stopped.append(self._powered_off)
        aws.on_instances_started.append(self._powered_on)

    def add(self, instance: SimulatedInstance) -> None:
        if self.agent_boot_seconds is not None:
            instance.agent_boot_seconds = self.agent_boot_seconds
        self.instances[instance.instance_id] = instance

    def _powered_off(self, ids: list[str]) -> None:
        for iid in ids:
            if iid in self.instances:
                self.instances[iid].power_off()

    def _powered_on(self, ids: list[str]) -> None:
        for iid in ids:
            if iid in self.instances:
                self.instances[iid].power_on()

    # --- moto integration ----------------------------------------------------------------------------------

    def _install(self) -> None:
        from moto.core.exceptions import JsonRESTError
        from moto.core.responses import ActionResult
        from moto.ssm.models import Command, SimpleSystemManagerBackend
        from moto.ssm.responses import SimpleSystemManagerResponse

        fleet = self
        original_send = SimpleSystemManagerBackend.send_command
        original_targets = Command._get_instance_ids_from_targets

        def send_command(backend: Any, **kwargs: Any) -> Any:
            try:
                document = fleet._validate(backend, kwargs)
            except InvalidRequest as exc:
                code, _, message = str(exc).partition(": ")
                raise JsonRESTError(code, message) from None
            command = original_send(backend, **kwargs)
            fleet._launch(command, document, kwargs.get("parameters") or {}, kwargs.get("timeout_seconds") or 3600)
            return command

        def targets_only_when_given(command: Any) -> list[str]:  # moto adds every instance when Targets is empty
            return original_targets(command) if command.targets else []

        def list_command_invocations(resp: Any) -> Any:
            command_id = resp._get_param("CommandId")
            instance_id = resp._get_param("InstanceId")
            details = bool(resp._get_param("Details", False))
            backend = resp.ssm_backend
            commands = [backend.get_command_by_id(command_id)] if command_id else list(backend._commands)
            out = []
            for command in commands:
                for inv in command.invocations:
                    if instance_id and inv["InstanceId"] != instance_id:
                        continue
                    out.append(fleet._invocation_summary(command, inv, details))
            return ActionResult({"CommandInvocations": out})

        def describe_instance_information(resp: Any) -> Any:
            wanted: set[str] | None = None
            pings: set[str] | None = None
            for flt in resp._get_param("Filters") or []:
                if flt.get("Key") == "InstanceIds":
                    wanted = set(flt.get("Values", []))
                elif flt.get("Key") == "PingStatus":
                    pings = set(flt.get("Values", []))
            for flt in resp._get_param("InstanceInformationFilterList") or []:
                if flt.get("key") == "InstanceIds":
                    wanted = set(flt.get("valueSet", []))
            info = [
                {
                    "InstanceId": iid,
                    "PingStatus": "Online" if inst.agent_online and inst.running else "ConnectionLost",
                    "PlatformType": "Linux",
                    "PlatformName": "Simulated",
                    "AgentVersion": inst.agent_version,
                    "ResourceType": "EC2Instance",
                    "ComputerName": inst.name,
                }
                for iid, inst in fleet.instances.items()
                if wanted is None or iid in wanted
            ]
            info = [i for i in info if pings is None or i["PingStatus"] in pings]
            return ActionResult({"InstanceInformationList": info})

        def cancel_command(resp: Any) -> Any:
            command = resp.ssm_backend.get_command_by_id(resp._get_param("CommandId"))
            for inv in command.invocations:
                if inv["Status"] not in TERMINAL:
                    inv.update(Status="Cancelled", StatusDetails="Cancelled")
                    fleet._ended(command, inv)
            fleet._aggregate(command)
            return ActionResult({})

        self.aws.patch(SimpleSystemManagerBackend, "send_command", send_command)
        self.aws.patch(Command, "_get_instance_ids_from_targets", targets_only_when_given)
        self.aws.patch(SimpleSystemManagerResponse, "list_command_invocations", list_command_invocations)
        self.aws.patch(SimpleSystemManagerResponse, "describe_instance_information", describe_instance_information)
        self.aws.patch(SimpleSystemManagerResponse, "cancel_command", cancel_command)
        self._install_instance_policy()

    # --- the instance policy, for instances with ``instance_policy`` ---------------------------------------

    def access_key(self, instance: SimulatedInstance) -> str:
        """The access key id INSTANCE's documents sign with (20 characters, as moto's parser expects)."""
        key = "ASIA" + instance.instance_id.removeprefix("i-").upper().rjust(16, "0")[-16:]
        self._policy_prefixes[key] = f"instances/arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance.instance_id}/"
        return key

    def _install_instance_policy(self) -> None:
        from moto.s3.exceptions import S3ClientError
        from moto.s3.responses import S3Response

        self._policy_prefixes: dict[str, str] = {}
        fleet = self
        original_key = S3Response._key_response
        original_bucket = S3Response._bucket_response

        def denied(resp: Any, what: str) -> S3ClientError:
            return S3ClientError("AccessDenied", f"User: {resp.get_access_key()} is not authorized to perform: {what} (instance policy)")

        def key_response(resp: Any, request: Any, full_url: str) -> Any:
            prefix = fleet._policy_prefixes.get(resp.get_access_key())
            if prefix is not None:
                key = resp.parse_key_name()
                query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
                copy = request.headers.get("x-amz-copy-source", "")
                if request.method == "DELETE":
                    allowed = "uploadId" in query  # AbortMultipartUpload; never DeleteObject
                else:
                    sub = {"acl", "tagging", "retention", "legal-hold"}
                    allowed = request.method in ("GET", "HEAD", "PUT", "POST") and not set(query) & sub
                bucket = resp.parse_bucket_name_from_url(request, full_url)
                if not key.startswith(prefix) or not allowed or (copy and not copy.lstrip("/").startswith(f"{bucket}/{prefix}")):
                    raise denied(resp, f"{request.method} s3://{bucket}/{key}")
            return original_key(resp, request, full_url)

        def bucket_response(resp: Any, request: Any, full_url: str) -> Any:
            if resp.get_access_key() in fleet._policy_prefixes:
                raise denied(resp, f"{request.method} {urlparse(full_url).path}")  # nothing on a bucket, no ListBucket
            return original_bucket(resp, request, full_url)

        self.aws.patch(S3Response, "_key_response", key_response)
        self.aws.patch(S3Response, "_bucket_response", bucket_response)

    def _validate(self, backend: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        name = kwargs.get("document_name") or ""
        try:
            raw = backend.get_document(name, None, None, "JSON")
        except Exception:
            raise InvalidRequest(f"InvalidDocument: document {name} does not exist") from None
        document = json.loads(raw["Content"])
        declared: dict[str, Any] = document.get("parameters", {})
        given: dict[str, list[str]] = kwargs.get("parameters") or {}
        for key, values in given.items():
            if key not in declared:
                raise InvalidRequest(f"InvalidParameters: parameter {key} is not declared by document {name}")
            if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
                raise InvalidRequest(f"InvalidParameters: parameter {key} must be one string")
            pattern = declared[key].get("allowedPattern")
            if pattern and not re.fullmatch(pattern, values[0]):
                raise InvalidRequest(f"InvalidParameters: parameter {key} fails allowedPattern {pattern}")
        missing = [k for k, spec in declared.items() if k not in given and "default" not in spec]
        if missing:
            raise InvalidRequest(f"InvalidParameters: missing required parameters {', '.join(missing)}")
        ids = kwargs.get("instance_ids") or []
        unknown = [i for i in ids if i not in self.instances]
        if unknown:
            raise InvalidRequest(f"InvalidInstanceId: instances {unknown} are not managed by SSM")
        return document

    def _launch(self, command: Any, document: dict[str, Any], given: dict[str, list[str]], delivery_timeout: int) -> None:
        step = document["mainSteps"][0]
        params = {k: spec.get("default", "") for k, spec in document.get("parameters", {}).items()}
        params.update({k: v[0] for k, v in given.items()})
        timeout = step["inputs"].get("timeoutSeconds", "3600")
        if isinstance(timeout, str) and timeout.startswith("{{"):
            timeout = params[timeout.strip("{} ")]
        script = "\n".join(step["inputs"]["runCommand"]) + "\n"
        env_params = {f"SSM_{k}": v for k, v in params.items() if document["parameters"][k].get("interpolationType") == "ENV_VAR"}
        with self._lock:
            self.sent.append(
                {
                    "command_id": command.command_id,
                    "document": command.document_name,
                    "instance_ids": list(command.instance_ids),
                    "parameters": params,
                }
            )
        command.status = "InProgress"
        command.status_details = "InProgress"
        for inv in command.invocations:
            inv.update(
                Status="Pending",
                StatusDetails="Pending",
                PluginName=step["name"],
                ResponseCode=-1,
                StandardOutputContent="",
                StandardErrorContent="",
                ExecutionStartDateTime="",
                ExecutionEndDateTime="",
                ExecutionElapsedTime="",
            )
            instance = self.instances[inv["InstanceId"]]
            threading.Thread(
                target=self._run,
                args=(command, inv, instance, script, env_params, float(timeout), float(delivery_timeout)),
                daemon=True,
                name=f"ssm-{instance.name}",
            ).start()

    def _run(
        self,
        command: Any,
        inv: dict[str, Any],
        instance: SimulatedInstance,
        script: str,
        env_params: dict[str, str],
        timeout: float,
        delivery: float,
    ) -> None:
        # SSM holds the command until the agent is online (it may be booting), up to the delivery timeout.
        deadline = time.monotonic() + min(delivery, self.delivery_timeout_cap)
        while not (instance.agent_online and instance.running) and time.monotonic() < deadline and inv["Status"] == "Pending":
            time.sleep(0.05)
        if not (instance.agent_online and instance.running) or inv["Status"] != "Pending":
            if inv["Status"] == "Pending":
                inv.update(Status="DeliveryTimedOut", StatusDetails="DeliveryTimedOut")
                self._ended(command, inv)
            self._aggregate(command)
            return
        workdir = instance.root / ".sim" / "ssm" / command.command_id
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "_script.sh"
        env = self.aws.subprocess_env()
        if instance.hidden_tools:
            env["PATH"] = str(self._path_without(instance, env["PATH"]))
        if instance.faults:
            fault_bin = self._fault_bin(instance)
            for name in instance.hidden_tools:
                (fault_bin / name).unlink(missing_ok=True)
            env["PATH"] = str(fault_bin) + os.pathsep + env["PATH"]
            env["AUTOSTOP_SIM_FAULTS"] = ",".join(instance.faults)
        if instance.instance_policy:
            env["AWS_ACCESS_KEY_ID"] = self.access_key(instance)
        env.update(env_params)
        env.update({"AWS_SSM_INSTANCE_ID": instance.instance_id, "AWS_SSM_REGION_NAME": REGION, "HOME": str(instance.root)})
        env = instance.env(env)
        started = datetime.now(UTC)
        inv.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=started.isoformat())
        with SPAWN_LOCK:
            path.write_text(script)
            path.chmod(0o700)
            proc = subprocess.Popen(
                ["sh", "-c", str(path)], cwd=instance.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
        instance.processes.append(proc)  # type: ignore[arg-type]
        try:
            out, err = proc.communicate(timeout=timeout * self.execution_time_scale)
            status = "Success" if proc.returncode == 0 else "Failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            status = "TimedOut"
        if not instance.running and status != "Success":
            status = "Terminated" if status != "Failed" else status
        ended = datetime.now(UTC)
        inv.update(
            Status=status,
            StatusDetails=status,
            ResponseCode=proc.returncode if status != "TimedOut" else -1,
            StandardOutputContent=out.decode(errors="replace")[:STDOUT_LIMIT],
            StandardErrorContent=err.decode(errors="replace")[:STDERR_LIMIT],
            ExecutionEndDateTime=ended.isoformat(),
            ExecutionElapsedTime=f"PT{(ended - started).total_seconds():.3f}S",
        )
        self._aggregate(command)
        self._ended(command, inv)

    def _ended(self, command: Any, inv: dict[str, Any]) -> None:
        """SSM's "EC2 Command Invocation Status-change Notification" for an invocation that ended (SSM sends Run
        Command status changes to EventBridge directly); :attr:`LocalAws.event_copies` may lose or repeat it."""
        iid = inv["InstanceId"]
        detail = {
            "command-id": command.command_id,
            "document-name": command.document_name,
            "instance-id": iid,
            "requested-date-time": command.requested_date_time.isoformat(),
            "status": inv["Status"],
        }
        try:
            self.aws.put_event(
                "aws.ssm",
                "EC2 Command Invocation Status-change Notification",
                detail,
                resources=[f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{iid}"],
            )
        except Exception as exc:  # best effort, as on AWS: the sweep's fallback settles it
            self.aws.lambdas.errors.append(f"command status event for {command.command_id}: {type(exc).__name__}: {exc}")

    def _aggregate(self, command: Any) -> None:
        statuses = [inv["Status"] for inv in command.invocations]
        if all(s in TERMINAL for s in statuses):
            failed = [s for s in statuses if s != "Success"]
            command.status = "Success" if not failed else ("Failed" if "Failed" in failed else failed[0])
            command.error_count = len(failed)
            command.completed_count = len(statuses)
        else:
            command.status = "InProgress"
        command.status_details = command.status

    @staticmethod
    def _invocation_summary(command: Any, inv: dict[str, Any], details: bool) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "CommandId": command.command_id,
            "InstanceId": inv["InstanceId"],
            "DocumentName": command.document_name,
            "Comment": command.comment,
            "RequestedDateTime": command.requested_date_time.isoformat(),
            "Status": inv["Status"],
            "StatusDetails": inv["StatusDetails"],
        }
        if details:
            summary["CommandPlugins"] = [
                {
                    "Name": inv.get("PluginName", ""),
                    "Status": inv["Status"],
                    "StatusDetails": inv["StatusDetails"],
                    "ResponseCode": inv.get("ResponseCode", -1),
                    "Output": (inv.get("StandardOutputContent") or "")[:DETAILS_LIMIT],
                }
            ]
        return summary

    def _fault_bin(self, instance: SimulatedInstance) -> Path:
        """A directory whose ``aws`` wraps the real CLI and applies the instance's faults (see local/faults.sh)."""
        bin_dir = instance.root / ".sim" / "fault-bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        shim = bin_dir / "aws"
        shim.write_text((Path(__file__).parent / "faults.sh").read_text())
        shim.chmod(0o755)
        sdk_python_shim(bin_dir)
        return bin_dir

    @staticmethod
    def _path_without(instance: SimulatedInstance, path: str) -> Path:
        """One directory standing in for PATH: every command found on PATH (the first of each name) but
        ``instance.hidden_tools``. Commands of this virtualenv are wrappers that exec them by their own path
        (so that python3 keeps its virtualenv); the others are symbolic links. Built once per set of hidden tools
        (in a temporary directory, then renamed), so that commands running at the same time share it."""
        farm = instance.root / ".sim" / ("path-without-" + "-".join(sorted(instance.hidden_tools)))
        if farm.is_dir():
            return farm
        farm.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".path-", dir=farm.parent))
        venv_bin = Path(sys.executable).parent
        for directory in (Path(d) for d in path.split(os.pathsep) if d):
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                target = building / entry.name
                if entry.name in instance.hidden_tools or target.exists() or target.is_symlink() or not os.access(entry, os.X_OK):
                    continue
                if directory == venv_bin:
                    target.write_text(f'#!/bin/sh\nexec "{entry}" "$@"\n')
                    target.chmod(0o755)
                else:
                    target.symlink_to(entry)
        try:
            building.rename(farm)
        except OSError:  # another command built it meanwhile
            shutil.rmtree(building, ignore_errors=True)
        return farm


def sdk_python_shim(bin_dir: Path) -> Path:
    """``BIN_DIR/python3``: this interpreter running local/sdk_faults.py, so the documents' one-process data path
    meets the same faults as the AWS CLI (AUTOSTOP_SIM_FAULTS, AUTOSTOP_SDK_FAULT)."""
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).parent / "sdk_faults.py"}" "$@"\n')
    shim.chmod(0o755)
    return shim
