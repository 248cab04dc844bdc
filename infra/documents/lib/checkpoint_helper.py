"""autostop's on-instance program, subcommand ``checkpoint`` (``main_checkpoint``; stdlib, plus botocore where the
instance has it).

``infra/documents/checkpoint.sh`` carries this file after ``lib/instance.py``, ``lib/selection.py``,
``lib/transfer.py`` and ``lib/s3cli.py`` (see ``lib/instance.py``). Failures: ``Fail`` with an error name, or with the helpers' numbers
3 NoCheckpoint, 4 UploadFailed, 5 ManifestFailed, 6 a file changed during the checkpoint (UploadFailed, which a
re-selection may cure in Mode interruption).
"""

import base64
import datetime
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time

if "select" not in globals():  # run on its own (tests, linters); the document pastes these modules above
    from instance import (
        Fail,
        Interrupted,
        aws_environment,
        check_all,
        check_not_system,
        check_segments,
        interrupted,
        param,
        pid_file_stale,
        pid_is_trainer,
        pid_same,
        read_pid,
        require,
        work_dir,
    )
    from s3cli import CliS3, checksum_algorithm, version_id
    from selection import CONTROL_CHARS_RE, describe_rejected, listing, no_checkpoint, saving_now, select, show, summary
    from transfer import (
        HASHES,
        MAX_OBJECT_SIZE,
        MAX_PART_SIZE,
        MIN_PART_SIZE,
        Pool,
        b64,
        client,
        composite,
        file_part_size,
        part_ranges,
        pool_size,
        pread_exact,
        sdk,
        sdk_available,
    )

CHUNK = 8 * 1024 * 1024


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


def precheck(ckdir, last_try):
    """Before the trainer is signalled (Mode stop): ``ready`` when a complete checkpoint exists, ``saving`` when none
    does but a save is in progress (the caller waits and asks again; LAST_TRY: it has waited enough); Fail(3)
    otherwise. The trainer is only ever signalled after ``ready``."""
    found = select(ckdir)
    if found["chosen"] is not None:
        return "ready"
    if saving_now(found) and not last_try:
        return "saving"
    else:
        raise Fail(
            3,
            "Nothing was signalled: the trainer keeps training. Save a checkpoint there, or tag "
            f"autostop:save-on-signal=true if the trainer saves one when it is signalled. {no_checkpoint(ckdir, found)}",
        )


def choose(ckdir, prefix, manifest_key):
    """Selects the checkpoint to upload: (plan: its files [{abs, rel, key, size, mtime_ns, dev, ino}], choice: what
    the manifest and the result line say about it). NoCheckpoint (Fail 3) when none is complete."""
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
    return plan, choice


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


class Upload:
    """The chosen checkpoint's files to S3 in one process: parts and files concurrently, each byte read once.

    Per file, through ``open_chosen`` (the very file selection saw): up to PART_SIZE bytes one PutObject, above
    that CreateMultipartUpload, UploadPart per part and CompleteMultipartUpload; every call carries the ALGORITHM
    checksum of its bytes (CRC32 or SHA256, ``checksum_algorithm`` in lib/s3cli.py), which S3 verifies. After its last
    call a file must still be the file chosen. ``run`` returns the manifest's file records in plan order.
    Failures: Fail(6) a file changed (or vanished); Fail(4) S3 refused (botocore's or the CLI's message, e.g.
    AccessDenied); every multipart upload that was started and not completed is aborted first. ``s3``: a botocore
    client, or ``CliS3`` (bodies are then files: the chosen file itself for a PutObject, which the CLI opens, a
    temp file in WORK per part)."""

    def __init__(self, s3, errors, bucket, part_size, pool, work=None, algorithm="CRC32"):
        self.s3, self.errors, self.bucket, self.part_size, self.work = s3, errors, bucket, part_size, work
        self.algorithm = algorithm
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
        checksum = b64(HASHES[self.algorithm](data).digest())
        resp = self.call(
            f,
            f"uploading {f['abs']} to {target}",
            "put_object",
            Key=f["key"],
            Body=f["abs"] if self.work else data,
            ChecksumAlgorithm=self.algorithm,
            **{"Checksum" + self.algorithm: checksum},
        )
        del data
        same_checksum(resp, checksum, f["key"], self.algorithm)
        check_unchanged(f)
        records[i] = file_record(f, self.algorithm, checksum, 0, None, resp)

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
                ChecksumAlgorithm=self.algorithm,
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
        digest = HASHES[self.algorithm](data).digest()
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
                ChecksumAlgorithm=self.algorithm,
                **{"Checksum" + self.algorithm: b64(digest)},
            )
        finally:
            if self.work:
                os.unlink(body)
        same_checksum(resp, b64(digest), f"part {number}", self.algorithm)
        with self.lock:
            state["parts"][number - 1] = {
                "PartNumber": number,
                "ETag": resp["ETag"],
                "Checksum" + self.algorithm: b64(digest),
                "digest": digest,
            }
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
        checksum = composite([p.pop("digest") for p in state["parts"]], self.algorithm)
        what = f"completing the multipart upload of {f['abs']} to s3://{self.bucket}/{f['key']}"
        resp = self.call(
            f, what, "complete_multipart_upload", Key=f["key"], UploadId=state["upload_id"], MultipartUpload={"Parts": state["parts"]}
        )
        with self.lock:
            self.open_uploads.pop(f["key"], None)
        state["fh"].close()
        same_checksum(resp, checksum, f["key"], self.algorithm)
        check_unchanged(f)
        records[i] = file_record(f, self.algorithm, checksum, len(state["parts"]), state["part"], resp)

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


def file_record(f, algorithm, checksum, parts, part_size, resp):
    """The manifest's entry for file F. ``checksum_crc32`` (or ``checksum_sha256``, with the whole file's ``sha256``
    in hex for a single PUT): what S3 stores as ``Checksum<ALGORITHM>``, the whole file's or, for a multipart
    object, the composite with ``part_size``, which the restore recomputes."""
    if algorithm == "CRC32":
        sums = {"checksum_crc32": checksum}
    else:
        sums = {"sha256": None if parts else base64.b64decode(checksum).hex(), "checksum_sha256": checksum}
    record = {"key": f["key"], "path": f["rel"], "size": f["size"], **sums, "parts": parts}
    if part_size:
        record["part_size"] = part_size
    record["version_id"] = version_id(resp)
    return record


def stopped(signum, _frame):
    """Signal handler during the upload: ``Interrupted``, which ``Upload.run`` answers by aborting its multipart
    uploads. Signals after the first are only logged until then (``again``): a second ``Interrupted`` raised while
    the pool drains would skip the abort."""
    for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(other, again)
    log(f"stopped by signal {signum} during the upload; aborting the multipart uploads in progress")
    raise Interrupted(signum)


def again(signum, _frame):
    log(f"signal {signum} again; still aborting the multipart uploads")


def upload_plan(plan, work, bucket, part_size, transfer):
    """Uploads the files of PLAN (``choose``) in one process (``Upload``; TRANSFER sdk: botocore, cli: the AWS CLI,
    its part files in WORK); returns (the manifest's file records, the upload's seconds)."""
    largest = max([min(f["size"], file_part_size(f["size"], part_size)) for f in plan] or [part_size])  # one buffer's bytes
    n = pool_size(largest) if transfer == "sdk" else min(pool_size(largest), 4 * (os.cpu_count() or 2), 16)
    total = sum(f["size"] for f in plan)
    algorithm = checksum_algorithm()
    log(f"uploading {len(plan)} file(s), {total} bytes, {n} at a time (parts of up to {part_size} bytes, {algorithm} checksums)")
    mods = sdk() if transfer == "sdk" else None
    if transfer == "sdk" and mods is None:
        log("botocore does not import or is too old; uploading through the AWS CLI")
    if mods is not None:
        upload = Upload(client(mods, n), mods[2], bucket, part_size, n, algorithm=algorithm)
    else:
        upload = Upload(CliS3(work), CliS3, bucket, part_size, n, work=work, algorithm=algorithm)
    started = time.monotonic()
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # stopped from outside: abort what was started
        signal.signal(signum, stopped)
    try:
        records = upload.run(plan)
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, interrupted)
    return records, round(time.monotonic() - started, 3)


def same_checksum(resp, expected, what, algorithm):
    got = resp.get("Checksum" + algorithm)
    if got and got.split("-")[0] != expected.split("-")[0]:
        raise Fail(4, f"S3 reported {algorithm} checksum {got} for {what}, but the instance computed {expected}; retry the upload")


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


def finish(work, uploaded, run_id, instance_id, execution_name, decision_time, bucket, mode, signal_ns, manifest_key, trainer, transfer):
    """The last step: writes the manifest of UPLOADED (choice, file records, seconds: ``upload_newest``)
    (``write_manifest``), puts it (TRANSFER sdk: botocore, cli: the AWS CLI) with its SHA-256, which S3 verifies, and
    returns the result line. Fail(4) when S3 refuses it."""
    choice, files, seconds = uploaded
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
    return json.dumps(
        {
            "result": "uploaded",
            "manifest": target,
            "manifest_version_id": version_id(resp),
            "manifest_sha256": hashlib.sha256(data).hexdigest(),
            "files": len(files),
            "bytes": sum(f["size"] for f in files),
            "trainer": trainer,
            "upload_seconds": seconds,
            "checkpoint": choice["name"],
            "step": choice["step"],
            "fresh": is_fresh(choice, signal_ns),
            "rule": choice["rule"],
            "rejected": choice["rejected"],
            "summary": summary(choice),
        }
    )


CHECKPOINT_PARAMETERS = {
    "Signal": (r"^(TERM|INT|HUP|USR1|USR2)$", "expected TERM, INT, HUP, USR1 or USR2"),
    "GraceSeconds": (r"^[0-9]{1,5}$", "expected a whole number of seconds (0-99999)"),
    "PartSizeBytes": (r"^[0-9]{7,11}$", "expected a whole number of bytes between 5242880 and 5368709120"),
    "DecisionTime": (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$", "expected a UTC time like 2025-01-31T23:59:00Z"),
    "Mode": (r"^(stop|interruption)$", "expected stop or interruption"),
}
"""The checkpoint's own parameters (the others: ``PARAMETERS`` of lib/instance.py)."""
CHECKPOINT_VARIABLES = (  # noqa: SIM905 - fewer bytes in the document than a list literal
    "SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_PidFile SSM_Bucket SSM_UploadPrefix SSM_ManifestKey "
    "SSM_Signal SSM_GraceSeconds SSM_PartSizeBytes SSM_DecisionTime SSM_Mode"
).split()


def checkpoint_parameters():
    """Re-validates the document's parameters (InvalidParameter); returns (grace seconds, part size in bytes)."""
    require(CHECKPOINT_VARIABLES)
    check_all(CHECKPOINT_VARIABLES + ["SSM_SaveOnSignal"], CHECKPOINT_PARAMETERS)
    for name, kind in (("CheckpointDir", "path"), ("PidFile", "path"), ("UploadPrefix", "key"), ("ManifestKey", "key")):
        check_segments(name, kind)
    check_not_system("CheckpointDir")  # root uploads it: never /etc, /root, /var/log, ...
    part_size = int(param("PartSizeBytes"))
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise Fail("InvalidParameter", f"parameter PartSizeBytes ({part_size}) must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
    return int(param("GraceSeconds")), part_size


def main_checkpoint():
    """``checkpoint``: the checkpoint document's contract (infra/documents/checkpoint.sh): signal the trainer once,
    choose and upload its newest complete checkpoint, write the manifest last; returns the result line."""
    grace, part_size = checkpoint_parameters()
    aws_environment()
    if shutil.which("aws") is None:
        raise Fail(
            "UploadFailed", "the AWS CLI (aws) is not installed or not on PATH; install it on the instance (the trainer was not signalled)"
        )
    work = work_dir("checkpoint", " (the trainer was not signalled)")
    try:
        trainer, signal_ns = stop_trainer(grace)
        transfer = "sdk" if sdk_available() else "cli"
        log(f"transfer: {transfer}")
        uploaded = upload_newest(work, part_size, transfer)
        values = ("RunId", "InstanceId", "ExecutionName", "DecisionTime", "Bucket", "Mode")
        return finish(work, uploaded, *map(param, values), signal_ns, param("ManifestKey"), trainer, transfer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stop_trainer(grace):
    """Signals the trainer named by SSM_PidFile once, if it is provably the trainer, and waits for it to exit.
    Returns (trainer state, when it was signalled in ns since the epoch or 0). TrainerUnverified when a live process
    cannot be shown to be the trainer; NoCheckpoint (Mode stop, not SaveOnSignal) when nothing complete is on disk."""
    pid_file = param("PidFile")
    if not pid_file:
        return "not_configured", 0
    if not os.path.lexists(pid_file):
        log(f"pid file {pid_file} does not exist; not signalling anything")
        return "pid_file_missing", 0
    pid = read_pid(pid_file)
    if pid is None:
        log(f"pid file {pid_file} is unreadable or holds no process id; not signalling anything")
        return "pid_file_unreadable", 0
    if pid_file_stale(pid_file):  # written before this boot: whatever has that pid now is not its trainer
        log(f"pid file {pid_file} is stale (last written before this boot); not signalling anything")
        return "not_running", 0
    status, why, start = pid_is_trainer(pid, pid_file)
    if status == 2:  # alive, but maybe a reused pid or a stepped clock: unknown is not "exited"
        raise Fail(
            "TrainerUnverified",
            f"pid {pid} from {pid_file} is a live process that cannot be shown to be the trainer ({why}); nothing was signalled "
            "or uploaded. If the trainer has exited, remove the stale PID file; if it runs, rewrite the PID file from the trainer",
        )
    if status == 1:
        log(f"trainer pid {pid} from {pid_file} is not running")
        return "not_running", 0
    if param("Mode") == "stop" and param("SaveOnSignal") != "true":
        wait_for_checkpoint(grace)
    return signal_trainer(pid, start, grace)


def wait_for_checkpoint(grace):
    """Decides before signalling: a trainer that exits on the signal must leave something to upload. A save in
    progress with nothing complete yet is waited for (up to GRACE, at most 120 s), never signalled over."""
    waited, state = 0, precheck(param("CheckpointDir"), False)
    while state == "saving":
        last = not (waited + 2 < grace and waited + 2 < 120)
        time.sleep(2)
        waited += 2
        state = precheck(param("CheckpointDir"), last)
    log(f"before signalling: a complete checkpoint is on disk (waited {waited} s for a save in progress)")


def signal_trainer(pid, start, grace):
    """Sends SIG<Signal> to the trainer (PID, START ticks) once and waits up to GRACE s for it to exit: (state, ns)."""
    name, pid_file, mode = param("Signal"), param("PidFile"), param("Mode")
    log(f"sending SIG{name} to trainer pid {pid}; waiting up to {grace} s for it to exit")
    signal_ns = time.time_ns()
    try:
        os.kill(pid, getattr(signal, "SIG" + name))
    except OSError as exc:
        why = f"kill: ({pid}) - {exc.strerror}"
        if not pid_same(pid, start):
            return "not_running", 0  # it exited just before the signal
        if mode == "interruption":
            log(f"could not send SIG{name} to the trainer (pid {pid}): {why}; uploading the newest checkpoint on disk")
            return "still_running", signal_ns
        raise Fail(
            "TrainerDidNotExit",
            f"could not send SIG{name} to the trainer (pid {pid} from {pid_file}): {why}; the checkpoint command must run as root",
        )
    waited = 0
    while pid_same(pid, start):
        if waited >= grace:
            if mode == "stop":
                raise Fail(
                    "TrainerDidNotExit",
                    f"the trainer (pid {pid} from {pid_file}) was sent SIG{name} but was still running after {grace} s; nothing was "
                    f"uploaded. Make the trainer save and exit on SIG{name}, or raise the grace-seconds tag",
                )
            # Interruption: the instance is about to be reclaimed; save what is on disk rather than nothing.
            log(f"the trainer (pid {pid}) was still running {grace} s after SIG{name}; uploading the newest complete checkpoint on disk")
            return "still_running", signal_ns
        time.sleep(1)
        waited += 1
    log(f"trainer pid {pid} exited after about {waited} s")
    return "exited", signal_ns


def upload_newest(work, part_size, transfer):
    """Chooses the checkpoint and uploads it (``choose``, ``upload_plan``): (choice, file records, seconds). Where the
    trainer keeps running (Mode interruption: a Spot notice or a rebalance) it may rotate the chosen checkpoint away
    meanwhile: chosen again, once. Otherwise a changed file fails (UploadFailed)."""
    for attempt in (1, 2):
        plan, choice = choose(param("CheckpointDir"), param("UploadPrefix"), param("ManifestKey"))
        try:
            records, seconds = upload_plan(plan, work, param("Bucket"), part_size, transfer)
            break
        except Fail as exc:
            if exc.code != 6 or attempt == 2 or param("Mode") != "interruption":
                raise
            log(f"{exc}; the trainer is still running, so choosing the newest complete checkpoint again")
    if not records:
        raise Fail("NoCheckpoint", "the chosen checkpoint holds no files")
    return choice, records, seconds
