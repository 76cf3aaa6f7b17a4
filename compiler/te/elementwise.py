"""Elementwise math for compute bodies, mapped onto compiler.ir.expr nodes.

Math functions become `Call(dtype, op, args)` with `op` from `expr.INTRINSICS`
(what the C and CUDA backends translate); `cast` is `Cast`; `select` /
`if_then_else` are `Select`. The helpers check dtypes here, where the user wrote
the expression, rather than leaving a backend to fail on `exp` of an integer.
Python numbers take the dtype of the other operand (or float32 / int64 alone).
"""
from __future__ import annotations

from typing import Union

from ..ir.errors import DTypeError
from ..ir.expr import (And, Call, Cast, FloatImm, IntImm, Not, Or, PrimExpr, Select, check_dtype,
                       const as _make_const, eq as _eq, is_float_dtype, is_int_dtype, ne as _ne)
from .tensor import Tensor, TEError

__all__ = ["exp", "log", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "exp2", "log2", "sin", "cos",
           "floor", "ceil", "round", "pow", "abs", "cast", "const", "select", "if_then_else",
           "eq", "ne", "all", "any", "logical_not"]

Number = Union[int, float, bool]


def _operand(x, where: str, dtype: str | None = None) -> PrimExpr:
    if isinstance(x, Tensor):
        raise TEError(f"{where}: got tensor {x.name!r}; index it (x[i, j]) to get an element")
    if isinstance(x, PrimExpr):
        return x
    if isinstance(x, (bool, int, float)):
        if isinstance(x, float) and dtype is not None and is_int_dtype(dtype):
            raise DTypeError(f"{where}: float constant {x!r} meets an operand of dtype {dtype}; "
                             "cast the operand to a float dtype (te.cast) or use an int constant")
        if isinstance(x, bool) and dtype is not None and dtype != "bool":
            x = float(x) if is_float_dtype(dtype) else int(x)
        return _make_const(x, dtype)
    raise TEError(f"{where}: {x!r} ({type(x).__name__}) is not a scalar expression")


def _float_unary(op: str):
    def fn(x) -> PrimExpr:
        e = _operand(x, f"te.{op}", "float32" if isinstance(x, (int, float)) else None)
        if not is_float_dtype(e.dtype):
            raise DTypeError(f"te.{op}: operand has dtype {e.dtype}; expected a float dtype "
                             f"(te.cast(x, 'float32') first)")
        return Call(e.dtype, op, (e,))
    fn.__name__ = op
    fn.__doc__ = f"Elementwise `{op}` of a float expression (intrinsic call `{op}`)."
    return fn


exp, log, sqrt, rsqrt, tanh, erf = (_float_unary(n) for n in ("exp", "log", "sqrt", "rsqrt", "tanh", "erf"))
sigmoid, exp2, log2, sin, cos = (_float_unary(n) for n in ("sigmoid", "exp2", "log2", "sin", "cos"))
floor, ceil, round = (_float_unary(n) for n in ("floor", "ceil", "round"))  # noqa: A001


def _pair(a, b, where: str) -> tuple[PrimExpr, PrimExpr]:
    """Both operands as PrimExprs of one dtype; a number adopts the other's dtype."""
    if not isinstance(a, PrimExpr) and isinstance(b, PrimExpr):
        a = _operand(a, where, b.dtype)
    a = _operand(a, where)
    b = _operand(b, where, a.dtype)
    if a.dtype != b.dtype:
        raise DTypeError(f"{where}: operands have dtypes {a.dtype} and {b.dtype}; "
                         "cast one of them (te.cast)")
    return a, b


def pow(x, y) -> PrimExpr:  # noqa: A001
    """`x ** y` for floats (intrinsic `pow`)."""
    a, b = _pair(x, y, "te.pow")
    if not is_float_dtype(a.dtype):
        raise DTypeError(f"te.pow: operands have dtype {a.dtype}; expected a float dtype")
    return Call(a.dtype, "pow", (a, b))


def abs(x) -> PrimExpr:  # noqa: A001
    """Absolute value of a float or signed integer (intrinsic `fabs`)."""
    return Call((e := _operand(x, "te.abs")).dtype, "fabs", (e,))


def cast(x, dtype: str) -> PrimExpr:
    """`x` converted to `dtype`; constants fold, same-dtype casts disappear."""
    check_dtype(dtype, "te.cast")
    e = _operand(x, "te.cast", dtype if isinstance(x, (int, float, bool)) and not
                 (isinstance(x, float) and is_int_dtype(dtype)) else None)
    if e.dtype == dtype:
        return e
    if isinstance(e, (IntImm, FloatImm)):
        if is_float_dtype(dtype):
            return FloatImm(float(e.value), dtype)
        if dtype == "bool":
            return IntImm(int(e.value != 0), dtype)
        return IntImm(int(e.value), dtype)     # C semantics: truncation toward zero
    return Cast(dtype, e)


def const(value: Number, dtype: str | None = None) -> PrimExpr:
    """A constant; dtype defaults to int64 for ints and float32 for floats."""
    if dtype is not None:
        check_dtype(dtype, "te.const")
        if isinstance(value, float) and is_int_dtype(dtype):
            raise DTypeError(f"te.const: {value!r} is not an integer, dtype {dtype} requested")
    return _make_const(value, dtype)


def select(cond, true_value, false_value) -> PrimExpr:
    """`true_value if cond else false_value`, elementwise.

    Lowered to `Select`. The C backend evaluates only the chosen side (a C `?:`),
    so a load in the untaken side may be out of bounds there; code meant for any
    backend should keep both sides' indices in bounds (e.g. clamp with te.max/min)."""
    c = _operand(cond, "te.select")
    if c.dtype != "bool":
        raise DTypeError(f"te.select: condition has dtype {c.dtype}; expected bool (a comparison)")
    a, b = _pair(true_value, false_value, "te.select")
    return Select(c, a, b, a.dtype)


if_then_else = select


def eq(a, b) -> PrimExpr:
    """`a == b` as an expression (Python `==` on nodes compares structure instead)."""
    return _eq(*_pair(a, b, "te.eq"))


def ne(a, b) -> PrimExpr:
    """`a != b` as an expression."""
    return _ne(*_pair(a, b, "te.ne"))


def _bools(conds, where: str) -> list[PrimExpr]:
    out = [_operand(c, where, "bool") for c in conds]
    for c in out:
        if c.dtype != "bool":
            raise DTypeError(f"{where}: a condition has dtype {c.dtype}; expected bool")
    if not out:
        raise TEError(f"{where}: needs at least one condition")
    return out


def all(*conds) -> PrimExpr:  # noqa: A001
    """Logical AND of conditions."""
    cs = _bools(conds, "te.all")
    acc = cs[0]
    for c in cs[1:]:
        acc = And(acc, c)
    return acc


def any(*conds) -> PrimExpr:  # noqa: A001
    """Logical OR of conditions."""
    cs = _bools(conds, "te.any")
    acc = cs[0]
    for c in cs[1:]:
        acc = Or(acc, c)
    return acc


def logical_not(cond) -> PrimExpr:
    return Not(_bools((cond,), "te.logical_not")[0])
