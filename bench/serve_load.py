#!/usr/bin/env python3
"""Time to first token and decode speed of an OpenAI-compatible server, for one request and for
several at once, streamed. Standard library only.

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


def one(url, max_tokens, out):
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
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
    out.append((times[0], (len(times) - 1) / (times[-1] - times[0]), len(times), times[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    one(a.url, 8, [])  # warm up
    for c in [int(x) for x in a.concurrency.split(",")]:
        results, walls, totals = [], [], []
        for _ in range(a.rounds):
            out = []
            threads = [threading.Thread(target=one, args=(a.url, a.max_tokens, out))
                       for _ in range(c)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            walls.append(time.perf_counter() - t0)
            totals.append(sum(r[2] for r in out))
            results += out
        ttft = statistics.median(r[0] for r in results) * 1e3
        rate = statistics.median(r[1] for r in results)
        agg = statistics.median(t / w for t, w in zip(totals, walls))
        print(f"concurrency {c}: time to first token {ttft:.0f} ms, decode {rate:.1f} tokens/s "
              f"per request, {agg:.1f} tokens/s in all (medians of {len(results)} requests)")


if __name__ == "__main__":
    main()
