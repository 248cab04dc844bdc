"""The data path's arithmetic and its pool (infra/documents/lib/transfer.py), imported as the tests import selection."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra" / "documents" / "lib"))
import s3cli  # noqa: E402
import transfer  # noqa: E402

MIB, GIB = 1024 * 1024, 1024**3


@pytest.mark.parametrize(
    ("size", "part_size", "expected"),
    [
        (0, 64 * MIB, 0),  # one (empty) PutObject
        (64 * MIB, 64 * MIB, 64 * MIB),  # exactly the part size: still one PutObject
        (64 * MIB + 1, 64 * MIB, 64 * MIB),
        (140 * 10**9, 64 * MIB, 64 * MIB),  # 70B bf16 weights: 2,087 parts
        (5 * 1024 * GIB, 64 * MIB, 525 * MIB),  # 5 TiB: raised, in whole MiB, to fit 10,000 parts
    ],
)
def test_part_size_keeps_within_10000_parts(size: int, part_size: int, expected: int) -> None:
    part = transfer.file_part_size(size, part_size)

    assert part == expected
    if size > part_size:
        ranges = transfer.part_ranges(size, part)
        assert len(ranges) <= transfer.MAX_PARTS
        assert sum(length for _, _, length in ranges) == size
        assert [n for n, _, _ in ranges] == list(range(1, len(ranges) + 1))
        assert all(length >= transfer.MIN_PART_SIZE for _, _, length in ranges[:-1])


def test_pool_is_bounded_by_cpus_and_memory() -> None:
    assert transfer.pool_size(64 * MIB, cpus=2, memory=24 * GIB) == 16  # 8 per CPU
    assert transfer.pool_size(64 * MIB, cpus=192, memory=2048 * GIB) == 64  # never more than 64
    assert transfer.pool_size(64 * MIB, cpus=96, memory=4 * GIB) == 16  # a quarter of memory in part buffers
    assert transfer.pool_size(5 * GIB, cpus=8, memory=16 * GIB) == 1  # 5 GiB parts on 16 GiB: one at a time


def test_composite_is_s3s_form() -> None:
    import base64
    import hashlib

    digests = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]

    assert transfer.composite(digests) == base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + "-2"


def test_crc32_is_what_s3_and_botocore_compute() -> None:
    from botocore.httpchecksum import Crc32Checksum

    data = b"123456789" * 100_000
    theirs = Crc32Checksum()
    theirs.update(data)
    ours = transfer.Crc32(data[:7])
    ours.update(memoryview(data)[7:])  # fed in pieces, as a body arrives

    assert transfer.b64(transfer.Crc32(b"123456789").digest()) == "y/Q5Jg=="  # CRC-32's check value, 0xCBF43926
    assert transfer.b64(ours.digest()) == theirs.b64digest()


def test_composite_crc32_is_the_crc32_of_the_part_crc32s() -> None:
    import base64
    import zlib

    parts = [zlib.crc32(b"a").to_bytes(4, "big"), zlib.crc32(b"b").to_bytes(4, "big")]

    assert transfer.composite(parts, "CRC32") == base64.b64encode(zlib.crc32(b"".join(parts)).to_bytes(4, "big")).decode() + "-2"


@pytest.mark.parametrize(
    ("zlib_version", "flags", "expected"),
    [
        ("1.2.13", {"sha_ni"}, "CRC32"),  # braided CRC32 (Debian 12): cheaper than SHA-256 even with SHA-NI
        ("1.3.1", set(), "CRC32"),
        ("1.3.0.zlib-ng", {"sha_ni"}, "CRC32"),
        ("1.2.11.zlib-ng", {"sha_ni"}, "CRC32"),  # zlib-ng 2.0's compatible version: its own fast CRC32
        ("1.2.11", {"sha_ni", "avx2"}, "SHA256"),  # Ubuntu 22.04's slicing-by-4 on a CPU with SHA instructions
        ("1.2.11", {"aes", "sha2", "crc32"}, "SHA256"),  # Arm's
        ("1.2.11", {"avx512f"}, "CRC32"),  # no SHA instructions (p4d's Cascade Lake)
        ("1.2.7", set(), "CRC32"),
    ],
)
def test_the_checksum_is_the_cheaper_one_on_this_instance(
    zlib_version: str, flags: set[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOSTOP_CHECKSUM", raising=False)
    assert s3cli.checksum_algorithm(zlib_version, flags) == expected
    monkeypatch.setenv("AUTOSTOP_CHECKSUM", "SHA256")
    assert s3cli.checksum_algorithm(zlib_version, flags) == "SHA256"
    monkeypatch.setenv("AUTOSTOP_CHECKSUM", "md5")  # not one it sends: ignored
    assert s3cli.checksum_algorithm(zlib_version, flags) == expected


def test_cpu_flags_are_read_from_proc() -> None:
    assert s3cli.proc_cpu_flags()  # this Linux machine names some


class Sent(Exception):
    """Raised in place of sending: carries the signed request's headers."""


@pytest.mark.parametrize(
    ("endpoint", "unsigned"),
    [
        (None, True),  # AWS's own endpoint: TLS
        ("https://s3.internal.example:9000", True),
        ("http://127.0.0.1:9000", True),  # loopback: no network path in between
        ("http://localhost:9000", True),
        ("http://[::1]:9000", True),
        ("http://10.0.0.5:9000", False),  # plain HTTP across a network: a CRC32 would not bind the bytes
        ("http://minio.internal:9000", False),
    ],
)
def test_the_body_goes_unsigned_only_over_tls_or_loopback(endpoint: str | None, unsigned: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mods = transfer.sdk()
    assert mods is not None
    s3 = transfer.client(mods, 1)

    def capture(request: Any, **_: Any) -> None:
        raise Sent(dict(request.headers))

    s3.meta.events.register("before-send.s3.PutObject", capture)
    body = b"weights" * 1000
    checksum = transfer.b64(transfer.Crc32(body).digest())
    with pytest.raises(Sent) as sent:
        s3.put_object(Bucket="b", Key="k", Body=body, ChecksumAlgorithm="CRC32", ChecksumCRC32=checksum)

    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent.value.args[0].items()}
    assert headers["x-amz-checksum-crc32"] == checksum
    expected = "UNSIGNED-PAYLOAD" if unsigned else hashlib.sha256(body).hexdigest()
    assert headers["x-amz-content-sha256"] == expected


def test_pool_stops_at_the_first_error_and_raises_it() -> None:
    pool = transfer.Pool(2)
    ran: list[int] = []

    def work(n: int) -> None:
        if n == 3:
            raise ValueError("part 3 failed")
        time.sleep(0.01)
        ran.append(n)

    for n in range(100):
        pool.submit(work, n)

    with pytest.raises(ValueError, match="part 3 failed"):
        pool.wait()
    assert len(ran) < 99  # what had not started when part 3 failed never ran


def test_clients_come_from_the_session_sdk_loaded_the_s3_model_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "_SDK", [])
    monkeypatch.setattr(transfer, "_SESSION", [])
    monkeypatch.delenv("AUTOSTOP_TRANSFER", raising=False)
    mods = transfer.sdk()
    assert mods is not None
    assert transfer._SESSION[0] is mods  # noqa: SLF001

    def no_second_session() -> None:
        raise AssertionError("a second botocore session: the S3 model would be loaded again (~0.1 s)")

    monkeypatch.setattr(mods[0], "Session", no_second_session)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    assert transfer.client(mods, 4).meta.region_name == "us-east-1"
