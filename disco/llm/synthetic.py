"""Random Llama-shaped safetensors checkpoints, written tensor by tensor with numpy (no
torch), for the weight loader's memory test and benchmarks/weights_load.py: both need a
checkpoint of a few hundred MiB whose layout (names, shapes, Megatron placements) is a
real model's, not its values."""
from __future__ import annotations

import json
import math
import struct

import numpy as np


def weight_spec(name: str, shape, placement: str = "R") -> dict:
    """A float32 parameter read from the tensor of the same name (disco.llm.weights spec)."""
    return {"name": name, "source": name, "shape": list(shape), "dtype": "float32",
            "placement": placement, "maps": []}


def llama_specs(vocab: int = 32000, hidden: int = 768, layers: int = 4, heads: int = 12,
                kv_heads: int = 4, head_dim: int = 64, inter: int = 2048) -> list[dict]:
    """A Llama's parameters as compiler.models places them: vocabulary-parallel embedding
    and head, column-parallel q/k/v/gate/up, row-parallel o/down, replicated norms."""
    d, hd = hidden, head_dim
    out = [weight_spec("model.embed_tokens.weight", (vocab, d), "S[0]")]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [weight_spec(p + "input_layernorm.weight", (d,)),
                weight_spec(p + "self_attn.q_proj.weight", (heads * hd, d), "S[0]"),
                weight_spec(p + "self_attn.k_proj.weight", (kv_heads * hd, d), "S[0]"),
                weight_spec(p + "self_attn.v_proj.weight", (kv_heads * hd, d), "S[0]"),
                weight_spec(p + "self_attn.o_proj.weight", (d, heads * hd), "S[1]"),
                weight_spec(p + "post_attention_layernorm.weight", (d,)),
                weight_spec(p + "mlp.gate_proj.weight", (inter, d), "S[0]"),
                weight_spec(p + "mlp.up_proj.weight", (inter, d), "S[0]"),
                weight_spec(p + "mlp.down_proj.weight", (d, inter), "S[1]")]
    return out + [weight_spec("model.norm.weight", (d,)), weight_spec("lm_head.weight", (vocab, d), "S[0]")]


def write_random_checkpoint(path: str, specs: list[dict], seed: int = 0) -> int:
    """The float32 safetensors file of `specs`, values uniform in [0, 1), written a tensor
    at a time (never the whole checkpoint in memory); returns its data size in bytes."""
    rng = np.random.default_rng(seed)
    header, offset = {}, 0
    for s in specs:
        n = math.prod(s["shape"]) * 4
        header[s["source"]] = {"dtype": "F32", "shape": s["shape"], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for s in specs:
            f.write(rng.random(s["shape"], dtype=np.float32).tobytes())
    return offset
