# Two commands matter: `make preview` (render the stack locally, as Deployment Manager would)
# and `make test` (lint + every test). Everything else supports those two.
SHELL := /bin/bash
.DEFAULT_GOAL := preview

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= deployment.yaml
SHELL_SCRIPTS := $(shell git ls-files '*.sh' 2>/dev/null)

.PHONY: preview test lint pytest bench system-deps clean

$(VENV)/.installed: requirements-dev.txt app/requirements.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

system-deps:
	@bash scripts/install-system-deps.sh

preview: $(VENV)/.installed
	@$(VPY) -m dmlocal preview $(CONFIG)

# The stack as Terraform for Infrastructure Manager (docs/migration.md). PROJECT=<id> adds the
# import blocks that adopt the resources DM created there.
.PHONY: terraform
terraform: $(VENV)/.installed
	$(VPY) -m dmlocal terraform $(CONFIG) --out build/terraform $(if $(PROJECT),--project $(PROJECT))

bench: $(VENV)/.installed
	$(VPY) bench/bench_app.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/yamllint --strict .

pytest: $(VENV)/.installed
	$(VPY) -m pytest

test: lint pytest

clean:
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
