"""Elementwise unary operators: `R.exp(x)`, `R.negative(x)`, ...

Float-only ops (exp, log, sqrt, rsqrt, tanh, sigmoid, erf, sin, cos) raise DTypeError
on integer tensors, as in TVM; the others accept any numeric dtype. The result has
the argument's shape and dtype. The activations relu/gelu/silu live in `R.nn` (nn.py).
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from . import _infer as I
from .registry import ELEMWISE, OpDef, make_call, register_op


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

UNARY_OPS = ("exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "sin", "cos",
             "negative", "abs", "square")
