"""Llama (also Mistral, TinyLlama) and Qwen2 (Llama with biases on q, k and v):
RMSNorm, rotary embedding (rope_theta, rope scaling "linear" / "llama3"), grouped-query
attention over the paged KV cache, SwiGLU MLP, optionally tied embeddings.

Tensor parallelism (Megatron): q, k, v, gate and up column-parallel ("S[0]" on
PyTorch's (out, in) weights), o and down row-parallel ("S[1]"), the embedding and the
LM head vocabulary-parallel ("S[0]": rows are tokens). The vocabulary is padded to a
multiple of the degree (padded rows are zero, padded logits cut off); with fewer KV
heads than devices, each KV head is repeated on the devices whose query heads use it.

Pipeline parallelism (`pp` stages of `tp` workers each): the layers are split evenly
between the stages (base.stage_layers), each stage's on its own mesh; the embedding
and the rotary tables are made on the first stage, the final norm and the LM head
live on the last (a tied head is a parameter of its own there, read from the
embedding's tensor, so the table is not sent every step). Each worker's KV cache
holds only its stage's layers, so a layer's cache index is its index within its stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .. import nn
from ..nn import functional as F
from .base import (CausalLM, check_divisible, config_value, kv_heads_for, pad_map, padded,
                   repeat_heads_map, rope_settings, stage_layers)

PLAN = {
    "*.q_proj.weight": "S[0]", "*.k_proj.weight": "S[0]", "*.v_proj.weight": "S[0]",
    "*.q_proj.bias": "S[0]", "*.k_proj.bias": "S[0]", "*.v_proj.bias": "S[0]",
    "*.o_proj.weight": "S[1]",
    "*.gate_proj.weight": "S[0]", "*.up_proj.weight": "S[0]", "*.down_proj.weight": "S[1]",
    "model.embed_tokens.weight": "S[0]", "lm_head.weight": "S[0]",
}


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[dict]
    tie_word_embeddings: bool
    qkv_bias: bool

    @staticmethod
    def from_dict(cfg: Mapping[str, Any]) -> "LlamaConfig":
        heads = int(cfg["num_attention_heads"])
        theta, scaling = rope_settings(cfg)
        qwen2 = cfg.get("model_type") == "qwen2"
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config_value(cfg, "num_key_value_heads", default=heads)),
            head_dim=int(config_value(cfg, "head_dim", default=int(cfg["hidden_size"]) // heads)),
            rms_norm_eps=float(config_value(cfg, "rms_norm_eps", default=1e-6)),
            rope_theta=theta, rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", qwen2)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig, kv_heads: int, layer: int, dtype: str):
        self.input_layernorm = nn.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype)
        self.self_attn = nn.KVAttention(c.hidden_size, c.num_attention_heads, kv_heads, c.head_dim,
                                        layer, c.qkv_bias, dtype)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype)
        self.mlp = nn.SwiGLU(c.hidden_size, c.intermediate_size, dtype)

    def forward(self, h, cos, sin, cache):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaConfig, vocab: int, kv_heads: int, dtype: str, stages: list[range]):
        self.embed_tokens = nn.Embedding(vocab, c.hidden_size, dtype)
        # a layer's index in its stage's KV cache (its own index with one stage)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c, kv_heads, i - r.start, dtype)
                                     for r in stages for i in r])
        self.norm = nn.RMSNorm(c.hidden_size, c.rms_norm_eps, dtype)
        self.rotary = nn.RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling, dtype)

    def forward(self, input_ids, cache):
        cos, sin = self.rotary(F.kv_positions(cache, input_ids))
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, cache)
        return self.norm(h)


class LlamaForCausalLM(CausalLM):
    family = "llama"
    STORABLE = ("*_proj.weight", "model.embed_tokens.weight", "lm_head.weight")

    def __init__(self, config: LlamaConfig, tp: int = 1, dtype: str = "float32", pp: int = 1):
        family = f"{self.family} (config.json)"
        check_divisible(config.intermediate_size, tp, "intermediate_size", family)
        self.stages = stage_layers(config.num_hidden_layers, pp, family)
        self.config, self.tp, self.pp, self.dtype = config, tp, pp, dtype
        self.kv_heads = kv_heads_for(config.num_key_value_heads, config.num_attention_heads, tp, family)
        self.vocab = padded(config.vocab_size, tp)
        self.model = LlamaModel(config, self.vocab, self.kv_heads, dtype, self.stages)
        if not config.tie_word_embeddings or pp > 1:
            self.lm_head = nn.Linear(config.hidden_size, self.vocab, False, dtype)
        if tp > 1:
            nn.shard(self, tp, PLAN)
        self.place_stages(self.stages, self.model.layers,
                          [self.model.norm] + ([self.lm_head] if hasattr(self, "lm_head") else []))

    def hidden(self, input_ids, cache):
        return self.model(input_ids, cache)

    def head(self, h):
        head = self.lm_head.weight if hasattr(self, "lm_head") else self.model.embed_tokens.weight
        logits = F.linear(h, head())
        if self.vocab != self.config.vocab_size:
            logits = F.narrow(logits, 1, 0, self.config.vocab_size)
        return logits

    def kv_layout(self) -> tuple[int, int, int]:
        return max(map(len, self.stages)), self.kv_heads // self.tp, self.config.head_dim

    def weight_sources(self):
        # tied embeddings on a pipeline: the head (last stage) reads the embedding's tensor
        return {"lm_head.weight": "model.embed_tokens.weight"} if self.config.tie_word_embeddings \
            and hasattr(self, "lm_head") else {}

    def weight_maps(self):
        c, out = self.config, {}
        if self.vocab != c.vocab_size:
            out["model.embed_tokens.weight"] = [pad_map(self.vocab)]
            if hasattr(self, "lm_head"):
                out["lm_head.weight"] = [pad_map(self.vocab)]
        repeat = self.kv_heads // c.num_key_value_heads
        if repeat > 1:
            for i in range(c.num_hidden_layers):
                for proj in ("k_proj", "v_proj"):
                    for kind in ("weight", "bias") if c.qkv_bias else ("weight",):
                        name = f"model.layers.{i}.self_attn.{proj}.{kind}"
                        out[name] = [repeat_heads_map(c.num_key_value_heads, repeat)]
        return out


def build(cfg: Mapping[str, Any], tp: int = 1, dtype: str = "float32", pp: int = 1) -> LlamaForCausalLM:
    """The model of a Hugging Face config dict (model_type llama, mistral, qwen2), for
    `tp`-way tensor parallelism in each of `pp` pipeline stages."""
    return LlamaForCausalLM(LlamaConfig.from_dict(cfg), tp, dtype, pp)
