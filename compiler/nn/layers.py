"""Layers of transformer language models, with PyTorch's parameter names and layouts
(so a Hugging Face checkpoint loads by name): Linear, Conv1D (GPT-2's transposed
linear), Embedding, RMSNorm, LayerNorm, rotary embedding, the SwiGLU and GELU MLPs,
and attention over the paged KV cache.

A layer may be placed where it is defined (`Linear(..., shard="S[0]")`: column-parallel
in PyTorch's (out, in) layout; "S[1]": row-parallel); `nn.shard` applies a whole plan.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import functional as F
from .core import Module, Parameter, Tensor


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: str = "float32", shard: Optional[str] = None):
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter((out_features, in_features), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None
        if shard is not None:
            self.weight.shard(shard)
            if self.bias is not None and shard == "S[0]":     # column-parallel: bias split alike
                self.bias.shard("S[0]")

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias() if self.bias is not None else None)


class Conv1D(Module):
    """GPT-2's linear layer: y = x @ weight + bias, weight (in_features, out_features)."""

    def __init__(self, in_features: int, out_features: int, dtype: str = "float32"):
        self.weight = Parameter((in_features, out_features), dtype)
        self.bias = Parameter((out_features,), dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.matmul(x, self.weight()) + self.bias()


class Embedding(Module):
    """Rows of weight (num_embeddings, dim) by id; "S[0]" makes it vocabulary-parallel
    (each device looks up the rows it holds; propagation adds the all-reduce)."""

    def __init__(self, num_embeddings: int, dim: int, dtype: str = "float32",
                 shard: Optional[str] = None):
        self.weight = Parameter((num_embeddings, dim), dtype)
        if shard is not None:
            self.weight.shard(shard)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight())


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype: str = "float32"):
        self.weight = Parameter((dim,), dtype)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight(), self.eps)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, dtype: str = "float32"):
        self.weight = Parameter((dim,), dtype)
        self.bias = Parameter((dim,), dtype)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight(), self.bias(), self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict] = None) -> np.ndarray:
    """Rotary inverse frequencies as transformers computes them: default,
    "linear" (positions divided by `factor`) and "llama3" (long wavelengths divided by
    `factor`, short ones kept, a smooth blend between)."""
    # in float32, as transformers computes them
    inv = (1.0 / np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)))
    inv = inv.astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, mid, scaled)
    raise NotImplementedError(f"rope_scaling type {kind!r} is not supported (default, linear, llama3)")


class RotaryEmbedding(Module):
    """cos and sin of each token's position times the inverse frequencies, for
    rotate-half rotary embedding (Llama, Qwen2, Mistral)."""

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling: Optional[dict] = None,
                 dtype: str = "float32"):
        self.inv_freq = rope_inv_freq(head_dim, theta, scaling).astype(np.float32)
        self.dtype = dtype

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (tokens, head_dim) in the model's dtype, computed in float32."""
        n = len(self.inv_freq)
        pos = positions.astype("float32").reshape(positions.shape[0], 1)
        freqs = pos * F.const(self.inv_freq.reshape(1, n), "float32")
        emb = F.concat([freqs, freqs], axis=-1)
        return F.cos(emb).astype(self.dtype), F.sin(emb).astype(self.dtype)


class SwiGLU(Module):
    """Llama's MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int, dtype: str = "float32", bias: bool = False):
        self.gate_proj = Linear(hidden, intermediate, bias, dtype)
        self.up_proj = Linear(hidden, intermediate, bias, dtype)
        self.down_proj = Linear(intermediate, hidden, bias, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class KVAttention(Module):
    """Grouped-query self-attention over the paged KV cache (Llama, Qwen2): q, k, v
    projections, rotary embedding, attention with this layer's cached history, output
    projection. `kv_heads` may exceed the checkpoint's (each repeated, for more devices
    than KV heads); the weights are repeated to match at load (compiler/models)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, layer: int,
                 qkv_bias: bool = False, dtype: str = "float32"):
        self.heads, self.kv_heads, self.head_dim, self.layer = heads, kv_heads, head_dim, layer
        self.q_proj = Linear(hidden, heads * head_dim, qkv_bias, dtype)
        self.k_proj = Linear(hidden, kv_heads * head_dim, qkv_bias, dtype)
        self.v_proj = Linear(hidden, kv_heads * head_dim, qkv_bias, dtype)
        self.o_proj = Linear(heads * head_dim, hidden, False, dtype)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Tensor) -> Tensor:
        t = x.shape[0]
        q = self.q_proj(x).reshape(t, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(t, self.kv_heads, self.head_dim)
        q, k = F.rotary(q, cos, sin), F.rotary(k, cos, sin)
        o = F.kv_attention(q, k, v, cache, self.layer, 1.0 / math.sqrt(self.head_dim))
        return self.o_proj(o.reshape(t, self.heads * self.head_dim))


__all__ = ["Linear", "Conv1D", "Embedding", "RMSNorm", "LayerNorm", "RotaryEmbedding", "SwiGLU",
           "KVAttention", "rope_inv_freq"]
