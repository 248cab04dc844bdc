"""autostop's on-instance program, subcommand ``preflight`` (``main_preflight``; stdlib, plus botocore when this
python3 has it): ``infra/documents/preflight.sh``'s checks.

Pasted after ``lib/instance.py``, ``lib/selection.py``, ``lib/transfer.py`` and ``lib/s3cli.py`` (and before
``lib/dispatch.py``), so each check runs the checkpoint command's own code: the same reading of the PID file
(``pid_is_trainer``), the same S3 client choice (``sdk()``:
botocore, else the AWS CLI through ``CliS3``), the same PutObject with the same checksum (CRC32 or SHA-256), the same ``select()``
and the same messages (``no_checkpoint``, ``summary``). Nothing on the instance is changed; in S3 one small object
is written under the instance's own prefix, and one write just outside it is attempted (the instance policy must
refuse it).
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

if "select" not in globals():  # run on its own (tests, linters); the document pastes the checkpoint's helpers above
    from instance import (
        SYSTEM_HINT,
        Fail,
        aws_environment,
        check_all,
        check_segments,
        param,
        pid_file_stale,
        pid_is_trainer,
        read_pid,
        require,
        system_location,
    )
    from s3cli import CliError, CliS3, checksum_algorithm, version_id
    from selection import describe_rejected, no_checkpoint, saving_now, select, show, summary
    from transfer import HASHES, b64, client, sdk


def denied(exc):
    """Was the call refused (IAM, a bucket policy)? botocore's ClientError and the AWS CLI both say
    ``An error occurred (<Code>) when calling ...``."""
    return re.search(r"\((AccessDenied|AllAccessDisabled|Forbidden|403)\)", str(exc)) is not None


def entry(name, status, message, **extra):
    return dict({"name": name, "status": status, "message": message[:1500]}, **extra)


def caller_identity(mods):
    """The ARN the instance's credentials resolve to (sts GetCallerIdentity needs no IAM permission)."""
    if mods:
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ.get("AWS_ENDPOINT_URL") or None
        config = mods[1].Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 3})
        sts = mods[0].Session().create_client("sts", region_name=region, endpoint_url=endpoint, config=config)
        return sts.get_caller_identity()["Arn"]
    args = ["aws", "--output", "json", "--cli-connect-timeout", "10", "sts", "get-caller-identity"]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        raise CliError(lines[-1] if lines else "the AWS CLI exited with an error")
    return json.loads(proc.stdout.decode("utf-8"))["Arn"]


def test_put(s3, bucket, key, body, work):
    """PutObject of BODY at KEY with its checksum (``checksum_algorithm``), as the checkpoint command puts a file;
    S3's response."""
    path = os.path.join(work, "preflight.json")
    with open(path, "wb") as f:
        f.write(body)
    algorithm = checksum_algorithm()
    return s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=path if isinstance(s3, CliS3) else body,
        ContentType="application/json",
        ChecksumAlgorithm=algorithm,
        **{"Checksum" + algorithm: b64(HASHES[algorithm](body).digest())},
    )


def s3_checks(bucket, prefix, work):
    """(transfer, [credentials, own_prefix, isolation]) through the client the checkpoint command would use."""
    mods = sdk()
    transfer = "sdk" if mods else "cli"
    if not mods and shutil.which("aws") is None:
        why = "no botocore for python3 and no AWS CLI: the checkpoint command cannot reach S3"
        return None, [entry(name, "fail", why) for name in ("credentials", "own_prefix", "isolation")]
    s3, errors = (client(mods, 1), mods[2]) if mods else (CliS3(work), CliS3)
    failures = (errors.BotoCoreError, errors.ClientError, CliError, OSError, ValueError, KeyError)
    out = []
    try:
        arn = caller_identity(mods)
        out.append(entry("credentials", "pass", f"credentials work: {arn}", arn=arn))
    except failures as exc:
        out.append(entry("credentials", "fail", f"no working credentials ({exc}): associate an instance profile"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"preflight/{now}-{os.urandom(4).hex()}.json"
    body = (json.dumps({"preflight": 1, "time": now, "prefix": prefix}) + "\n").encode()
    key = prefix + name
    try:
        vid = version_id(test_put(s3, bucket, key, body, work))
        if vid is None:
            why = "no VersionId: the bucket is not versioned, and Verify needs the manifest's version; turn versioning on"
            out.append(entry("own_prefix", "fail", f"wrote s3://{bucket}/{key} but {why}", key=key, version_id=None))
        else:
            out.append(entry("own_prefix", "pass", f"wrote s3://{bucket}/{key} (VersionId {vid}) via {transfer}", key=key, version_id=vid))
    except failures as exc:
        hint = "attach the stack's InstancePolicyArn to the instance role" if denied(exc) else "check the route to S3"
        out.append(entry("own_prefix", "fail", f"cannot write s3://{bucket}/{key} ({exc}): {hint}", key=key, version_id=None))
    outside = prefix.rstrip("/") + "-preflight-isolation/" + name
    try:
        resp = test_put(s3, bucket, outside, body, work)
    except failures as exc:
        if denied(exc):
            out.append(entry("isolation", "pass", f"a write outside its prefix (s3://{bucket}/{outside}) was refused"))
        else:
            out.append(entry("isolation", "fail", f"a write outside its prefix failed but was not refused ({exc})"))
        return transfer, out
    removed = "not deleted"
    try:
        kwargs = {"VersionId": version_id(resp)} if version_id(resp) else {}
        s3.delete_object(Bucket=bucket, Key=outside, **kwargs)
        removed = "deleted again"
    except failures:
        pass
    why = "its role has more S3 rights than InstancePolicyArn (it could overwrite other instances' checkpoints): remove them"
    out.append(entry("isolation", "fail", f"wrote s3://{bucket}/{outside}, outside its prefix ({removed}): {why}"))
    return transfer, out


def checkpoint_check(ckdir, save_on_signal, blocked):
    """Which checkpoint the checkpoint command would choose now (``select``), and why; or why none."""
    if blocked:
        return entry("checkpoint", "fail", blocked)
    try:
        found = select(ckdir)
    except Fail as exc:
        return entry("checkpoint", "fail", f"{exc}")
    chosen = found["chosen"]
    if chosen is None:
        if save_on_signal == "true":
            return entry("checkpoint", "pass", f"save-on-signal: the trainer saves when signalled; now {no_checkpoint(ckdir, found)}")
        saving = " A save is in progress: run the preflight again later." if saving_now(found) else ""
        return entry("checkpoint", "fail", f"{no_checkpoint(ckdir, found)}.{saving}")
    choice = dict(chosen, name=show(chosen["name"]), rejected=describe_rejected(found["rejected"]))
    text = f"would upload {os.path.join(ckdir, choice['name'])}: {summary(choice)}"
    if found["open_check"]:
        text += f" (note: {found['open_check']})"
    return entry("checkpoint", "pass", text, checkpoint=choice["name"], step=chosen["step"], step_source=chosen["step_source"])


def preflight_line(results, python, bucket, prefix, ckdir, save_on_signal, blocked):
    """The result line: RESULTS (the tools' and the trainer's checks), python3 (PYTHON: version and path), then S3's
    and the checkpoint's."""
    results.append(entry("python3", "pass", f"python3 {python} runs the checkpoint helper"))
    work = tempfile.mkdtemp(prefix="autostop-preflight-")
    try:
        transfer, s3_results = s3_checks(bucket, prefix, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.extend(s3_results)
    results.append(checkpoint_check(ckdir, save_on_signal, blocked))
    ok = all(r["status"] != "fail" for r in results)
    return json.dumps({"preflight": 1, "ok": ok, "transfer": transfer, "checks": results}, separators=(",", ":"))


INSTANCE_PREFIX = (r"^instances/arn:[a-z-]+:ec2:[a-z0-9-]+:[0-9]{12}:instance/i-[0-9a-f]{8,17}/$", "expected instances/<ARN>/")


def main_preflight():
    """``preflight``: would a stop of this instance succeed now? The preflight document's contract
    (infra/documents/preflight.sh); returns the result line."""
    variables = ["SSM_Bucket", "SSM_InstancePrefix", "SSM_CheckpointDir", "SSM_PidFile"]
    require(variables)
    check_all(variables + ["SSM_SaveOnSignal"], {"InstancePrefix": INSTANCE_PREFIX})
    check_segments("CheckpointDir", "path")
    check_segments("PidFile", "path")
    instance_id = os.environ.get("AWS_SSM_INSTANCE_ID")
    if instance_id and not param("InstancePrefix").endswith(f"/{instance_id}/"):
        raise Fail("InvalidParameter", f"InstancePrefix does not name {instance_id}")
    aws_environment()
    ckdir = param("CheckpointDir")
    blocked = f"checkpoint-dir {ckdir} is a system location, which the checkpoint refuses: {SYSTEM_HINT}" if system_location(ckdir) else ""
    python = "{}.{}.{} at {}".format(*sys.version_info[:3], shutil.which("python3") or sys.executable)
    checks = [aws_cli_check(), trainer_check()]
    return preflight_line(checks, python, param("Bucket"), param("InstancePrefix"), ckdir, param("SaveOnSignal"), blocked)


def aws_cli_check():
    """Is the AWS CLI on the PATH of SSM commands, and which version?"""
    path = shutil.which("aws")
    if path is None:
        return entry(
            "aws_cli",
            "fail",
            "the AWS CLI (aws) is not on the PATH of SSM commands: install the AWS CLI v2 (the checkpoint command needs it)",
        )
    try:
        proc = subprocess.run(["aws", "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        version = proc.stdout.decode("utf-8", "replace").split("\n")[0] if proc.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        version = ""
    if version.startswith("aws-cli/"):
        return entry("aws_cli", "pass", f"{version.split(' ')[0]} at {path}")
    return entry("aws_cli", "fail", f"{path} reports no AWS CLI version ({version[:200]}): reinstall the AWS CLI v2")


def trainer_check():
    """The PID file read exactly as the checkpoint command reads it (``stop_trainer``)."""
    pid_file = param("PidFile")
    if not pid_file:
        return entry("trainer", "skip", "no autostop:pid-file tag: nothing is signalled, what is on disk is uploaded")
    if not os.path.lexists(pid_file):
        return entry(
            "trainer", "fail", f"PID file {pid_file} does not exist: make the trainer write its pid there, or fix the autostop:pid-file tag"
        )
    pid = read_pid(pid_file)
    if pid is None:
        return entry("trainer", "fail", f"PID file {pid_file} holds no process id: make the trainer write only its pid there")
    if pid_file_stale(pid_file):
        return entry("trainer", "fail", f"PID file {pid_file} is from an earlier boot: start the trainer so that it rewrites it")
    status, why, _ = pid_is_trainer(pid, pid_file)
    if status == 0:
        text = "is the trainer (alive, the file's owner, started before the file was written)"
    elif status == 2:
        text = f"is not provably the trainer ({why}): the checkpoint would fail TrainerUnverified; rewrite the PID file from the trainer"
    else:
        text = "is not running: the trainer has exited or the file is stale; start the trainer or fix the tag"
    return entry("trainer", "pass" if status == 0 else "fail", f"pid {pid} from {pid_file} {text}")


def main_select(ckdir):
    """``select DIR`` (an operator's question, not a document's): the checkpoint the checkpoint command would choose
    in DIR now, as one JSON line {"result":"selected","checkpoint","step","step_source","rule","rejected"}; else
    NoCheckpoint with what was rejected and why."""
    found = select(ckdir)
    chosen = found["chosen"]
    if chosen is None:
        raise Fail(3, no_checkpoint(ckdir, found))
    fields = {k: chosen[k] for k in ("step", "step_source", "rule")}
    return json.dumps(dict(result="selected", checkpoint=show(chosen["name"]), rejected=describe_rejected(found["rejected"]), **fields))
