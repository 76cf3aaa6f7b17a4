"""GPT-2: learned positions, LayerNorm, multi-head attention with the q, k and v
projections fused in one Conv1D (`c_attn`, weights stored (in, out)), GELU (tanh) MLP,
LM head tied to the token embedding.

Tensor parallelism: c_attn and c_fc column-parallel ("S[1]" on (in, out) weights), the
attention's and the MLP's c_proj row-parallel ("S[0]"), the token embedding
vocabulary-parallel. c_attn's columns are q | k | v, each all heads in order; split as
they are, device 0 would get all of q and half of k. So at load its columns are
regrouped per device (device i's heads of q, then of k, then of v), and the model reads
the projection as (tokens, tp, 3, heads / tp, head_dim): each device holds whole heads
of all three. The vocabulary (50257 for GPT-2) is padded to a multiple of the degree.

Pipeline parallelism (`pp` stages): as Llama's (llama.py): blocks split evenly, the
embeddings on the first stage, ln_f and the head on the last, where the tied head is a
weight of its own (`lm_head.weight`, read from wte's tensor); a block's cache index is
its index within its stage (its attention scale keeps the model's layer index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .. import nn
from ..nn import functional as F
from .base import CausalLM, check_divisible, config_value, pad_map, padded, regroup_map, stage_layers

PLAN = {
    "transformer.wte.weight": "S[0]", "lm_head.weight": "S[0]",
    "*.attn.c_attn.weight": "S[1]", "*.attn.c_attn.bias": "S[0]",
    "*.attn.c_proj.weight": "S[0]",
    "*.mlp.c_fc.weight": "S[1]", "*.mlp.c_fc.bias": "S[0]",
    "*.mlp.c_proj.weight": "S[0]",
}


@dataclass
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float
    activation: str
    scale_attn_weights: bool
    scale_by_inverse_layer_idx: bool

    @staticmethod
    def from_dict(cfg: Mapping[str, Any]) -> "GPT2Config":
        d = int(cfg["n_embd"])
        return GPT2Config(
            vocab_size=int(cfg["vocab_size"]), n_positions=int(cfg["n_positions"]), n_embd=d,
            n_layer=int(cfg["n_layer"]), n_head=int(cfg["n_head"]),
            n_inner=int(config_value(cfg, "n_inner", default=4 * d)),
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            activation=str(cfg.get("activation_function", "gelu_new")),
            scale_attn_weights=bool(cfg.get("scale_attn_weights", True)),
            scale_by_inverse_layer_idx=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)))


class GPT2Attention(nn.Module):
    def __init__(self, c: GPT2Config, layer: int, tp: int, dtype: str, cache_layer: int):
        self.c_attn = nn.Conv1D(c.n_embd, 3 * c.n_embd, dtype)
        self.c_proj = nn.Conv1D(c.n_embd, c.n_embd, dtype)
        self.heads, self.head_dim, self.layer, self.tp = c.n_head, c.n_embd // c.n_head, cache_layer, tp
        scale = 1.0 / math.sqrt(self.head_dim) if c.scale_attn_weights else 1.0
        self.scale = scale / (layer + 1) if c.scale_by_inverse_layer_idx else scale

    def forward(self, x, cache):
        t, tp, hd = x.shape[0], self.tp, self.head_dim
        qkv = self.c_attn(x).reshape(t, tp, 3, self.heads // tp, hd)   # per device: its q, k, v heads
        q, k, v = (p.reshape(t, self.heads, hd) for p in F.split(qkv, 3, axis=2))
        o = F.kv_attention(q, k, v, cache, self.layer, self.scale)
        return self.c_proj(o.reshape(t, self.heads * hd))


class GPT2MLP(nn.Module):
    def __init__(self, c: GPT2Config, dtype: str):
        self.c_fc = nn.Conv1D(c.n_embd, c.n_inner, dtype)
        self.c_proj = nn.Conv1D(c.n_inner, c.n_embd, dtype)
        self.approximate = "tanh" if c.activation in ("gelu_new", "gelu_pytorch_tanh") else "none"

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, c: GPT2Config, layer: int, tp: int, dtype: str, cache_layer: int):
        self.ln_1 = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon, dtype)
        self.attn = GPT2Attention(c, layer, tp, dtype, cache_layer)
        self.ln_2 = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon, dtype)
        self.mlp = GPT2MLP(c, dtype)

    def forward(self, h, cache):
        h = h + self.attn(self.ln_1(h), cache)
        return h + self.mlp(self.ln_2(h))


class GPT2Model(nn.Module):
    def __init__(self, c: GPT2Config, vocab: int, tp: int, dtype: str, stages: list[range]):
        self.wte = nn.Embedding(vocab, c.n_embd, dtype)
        self.wpe = nn.Embedding(c.n_positions, c.n_embd, dtype)
        self.h = nn.ModuleList([GPT2Block(c, i, tp, dtype, i - r.start) for r in stages for i in r])
        self.ln_f = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon, dtype)

    def forward(self, input_ids, cache):
        h = self.wte(input_ids) + self.wpe(F.kv_positions(cache, input_ids))
        for block in self.h:
            h = block(h, cache)
        return self.ln_f(h)


class GPT2LMHeadModel(CausalLM):
    family = "gpt2"

    def __init__(self, config: GPT2Config, tp: int = 1, dtype: str = "float32", pp: int = 1):
        family = "gpt2 (config.json)"
        check_divisible(config.n_head, tp, "n_head", family)
        check_divisible(config.n_inner, tp, "n_inner", family)
        self.stages = stage_layers(config.n_layer, pp, family, "n_layer")
        self.config, self.tp, self.pp, self.dtype = config, tp, pp, dtype
        self.vocab = padded(config.vocab_size, tp)
        self.transformer = GPT2Model(config, self.vocab, tp, dtype, self.stages)
        if pp > 1:      # the tied head on the last stage: a weight of its own (weight_sources)
            self.lm_head = nn.Linear(config.n_embd, self.vocab, False, dtype)
        if tp > 1:
            nn.shard(self, tp, PLAN)
        self.place_stages(self.stages, self.transformer.h,
                          [self.transformer.ln_f] + ([self.lm_head] if pp > 1 else []))

    def hidden(self, input_ids, cache):
        return self.transformer(input_ids, cache)

    def head(self, h):
        table = self.lm_head.weight if self.pp > 1 else self.transformer.wte.weight
        logits = F.linear(h, table())
        if self.vocab != self.config.vocab_size:
            logits = F.narrow(logits, 1, 0, self.config.vocab_size)
        return logits

    def kv_layout(self) -> tuple[int, int, int]:
        c = self.config
        return max(map(len, self.stages)), c.n_head // self.tp, c.n_embd // c.n_head

    def weight_sources(self):
        return {"lm_head.weight": "transformer.wte.weight"} if self.pp > 1 else {}

    def weight_maps(self):
        c, tp, out = self.config, self.tp, {}
        if self.vocab != c.vocab_size:
            out["transformer.wte.weight"] = [pad_map(self.vocab)]
            if self.pp > 1:
                out["lm_head.weight"] = [pad_map(self.vocab)]
        if tp > 1:      # columns q | k | v -> per device i: q_i | k_i | v_i
            for i in range(c.n_layer):
                for kind in ("weight", "bias"):
                    out[f"transformer.h.{i}.attn.c_attn.{kind}"] = [regroup_map(3, tp)]
        return out


def build(cfg: Mapping[str, Any], tp: int = 1, dtype: str = "float32", pp: int = 1) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config.from_dict(cfg), tp, dtype, pp)
