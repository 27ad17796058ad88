#!/usr/bin/env bash
# What expert parallelism costs per mixture-of-experts layer on loopback: decode through one
# node holding a whole MoE model against decode through a node holding half the routed experts
# of every layer, with an expert-only node holding the other half, in alternating rounds; each
# on its own swarm, one thread per node. The difference per token, over the MoE layers a token
# passes, is the dispatch overhead of one layer: sending the rows routed away, the peer's
# share of the experts, and the answer. The hop's own `/metrics` give the time its layers
# waited for the peer, beside.
#
#   bench/experts_dispatch.sh [MODEL] [MOE_LAYERS] [ROUNDS] [TOKENS]
#
# The default model is the DeepSeek-V3 test fixture (3 MoE layers of 16 experts, hidden 64);
# bench/synth_deepseek_gguf.py writes a DeepSeek-shaped file of any size.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-testdata/fixtures/moe/gguf/deepseek_v3.gguf}
MOE_LAYERS=${2:-3}
ROUNDS=${3:-7}
TOKENS=${4:-150}
PROMPT="hello world"
[ -n "${BATON_NODE:-}" ] || cargo build --release --quiet --bins
NODE=${BATON_NODE:-./target/release/baton-node}
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
start() { # name [args...]
  local name=$1
  shift
  "$NODE" join --model "$MODEL" --threads 1 --backend cpu --name "$name" \
    --listen /ip4/127.0.0.1/tcp/0 --metrics 127.0.0.1:0 "$@" >"$dir/$name.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 150); do grep -q "join this swarm" "$dir/$name.out" && return; sleep 0.2; done
  echo "node $name did not start" >&2
  exit 1
}
boot() { sed -n 's/^join this swarm with: --bootstrap //p' "$dir/$1.out" | head -1; }
EXPERTS=$("$NODE" inspect --model "$MODEL" | sed -n 's/.* \([0-9]*\) experts of .*/\1/p' | head -1)
HALF=$((EXPERTS / 2))
start whole --span auto
start peer --experts "$HALF..$EXPERTS" --experts-only
start hop --experts "0..$HALF" --bootstrap "$(boot peer)"
sleep 3
run() { # label bootstrap
  ./target/release/baton generate --bootstrap "$2" --prompt "$PROMPT" --max-tokens "$TOKENS" \
    --wire-dtype f32 --stats 2>&1 >/dev/null | sed -n "s/^per token: \([0-9.]*\) ms = .*/$1 \1/p"
}
{
  for _ in $(seq "$ROUNDS"); do
    run whole "$(boot whole)"
    run split "$(boot peer)"
  done
} | python3 -c '
import statistics, sys
ms = {}
for line in sys.stdin:
    label, v = line.split()
    ms.setdefault(label, []).append(float(v))
layers = int(sys.argv[1])
w, s = statistics.median(ms["whole"]), statistics.median(ms["split"])
runs = len(ms["whole"])
print(f"per token, median of {runs} runs: one node {w:.3f} ms, experts split over two nodes {s:.3f} ms")
print(f"dispatch overhead: {(s - w) * 1e3 / layers:.0f} us per MoE layer ({layers} MoE layers per token)")
' "$MOE_LAYERS"
url=$(sed -n 's/^metrics: //p' "$dir/hop.out")
python3 - "$url" <<'PY'
import sys, urllib.request
m = {}
for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines():
    if line.startswith("baton:expert_dispatch"):
        name, v = line.rsplit(" ", 1)
        m[name.split("{")[0]] = float(v)
n = m.get("baton:expert_dispatch_layers_total", 0)
if n:
    print(f"the hop's layers waited {m['baton:expert_dispatch_seconds_total'] * 1e6 / n:.0f} us each for the peer, over {int(n)} layers")
PY
