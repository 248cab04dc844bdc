"""A local S3-compatible endpoint for the throughput benchmark: cheap per byte, and it verifies checksums.

Why not moto's server or a real one: moto echoes a wrong checksum and runs at ~100 MB/s here; SeaweedFS
verifies but costs ~8 CPU-seconds per GB. This sink keeps no object data. It reads each upload once, checks
every ``x-amz-checksum-{sha256,crc32}`` header or aws-chunked trailer and ``Content-MD5`` against the bytes
(400 BadDigest on a mismatch, as S3 does), keeps sizes, part digests and version ids, and serves downloads of
objects that the benchmark mapped to local files (``POST /_seed``) with ``os.sendfile``. Manifests (keys
ending in ``.json``) are kept whole. Operations: PutObject, CreateMultipartUpload, UploadPart,
CompleteMultipartUpload, AbortMultipartUpload, HeadObject, GetObject (Range), HeadBucket, ListObjectsV2.
Signatures are not checked. Responses go out without Nagle's delay (TCP_NODELAY): without it a small body
waited for the client's delayed ACK after the headers, ~40 ms per small GetObject for every tool (the 1-byte
restore: autostop 0.31 -> 0.27 s, s5cmd 0.11 -> 0.07 s, medians of 5).

Run: ``python benchmarks/s3sink.py PORT``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sys
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

CHUNK = 1024 * 1024


class Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


ALGORITHMS = {"sha256": hashlib.sha256, "crc32": Crc32, "sha1": hashlib.sha1}
STORE: dict[str, dict[str, Any]] = {}  # key -> {size, version, checksums, path, body}
UPLOADS: dict[str, dict[int, dict[str, Any]]] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _split(self) -> tuple[str, str, dict[str, list[str]]]:
        url = urlsplit(self.path)
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        return bucket, key, parse_qs(url.query, keep_blank_values=True)

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, s3_code: str, message: str) -> None:
        self._reply(
            code, f"<Error><Code>{s3_code}</Code><Message>{escape(message)}</Message></Error>".encode(), {"Content-Type": "application/xml"}
        )

    # --- uploads ----------------------------------------------------------------------------------------------

    def _read_body(self, keep: bool) -> tuple[int, dict[str, str], bytes] | None:
        """(size, {algorithm: base64 digest}, body if KEEP) after verifying every checksum offered; None when
        a BadDigest was sent."""
        wanted = {a: ALGORITHMS[a]() for a in ALGORITHMS if f"x-amz-checksum-{a}" in self.headers}
        trailer = self.headers.get("x-amz-trailer", "")
        m = re.fullmatch(r"x-amz-checksum-([a-z0-9]+)", trailer.strip())
        if m and m.group(1) in ALGORITHMS:
            wanted.setdefault(m.group(1), ALGORITHMS[m.group(1)]())
        md5 = hashlib.md5() if "Content-MD5" in self.headers else None  # noqa: S324 - S3's Content-MD5
        kept: list[bytes] = []
        size = 0
        trailers: dict[str, str] = {}

        def feed(data: bytes) -> None:
            nonlocal size
            size += len(data)
            for h in wanted.values():
                h.update(data)
            if md5:
                md5.update(data)
            if keep:
                kept.append(data)

        if "aws-chunked" in self.headers.get("Content-Encoding", "") or self.headers.get("x-amz-content-sha256", "").startswith(
            "STREAMING"
        ):
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    break
                left = n
                while left:
                    data = self.rfile.read(min(CHUNK, left))
                    feed(data)
                    left -= len(data)
                self.rfile.readline()
            while True:
                line = self.rfile.readline().strip()
                if not line:
                    break
                name, _, value = line.decode().partition(":")
                trailers[name.strip().lower()] = value.strip()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    break
                feed(data)
                left -= len(data)
        got = {a: base64.b64encode(h.digest()).decode() for a, h in wanted.items()}
        for a, value in got.items():
            claimed = self.headers.get(f"x-amz-checksum-{a}") or trailers.get(f"x-amz-checksum-{a}")
            if claimed != value:
                self._error(400, "BadDigest", f"The {a.upper()} you specified did not match the calculated checksum.")
                return None
        if md5 and base64.b64encode(md5.digest()).decode() != self.headers["Content-MD5"]:
            self._error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
            return None
        return size, got, b"".join(kept)

    def do_PUT(self) -> None:
        bucket, key, q = self._split()
        if not key:
            self._reply(200)
            return
        body = self._read_body(keep=key.endswith(".json"))
        if body is None:
            return
        size, sums, data = body
        etag = f'"{uuid.uuid4().hex}"'
        headers = {"ETag": etag} | {f"x-amz-checksum-{a}": v for a, v in sums.items()}
        if "uploadId" in q:
            with LOCK:
                UPLOADS[q["uploadId"][0]][int(q["partNumber"][0])] = {"size": size, "sums": sums, "etag": etag}
            self._reply(200, b"", headers)
            return
        version = uuid.uuid4().hex
        with LOCK:
            STORE[key] = {"size": size, "version": version, "checksums": sums, "body": data if key.endswith(".json") else None}
        self._reply(200, b"", headers | {"x-amz-version-id": version})

    def do_POST(self) -> None:
        bucket, key, q = self._split()
        if self.path.startswith("/_seed"):
            seed = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with LOCK:
                for k, path in seed.items():
                    entry = STORE.setdefault(k, {"version": uuid.uuid4().hex, "checksums": {}, "body": None})
                    entry.update(path=path, size=os.path.getsize(path))
            self._reply(200, b"{}")
            return
        length = int(self.headers.get("Content-Length", "0"))
        payload = self.rfile.read(length) if length else b""
        if "uploads" in q:
            upload_id = uuid.uuid4().hex
            with LOCK:
                UPLOADS[upload_id] = {}
            xml = (
                f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            )
            self._reply(200, xml.encode(), {"Content-Type": "application/xml"})
            return
        upload_id = q["uploadId"][0]
        with LOCK:
            parts = UPLOADS.pop(upload_id)
        numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", payload)]
        if numbers != sorted(parts) or not numbers:
            self._error(400, "InvalidPart", "parts do not match the uploaded parts")
            return
        sums = {}
        for a in ("sha256", "crc32"):
            if all(a in parts[n]["sums"] for n in numbers):
                joined = b"".join(base64.b64decode(parts[n]["sums"][a]) for n in numbers)
                digest = hashlib.sha256(joined).digest() if a == "sha256" else zlib.crc32(joined).to_bytes(4, "big")
                sums[a] = f"{base64.b64encode(digest).decode()}-{len(numbers)}"
        version = uuid.uuid4().hex
        with LOCK:
            STORE[key] = {"size": sum(parts[n]["size"] for n in numbers), "version": version, "checksums": sums, "body": None}
        extra = "".join(f"<Checksum{a.upper()}>{v}</Checksum{a.upper()}>" for a, v in sums.items())
        xml = (
            f"<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
            f'<ETag>"{uuid.uuid4().hex}-{len(numbers)}"</ETag>{extra}</CompleteMultipartUploadResult>'
        )
        self._reply(200, xml.encode(), {"Content-Type": "application/xml", "x-amz-version-id": version})

    def do_DELETE(self) -> None:
        _, key, q = self._split()
        with LOCK:
            UPLOADS.pop(q.get("uploadId", [""])[0], None)
        self._reply(204)

    # --- downloads --------------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        bucket, key, q = self._split()
        if not key:
            if self.command == "HEAD":
                self._reply(200)
                return
            self._list(bucket, q.get("prefix", [""])[0])
            return
        with LOCK:
            entry = STORE.get(key)
        if entry is None or (entry.get("path") is None and entry.get("body") is None):
            self._error(404, "NoSuchKey", key)
            return
        size, start, end = entry["size"], 0, entry["size"] - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start, end = int(ranged.group(1)), min(int(ranged.group(2) or size - 1), size - 1)
        headers = {
            "ETag": '"x"',
            "x-amz-version-id": entry["version"],
            "Last-Modified": "Sat, 05 Dec 2026 00:00:00 GMT",
            "Accept-Ranges": "bytes",
        }
        if self.headers.get("x-amz-checksum-mode") == "ENABLED" and not ranged:
            headers |= {f"x-amz-checksum-{a}": v for a, v in entry["checksums"].items()}
        self.send_response(206 if ranged else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if self.command == "HEAD":
            return
        if entry.get("body") is not None:
            self.wfile.write(entry["body"][start : end + 1])
            return
        self.wfile.flush()
        with open(entry["path"], "rb") as f:
            offset, left = start, end - start + 1
            while left:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(left, 64 * CHUNK))
                if not sent:
                    break
                offset += sent
                left -= sent

    def _list(self, bucket: str, prefix: str) -> None:
        with LOCK:
            keys = sorted(k for k, e in STORE.items() if k.startswith(prefix) and (e.get("path") or e.get("body") is not None))
        contents = "".join(
            f'<Contents><Key>{escape(k)}</Key><Size>{STORE[k]["size"]}</Size><ETag>"x"</ETag>'
            f"<LastModified>2026-12-05T00:00:00.000Z</LastModified><StorageClass>STANDARD</StorageClass></Contents>"
            for k in keys
        )
        xml = (
            f"<ListBucketResult><Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(keys)}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        )
        self._reply(200, xml.encode(), {"Content-Type": "application/xml"})


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
