"""Shared helpers for operator struct-info rules: argument checks, axes, broadcasting.

Policy on symbolic dims (used by every rule here): an error is raised only when two
dims are *provably* different (both constants that differ, or whose difference
simplifies to a non-zero constant). When two dims cannot be proven equal nor
different (`n` vs `m`), the rule accepts them and the result takes the first
operand's dim; a run-time check (match_cast / the VM's argument checks) is where
such an assumption can fail. Broadcasting `n` against the constant 4 gives 4 (it
is 4 whether `n` is 1 or 4), and `n` against 1 gives `n`.

DTensorStructInfo arguments are read through their global view (`.tensor`) and
the rules return plain TensorStructInfo; wrapping results back into DTensors is the
job of sharding propagation (compiler.distributed).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..ir import arith
from ..ir import expr as E
from ..ir.errors import DTypeError, ShapeError, StructInfoError
from ..ir.expr import IntImm, PrimExpr, as_expr, fmt_expr, fmt_shape, fmt_sinfo
from ..ir.graph import Call, Expr, PrimValue, ShapeExpr, Tuple
from ..ir.struct_info import (PrimStructInfo, ShapeStructInfo, StructInfo, TensorStructInfo,
                              TupleStructInfo, tensor_view)

Shape = tuple[PrimExpr, ...]


# Argument access ----------------------------------------------------------------


def op_name(call: Call) -> str:
    """The script spelling of the call's operator, for messages."""
    from .registry import get_op
    return get_op(call.op.name).script


def tensor_arg(op: str, call: Call, index: int, name: str) -> TensorStructInfo:
    """Struct info of tensor argument `index` (a DTensor gives its global view)."""
    return as_tensor(op, call.args[index].struct_info, name)


def as_tensor(op: str, sinfo: Optional[StructInfo], name: str) -> TensorStructInfo:
    t = tensor_view(sinfo)
    if t is not None:
        return t
    raise StructInfoError(f"{op}: argument {name} must be a tensor, got {_kind(sinfo)}")


def _kind(sinfo: Any) -> str:
    return "no struct info" if sinfo is None else type(sinfo).__name__


def shape_values(op: str, expr: Expr, name: str) -> Optional[Shape]:
    """The dims held by a shape argument (ShapeExpr or a var of ShapeStructInfo)."""
    if isinstance(expr, ShapeExpr):
        return expr.values
    sinfo = expr.struct_info
    if isinstance(sinfo, ShapeStructInfo):
        return sinfo.values
    raise StructInfoError(f"{op}: argument {name} must be a shape (R.shape([...])), "
                          f"got {_kind(sinfo)}")


def shape_ndim(op: str, expr: Expr, name: str) -> int:
    if isinstance(expr, ShapeExpr):
        return len(expr.values)
    sinfo = expr.struct_info
    if isinstance(sinfo, ShapeStructInfo):
        return sinfo.ndim
    raise StructInfoError(f"{op}: argument {name} must be a shape, got {_kind(sinfo)}")


# Dtypes --------------------------------------------------------------------------


def same_dtype(op: str, named: Sequence[tuple[str, TensorStructInfo]]) -> str:
    """The common dtype of the arguments; raise DTypeError when they differ (no promotion)."""
    first_name, first = named[0]
    for name, s in named[1:]:
        if s.dtype != first.dtype:
            given = ", ".join(f"{n} is {t.dtype}" for n, t in named)
            raise DTypeError(f"{op}: dtypes differ: {given}; expected equal dtypes "
                             f"(insert R.astype to convert)")
    return first.dtype


def require_float(op: str, name: str, s: TensorStructInfo) -> None:
    if not E.is_float_dtype(s.dtype):
        raise DTypeError(f"{op}: argument {name} must have a float dtype, got {s.dtype}")


def require_int(op: str, name: str, s: TensorStructInfo) -> None:
    if not E.is_int_dtype(s.dtype) or s.dtype == "bool":
        raise DTypeError(f"{op}: argument {name} must have an integer dtype, got {s.dtype}")


def check_dtype(op: str, dtype: Any, name: str = "dtype") -> str:
    if not isinstance(dtype, str) or dtype not in E.DTYPES:
        raise DTypeError(f"{op}: {name} must be one of {', '.join(E.DTYPES)}, got {dtype!r}")
    return dtype


# Symbolic dims -------------------------------------------------------------------


def dims_equal(a: PrimExpr, b: PrimExpr) -> bool:
    return arith.prove_equal(a, b)


def dims_differ(a: PrimExpr, b: PrimExpr) -> bool:
    """True only when a != b is provable (see the module docstring)."""
    a, b = as_expr(a), as_expr(b)
    if isinstance(a, IntImm) and isinstance(b, IntImm):
        return a.value != b.value
    diff = arith.simplify(a - b)
    return isinstance(diff, IntImm) and diff.value != 0


def is_const(d: PrimExpr, value: Optional[int] = None) -> bool:
    return isinstance(d, IntImm) and (value is None or d.value == value)


def product(dims: Sequence[PrimExpr]) -> PrimExpr:
    out: PrimExpr = IntImm(1)
    for d in dims:
        out = d if is_const(out, 1) else out * d
    return out


def require_nonnegative_dims(op: str, dims: Sequence[PrimExpr], name: str = "shape") -> None:
    """Reject a dim that is (or simplifies to) a negative constant, as numpy does
    ("negative dimensions are not allowed"); symbolic sizes are non-negative by rule."""
    for i, d in enumerate(dims):
        value = d.value if isinstance(d, IntImm) else arith.as_int(d)
        if value is not None and value < 0:
            raise ShapeError(f"{op}: {name} {fmt_shape(dims)} has the negative dim {value} at "
                             f"position {i}; expected every dim >= 0")


def broadcast_shapes(op: str, named: Sequence[tuple[str, TensorStructInfo]]) -> Optional[Shape]:
    """Numpy broadcasting of the arguments' shapes; None when any shape is unknown."""
    if any(s.shape is None for _, s in named):
        return None
    ndim = max(len(s.shape) for _, s in named)
    out: list[PrimExpr] = []
    for i in range(-ndim, 0):
        dim: Optional[PrimExpr] = None
        owner = ""
        for name, s in named:
            if -i > len(s.shape):
                continue
            d = s.shape[i]
            if dim is None or is_const(dim, 1):
                dim, owner = d, name
            elif is_const(d, 1) or dims_equal(dim, d):
                continue
            elif dims_differ(dim, d):
                given = ", ".join(f"{n} has shape {fmt_sinfo(t)}" for n, t in named)
                raise ShapeError(f"{op}: shapes do not broadcast: {given}; dim {i} is "
                                 f"{fmt_expr(dim)} in {owner} and {fmt_expr(d)} in {name} "
                                 f"(expected equal or 1)")
            elif isinstance(d, IntImm) and not isinstance(dim, IntImm):
                dim, owner = d, name        # n vs 4 -> 4 (n must be 1 or 4)
        out.append(dim)
    return tuple(out)


def broadcast_ndim(named: Sequence[tuple[str, TensorStructInfo]]) -> int:
    if any(s.ndim < 0 for _, s in named):
        return -1
    return max(s.ndim for _, s in named)


# Axes ----------------------------------------------------------------------------


def normalize_axis(op: str, axis: Any, ndim: int, what: str = "axis",
                   sinfo: Optional[TensorStructInfo] = None, name: str = "x") -> int:
    if isinstance(axis, IntImm):
        axis = axis.value
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ShapeError(f"{op}: {what} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        shape = f" (shape {fmt_sinfo(sinfo)})" if sinfo is not None else ""
        raise ShapeError(f"{op}: {what} {axis} is out of range for {name} with {ndim} dims"
                         f"{shape}; expected {-ndim} <= {what} < {ndim}")
    return axis % ndim


def normalize_axes(op: str, axes: Any, ndim: int, what: str = "axis",
                   sinfo: Optional[TensorStructInfo] = None, name: str = "x") -> tuple[int, ...]:
    """Axes as sorted-as-given non-negative ints; raises on out-of-range or repeated axes."""
    if isinstance(axes, (int, IntImm)):
        axes = (axes,)
    out = tuple(normalize_axis(op, a, ndim, what, sinfo, name) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: {what} {list(axes)} repeats an axis (normalised: {list(out)})")
    return out


def freeze_axes(axis: Any) -> Any:
    """An attribute value for axes given as int, list or None (kept as the user wrote it)."""
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(_int_attr(a) for a in axis)
    return _int_attr(axis)


def _int_attr(a: Any) -> Any:
    if isinstance(a, IntImm):
        return a.value
    if isinstance(a, PrimValue) and isinstance(a.value, IntImm):
        return a.value.value
    return a


# Building argument expressions -----------------------------------------------------


def shape_expr(values: Sequence[Any]) -> ShapeExpr:
    """`R.shape([...])`: a ShapeExpr with its struct info filled in."""
    dims = tuple(as_expr(v) for v in values)
    for d in dims:
        if not E.is_int_dtype(d.dtype):
            raise ShapeError(f"R.shape: dims must be integers, got {fmt_expr(d)} of {d.dtype}")
    return ShapeExpr(dims, ShapeStructInfo(dims))


def as_shape_arg(op: str, value: Any, name: str = "shape") -> Expr:
    """Accept a ShapeExpr, an Expr of ShapeStructInfo, or a list/tuple of dims."""
    if isinstance(value, ShapeExpr):
        return value if value.struct_info is not None else shape_expr(value.values)
    if isinstance(value, (list, tuple)):
        return shape_expr(value)
    if isinstance(value, Expr):
        return value
    raise StructInfoError(f"{op}: {name} must be a shape (R.shape([...]) or a list of dims), "
                          f"got {type(value).__name__} {value!r}")


def as_expr_arg(op: str, value: Any, name: str) -> Expr:
    """An expression argument; Python tuples/lists become a Tuple."""
    if isinstance(value, Expr):
        if isinstance(value, Tuple) and value.struct_info is None:
            return tuple_expr(value.fields)
        return value
    if isinstance(value, (list, tuple)):
        return tuple_expr([as_expr_arg(op, v, name) for v in value])
    raise StructInfoError(f"{op}: argument {name} must be an expression (a Var, a Call, "
                          f"R.const(...)), got {type(value).__name__} {value!r}")


def tuple_expr(fields: Sequence[Expr]) -> Tuple:
    fields = tuple(fields)
    sinfo = None
    if all(f.struct_info is not None for f in fields):
        sinfo = TupleStructInfo(tuple(f.struct_info for f in fields))
    return Tuple(fields, sinfo)


def prim_value(value: Any, dtype: Optional[str] = None) -> PrimValue:
    if isinstance(value, PrimValue):
        return value if value.struct_info is not None else prim_value(value.value)
    v = as_expr(value, dtype)
    return PrimValue(v, PrimStructInfo(v.dtype, v))


def unknown_tensor(dtype: str, ndim: int = -1) -> TensorStructInfo:
    return TensorStructInfo(None, dtype, ndim)

