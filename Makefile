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

.PHONY: install serve test lint typecheck lock demo demo-adapter bench loadtest clean

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
	bash scripts/ensure-prometheus.sh
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-redis.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The legal-lora demo (examples/legal): prepare SmolLM2-135M-Instruct, train legal-lora (30 LoRA
# steps, about 2 s each on CPU), then start a gateway, register the adapter and ask base vs
# legal-lora one question through the OpenAI SDK. With a gateway already running (make serve):
# `$(PY) examples/legal/ask.py` instead of `--serve`.
DEMO_DATA = $(shell $(PY) -c 'from gateway.settings import GatewaySettings as S; print(S().data_dir)')
DEMO_TRAIN_ARGS ?= --rank 16 --target-modules all-linear --lr 1e-3 --warmup-ratio 0.1 \
  --max-steps 30 --batch-size 4 --eval-fraction 0.1

# demo-adapter only trains DATA_DIR/adapters/legal-lora (the README's walkthrough registers it
# with a running gateway); demo also starts a gateway and asks it.
demo-adapter: install
	$(VENV)/bin/lora-gateway models prepare smollm2-135m-instruct
	$(PY) examples/legal/make_dataset.py --check
	$(VENV)/bin/lora-trainer train --base-model $(DEMO_DATA)/models/smollm2-135m-instruct \
	  --data examples/legal/legal.jsonl --output $(DEMO_DATA)/adapters/legal-lora \
	  --name legal-lora --overwrite $(DEMO_TRAIN_ARGS)
	@echo "legal-lora is in $(DEMO_DATA)/adapters/legal-lora"

demo: demo-adapter
	$(PY) examples/legal/ask.py --serve

lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra cpu --extra trainer --extra dev \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(FIND_LINKS) --excludes requirements/excludes.txt --emit-find-links -o $(LOCK)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
