"""Reductions: `te.sum`, `te.max`, `te.min`, `te.prod` over reduce axes, and `argmax`/`argmin`.

`te.max` and `te.min` serve two purposes, as in TVM: with `axis=` (or a reduce axis
as second argument) they reduce; with two operands they are the elementwise
maximum/minimum. A reduction must be the whole body of a compute; it lowers to a
block whose `init` stores the start value and whose body folds one element in.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from ..ir.errors import DTypeError, ShapeError
from ..ir.expr import (FloatImm, IntImm, PrimExpr, Select, as_expr, const, eq, is_float_dtype,
                       max_expr, min_expr)
from .elementwise import _pair, cast
from .index import normalize_axes, normalize_axis, reduce_shape
from .tensor import Reduce, ReduceAxis, Tensor, TEError, compute, reduce_axis

__all__ = ["sum", "max", "min", "prod", "argmax", "argmin", "reduce_tensor", "identity", "min_value", "max_value"]

AxisLike = Union[ReduceAxis, Sequence[ReduceAxis]]

_INT_LIMITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


def min_value(dtype: str) -> PrimExpr:
    """The lowest value of `dtype` (-inf for floats): the start of a max-reduction."""
    if is_float_dtype(dtype):
        return FloatImm(float("-inf"), dtype)
    if dtype.startswith("uint") or dtype == "bool":
        return IntImm(0, dtype)
    return IntImm(-(1 << (_INT_LIMITS[dtype] - 1)), dtype)


def max_value(dtype: str) -> PrimExpr:
    """The highest value of `dtype` (+inf for floats): the start of a min-reduction."""
    if is_float_dtype(dtype):
        return FloatImm(float("inf"), dtype)
    if dtype == "bool":
        return IntImm(1, dtype)
    if dtype.startswith("uint"):
        return IntImm((1 << int(dtype[4:])) - 1, dtype)
    return IntImm((1 << (_INT_LIMITS[dtype] - 1)) - 1, dtype)


def identity(combiner: str, dtype: str) -> PrimExpr:
    """The neutral element of a combiner: 0 for sum, 1 for prod, lowest for max, highest for min."""
    if combiner == "sum":
        return const(0.0 if is_float_dtype(dtype) else 0, dtype)
    if combiner == "prod":
        return const(1.0 if is_float_dtype(dtype) else 1, dtype)
    return min_value(dtype) if combiner == "max" else max_value(dtype)


def _axes(axis: AxisLike, where: str) -> tuple[ReduceAxis, ...]:
    axes = (axis,) if isinstance(axis, ReduceAxis) else tuple(axis) if isinstance(axis, (list, tuple)) else None
    if not axes or not all(isinstance(a, ReduceAxis) for a in axes):
        raise TEError(f"{where}: axis={axis!r}; expected a te.reduce_axis or a non-empty list of them")
    if len({id(a) for a in axes}) != len(axes):
        raise TEError(f"{where}: axis lists {', '.join(a.name for a in axes)}; each reduce axis once")
    return axes


def _reduce(combiner: str, expr, axis: AxisLike, init, where_cond) -> Reduce:
    where = f"te.{combiner}"
    axes = _axes(axis, where)
    if isinstance(expr, Tensor):
        raise TEError(f"{where}: got tensor {expr.name!r}; reduce an element expression such as x[i, k]")
    source = as_expr(expr)
    dtype = source.dtype
    if where_cond is not None:
        cond = as_expr(where_cond)
        if cond.dtype != "bool":
            raise DTypeError(f"{where}: where= has dtype {cond.dtype}; expected a bool condition")
        # Masked-out elements contribute the identity, which leaves the result unchanged.
        source = Select(cond, source, identity(combiner, dtype), dtype)
    if init is None:
        start = identity(combiner, dtype)
    else:
        start = as_expr(init, dtype) if not isinstance(init, PrimExpr) else init
        if isinstance(start, IntImm) and is_float_dtype(dtype):
            start = FloatImm(float(start.value), dtype)
        if start.dtype != dtype:
            raise DTypeError(f"{where}: init has dtype {start.dtype}, the reduced expression {dtype}; "
                             "they must match (use te.cast)")
    return Reduce(combiner, source, axes, start, dtype)


def sum(expr, axis: AxisLike, init=None, where=None) -> Reduce:  # noqa: A001 (TVM's name)
    """Sum of `expr` over `axis` (one reduce axis or a list); `where` masks elements."""
    return _reduce("sum", expr, axis, init, where)


def prod(expr, axis: AxisLike, init=None, where=None) -> Reduce:
    """Product of `expr` over `axis` (one reduce axis or a list); `where` masks elements."""
    return _reduce("prod", expr, axis, init, where)


def _minmax(combiner: str, a, b, axis, init, where_cond):
    name = f"te.{combiner}"
    if axis is None and (isinstance(b, ReduceAxis) or
                         (isinstance(b, (list, tuple)) and b and all(isinstance(x, ReduceAxis) for x in b))):
        axis, b = b, None
    if axis is not None:
        if b is not None:
            raise TEError(f"{name}: got a second operand and axis=; use either "
                          f"{name}(expr, axis=k) (reduction) or {name}(a, b) (elementwise)")
        return _reduce(combiner, a, axis, init, where_cond)
    if b is None:
        raise TEError(f"{name}: one operand and no axis; expected {name}(expr, axis=k) or {name}(a, b)")
    if init is not None or where_cond is not None:
        raise TEError(f"{name}: init= and where= apply to reductions only")
    a, b = _pair(a, b, f"{name}(a, b)")
    return max_expr(a, b) if combiner == "max" else min_expr(a, b)


def max(a, b=None, axis: Optional[AxisLike] = None, init=None, where=None) -> PrimExpr:  # noqa: A001
    """Reduction `te.max(expr, axis=k)` or elementwise maximum `te.max(a, b)`."""
    return _minmax("max", a, b, axis, init, where)


def min(a, b=None, axis: Optional[AxisLike] = None, init=None, where=None) -> PrimExpr:  # noqa: A001
    """Reduction `te.min(expr, axis=k)` or elementwise minimum `te.min(a, b)`."""
    return _minmax("min", a, b, axis, init, where)


def _arg_reduce(kind: str, x: Tensor, axis: int, keepdims: bool, index_dtype: str, name: str) -> Tensor:
    """Two stages: the extreme value along `axis`, then the smallest index holding it
    (numpy's tie rule: the first occurrence)."""
    ax = normalize_axis(axis, x.ndim, f"te.{kind}({x.name!r})")
    ext = x.shape[ax]
    out_shape = tuple(1 if (d == ax and keepdims) else s for d, s in enumerate(x.shape)
                      if d != ax or keepdims)

    def full(idx, k):
        idx = list(idx)
        if keepdims:
            idx[ax] = k
        else:
            idx.insert(ax, k)
        return tuple(idx)

    k1 = reduce_axis(0, ext, "k")
    reducer = max if kind == "argmax" else min
    best = compute(out_shape, lambda *i: reducer(x[full(i, k1)], axis=k1), name=f"{name}_value")
    k2 = reduce_axis(0, ext, "k")
    last = cast(as_expr(ext), index_dtype)   # larger than any index: loses every min
    return compute(out_shape, lambda *i: min(
        Select(eq(x[full(i, k2)], best[i]), cast(k2, index_dtype), last, index_dtype), axis=k2),
        name=name)


def argmax(x: Tensor, axis: int = -1, keepdims: bool = False, index_dtype: str = "int64",
           name: str = "argmax") -> Tensor:
    """Index of the maximum along `axis` (first occurrence on ties; NaNs are not
    treated specially, unlike numpy)."""
    if not isinstance(x, Tensor):
        raise TEError(f"te.argmax: expected a Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ShapeError(f"te.argmax({x.name!r}): a 0-d tensor has no axis to reduce")
    return _arg_reduce("argmax", x, axis, keepdims, index_dtype, name)


def argmin(x: Tensor, axis: int = -1, keepdims: bool = False, index_dtype: str = "int64",
           name: str = "argmin") -> Tensor:
    """Index of the minimum along `axis` (first occurrence on ties)."""
    if not isinstance(x, Tensor):
        raise TEError(f"te.argmin: expected a Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ShapeError(f"te.argmin({x.name!r}): a 0-d tensor has no axis to reduce")
    return _arg_reduce("argmin", x, axis, keepdims, index_dtype, name)


def reduce_tensor(x: Tensor, axes=None, keepdims: bool = False, combiner: str = "sum",
                  name: Optional[str] = None, element=None) -> Tensor:
    """`x` reduced over `axes` (None: all) with "sum", "max", "min" or "prod", numpy-style
    (`keepdims` keeps reduced dims as 1). `element(load)` maps each element before
    reducing, e.g. `lambda v: te.cast(v, "float32")` or `lambda v: v * v`."""
    reducer = {"sum": sum, "max": max, "min": min, "prod": prod}.get(combiner)
    if reducer is None:
        raise TEError(f"te.reduce_tensor: combiner {combiner!r}; expected 'sum', 'max', 'min' or 'prod'")
    if not isinstance(x, Tensor):
        raise TEError(f"te.reduce_tensor: expected a Tensor, got {type(x).__name__}")
    red = normalize_axes(axes, x.ndim, f"te.reduce_tensor({x.name!r})")
    raxes = {a: reduce_axis(0, x.shape[a], f"k{a}") for a in red}
    out_shape = reduce_shape(x.shape, red, keepdims)

    def body(*idx):
        spatial = iter(idx)
        full = []
        for d in range(x.ndim):
            if d in raxes:
                full.append(raxes[d])
                if keepdims:
                    next(spatial)
            else:
                full.append(next(spatial))
        value = x[tuple(full)]
        return reducer(element(value) if element else value, axis=list(raxes.values()))

    return compute(out_shape, body, name=name or f"{x.name}_{combiner}")
