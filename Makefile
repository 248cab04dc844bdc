# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

PY_SOURCES := app.py infra lambdas local tests benchmarks trainer/src

.PHONY: install lint demo test test-unit test-integration test-workflow test-infra test-e2e test-frameworks synth simulate reliability bench clean

$(STAMP): requirements.txt requirements-dev.txt lambdas/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(NODE_STAMP)

## Run the whole control plane locally (moto, no AWS account): train, checkpoint, verify, stop.
demo: $(STAMP)
	$(PY) -m local demo

## The test suite (unit, integration, workflow, infra, end to end) plus `cdk synth` through the CLI.
test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit
test-integration: $(STAMP)
	$(PY) -m pytest tests/integration
test-workflow: $(STAMP)
	$(PY) -m pytest tests/workflow
test-infra: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest tests/infra
test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

## The real-framework layer: PyTorch, Lightning, transformers, DCP and Accelerate write the checkpoints, the real
## scripts pick, upload and restore them (tests/frameworks). Frameworks live in their own venv (CPU torch, ~45 s).
FW_VENV := .venv-frameworks
FW_STAMP := $(FW_VENV)/.installed
$(FW_STAMP): requirements-frameworks.txt $(wildcard trainer/pyproject.toml)
	$(PYTHON) -m venv $(FW_VENV)
	$(FW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FW_VENV)/bin/python -m pip install --quiet -r requirements-frameworks.txt
	touch $@

test-frameworks: $(STAMP) $(FW_STAMP)
	AUTOSTOP_FRAMEWORKS_PYTHON=$(abspath $(FW_VENV)/bin/python) $(PY) -m pytest tests/frameworks

## The invariant as a long property run: 200 drawn examples (`make test` plays a short, reproducible one).
property-long: $(STAMP)
	AUTOSTOP_PROPERTY_EXAMPLES=200 $(PY) -m pytest tests/property

## Lint and format check (ruff).
lint: $(STAMP)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

## Synthesize with the pinned CDK CLI (offline; cdk-nag runs as part of synth).
synth: install
	PATH="$(abspath $(VENV))/bin:$$PATH" npx cdk synth --quiet

## Run a scenario: make simulate SCENARIO=examples/scenario.json REPORT=report.json
SCENARIO ?= examples/scenario.json
REPORT ?= report.json
simulate: $(STAMP)
	$(PY) -m local simulate $(SCENARIO) --report $(REPORT)

RELIABILITY_EXAMPLES ?= 50
## docs/RELIABILITY.md from one run of the fault, bad-input and property suites (they write build/reliability/).
reliability: $(STAMP) $(NODE_STAMP)
	rm -rf build/reliability
	AUTOSTOP_PROPERTY_EXAMPLES=$(RELIABILITY_EXAMPLES) $(PY) -m pytest tests/faults tests/badinput tests/property
	$(PY) -m local.reliability build/reliability docs/RELIABILITY.md

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

## Print figures: the checkpoint data path's throughput beside aws s3 cp, boto3 and s5cmd, and the Spot budget
## (benchmarks/throughput.py; AUTOSTOP_BENCH_SCALE=0.25 for a quick look), then demo and synth time and memory.
bench: install $(BENCH_STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) node_modules cdk.out .autostop-local .pytest_cache build
	rm -rf .venv-frameworks
