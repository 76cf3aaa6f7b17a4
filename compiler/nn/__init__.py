"""compiler.nn: models written as PyTorch-style modules, exported to the project's IR.

    from compiler import nn
    class MLP(nn.Module):
        def __init__(self): self.fc = nn.Linear(64, 256); self.proj = nn.Linear(256, 64)
        def forward(self, x): return self.proj(nn.F.silu(self.fc(x)))
    mod = nn.export(MLP(), {"main": {"x": nn.spec.Tensor(("n", 64), "float32")}})

See core.py (modules, parameters, traced tensors), layers.py (the layers of
transformer language models), functional.py (operations, as F) and export.py
(export, input specs, sharding plans).
"""
from . import functional as F
from .core import Module, ModuleList, Parameter, Tensor
from .export import export, pipeline, shard, spec, stage, store_weights
from .layers import (Conv1D, Embedding, KVAttention, LayerNorm, Linear, RMSNorm, RotaryEmbedding,
                     SwiGLU, rope_inv_freq)

__all__ = ["F", "Module", "ModuleList", "Parameter", "Tensor", "export", "pipeline", "shard", "spec", "stage", "store_weights", "Conv1D",
           "Embedding", "KVAttention", "LayerNorm", "Linear", "RMSNorm", "RotaryEmbedding", "SwiGLU",
           "rope_inv_freq"]
