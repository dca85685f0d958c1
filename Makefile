# On a fresh clone:
#   make run    reproduce the experiment (dvc repro)
#   make study  the studies of params.yaml `studies`, one DVC experiment per point;
#               STUDY=lr for one study; SHARE=i/n for this machine's share of the
#               points, pushed to and pulled from the git remote REMOTE (origin)
#   make paper  the BatchNorm paper's MNIST experiment (params.yaml `paper`), in reports/paper/
#   make test   lint, then the whole test suite
#   make lock   refresh requirements.lock from pyproject.toml (UPGRADE=1: newest versions)
# Each creates .venv from requirements.lock (exact versions, hash-checked), with
# the project installed, on first use, and anew when the lock or pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python -m pipeline.<stage>`: the venv's python comes first.
WITH_VENV := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: run study paper test lint setup lock
run: $(STAMP)
	$(WITH_VENV) dvc repro

# The studies (params.yaml `studies`): the workspace's own point (dvc repro),
# one DVC experiment per point not yet computed, run by DVC's queue, then the
# summaries in reports/study/ and the MLflow tags. With SHARE=i/n this machine
# computes its share of the points, pushes them to REMOTE, and pulls the rest.
STUDY ?=
SHARE ?=
REMOTE ?= origin
study: $(STAMP)
	$(WITH_VENV) dvc repro
	$(WITH_VENV) python -m pipeline.study queue $(if $(STUDY),--study $(STUDY)) $(if $(SHARE),--share $(SHARE) --pull $(REMOTE))
	$(WITH_VENV) dvc exp run --run-all --jobs 1
	$(if $(SHARE),$(WITH_VENV) python -m pipeline.study push $(if $(STUDY),--study $(STUDY)) --remote $(REMOTE))
	$(WITH_VENV) python -m pipeline.study summarize $(if $(STUDY),--study $(STUDY)) $(if $(SHARE),--pull $(REMOTE))

# The BatchNorm paper's MNIST experiment (params.yaml `paper`): a study of its own,
# its points through the same queue, its summary in reports/paper/. `make study`
# leaves it out; a second `make paper` computes nothing.
paper: $(STAMP)
	$(WITH_VENV) python -m pipeline.study queue --paper
	$(WITH_VENV) dvc exp run --run-all --jobs 1
	$(WITH_VENV) python -m pipeline.study summarize --paper

test: lint
	$(WITH_VENV) python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

setup: $(STAMP)

# The environment is exactly the lock: every package pinned and hash-checked
# (pip refuses a file whose hash differs), then the project itself without
# dependencies. A changed lock rebuilds the venv from scratch.
LOCK := requirements.lock
$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "make: $(PYTHON) is older than 3.11; run with PYTHON=python3.11 (or newer)"; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --no-deps -e .
	touch $@

# requirements.lock from pyproject.toml's ranges (and its extras), for every
# platform the packages have files for (--universal), with each file's hash.
# uv keeps the lock's versions where the ranges still allow them, so a second
# run changes nothing; UPGRADE=1 takes the newest the index serves. uv itself
# lives in its own venv, pinned.
UV_VENV := .venv-uv
UV_VERSION := 0.13.9
lock: $(UV_VENV)/bin/uv
	$(UV_VENV)/bin/uv pip compile pyproject.toml --extra dev --extra server --universal \
		--generate-hashes --python-version 3.11 --custom-compile-command 'make lock' \
		--quiet --output-file $(LOCK) $(if $(UPGRADE),--upgrade)

$(UV_VENV)/bin/uv:
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --disable-pip-version-check --quiet uv==$(UV_VERSION)
