"""Checks `baton-node eval` on GGUF files against transformers on the same files (transformers
dequantizes them itself): the same top-1 id at every position, and each of transformers' top-5
logits within 0.05, on the token ids of the demo model's fixture cases.

    python3 check_requantized.py BATON_NODE BACKEND FILE.gguf...

BACKEND is cpu, wgpu, or wgpu:f32 (wgpu with an f32 KV cache).

For the demo model requantized by llama-quantize (see bench/kquants_vs_llamacpp.sh). Needs
`pip install torch transformers gguf`.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
node, backend, files = sys.argv[1], sys.argv[2], sys.argv[3:]
kv = ["--kv-dtype", "f32"] if backend.endswith(":f32") else []
cases = {p.stem: json.loads(p.read_text())["all_ids"] for p in sorted(FIXTURES.glob("*.json"))}
failed = False
for f in map(Path, files):
    model = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32).eval()
    worst, bad = 0.0, []
    for name, ids in cases.items():
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0]
        out = subprocess.run(
            [node, "eval", "--model", str(f), "--backend", backend.split(":")[0], *kv,
             "--ids", ",".join(map(str, ids)), "--top-k", "40", "--json"],
            capture_output=True, text=True, check=True,
        )
        ours = json.loads(out.stdout)["positions"]
        for p, row in enumerate(ours):
            top5 = torch.topk(ref[p], 5)
            got = dict(zip(row["top_ids"], row["top_logits"]))
            if row["top_ids"][0] != int(top5.indices[0]):
                bad.append(f"{name} pos {p}: top-1 {row['top_ids'][0]} vs {int(top5.indices[0])}")
            for i, l in zip(top5.indices.tolist(), top5.values.tolist()):
                d = abs(got[i] - l) if i in got else float("inf")
                worst = max(worst, d)
                if d > 0.05:
                    bad.append(f"{name} pos {p}: id {i} logit off by {d:.4f}")
    status = "ok" if not bad else "FAILED"
    print(f"{f.name:40s} {backend:8s} worst top-5 logit difference {worst:.4f} {status}")
    for b in bad[:5]:
        print("   ", b)
    failed |= bool(bad)
sys.exit(1 if failed else 0)
