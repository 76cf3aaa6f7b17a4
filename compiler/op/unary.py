"""Elementwise unary operators: `R.exp(x)`, `R.negative(x)`, ...

Float-only ops (exp, log, sqrt, rsqrt, tanh, sigmoid, erf, sin, cos) raise DTypeError
on integer tensors, as in TVM; the others accept any numeric dtype. The result has
the argument's shape and dtype. The activations relu/gelu/silu live in `R.nn` (nn.py).
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from .. import te
from ..ir.expr import is_float_dtype
from . import infer as I
from ._legalize import call_te, out_shape
from .registry import ELEMWISE, OpDef, make_call, register_op
from . import sharding as _sharding


def elementwise_rule(require_float: bool, arg: str = "x") -> Callable[[Call], StructInfo]:
    """Struct-info rule of a one-tensor elementwise op: same shape and dtype."""

    def rule(call: Call) -> StructInfo:
        op = I.op_name(call)
        x = I.tensor_arg(op, call, 0, arg)
        if require_float:
            I.require_float(op, arg, x)
        return TensorStructInfo(x.shape, x.dtype, x.ndim)

    return rule


def define_elementwise(name: str, require_float: bool, arg: str = "x", doc: str = "") -> OpDef:
    """Register `relax.<name>` (script `R.<name>`) taking one tensor `arg`."""
    canonical, script = f"relax.{name}", "R." + name

    def constructor(x) -> Call:
        return make_call(canonical, (I.as_expr_arg(script, x, arg),))

    constructor.__name__ = name.rsplit(".", 1)[-1]
    constructor.__doc__ = doc or f"`{script}({arg})`: elementwise {name}."
    opdef = register_op(canonical, script=script, args=(arg,), pattern=ELEMWISE)(constructor)
    opdef.infer(elementwise_rule(require_float, arg))
    opdef.sharding(_sharding.elementwise)
    return opdef


exp = define_elementwise("exp", True)
log = define_elementwise("log", True)
sqrt = define_elementwise("sqrt", True)
rsqrt = define_elementwise("rsqrt", True, doc="`R.rsqrt(x)`: 1 / sqrt(x).")
tanh = define_elementwise("tanh", True)
sigmoid = define_elementwise("sigmoid", True)
erf = define_elementwise("erf", True)
sin = define_elementwise("sin", True)
cos = define_elementwise("cos", True)
negative = define_elementwise("negative", False)
abs = define_elementwise("abs", False)  # noqa: A001 - TVM's name
square = define_elementwise("square", False)



def elementwise_legalizer(fn: Callable):
    """Legalization of a one-tensor elementwise op: `out[i] = fn(x[i])`, computed by
    te in x's dtype (the C backend widens float16/bfloat16 to float for the math)."""

    def legalize(bb, call: Call):
        name = call.op.name.rsplit(".", 1)[-1]
        return call_te(bb, call, lambda x: te.compute(out_shape(call), lambda *i: fn(x[i]), name=name),
                       call.args[0])

    return legalize


def _negative(v):
    # -1.0 * v (not 0 - v) so that -(0.0) is -0.0, as in numpy.
    return te.const(-1.0, v.dtype) * v if is_float_dtype(v.dtype) else te.const(0, v.dtype) - v


exp.legalizer(elementwise_legalizer(te.exp))
log.legalizer(elementwise_legalizer(te.log))
sqrt.legalizer(elementwise_legalizer(te.sqrt))
rsqrt.legalizer(elementwise_legalizer(te.rsqrt))
tanh.legalizer(elementwise_legalizer(te.tanh))
sigmoid.legalizer(elementwise_legalizer(te.sigmoid))
erf.legalizer(elementwise_legalizer(te.erf))
sin.legalizer(elementwise_legalizer(te.sin))
cos.legalizer(elementwise_legalizer(te.cos))
negative.legalizer(elementwise_legalizer(_negative))
abs.legalizer(elementwise_legalizer(te.abs))
square.legalizer(elementwise_legalizer(lambda v: v * v))

UNARY_OPS = ("exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "sin", "cos",
             "negative", "abs", "square")
