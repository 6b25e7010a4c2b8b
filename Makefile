# nodeagent: the README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: run test unit integration bench lint docs contracts clean image deploy-check kubebin test-cluster

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $(STAMP)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# `make run KUBE=test`: also start the test API server (nodeagent/testing/apiserver/) with a Node for the
# simulated node, and have the agent publish its labels to that Node, a NodeFeature and RuntimeClasses.
# `make run PORT=9500` (or `LISTEN=0.0.0.0:9500`): the agent's HTTP address; unset, the settings decide
# (NODEAGENT_AGENT__LISTEN, else 127.0.0.1:9400).
PORT ?=
LISTEN ?= $(if $(PORT),127.0.0.1:$(PORT))
LISTEN_FLAG := $(if $(LISTEN),--listen $(LISTEN))
KUBE ?=
KUBE_PORT ?= 16443
KUBE_NODE ?= sim-node
KUBE_DIR := .nodeagent/kube
SIM_ROOT := .nodeagent/sim
KUBE_ENV := NODE_NAME=$(KUBE_NODE) NODEAGENT_KUBE__MODE=kubeconfig NODEAGENT_KUBE__KUBECONFIG=/etc/nodeagent/kubeconfig \
	NODEAGENT_LABELS__NODE_PATCH=true NODEAGENT_LABELS__NODE_FEATURE=true NODEAGENT_LABELS__RUNTIME_CLASSES=true

run: $(VENV)/.installed-run
ifeq ($(KUBE),test)
	@mkdir -p $(KUBE_DIR)
	@test -f $(KUBE_DIR)/tokens.csv || printf '%s\n' \
		'sim-agent-token,system:serviceaccount:nodeagent:nodeagent,agent,"system:serviceaccounts"' \
		'sim-admin-token,admin,admin,"system:masters"' > $(KUBE_DIR)/tokens.csv
	@$(BIN)/nodeagent plan --simulate --only labels > /dev/null 2>&1 || true  # lays out the sandbox first
	@mkdir -p $(SIM_ROOT)/etc/nodeagent
	$(BIN)/python -m nodeagent.testing.apiserver --port $(KUBE_PORT) --token-file $(KUBE_DIR)/tokens.csv \
		--node $(KUBE_NODE) --kubeconfig-out $(SIM_ROOT)/etc/nodeagent/kubeconfig & echo $$! > $(KUBE_DIR)/apiserver.pid; \
	trap 'kill $$(cat $(KUBE_DIR)/apiserver.pid)' EXIT INT TERM; \
	sleep 1; echo "Node labels: curl -H 'Authorization: Bearer sim-admin-token' http://127.0.0.1:$(KUBE_PORT)/api/v1/nodes/$(KUBE_NODE)"; \
	$(KUBE_ENV) $(BIN)/nodeagent run --simulate $(LISTEN_FLAG)
else
	$(BIN)/nodeagent run --simulate $(LISTEN_FLAG)
endif

test: $(STAMP)
	$(BIN)/python -m pytest tests integration -q

# The unit tests on the stand-in API server only (no root, no cluster); `make test` also runs them against the
# real kube-apiserver (docs/testing.md).
unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -m 'not cluster'

integration: $(STAMP)
	$(BIN)/python -m pytest integration -q

# The real single-node Kubernetes of integration/cluster: one Go binary (kube-apiserver, controller-manager,
# scheduler, kubelet, etcd; versions in integration/cluster/versions.env), built once into
# ~/.cache/nodeagent/kubebin (about 6 minutes cold on 2 cores, nothing warm). `make test` runs the cluster
# tests too; their fixture builds the binary when it is absent. `make test-cluster` runs only what needs the
# cluster: integration/cluster and the `real` half of tests/kube, tests/labels, tests/gpuhealth.
# The cluster's containerd (CONTAINERD_VERSION, CDI-capable) is built the same way into ~/.cache/nodeagent/containerd
# (about 1 minute cold).
kubebin:
	integration/cluster/build.sh
	integration/cluster/build_containerd.sh

test-cluster: $(STAMP)
	integration/cluster/build.sh > /dev/null
	integration/cluster/build_containerd.sh > /dev/null
	$(BIN)/python -m pytest tests integration -m cluster -q

# ~6 minutes. The benchmarks run the agent from a runtime-only venv they build once under ~/.cache
# (bench/runtime_venv.py). Longer runs: NODEAGENT_BENCH_SOAK_S=1800 (the RSS soak), NODEAGENT_BENCH_LAG_S=60
# (loop-lag windows), NODEAGENT_BENCH_SCRAPE_S, NODEAGENT_BENCH_SCALING_S, NODEAGENT_BENCH_IDLE_S.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check nodeagent tests integration bench tools
	$(BIN)/ruff format --check nodeagent tests integration bench tools
	$(BIN)/mypy
	$(BIN)/python tools/sync_contracts.py --check
	$(BIN)/lint-imports

# The import contracts' subsystem lists are generated from the declarations (nodeagent/*/declaration.py).
contracts: $(STAMP)
	$(BIN)/python tools/sync_contracts.py

docs: $(STAMP)
	$(BIN)/python -m nodeagent.settings > docs/configuration.md

# The container image (buildah, a debootstrapped Debian base; root) and the deployment checks with their
# figures: image size, memory, systemd-analyze security (integration/deploy).
image: $(STAMP)
	PYTHON=$(BIN)/python container/build.sh

deploy-check: $(STAMP)
	$(BIN)/python -m pytest integration/deploy -q -s

clean:
	rm -rf $(VENV) .nodeagent .pytest_cache .mypy_cache .ruff_cache
