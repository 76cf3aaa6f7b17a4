"""Reductions: `R.sum(x, axis=None, keepdims=False)`, mean, max, min, prod, argmax, argmin.

`axis` is None (all axes), an int or a list of ints; repeated or out-of-range axes
raise. sum/prod/max/min keep the input dtype (as TVM; numpy would widen small ints to
int64). `mean` requires a float dtype (cast integers with R.astype first) so that the
result dtype is never a surprise. argmax/argmin take one axis (or None: the
flattened tensor) and return int64.
"""
from __future__ import annotations

from ..ir.expr import IntImm
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from . import _infer as I
from .registry import COMM_REDUCE, OpDef, make_call, register_op


def reduce_shape(op: str, x: TensorStructInfo, axis, keepdims: bool, dtype: str) -> StructInfo:
    """Result struct info of reducing `x` over `axis` (None = all)."""
    if x.ndim < 0:
        return I.unknown_tensor(dtype, 0 if axis is None and not keepdims else -1)
    axes = range(x.ndim) if axis is None else I.normalize_axes(op, axis, x.ndim, "axis", x)
    axes = set(axes)
    if x.shape is None:
        return I.unknown_tensor(dtype, x.ndim if keepdims else x.ndim - len(axes))
    if keepdims:
        return TensorStructInfo(tuple(IntImm(1) if i in axes else d for i, d in enumerate(x.shape)),
                                dtype)
    return TensorStructInfo(tuple(d for i, d in enumerate(x.shape) if i not in axes), dtype)


def define_reduce(name: str, float_only: bool = False, index: bool = False) -> OpDef:
    canonical, script = f"relax.{name}", f"R.{name}"

    def constructor(x, axis=None, keepdims=False) -> Call:
        if index and isinstance(axis, (list, tuple)):
            from ..ir.errors import ShapeError
            raise ShapeError(f"{script}: axis must be an int or None, got {axis!r}")
        return make_call(canonical, (I.as_expr_arg(script, x, "x"),),
                         {"axis": I.freeze_axes(axis), "keepdims": bool(keepdims)})

    constructor.__name__ = name
    constructor.__doc__ = f"`{script}(x, axis=None, keepdims=False)`."
    opdef = register_op(canonical, script=script, args=("x",), attrs=("axis", "keepdims"),
                        pattern=COMM_REDUCE)(constructor)

    @opdef.infer
    def rule(call: Call) -> StructInfo:
        x = I.tensor_arg(script, call, 0, "x")
        if float_only:
            I.require_float(script, "x", x)
        dtype = "int64" if index else x.dtype
        return reduce_shape(script, x, call.attrs.get("axis"), call.attrs.get("keepdims", False),
                            dtype)

    return opdef


sum = define_reduce("sum")  # noqa: A001 - TVM's name
mean = define_reduce("mean", float_only=True)
max = define_reduce("max")  # noqa: A001
min = define_reduce("min")  # noqa: A001
prod = define_reduce("prod")
argmax = define_reduce("argmax", index=True)
argmin = define_reduce("argmin", index=True)

REDUCE_OPS = ("sum", "mean", "max", "min", "prod", "argmax", "argmin")
