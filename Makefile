# Set-up and entry points. `make serve` and `make test` install whatever is missing first.
SHELL := /bin/bash
VENV ?= .venv
TOOLS ?= .tools
UV_VERSION ?= 0.13.9
LOCK ?= requirements/cpu.lock
PY := $(VENV)/bin/python
UV := $(TOOLS)/bin/uv
STAMP := $(VENV)/.installed
FIND_LINKS := $(shell python3 -m pip config get global.find-links 2>/dev/null || echo /opt/wheels)
PYTEST_ARGS ?=

.PHONY: install serve test lint typecheck lock demo bench loadtest clean

install: $(STAMP)

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"

# The lock is complete (uv pip compile with the CUDA companions excluded): sync it exactly.
$(STAMP): $(LOCK) pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python python3.11 $(VENV)
	$(UV) pip sync -q --python $(PY) --compile-bytecode --find-links $(FIND_LINKS) $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

serve: install
	$(VENV)/bin/lora-gateway serve $(SERVE_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra cpu --extra trainer --extra dev \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(FIND_LINKS) --excludes requirements/excludes.txt --emit-find-links -o $(LOCK)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
