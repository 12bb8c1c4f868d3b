# Two commands matter: `make up` (the stack on this machine, greeting in a browser) and
# `make test` (lint + every test). `make preview` is the operator's dry run of deployment.yaml.
# Everything else supports those.
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

# `make test` = `make check` + `make e2e`; CI splits them into parallel jobs.
.PHONY: check e2e image-key
check: lint
	$(VPY) -m pytest -m "not e2e" $(PYTEST_ARGS)

e2e: $(VENV)/.installed
	$(VPY) -m pytest -m e2e $(PYTEST_ARGS)

# The VM image's cache key (a hash of its recipe), for CI caches keyed by content.
image-key: $(VENV)/.installed
	@mkdir -p build && $(VPY) -c 'from localvm.image import recipe_key; print(recipe_key())' \
		| tee build/image-key

test: lint pytest

clean:
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
