"""Elementwise binary operators with numpy broadcasting: `R.add(x1, x2)`, `R.less(x1, x2)`.

Both arguments must be tensors of the same dtype (no implicit promotion, as in TVM);
arithmetic ops return that dtype, comparisons return "bool". Shapes broadcast as in
numpy; for symbolic dims see the policy in infer.py (error only on provably
different dims; `n` vs `m` gives `n`; `n` vs 4 gives 4).
"""
from __future__ import annotations

from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from .. import te
from ..ir import expr as E
from . import infer as I
from ._legalize import broadcast_compute, call_te, out_shape
from .registry import BROADCAST, OpDef, make_call, register_op
from . import sharding as _sharding


def _rule(compare: bool):
    def rule(call: Call) -> StructInfo:
        op = I.op_name(call)
        named = [("x1", I.tensor_arg(op, call, 0, "x1")), ("x2", I.tensor_arg(op, call, 1, "x2"))]
        dtype = I.same_dtype(op, named)
        shape = I.broadcast_shapes(op, named)
        out_dtype = "bool" if compare else dtype
        if shape is None:
            return I.unknown_tensor(out_dtype, I.broadcast_ndim(named))
        return TensorStructInfo(shape, out_dtype)

    return rule


def define_binary(name: str, compare: bool = False) -> OpDef:
    canonical, script = f"relax.{name}", f"R.{name}"

    def constructor(x1, x2) -> Call:
        return make_call(canonical, (I.as_expr_arg(script, x1, "x1"),
                                     I.as_expr_arg(script, x2, "x2")))

    constructor.__name__ = name
    kind = "comparison (result dtype bool)" if compare else "arithmetic"
    constructor.__doc__ = f"`{script}(x1, x2)`: elementwise {kind} with numpy broadcasting."
    opdef = register_op(canonical, script=script, args=("x1", "x2"), pattern=BROADCAST)(constructor)
    opdef.infer(_rule(compare))
    opdef.sharding(_sharding.broadcast)
    return opdef


add = define_binary("add")
subtract = define_binary("subtract")
multiply = define_binary("multiply")
divide = define_binary("divide")
floor_divide = define_binary("floor_divide")
power = define_binary("power")
maximum = define_binary("maximum")
minimum = define_binary("minimum")
equal = define_binary("equal", compare=True)
not_equal = define_binary("not_equal", compare=True)
less = define_binary("less", compare=True)
less_equal = define_binary("less_equal", compare=True)
greater = define_binary("greater", compare=True)
greater_equal = define_binary("greater_equal", compare=True)



def broadcast_legalizer(fn):
    """Legalization of a binary op: `out[i] = fn(x1[bcast(i)], x2[bcast(i)])`."""

    def legalize(bb, call: Call):
        name = call.op.name.rsplit(".", 1)[-1]
        return call_te(bb, call, lambda a, b: broadcast_compute(fn, a, b, shape=out_shape(call), name=name),
                       call.args[0], call.args[1])

    return legalize


def _divide(a, b):
    if E.is_float_dtype(a.dtype):
        return a / b
    return E.Div(a, b, a.dtype)     # integers: C division, truncating toward zero (as TVM)


def _power(a, b):
    if E.is_float_dtype(a.dtype):
        return te.pow(a, b)
    # Integers through float64, rounded: pow is accurate to a few ulp, not exact (CUDA's
    # pow(3.0, 1.0) may give 2.9999999999999996, which truncates to 2), and a
    # non-negative integer exponent gives an integer (exact while it fits in 53 bits).
    p = te.pow(te.cast(a, "float64"), te.cast(b, "float64"))
    return te.cast(te.select(b >= 0, te.round(p), p), a.dtype)


add.legalizer(broadcast_legalizer(lambda a, b: a + b))
subtract.legalizer(broadcast_legalizer(lambda a, b: a - b))
multiply.legalizer(broadcast_legalizer(lambda a, b: a * b))
divide.legalizer(broadcast_legalizer(_divide))
floor_divide.legalizer(broadcast_legalizer(lambda a, b: a // b))
power.legalizer(broadcast_legalizer(_power))
maximum.legalizer(broadcast_legalizer(lambda a, b: te.max(a, b)))
minimum.legalizer(broadcast_legalizer(lambda a, b: te.min(a, b)))
equal.legalizer(broadcast_legalizer(te.eq))
not_equal.legalizer(broadcast_legalizer(te.ne))
less.legalizer(broadcast_legalizer(lambda a, b: a < b))
less_equal.legalizer(broadcast_legalizer(lambda a, b: a <= b))
greater.legalizer(broadcast_legalizer(lambda a, b: a > b))
greater_equal.legalizer(broadcast_legalizer(lambda a, b: a >= b))

BINARY_OPS = ("add", "subtract", "multiply", "divide", "floor_divide", "power", "maximum",
              "minimum", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
