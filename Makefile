# `make` alone lists the targets. The two that matter: `make up` (the stack on this machine,
# greeting in a browser) and `make test` (lint and every test). Any target that reads a config
# takes CONFIG=other.yaml.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BIN := $(VENV)/bin
CONFIG ?= deployment.yaml
SHELL_SCRIPTS := $(shell git ls-files '*.sh' 2>/dev/null)

.PHONY: help up down test check e2e preview terraform docs deploy deploy-preview smoke \
	lint pytest image image-key bench bench-preview bench-boot bench-tls system-deps clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(VENV)/.installed: tools/requirements.txt app/requirements.txt pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt -e .
	touch $@

system-deps: ## install the Debian packages the tooling needs (root)
	@bash scripts/install-system-deps.sh

up: $(VENV)/.installed ## the stack on a local VM: deploy with the real gcloud, boot, print the URL
	@$(BIN)/localvm up $(CONFIG)

down: $(VENV)/.installed ## stop what `make up` started
	@$(BIN)/localvm down

test: lint pytest ## lint and every test (what CI runs)

check: lint ## lint and every test but the VM boot
	$(VPY) -m pytest -m "not e2e" $(PYTEST_ARGS)

e2e: $(VENV)/.installed ## boot the VM under qemu and test it end to end
	$(VPY) -m pytest -m e2e $(PYTEST_ARGS)

preview: $(VENV)/.installed ## dry run: expand CONFIG as Deployment Manager would and check it
	@$(BIN)/dmlocal preview $(CONFIG)

terraform: $(VENV)/.installed ## CONFIG as Terraform JSON in build/terraform (PROJECT=id adopts)
	$(BIN)/dmlocal terraform $(CONFIG) --out build/terraform $(if $(PROJECT),--project $(PROJECT))

docs: $(VENV)/.installed ## regenerate the diagram (docs/architecture.*) and README's inputs table
	$(BIN)/dmlocal diagram $(CONFIG) --out docs
	$(VPY) -m dmlocal.inputs $(CONFIG) --readme README.md

deploy: ## create or update the deployment with gcloud (GCP_PROJECT=...)
	@DM_CONFIG=$(CONFIG) bash scripts/deploy.sh

deploy-preview: ## server-side preview of CONFIG, then cancel it
	@DM_CONFIG=$(CONFIG) bash scripts/deploy.sh --preview

smoke: ## GET the deployed IP (or IP=...) until it greets
	@bash scripts/smoke.sh $(IP)

lint: $(VENV)/.installed ## ruff, shellcheck, yamllint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)
	$(BIN)/yamllint --strict .

pytest: $(VENV)/.installed
	$(VPY) -m pytest $(PYTEST_ARGS)

image: $(VENV)/.installed ## build the VM image, or reuse the cached one
	$(BIN)/localvm image

image-key: $(VENV)/.installed ## the VM image's cache key (a hash of its recipe), for CI caches
	@mkdir -p build && $(VPY) -c 'from localvm.image import recipe_key; print(recipe_key())' \
		| tee build/image-key

bench: $(VENV)/.installed ## the app under load: gunicorn against Flask's dev server
	$(BIN)/bench-app

bench-tls: $(VENV)/.installed ## the app over HTTPS against plain HTTP, through nginx
	$(BIN)/bench-tls

bench-preview: $(VENV)/.installed ## how long `make preview` takes
	$(BIN)/bench-preview --config $(CONFIG)

bench-boot: $(VENV)/.installed ## how long the VM takes to boot and recover
	$(BIN)/bench-boot

clean: ## remove the venv and everything generated
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
