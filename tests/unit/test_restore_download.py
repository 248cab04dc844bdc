"""The restore's read path (infra/documents/lib/download.py): bodies read from the socket into one buffer, lengths
and connections.

Against a small local HTTP server (and the same over TLS) and the real botocore client, so that urllib3's and
http.client's internals the fast path relies on are the ones this botocore has.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import ipaddress
import itertools
import os
import re
import resource
import signal
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "documents" / "lib"))
import download  # noqa: E402

MIB = 1024 * 1024
DATA = {"one": os.urandom(3 * download.BODY_CHUNK + 17), "big": os.urandom(3 * MIB + 5), "empty": b""}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    short = 0  # bytes the body lacks: the connection then closes early
    peers: set[int]

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        key = self.path.split("?")[0].rsplit("/", 1)[1]
        body = DATA[key]
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if ranged:
            body = body[int(ranged.group(1)) : int(ranged.group(2)) + 1]
        self.server.peers.add(self.client_address[1])  # type: ignore[attr-defined]
        self.send_response(206 if ranged else 200)
        self.send_header("x-amz-version-id", "v1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) - self.server.short])  # type: ignore[attr-defined]
        if self.server.short:  # type: ignore[attr-defined]
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    yield from serve()


def serve(context: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.scheme = "https" if context else "http"  # type: ignore[attr-defined]
    httpd.verify = True  # type: ignore[attr-defined]
    httpd.daemon_threads = True
    httpd.peers = set()  # type: ignore[attr-defined]
    httpd.short = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadingHTTPServer]:
    """The same server over TLS, with a self-signed certificate for 127.0.0.1 that the client trusts."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    for httpd in serve(context):
        httpd.verify = str(cert)  # type: ignore[attr-defined]
        yield httpd


def self_signed(directory: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / "key.pem").write_bytes(pem)
    return directory / "cert.pem", directory / "key.pem"


def s3(httpd: ThreadingHTTPServer, pool: int) -> Any:
    return botocore.session.Session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"{httpd.scheme}://127.0.0.1:{httpd.server_address[1]}",  # type: ignore[attr-defined]
        verify=httpd.verify,  # type: ignore[attr-defined]
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(max_pool_connections=pool, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def crc32_composite(data: bytes, part: int) -> str:
    """S3's composite CRC32 of DATA cut into PART-byte parts, computed here from zlib, not with lib/transfer.py."""
    parts = [crc32(data[off : off + part]) for off in range(0, len(data), part)]
    return base64.b64encode(crc32(b"".join(parts))).decode() + f"-{len(parts)}"


def restore(httpd: ThreadingHTTPServer, entries: list[dict[str, Any]], tmp_path: Path, pool: int = 1) -> list[dict[str, Any]]:
    """Download.run of ENTRIES (CRC32, what the checkpoint writes, unless an entry names its algorithm)."""
    entries = [{"algorithm": "CRC32"} | e for e in entries]
    dfd = os.open(tmp_path, os.O_RDONLY)
    try:
        return download.Download(s3(httpd, pool), pool, botocore.exceptions).run(
            "b", entries, lambda i: os.open(str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
        )
    finally:
        os.close(dfd)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_bodies_are_read_past_urllib3_and_connections_are_reused(scheme: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server = request.getfixturevalue("server" if scheme == "http" else "tls_server")
    entries = [{"key": "one", "version": "v1", "size": len(DATA["one"]), "algorithm": a} for a in ("CRC32", "SHA256") * 2]
    entries.append({"key": "big", "version": "v1", "size": len(DATA["big"]), "part_size": MIB, "parts": 4})
    entries.append({"key": "empty", "version": "v1", "size": 0})
    body = s3(server, 1).get_object(Bucket="b", Key="one")["Body"]
    assert body_reader_is_the_socket(body)
    body.close()
    server.peers.clear()  # type: ignore[attr-defined]

    got = restore(server, entries, tmp_path)

    assert server.peers == {next(iter(server.peers))}  # type: ignore[attr-defined] # one connection for 9 GetObjects
    for i, e in enumerate(entries):
        assert (tmp_path / str(i)).read_bytes() == DATA[e["key"]]
    assert (got[0]["digest"], got[1]["digest"]) == (crc32(DATA["one"]), hashlib.sha256(DATA["one"]).digest())
    assert got[4]["checksum"] == crc32_composite(DATA["big"], MIB)
    assert got[5]["digest"] == bytes(4)  # the CRC32 of no bytes


def test_older_manifests_multipart_objects_are_checked_with_composite_sha256(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    entries = [{"key": "big", "version": "v1", "size": len(DATA["big"]), "part_size": MIB, "parts": 4, "algorithm": "SHA256"}]

    got = restore(server, entries, tmp_path, pool=2)

    assert (tmp_path / "0").read_bytes() == DATA["big"]
    parts = b"".join(hashlib.sha256(DATA["big"][off : off + MIB]).digest() for off in range(0, len(DATA["big"]), MIB))
    assert got[0] == {"digest": None, "checksum": base64.b64encode(hashlib.sha256(parts).digest()).decode() + "-4"}


def body_reader_is_the_socket(body: Any) -> bool:
    reader = getattr(download.body_reader(body), "__self__", None)
    return isinstance(reader, download.SocketBody) and reader.sock is body._raw_stream._fp.fp.raw._sock  # noqa: SLF001


def test_a_body_read_from_the_socket_ends_in_http_client(server: ThreadingHTTPServer) -> None:
    body = s3(server, 1).get_object(Bucket="b", Key="big")["Body"]
    readinto, buf, got, reads = download.body_reader(body), bytearray(download.BODY_CHUNK), bytearray(), 0
    while n := readinto(buf):
        got += buf[:n]
        reads += 1

    assert bytes(got) == DATA["big"]
    assert body._raw_stream._fp.isclosed()  # noqa: SLF001 # http.client read the last byte and ended the response
    assert body._raw_stream._fp.length == 0  # noqa: SLF001
    assert reads > 3  # 3 MiB + 5 bytes came in reads of at most 1 MiB each


def test_another_length_is_a_size_mismatch(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    with pytest.raises(download.SizeMismatch, match="another size than the manifest's"):
        restore(server, [{"key": "one", "version": "v1", "size": len(DATA["one"]) - 1}], tmp_path)


def test_a_body_that_ends_early_is_a_failed_download(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    server.short = 100  # type: ignore[attr-defined]

    with pytest.raises(download.DownloadError, match="closed after") as raised:
        restore(server, [{"key": "one", "version": "v1", "size": len(DATA["one"])}], tmp_path)
    assert not isinstance(raised.value, download.SizeMismatch)


def test_bodies_urllib3_would_decode_are_read_through_it() -> None:
    class Raw:
        headers = {"content-encoding": "gzip"}
        _fp = object()

        def release_conn(self) -> None:
            pass

    class Body:
        _raw_stream = Raw()

        def __init__(self) -> None:
            self.left = b"abcdef"

        def read(self, n: int) -> bytes:
            chunk, self.left = self.left[:n], self.left[n:]
            return chunk

    readinto, buf = download.body_reader(Body()), bytearray(4)

    assert (readinto(buf), bytes(buf)) == (4, b"abcd")
    assert (readinto(memoryview(buf)[:2]), bytes(buf[:2])) == (2, b"ef")
    assert readinto(buf) == 0


def test_bodies_cross_read_and_write_boundaries_whole(server: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BODY_CHUNK", 65_536)
    monkeypatch.setattr(download, "WRITE_CHUNK", 10_007)  # neither a multiple of the reads nor of the ranges
    entries = [
        {"key": "one", "version": "v1", "size": len(DATA["one"])},
        {"key": "big", "version": "v1", "size": len(DATA["big"]), "part_size": MIB, "parts": 4},
    ]

    got = restore(server, entries, tmp_path, pool=3)

    assert (tmp_path / "0").read_bytes() == DATA["one"] and (tmp_path / "1").read_bytes() == DATA["big"]
    assert got[0]["digest"] == crc32(DATA["one"])
    assert got[1]["checksum"] == crc32_composite(DATA["big"], MIB)


def test_ranges_of_one_file_download_together_and_write_one_at_a_time(
    server: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "BODY_CHUNK", 65_536)
    writing, most, ranges, guard = collections.Counter(), collections.Counter(), [], threading.Lock()
    write_all = download.write_all

    def watched(fd: int, data: memoryview, offset: int) -> None:
        with guard:
            writing[fd] += 1
            most[fd] = max(most[fd], writing[fd])
            ranges.append(offset // MIB)
        time.sleep(0.001)  # a second writer of the same file would overlap here
        write_all(fd, data, offset)
        with guard:
            writing[fd] -= 1

    monkeypatch.setattr(download, "write_all", watched)
    entries = [{"key": "big", "version": "v1", "size": len(DATA["big"]), "part_size": MIB, "parts": 4}]

    got = restore(server, entries, tmp_path, pool=4)

    assert (tmp_path / "0").read_bytes() == DATA["big"]
    assert got[0]["checksum"] == crc32_composite(DATA["big"], MIB)
    assert sum(a != b for a, b in itertools.pairwise(ranges)) > 3  # the ranges' writes interleaved: they ran together
    assert set(most.values()) == {1}  # yet never two writes into the file at once


def test_a_full_disk_is_a_failed_download_that_says_so(server: ThreadingHTTPServer) -> None:
    s3_client = s3(server, 1)
    entries = [{"key": "one", "version": "v1", "size": len(DATA["one"]), "algorithm": "CRC32"}]

    with pytest.raises(download.DownloadError, match="cannot write the restored file: No space left on device; free disk space"):
        download.Download(s3_client, 1, botocore.exceptions).run("b", entries, lambda i: os.open("/dev/full", os.O_WRONLY))


def test_a_file_the_disk_cannot_take_fails_before_it_is_downloaded(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over the limit is then EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, hard))
    try:
        with pytest.raises(download.DownloadError, match="cannot write the restored file: File too large; free disk space"):
            restore(server, [{"key": "one", "version": "v1", "size": len(DATA["one"])}], tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert server.peers == set()  # type: ignore[attr-defined] # no GetObject was sent


def test_an_allocated_file_has_its_size_before_its_bytes_arrive(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert download.allocate(fd, 3 * MIB + 5) is True
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks * 512 >= 3 * MIB + 5) == (3 * MIB + 5, True)
        assert download.allocate(fd, 0) is False
    finally:
        os.close(fd)
