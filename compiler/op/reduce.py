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
from .. import te
from . import infer as I
from ._legalize import acc_dtype, axes_of, call_te, count, out_shape
from .registry import COMM_REDUCE, OpDef, make_call, register_op
from . import sharding as _sharding


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



def reduce_legalizer(combiner: str, mean: bool = False):
    """Legalization of sum/mean/max/min/prod: one reduction stage (sum, mean and
    prod of float16/bfloat16 in float32), then a divide and/or cast stage if needed."""

    def legalize(bb, call: Call):
        name = call.op.name.rsplit(".", 1)[-1]
        shape = out_shape(call)

        def f(x):
            acc = acc_dtype(x.dtype) if combiner != "max" and combiner != "min" else x.dtype
            axes = axes_of(call.attrs.get("axis"), x.ndim, f"R.{name}")
            stage = name if acc == x.dtype and not mean else f"{name}_acc"
            if axes:
                total = te.reduce_tensor(x, axes, call.attrs.get("keepdims", False), combiner,
                                         name=stage, element=lambda v: te.cast(v, acc))
            else:   # nothing to reduce (a 0-d tensor or axis=[]): the elements themselves
                total = te.compute(shape, lambda *i: te.cast(x[i], acc), name=stage)
            if stage == name:
                return total
            n = count(x.shape, axes, acc)
            return te.compute(shape, lambda *i: te.cast(total[i] / n if mean else total[i], x.dtype),
                              name=name)

        return call_te(bb, call, f, call.args[0])

    return legalize


def arg_reduce_legalizer(kind: str):
    """argmax/argmin: te.argmax along one axis; over the flattened tensor (axis None),
    the first flat index holding the extreme value."""

    def legalize(bb, call: Call):
        shape = out_shape(call)

        def f(x):
            axis, keepdims = call.attrs.get("axis"), call.attrs.get("keepdims", False)
            if axis is not None:
                return (te.argmax if kind == "argmax" else te.argmin)(x, axis, keepdims, "int64", kind)
            if x.ndim == 0:
                return te.compute(shape, lambda *i: te.const(0, "int64"), name=kind)
            reducer = te.max if kind == "argmax" else te.min
            ks = [te.reduce_axis(0, d, f"k{a}") for a, d in enumerate(x.shape)]
            best = te.compute(shape, lambda *i: reducer(x[tuple(ks)], axis=ks), name=f"{kind}_value")
            ks2 = [te.reduce_axis(0, d, f"k{a}") for a, d in enumerate(x.shape)]
            last = I.product(x.shape)           # past every flat index: loses every min
            return te.compute(shape, lambda *i: te.min(te.select(
                te.eq(x[tuple(ks2)], best[i]), te.ravel_index(ks2, x.shape), last), axis=ks2), name=kind)

        return call_te(bb, call, f, call.args[0])

    return legalize


sum.legalizer(reduce_legalizer("sum"))
mean.legalizer(reduce_legalizer("sum", mean=True))
max.legalizer(reduce_legalizer("max"))
min.legalizer(reduce_legalizer("min"))
prod.legalizer(reduce_legalizer("prod"))
argmax.legalizer(arg_reduce_legalizer("argmax"))
argmin.legalizer(arg_reduce_legalizer("argmin"))

# Sharding: a sharded reduced dim gives Partial(kind); mean is a Partial sum that the
# lowering scales by 1/shards; argmax/argmin need the reduced dim gathered.
for _opdef, _kind in ((sum, "sum"), (mean, "sum"), (max, "max"), (min, "min"), (prod, "prod"),
                      (argmax, None), (argmin, None)):
    _opdef.sharding(_sharding.reduction(_kind))

REDUCE_OPS = ("sum", "mean", "max", "min", "prod", "argmax", "argmin")
