# `make` alone lists the targets. The two that matter: `make up` (the stack on this machine,
# greeting in a browser) and `make test` (lint and every test). Any target that reads a config
# takes CONFIG=other.yaml; the deploy targets and `make up` take DEPLOY_ENGINE=dm|infra-manager.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# pip's warnings and progress are noise on a terminal; a failure prints the log's end.
VENV_LOG := .state/venv.log
BIN := $(VENV)/bin
CONFIG ?= deployment.yaml
# Which Google service deploys the stack: dm (Deployment Manager) or infra-manager (docs/deploy.md).
DEPLOY_ENGINE ?= dm
SHELL_SCRIPTS := $(shell git ls-files '*.sh' 2>/dev/null)
# One pytest worker per core; a module runs whole on one worker, the VM tests keep to two lanes
# that start first (tests/conftest.py, VM_LANE_*); the summary ends with the machine's speed.
PYTEST := $(VPY) -m pytest -n auto --dist loadgroup --no-loadscope-reorder --machine-speed

.PHONY: help up down test check e2e preview terraform docs deploy deploy-preview smoke drift \
	repair record-good rollback lint pytest image image-key bench bench-preview bench-boot bench-deploy \
	bench-tls bench-redeploy bench-vcpus bench-cpu-model bench-reset system-deps gcloud clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(VENV)/.installed: tools/requirements.txt app/requirements.txt pyproject.toml
	@bash scripts/install-system-deps.sh lint
	@mkdir -p $(dir $(VENV_LOG)) && { $(PYTHON) -m venv $(VENV) && $(VPY) -m pip install \
		--disable-pip-version-check -r tools/requirements.txt -e .; } > $(VENV_LOG) 2>&1 \
		|| { tail -n 20 $(VENV_LOG) >&2; echo "make: building $(VENV) failed; full log: $(VENV_LOG)" >&2; exit 1; }; \
		echo "==> venv: $(VENV) from tools/requirements.txt, pip's output in $(VENV_LOG) ($$SECONDS s)"
	@touch $@

system-deps: ## install the Debian packages every target needs (root); targets install their own
	@bash scripts/install-system-deps.sh all

gcloud: ## install the gcloud the tests ran (scripts/install-gcloud.sh), unless it is on PATH
	@bash scripts/install-gcloud.sh

# apt's output for make up and what it needs goes to the log localvm writes (docs/local-vm.md);
# for the test targets, to a log of their own (a new machine's install is hundreds of lines). A
# failed install prints the log's end and its path.
up: export INSTALL_LOG := $(CURDIR)/.state/up.log
test check e2e lint pytest: export INSTALL_LOG := $(CURDIR)/.state/install.log
up: $(VENV)/.installed gcloud ## the stack on a local VM, or redeploy it: deploy with the real gcloud, wait, print the URL
	@$(BIN)/localvm up $(CONFIG) --engine $(DEPLOY_ENGINE)

down: $(VENV)/.installed ## stop what `make up` started (the local cloud and its VM)
	@$(BIN)/localvm down

test: lint pytest ## lint and every test (what CI runs)

check: lint gcloud ## lint and every test but the VM boot
	@bash scripts/install-system-deps.sh diagram https
	$(PYTEST) -m "not e2e" $(PYTEST_ARGS)

e2e: $(VENV)/.installed gcloud ## boot the VM under qemu and test it end to end
	@bash scripts/install-system-deps.sh vm browser https
	$(PYTEST) -m e2e $(PYTEST_ARGS)

preview: $(VENV)/.installed ## dry run: expand CONFIG as Deployment Manager would and check it
	@$(BIN)/dmlocal preview $(CONFIG)

terraform: $(VENV)/.installed ## CONFIG as Terraform JSON in build/terraform (PROJECT=id adopts)
	$(BIN)/dmlocal terraform $(CONFIG) --out build/terraform $(if $(PROJECT),--project $(PROJECT))

docs: $(VENV)/.installed ## regenerate the diagram (docs/architecture.*) and the inputs table (docs/inputs.md)
	@bash scripts/install-system-deps.sh diagram
	$(BIN)/dmlocal diagram $(CONFIG) --out docs
	$(VPY) -m dmlocal.inputs $(CONFIG) --page docs/inputs.md

# The infra-manager engine writes the Terraform with dmlocal, so it needs the venv; dm does not.
ENGINE_DEPS := $(if $(filter infra-manager,$(DEPLOY_ENGINE)),$(VENV)/.installed)

deploy: $(ENGINE_DEPS) gcloud ## create or update the deployment with gcloud (GCP_PROJECT=..., DEPLOY_ENGINE=...)
	@DEPLOY_ENGINE=$(DEPLOY_ENGINE) DM_CONFIG=$(CONFIG) bash scripts/deploy.sh

deploy-preview: $(VENV)/.installed gcloud ## preview CONFIG on a branch deployment; compare with live
	@DEPLOY_ENGINE=$(DEPLOY_ENGINE) DM_CONFIG=$(CONFIG) DMLOCAL=$(BIN)/dmlocal bash scripts/deploy.sh --preview

# The operator targets (smoke, drift, repair) act on production, or with LOCAL=1 on the stack
# `make up` runs: its gcloud.env points gcloud, the scripts and the API client at it.
LOCAL_ENV ?= $(or $(LOCALVM_STATE),.state/localvm)/gcloud.env
OPERATOR_ENV := $(if $(filter 1,$(LOCAL)),{ [[ -f $(LOCAL_ENV) ]] || { echo "no local stack: run make up" >&2; exit 2; }; source $(LOCAL_ENV); } &&)
# The engine and config acted on; with LOCAL=1 the engine is the local stack's, and the address
# smoke-tested its forwarded HTTP port (LOCAL_ADDRESS), both from gcloud.env.
ENGINE_ENV := $(if $(filter 1,$(LOCAL)),,DEPLOY_ENGINE=$(DEPLOY_ENGINE)) DM_CONFIG=$(CONFIG)

smoke: ## GET the IP the last deploy wrote, with either engine (or IP=...), until it greets
	@$(OPERATOR_ENV) bash scripts/smoke.sh $(or $(IP),$${LOCAL_ADDRESS:-})
	@$(if $(filter 1,$(LOCAL)),$(MAKE) --no-print-directory record-good LOCAL=1)

drift: $(VENV)/.installed ## compare the live stack with CONFIG (GCP_PROJECT=...; LOCAL=1: make up's)
	@$(OPERATOR_ENV) $(BIN)/drift check $(CONFIG) $(if $(JSON),--json) \
		$(if $(JSON_OUT),--json-out $(JSON_OUT))

repair: $(VENV)/.installed ## put the live stack back to CONFIG; never deletes what is not its own
	@$(OPERATOR_ENV) $(BIN)/drift repair $(CONFIG)

# After `make smoke` passed: CI's deploy job on master, and LOCAL=1's smoke. A checkout with
# uncommitted changes has no commit that names what is live, so it records nothing.
record-good: $(ENGINE_DEPS) gcloud ## record the checked-out commit as the last good version
	@if git diff --quiet HEAD --; then \
		$(OPERATOR_ENV) $(ENGINE_ENV) bash scripts/deploy.sh --record-good "$$(git rev-parse HEAD)"; \
	else echo "record-good: uncommitted changes: no commit names what is live; nothing recorded"; fi

rollback: $(ENGINE_DEPS) gcloud ## redeploy the last good version (or REF=commit) and smoke-test it
	@$(OPERATOR_ENV) $(ENGINE_ENV) IP=$(or $(IP),$${LOCAL_ADDRESS:-}) bash scripts/rollback.sh $(if $(REF),--ref $(REF)) \
		$(if $(AFTER_FAILED_SMOKE),--after-failed-smoke)

lint: $(VENV)/.installed ## ruff, shellcheck, yamllint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)
	$(BIN)/yamllint --strict .

pytest: $(VENV)/.installed gcloud
	@bash scripts/install-system-deps.sh diagram vm browser https
	$(PYTEST) $(PYTEST_ARGS)

image: $(VENV)/.installed ## build the VM image, or reuse the cached one
	@bash scripts/install-system-deps.sh vm
	$(BIN)/localvm image

image-key: $(VENV)/.installed ## the VM image's cache key (a hash of its recipe), for CI caches
	@mkdir -p build && $(VPY) -c 'from localvm.image import recipe_key; print(recipe_key())' \
		| tee build/image-key

bench: $(VENV)/.installed ## the app under load: gunicorn against Flask's dev server
	@bash scripts/install-system-deps.sh bench
	$(BIN)/bench-app

bench-tls: $(VENV)/.installed ## the app over HTTPS against plain HTTP, through nginx
	@bash scripts/install-system-deps.sh bench https
	$(BIN)/bench-tls

bench-preview: $(VENV)/.installed ## how long `make preview` takes
	$(BIN)/bench-preview --config $(CONFIG)

bench-boot: $(VENV)/.installed ## how long the VM takes to boot and recover
	@bash scripts/install-system-deps.sh vm
	$(BIN)/bench-boot

bench-redeploy: $(VENV)/.installed ## app redeploys on the local VM under a request loop (STACK="dir..." compares)
	@bash scripts/install-system-deps.sh vm https
	$(BIN)/bench-redeploy $(foreach dir,$(STACK),--stack $(dir))

bench-vcpus: $(VENV)/.installed ## two VMs booting side by side with 1 vCPU each against 2 each
	@bash scripts/install-system-deps.sh vm
	$(BIN)/bench-vcpus

bench-cpu-model: $(VENV)/.installed ## a VM's first converge with qemu's baseline CPU model against max, side by side
	@bash scripts/install-system-deps.sh vm
	$(BIN)/bench-cpu-model

bench-reset: $(VENV)/.installed ## a hard reset as a new qemu process against QMP's system_reset, side by side
	@bash scripts/install-system-deps.sh vm
	$(BIN)/bench-reset

bench-deploy: $(VENV)/.installed ## deploy.sh's create and update time and gcloud calls, per engine
	$(BIN)/bench-deploy

clean: ## remove the venv and everything generated
	rm -rf $(VENV) build .state .pytest_cache .ruff_cache
