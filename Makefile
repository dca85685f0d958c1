# On a fresh clone:
#   make run    reproduce the experiment (dvc repro)
#   make study  the depth study: DVC experiments over study.depths (after make run)
#   make test   lint, then the whole test suite
# Each creates .venv with the project installed on first use, and again only
# when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python -m pipeline.<stage>`: the venv's python comes first.
WITH_VENV := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: run study test lint setup
run: $(STAMP)
	$(WITH_VENV) dvc repro

# The depth study (params.yaml `study`): one DVC experiment per depth not yet
# computed, run by DVC's queue, then the summary in reports/study/.
study: $(STAMP)
	$(WITH_VENV) python -m pipeline.study queue
	$(WITH_VENV) dvc exp run --run-all --jobs 1
	$(WITH_VENV) python -m pipeline.study

test: lint
	$(WITH_VENV) python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "make: $(PYTHON) is older than 3.11; run with PYTHON=python3.11 (or newer)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev,server]'
	touch $@
