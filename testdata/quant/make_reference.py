"""Reference dequantization of random blocks of every GGML format Baton runs, by the `gguf`
Python package (gguf-py, llama.cpp's own reader): `blocks.safetensors` holds, per format, the
raw blocks (`NAME.bytes`, u8) and their values (`NAME.values`, f32).

    pip install gguf==0.19.0 safetensors numpy && python3 make_reference.py
"""

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import save_file

# (format, block bytes, byte offsets of its f16 scales)
FORMATS = [
    (T.Q8_0, 34, [0]),
    (T.Q4_0, 18, [0]),
    (T.Q4_1, 20, [0, 2]),
    (T.Q5_0, 22, [0]),
    (T.Q5_1, 24, [0, 2]),
    (T.IQ4_NL, 18, [0]),
    (T.Q2_K, 84, [80, 82]),
    (T.Q3_K, 110, [108]),
    (T.Q4_K, 144, [0, 2]),
    (T.Q5_K, 176, [0, 2]),
    (T.Q6_K, 210, [208]),
    (T.IQ4_XS, 136, [0]),
]

rng = np.random.default_rng(20261130)
out = {}
for kind, size, scales in FORMATS:
    blocks = 8
    raw = rng.integers(0, 256, size=(blocks, size), dtype=np.uint8)
    for o in scales:
        d = rng.uniform(-0.01, 0.01, size=blocks).astype(np.float16)
        raw[:, o : o + 2] = d.view(np.uint8).reshape(blocks, 2)
    values = dequantize(raw.reshape(-1), kind).astype(np.float32).reshape(-1)
    out[f"{kind.name}.bytes"] = raw.reshape(-1)
    out[f"{kind.name}.values"] = values
save_file(out, "blocks.safetensors")
print({k: v.shape for k, v in out.items()})
