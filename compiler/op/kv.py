"""Operators over the paged KV cache of a language model (`R.kv.*`).

The cache is a runtime object (disco/kv_cache.py), one per worker, holding that
worker's KV heads for every layer; the controller tells it, before each forward step,
which sequences the step's tokens belong to (`begin_forward`). A model function takes
it as an argument of type `R.Object` and reads it through these operators:

    R.kv.positions(cache, input_ids)     position of each token of the step (T,) int64
    R.kv.attention(q, k, v, cache, layer=i, scale=s)
        q (T, H, D), k and v (T, KV, D): writes the step's keys and values into layer i's
        pages, then attends every token to its sequence's history up to itself (causal
        within the step; grouped-query: q head h reads kv head h // (H / KV)) -> (T, H, D)

Heads are independent, so the attention's sharding rule splits q, k, v and the result
along their head dim together (each worker attends with its own heads over its own
cache); tokens are never split. Both legalize to runtime functions of disco.kv_cache.
"""
from __future__ import annotations

import math

from . import sharding as _sharding
from ..ir.errors import ShapeError, StructInfoError
from ..ir.expr import IntImm, fmt_shape, fmt_sinfo
from ..ir.graph import Call
from ..ir.struct_info import ObjectStructInfo, StructInfo, TensorStructInfo
from . import infer as I
from .builtin import call_dps_packed, call_pure_packed, prim_value
from .registry import OPAQUE, make_call, register_op


def _cache_arg(op: str, call: Call, index: int) -> None:
    s = call.args[index].struct_info
    if not isinstance(s, ObjectStructInfo):
        raise StructInfoError(f"{op}: cache must be the KV cache object (R.Object), got "
                              f"{type(s).__name__ if s is not None else 'no struct info'}")


# positions --------------------------------------------------------------------------------


@register_op("relax.kv.positions", script="R.kv.positions", args=("cache", "input_ids"),
             pattern=OPAQUE)
def positions(cache, input_ids) -> Call:
    """`R.kv.positions(cache, input_ids)`: the position in its sequence of each of the
    step's tokens (input_ids gives their number, T)."""
    op = "R.kv.positions"
    return make_call("relax.kv.positions", (I.as_expr_arg(op, cache, "cache"),
                                               I.as_expr_arg(op, input_ids, "input_ids")))


@positions.infer
def _positions(call: Call) -> StructInfo:
    op = "R.kv.positions"
    _cache_arg(op, call, 0)
    ids = I.tensor_arg(op, call, 1, "input_ids")
    if ids.ndim >= 0 and ids.ndim != 1:
        raise ShapeError(f"{op}: input_ids has shape {fmt_sinfo(ids)}; expected 1 dim (tokens)")
    return TensorStructInfo(ids.shape, "int64", 1)


@positions.sharding
def _positions_sharding(call: Call) -> _sharding.DimSpec:
    return _sharding.DimSpec([(None,)], (None,))      # every worker needs every position


@positions.legalizer
def _positions_legalize(bb, call: Call):
    return call_pure_packed("disco.kv.positions", call.args[0], sinfo_args=call.struct_info)


# attention --------------------------------------------------------------------------------


@register_op("relax.kv.attention", script="R.kv.attention", args=("q", "k", "v", "cache"),
             attrs=("layer", "scale"), pattern=OPAQUE)
def attention(q, k, v, cache, layer: int, scale: float | None = None) -> Call:
    """`R.kv.attention(q, k, v, cache, layer=0, scale=0.125)`: see the module docstring.
    `scale` defaults to 1/sqrt(head_dim)."""
    op = "R.kv.attention"
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise StructInfoError(f"{op}: layer must be a non-negative int, got {layer!r}")
    args = tuple(I.as_expr_arg(op, a, n) for a, n in ((q, "q"), (k, "k"), (v, "v"), (cache, "cache")))
    if scale is None:
        d = I.as_tensor(op, args[0].struct_info, "q").shape
        if d is None or not isinstance(d[-1], IntImm):
            raise StructInfoError(f"{op}: scale must be given when head_dim is not a known constant")
        scale = 1.0 / math.sqrt(d[-1].value)
    return make_call("relax.kv.attention", args, {"layer": layer, "scale": float(scale)})


@attention.infer
def _attention(call: Call) -> StructInfo:
    op = "R.kv.attention"
    named = [(n, I.tensor_arg(op, call, i, n)) for i, n in enumerate(("q", "k", "v"))]
    q, k, v = (t for _, t in named)
    I.require_float(op, "q", q)
    I.same_dtype(op, named)
    _cache_arg(op, call, 3)
    for name, t in named:
        if t.ndim >= 0 and t.ndim != 3:
            raise ShapeError(f"{op}: {name} has shape {fmt_sinfo(t)}; expected 3 dims "
                             f"(tokens, heads, head_dim)")
    if q.shape is not None and k.shape is not None and v.shape is not None:
        if I.dims_differ(k.shape[0], q.shape[0]) or I.dims_differ(v.shape[0], q.shape[0]):
            raise ShapeError(f"{op}: q, k and v must have the same number of tokens, got "
                             f"{fmt_shape(q.shape)}, {fmt_shape(k.shape)}, {fmt_shape(v.shape)}")
        if any(I.dims_differ(a, b) for a, b in zip(k.shape, v.shape)):
            raise ShapeError(f"{op}: k has shape {fmt_shape(k.shape)} but v {fmt_shape(v.shape)}; "
                             "expected the same")
        if I.dims_differ(k.shape[2], q.shape[2]):
            raise ShapeError(f"{op}: head_dim of q ({q.shape[2]}) and of k ({k.shape[2]}) differ")
        h, kv = q.shape[1], k.shape[1]
        if isinstance(h, IntImm) and isinstance(kv, IntImm) and h.value % kv.value:
            raise ShapeError(f"{op}: q has {h.value} heads and k {kv.value}; the query heads must be "
                             f"a multiple of the KV heads (grouped-query attention)")
    return TensorStructInfo(q.shape, q.dtype, q.ndim)


@attention.sharding
def _attention_sharding(call: Call) -> _sharding.DimSpec:
    """Heads split together (q's, k's and v's: each worker keeps whole groups as long as
    the KV heads divide over the mesh axis); tokens and head_dim stay whole."""
    heads = (None, "h", None)
    return _sharding.DimSpec([heads, heads, heads], heads)


@attention.legalizer
def _attention_legalize(bb, call: Call):
    q, k, v, cache = call.args
    return call_dps_packed("disco.kv.attention",
                           [q, k, v, cache, prim_value(call.attrs["layer"]),
                            prim_value(call.attrs["scale"], "float64")],
                           out_sinfo=call.struct_info)
