"""autostop on-instance restore data path: parallel ranged GetObject of pinned versions, checksummed as written.

Pasted into the restore document after ``lib/transfer.py`` (whose docstring says why it is built this way) and
imported directly by the tests.
"""

import contextlib
import ctypes
import errno
import os
import threading

if "Pool" not in globals():  # run on its own (tests); the document pastes lib/transfer.py above
    from transfer import HASHES, Pool, composite, part_ranges

BODY_CHUNK = 1024 * 1024  # bytes per read of a GetObject body, checksummed at once (256 KiB measured the same)
# Bytes per pwrite. Larger writes cost far more kernel CPU here (Linux 6.18, ext4, a VM on a busy host; likely the
# larger page-cache folios they allocate): writing 3 GiB took 0.7-1.6 s of system time in 64 KiB writes, 1.4-5.6 s
# in 128-512 KiB writes, 4-12 s in 1-8 MiB writes; 256 KiB writes put 70 % of the restore's CPU into
# copy_folio_from_iter_atomic (perf), 6 CPU-s/GB for a 3 GiB file against 1.6 with 64 KiB writes. Re-measured with
# the file's lock below (6 GiB, same runs): 256 KiB writes 2.0 against 1.46 CPU-s/GB; one os.pwritev of 16 x 64 KiB
# costs what a 1 MiB write does (2.5-2.75 against 1.5-1.6); 32 and 16 KiB writes 1.45 and 1.52 against 1.43.
WRITE_CHUNK = 64 * 1024
# The ranges of one file are written one read (BODY_CHUNK) at a time, under the file's lock. A buffered write holds
# the inode's lock (ext4, XFS), and threads waiting for it spin on the CPU while its holder runs (the kernel's
# optimistic spinning); waiting on a Python lock sleeps instead and leaves the CPU to the threads that hash and
# read. Measured in one run (6 GiB, 96 ranges, 16 threads, 2 shared cores, medians of 3): 538 -> 646 MB/s,
# 1.51 -> 1.46 CPU-s/GB; perf showed 5 % of the restore's CPU in rwsem_spin_on_owner before.
NO_LOCK = contextlib.nullcontext()


class Download:
    """Parallel ranged GetObject of pinned S3 versions into new files, checksummed as they are written.

    ``entries``: dicts with key, version, size, algorithm (``"CRC32"`` or ``"SHA256"``, a key of ``HASHES``), and
    either part_size (> 0, with parts) for a multipart object whose composite checksum the manifest gives, or none
    (one GetObject, one checksum of the whole object). ``run(bucket, entries, open_target)`` writes entry i into
    the descriptor ``open_target(i)`` returns (opened when its first byte is due, closed when its last has been
    written, so a 3,000-file restore never holds more than a pool's worth of descriptors) and gives back, per
    entry, ``{"digest": the whole object's raw digest or None, "checksum": composite or None}``; errors raise
    ``DownloadError`` with a message naming the object (botocore's text)."""

    def __init__(self, s3, pool, errors_mod):
        import http.client  # here: the helpers' other subcommands never need it

        self.s3, self.pool_n, self.errors = s3, pool, errors_mod
        self.read_errors = (errors_mod.BotoCoreError, http.client.HTTPException, OSError, ValueError)

    def run(self, bucket, entries, open_target):
        pool = Pool(self.pool_n)
        results, multipart = [], {}
        lock = threading.Lock()
        try:
            for i, e in enumerate(entries):
                if e.get("part_size") and e.get("parts"):
                    fd = open_target(i)
                    with lock:
                        multipart[i] = fd
                    if not allocate(fd, e["size"]):
                        os.ftruncate(fd, e["size"])
                    state = {"digests": [None] * e["parts"], "left": e["parts"], "write_lock": threading.Lock()}
                    for number, off, length in part_ranges(e["size"], e["part_size"]):
                        pool.submit(self._range, bucket, e, (i, fd, multipart, lock), number, off, length, state)
                else:
                    state = {"digest": None}
                    pool.submit(self._whole, bucket, e, i, open_target, state)
                results.append(state)
            pool.wait()
        finally:
            pool.failed.set()
            pool.executor.shutdown(wait=True)
            for fd in multipart.values():
                os.close(fd)
        return [
            {"digest": s.get("digest"), "checksum": composite(s["digests"], e["algorithm"]) if "digests" in s else None}
            for e, s in zip(entries, results)
        ]

    def _get(self, bucket, e, byte_range=None):
        extra = {"Range": "bytes={}-{}".format(*byte_range)} if byte_range else {}
        try:
            resp = self.s3.get_object(Bucket=bucket, Key=e["key"], VersionId=e["version"], **extra)
        except (self.errors.BotoCoreError, self.errors.ClientError) as exc:
            raise DownloadError("downloading s3://{}/{} (version {}) failed: {}".format(bucket, e["key"], e["version"], exc))
        if resp.get("VersionId") not in (None, e["version"]):
            raise DownloadError(
                "s3://{}/{} returned version {}, not the verified version {}".format(bucket, e["key"], resp.get("VersionId"), e["version"])
            )
        return resp

    def _copy(self, bucket, e, resp, fd, offset, length, h, write_lock=None):
        """Writes the LENGTH-byte body of RESP at OFFSET of FD and feeds it to the hash H, up to BODY_CHUNK bytes at
        a time through one reused buffer, each read hashed at once (while it is in the CPU's cache) and written in
        WRITE_CHUNK-byte pwrites, holding WRITE_LOCK (the file's, when several ranges write into it) while writing.
        Raises SizeMismatch when S3 announces another length than the manifest's, DownloadError when reading (a body
        that ends early too) or writing fails."""
        body = resp["Body"]
        try:
            if resp.get("ContentLength", length) != length:
                raise SizeMismatch("s3://{}/{} has another size than the manifest's {} bytes".format(bucket, e["key"], e["size"]))
            readinto, view, done = body_reader(body), memoryview(bytearray(BODY_CHUNK)), 0
            while done < length:
                n = self._read(bucket, e, readinto, view[: min(BODY_CHUNK, length - done)], done, length)
                h.update(view[:n])
                with write_lock or NO_LOCK:
                    write_all(fd, view[:n], offset + done)
                done += n
            release(body)
        finally:
            body.close()

    def _read(self, bucket, e, readinto, buffer, done, length):
        """readinto(BUFFER) of at least one byte, DONE of LENGTH read so far; DownloadError when it fails or ends."""
        try:
            n = readinto(buffer)
        except self.read_errors as exc:
            raise DownloadError("downloading s3://{}/{} failed: {}".format(bucket, e["key"], exc))
        if not n:  # the length was right: the connection ended early
            raise DownloadError(
                "downloading s3://{}/{} failed: the connection closed after {} of {} bytes".format(bucket, e["key"], done, length)
            )
        return n

    def _whole(self, bucket, e, i, open_target, state):
        fd = open_target(i)
        try:
            allocate(fd, e["size"])
            h = HASHES[e["algorithm"]]()
            self._copy(bucket, e, self._get(bucket, e), fd, 0, e["size"], h)
            state["digest"] = h.digest()
        finally:
            os.close(fd)

    def _range(self, bucket, e, target, number, offset, length, state):
        i, fd, multipart, lock = target
        h = HASHES[e["algorithm"]]()
        resp = self._get(bucket, e, (offset, offset + length - 1))
        self._copy(bucket, e, resp, fd, offset, length, h, state["write_lock"])
        state["digests"][number - 1] = h.digest()
        with lock:
            state["left"] -= 1
            if state["left"] == 0:  # the last range of this file: it is whole
                os.close(multipart.pop(i))


def allocate(fd, size):
    """Allocates SIZE bytes of disk to the new file FD (fallocate(2), mode 0: it is then SIZE bytes long); False
    where the file system, the file or the C library cannot (the caller then relies on ftruncate or the writes).
    A disk without room (ENOSPC, EDQUOT, EFBIG) raises NoRoom here, before anything is downloaded. Writes
    into allocated blocks cost less CPU: 2 GiB in 64 KiB pwrites, 0.38 against 0.43 CPU-s (ext4, 4 runs each)."""
    fallocate = libc_fallocate()
    if size <= 0 or fallocate is None:
        return False
    if fallocate(fd, 0, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise NoRoom("cannot write the restored file: {}; free disk space".format(os.strerror(err)))
    return False


def libc_fallocate():
    """The C library's ``fallocate(fd, mode, offset, length)`` (64-bit offsets), looked up once; None without one."""
    if not _FALLOCATE:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            found = getattr(libc, "fallocate64", None) or libc.fallocate
            found.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        except (OSError, AttributeError):
            found = None
        _FALLOCATE.append(found)
    return _FALLOCATE[0]


_FALLOCATE = []


def write_all(fd, data, offset):
    """os.pwrite of all of DATA at OFFSET of FD, WRITE_CHUNK bytes at a time; NoRoom when the disk refuses (full,
    quota, I/O error)."""
    try:
        while data:
            n = os.pwrite(fd, data[:WRITE_CHUNK], offset)
            if n <= 0:
                raise OSError(errno.EIO, "the write made no progress")
            data, offset = data[n:], offset + n
    except OSError as exc:
        raise NoRoom("cannot write the restored file: {}; free disk space".format(exc.strerror))


def body_reader(body):
    """``readinto(buffer) -> bytes read (0 at the end)`` of a botocore StreamingBody.

    Straight from the socket into BUFFER (``SocketBody``) where http.client's response and its socket are the known
    ones; else through http.client's ``readinto`` (urllib3's ``read`` copies each chunk once more); through ``read``
    when urllib3 would decode the body (a Content-Encoding) or its internals are not the known ones."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    encoding = (getattr(raw, "headers", None) or {}).get("content-encoding", "identity")
    if fp is not None and hasattr(fp, "readinto") and hasattr(raw, "release_conn") and encoding == "identity":
        sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
        plain = getattr(fp, "chunked", True) is False and type(getattr(fp, "length", None)) is int
        if plain and hasattr(sock, "recv_into") and hasattr(fp.fp, "peek"):
            return SocketBody(fp, sock).readinto
        return fp.readinto

    def readinto(buffer):
        chunk = body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    return readinto


class SocketBody:
    """The body of an http.client response FP (Content-Length known, not chunked) read with ``recv_into`` from its
    socket SOCK (TLS or not), past http.client's 8 KiB buffered reader. Measured in one run (2 shared cores, 16
    threads, 64 KiB writes): whole-object bodies (200 x 20 MiB) 1.5 CPU-s/GB this way against 3.5 through
    http.client's ``readinto`` (cause not established); 64 MiB ranges 1.7 against 1.6, within the noise.

    The bytes the reader already holds are taken through it first, then the socket is read directly while
    ``fp.length`` (http.client's count of body bytes left) is kept true, and the last byte goes through http.client
    again, so that http.client ends the response itself and the connection can go back to urllib3's pool."""

    def __init__(self, fp, sock):
        self.fp, self.sock, self.drained = fp, sock, False

    def readinto(self, buffer):
        fp, want, buffer = self.fp, min(len(buffer), self.fp.length or 0), memoryview(buffer)
        if want == 0 or fp.length == 1:
            return fp.readinto(buffer[:want] if want else buffer)
        if not self.drained:  # what http.client read beyond the headers: never more than this one body
            self.drained = True
            held = len(fp.fp.peek(0))
            if held:
                return fp.readinto(buffer[: min(held, want, fp.length - 1)])
        n = self.sock.recv_into(buffer, min(want, fp.length - 1))
        fp.length -= n
        return n


def release(body):
    """Hands the connection of a fully read BODY back to urllib3's pool (``close`` alone would drop it when the
    body was read past urllib3)."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if fp is not None and hasattr(fp, "isclosed") and fp.isclosed() and hasattr(raw, "release_conn"):
        raw.release_conn()


class DownloadError(Exception):
    """A download that failed; the message names the object and the cause."""


class NoRoom(DownloadError):
    """The disk refused the restored bytes (full, quota, file size limit, I/O error)."""


class SizeMismatch(DownloadError):
    """The object (the pinned version) has another size than the manifest says: replaced or corrupted."""
