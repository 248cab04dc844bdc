# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install on first use
# (`make demo` only what the demo runs, requirements-demo.txt; `make test` adds the test and lint tools).
# Then `make deploy` / `make destroy` put the stack on an AWS account and take it off again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# package.json pins Node.js 22 (the `node` package) beside the CDK CLI: node_modules/.bin goes first on PATH
# wherever jsii (the CDK library under Python) or the CDK CLI runs, so both run on Node 22 whatever node the
# machine has (Node 20 is end of life). Not for `npm ci` itself, which uses the machine's node and npm.
NODE_BIN := $(abspath node_modules/.bin)
WITH_NODE := PATH="$(NODE_BIN):$$PATH"
# The pinned CDK CLI; .venv's bin on PATH too, as cdk.json runs `python3 app.py`.
CDK := PATH="$(NODE_BIN):$(abspath $(VENV))/bin:$$PATH" npx --no-install cdk

PY_SOURCES := app.py cli infra lambdas local tests benchmarks trainer/src

.PHONY: install lint demo deploy destroy test test-unit test-integration test-workflow test-infra test-e2e test-frameworks synth simulate reliability bench clean

# --no-compile: pip would byte-compile every module it installs (two thirds of the install time, most of it
# aws-cdk-lib's ~300 service modules); Python compiles the few that are imported on first use instead.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile
$(DEMO_STAMP): requirements-demo.txt requirements.txt lambdas/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -r requirements-demo.txt
	touch $@

# The dev set includes the demo set (requirements-dev.txt: -r requirements-demo.txt), so this only adds to it.
$(STAMP): requirements-dev.txt $(DEMO_STAMP)
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(NODE_STAMP)

## Run the whole control plane locally (moto, no AWS account): train, checkpoint, verify, stop.
demo: $(DEMO_STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m local demo

## Deploy the stack to the AWS account and region of your credentials (AWS_PROFILE, AWS_REGION ...) with the
## pinned CDK CLI; the stack's outputs go to cdk-outputs.json (`.venv/bin/autostop ... --outputs cdk-outputs.json`
## reads them instead of calling DescribeStacks). The account and region are bootstrapped for the CDK first if
## they are not yet (once: the CDKToolkit stack).
## CDK_ARGS go to every cdk command (-c key=value overrides cdk.json's context); DEPLOY_ARGS to deploy and
## destroy only (--require-approval never, --force).
## e.g. make deploy CDK_ARGS="-c notification_emails=me@example.com -c schedule_minutes=10"
CDK_ARGS ?=
DEPLOY_ARGS ?=
deploy: $(DEMO_STAMP) $(NODE_STAMP)
	@$(VENV)/bin/aws ssm get-parameter $${AWS_REGION:+--region $$AWS_REGION} --name /cdk-bootstrap/hnb659fds/version --query Parameter.Value --output text >/dev/null 2>&1 || \
	  { echo "bootstrapping the CDK in this account and region (once; the CDKToolkit stack)"; $(CDK) bootstrap $(CDK_ARGS); }
	$(CDK) deploy --outputs-file cdk-outputs.json $(CDK_ARGS) $(DEPLOY_ARGS)

## Delete the stack. The checkpoint bucket, its access-log bucket and the run records table are retained
## (RemovalPolicy.RETAIN: checkpoints and run history outlive the control plane); delete them by hand if wanted.
destroy: $(DEMO_STAMP) $(NODE_STAMP)
	$(CDK) destroy $(CDK_ARGS) $(DEPLOY_ARGS)

## The test suite (unit, integration, workflow, infra, end to end) plus `cdk synth` through the CLI.
test: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest

test-unit: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest tests/unit
test-integration: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest tests/integration
test-workflow: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest tests/workflow
test-infra: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest tests/infra
test-e2e: $(STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m pytest tests/e2e

## The real-framework layer: PyTorch, Lightning, transformers, DCP and Accelerate write the checkpoints, the real
## scripts pick, upload and restore them (tests/frameworks). Frameworks live in their own venv (CPU torch, ~45 s).
FW_VENV := .venv-frameworks
FW_STAMP := $(FW_VENV)/.installed
$(FW_STAMP): requirements-frameworks.txt $(wildcard trainer/pyproject.toml)
	$(PYTHON) -m venv $(FW_VENV)
	$(FW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FW_VENV)/bin/python -m pip install --quiet -r requirements-frameworks.txt
	touch $@

test-frameworks: $(STAMP) $(NODE_STAMP) $(FW_STAMP)
	AUTOSTOP_FRAMEWORKS_PYTHON=$(abspath $(FW_VENV)/bin/python) $(WITH_NODE) $(PY) -m pytest tests/frameworks

## The invariant as a long property run: 200 drawn examples (`make test` plays a short, reproducible one).
property-long: $(STAMP) $(NODE_STAMP)
	AUTOSTOP_PROPERTY_EXAMPLES=200 $(WITH_NODE) $(PY) -m pytest tests/property

## Lint and format check (ruff).
lint: $(STAMP)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

## Synthesize with the pinned CDK CLI (offline; cdk-nag runs as part of synth).
synth: $(DEMO_STAMP) $(NODE_STAMP)
	$(CDK) synth --quiet $(CDK_ARGS)

## Run a scenario: make simulate SCENARIO=examples/scenario.json REPORT=report.json
SCENARIO ?= examples/scenario.json
REPORT ?= report.json
simulate: $(DEMO_STAMP) $(NODE_STAMP)
	$(WITH_NODE) $(PY) -m local simulate $(SCENARIO) --report $(REPORT)

RELIABILITY_EXAMPLES ?= 50
## docs/RELIABILITY.md from one run of the fault, bad-input and property suites (they write build/reliability/).
reliability: $(STAMP) $(NODE_STAMP)
	rm -rf build/reliability
	AUTOSTOP_PROPERTY_EXAMPLES=$(RELIABILITY_EXAMPLES) $(WITH_NODE) $(PY) -m pytest tests/faults tests/badinput tests/property
	$(WITH_NODE) $(PY) -m local.reliability build/reliability docs/RELIABILITY.md

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

## Print figures: the checkpoint data path's throughput beside aws s3 cp, boto3 and s5cmd, and the Spot budget
## (benchmarks/throughput.py; AUTOSTOP_BENCH_SCALE=0.25 for a quick look), then demo and synth time and memory,
## every handler's cold import against `import boto3`, the state transitions of one run at 1 MiB and 768 MiB
## (benchmarks/transitions.py), the schedule sweep's AWS calls, CPU and memory at 100 to 10,000 instances
## (benchmarks/sweep.py), and the monthly cost model (benchmarks/cost.py).
bench: install $(BENCH_STAMP)
	$(WITH_NODE) $(PY) benchmarks/throughput.py
	$(WITH_NODE) $(PY) benchmarks/run.py
	$(PY) benchmarks/imports.py
	$(WITH_NODE) $(PY) benchmarks/transitions.py
	$(PY) benchmarks/sweep.py
	$(PY) benchmarks/cost.py

clean:
	rm -rf $(VENV) node_modules cdk.out .autostop-local .pytest_cache build
	rm -rf .venv-frameworks
