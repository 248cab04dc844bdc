"""autostop's on-instance program, subcommand ``restore`` (``main_restore``; stdlib, plus botocore where the
instance has it).

``infra/documents/restore.sh`` carries this file after ``lib/instance.py``, ``lib/baseline.py``, ``lib/transfer.py``
and ``lib/download.py`` (see ``lib/instance.py``). Failures: ``Fail`` with an error name, or with the helpers' numbers
3 ManifestInvalid, 4 DownloadFailed, 5 ChecksumMismatch, 6 RestoreConflict, 7 ResumeCommandFailed, 8
ScriptFailed, 9 ResumeCommandRefused.
"""

import contextlib
import ctypes
import errno
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time

if "Pool" not in globals():  # run on its own (tests, linters); the document pastes these modules above
    from baseline import boot_key, log_baseline_file, state_dir, write_baseline
    from download import Download, DownloadError, NoRoom, SizeMismatch
    from instance import (
        HELPER_ERRORS,
        PARAMETERS,
        Fail,
        aws_environment,
        check_all,
        check_not_system,
        check_segments,
        open_child_dir,
        open_dir_nofollow,
        param,
        pid_file_stale,
        pid_is_trainer,
        read_pid,
        require,
        work_dir,
    )
    from transfer import (
        HASHES,
        MAX_OBJECT_SIZE,
        MAX_PART_SIZE,
        MAX_PARTS,
        MIN_PART_SIZE,
        b64,
        client,
        composite,
        part_ranges,
        pool_size,
        pread_exact,
        sdk,
    )

CHUNK = 8 * 1024 * 1024
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
CHECKSUM_RE = re.compile(r"^[A-Za-z0-9+/]{43}=(-[0-9]{1,5})?$")
CRC32_RE = re.compile(r"^[A-Za-z0-9+/]{6}==(-[0-9]{1,5})?$")
NAMES = {"SHA256": "SHA-256", "CRC32": "CRC32"}
KEY_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,1024}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
VERSION_RE = re.compile(r"^[A-Za-z0-9._+/=-]{1,1024}$")
STAGING_PREFIX = ".autostop-restore-"
ALIVE_CHECK_SECONDS = 2
ALLOWLIST = "/etc/autostop/resume-commands"
PR_SET_NO_NEW_PRIVS = 38
REFUSED = 9
HELPER_ERRORS["restore"] = {
    3: "ManifestInvalid",
    4: "DownloadFailed",
    5: "ChecksumMismatch",
    6: "RestoreConflict",
    7: "ResumeCommandFailed",
    8: "ScriptFailed",
    9: "ResumeCommandRefused",
}


def log(message):
    print("restore: " + message, file=sys.stderr)


def show(path):
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def create_like_parent(fd, part, path):
    """``open_dir_nofollow``'s MISSING for the checkpoint dir PATH: creates its missing component PART in the
    directory FD with FD's mode and owner, only where root owns FD (RestoreConflict otherwise: root never creates a
    directory for a user); its descriptor."""
    parent = os.fstat(fd)
    if parent.st_uid != 0:
        raise Fail(
            6,
            "{} does not exist, and root does not create it in a directory of uid {}: the trainer's "
            "user must create it (mkdir -p {}) so that it owns it".format(path, parent.st_uid, path),
        )
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, stat.S_IMODE(parent.st_mode), dir_fd=fd)
    child = open_child_dir(part, fd)
    chown_like(child, parent)
    return child


def chown_like(fd, st):
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def hash_fd(fd, algorithm="SHA256"):
    """The raw digest (``HASHES[algorithm]``) of the whole file FD."""
    h = HASHES[algorithm]()
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return h.digest()
        h.update(chunk)


def load_json(path, what):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise Fail(3, "{} is not valid JSON ({})".format(what, exc))


def run_cli(args, what, cwd_fd=None):
    """Run the AWS CLI (stdin /dev/null); returns its parsed JSON stdout. Failures: DownloadFailed, or
    ChecksumMismatch when the CLI itself found that the body does not match S3's checksum."""
    proc = subprocess.run(
        ["aws", "--output", "json"] + args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.fchdir(cwd_fd)) if cwd_fd is not None else None,
    )
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        sys.stderr.write(err)
        lines = [line for line in err.splitlines() if line.strip()]
        last = lines[-1] if lines else "the AWS CLI exited with status {}".format(proc.returncode)
        if "checksum" in err.lower():
            raise Fail(5, "{} failed: {} (S3's checksum does not match the bytes received)".format(what, last))
        raise Fail(4, "{} failed: {}. Check that the object exists and that the instance profile may read it".format(what, last))
    try:
        out = json.loads(proc.stdout.decode("utf-8") or "{}")
    except ValueError:
        out = {}
    return out if isinstance(out, dict) else {}


def get_object(bucket, key, version, outfile, what, cwd_fd=None):
    """GetObject of exactly VERSION (an S3 VersionId): a newer object written under KEY is never read."""
    resp = run_cli(
        ["s3api", "get-object", "--bucket=" + bucket, "--key=" + key, "--version-id=" + version, "--checksum-mode=ENABLED", outfile],
        what,
        cwd_fd,
    )
    if resp.get("VersionId") not in (None, version):
        raise Fail(5, "{} returned version {}, not the verified version {}".format(what, resp.get("VersionId"), version))
    return resp


def fetch(bucket, key, version, outfile, what):
    """get_object, in this process through botocore where python3 has it (no AWS CLI process to start)."""
    mods = sdk()
    if mods is None:
        return get_object(bucket, key, version, outfile, what)
    try:
        resp = s3_client(mods).get_object(Bucket=bucket, Key=key, VersionId=version)
        data = resp["Body"].read()
    except (mods[2].BotoCoreError, mods[2].ClientError) as exc:
        raise Fail(4, "{} failed: {}. Check that the object exists and that the instance profile may read it".format(what, exc))
    if resp.get("VersionId") not in (None, version):
        raise Fail(5, "{} returned version {}, not the verified version {}".format(what, resp.get("VersionId"), version))
    with open(outfile, "wb") as f:
        f.write(data)
    return resp


def s3_client(mods):
    """The one botocore S3 client of this process, for the manifest and the files (each further one costs ~0.1 s)."""
    if not _CLIENT:
        _CLIENT.append(client(mods, pool_size(DOWNLOAD_PART)))
    return _CLIENT[0]


_CLIENT = []
DOWNLOAD_PART = 64 * 1024 * 1024  # the part size pool_size sizes the download pool for (bodies stream through 256 KiB)


def plain_segments(path):
    parts = path.split("/")
    return all(p not in ("", ".", "..") and len(os.fsencode(p)) <= 255 for p in parts)


def parse_manifest(path, run_id, instance_id, bucket, manifest_uri, upload_prefix):
    m = load_json(path, "the manifest " + manifest_uri)

    def bad(why):
        raise Fail(3, "the manifest {} {}".format(manifest_uri, why))

    if not isinstance(m, dict) or m.get("schema_version") != 1:
        bad("is not an autostop manifest (schema_version 1)")
    if m.get("run_id") != run_id:
        bad("belongs to run {!r}, not to run {}".format(m.get("run_id"), run_id))
    if m.get("instance_id") != instance_id:
        bad("belongs to instance {!r}, not to {}".format(m.get("instance_id"), instance_id))
    if m.get("bucket") != bucket:
        bad("names bucket {!r}, not {}".format(m.get("bucket"), bucket))
    ck = m.get("checkpoint")
    name = ck.get("name") if isinstance(ck, dict) else None
    if not isinstance(name, str) or "/" in name or name.startswith(".") or CONTROL_RE.search(name) or not plain_segments(name):
        bad("has no valid checkpoint name (one path segment, not starting with '.')")
    step = m.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        bad("has an invalid step")
    files = m.get("files")
    if not isinstance(files, list) or not files:
        bad("lists no files")
    layout = m.get("layout")
    if layout is None:  # manifests written before "layout": one file named like the checkpoint is the checkpoint
        only = files[0] if len(files) == 1 and isinstance(files[0], dict) else {}
        layout = "file" if only.get("path") == name else "directory"
    if layout not in ("file", "directory"):
        bad("has an invalid layout")
    entries, targets = [], set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            bad("file entry {} is not an object".format(i))
        key, rel, size, digest = f.get("key"), f.get("path"), f.get("size"), f.get("sha256")
        checksum, parts, version = f.get("checksum_sha256"), f.get("parts", 0), f.get("version_id")
        algorithm, crc = "SHA256", f.get("checksum_crc32")
        if crc is not None:  # written since CRC32 (lib/transfer.py): no SHA-256 beside it
            if checksum is not None or digest is not None or not isinstance(crc, str) or not CRC32_RE.match(crc):
                bad("file entry {} has an invalid checksum_crc32 (or a SHA-256 beside it)".format(i))
            algorithm, checksum = "CRC32", crc
        if not isinstance(key, str) or not KEY_RE.match(key) or not plain_segments(key):
            bad("file entry {} has an invalid key".format(i))
        if not key.startswith(upload_prefix):
            bad("file entry {} has key {}, outside the verified upload prefix {}".format(i, key, upload_prefix))
        if not isinstance(version, str) or not VERSION_RE.match(version) or version == "null":  # "null": unversioned, overwritable
            bad("file entry {} has no valid S3 version_id (a manifest written before version pinning cannot be restored)".format(i))
        if not isinstance(rel, str) or rel.startswith("/") or CONTROL_RE.search(rel) or not plain_segments(rel):
            bad("file entry {} has an invalid path (relative, no '.', '..' or empty segments)".format(i))
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_OBJECT_SIZE:
            bad("file entry {} has an invalid size".format(i))
        if algorithm == "SHA256" and checksum is not None and (not isinstance(checksum, str) or not CHECKSUM_RE.match(checksum)):
            bad("file entry {} has an invalid checksum_sha256".format(i))
        if not isinstance(parts, int) or isinstance(parts, bool) or parts < 0:
            bad("file entry {} has an invalid parts count".format(i))
        part_size = f.get("part_size")
        if part_size is not None and (
            not isinstance(part_size, int)
            or isinstance(part_size, bool)
            or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE
            or not 1 <= parts <= MAX_PARTS
            or -(-size // part_size) != parts
            or checksum is None
            or digest is not None
        ):
            bad("file entry {} has an invalid part_size for {} parts (or a sha256 beside it)".format(i, parts))
        multipart = part_size is not None
        if algorithm == "CRC32" and (
            ("-" in checksum) != multipart or bool(parts) != multipart or multipart and not checksum.endswith("-{}".format(parts))
        ):
            bad(
                "file entry {} has a checksum that does not fit its parts (multipart: '-<parts>' and a part_size; one PUT: neither)".format(
                    i
                )
            )
        if digest is None and part_size is None and algorithm == "SHA256":
            bad("file entry {} has no sha256 (only a multipart object with a part_size may go without)".format(i))
        if digest is not None and (not isinstance(digest, str) or not HEX64_RE.match(digest)):
            bad("file entry {} has an invalid sha256".format(i))
        if layout == "file":
            if len(files) != 1 or rel != name:
                bad("describes a single-file checkpoint whose file is not named like the checkpoint")
            target = [name]
        else:
            target = [name] + rel.split("/")
        if "/".join(target) in targets:
            bad("lists {} twice".format(rel))
        targets.add("/".join(target))
        entries.append(
            {
                "key": key,
                "version": version,
                "path": rel,
                "size": size,
                "algorithm": algorithm,
                "checksum": checksum,
                # what the instance must compute: S3's form (the whole object's base64 digest, or the composite)
                "want": b64(bytes.fromhex(digest)) if digest else checksum,
                "parts": parts if part_size else 0,
                "part_size": part_size,
                "target": target,
            }
        )
    return {"name": name, "step": step, "files": entries}


def same_content(fd, entry):
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_size == entry["size"] and content_matches(fd, entry)


def content_matches(fd, entry):
    """Does FD hold the entry's bytes: its whole-file checksum (CRC32, or SHA-256 in older manifests), or (a
    multipart object uploaded in parallel) the composite of its part_size-byte parts' checksums?"""
    alg = entry["algorithm"]
    if not entry["part_size"]:
        return b64(hash_fd(fd, alg)) == entry["want"]
    digests = [HASHES[alg](pread_exact(fd, length, off)).digest() for _, off, length in part_ranges(entry["size"], entry["part_size"])]
    return composite(digests, alg) == entry["want"]


def existing(ckfd, entry):
    """'absent', 'present' (same size and checksum: the checkpoint directory's writers are trusted with its
    content, which they could change after the restore as well) or why the target conflicts."""
    fd = os.dup(ckfd)
    try:
        *dirs, last = entry["target"]
        for part in dirs:
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return "absent"
            if not stat.S_ISDIR(st.st_mode):
                return "{} is not a directory".format(part)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        try:
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISREG(st.st_mode):
            return "it exists and is not a regular file"
        if st.st_size != entry["size"]:
            return "it exists with {} bytes, the checkpoint's file has {}".format(st.st_size, entry["size"])
        ffd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        try:
            return "present" if same_content(ffd, entry) else "it exists with different content ({})".format(NAMES[entry["algorithm"]])
        finally:
            os.close(ffd)
    finally:
        os.close(fd)


def make_parents(ckfd, target, ckstat):
    """A descriptor of the directory that holds TARGET (its path segments below the checkpoint dir, whose descriptor
    is CKFD and lstat CKSTAT), walked by ``open_dir_nofollow`` from CKFD: never through a symbolic link. A missing
    directory is created with the checkpoint dir's mode and, when this call created it, owner. RestoreConflict when a
    segment is not a directory (a file, a symbolic link); ScriptFailed when one cannot be created or chowned."""

    def create(fd, part, _path):
        try:
            os.mkdir(part, stat.S_IMODE(ckstat.st_mode), dir_fd=fd)
        except FileExistsError:  # created meanwhile, not by this call: not chowned
            return open_child_dir(part, fd)
        except OSError as exc:
            raise Fail(8, "cannot restore {}: cannot create the directory {}: {}".format("/".join(target), part, exc.strerror))
        child = open_child_dir(part, fd)
        try:
            chown_like(child, ckstat)
        except OSError as exc:
            os.close(child)
            raise Fail(8, "cannot restore {}: cannot give the directory {} its owner: {}".format("/".join(target), part, exc.strerror))
        return child

    try:
        return open_dir_nofollow("/".join(target[:-1]), missing=create, start=ckfd)
    except OSError as exc:
        raise Fail(6, "cannot restore {}: {} is not a directory".format("/".join(target), exc.filename))


def open_staging(ckfd, name):
    """The root-only staging directory NAME inside the checkpoint dir (reused, emptied, if this execution
    left one), as a descriptor."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=ckfd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=ckfd)
    except OSError as exc:
        raise Fail(8, "cannot open the staging directory {}: {}".format(name, exc.strerror))
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise Fail(
            6,
            "the staging directory {} exists and is not autostop's own (owner uid {}, mode {:o}); remove it".format(
                name, st.st_uid, stat.S_IMODE(st.st_mode)
            ),
        )
    empty_staging(fd)
    return fd


def empty_staging(fd):
    for entry in os.listdir(fd):
        try:
            os.unlink(entry, dir_fd=fd)
        except OSError as exc:
            log("could not remove {} from the staging directory: {}".format(show(entry), exc.strerror))


def restore_files(
    ckdir,
    bucket,
    manifest_key,
    manifest_version,
    manifest_sha256,
    upload_prefix,
    run_id,
    instance_id,
    execution_name,
    work,
    pid_file,
    log_file,
    command,
):
    manifest_uri = "s3://{}/{}".format(bucket, manifest_key)
    manifest_path = os.path.join(work, "manifest.json")
    what = "downloading the manifest {} (version {})".format(manifest_uri, manifest_version)
    fetch(bucket, manifest_key, manifest_version, manifest_path, what)
    fd = os.open(manifest_path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        digest = hash_fd(fd).hex()
    finally:
        os.close(fd)
    if digest != manifest_sha256:
        raise Fail(
            5,
            "the manifest {} (version {}) has SHA-256 {}, the verified one has {}; nothing in it was trusted".format(
                manifest_uri, manifest_version, digest, manifest_sha256
            ),
        )
    m = parse_manifest(manifest_path, run_id, instance_id, bucket, manifest_uri, upload_prefix)
    real = os.path.realpath(ckdir)
    if os.path.lexists(ckdir) and real != os.path.normpath(ckdir):
        raise Fail(6, "checkpoint-dir {} is or passes through a symbolic link (to {}); tag the real path".format(ckdir, real))
    try:
        ckfd = open_dir_nofollow(ckdir, missing=create_like_parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Fail(6, "checkpoint-dir {} is not a directory or passes through a symbolic link".format(ckdir))
        raise Fail(8, "cannot open or create the checkpoint directory {}: {}".format(ckdir, exc.strerror))
    ckstat = os.fstat(ckfd)
    if command:  # refused now, before anything is downloaded or placed
        trainer_preflight(ckdir, ckstat.st_uid, pid_file, log_file, command)
    # 2. What is already there.
    todo, conflicts = [], []
    for entry in m["files"]:
        state = existing(ckfd, entry)
        if state == "absent":
            todo.append(entry)
        elif state != "present":
            conflicts.append("{} ({})".format(os.path.join(ckdir, *entry["target"]), state))
    if conflicts:
        raise Fail(
            6,
            "not restoring {} over what is on the instance: {}{}. Nothing was downloaded or changed; move "
            "those files away and retry".format(
                m["name"], "; ".join(conflicts[:5]), ", and {} more".format(len(conflicts) - 5) if len(conflicts) > 5 else ""
            ),
        )
    log("{} of {} file(s) of {} already in place".format(len(m["files"]) - len(todo), len(m["files"]), m["name"]))
    if todo:
        staging_name = STAGING_PREFIX + execution_name
        sfd = open_staging(ckfd, staging_name)
        try:
            place(ckdir, ckfd, ckstat, sfd, bucket, m, todo)
        finally:
            empty_staging(sfd)
            st = os.fstat(sfd)
            os.close(sfd)
            try:
                now = os.stat(staging_name, dir_fd=ckfd, follow_symlinks=False)
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    os.rmdir(staging_name, dir_fd=ckfd)
            except OSError as exc:
                log("could not remove the staging directory {}: {}".format(staging_name, exc.strerror))
    os.close(ckfd)
    return {
        "checkpoint": m["name"],
        "path": os.path.join(ckdir, m["name"]),
        "files": len(m["files"]),
        "bytes": sum(f["size"] for f in m["files"]),
        "step": m["step"],
        "present": "downloaded" if todo else "already_present",
        "owner": [ckstat.st_uid, ckstat.st_gid],
    }


def download_parallel(bucket, todo, sfd, mods):
    """Every file of TODO into the staging directory SFD as 000000, 000001, ... in one process (lib/transfer.py),
    then checked: the whole-file checksum, or the composite of its parts' checksums, computed while writing."""
    n = pool_size(DOWNLOAD_PART)
    log("downloading {} file(s), {} bytes, {} at a time".format(len(todo), sum(e["size"] for e in todo), n))

    def open_target(i):
        return os.open("{:06d}".format(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=sfd)

    try:
        got = Download(s3_client(mods), n, mods[2]).run(bucket, todo, open_target)
    except OSError as exc:
        raise Fail(8, "cannot write the restored files in the staging directory: {}; free disk space".format(exc.strerror or exc))
    except SizeMismatch as exc:
        raise Fail(5, "{}; the checkpoint object was replaced or corrupted".format(exc))
    except NoRoom as exc:
        raise Fail(4, str(exc))
    except DownloadError as exc:
        raise Fail(4, "{}. Check that the object exists and that the instance profile may read it".format(exc))
    for entry, sums in zip(todo, got):
        value = b64(sums["digest"]) if sums["digest"] is not None else sums["checksum"]
        if value != entry["want"]:
            raise Fail(
                5,
                "s3://{}/{} has {}{} {} on the instance, the manifest says {}; the checkpoint object was replaced or corrupted".format(
                    bucket,
                    entry["key"],
                    "" if sums["digest"] is not None else "composite ",
                    NAMES[entry["algorithm"]],
                    value,
                    entry["want"],
                ),
            )


def download_with_cli(bucket, todo, sfd):
    """Every file of TODO into the staging directory SFD through the AWS CLI, one GetObject per file, each checked
    (S3's checksum, then size and checksum on the instance): the path when python3 cannot import botocore."""
    for i, entry in enumerate(todo):
        staged = "{:06d}".format(i)
        uri = "s3://{}/{}".format(bucket, entry["key"])
        log("downloading {} ({} bytes) from {}".format("/".join(entry["target"]), entry["size"], uri))
        resp = get_object(
            bucket, entry["key"], entry["version"], staged, "downloading {} (version {})".format(uri, entry["version"]), cwd_fd=sfd
        )
        got = resp.get("Checksum" + entry["algorithm"])
        if isinstance(got, str) and entry["checksum"] and got.split("-")[0] != entry["checksum"].split("-")[0]:
            raise Fail(
                5,
                "S3 holds {} checksum {} for {}, the manifest says {}; the checkpoint object was replaced or corrupted".format(
                    NAMES[entry["algorithm"]], got, uri, entry["checksum"]
                ),
            )
        fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=sfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                raise Fail(
                    5,
                    "{} has {} bytes on the instance, the manifest says {}; the checkpoint object was replaced or corrupted".format(
                        uri, st.st_size, entry["size"]
                    ),
                )
            if not content_matches(fd, entry):
                raise Fail(
                    5,
                    "{} has other bytes on the instance than the manifest's {} {}; the checkpoint object was replaced or corrupted".format(
                        uri, NAMES[entry["algorithm"]], entry["want"]
                    ),
                )
        finally:
            os.close(fd)


def place(ckdir, ckfd, ckstat, sfd, bucket, m, todo):
    # 3. Download and verify everything before anything is placed.
    mods = sdk()
    if mods is not None:
        download_parallel(bucket, todo, sfd, mods)
    else:
        download_with_cli(bucket, todo, sfd)
    for i, _ in enumerate(todo):
        fd = os.open("{:06d}".format(i), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=sfd)
        try:
            chown_like(fd, ckstat)
            os.fchmod(fd, stat.S_IMODE(ckstat.st_mode) & 0o666)
        finally:
            os.close(fd)
    # 4. Into place; link(2) never replaces a name.
    for i, entry in enumerate(todo):
        staged = "{:06d}".format(i)
        target = os.path.join(ckdir, *entry["target"])
        pfd = make_parents(ckfd, entry["target"], ckstat)
        try:
            try:
                os.link(staged, entry["target"][-1], src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                state = existing(ckfd, entry)
                if state != "present":
                    raise Fail(
                        6,
                        "{} appeared while the checkpoint was being restored ({}); it was kept, nothing was overwritten".format(
                            target, state
                        ),
                    )
            except OSError as exc:
                raise Fail(8, "cannot move the restored file into {}: {}".format(target, exc.strerror))
            os.unlink(staged, dir_fd=sfd)
        finally:
            os.close(pfd)


def record_baseline(log_file, baseline_file, boot):
    """Records LOG_FILE's size now as this boot's log baseline in BASELINE_FILE (``write_baseline``, lib/baseline.py);
    returns the size."""
    try:
        st = os.stat(log_file)
        dev, ino, size = st.st_dev, st.st_ino, st.st_size
    except FileNotFoundError:
        dev = ino = size = 0
    except OSError as exc:
        raise Fail(8, "cannot read the size of the log file {}: {}".format(log_file, exc.strerror))
    try:
        write_baseline(baseline_file, boot, dev, ino, size)
    except OSError as exc:
        raise Fail(
            8,
            "cannot record the log baseline in {}: {}; set AUTOSTOP_STATE_DIR to a writable directory".format(baseline_file, exc.strerror),
        )
    return size


def program_problem(program, uid):
    """Why PROGRAM may not run as UID (None if it may): it must be a regular file owned by UID or root, not writable by
    group or others, not set-user-ID or set-group-ID. A missing program fails later, when it is executed."""
    try:
        st = os.stat(program)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid not in (uid, 0):
        return "is owned by uid {}; it must be owned by the trainer's user (uid {}) or root".format(st.st_uid, uid)
    if st.st_mode & 0o022:
        return "is writable by group or others (mode {:o}); chmod go-w it".format(stat.S_IMODE(st.st_mode))
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return "is set-user-ID or set-group-ID"
    return None


def allowlist_problem(path, command):
    """Why COMMAND may not run as root (None if it may): its exact line must be in the allowlist PATH, a regular
    file owned by root, not writable by group or others, in a directory likewise (lines starting with # are
    comments; surrounding whitespace is ignored)."""
    if not path.startswith("/"):
        return "the allowlist path {} is not absolute".format(path)
    try:
        dst = os.stat(os.path.dirname(path))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "{} does not exist".format(path)
    except OSError as exc:
        return "{} cannot be read ({})".format(path, exc.strerror)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022 or dst.st_uid != 0 or dst.st_mode & 0o022:
            return "{} is not trusted: it and its directory must be owned by root and not writable by group or others".format(path)
        data = os.read(fd, 1 << 20).decode("utf-8", "replace")
    finally:
        os.close(fd)
    if any(line.strip() == command for line in data.splitlines() if not line.lstrip().startswith("#")):
        return None
    return "the command is not listed in {}".format(path)


def entry_problem(dfd, base, uid, pid_file):
    """Why the PID file BASE in directory DFD may not be replaced for a trainer of UID (None if it may): it must be
    absent, or a regular file of UID holding nothing, a dead process's pid or the pid of a process of UID."""
    try:
        st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != uid:
        return "is owned by uid {}, not by the trainer's user (uid {})".format(st.st_uid, uid)
    fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    try:
        data = os.read(fd, 65)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not text:
        return None
    if len(data) > 64 or not re.match(r"^[0-9]{1,10}$", text):
        return "holds something other than a process id"
    try:
        with open("/proc/{}/status".format(int(text))) as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    owner = re.search(r"^Uid:\s+([0-9]+)", status, re.M)
    if owner is None or int(owner.group(1)) != uid:
        return "names pid {}, a live process of uid {}, not of the trainer's user (uid {})".format(
            int(text), owner.group(1) if owner else "unknown", uid
        )
    return None


def path_problem(path, uid, pid_file):
    """Why PATH (the PID file, or with PID_FILE False the log file) is not the trainer's (None if it is)."""
    directory, base = os.path.split(path)
    try:
        dfd = open_dir_nofollow(directory)
    except OSError as exc:
        return "cannot be reached: its directory {} does not exist or passes through a symbolic link ({})".format(directory, exc.strerror)
    try:
        if pid_file:
            owner = os.fstat(dfd).st_uid
            if owner != uid:
                return "is in {}, a directory of uid {}, not of the trainer's user (uid {})".format(directory, owner, uid)
            return entry_problem(dfd, base, uid, pid_file)
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return "is a symbolic link or not a regular file"
        if st.st_uid != uid:
            return "is owned by uid {}, not by the trainer's user (uid {})".format(st.st_uid, uid)
        return None
    finally:
        os.close(dfd)


def trainer_preflight(ckdir, uid, pid_file, log_file, command):
    """Refuses (ResumeCommandRefused) to run COMMAND as UID, the owner of the checkpoint directory, unless: for a
    user other than root, its program is owned by that user or root and not writable by others; for root, its
    exact line is in the root-owned allowlist. The PID and log files must be the trainer's (see path_problem)."""
    program = command.split(" ")[0]
    why = program_problem(program, uid)
    if why:
        raise Fail(
            REFUSED,
            "the resume command's program {} {}; it would run as uid {}, the owner of {}. Nothing was downloaded".format(
                program, why, uid, ckdir
            ),
        )
    if uid == 0:
        path = os.environ.get("AUTOSTOP_RESUME_ALLOWLIST") or ALLOWLIST
        why = allowlist_problem(path, command)
        if why:
            raise Fail(
                REFUSED,
                "the checkpoint directory {} is owned by root, so the resume command would run as root, "
                "which a tag-supplied command may only do when its exact line is in {} ({}). Add that "
                "line to {} (owned by root, mode 644), or chown the checkpoint directory to the trainer's "
                "user. Nothing was downloaded".format(ckdir, path, why, path),
            )
    for what, path in (("PID file", pid_file), ("log file", log_file)):
        why = path_problem(path, uid, what == "PID file") if path else None
        if why:
            raise Fail(
                REFUSED,
                "the {} {} {}; the restore never writes through a symbolic link, into another user's "
                "directory or over another user's file. Nothing was downloaded".format(what, path, why),
            )


def write_pid_file(pid_file, pid, uid, gid):
    """PID into PID_FILE through an O_EXCL temp file in its directory and rename(2), owned by the trainer's user;
    the directory is reached without following symbolic links and must be the trainer's user's."""
    directory, base = os.path.split(pid_file)
    dfd = open_dir_nofollow(directory)
    tmp = ".{}.autostop-{}".format(base, os.getpid())
    try:
        why = "is in a directory of another user" if os.fstat(dfd).st_uid != uid else entry_problem(dfd, base, uid, True)
        if why:
            raise OSError(errno.EPERM, "it " + why)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            os.write(fd, "{}\n".format(pid).encode("ascii"))
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def launch(run_id, ckpt_path, ckdir, uid, gid, log_file, default_log, pid_file, command):
    """Starts COMMAND detached as UID/GID (see restore.sh, step 7); returns its pid once it has lived 2 s."""
    argv = command.split(" ")  # the document's pattern allows single spaces only: no quoting, no globbing
    switch = os.geteuid() == 0 and uid != 0
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        user = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSM_") and k != "AUTOSTOP_RESUME_ALLOWLIST"}
    env.update({"AUTOSTOP_RUN_ID": run_id, "AUTOSTOP_RESUME_CHECKPOINT": ckpt_path, "AUTOSTOP_CHECKPOINT_DIR": ckdir})
    home = env.get("HOME", "/")
    if switch:
        home = user.pw_dir if user else "/"
        env.update({"HOME": home, "USER": user.pw_name if user else str(uid), "LOGNAME": user.pw_name if user else str(uid)})
    out = log_file or default_log
    if not log_file:
        os.makedirs(os.path.dirname(default_log), mode=0o755, exist_ok=True)
    rfd, wfd = os.pipe()  # close-on-exec: EOF on exec, else the child's error
    pid = os.fork()
    if pid == 0:  # the child: never returns
        stage = "starting a new session"
        try:
            os.close(rfd)
            os.setsid()
            if not log_file:  # autostop's own log, opened as root
                stage = "opening " + default_log
                lfd = os.open(default_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY, 0o640)
            if switch:
                stage = "switching to uid {} gid {}".format(uid, gid)
                if user:
                    os.initgroups(user.pw_name, gid)
                else:
                    os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            if uid != 0:  # neither it nor anything it starts gains privileges (set-user-ID programs such as sudo)
                stage = "setting no_new_privs"
                if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl failed")
            if log_file:  # the user's log, opened as the user, never through a symbolic link
                stage = "opening the log file " + log_file
                ldir, lbase = os.path.split(log_file)
                lfd = os.open(
                    lbase, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY | os.O_NOFOLLOW, 0o644, dir_fd=open_dir_nofollow(ldir)
                )
            stage = "redirecting stdin, stdout and stderr"
            nfd = os.open("/dev/null", os.O_RDONLY)
            os.dup2(nfd, 0)
            os.dup2(lfd, 1)
            os.dup2(lfd, 2)
            os.closerange(3, wfd)
            os.closerange(wfd + 1, 65536)
            try:
                os.chdir(home)
            except OSError:
                os.chdir("/")
            stage = "executing " + argv[0]
            os.execve(argv[0], argv, env)
        except BaseException as exc:
            try:
                os.write(wfd, "{}: {}".format(stage, getattr(exc, "strerror", None) or exc).encode("utf-8", "replace")[:2000])
            finally:
                os._exit(127)
    os.close(wfd)
    why = b""
    while True:
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        why += chunk
    os.close(rfd)
    if why:
        os.waitpid(pid, 0)
        raise Fail(7, "the resume command could not be started ({})".format(why.decode("utf-8", "replace")))
    log("started the resume command as pid {} (uid {}), output appended to {}".format(pid, os.geteuid() if not switch else uid, out))
    if pid_file:
        try:
            write_pid_file(pid_file, pid, uid, gid)
        except OSError as exc:
            raise Fail(
                7, "the resume command runs as pid {}, but its PID file {} could not be written: {}".format(pid, pid_file, exc.strerror)
            )
    time.sleep(ALIVE_CHECK_SECONDS)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        how = "exit status {}".format(os.WEXITSTATUS(status)) if os.WIFEXITED(status) else "signal {}".format(os.WTERMSIG(status))
        raise Fail(
            7,
            "the resume command (pid {}) ended within {} s ({}); see {}. It must be the trainer itself, not a launcher that returns".format(
                pid, ALIVE_CHECK_SECONDS, how, out
            ),
        )
    return pid


RESTORE_PARAMETERS = {
    "ManifestVersionId": (r"^[A-Za-z0-9._+/=-]{1,1024}$", "expected the S3 VersionId of the verified manifest"),
    "ManifestSha256": (r"^[0-9a-f]{64}$", "expected the SHA-256 (64 lowercase hex digits) of the verified manifest"),
    "UploadPrefix": (r"^[A-Za-z0-9._/=+:-]{1,900}/$", "expected the verified upload's S3 key prefix, ending with /"),
    "LogFile": PARAMETERS["PidFile"],
    "ResumeCommand": (
        r"^(|/[A-Za-z0-9._/-]{1,254}( [A-Za-z0-9._/=:,+@%-]{1,255}){0,31})$",
        "expected empty or an absolute program path followed by up to 31 arguments, separated by single spaces, of letters, "
        "digits and . _ / = : , + @ % - (no quotes, no shell syntax)",
    ),
}
"""The restore's own parameters (the others: ``PARAMETERS`` of lib/instance.py)."""
RESTORE_VARIABLES = (  # noqa: SIM905 - fewer bytes in the document than a list literal
    "SSM_RunId SSM_InstanceId SSM_ExecutionName SSM_CheckpointDir SSM_Bucket SSM_ManifestKey SSM_ManifestVersionId "
    "SSM_ManifestSha256 SSM_UploadPrefix SSM_PidFile SSM_LogFile SSM_ResumeCommand"
).split()


def restore_parameters():
    """Re-validates the document's parameters (InvalidParameter)."""
    require(RESTORE_VARIABLES)
    check_all(RESTORE_VARIABLES, RESTORE_PARAMETERS)
    for name, kind in (
        ("CheckpointDir", "path"),
        ("PidFile", "path"),
        ("LogFile", "path"),
        ("ManifestKey", "key"),
        ("UploadPrefix", "key"),
    ):
        check_segments(name, kind)
    for name in ("CheckpointDir", "PidFile", "LogFile"):
        check_not_system(name)
    program = param("ResumeCommand").split(" ")[0] + "/"
    if program != "/" and ("//" in program or "/./" in program or "/../" in program):
        raise Fail(
            "InvalidParameter", f"parameter ResumeCommand: the program path {program[:-1]} may not contain '.', '..' or empty segments"
        )
    if param("PidFile") and (param("PidFile") + "/").startswith(param("CheckpointDir") + "/"):
        raise Fail("InvalidParameter", "parameter PidFile may not be inside CheckpointDir")


def main_restore():
    """``restore``: the restore document's contract (infra/documents/restore.sh): download the verified checkpoint,
    verify it, place it without overwriting anything, start the resume command; returns the result line."""
    restore_parameters()
    aws_environment()
    if shutil.which("aws") is None:
        raise Fail("DownloadFailed", "the AWS CLI (aws) is not installed or not on PATH; install it on the instance")
    work = work_dir("restore", "")
    try:
        refuse_second_trainer()
        state = record_log_baseline()
        names = ("CheckpointDir", "Bucket", "ManifestKey", "ManifestVersionId", "ManifestSha256", "UploadPrefix", "RunId", "InstanceId")
        restored = restore_files(*map(param, names), param("ExecutionName"), work, *map(param, ("PidFile", "LogFile", "ResumeCommand")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"restored {restored['path']}")
    trainer, pid = "not_configured", None
    if param("ResumeCommand"):
        refuse_second_trainer()
        uid, gid = restored["owner"]
        default_log = f"{state}/resume-{param('RunId')}.log"
        pid = launch(
            param("RunId"),
            restored["path"],
            param("CheckpointDir"),
            uid,
            gid,
            param("LogFile"),
            default_log,
            param("PidFile"),
            param("ResumeCommand"),
        )
        trainer = "started"
    keep = ("checkpoint", "files", "bytes", "step", "present")
    return json.dumps(dict({"result": "restored"}, **{k: restored[k] for k in keep}, trainer=trainer, pid=pid))


def refuse_second_trainer():
    """ResumeCommandFailed when PidFile names a live trainer of this boot: a second one must not start."""
    pid_file = param("PidFile")
    pid = read_pid(pid_file) if param("ResumeCommand") and pid_file else None
    if pid is None or pid_file_stale(pid_file):
        return
    status, why, _ = pid_is_trainer(pid, pid_file)
    if status == 0:
        raise Fail("ResumeCommandFailed", f"a trainer is already running (pid {pid} from {pid_file}); the resume command was not started")
    if why:
        log(f"pid {pid} from {pid_file} is alive but not the trainer that wrote it ({why})")


def record_log_baseline():
    """With LogFile, before anything else: records this boot's log baseline (whatever happens next, the previous
    session's lines never count). Returns the state directory (None without LogFile and ResumeCommand)."""
    if not param("LogFile") and not param("ResumeCommand"):
        return None
    state = state_dir()
    if state is None:
        raise Fail(
            "ScriptFailed",
            f"the state directory {os.environ.get('AUTOSTOP_STATE_DIR') or '/var/lib/autostop'} is unusable: it must be an absolute path "
            "to a directory owned by root and not writable by group or others",
        )
    if param("LogFile"):
        boot = boot_key()
        if boot is None:
            raise Fail("ScriptFailed", "cannot identify this boot (/proc/sys/kernel/random/boot_id)")
        baseline_file = log_baseline_file(state, param("LogFile"))
        offset = record_baseline(param("LogFile"), baseline_file, boot)
        log(f"recorded log baseline {offset} of {param('LogFile')} in {baseline_file}")
    return state
