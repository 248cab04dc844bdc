"""autostop checkpoint document: the python3 helper's subcommands (stdlib only).

``infra/documents/checkpoint.sh`` carries this file, after ``lib/selection.py``, as one ``python3 -I -c``
program and runs ``<subcommand> ARGS...``. Exit status: 0 ok; 3 NoCheckpoint, 4 UploadFailed, 5
ManifestFailed, 6 a file changed during the checkpoint (UploadFailed, which a re-selection may cure); the
message is then the only stdout line. Anything else is a bug (ScriptFailed).
"""

import base64
import datetime
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

if "select" not in globals():  # run on its own (tests, linters); the document pastes lib/selection.py above
    from selection import CONTROL_CHARS_RE, Fail, describe_rejected, listing, saving_now, select, show
if "Pool" not in globals():  # likewise lib/transfer.py
    from transfer import MAX_OBJECT_SIZE, Pool, client, composite, file_part_size, part_ranges, pool_size, pread_exact, sdk, sdk_available

CHUNK = 8 * 1024 * 1024


def b64(digest):
    return base64.b64encode(digest).decode("ascii")


def iso(ns):
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(message):
    print(f"checkpoint: {message}", file=sys.stderr)


def identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def changed(path, detail):
    return (
        f"file {show(path)} changed during the checkpoint ({detail}); make sure nothing, the trainer included, "
        "writes to or rotates the checkpoint directory while autostop uploads it"
    )


NO_CHECKPOINT_HINT = (
    "A checkpoint is a file or a directory of files whose name carries its step number (step-100, "
    "checkpoint-100, epoch=2-step=260.ckpt) or, for a torch.save/Lightning file, whose contents do, that no "
    "process is still writing and whose framework's files are all there"
)


def no_checkpoint(ckdir, found):
    if not found["candidates"]:
        return f"no complete checkpoint in {ckdir}: it is empty. {NO_CHECKPOINT_HINT}"
    return f"no complete checkpoint in {ckdir}: rejected {listing(found['rejected'])}. {NO_CHECKPOINT_HINT}"


def summary(choice):
    """One line: what was chosen, its step and rule, and the newest rejected entry with its reason."""
    text = f"chose {choice['name']} (step {choice['step']}, {choice['rule']})"
    newer = [r for r in choice["rejected"] if (r["step"] if r["step"] is not None else -1) >= (choice["step"] or 0)]
    if newer:
        text += f"; rejected {newer[0]['name']} ({newer[0]['reason']})"
        if len(newer) > 1:
            text += f" and {len(newer) - 1} more"
    return text[:600]


def cmd_precheck(ckdir, last_try):
    """Before the trainer is signalled (Mode stop): print ``ready`` when a complete checkpoint exists, ``saving``
    when none does but a save is in progress (the caller waits and asks again; LAST_TRY "1": it has waited
    enough); Fail(3) otherwise. The trainer is only ever signalled after ``ready``."""
    found = select(ckdir)
    if found["chosen"] is not None:
        print("ready")
    elif saving_now(found) and last_try != "1":
        print("saving")
    else:
        raise Fail(
            3,
            "Nothing was signalled: the trainer keeps training. Save a checkpoint there, or tag "
            f"autostop:save-on-signal=true if the trainer saves one when it is signalled. {no_checkpoint(ckdir, found)}",
        )


def cmd_select(ckdir, prefix, manifest_key, work):
    found = select(ckdir)
    chosen = found["chosen"]
    if found["open_check"]:
        log(found["open_check"])
    if chosen is None:
        raise Fail(3, no_checkpoint(ckdir, found))
    log(f"chose {show(chosen['name'])} (step {chosen['step']}, {len(chosen['files'])} file(s)) among {found['candidates']} entries")
    if found["rejected"]:
        log(f"rejected {listing(found['rejected'])}")
    fields = ("abs", "rel", "size", "mtime_ns", "dev", "ino")
    plan = [dict({k: f[k] for k in fields}, key=plan_key(f, prefix, chosen, manifest_key)) for f in chosen["files"]]
    choice = {
        "name": show(chosen["name"]),
        "path": os.path.join(ckdir, chosen["name"]),
        "mtime": iso(chosen["mtime_ns"]),
        "mtime_ns": chosen["mtime_ns"],
        "layout": "directory" if chosen["is_dir"] else "file",
        "step": chosen["step"],
        "step_source": chosen["step_source"],
        "rule": chosen["rule"],
        "rejected": describe_rejected(found["rejected"]),
        "open_files_check": found["open_check"] or "complete",
    }
    with open(os.path.join(work, "plan.json"), "w", encoding="utf-8") as f:
        json.dump(plan, f)
    with open(os.path.join(work, "choice.json"), "w", encoding="utf-8") as f:
        json.dump(choice, f)


def plan_key(f, prefix, chosen, manifest_key):
    """The S3 key of file F of the chosen checkpoint; Fail(4) when it cannot be one."""
    full, rel = f["abs"], f["rel"]
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise Fail(4, f"the file name {show(full)} is not valid UTF-8 and cannot be an S3 key; rename it") from None
    if CONTROL_CHARS_RE.search(rel):
        raise Fail(4, f"the file name {show(full)!r} contains control characters and cannot be an S3 key; rename it")
    key = prefix + chosen["name"] + ("/" + rel if chosen["is_dir"] else "")
    if len(key.encode("utf-8")) > 1024:
        raise Fail(4, f"the S3 key for {show(full)} would be longer than 1024 bytes; use shorter file names")
    if key == manifest_key:
        raise Fail(4, f"the checkpoint file {show(full)} would overwrite the manifest key {manifest_key}")
    return key


def open_chosen(path, size, mtime_ns, dev, ino):
    """Open the file chosen at PATH, without following a symbolic link, and make sure that it is still the very
    file that was chosen: same device, inode, size and mtime."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            raise Fail(6, changed(path, "it is gone or is now a symbolic link")) from None
        raise Fail(4, f"cannot read {show(path)}: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or identity(st) != (int(dev), int(ino), int(size), int(mtime_ns)):
            raise Fail(6, changed(path, "it is no longer the file that was chosen"))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def cmd_transfer():
    """Print ``sdk`` when this python3 can upload in-process (lib/transfer.py), else ``cli``."""
    print("sdk" if sdk_available() else "cli")


class Upload:
    """The chosen checkpoint's files to S3 in one process: parts and files concurrently, each byte read once.

    Per file, through ``open_chosen`` (the very file selection saw): up to PART_SIZE bytes one PutObject, above
    that CreateMultipartUpload, UploadPart per part and CompleteMultipartUpload; every call carries the SHA-256
    of its bytes, which S3 verifies. After its last call a file must still be the file chosen. ``run`` returns
    the manifest's file records in plan order. Failures: Fail(6) a file changed (or vanished); Fail(4) S3 refused
    (botocore's or the CLI's message, e.g. AccessDenied); every multipart upload that was started and not
    completed is aborted first. ``s3``: a botocore client, or ``CliS3`` (bodies are then files: the chosen file
    itself for a PutObject, which the CLI opens, a temp file in WORK per part)."""

    def __init__(self, s3, errors, bucket, part_size, pool, work=None):
        self.s3, self.errors, self.bucket, self.part_size, self.work = s3, errors, bucket, part_size, work
        self.pool = Pool(pool)
        self.open_uploads = {}
        self.lock = threading.Lock()

    def run(self, plan):
        records = [None] * len(plan)
        try:
            for i, f in enumerate(plan):
                if self.pool.failed.is_set():
                    break
                if f["size"] <= self.part_size:
                    self.pool.submit(self.put, f, records, i)
                else:
                    self.start_multipart(f, records, i)
            self.pool.wait()
        except BaseException:
            self.pool.failed.set()
            self.pool.executor.shutdown(wait=True)
            self.abort_all()
            raise
        return records

    def call(self, f, what, op, **params):
        try:
            return getattr(self.s3, op)(Bucket=self.bucket, **params)
        except (self.errors.BotoCoreError, self.errors.ClientError) as exc:
            check_unchanged(f)
            raise Fail(4, f"{what} failed: {exc}. Check that the bucket exists and that the instance profile may write to it")

    def put(self, f, records, i):
        target = f"s3://{self.bucket}/{f['key']}"
        with open_chosen(f["abs"], f["size"], f["mtime_ns"], f["dev"], f["ino"]) as fh:
            data = pread_exact(fh.fileno(), f["size"], 0)
        if len(data) != f["size"]:
            raise Fail(6, changed(f["abs"], "it shrank while it was being uploaded"))
        digest = hashlib.sha256(data).digest()
        resp = self.call(
            f,
            f"uploading {f['abs']} to {target}",
            "put_object",
            Key=f["key"],
            Body=f["abs"] if self.work else data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64(digest),
        )
        del data
        same_checksum(resp, b64(digest), f["key"])
        check_unchanged(f)
        records[i] = file_record(f, digest.hex(), b64(digest), 0, None, resp)

    def start_multipart(self, f, records, i):
        if f["size"] > MAX_OBJECT_SIZE:
            raise Fail(4, f"{show(f['abs'])} is {f['size']} bytes, more than the 5 TiB S3 object limit")
        part = file_part_size(f["size"], self.part_size)
        ranges = part_ranges(f["size"], part)
        target = f"s3://{self.bucket}/{f['key']}"
        log(f"uploading {f['rel']} ({f['size']} bytes) to {target} in {len(ranges)} parts of {part} bytes")
        fh = open_chosen(f["abs"], f["size"], f["mtime_ns"], f["dev"], f["ino"])
        try:
            resp = self.call(
                f,
                f"starting the multipart upload of {f['abs']} to {target}",
                "create_multipart_upload",
                Key=f["key"],
                ChecksumAlgorithm="SHA256",
            )
        except BaseException:
            fh.close()
            raise
        state = {"fh": fh, "upload_id": resp["UploadId"], "part": part, "parts": [None] * len(ranges), "left": len(ranges)}
        with self.lock:
            self.open_uploads[f["key"]] = state
        for number, offset, length in ranges:
            self.pool.submit(self.upload_part, f, state, number, offset, length, records, i)

    def upload_part(self, f, state, number, offset, length, records, i):
        data = pread_exact(state["fh"].fileno(), length, offset)
        if len(data) != length:
            raise Fail(6, changed(f["abs"], "it shrank while it was being uploaded"))
        digest = hashlib.sha256(data).digest()
        what = f"uploading part {number} of {len(state['parts'])} of {f['abs']} to s3://{self.bucket}/{f['key']}"
        body = self.part_file(data, state["upload_id"], number) if self.work else data
        del data
        try:
            resp = self.call(
                f,
                what,
                "upload_part",
                Key=f["key"],
                UploadId=state["upload_id"],
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(digest),
            )
        finally:
            if self.work:
                os.unlink(body)
        same_checksum(resp, b64(digest), f"part {number}")
        with self.lock:
            state["parts"][number - 1] = {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": b64(digest), "digest": digest}
            state["left"] -= 1
            last = state["left"] == 0
        if last and not self.pool.failed.is_set():  # once anything failed or a signal came, nothing more is completed
            self.complete(f, state, records, i)

    def part_file(self, data, upload_id, number):
        """DATA in a new temp file in WORK (the AWS CLI reads a part's body from a file); its path."""
        try:
            fd, path = tempfile.mkstemp(prefix=f"part-{number}-", dir=self.work)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:
            raise Fail(4, f"cannot write a {len(data)}-byte upload part in {self.work}: {exc.strerror}; free space in TMPDIR")
        return path

    def complete(self, f, state, records, i):
        checksum = composite([p.pop("digest") for p in state["parts"]])
        what = f"completing the multipart upload of {f['abs']} to s3://{self.bucket}/{f['key']}"
        resp = self.call(
            f, what, "complete_multipart_upload", Key=f["key"], UploadId=state["upload_id"], MultipartUpload={"Parts": state["parts"]}
        )
        with self.lock:
            self.open_uploads.pop(f["key"], None)
        state["fh"].close()
        same_checksum(resp, checksum, f["key"])
        check_unchanged(f)
        records[i] = file_record(f, None, checksum, len(state["parts"]), state["part"], resp)

    def abort_all(self):
        for key, state in list(self.open_uploads.items()):
            state["fh"].close()
            log(f"aborting multipart upload of s3://{self.bucket}/{key}")
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=state["upload_id"])
            except (self.errors.BotoCoreError, self.errors.ClientError) as exc:
                log(f"could not abort the multipart upload ({exc}); S3 lifecycle rules will remove it")
        self.open_uploads.clear()


def check_unchanged(f):
    """Fail(6) when the file F of the plan is gone or no longer the file chosen."""
    try:
        st = os.lstat(f["abs"])
    except OSError as exc:
        raise Fail(6, changed(f["abs"], f"it disappeared while it was being uploaded: {exc.strerror}")) from None
    if identity(st) != (f["dev"], f["ino"], f["size"], f["mtime_ns"]):
        raise Fail(6, changed(f["abs"], "it was modified or replaced while it was being uploaded"))


def file_record(f, hexdigest, checksum, parts, part_size, resp):
    """The manifest's entry for file F. ``sha256``: the whole file's (single-part objects only; a multipart
    object is checked by its composite ``checksum_sha256`` and ``part_size``)."""
    record = {"key": f["key"], "path": f["rel"], "size": f["size"], "sha256": hexdigest, "checksum_sha256": checksum, "parts": parts}
    if part_size:
        record["part_size"] = part_size
    record["version_id"] = version_id(resp)
    return record


def read_plan(work):
    """The plan ``cmd_select`` wrote: [{abs, rel, key, size, mtime_ns, dev, ino}]."""
    with open(os.path.join(work, "plan.json"), encoding="utf-8") as f:
        return json.load(f)


def stopped(signum, _frame):
    """Signal handler: SystemExit(128 + signal), which ``Upload.run`` answers by aborting its multipart uploads."""
    log(f"stopped by signal {signum} during the upload; aborting the multipart uploads in progress")
    raise SystemExit(128 + signum)


class CliError(Exception):
    """An AWS CLI call that failed; the message is the CLI's last stderr line."""


class CliS3:
    """The S3 calls ``Upload`` makes, through the AWS CLI, one process per call: the fallback when python3
    cannot import botocore. Same keyword arguments as botocore's client; ``Body`` is a file path."""

    BotoCoreError = ClientError = CliError  # what Upload catches
    FLAGS = {
        "Bucket": "bucket",
        "Key": "key",
        "UploadId": "upload-id",
        "PartNumber": "part-number",
        "Body": "body",
        "ChecksumAlgorithm": "checksum-algorithm",
        "ChecksumSHA256": "checksum-sha256",
        "MultipartUpload": "multipart-upload",
        "ContentType": "content-type",
    }

    def __init__(self, work):
        self.work = work

    def __getattr__(self, op):
        return lambda **params: self.run(op, params)

    def run(self, op, params):
        """``aws s3api OP --flag=value ...``: its JSON output, or CliError."""
        if isinstance(params.get("MultipartUpload"), dict):  # the CLI reads the part list from a file
            fd, path = tempfile.mkstemp(prefix="complete-", suffix=".json", dir=self.work)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(params["MultipartUpload"], f)
            try:
                return self.run(op, dict(params, MultipartUpload=f"file://{path}"))
            finally:
                os.unlink(path)
        args = ["aws", "--output", "json", "s3api", op.replace("_", "-")] + [f"--{self.FLAGS[k]}={v}" for k, v in params.items()]
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            sys.stderr.write(err)
            lines = [line for line in err.splitlines() if line.strip()]
            raise CliError(lines[-1] if lines else "the AWS CLI exited with an error")
        try:
            out = json.loads(proc.stdout.decode("utf-8") or "{}")
        except ValueError:
            raise CliError("the AWS CLI printed an unreadable response")
        return out if isinstance(out, dict) else {}


def cmd_upload(work, bucket, part_size, transfer):
    """Upload the plan in WORK in one process (``Upload``; TRANSFER sdk: botocore, cli: the AWS CLI); writes
    WORK/files.jsonl; prints the file count."""
    part_size = int(part_size)
    plan = read_plan(work)
    largest = max([min(f["size"], file_part_size(f["size"], part_size)) for f in plan] or [part_size])  # one buffer's bytes
    n = pool_size(largest) if transfer == "sdk" else min(pool_size(largest), 4 * (os.cpu_count() or 2), 16)
    total = sum(f["size"] for f in plan)
    log(f"uploading {len(plan)} file(s), {total} bytes, {n} at a time (parts of up to {part_size} bytes)")
    mods = sdk() if transfer == "sdk" else None
    if transfer == "sdk" and mods is None:
        log("botocore does not import or is too old; uploading through the AWS CLI")
    if mods is not None:
        upload = Upload(client(mods, n), mods[2], bucket, part_size, n)
    else:
        upload = Upload(CliS3(work), CliS3, bucket, part_size, n, work=work)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # stopped from outside: abort what was started
        signal.signal(signum, stopped)
    started = time.monotonic()
    records = upload.run(plan)
    try:
        with open(os.path.join(work, "files.jsonl"), "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
        with open(os.path.join(work, "upload_seconds"), "w", encoding="utf-8") as out:
            out.write("%.3f" % (time.monotonic() - started))
    except OSError as exc:
        raise Fail(5, f"cannot record the uploaded files for the manifest: {exc.strerror}")
    print(len(records))


def same_checksum(resp, expected, what):
    got = resp.get("ChecksumSHA256")
    if got and got.split("-")[0] != expected.split("-")[0]:
        raise Fail(4, f"S3 reported SHA-256 checksum {got} for {what}, but the instance computed {expected}; retry the upload")


def seconds_in(path):
    """The seconds ``cmd_upload`` wrote (a float), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            return float(f.read())
    except (OSError, ValueError):
        return None


def version_id(resp):
    """The S3 VersionId PutObject/CompleteMultipartUpload returned (None when the bucket is not versioned)."""
    value = resp.get("VersionId")
    return value if isinstance(value, str) and value and value != "null" else None


def load(work):
    with open(os.path.join(work, "choice.json"), encoding="utf-8") as f:
        choice = json.load(f)
    with open(os.path.join(work, "files.jsonl"), encoding="utf-8") as f:
        files = [json.loads(line) for line in f if line.strip()]
    return choice, files


def is_fresh(choice, signal_ns):
    """Was the chosen checkpoint written (its newest mtime) at or after the trainer was signalled?"""
    return bool(signal_ns) and choice["mtime_ns"] >= int(signal_ns)


def write_manifest(work, choice, files, run_id, instance_id, execution_name, decision_time, bucket, mode, signal_ns):
    """WORK/manifest.json (fsynced); returns its bytes. Fail(5) ManifestFailed when it cannot be written."""
    try:
        manifest = {
            "schema_version": 1,
            "run_id": run_id,
            "instance_id": instance_id,
            "execution_name": execution_name,
            "decision_time": decision_time,
            "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint": {"name": choice["name"], "path": choice["path"], "mtime": choice["mtime"]},
            "layout": choice["layout"],
            "step": choice["step"],
            "selection": {
                "step_source": choice["step_source"],
                "rule": choice["rule"],
                "rejected": choice["rejected"],
                "open_files_check": choice["open_files_check"],
                "summary": summary(choice),
            },
            "mode": mode,
            "fresh": is_fresh(choice, signal_ns),
            "bucket": bucket,
            "files": files,
            "total_bytes": sum(f["size"] for f in files),
        }
        data = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
        path = os.path.join(work, "manifest.json")
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(path) != len(data):
            raise OSError(0, "short write")
    except (OSError, ValueError, KeyError) as exc:
        raise Fail(
            5,
            f"cannot write the manifest in {work}: {getattr(exc, 'strerror', None) or exc}; "
            "free disk space in the temp directory and retry",
        )
    return data


def cmd_finish(work, run_id, instance_id, execution_name, decision_time, bucket, mode, signal_ns, manifest_key, trainer, transfer):
    """The last step: writes the manifest (``write_manifest``), puts it (TRANSFER sdk: botocore, cli: the AWS CLI)
    with its SHA-256, which S3 verifies, and prints the result line. Fail(4) when S3 refuses it."""
    choice, files = load(work)
    data = write_manifest(work, choice, files, run_id, instance_id, execution_name, decision_time, bucket, mode, signal_ns)
    target = f"s3://{bucket}/{manifest_key}"
    log(f"uploading the manifest to {target}")
    mods = sdk() if transfer == "sdk" else None
    s3, errors = (client(mods, 1), mods[2]) if mods else (CliS3(work), CliS3)
    try:
        resp = s3.put_object(
            Bucket=bucket,
            Key=manifest_key,
            Body=data if mods else os.path.join(work, "manifest.json"),
            ContentType="application/json",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64(hashlib.sha256(data).digest()),
        )
    except (errors.BotoCoreError, errors.ClientError) as exc:
        raise Fail(
            4,
            f"uploading the manifest to {target} failed: {exc}. Check that the bucket exists and that the instance profile may write to it",
        )
    # The result line reaches the control plane through SSM from this instance only, so it pins what Verify reads:
    # the manifest's S3 VersionId and SHA-256 (hex), and the file and byte counts of this upload.
    print(
        json.dumps(
            {
                "result": "uploaded",
                "manifest": target,
                "manifest_version_id": version_id(resp),
                "manifest_sha256": hashlib.sha256(data).hexdigest(),
                "files": len(files),
                "bytes": sum(f["size"] for f in files),
                "trainer": trainer,
                "upload_seconds": seconds_in(os.path.join(work, "upload_seconds")),
                "checkpoint": choice["name"],
                "step": choice["step"],
                "fresh": is_fresh(choice, signal_ns),
                "rule": choice["rule"],
                "rejected": choice["rejected"],
                "summary": summary(choice),
            }
        )
    )
