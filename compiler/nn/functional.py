"""Operations on traced `Tensor`s, one binding each (as torch.nn.functional): thin
wrappers over the operators of compiler.op, so a model reads like PyTorch code."""
from __future__ import annotations

from typing import Optional, Sequence

from .. import op
from .core import Tensor, as_expr, emit


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x @ weight.T (+ bias): weight in PyTorch's (out, in) layout, as checkpoints store it
    (the transpose is not copied: DispatchLibrary calls the BLAS on it transposed)."""
    y = emit(op.matmul(x.expr, emit(op.permute_dims(weight.expr, [1, 0])).expr))
    return y if bias is None else y + bias


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return emit(op.matmul(a.expr, b.expr))


def embedding(ids: Tensor, table: Tensor) -> Tensor:
    """Rows of `table` (vocab, dim) for each id."""
    return emit(op.take(table.expr, ids.expr, axis=0))


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along dim 0."""
    return emit(op.take(x.expr, index.expr, axis=0))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return emit(op.nn.rms_norm(x.expr, weight.expr, axes=[-1], epsilon=eps))


def layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    return emit(op.nn.layer_norm(x.expr, gamma.expr, beta.expr, axes=[-1], epsilon=eps))


def silu(x: Tensor) -> Tensor:
    return emit(op.nn.silu(x.expr))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU; approximate="tanh" is GPT-2's gelu_new."""
    return emit(op.nn.gelu_tanh(x.expr) if approximate == "tanh" else op.nn.gelu(x.expr))


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return emit(op.nn.softmax(x.expr, axis))


def cos(x: Tensor) -> Tensor:
    return emit(op.cos(x.expr))


def sin(x: Tensor) -> Tensor:
    return emit(op.sin(x.expr))


def rotary(x: Tensor, cos_: Tensor, sin_: Tensor) -> Tensor:
    """Rotate-half rotary embedding: x (tokens, heads, head_dim), cos/sin (tokens, head_dim)."""
    return emit(op.nn.rotary_embedding(x.expr, cos_.expr, sin_.expr))


def concat(xs: Sequence[Tensor], axis: int) -> Tensor:
    return emit(op.concat([x.expr for x in xs], axis))


def split(x: Tensor, parts: int, axis: int) -> list[Tensor]:
    t = emit(op.split(x.expr, parts, axis=axis))
    from ..ir.graph import TupleGetItem
    return [emit(TupleGetItem(t.expr, i)) for i in range(parts)]


def narrow(x: Tensor, axis: int, start, end) -> Tensor:
    """x[..., start:end, ...] along `axis`."""
    return emit(op.strided_slice(x.expr, axes=[axis], begin=[start], end=[end]))


def const(value, dtype: str) -> Tensor:
    """A constant tensor (numbers or a numpy array)."""
    return emit(op.const(value, dtype))


def astype(x: Tensor, dtype: str) -> Tensor:
    return x.astype(dtype)


def kv_positions(cache: Tensor, input_ids: Tensor) -> Tensor:
    """Each token's position in its sequence, from the KV cache (compiler/op/kv.py)."""
    return emit(op.kv.positions(cache.expr, input_ids.expr))


def kv_attention(q: Tensor, k: Tensor, v: Tensor, cache: Tensor, layer: int,
                 scale: Optional[float] = None) -> Tensor:
    """Attention over the paged KV cache, appending this step's k and v (compiler/op/kv.py)."""
    return emit(op.kv.attention(q.expr, k.expr, v.expr, cache.expr, layer=layer, scale=scale))


__all__ = ["linear", "matmul", "embedding", "take_rows", "rms_norm", "layer_norm", "silu", "gelu", "softmax",
           "cos", "sin", "rotary", "concat", "split", "narrow", "const", "astype", "kv_positions",
           "kv_attention", "as_expr"]
