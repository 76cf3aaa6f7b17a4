"""Scalar expressions: symbolic shape arithmetic and the scalar part of tensor programs.

One node family serves both: a shape `("n", 4096)` holds `Var("n")` and `IntImm(4096)`,
and a loop body `Y[i, j] + X[i, k] * W[k, j]` is built from the same nodes plus
`BufferLoad` (defined in tir.py). Nodes are frozen dataclasses compared field by
field, except `Var`, which is compared by identity: two variables named `n` are two
variables. `structural_equal` (structural.py) compares up to renaming.

Python operators build nodes (`n * 2 - n`) and fold constants; simplification
proper lives in arith.py. `==` stays Python equality (so nodes can key dicts); use
`eq(a, b)` / `ne(a, b)` to build comparison nodes.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Union

from .errors import DTypeError

# The dtypes the project knows (the runtime's table, disco/tensor.py, holds the same
# names). Tensors, buffers and struct info accept only these.
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPES = INT_DTYPES + FLOAT_DTYPES
_DTYPE_SET = frozenset(DTYPES)


def check_dtype(dtype, where: str) -> str:
    """`dtype` when it is one of DTYPES; else a DTypeError naming `where`, the given
    dtype, the closest known name and the known ones (a typo like "flot32" would
    otherwise travel silently until codegen)."""
    if isinstance(dtype, str) and dtype in _DTYPE_SET:
        return dtype
    close = difflib.get_close_matches(dtype, DTYPES, n=1) if isinstance(dtype, str) else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise DTypeError(f"{where}: unknown dtype {dtype!r}{hint}; expected one of "
                     f"{', '.join(DTYPES)}")


def is_int_dtype(dtype: str) -> bool:
    return dtype in INT_DTYPES


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of `dtype` (one of DTYPES; bool takes a byte)."""
    if dtype == "bool":
        return 1
    return int("".join(c for c in dtype if c.isdigit())) // 8


def is_float_dtype(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


class PrimExpr:
    """Base of scalar expressions; every node has a `dtype` field."""

    __slots__ = ()
    dtype: str

    # Arithmetic builds nodes; constants fold so that shapes stay small.
    def __add__(self, other): return _binary(Add, self, other)
    def __radd__(self, other): return _binary(Add, other, self)
    def __sub__(self, other): return _binary(Sub, self, other)
    def __rsub__(self, other): return _binary(Sub, other, self)
    def __mul__(self, other): return _binary(Mul, self, other)
    def __rmul__(self, other): return _binary(Mul, other, self)
    def __floordiv__(self, other): return _binary(FloorDiv, self, other)
    def __rfloordiv__(self, other): return _binary(FloorDiv, other, self)
    def __mod__(self, other): return _binary(FloorMod, self, other)
    def __rmod__(self, other): return _binary(FloorMod, other, self)
    def __truediv__(self, other): return _binary(Div, self, other)
    def __rtruediv__(self, other): return _binary(Div, other, self)
    def __neg__(self): return _binary(Sub, const(0, self.dtype), self)
    def __lt__(self, other): return _binary(LT, self, other)
    def __le__(self, other): return _binary(LE, self, other)
    def __gt__(self, other): return _binary(GT, self, other)
    def __ge__(self, other): return _binary(GE, self, other)


@dataclass(frozen=True, slots=True)
class IntImm(PrimExpr):
    value: int
    dtype: str = "int64"

    def __post_init__(self):
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            object.__setattr__(self, "value", int(self.value))

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class FloatImm(PrimExpr):
    value: float
    dtype: str = "float32"


@dataclass(frozen=True, slots=True)
class StringImm(PrimExpr):
    value: str
    dtype: str = "handle"


@dataclass(frozen=True, slots=True, eq=False)
class Var(PrimExpr):
    """A scalar variable: a symbolic size (`n`), a loop index or a block iterator.

    Compared by identity; `name` is only a hint for printing."""

    name: str
    dtype: str = "int64"

    def __repr__(self) -> str:
        return f"Var({self.name!r}, {self.dtype!r})"


def _binary_node(cls):
    return dataclass(frozen=True, slots=True)(cls)


@_binary_node
class Add(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class Sub(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class Mul(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class Div(PrimExpr):
    """True division (floats)."""
    a: PrimExpr
    b: PrimExpr
    dtype: str = "float32"


@_binary_node
class FloorDiv(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class FloorMod(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class Min(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


@_binary_node
class Max(PrimExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "int64"


class CmpExpr(PrimExpr):
    """Comparison; refuses truth testing so `if a < b:` on symbols fails loudly."""

    __slots__ = ()

    def __bool__(self):
        raise TypeError(f"cannot decide {type(self).__name__} of symbolic values in Python; "
                        "use compiler.ir.arith.prove(...) or build an IfThenElse")


@_binary_node
class LT(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class LE(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class GT(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class GE(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class EQ(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class NE(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class And(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@_binary_node
class Or(CmpExpr):
    a: PrimExpr
    b: PrimExpr
    dtype: str = "bool"


@dataclass(frozen=True, slots=True)
class Not(CmpExpr):
    a: PrimExpr
    dtype: str = "bool"


@dataclass(frozen=True, slots=True)
class Cast(PrimExpr):
    dtype: str
    value: PrimExpr


@dataclass(frozen=True, slots=True)
class Select(PrimExpr):
    """`true_value if condition else false_value`, both sides evaluated."""
    condition: PrimExpr
    true_value: PrimExpr
    false_value: PrimExpr
    dtype: str = "float32"


# Math intrinsics a tensor program may call; codegen maps each to C / CUDA.
INTRINSICS = ("exp", "log", "sqrt", "rsqrt", "tanh", "erf", "pow", "fabs", "max", "min",
              "sigmoid", "exp2", "log2", "sin", "cos", "floor", "ceil", "round")


@dataclass(frozen=True, slots=True)
class Call(PrimExpr):
    """A math intrinsic call such as `T.exp(x)`; `op` is a name from INTRINSICS."""
    dtype: str
    op: str
    args: tuple[PrimExpr, ...] = field(default=())


BINARY_NODES = (Add, Sub, Mul, Div, FloorDiv, FloorMod, Min, Max, LT, LE, GT, GE, EQ, NE, And, Or)

ExprLike = Union[PrimExpr, int, float, bool]


def const(value: int | float | bool, dtype: str | None = None) -> PrimExpr:
    """A constant node; the dtype defaults to int64 for ints and float32 for floats."""
    if isinstance(value, bool):
        return IntImm(int(value), dtype or "bool")
    if isinstance(value, int):
        if dtype is not None and is_float_dtype(dtype):
            return FloatImm(float(value), dtype)
        return IntImm(value, dtype or "int64")
    if isinstance(value, float):
        return FloatImm(value, dtype or "float32")
    raise TypeError(f"const: expected an int, float or bool, got {type(value).__name__} {value!r}")


def as_expr(value: ExprLike, dtype: str | None = None) -> PrimExpr:
    """Accept a PrimExpr, int, float or bool; a str names a fresh symbolic Var."""
    if isinstance(value, PrimExpr):
        return value
    if isinstance(value, str):
        return Var(value, dtype or "int64")
    return const(value, dtype)


def _result_dtype(cls, a: PrimExpr, b: PrimExpr) -> str:
    if issubclass(cls, CmpExpr):
        return "bool"
    if cls is Div and is_int_dtype(a.dtype) and is_int_dtype(b.dtype):
        return "float32"
    return a.dtype if a.dtype != "bool" else b.dtype


_FOLD = {
    Add: lambda x, y: x + y, Sub: lambda x, y: x - y, Mul: lambda x, y: x * y,
    FloorDiv: lambda x, y: x // y if y != 0 else None,
    FloorMod: lambda x, y: x % y if y != 0 else None,
    Min: min, Max: max,
}


def _binary(cls, a: ExprLike, b: ExprLike) -> PrimExpr:
    if not isinstance(a, PrimExpr):
        a = const(a, b.dtype if isinstance(b, PrimExpr) and not isinstance(a, float) else None)
    if not isinstance(b, PrimExpr):
        b = const(b, a.dtype if not isinstance(b, float) or is_float_dtype(a.dtype) else None)
    fold = _FOLD.get(cls)
    if fold is not None and isinstance(a, IntImm) and isinstance(b, IntImm):
        value = fold(a.value, b.value)
        if value is not None:
            return IntImm(value, a.dtype)
    return cls(a, b, _result_dtype(cls, a, b))


def min_expr(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(Min, a, b)


def max_expr(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(Max, a, b)


def eq(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(EQ, a, b)


def ne(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(NE, a, b)


def logical_and(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(And, a, b)


def logical_or(a: ExprLike, b: ExprLike) -> PrimExpr:
    return _binary(Or, a, b)


# Renderings for messages ---------------------------------------------------------------
#
# The one place that turns expressions and shapes into text for people: error
# messages, the VM's shape patterns (compiler/codegen/vm_codegen.py) and reports.

# The infix spelling of each binary operation, which is also Python's (// and % floor,
# / true division), so the VM evaluates shape expressions written with it.
INFIX = {Add: "+", Sub: "-", Mul: "*", FloorDiv: "//", FloorMod: "%", Div: "/",
         LT: "<", LE: "<=", GT: ">", GE: ">=", EQ: "==", NE: "!=", And: "and", Or: "or"}


def fmt_expr(e, *, bare: bool = False) -> str:
    """A short infix rendering of a PrimExpr for messages, every operation in
    parentheses: `(n * 2)`, `((n + 1) // 2)`, `max((n * 2), 4)`. `bare=True`
    parenthesizes an operation only where it is the operand of another: `n * 2`,
    `(n + 1) // 2`, `max(n * 2, 4)` (the VM's shape patterns read so). A plain int or
    str (a dim already rendered, as dim_value gives) stands for itself."""
    if isinstance(e, str):
        return e
    if isinstance(e, int) and not isinstance(e, bool):
        return str(e)
    if isinstance(e, IntImm):
        return str(e.value)
    if isinstance(e, FloatImm):
        return repr(e.value)
    if isinstance(e, Var):
        return e.name
    if type(e) in INFIX:
        text = f"{_operand(e.a, bare)} {INFIX[type(e)]} {_operand(e.b, bare)}"
        return text if bare else f"({text})"
    if isinstance(e, (Min, Max)):
        return f"{type(e).__name__.lower()}({fmt_expr(e.a, bare=bare)}, {fmt_expr(e.b, bare=bare)})"
    return repr(e)


def _operand(e, bare: bool) -> str:
    text = fmt_expr(e, bare=bare)
    return f"({text})" if bare and type(e) in INFIX else text


def fmt_shape(shape, *, bare: bool = False) -> str:
    """`(n, 4)` / `(4,)` / `(unknown)` for messages; `bare` as in fmt_expr, per dim."""
    if shape is None:
        return "(unknown)"
    inner = ", ".join(fmt_expr(d, bare=bare) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def fmt_sinfo(sinfo) -> str:
    """The shape of a TensorStructInfo for messages: fmt_shape, or `unknown shape
    (ndim=2)` when only the rank is known."""
    if sinfo.shape is None:
        return f"unknown shape (ndim={sinfo.ndim})"
    return fmt_shape(sinfo.shape)


def dim_value(d, *, bare: bool = False):
    """A dim as plain data: its int when it is a constant, else its text (fmt_expr)."""
    if isinstance(d, IntImm):
        return d.value
    if isinstance(d, int) and not isinstance(d, bool):
        return d
    return fmt_expr(d, bare=bare)
