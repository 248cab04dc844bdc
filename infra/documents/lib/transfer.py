"""autostop on-instance data path: parallel, single-pass transfers between the instance and S3.

Pasted into the checkpoint and restore documents' python3 helpers at synth time (before the helper that uses
it) and imported directly by the tests and the benchmark. Stdlib plus the S3 client the instance already has:
botocore, imported from the python3 that runs this (AWS CLI v1, boto3) or as ``awscli.botocore`` (the AWS CLI v2
as Debian, Ubuntu and Amazon Linux package it). ``sdk()`` is None without either (the AWS CLI v2 from AWS's own
installer is a frozen program whose Python nobody else can import): the documents then use the AWS CLI, one
process per call (``AUTOSTOP_TRANSFER=cli`` in the instance's environment forces that path).

Why this is fast and still safe:

- Each byte is read from disk once: a part is read into memory with ``os.pread`` from a descriptor opened
  without following symbolic links and checked to be the very file chosen (device, inode, size, mtime), its
  CRC32 computed from that buffer and sent from that buffer. S3 verifies every part and every single-part object
  against the ``x-amz-checksum-crc32`` computed here and refuses a mismatch (BadDigest).
- Parts of one file and many files are sent concurrently by one pool of threads (``pool_size``: from the CPU
  count, at most 64, and never more part buffers in flight than a quarter of the available memory).
- A checksum per part, not per file: a multipart object's checksum is S3's composite (the checksum of the part
  checksums, ``<base64>-<parts>``), computed part by part in parallel; a whole-file pass would be one core's.
- CRC32 (``zlib.crc32``) where it is the cheaper checksum, which is almost everywhere (``checksum_algorithm`` in lib/s3cli.py):
  0.18 against 0.51 CPU-s/GB for SHA-256 on a CPU with SHA instructions (5.5 against 1.95 GB/s, measured on the
  benchmark machine), and a wider gap on CPUs without them (p4d's); only a zlib older than 1.2.12 (Ubuntu
  22.04's) on a CPU with SHA instructions makes SHA-256 the cheaper one, and then SHA-256 is sent. CRC32 is
  enough because objects are pinned: Verify and the restore read exactly the S3 VersionId that this upload
  returned, and an S3 version's bytes never change, so nobody can put other bytes with the same CRC under it;
  the checksum only has to catch bytes corrupted in transit or at rest, which is what a CRC is built for (every
  burst of up to 32 bits; of other corruptions, about one in 2**32 goes unseen per part). CRC32C and
  CRC64NVME would do as well but need awscrt, which the instance's python3 does not have. Manifests written
  before (SHA-256) are still verified and restored with SHA-256.
- Restores are ranged GetObject calls of the pinned VersionId in parallel, written with ``os.pwrite`` into a
  new file and checksummed in the same pass, then checked against the manifest's size and checksum.
"""

import base64
import concurrent.futures
import hashlib
import importlib
import importlib.util
import ipaddress
import os
import threading
import urllib.parse
import zlib

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3: every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB  # S3: the largest part and the largest PutObject
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MIB  # S3: the largest object
MAX_PARTS = 10000
MAX_POOL = 64
PREAD_MAX = 1024 * MIB  # Linux returns at most ~2 GiB per read(2)


def sdk():
    """The botocore modules ``(session, config, exceptions)`` this python3 can import, or None.

    ``botocore`` (AWS CLI v1, boto3) first, then ``awscli.botocore`` (AWS CLI v2 installed as a Python package).
    None also when ``AUTOSTOP_TRANSFER=cli``, and for a botocore too old to send S3's flexible checksums (before
    about 1.24, early 2022: Ubuntu 22.04's python3-botocore): the AWS CLI then does the work."""
    if os.environ.get("AUTOSTOP_TRANSFER", "auto") == "cli":
        return None
    if _SDK:
        return _SDK[0]
    found = None
    for base in ("botocore", "awscli.botocore"):
        try:
            mods = tuple(importlib.import_module(base + "." + name) for name in ("session", "config", "exceptions"))
        except ImportError:
            continue
        session = mods[0].Session()
        inputs = session.get_service_model("s3").operation_model("PutObject").input_shape.members
        if "ChecksumAlgorithm" in inputs and "ChecksumCRC32" in inputs:
            found = mods
            _SESSION[:] = [mods, session]
            break
    _SDK.append(found)
    return found


_SDK = []  # sdk()'s answer, once per process
_SESSION = []  # (mods, botocore session) sdk() loaded the S3 model with: clients made from it start ~0.1 s sooner


def sdk_available():
    """Whether ``sdk()`` would find botocore, without importing it (a fifth of a second saved per check)."""
    if os.environ.get("AUTOSTOP_TRANSFER", "auto") == "cli":
        return False
    for name in ("botocore", "awscli.botocore"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def mem_available():
    """MemAvailable from /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def pool_size(part_size, cpus=None, memory=None):
    """Threads (and connections) for transfers of parts of up to PART_SIZE bytes: 8 per CPU, at most 64, and never
    more part buffers than fit into a quarter of MEMORY (bytes; default MemAvailable, else 2 GiB), even if that
    leaves one."""
    cpus = cpus or os.cpu_count() or 2
    memory = memory or mem_available() or 2 * 1024 * MIB
    return max(1, min(MAX_POOL, 8 * cpus, memory // 4 // max(part_size, MIN_PART_SIZE)))


def file_part_size(size, part_size):
    """The part size for a SIZE-byte object: PART_SIZE, raised (in whole MiB) so that it needs at most 10,000
    parts. A file of at most PART_SIZE bytes is one PutObject (the function then returns SIZE)."""
    if size <= part_size:
        return size
    need = -(-size // MAX_PARTS)
    need = -(-need // MIB) * MIB
    return max(part_size, need)


def part_ranges(size, part):
    """[(number, offset, length)] of a SIZE-byte object cut into PART-byte parts (numbers from 1)."""
    return [(n + 1, off, min(part, size - off)) for n, off in enumerate(range(0, size, part))] or [(1, 0, 0)]


def b64(digest):
    return base64.b64encode(digest).decode("ascii")


class Crc32:
    """CRC32 (``zlib.crc32``, S3's ``ChecksumCRC32``) with hashlib's ``update``/``digest`` (4 bytes, big-endian).
    zlib lets other threads run while it checksums more than a few KiB."""

    def __init__(self, data=b""):
        self.value = zlib.crc32(data)

    def update(self, data):
        self.value = zlib.crc32(data, self.value)

    def digest(self):
        return self.value.to_bytes(4, "big")


HASHES = {"CRC32": Crc32, "SHA256": hashlib.sha256}  # S3's algorithm names; a manifest entry names its own


def composite(digests, algorithm="SHA256"):
    """S3's composite checksum of a multipart object from its parts' raw digests (the ALGORITHM of their
    concatenation): ``<base64>-<parts>``."""
    return "{}-{}".format(b64(HASHES[algorithm](b"".join(digests)).digest()), len(digests))


def pread_exact(fd, length, offset):
    """LENGTH bytes of FD from OFFSET, or fewer when the file ended early (the caller treats that as a change)."""
    chunks, got = [], 0
    while got < length:
        chunk = os.pread(fd, min(length - got, PREAD_MAX), offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def client(mods, pool):
    """A botocore S3 client for POOL concurrent calls. Region: AWS_DEFAULT_REGION or AWS_REGION; endpoint:
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL when set (older botocore does not read them itself). Checksums are
    the caller's: the client computes none of its own (``when_required``) where the botocore knows the option."""
    session_mod, config_mod, _ = mods
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    options = {
        # The body's CRC32 goes in x-amz-checksum-crc32, which S3 verifies; signing the payload would hash every
        # byte with SHA-256 on top (botocore does so whenever the caller supplies the checksum header).
        "s3": {"payload_signing_enabled": False} if payload_unsigned(endpoint) else {},
        "max_pool_connections": pool + 4,
        "retries": {"max_attempts": 6, "mode": "standard"},
        "connect_timeout": 10,
        "read_timeout": 120,
    }
    for name, value in (
        ("request_checksum_calculation", "when_required"),
        ("response_checksum_validation", "when_required"),
        ("tcp_keepalive", True),
    ):
        try:
            config_mod.Config(**{name: value})
            options[name] = value
        except TypeError:
            pass
    session = _SESSION[1] if _SESSION and _SESSION[0] is mods else session_mod.Session()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
    return session.create_client("s3", region_name=region, endpoint_url=endpoint, config=config_mod.Config(**options))


def payload_unsigned(endpoint):
    """Whether a request body may go without its SigV4 signature (UNSIGNED-PAYLOAD) to the S3 ENDPOINT (a URL, or
    None for AWS's own): over TLS (every AWS S3 endpoint), or to this host's loopback, where no network path lies
    between. The signed x-amz-checksum-crc32 header does not bind the bytes: whoever can change them in transit
    can match a CRC32. Over plain HTTP to another host botocore signs the payload (a SHA-256 of every byte)."""
    if not endpoint:
        return True
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme == "https" or url.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(url.hostname or "").is_loopback
    except ValueError:
        return False


class Pool:
    """Runs callables on POOL threads; the first exception stops what has not started and is re-raised by
    ``wait``. ``submit`` blocks while 2 x POOL calls are queued, so a caller never runs far ahead."""

    def __init__(self, size):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=size)
        self.slots = threading.BoundedSemaphore(2 * size)
        self.failed = threading.Event()
        self.error = None
        self.lock = threading.Lock()
        self.futures = []

    def submit(self, fn, *args):
        if self.failed.is_set():
            return
        self.slots.acquire()
        self.futures.append(self.executor.submit(self._run, fn, args))

    def _run(self, fn, args):
        try:
            if not self.failed.is_set():
                fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            with self.lock:
                if self.error is None:
                    self.error = exc
            self.failed.set()
        finally:
            self.slots.release()

    def wait(self):
        concurrent.futures.wait(self.futures)
        self.executor.shutdown(wait=True)
        if self.error is not None:
            raise self.error
