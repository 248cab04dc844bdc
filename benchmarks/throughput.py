#!/usr/bin/env python3
"""The checkpoint data path's throughput beside the usual tools, in one run, against one local S3 endpoint.

Cases (issue 10): 1 file x 2 GiB, 1 file x 6 GiB (multipart), 200 files x 20 MiB; each uploaded and restored.
Tools, interleaved per repetition:

- autostop: the real checkpoint document (rendered ``checkpoint.sh``, Mode interruption, no trainer: selection,
  upload, manifest) and the real restore document (``restore.sh``: pinned manifest, download, verify, place).
- ``aws s3 cp`` (AWS CLI v1, ``--checksum-algorithm CRC32``, the product's algorithm; ``--recursive`` for a directory).
- boto3 (s3transfer TransferManager, ``ChecksumAlgorithm=CRC32``; default concurrency 10).
- s5cmd (sends no checksum S3 could verify).

The endpoint is ``benchmarks/s3sink.py`` (it verifies every checksum offered, keeps no data, and serves
downloads from the source files). Files are written once and read from the page cache by every tool. Printed
per case: MB/s (median of the repetitions), the ratio to the fastest tool, and CPU seconds per GB of the tool's
processes (the sink's own CPU excluded), with the load average before and after; then what a restore costs besides
moving bytes (each restore tool on a 1-byte checkpoint, and CRC32 and SHA-256 per GB on this CPU: the restore
checksums every byte, s5cmd verifies nothing) and the Spot budget table. Nothing is asserted.

Reading the restore figures: with 64 MiB parts both single files are multipart objects (32 and 96 parts). Every
restore writes into new page cache, and on this VM (virtio-balloon free page reporting) memory freed more than
about 2 s earlier has gone back to the host: writing 2 GiB in 64 KiB pwrites into such memory took 3.0-3.9 CPU-s,
into memory just freed 0.46-0.59. Each restore removes the previous tool's files just before it starts, so how
much of a restore lands in recycled memory depends on its size, its speed and the order: the 6 GiB case's CPU per
GB moves by up to ~1.5 for every tool from run to run. Compare tools within a run.

Environment: AUTOSTOP_BENCH_SCALE (default 1: the sizes above; 0.25 for a quick look), AUTOSTOP_BENCH_REPEAT
(default 3), AUTOSTOP_BENCH_DIR (default build/bench), AUTOSTOP_BENCH_CLI=1 (also the document's AWS CLI path,
uploads only), AUTOSTOP_BENCH_ONLY=restore (only the restores, each of the objects one autostop upload wrote; no
fixed cost, many-files or Spot budget table), AUTOSTOP_BENCH_TOOLS (comma-separated, default all: autostop,
aws_cli, boto3, s5cmd), AUTOSTOP_BENCH_CASES (comma-separated case numbers from 1, default all),
AUTOSTOP_BENCH_YARDSTICK_CHECKSUM (default CRC32; SHA256 as the issue's first table measured the AWS CLI and boto3),
AUTOSTOP_BENCH_BASELINE (a directory laid out like infra/documents, e.g. from ``git show``: its restore document
is measured too, as the restore tool ``baseline``, to compare a change with what it changes in the same run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import infra.constructs.documents  # noqa: E402
from infra.constructs.documents import render_script  # noqa: E402

sys.path.insert(0, str(REPO / "infra" / "documents" / "lib"))
from transfer import Crc32  # noqa: E402 - the on-instance program's CRC32

MIB = 1024 * 1024
GIB = 1024 * MIB
BUCKET = "bench-bucket"
PART_SIZE = 64 * MIB
SCALE = float(os.environ.get("AUTOSTOP_BENCH_SCALE", "1"))
REPEAT = int(os.environ.get("AUTOSTOP_BENCH_REPEAT", "3"))
WORK = Path(os.environ.get("AUTOSTOP_BENCH_DIR", REPO / "build" / "bench"))
VENV_BIN = Path(sys.executable).parent
ONLY = os.environ.get("AUTOSTOP_BENCH_ONLY", "")  # "restore": skip the uploads and the upload-only tables
ALL_CASES = {
    "1 file x 2 GiB": [int(2 * GIB * SCALE)],
    "1 file x 6 GiB (multipart)": [int(6 * GIB * SCALE)],
    "200 files x 20 MiB": [20 * MIB] * max(2, int(200 * SCALE)),
}
PICKED = os.environ.get("AUTOSTOP_BENCH_CASES", "")
CASES = {c: s for n, (c, s) in enumerate(ALL_CASES.items(), start=1) if not PICKED or str(n) in PICKED.split(",")}
YARDSTICK_CHECKSUM = os.environ.get("AUTOSTOP_BENCH_YARDSTICK_CHECKSUM", "CRC32")  # the AWS CLI's and boto3's uploads
BOTO3_UPLOAD = """
import sys, boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
s3 = boto3.client("s3")
with create_transfer_manager(s3, TransferConfig()) as tm:
    futures = [tm.upload(p, sys.argv[1], sys.argv[2] + p.rsplit("/", 1)[1], extra_args={"ChecksumAlgorithm": sys.argv[3]})
               for p in sys.argv[4:]]
    for f in futures:
        f.result()
"""
BOTO3_DOWNLOAD = """
import os, sys, boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
s3 = boto3.client("s3")
with create_transfer_manager(s3, TransferConfig()) as tm:
    futures = [tm.download(sys.argv[1], k, os.path.join(sys.argv[2], k.rsplit("/", 1)[1])) for k in sys.argv[3:]]
    for f in futures:
        f.result()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_files(case: str, sizes: list[int]) -> Path:
    """CheckpointDir of CASE: ``step-1/shardNNNN.bin`` for several files, ``model_step_1.bin`` for one."""
    root = WORK / "data" / case.split(" (")[0].replace(" ", "-")
    ckdir = root / "ckpt"
    paths = [ckdir / "model_step_1.bin"] if len(sizes) == 1 else [ckdir / "step-1" / f"shard{i:04d}.bin" for i in range(len(sizes))]
    if all(p.exists() and p.stat().st_size == n for p, n in zip(paths, sizes, strict=True)):
        return ckdir
    shutil.rmtree(root, ignore_errors=True)
    block = os.urandom(64 * MIB)
    for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for n, off in enumerate(range(0, size, len(block))):
                f.write((i * 1_000_003 + n).to_bytes(16, "big") + block[16 : min(len(block), size - off)])
    return ckdir


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process tree, stdout) of one command; raises when it fails."""
    before = os.times()
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, proc.stdout


class Bench:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        scripts = WORK / "scripts"
        scripts.mkdir(parents=True, exist_ok=True)
        self.checkpoint = scripts / "checkpoint.sh"
        self.restore = scripts / "restore.sh"
        self.checkpoint.write_text(render_script("checkpoint.sh"))
        self.restore.write_text(render_script("restore.sh"))
        self.restore_baseline = scripts / "restore-baseline.sh"
        if BASELINE:
            ours, infra.constructs.documents.SCRIPTS = infra.constructs.documents.SCRIPTS, Path(BASELINE)
            try:
                self.restore_baseline.write_text(render_script("restore.sh"))
            finally:
                infra.constructs.documents.SCRIPTS = ours
        self.n = 0
        self.last_upload: dict[str, Any] = {}

    def prefix(self, tool: str) -> str:
        self.n += 1
        return f"instances/bench/{tool}/{self.n}/"

    def seed(self, keys: dict[str, Path]) -> None:
        body = json.dumps({k: str(p) for k, p in keys.items()}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/_seed", data=body, method="POST")).read()

    # --- uploads ----------------------------------------------------------------------------------------------

    def up_autostop_cli(self, ckdir: Path, files: list[Path]) -> tuple[float, float]:
        """The same document on an instance whose python3 cannot import botocore: the AWS CLI, one process per call."""
        return self.up_autostop(ckdir, files, transfer="cli")

    def up_autostop(self, ckdir: Path, files: list[Path], transfer: str = "auto") -> tuple[float, float]:
        prefix = self.prefix("autostop")
        env = self.env | {
            "SSM_RunId": "bench",
            "SSM_InstanceId": "i-0123456789abcdef0",
            "SSM_ExecutionName": f"bench-{self.n}",
            "SSM_CheckpointDir": str(ckdir),
            "SSM_PidFile": "",
            "SSM_Bucket": BUCKET,
            "SSM_UploadPrefix": prefix,
            "SSM_ManifestKey": f"{prefix}manifests/bench-{self.n}.json",
            "SSM_Signal": "TERM",
            "SSM_GraceSeconds": "0",
            "SSM_PartSizeBytes": str(PART_SIZE),
            "SSM_DecisionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "SSM_Mode": "interruption",
            "AUTOSTOP_TRANSFER": transfer,
        }
        wall, cpu, out = run(["bash", str(self.checkpoint)], env)
        result = json.loads(out.strip().splitlines()[-1])
        self.last_upload = {"env": env, "result": result, "ckdir": ckdir}
        return wall, cpu

    def up_aws_cli(self, ckdir: Path, files: list[Path]) -> tuple[float, float]:
        prefix = f"s3://{BUCKET}/{self.prefix('cli')}"
        if len(files) == 1:
            argv = ["aws", "s3", "cp", str(files[0]), prefix + files[0].name]
        else:
            argv = ["aws", "s3", "cp", str(files[0].parent), prefix, "--recursive"]
        return run([*argv, "--checksum-algorithm", YARDSTICK_CHECKSUM, "--only-show-errors"], self.env)[:2]

    def up_boto3(self, ckdir: Path, files: list[Path]) -> tuple[float, float]:
        argv = [sys.executable, "-c", BOTO3_UPLOAD, BUCKET, self.prefix("boto3"), YARDSTICK_CHECKSUM, *map(str, files)]
        return run(argv, self.env)[:2]

    def up_s5cmd(self, ckdir: Path, files: list[Path]) -> tuple[float, float]:
        source = str(files[0]) if len(files) == 1 else f"{files[0].parent}/*"
        argv = ["s5cmd", "--endpoint-url", self.endpoint, "cp", source, f"s3://{BUCKET}/{self.prefix('s5cmd')}"]
        return run(argv, self.env)[:2]

    # --- restores (of the objects the last autostop upload wrote) ----------------------------------------------

    def restore_target(self) -> Path:
        target = WORK / "restore"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target

    def uploaded(self) -> tuple[dict[str, Any], list[str]]:
        env, result = self.last_upload["env"], self.last_upload["result"]
        manifest_key = env["SSM_ManifestKey"]
        manifest = json.loads(urllib.request.urlopen(f"{self.endpoint}/{BUCKET}/{manifest_key}").read())
        base = self.last_upload["ckdir"] / result["checkpoint"]
        self.seed({f["key"]: (base / f["path"] if manifest["layout"] == "directory" else base) for f in manifest["files"]})
        return manifest, [f["key"] for f in manifest["files"]]

    def down_baseline(self) -> tuple[float, float]:
        return self.down_autostop(self.restore_baseline)

    def down_autostop(self, script: Path | None = None) -> tuple[float, float]:
        manifest, _ = self.uploaded()
        up = self.last_upload
        target = self.restore_target()
        env = self.env | {
            "AUTOSTOP_STATE_DIR": str(WORK / "state"),
            "AUTOSTOP_RESUME_ALLOWLIST": str(WORK / "no-allowlist"),
            "SSM_RunId": "bench",
            "SSM_InstanceId": "i-0123456789abcdef0",
            "SSM_ExecutionName": f"restore-{self.n}",
            "SSM_CheckpointDir": str(target),
            "SSM_Bucket": BUCKET,
            "SSM_ManifestKey": up["env"]["SSM_ManifestKey"],
            "SSM_ManifestVersionId": up["result"]["manifest_version_id"],
            "SSM_ManifestSha256": up["result"]["manifest_sha256"],
            "SSM_UploadPrefix": up["env"]["SSM_UploadPrefix"],
            "SSM_PidFile": "",
            "SSM_LogFile": "",
            "SSM_ResumeCommand": "",
        }
        return run(["bash", str(script or self.restore)], env)[:2]

    def down_aws_cli(self) -> tuple[float, float]:
        _, keys = self.uploaded()
        target = self.restore_target()
        if len(keys) == 1:
            argv = ["aws", "s3", "cp", f"s3://{BUCKET}/{keys[0]}", str(target / "f")]
        else:
            argv = ["aws", "s3", "cp", f"s3://{BUCKET}/{keys[0].rsplit('/', 1)[0]}/", str(target), "--recursive"]
        return run([*argv, "--only-show-errors"], self.env)[:2]

    def down_boto3(self) -> tuple[float, float]:
        _, keys = self.uploaded()
        return run([sys.executable, "-c", BOTO3_DOWNLOAD, BUCKET, str(self.restore_target()), *keys], self.env)[:2]

    def down_s5cmd(self) -> tuple[float, float]:
        _, keys = self.uploaded()
        source = f"s3://{BUCKET}/{keys[0]}" if len(keys) == 1 else f"s3://{BUCKET}/{keys[0].rsplit('/', 1)[0]}/*"
        return run(["s5cmd", "--endpoint-url", self.endpoint, "cp", source, f"{self.restore_target()}/"], self.env)[:2]


TOOLS = tuple(
    t
    for t in ("autostop", "aws_cli", "boto3", "s5cmd")
    if t in os.environ.get("AUTOSTOP_BENCH_TOOLS", "autostop,aws_cli,boto3,s5cmd").split(",")
)
BASELINE = os.environ.get("AUTOSTOP_BENCH_BASELINE", "")
RESTORE_TOOLS = ("baseline", *TOOLS) if BASELINE else TOOLS
DIRECTIONS = ("restore",) if ONLY == "restore" else ("upload", "restore")
# The same document without botocore (the AWS CLI, one process per call): slow for large files, so only on request.
UPLOAD_ONLY = ("autostop_cli",) if os.environ.get("AUTOSTOP_BENCH_CLI") == "1" else ()


def measure(bench: Bench) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    LOAD.append(os.getloadavg())
    for case, sizes in CASES.items():
        ckdir = make_files(case, sizes)
        files = sorted(p for p in ckdir.rglob("*.bin"))
        total = sum(sizes)
        for _ in range(REPEAT):
            for tool in (TOOLS + UPLOAD_ONLY) if "upload" in DIRECTIONS else ():
                if tool != "s5cmd" or shutil.which("s5cmd", path=bench.env["PATH"]):
                    wall, cpu = getattr(bench, f"up_{tool}")(ckdir, files)
                    results.setdefault((case, "upload", tool), []).append((total / wall, cpu))
            bench.up_autostop(ckdir, files)  # the objects the restores read
            for tool in RESTORE_TOOLS:
                if tool != "s5cmd" or shutil.which("s5cmd", path=bench.env["PATH"]):
                    wall, cpu = getattr(bench, f"down_{tool}")()
                    results.setdefault((case, "restore", tool), []).append((total / wall, cpu))
        print(f"  measured {case}", file=sys.stderr, flush=True)
    LOAD.append(os.getloadavg())
    return results


LOAD: list[tuple[float, float, float]] = []  # load averages (1, 5, 15 min) when measure() started and ended


def report(results: dict[tuple[str, str, str], list[tuple[float, float]]]) -> dict[str, float]:
    loads = "; ".join(" ".join(f"{x:.1f}" for x in load) for load in LOAD)
    print(f"\nThroughput (medians of {REPEAT}; MB = 10^6 bytes; CPU-s/GB: the tool's processes, not the endpoint's)")
    print(f"Load average (1, 5, 15 min) before; after: {loads}")
    columns = RESTORE_TOOLS + UPLOAD_ONLY
    print(f"| case | direction | {' | '.join(columns)} |")
    print("|---|---|" + "---|" * len(columns))
    ours: dict[str, float] = {}
    for case, sizes in CASES.items():
        gb = sum(sizes) / 1e9
        for direction in DIRECTIONS:
            med = {
                t: statistics.median(r[0] for r in results[(case, direction, t)]) / 1e6
                for t in RESTORE_TOOLS
                if (case, direction, t) in results
            }
            cpu = {t: statistics.median(r[1] for r in results[(case, direction, t)]) / gb for t in med}
            best = max(med.values())
            cells = [f"{med[t]:.0f} MB/s ({med[t] / best:.2f}), {cpu[t]:.1f} CPU-s/GB" if t in med else "-" for t in RESTORE_TOOLS]
            print(f"| {case} | {direction} | {' | '.join(cells)} |")
            ours[f"{case}/{direction}"] = med["autostop"]
            ours[f"{case}/{direction}/ratio"] = med["autostop"] / best
    return ours


def spot_table(ours: dict[str, float], fixed: float) -> None:
    """The largest checkpoint that fits into a Spot interruption notice, at several network bandwidths."""
    notice, latency, grace = 120, 15, 30
    window = notice - latency - grace - fixed
    cpu_rate = min(ours["1 file x 6 GiB (multipart)/upload"], ours["200 files x 20 MiB/upload"]) * 1e6  # bytes/s on 2 cores here
    per_core = cpu_rate / 2
    print(
        f"\nSpot budget: {notice} s notice - {latency} s from the warning to the command (EventBridge, Lambda, SendCommand) "
        f"- {grace} s trainer grace (the default spot-grace-seconds) - {fixed:.1f} s of fixed cost (selection, manifest, "
        f"measured) = {window:.0f} s of upload. Rate = min(bandwidth, {per_core / 1e6:.0f} MB/s per core measured here x cores)."
    )
    print("| network | 8 cores | 32 cores | 96 cores |")
    print("|---|---|---|---|")
    for gbps in (1, 10, 25, 100, 400):
        bw = gbps * 1e9 / 8
        cells = [f"{window * min(bw, per_core * cores) / 1e9:.0f} GB" for cores in (8, 32, 96)]
        print(f"| {gbps} Gbit/s ({bw / 1e9:.2f} GB/s) | {' | '.join(cells)} |")
    at_1gbs = window * min(1e9, per_core * 8) / 1e9
    print(f"At 1 GB/s with 8 cores: {at_1gbs:.0f} GB fits (a 20 GB checkpoint {'fits' if at_1gbs >= 20 else 'does not fit'}).")


def many_files(bench: Bench, count: int = 3000, size: int = 64 * 1024) -> None:
    """Seconds to checkpoint COUNT small files: what per-file costs add up to (one process per file used to cost ~1 s)."""
    ckdir = WORK / "data" / f"{count}-files" / "ckpt"
    step = ckdir / "step-1"
    if len(list(step.glob("*.bin"))) != count:
        step.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (step / f"shard{i:05d}.bin").write_bytes(os.urandom(size))
    files = sorted(step.glob("*.bin"))
    cells = []
    for tool in ("autostop", "aws_cli", "boto3"):
        wall, cpu = getattr(bench, f"up_{tool}")(ckdir, files)
        cells.append(f"{tool} {wall:.1f} s ({cpu:.1f} CPU-s)")
    print(f"\n{count} files x {size // 1024} KiB, upload: " + "; ".join(cells))


def restore_costs(bench: Bench) -> None:
    """What a restore costs besides moving bytes: each restore tool on a 1-byte checkpoint (wall and CPU seconds,
    medians of 3: process start, imports, the manifest), and CRC32 and SHA-256 on this CPU in CPU-s/GB."""
    tiny_checkpoint(bench)
    cells = []
    for tool in RESTORE_TOOLS:
        if tool != "s5cmd" or shutil.which("s5cmd", path=bench.env["PATH"]):
            runs = [getattr(bench, f"down_{tool}")() for _ in range(3)]
            cells.append(f"{tool} {statistics.median(r[0] for r in runs):.2f} s ({statistics.median(r[1] for r in runs):.2f} CPU-s)")
    print("\nRestore of a 1-byte checkpoint (fixed cost, medians of 3): " + "; ".join(cells))
    block = os.urandom(MIB)
    for name, h in (("CRC32 (zlib)", Crc32()), ("SHA-256 (hashlib)", hashlib.sha256())):
        started = time.process_time()
        for _ in range(256):
            h.update(block)
        print(f"{name} on this CPU (1 MiB updates, 256 MiB): {(time.process_time() - started) / (256 * MIB / 1e9):.2f} CPU-s/GB")


def tiny_checkpoint(bench: Bench) -> float:
    """Uploads a 1-byte checkpoint with the checkpoint document (the next restores read it); returns the seconds."""
    ckdir = WORK / "data" / "tiny" / "ckpt"
    ckdir.mkdir(parents=True, exist_ok=True)
    (ckdir / "model_step_1.bin").write_bytes(b"x")
    return bench.up_autostop(ckdir, [])[0]


def fixed_cost(bench: Bench) -> float:
    """Seconds the checkpoint document takes for a 1-byte checkpoint (median of 3)."""
    return statistics.median(tiny_checkpoint(bench) for _ in range(3))


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "s3sink.py"), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        bench = Bench(f"http://127.0.0.1:{port}")
        if ONLY == "restore":
            report(measure(bench))
            restore_costs(bench)
            return
        fixed = fixed_cost(bench)
        ours = report(measure(bench))
        restore_costs(bench)
        single, many = ours["1 file x 2 GiB/upload"], ours["200 files x 20 MiB/upload"]
        print(f"\nautostop: 200 files x 20 MiB uploads at {many / single:.2f} x the single-file MB/s; fixed cost {fixed:.2f} s")
        many_files(bench)
        spot_table(ours, fixed)
    finally:
        sink.terminate()
        shutil.rmtree(WORK / "restore", ignore_errors=True)


if __name__ == "__main__":
    main()
