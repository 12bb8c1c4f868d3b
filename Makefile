# Two commands matter: `make preview` (render the stack locally, as Deployment Manager would)
# and `make test` (lint + every test). Everything else supports those two.
SHELL := /bin/bash
.DEFAULT_GOAL := preview

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= deployment.yaml
SHELL_SCRIPTS := $(shell git ls-files '*.sh' 2>/dev/null)

.PHONY: preview test lint pytest bench diagram bench-preview system-deps clean

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

# The stack on this machine: render, boot the instance under qemu with Google's guest agent,
# print its URL last. It keeps running in the background until `make down`.
.PHONY: up down bench-boot
up: $(VENV)/.installed
	@$(VPY) -m localvm up $(CONFIG)

down: $(VENV)/.installed
	@$(VPY) -m localvm down

bench-boot: $(VENV)/.installed
	$(VPY) bench/bench_boot.py

# The architecture diagram (docs/architecture.{dot,svg,mmd}) from the expanded deployment.yaml;
# tests/test_validate_diagram.py fails until this is re-run after a change that shows in it.
diagram: $(VENV)/.installed
	$(VPY) -m dmlocal diagram deployment.yaml --out docs

# Render + full validation of deployment.yaml, median wall time (target <= 1 s); prints figures.
bench-preview: $(VENV)/.installed
	$(VPY) bench/bench_preview.py

bench: $(VENV)/.installed
	$(VPY) bench/bench_app.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/yamllint --strict .

pytest: $(VENV)/.installed
	$(VPY) -m pytest $(PYTEST_ARGS)

# Deploy with the real gcloud (scripts/deploy.sh says how it authenticates and what the exit
# codes mean). CI runs exactly these; so can a person with gcloud logged in and GCP_PROJECT set.
.PHONY: deploy deploy-preview smoke
deploy:
	@bash scripts/deploy.sh

deploy-preview:
	@bash scripts/deploy.sh --preview

smoke:
	@bash scripts/smoke.sh $(IP)

test: lint pytest

clean:
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
