"""What a function's cold start imports and builds (issue 12: handler import <= 1.5 x `import boto3`; the figures
are printed by benchmarks/imports.py, never asserted). Each case runs a fresh interpreter, as a cold start does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"
HANDLERS = sorted(p.parent.name for p in LAMBDAS.glob("*/handler.py"))


def fresh(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter with the functions' code on the path; it prints one JSON value."""
    environ = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}  # set here by `import shared`
    environ.update({"PYTHONPATH": str(LAMBDAS), "POWERTOOLS_TRACE_DISABLED": "true", **env})
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_models_are_built_on_first_use_except_the_one_built_in_threads() -> None:
    seen = fresh(
        "import json; from shared import models, workflow;"
        "print(json.dumps({n: getattr(m, n).__pydantic_complete__ for m in (models, workflow)"
        " for n in ('MarkerFact', 'Manifest', 'InstanceConfig', 'EvaluateOutput') if hasattr(m, n)}))"
    )
    # MarkerFact is built in the Evaluator's HeadObject threads: built at import, never rebuilt concurrently
    assert seen == {"MarkerFact": True, "Manifest": False, "InstanceConfig": False, "EvaluateOutput": False}


def test_a_deferred_model_validates_and_refuses_as_before() -> None:
    seen = fresh(
        "import json; from shared.models import S3Uri, ProbeResult; from pydantic import ValidationError\n"
        "out = {'uri': str(S3Uri.parse('s3://bucket-1/a/b'))}\n"
        "try: ProbeResult(ok=True, extra=1)\n"
        "except ValidationError as e: out['refused'] = e.errors()[0]['type']\n"
        "print(json.dumps(out))"
    )
    assert seen == {"uri": "s3://bucket-1/a/b", "refused": "extra_forbidden"}


def test_importing_shared_turns_pydantic_plugins_off_unless_set() -> None:
    read = "import json, os, shared; print(json.dumps(os.environ.get('PYDANTIC_DISABLE_PLUGINS')))"
    assert fresh(read) == "__all__"
    assert fresh(read, PYDANTIC_DISABLE_PLUGINS="some-plugin") == "some-plugin"


@pytest.mark.parametrize("handler", ["on_schedule_tick", "on_object_created"])
def test_triggers_do_not_load_powertools_parser_models(handler: str) -> None:
    parser = "aws_lambda_powertools.utilities.parser"
    loaded = fresh(f"import json, sys, {handler}.handler; print(json.dumps(sorted(m for m in sys.modules if m.startswith('{parser}'))))")
    assert loaded == []


@pytest.mark.parametrize("handler", [h for h in HANDLERS if h != "confirm_resume"])
def test_tracing_on_patches_botocore_only(handler: str) -> None:
    """Every function that makes AWS calls traces them (shared.clients patches botocore when imported)."""
    seen = fresh(
        f"import json, sys, {handler}.handler\n"
        "from aws_xray_sdk.core import patcher\n"
        "print(json.dumps({'patched': sorted(patcher._PATCHED_MODULES), 'requests': 'requests' in sys.modules}))",
        POWERTOOLS_TRACE_DISABLED="false",
        LAMBDA_TASK_ROOT=str(LAMBDAS),
        AWS_LAMBDA_FUNCTION_NAME="autostop-test",
    )
    assert seen == {"patched": ["botocore"], "requests": False}


def test_tracing_on_patches_nothing_in_a_function_that_makes_no_aws_call() -> None:
    """Confirm resume judges the command output it is given: with tracing on its handler is still traced, while
    botocore's client (imported by the patch) stays out of its cold start."""
    seen = fresh(
        "import json, sys, confirm_resume.handler as h\n"
        "from aws_xray_sdk.core import patcher\n"
        "print(json.dumps({'patched': sorted(patcher._PATCHED_MODULES), 'client': 'botocore.client' in sys.modules,"
        " 'traced': type(h.tracer).__name__}))",
        POWERTOOLS_TRACE_DISABLED="false",
        LAMBDA_TASK_ROOT=str(LAMBDAS),
        AWS_LAMBDA_FUNCTION_NAME="autostop-test",
    )
    assert seen == {"patched": [], "client": False, "traced": "Tracer"}


def test_every_handler_imports_with_tracing_off_without_the_xray_sdk() -> None:
    code = "import importlib, json, sys\n" + "".join(f"importlib.import_module('{h}.handler')\n" for h in HANDLERS)
    assert fresh(code + "print(json.dumps(any(m.startswith('aws_xray_sdk') for m in sys.modules)))") is False


@pytest.mark.parametrize("handler", ["on_status_event", "on_execution_ended"])
def test_functions_whose_events_need_no_model_import_no_pydantic(handler: str) -> None:
    """Their events are read by hand and their settings are a dataclass: pydantic (about 0.45x of `import boto3`)
    stays out of their cold start, tracing on or off."""
    code = f"import json, sys, {handler}.handler; print(json.dumps(sorted(m for m in sys.modules if m.startswith('pydantic'))))"
    assert fresh(code) == []
    assert fresh(code, POWERTOOLS_TRACE_DISABLED="false", LAMBDA_TASK_ROOT=str(LAMBDAS), AWS_LAMBDA_FUNCTION_NAME="autostop-test") == []


@pytest.mark.parametrize("handler", ["send_command", "find_command"])
def test_task_functions_that_read_only_the_workflow_payloads_do_not_define_the_other_models(handler: str) -> None:
    """shared.workflow takes Action from shared.constants: shared.models (instance, probe and manifest models, one of
    them built at import) is no part of these cold starts."""
    assert fresh(f"import json, sys, {handler}.handler; print(json.dumps('shared.models' in sys.modules))") is False


def test_no_handler_imports_boto3() -> None:
    """Clients come from botocore and records convert with shared.dynamodb_types: boto3's package (s3transfer, the
    resource layer) stays out of every cold start."""
    code = "import importlib, json, sys\n" + "".join(f"importlib.import_module('{h}.handler')\n" for h in HANDLERS)
    assert fresh(code + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 's3transfer'})))") == []
