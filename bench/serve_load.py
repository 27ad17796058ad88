#!/usr/bin/env python3
"""Time to first token and decode speed of an OpenAI-compatible server, for one request and for
several at once, streamed. Standard library only; bench/serve_compare.py uses it as a module.

    bench/serve_load.py URL [--concurrency 1,4] [--rounds 5] [--max-tokens 128]

Each request streams a text completion; its time to first token is the time to the first
chunk with text, its decode speed the chunks after the first over the time they took.
Prints medians over all requests of a concurrency level, and the aggregate tokens/s.
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

PROMPT = ("Once upon a time, in a small village at the edge of a great forest, "
          "there lived an old clockmaker")


def one(url, max_tokens, out, prompt=PROMPT):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    times = []
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0].get("text"):
                times.append(time.perf_counter() - t0)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    out.append((times[0], rate, len(times), times[-1]))


def level(url, concurrency, rounds, max_tokens, prompts=(PROMPT,)):
    """`rounds` rounds of `concurrency` requests at once: (per-request results, aggregate
    tokens/s of each round)."""
    results, aggs = [], []
    for _ in range(rounds):
        out = []
        threads = [threading.Thread(target=one, args=(url, max_tokens, out,
                                                      prompts[i % len(prompts)]))
                   for i in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        aggs.append(sum(r[2] for r in out) / wall)
        results += out
    return results, aggs


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    one(a.url, 8, [])  # warm up
    for c in [int(x) for x in a.concurrency.split(",")]:
        results, aggs = level(a.url, c, a.rounds, a.max_tokens)
        ttft = statistics.median(r[0] for r in results) * 1e3
        p99 = percentile([r[0] for r in results], 99) * 1e3
        rate = statistics.median(r[1] for r in results)
        agg = statistics.median(aggs)
        print(f"concurrency {c}: time to first token {ttft:.0f} ms (p99 {p99:.0f}), decode "
              f"{rate:.1f} tokens/s per request, {agg:.1f} tokens/s in all "
              f"(medians of {len(results)} requests)")


if __name__ == "__main__":
    main()
