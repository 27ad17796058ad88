"""Writes a Mixtral-shaped F16 GGUF (a `llama` file with `expert_count`) with random weights and experts
stacked as llama.cpp's converter stacks them (`ffn_{gate,up,down}_exps`), for decode benchmarks of a
mixture of experts against llama.cpp on the same file. It borrows the demo model's tokenizer.

    python3 bench/synth_moe_gguf.py OUT.gguf [HIDDEN LAYERS FFN HEADS KV_HEADS EXPERTS USED]

Default shape: 1024 hidden, 8 layers, 32 experts of 1024, 4 per token (0.9 B parameters, 0.2 B active).
Needs `pip install gguf numpy`; quantize with llama.cpp's llama-quantize (e.g. Q4_K_M).
"""
import sys
import numpy as np
import gguf

from demo_tokenizer import VOCAB, copy_tokenizer

out = sys.argv[1]
H, L, F, NH, NKV, E, K = (int(x) for x in (sys.argv[2:9] or [1024, 8, 1024, 16, 4, 32, 4]))
w = gguf.GGUFWriter(out, "llama")
hd = H // NH
w.add_name("synth-moe")
w.add_context_length(8192)
w.add_embedding_length(H)
w.add_block_count(L)
w.add_feed_forward_length(F)
w.add_head_count(NH)
w.add_head_count_kv(NKV)
w.add_rope_dimension_count(hd)
w.add_rope_freq_base(100000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_expert_count(E)
w.add_expert_used_count(K)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
copy_tokenizer(w)
V = VOCAB
rng = np.random.default_rng(0)
def rand(shape, scale, dtype=np.float16):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)
w.add_tensor("token_embd.weight", rand((V, H), 0.02))
for i in range(L):
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
    w.add_tensor(f"blk.{i}.attn_q.weight", rand((NH * hd, H), H ** -0.5))
    w.add_tensor(f"blk.{i}.attn_k.weight", rand((NKV * hd, H), H ** -0.5))
    w.add_tensor(f"blk.{i}.attn_v.weight", rand((NKV * hd, H), H ** -0.5))
    w.add_tensor(f"blk.{i}.attn_output.weight", rand((H, NH * hd), (NH * hd) ** -0.5))
    # The router in f32, as llama.cpp keeps it.
    w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", rand((E, H), H ** -0.5, np.float32))
    w.add_tensor(f"blk.{i}.ffn_gate_exps.weight", rand((E, F, H), H ** -0.5))
    w.add_tensor(f"blk.{i}.ffn_up_exps.weight", rand((E, F, H), H ** -0.5))
    w.add_tensor(f"blk.{i}.ffn_down_exps.weight", rand((E, H, F), F ** -0.5))
w.add_tensor("output_norm.weight", np.ones(H, np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
