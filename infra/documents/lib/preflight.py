"""autostop preflight document: the python3 half of ``infra/documents/preflight.sh`` (stdlib, plus botocore when this
python3 has it).

Pasted after ``lib/selection.py``, ``lib/transfer.py`` and ``lib/checkpoint_helper.py`` (and before
``lib/dispatch.py``), so each check runs the checkpoint command's own code: the same S3 client choice (``sdk()``:
botocore, else the AWS CLI through ``CliS3``), the same PutObject with a SHA-256 checksum, the same ``select()``
and the same messages (``no_checkpoint``, ``summary``). Nothing on the instance is changed; in S3 one small object
is written under the instance's own prefix, and one write just outside it is attempted (the instance policy must
refuse it).
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

if "select" not in globals():  # run on its own (tests, linters); the document pastes the checkpoint's helpers above
    from checkpoint_helper import CliError, CliS3, b64, no_checkpoint, summary, version_id
    from selection import Fail, describe_rejected, saving_now, select, show
    from transfer import client, sdk


def denied(exc):
    """Was the call refused (IAM, a bucket policy)? botocore's ClientError and the AWS CLI both say
    ``An error occurred (<Code>) when calling ...``."""
    return re.search(r"\((AccessDenied|AllAccessDisabled|Forbidden|403)\)", str(exc)) is not None


def check(name, status, message, **extra):
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
    """PutObject of BODY at KEY with its SHA-256, as the checkpoint command puts a file; S3's response."""
    path = os.path.join(work, "preflight.json")
    with open(path, "wb") as f:
        f.write(body)
    return s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=path if isinstance(s3, CliS3) else body,
        ContentType="application/json",
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=b64(hashlib.sha256(body).digest()),
    )


def s3_checks(bucket, prefix, work):
    """(transfer, [credentials, own_prefix, isolation]) through the client the checkpoint command would use."""
    mods = sdk()
    transfer = "sdk" if mods else "cli"
    if not mods and shutil.which("aws") is None:
        why = "no botocore for python3 and no AWS CLI: the checkpoint command cannot reach S3"
        return None, [check(name, "fail", why) for name in ("credentials", "own_prefix", "isolation")]
    s3, errors = (client(mods, 1), mods[2]) if mods else (CliS3(work), CliS3)
    failures = (errors.BotoCoreError, errors.ClientError, CliError, OSError, ValueError, KeyError)
    out = []
    try:
        arn = caller_identity(mods)
        out.append(check("credentials", "pass", f"credentials work: {arn}", arn=arn))
    except failures as exc:
        out.append(check("credentials", "fail", f"no working credentials ({exc}): associate an instance profile"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"preflight/{now}-{os.urandom(4).hex()}.json"
    body = (json.dumps({"preflight": 1, "time": now, "prefix": prefix}) + "\n").encode()
    key = prefix + name
    try:
        vid = version_id(test_put(s3, bucket, key, body, work))
        if vid is None:
            why = "no VersionId: the bucket is not versioned, and Verify needs the manifest's version; turn versioning on"
            out.append(check("own_prefix", "fail", f"wrote s3://{bucket}/{key} but {why}", key=key, version_id=None))
        else:
            out.append(check("own_prefix", "pass", f"wrote s3://{bucket}/{key} (VersionId {vid}) via {transfer}", key=key, version_id=vid))
    except failures as exc:
        hint = "attach the stack's InstancePolicyArn to the instance role" if denied(exc) else "check the route to S3"
        out.append(check("own_prefix", "fail", f"cannot write s3://{bucket}/{key} ({exc}): {hint}", key=key, version_id=None))
    outside = prefix.rstrip("/") + "-preflight-isolation/" + name
    try:
        resp = test_put(s3, bucket, outside, body, work)
    except failures as exc:
        if denied(exc):
            out.append(check("isolation", "pass", f"a write outside its prefix (s3://{bucket}/{outside}) was refused"))
        else:
            out.append(check("isolation", "fail", f"a write outside its prefix failed but was not refused ({exc})"))
        return transfer, out
    removed = "not deleted"
    try:
        kwargs = {"VersionId": version_id(resp)} if version_id(resp) else {}
        s3.delete_object(Bucket=bucket, Key=outside, **kwargs)
        removed = "deleted again"
    except failures:
        pass
    why = "its role has more S3 rights than InstancePolicyArn (it could overwrite other instances' checkpoints): remove them"
    out.append(check("isolation", "fail", f"wrote s3://{bucket}/{outside}, outside its prefix ({removed}): {why}"))
    return transfer, out


def checkpoint_check(ckdir, save_on_signal, blocked):
    """Which checkpoint the checkpoint command would choose now (``select``), and why; or why none."""
    if blocked:
        return check("checkpoint", "fail", blocked)
    try:
        found = select(ckdir)
    except Fail as exc:
        return check("checkpoint", "fail", f"{exc}")
    chosen = found["chosen"]
    if chosen is None:
        if save_on_signal == "true":
            return check("checkpoint", "pass", f"save-on-signal: the trainer saves when signalled; now {no_checkpoint(ckdir, found)}")
        saving = " A save is in progress: run the preflight again later." if saving_now(found) else ""
        return check("checkpoint", "fail", f"{no_checkpoint(ckdir, found)}.{saving}")
    choice = dict(chosen, name=show(chosen["name"]), rejected=describe_rejected(found["rejected"]))
    text = f"would upload {os.path.join(ckdir, choice['name'])}: {summary(choice)}"
    if found["open_check"]:
        text += f" (note: {found['open_check']})"
    return check("checkpoint", "pass", text, checkpoint=choice["name"], step=chosen["step"], step_source=chosen["step_source"])


def cmd_preflight(checks, python, bucket, prefix, ckdir, save_on_signal, blocked):
    """Print the result line: the shell's checks (CHECKS, JSON), python3 (PYTHON: version and path), then S3's and
    the checkpoint's."""
    results = json.loads(checks)
    results.append(check("python3", "pass", f"python3 {python} runs the checkpoint helper"))
    work = tempfile.mkdtemp(prefix="autostop-preflight-")
    try:
        transfer, s3_results = s3_checks(bucket, prefix, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.extend(s3_results)
    results.append(checkpoint_check(ckdir, save_on_signal, blocked))
    ok = all(r["status"] != "fail" for r in results)
    print(json.dumps({"preflight": 1, "ok": ok, "transfer": transfer, "checks": results}, separators=(",", ":")))
