"""Tensor creation: `R.full`, `R.zeros`, `R.ones`, `R.full_like`, `R.zeros_like`,
`R.ones_like`, `R.arange`.

Shapes are positional ShapeExpr arguments (as TVM); `fill_value` is a scalar tensor
expression (a Python number becomes R.const). arange takes PrimValue arguments
(`R.arange(R.prim_value(0), R.prim_value(n), R.prim_value(1), dtype="int64")`); its
dtype, when not given, is int64 for integer bounds and float32 otherwise, and is
stored resolved.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ..ir import arith
from ..ir.errors import ShapeError, StructInfoError
from ..ir.expr import FloatImm, IntImm, PrimExpr, fmt_expr, fmt_sinfo, is_float_dtype
from ..ir.graph import Call, Constant, Expr, PrimValue
from ..ir.struct_info import PrimStructInfo, StructInfo, TensorStructInfo
from .. import te
from . import infer as I
from ._legalize import call_te, out_dtype, out_shape
from .registry import ELEMWISE, INJECTIVE, make_call, register_op
from . import sharding as _sharding


def _fill(op: str, fill_value: Any) -> Expr:
    if isinstance(fill_value, Expr):
        return fill_value
    from .builtin import const
    return const(fill_value)


def _scalar(op: str, call: Call, index: int, name: str) -> TensorStructInfo:
    s = I.tensor_arg(op, call, index, name)
    if s.ndim > 0:
        raise ShapeError(f"{op}: {name} must be a scalar (0-d tensor), got shape {fmt_sinfo(s)}")
    return s


@register_op("relax.full", script="R.full", args=("shape", "fill_value"), attrs=("dtype",),
             pattern=ELEMWISE)
def full(shape, fill_value, dtype: Optional[str] = None) -> Call:
    """`R.full(R.shape([n, 4]), R.const(0.5, "float32"), dtype=None)`."""
    op = "R.full"
    if dtype is not None:
        I.check_dtype(op, dtype)
    return make_call("relax.full", (I.as_shape_arg(op, shape), _fill(op, fill_value)),
                     {"dtype": dtype})


@full.infer
def _full(call: Call) -> StructInfo:
    op = "R.full"
    v = _scalar(op, call, 1, "fill_value")
    return _from_shape(op, call.args[0], call.attrs.get("dtype") or v.dtype)



def _fill_legalize(bb, call: Call):
    """full / full_like: every element is the 0-d fill_value tensor, cast to the dtype;
    a constant fill_value is written into the program instead of passed to it."""
    name, dtype, value = call.op.name.rsplit(".", 1)[-1], out_dtype(call), call.args[1]
    if isinstance(value, Constant):
        v = value.data.item()
        v = float(v) if is_float_dtype(dtype) else bool(v) if dtype == "bool" else int(v)
        return call_te(bb, call, lambda: te.compute(out_shape(call), lambda *i: te.const(v, dtype),
                                                    name=name))
    return call_te(bb, call, lambda v: te.compute(out_shape(call), lambda *i: te.cast(v[()], dtype),
                                                  name=name), value)


full.legalizer(_fill_legalize)
full.sharding(_sharding.creation)

def _from_shape(op: str, shape_arg: Expr, dtype: str) -> StructInfo:
    values = I.shape_values(op, shape_arg, "shape")
    if values is None:
        return I.unknown_tensor(dtype, I.shape_ndim(op, shape_arg, "shape"))
    I.require_nonnegative_dims(op, values)
    return TensorStructInfo(values, dtype)


@register_op("relax.full_like", script="R.full_like", args=("x", "fill_value"), attrs=("dtype",),
             pattern=ELEMWISE)
def full_like(x, fill_value, dtype: Optional[str] = None) -> Call:
    """`R.full_like(x, fill_value, dtype=None)`."""
    op = "R.full_like"
    if dtype is not None:
        I.check_dtype(op, dtype)
    return make_call("relax.full_like", (I.as_expr_arg(op, x, "x"), _fill(op, fill_value)),
                     {"dtype": dtype})


@full_like.infer
def _full_like(call: Call) -> StructInfo:
    op = "R.full_like"
    x = I.tensor_arg(op, call, 0, "x")
    _scalar(op, call, 1, "fill_value")
    return TensorStructInfo(x.shape, call.attrs.get("dtype") or x.dtype, x.ndim)

full_like.legalizer(_fill_legalize)
full_like.sharding(_sharding.elementwise)

def _define_const_fill(name: str, value: int):
    canonical, script = f"relax.{name}", f"R.{name}"

    def constructor(shape, dtype) -> Call:
        return make_call(canonical, (I.as_shape_arg(script, shape),),
                         {"dtype": I.check_dtype(script, dtype)})

    constructor.__name__ = name
    constructor.__doc__ = f"`{script}(shape, dtype)`: a tensor filled with {value}."
    opdef = register_op(canonical, script=script, args=("shape",), attrs=("dtype",),
                        pattern=ELEMWISE)(constructor)
    opdef.infer(lambda call: _from_shape(script, call.args[0], call.attrs["dtype"]))

    def like(x, dtype=None) -> Call:
        if dtype is not None:
            I.check_dtype(script + "_like", dtype)
        return make_call(canonical + "_like", (I.as_expr_arg(script + "_like", x, "x"),),
                         {"dtype": dtype})

    like.__name__ = name + "_like"
    like.__doc__ = f"`{script}_like(x, dtype=None)`: like x, filled with {value}."
    like_def = register_op(canonical + "_like", script=script + "_like", args=("x",),
                           attrs=("dtype",), pattern=ELEMWISE)(like)

    @like_def.infer
    def _like(call: Call) -> StructInfo:
        x = I.tensor_arg(script + "_like", call, 0, "x")
        return TensorStructInfo(x.shape, call.attrs.get("dtype") or x.dtype, x.ndim)

    return opdef, like_def


zeros, zeros_like = _define_const_fill("zeros", 0)
ones, ones_like = _define_const_fill("ones", 1)



def _const_fill_legalizer(value: int):
    def legalize(bb, call: Call):
        name = call.op.name.rsplit(".", 1)[-1]
        return call_te(bb, call, lambda: te.compute(out_shape(call), lambda *i: value,
                                                    name=name, dtype=out_dtype(call)))
    return legalize


for _opdef, _value in ((zeros, 0), (zeros_like, 0), (ones, 1), (ones_like, 1)):
    _opdef.legalizer(_const_fill_legalizer(_value))
for _opdef in (zeros, ones):
    _opdef.sharding(_sharding.creation)
for _opdef in (zeros_like, ones_like):
    _opdef.sharding(_sharding.elementwise)

# arange ---------------------------------------------------------------------------------------


@register_op("relax.arange", script="R.arange", args=("start", "end", "step"), attrs=("dtype",),
             pattern=INJECTIVE)
def arange(start, end=None, step=1, dtype: Optional[str] = None) -> Call:
    """`R.arange(start, end=None, step=1, dtype=None)`; `R.arange(n)` counts 0..n-1."""
    op = "R.arange"
    if end is None:
        start, end = 0, start
    vals = [_prim(op, v, n) for v, n in ((start, "start"), (end, "end"), (step, "step"))]
    if dtype is None:
        dtype = "float32" if any(is_float_dtype(v.value.dtype) for v in vals) else "int64"
    return make_call("relax.arange", tuple(vals), {"dtype": I.check_dtype(op, dtype)})


def _prim(op: str, v: Any, name: str) -> PrimValue:
    if isinstance(v, PrimValue):
        return I.prim_value(v)
    if isinstance(v, (int, float, PrimExpr)):
        return I.prim_value(v)
    raise StructInfoError(f"{op}: {name} must be a number, a symbolic int or R.prim_value, "
                          f"got {type(v).__name__} {v!r}")


@arange.infer
def _arange(call: Call) -> StructInfo:
    op = "R.arange"
    vals = []
    for e, name in zip(call.args, ("start", "end", "step")):
        s = e.struct_info
        if not isinstance(s, PrimStructInfo):
            raise StructInfoError(f"{op}: {name} must be a scalar (R.prim_value), got "
                                  f"{type(s).__name__}")
        vals.append(s.value)
    dtype = call.attrs["dtype"]
    start, end, step = vals
    if any(v is None for v in vals):
        return I.unknown_tensor(dtype, 1)
    if all(isinstance(v, (IntImm, FloatImm)) for v in vals):
        if step.value == 0:
            raise ShapeError(f"{op}: step must be non-zero")
        n = max(0, math.ceil((end.value - start.value) / step.value))
        if all(isinstance(v, IntImm) for v in vals):
            n = len(range(start.value, end.value, step.value))
        return TensorStructInfo((IntImm(n),), dtype)
    if not isinstance(step, IntImm) or step.value == 0:
        raise ShapeError(f"{op}: with symbolic bounds, step must be a non-zero int constant, "
                         f"got {fmt_expr(step)}")
    # In-range assumption for symbolic bounds: the count is ceil((end - start) / step).
    n = end - start if step.value > 0 else start - end
    k = abs(step.value)
    if k != 1:
        n = (n + (k - 1)) // k
    return TensorStructInfo((arith.simplify(n),), dtype)



@arange.legalizer
def _arange_legalize(bb, call: Call):
    """out[i] = start + i * step in the result dtype; symbolic bounds become scalar
    parameters of the program (call_tir's tir_vars)."""
    dtype = out_dtype(call)
    start, step = (te.cast(a.value, dtype) for a in (call.args[0], call.args[2]))
    return call_te(bb, call, lambda: te.compute(
        out_shape(call), lambda i: start + te.cast(i, dtype) * step, name="arange"))


arange.sharding(_sharding.creation)
