"""Writes a DeepSeek-V3-shaped F16 GGUF (`deepseek2`, latent attention in llama.cpp's layout with
`attn_k_b`/`attn_v_b`, grouped sigmoid routing with `exp_probs_b`, a shared expert, a dense first
layer) with random weights, for decode benchmarks against llama.cpp on the same file. It borrows
the demo model's tokenizer.

    python3 bench/synth_deepseek_gguf.py OUT.gguf [HIDDEN LAYERS HEADS EXPERTS USED EXPERT_FFN]

Default shape: 1024 hidden, 8 layers, 16 heads (q_lora 384, kv_lora 256, RoPE part 32, nope 64,
v 64), 32 routed experts of 512 in 4 groups (2 kept), 4 per token, one shared expert: 0.5 B
parameters, 0.13 B active. Needs `pip install gguf numpy`; quantize with llama-quantize.
"""
import sys
import numpy as np
import gguf

from demo_tokenizer import VOCAB, copy_tokenizer

out = sys.argv[1]
H, L, NH, E, K, F = (int(x) for x in (sys.argv[2:8] or [1024, 8, 16, 32, 4, 512]))
QL, KVL, ROPE, NOPE, V = 384, 256, 32, 64, 64
DENSE_FFN = 2816
w = gguf.GGUFWriter(out, "deepseek2")
w.add_name("synth-deepseek")
w.add_context_length(8192)
w.add_embedding_length(H)
w.add_block_count(L)
w.add_feed_forward_length(DENSE_FFN)
w.add_head_count(NH)
w.add_head_count_kv(1)
w.add_key_length(KVL + ROPE)
w.add_value_length(KVL)
w.add_key_length_mla(NOPE + ROPE)
w.add_value_length_mla(V)
w.add_q_lora_rank(QL)
w.add_kv_lora_rank(KVL)
w.add_rope_dimension_count(ROPE)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-6)
w.add_leading_dense_block_count(1)
w.add_expert_count(E)
w.add_expert_used_count(K)
w.add_expert_feed_forward_length(F)
w.add_expert_shared_count(1)
w.add_expert_weights_scale(2.5)
w.add_expert_weights_norm(True)
w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
w.add_expert_group_count(4)
w.add_expert_group_used_count(2)
w.add_vocab_size(VOCAB)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
copy_tokenizer(w)
rng = np.random.default_rng(0)


def rand(shape, fan_in, dtype=np.float16):
    return (rng.standard_normal(shape, dtype=np.float32) * fan_in ** -0.5).astype(dtype)


w.add_tensor("token_embd.weight", rand((VOCAB, H), 2500))
for i in range(L):
    b = f"blk.{i}."
    w.add_tensor(b + "attn_norm.weight", np.ones(H, np.float32))
    w.add_tensor(b + "ffn_norm.weight", np.ones(H, np.float32))
    w.add_tensor(b + "attn_q_a.weight", rand((QL, H), H))
    w.add_tensor(b + "attn_q_a_norm.weight", np.ones(QL, np.float32))
    w.add_tensor(b + "attn_q_b.weight", rand((NH * (NOPE + ROPE), QL), QL))
    w.add_tensor(b + "attn_kv_a_mqa.weight", rand((KVL + ROPE, H), H))
    w.add_tensor(b + "attn_kv_a_norm.weight", np.ones(KVL, np.float32))
    # Per head: W_UK transposed ([kv_lora, nope]) and W_UV ([v, kv_lora]).
    w.add_tensor(b + "attn_k_b.weight", rand((NH, KVL, NOPE), NOPE))
    w.add_tensor(b + "attn_v_b.weight", rand((NH, V, KVL), KVL))
    w.add_tensor(b + "attn_output.weight", rand((H, NH * V), NH * V))
    if i == 0:
        w.add_tensor(b + "ffn_gate.weight", rand((DENSE_FFN, H), H))
        w.add_tensor(b + "ffn_up.weight", rand((DENSE_FFN, H), H))
        w.add_tensor(b + "ffn_down.weight", rand((H, DENSE_FFN), DENSE_FFN))
        continue
    # The router in f32, as llama.cpp keeps it.
    w.add_tensor(b + "ffn_gate_inp.weight", rand((E, H), H, np.float32))
    w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(E) * 0.01).astype(np.float32))
    w.add_tensor(b + "ffn_gate_exps.weight", rand((E, F, H), H))
    w.add_tensor(b + "ffn_up_exps.weight", rand((E, F, H), H))
    w.add_tensor(b + "ffn_down_exps.weight", rand((E, H, F), F))
    w.add_tensor(b + "ffn_gate_shexp.weight", rand((F, H), H))
    w.add_tensor(b + "ffn_up_shexp.weight", rand((F, H), H))
    w.add_tensor(b + "ffn_down_shexp.weight", rand((H, F), F))
w.add_tensor("output_norm.weight", np.ones(H, np.float32))
w.add_tensor("output.weight", rand((VOCAB, H), H))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out)
