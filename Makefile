# nodeagent: the README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: run test unit integration bench lint docs clean image deploy-check

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

run: $(VENV)/.installed-run
	$(BIN)/nodeagent run --simulate

test: $(STAMP)
	$(BIN)/python -m pytest tests integration -q

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q

integration: $(STAMP)
	$(BIN)/python -m pytest integration -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check nodeagent tests integration bench
	$(BIN)/ruff format --check nodeagent tests integration bench
	$(BIN)/mypy
	$(BIN)/lint-imports

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
