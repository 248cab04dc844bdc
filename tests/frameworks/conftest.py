"""The real-framework layer: checkpoints written by real PyTorch, Lightning, transformers, DCP and Accelerate,
then the real checkpoint.sh and restore.sh (as the SSM documents carry them) against a moto server, then the
framework's own loader on what was restored.

Framework code never runs in this process: it runs in subprocesses with the Python of ``.venv-frameworks``
(``AUTOSTOP_FRAMEWORKS_PYTHON``, set by ``make test-frameworks``), the programs in ``trainers/``. This process
only needs what the main virtualenv has (moto, boto3, the AWS CLI, pytest). Without the variable the whole
directory is left out of collection, so ``make test`` does not run it; with it set to a Python that cannot
import the frameworks, every test here fails (never skips).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

FRAMEWORKS_PYTHON = os.environ.get("AUTOSTOP_FRAMEWORKS_PYTHON", "")
FRAMEWORK_MODULES = ("torch", "lightning", "transformers", "accelerate", "safetensors", "numpy")

if not FRAMEWORKS_PYTHON:
    # `make test` (testpaths = tests) must not run this layer: it needs .venv-frameworks (`make test-frameworks`).
    collect_ignore_glob = ["test_*.py"]

from tests.integration import test_instance_scripts as scripts  # noqa: E402
from tests.integration import test_restore_script as restore_tests  # noqa: E402

TRAINERS = Path(__file__).resolve().parent / "trainers"
CHECKPOINT = scripts.CHECKPOINT
RESTORE = restore_tests.RESTORE

# The fixtures of the instance-script tests: a moto server per module, a bucket per test, the agent's environment.
endpoint = scripts.endpoint
s3 = scripts.s3
bucket = restore_tests.bucket  # versioned, as the stack's: the restore reads the pinned manifest version
base_env = scripts.base_env
children = scripts.children

Result = tuple[int, dict[str, Any], str]


@pytest.fixture(scope="session", autouse=True)
def frameworks_python() -> str:
    """The frameworks' Python: it must exist and import every framework, else each test here fails."""
    if not FRAMEWORKS_PYTHON or not os.access(FRAMEWORKS_PYTHON, os.X_OK):
        pytest.fail(f"AUTOSTOP_FRAMEWORKS_PYTHON={FRAMEWORKS_PYTHON!r} is not an executable Python; run `make test-frameworks`")
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    proc = subprocess.run(
        [FRAMEWORKS_PYTHON, "-c", code, *FRAMEWORK_MODULES], capture_output=True, text=True, timeout=300, env=framework_env({})
    )
    if proc.returncode != 0:
        pytest.fail(f"{FRAMEWORKS_PYTHON} cannot import {', '.join(FRAMEWORK_MODULES)}:\n{proc.stderr[-3000:]}")
    return FRAMEWORKS_PYTHON


def framework_env(extra: dict[str, str]) -> dict[str, str]:
    home = Path(tempfile.gettempdir()) / "autostop-frameworks-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
    }
    env.update(extra)
    return env


def framework_argv(script: str, args: tuple[str | os.PathLike[str], ...], nproc: int) -> list[str]:
    program = str(TRAINERS / f"{script}.py")
    if nproc > 1:  # torchrun: an elastic agent starting nproc ranks (gloo on CPU); it tears all down when one dies
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.2"]
        return [FRAMEWORKS_PYTHON, *launcher, program, *map(str, args)]
    return [FRAMEWORKS_PYTHON, program, *map(str, args)]


class Framework:
    """The outcome of one framework program: return code, its last stdout line as JSON (None if not JSON), stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        lines = proc.stdout.strip().splitlines()
        try:
            self.out: dict[str, Any] | None = json.loads(lines[-1]) if lines else None
        except ValueError:
            self.out = None

    def ok(self) -> dict[str, Any]:
        assert self.rc == 0 and self.out is not None, f"framework program failed ({self.rc}):\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"
        return self.out

    def killed(self, marker: str = "framework-trainer: SIGKILL at") -> None:
        """It SIGKILLed itself where it was told to (torchrun reports a failed rank as exit status 1)."""
        assert self.rc in (-9, 1), f"expected a SIGKILL, got {self.rc}:\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"
        assert marker in self.stderr, self.stderr[-4000:]


@pytest.fixture
def run_framework() -> Callable[..., Framework]:
    """run_framework("hf_trainer", "train", ckdir, "--max-steps", 6, env={...}, nproc=1) runs trainers/<script>.py."""

    def run_(
        script: str, *args: str | os.PathLike[str] | int, env: dict[str, str] | None = None, nproc: int = 1, timeout: float = 240
    ) -> Framework:
        argv = framework_argv(script, tuple(str(a) for a in args), nproc)
        proc = subprocess.run(argv, env=framework_env(env or {}), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return Framework(proc)

    return run_


@pytest.fixture
def start_framework(children: list[subprocess.Popen[bytes]]) -> Callable[..., subprocess.Popen[bytes]]:
    """A framework program in the background (killed and reaped after the test); its output goes to files."""

    def start(script: str, *args: str | os.PathLike[str] | int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(
            framework_argv(script, tuple(str(a) for a in args), 1),
            env=framework_env(env or {}),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        children.append(proc)
        return proc

    return start


def run_script(script: Path, env: dict[str, str], timeout: float) -> Result:
    """Run a rendered document script; its stdout must be one JSON object line. Returns (rc, that object, stderr)."""
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one stdout line, got {proc.stdout!r}; stderr: {proc.stderr[-4000:]}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return proc.returncode, result, proc.stderr


@pytest.fixture
def run_checkpoint(base_env: dict[str, str], bucket: str) -> Callable[..., Result]:
    """run_checkpoint(ckdir, Mode="stop", PidFile="", ...) runs checkpoint.sh with SSM_<param> overrides."""

    def run_(ckdir: Path, timeout: float = 180, **params: str) -> Result:
        return run_script(CHECKPOINT, scripts.checkpoint_env(base_env, bucket, ckdir, **params), timeout)

    return run_


@pytest.fixture
def checkpoint_params(base_env: dict[str, str], bucket: str, tmp_path: Path) -> dict[str, str]:
    """The SSM_ parameters run_checkpoint uses by default (for the manifest key and the upload prefix)."""
    return scripts.checkpoint_env(base_env, bucket, tmp_path)


@pytest.fixture
def run_restore(base_env: dict[str, str], bucket: str, s3: Any, tmp_path: Path) -> Callable[..., Result]:
    """run_restore(ckdir) restores the manifest run_checkpoint wrote (default key) into ckdir, a fresh
    "instance" directory, pinned to the manifest's version as Verify records it (the current one: nothing else
    writes these keys here); SSM_<param> overrides as keywords (ManifestKey, ResumeCommand, PidFile, ...)."""
    up = scripts.checkpoint_env(base_env, bucket, tmp_path)

    def run_(ckdir: Path, timeout: float = 180, **params: str) -> Result:
        key = params.pop("ManifestKey", up["SSM_ManifestKey"])
        got = s3.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        pinned = {**up, "SSM_ManifestKey": key, "SSM_ManifestVersionId": got["VersionId"], "SSM_ManifestSha256": digest}
        state = ckdir.parent / f"{ckdir.name}-state"
        state.mkdir(parents=True, exist_ok=True)
        env = restore_tests.restore_env(base_env, bucket, ckdir, pinned, state, **params)
        return run_script(RESTORE, env, timeout)

    return run_


@pytest.fixture
def instance_dirs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """instance_dirs("a") -> a fresh directory standing for one instance's disk (created once per name)."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = tmp_path / f"instance-{name}"
            made[name].mkdir()
        return made[name]

    yield make
