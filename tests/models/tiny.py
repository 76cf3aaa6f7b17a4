"""Tiny checkpoints of each model family, written with numpy from a fixed seed (the same
bits on every machine), in the Hugging Face layout (config.json, model.safetensors), so
that transformers loads them as they are and the references made from them
(make_references.py) hold for every test run without committing weights."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np

CONFIGS = {
    # 8 query heads, 2 KV heads (grouped-query), llama3 rope scaling
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=1000,
                  hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, max_position_embeddings=256,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
                  rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=64)),
    # biases on q, k and v; tied embeddings
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=1000,
                  hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256,
                  tie_word_embeddings=True, hidden_act="silu",
                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    # a vocabulary no worker count divides
    "gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=1001, n_positions=256,
                 n_embd=64, n_layer=2, n_head=4, activation_function="gelu_new",
                 layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0),
}


def _tensors(family: str, cfg: dict, rng) -> dict:
    def w(*shape, std=0.25):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    t = {}
    if family == "gpt2":
        d, v = cfg["n_embd"], cfg["vocab_size"]
        t["transformer.wte.weight"] = w(v, d, std=0.3)
        t["transformer.wpe.weight"] = w(cfg["n_positions"], d, std=0.1)
        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            t[p + "ln_1.weight"], t[p + "ln_1.bias"] = norm(d), w(d, std=0.02)
            t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = w(d, 3 * d), w(3 * d, std=0.02)
            t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = w(d, d), w(d, std=0.02)
            t[p + "ln_2.weight"], t[p + "ln_2.bias"] = norm(d), w(d, std=0.02)
            t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = w(d, 4 * d), w(4 * d, std=0.02)
            t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = w(4 * d, d), w(d, std=0.02)
        t["transformer.ln_f.weight"], t["transformer.ln_f.bias"] = norm(d), w(d, std=0.02)
        return t
    d, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // h)
    t["model.embed_tokens.weight"] = w(v, d, std=0.3)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(d)
        t[p + "self_attn.q_proj.weight"] = w(h * hd, d)
        t[p + "self_attn.k_proj.weight"] = w(kv * hd, d)
        t[p + "self_attn.v_proj.weight"] = w(kv * hd, d)
        if family == "qwen2":
            for name, n in (("q", h), ("k", kv), ("v", kv)):
                t[p + f"self_attn.{name}_proj.bias"] = w(n * hd, std=0.05)
        t[p + "self_attn.o_proj.weight"] = w(d, h * hd)
        t[p + "post_attention_layernorm.weight"] = norm(d)
        t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = w(f, d), w(f, d)
        t[p + "mlp.down_proj.weight"] = w(d, f)
    t["model.norm.weight"] = norm(d)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(v, d, std=0.3)
    return t


def make_checkpoint(family: str, directory: str, dtype: str = "float32", seed: int = 0,
                    **overrides) -> str:
    """Write the family's tiny checkpoint into `directory` (created); returns it.
    `overrides`: config values to change (vocab_size=...)."""
    cfg = dict(CONFIGS[family], dtype=dtype, **overrides)
    tensors = _tensors(family, cfg, np.random.default_rng(seed))
    if dtype == "bfloat16":     # safetensors.numpy has no bfloat16: write its bits, fix the dtype code
        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    elif dtype == "float16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    _save(tensors, os.path.join(directory, "model.safetensors"))
    return directory


def _save(tensors: dict, path: str) -> None:
    """A safetensors file (the format is a JSON header and the raw bytes), written here so
    bfloat16 needs no torch."""
    import struct
    codes = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float16): "F16"}
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


# Prompts: two sequences of different lengths; decode runs DECODE_STEPS greedy steps.
PROMPTS = ([5, 17, 230, 44, 9], [901, 3, 77, 12, 600, 8, 140])
DECODE_STEPS = 16

# Prompts of lengths 3, 11 and 25 for generation: each alone in transformers' generate, together
# in the engine; GENERATE_TOKENS new tokens each.
GENERATE_PROMPTS = tuple([int(t) for t in np.random.default_rng(7).integers(1, 1000, n)] for n in (3, 11, 25))
GENERATE_TOKENS = 32
