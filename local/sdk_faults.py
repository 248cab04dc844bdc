"""Local runtime and tests only: the on-instance python3 with faults injected at the botocore boundary.

The documents' one-process data path (``infra/documents/lib/transfer.py``) calls S3 through botocore, so the
faults that ``local/faults.sh`` applies to ``aws s3api put-object`` are applied here to the same calls: a
``python3`` shim on the simulated instance's PATH runs ``python sdk_faults.py [-I] -c CODE ARGS...``, which
registers a ``before-call.s3`` handler on every botocore client and then runs CODE as ``python3 -c`` would.

Faults, from the environment:

``AUTOSTOP_SIM_FAULTS`` (comma-separated, the scenario's ``faults``), on PutObject/UploadPart of checkpoint
objects (not manifests):
  corrupt_upload    the body loses its last byte, the checksum header stays (real S3: BadDigest; moto stores it)
  kill_midway       SIGKILL of the whole process group at the second such call, once the first has completed
  interrupt_upload  the second such call loses its connection (botocore ConnectionClosedError)
and, right after the manifest's PutObject, the second writer's faults: ``lose_object``, ``wrong_size``,
``checksum_mismatch``, ``old_checkpoint``, ``manifest_not_json`` (as local/faults.sh describes them).
``AUTOSTOP_SDK_FAULT`` ``Operation=ErrorCode`` (e.g. ``UploadPart=InternalError``): every call of that
operation fails with that S3 error code (botocore ClientError, message "boom").
``AUTOSTOP_SDK_HOOK`` ``<key suffix><TAB><shell command>[<TAB><operation>]``: the command runs once, before the
first S3 call (of that operation, e.g. UploadPart, when given) on
a key ending so (the bytes of a PutObject or UploadPart have been read by then), as a shim around the AWS CLI
runs one before the CLI opens the file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_calls = 0
_done = 0
_create: Any = None  # botocore's own create_client, for the second writer's unhooked client
_hooked = False
_lock = threading.Lock()


def _handler(model: Any, params: dict[str, Any], **_: Any) -> None:
    from botocore.exceptions import ClientError, ConnectionClosedError

    global _calls, _hooked
    op = model.name
    suffix, _, command = os.environ.get("AUTOSTOP_SDK_HOOK", "").partition("\t")
    command, _, operation = command.partition("\t")
    with _lock:
        on_key = params.get("url_path", "").split("?")[0].endswith(suffix)
        run_hook = bool(command) and not _hooked and on_key and operation in ("", op)
        _hooked = _hooked or run_hook
    if run_hook:
        subprocess.run(["bash", "-c", command], check=True)
    wanted = os.environ.get("AUTOSTOP_SDK_FAULT", "")
    if wanted.partition("=")[0] == op:
        raise ClientError({"Error": {"Code": wanted.partition("=")[2], "Message": "boom"}}, op)
    faults = set(os.environ.get("AUTOSTOP_SIM_FAULTS", "").split(","))
    if op not in ("PutObject", "UploadPart") or "/manifests/" in params.get("url_path", ""):
        return
    with _lock:
        _calls += 1
        n = _calls
    if n >= 2 and "kill_midway" in faults:
        # As with the AWS CLI, one call at a time: the first object is in S3 when the second one's call dies.
        deadline = time.monotonic() + 10
        while not _done and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(0, signal.SIGKILL)
    if n >= 2 and "interrupt_upload" in faults:
        raise ConnectionClosedError(endpoint_url=params.get("url", "s3"))
    body = params.get("body")
    if "corrupt_upload" in faults and body:
        params["body"] = (body.getvalue() if hasattr(body, "getvalue") else bytes(body))[:-1]


def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-parameter-build of PutObject: keep the manifest's bucket, key and body for the S3 faults."""
    if "/manifests/" in "/" + params.get("Key", ""):
        body = params.get("Body")
        context["autostop_manifest"] = (params["Bucket"], params["Key"], body if isinstance(body, bytes) else b"")


def _after(model: Any, context: dict[str, Any], **_: Any) -> None:
    global _done
    if model.name in ("PutObject", "UploadPart"):
        with _lock:
            _done += 1
    if model.name == "PutObject" and "autostop_manifest" in context:
        _second_writer(*context["autostop_manifest"])


def _second_writer(bucket: str, key: str, body: bytes) -> None:
    """What local/faults.sh does right after the manifest upload, on this path: lose_object deletes every version
    of the first checkpoint object; wrong_size, checksum_mismatch put other bytes there; old_checkpoint and
    manifest_not_json put another manifest at the key."""
    import datetime
    import json

    import botocore.session

    faults = set(os.environ.get("AUTOSTOP_SIM_FAULTS", "").split(","))
    wanted = faults & {"lose_object", "wrong_size", "checksum_mismatch", "old_checkpoint", "manifest_not_json"}
    if not wanted:
        return
    s3 = _create(botocore.session.Session(), "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    manifest = json.loads(body)
    first = manifest["files"][0]["key"]
    if "lose_object" in wanted:
        for v in s3.list_object_versions(Bucket=bucket, Prefix=first).get("Versions", []):
            if v["Key"] == first:
                s3.delete_object(Bucket=bucket, Key=first, VersionId=v["VersionId"])
    if "wrong_size" in wanted:
        data = s3.get_object(Bucket=bucket, Key=first)["Body"].read()
        s3.put_object(Bucket=bucket, Key=first, Body=data + b"x")
    if "checksum_mismatch" in wanted:
        data = bytearray(s3.get_object(Bucket=bucket, Key=first)["Body"].read())
        data[-1] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=first, Body=bytes(data), ChecksumAlgorithm="CRC32")
    if "old_checkpoint" in wanted:
        when = datetime.datetime.strptime(manifest["decision_time"], "%Y-%m-%dT%H:%M:%SZ") - datetime.timedelta(hours=1)
        manifest["decision_time"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode(), ContentType="application/json")
    if "manifest_not_json" in wanted:
        s3.put_object(Bucket=bucket, Key=key, Body=body[:40], ContentType="application/json")


def install() -> None:
    """Register the handler on every botocore client created from now on."""
    try:
        import botocore.session
    except ImportError:
        return
    global _create
    _create = create = botocore.session.Session.create_client

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = create(self, *args, **kwargs)
        made.meta.events.register("before-parameter-build.s3.PutObject", _remember)
        made.meta.events.register("before-call.s3", _handler)
        made.meta.events.register("after-call.s3", _after)
        return made

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    args = [a for a in argv if a != "-I"]
    if len(args) >= 2 and args[0] == "-c":
        install()
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
        return
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
