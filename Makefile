# Two commands matter: `make preview` (render the stack locally, as Deployment Manager would)
# and `make test` (lint + every test). Everything else supports those two.
SHELL := /bin/bash
.DEFAULT_GOAL := preview

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= deployment.yaml
SHELL_SCRIPTS := $(shell git ls-files '*.sh' 2>/dev/null)

.PHONY: preview test lint pytest system-deps clean

$(VENV)/.installed: requirements-dev.txt app/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

preview: $(VENV)/.installed
	@$(VPY) -m dmlocal preview $(CONFIG)

lint: $(VENV)/.installed system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/yamllint --strict .

pytest: $(VENV)/.installed system-deps
	$(VPY) -m pytest

test: lint pytest

clean:
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
