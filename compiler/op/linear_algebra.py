"""Matrix multiplication: `R.matmul(x1, x2, out_dtype=None)` with numpy's rules.

Batch dims broadcast; a 1-D x1 is treated as (1, k) and a 1-D x2 as (k, 1), with the
added dim removed from the result. Without out_dtype both dtypes must be equal;
with it, mixed inputs are allowed (e.g. float16 x float16 -> float32 accumulation).
Contraction dims raise only when provably different (policy in infer.py).
"""
from __future__ import annotations

from ..ir.errors import ShapeError
from ..ir.expr import fmt_expr, fmt_shape
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from .. import te
from . import infer as I
from ._legalize import acc_dtype, broadcast_indices, call_te, out_dtype, out_shape
from .registry import OUT_EWISE_FUSABLE, make_call, register_op
from . import sharding as _sharding


@register_op("relax.matmul", script="R.matmul", args=("x1", "x2"), attrs=("out_dtype",),
             pattern=OUT_EWISE_FUSABLE)
def matmul(x1, x2, out_dtype=None) -> Call:
    """`R.matmul(x1, x2, out_dtype=None)`."""
    op = "R.matmul"
    if out_dtype is not None:
        I.check_dtype(op, out_dtype, "out_dtype")
    return make_call("relax.matmul", (I.as_expr_arg(op, x1, "x1"), I.as_expr_arg(op, x2, "x2")),
                     {"out_dtype": out_dtype})


@matmul.infer
def _matmul(call: Call) -> StructInfo:
    op = "R.matmul"
    a, b = I.tensor_arg(op, call, 0, "x1"), I.tensor_arg(op, call, 1, "x2")
    out_dtype = call.attrs.get("out_dtype")
    dtype = out_dtype if out_dtype is not None else I.same_dtype(op, [("x1", a), ("x2", b)])
    for name, s in (("x1", a), ("x2", b)):
        if s.ndim == 0:
            raise ShapeError(f"{op}: {name} is a 0-d tensor; matmul needs at least 1 dim")
    if a.ndim < 0 or b.ndim < 0:
        return I.unknown_tensor(dtype)
    ndim = max(a.ndim, b.ndim) - (a.ndim == 1) - (b.ndim == 1)
    if a.shape is None or b.shape is None:
        return I.unknown_tensor(dtype, ndim)
    k1 = a.shape[-1]
    k2 = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if I.dims_differ(k1, k2):
        where = "dim -2" if b.ndim >= 2 else "dim 0"
        raise ShapeError(f"{op}: contraction dims differ: x1 has shape {fmt_shape(a.shape)} "
                         f"(last dim {fmt_expr(k1)}), x2 has shape {fmt_shape(b.shape)} "
                         f"({where} is {fmt_expr(k2)}); expected equal")
    batch_a = TensorStructInfo(a.shape[:-2], a.dtype)
    batch_b = TensorStructInfo(b.shape[:-2], b.dtype)
    try:
        batch = I.broadcast_shapes(op, [("x1", batch_a), ("x2", batch_b)])
    except ShapeError:
        raise ShapeError(f"{op}: batch dims do not broadcast: x1 has shape "
                         f"{fmt_shape(a.shape)} (batch {fmt_shape(a.shape[:-2])}), x2 has "
                         f"shape {fmt_shape(b.shape)} (batch {fmt_shape(b.shape[:-2])})") from None
    out = batch + ((a.shape[-2],) if a.ndim >= 2 else ()) + ((b.shape[-1],) if b.ndim >= 2 else ())
    return TensorStructInfo(out, dtype)


matmul.sharding(_sharding.matmul)   # contraction dim sharded on both sides -> P[sum]


@matmul.legalizer
def _matmul_legalize(bb, call: Call):
    """out[batch, i, j] = sum_k x1[batch', i, k] * x2[batch'', k, j], batch dims broadcast;
    a 1-D operand has no i (x1) or j (x2). float16/bfloat16 accumulate in float32."""
    dtype, shape = out_dtype(call), out_shape(call)
    acc = acc_dtype(dtype)

    def f(a, b):
        nbatch = len(shape) - (a.ndim >= 2) - (b.ndim >= 2)
        batch_shape = shape[:nbatch]
        k = te.reduce_axis(0, a.shape[-1], "k")

        def element(*i):
            batch = i[:nbatch]
            ai = broadcast_indices(a.shape[:-2], batch_shape, batch) + (i[nbatch], k) if a.ndim >= 2 else (k,)
            bi = broadcast_indices(b.shape[:-2], batch_shape, batch) + (k, i[-1]) if b.ndim >= 2 else (k,)
            return te.sum(te.cast(a[ai], acc) * te.cast(b[bi], acc), axis=k)

        if acc == dtype:
            return te.compute(shape, element, name="matmul")
        total = te.compute(shape, element, name="matmul_acc")
        return te.compute(shape, lambda *i: te.cast(total[i], dtype), name="matmul")

    return call_te(bb, call, f, call.args[0], call.args[1])
