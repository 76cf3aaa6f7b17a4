"""Tensors of the compute DSL: placeholders (inputs) and computed stages.

A `Tensor` is a *description*, not storage: a placeholder says "an input of this
shape and dtype"; a computed tensor holds the scalar expression that gives its
element at index `(i, j, ...)`. Indexing a tensor, `x[i, k]`, builds a
`TensorLoad` expression; `create_prim_func` (lower.py) turns each computed tensor
into one block in a loop nest and each `TensorLoad` into a `BufferLoad`.

Why TE-only expression nodes (`TensorLoad`, `ReduceAxis`, `Reduce`) instead of
buffers and vars straight away: lowering must know which tensor a load reads (to
find the stages a result depends on), which variables are reduction axes (so that
one used outside its reduction is an error, not a silent scalar parameter), and
where the reduction is (to make the block's `init` and update). None of these
nodes survives lowering; a PrimFunc holds only compiler.ir nodes.

Symbolic sizes: shape entries may be ints, PrimExprs (e.g. a `te.var("n")` shared
by several placeholders) or strings. A string makes a fresh Var *by name*: within
one `create_prim_func` call, every by-name Var with the same name becomes one Var
(the first one met), so `placeholder(("n", 4))` and `placeholder(("n",))` agree on
`n`. Vars made by `te.var` are never merged by name: pass the same object to share.
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from ..ir.attrs import Attrs
from ..ir.errors import CompilerError, DTypeError, ShapeError
from ..ir.expr import IntImm, PrimExpr, Var, as_expr, check_dtype, const, fmt_shape, is_int_dtype

__all__ = ["TEError", "Tensor", "TensorLoad", "ReduceAxis", "Reduce", "placeholder", "compute",
           "var", "reduce_axis"]


class TEError(CompilerError, ValueError):
    """A compute definition that cannot be lowered (stray axes, missing inputs, ...)."""


ShapeLike = Sequence[Union[int, str, PrimExpr]]


@dataclass(frozen=True, eq=False)
class Tensor:
    """A placeholder (`body is None`) or a computed tensor (element `body` at `axes`).

    `by_name` holds the shape Vars that were given as strings (merged by name when
    lowered, see the module docstring)."""
    name: str
    shape: tuple[PrimExpr, ...]
    dtype: str
    axes: tuple[Var, ...] = ()
    body: Optional[PrimExpr] = None
    tag: str = ""
    attrs: Attrs = field(default_factory=Attrs)
    by_name: tuple[Var, ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_placeholder(self) -> bool:
        return self.body is None

    def __iter__(self):
        # Without this, Python would iterate through __getitem__ with 0, 1, 2, ... forever.
        raise TypeError(f"tensor {self.name!r} is not iterable; unpack its shape instead "
                        f"(`n, d = {self.name}.shape`)")

    def __getitem__(self, indices) -> "TensorLoad":
        if not isinstance(indices, tuple):
            indices = (indices,)
        indices = tuple(int(i) if isinstance(i, numbers.Integral) and not isinstance(i, bool) else i
                        for i in indices)
        if len(indices) != self.ndim:
            raise ShapeError(f"tensor {self.name!r} of shape {fmt_shape(self.shape)} indexed with "
                             f"{len(indices)} index(es); expected {self.ndim}")
        exprs = []
        for pos, i in enumerate(indices):
            if isinstance(i, slice) or i is Ellipsis:
                raise TEError(f"tensor {self.name!r}: index {pos} is a slice; the compute DSL takes "
                              "one scalar index per dim (write the slice as an index map)")
            e = as_expr(i) if not isinstance(i, str) else None
            if e is None or not is_int_dtype(e.dtype):
                raise DTypeError(f"tensor {self.name!r}: index {pos} is {i!r}"
                                 f"{'' if e is None else ' of dtype ' + e.dtype}; expected an integer expression")
            exprs.append(e)
        return TensorLoad(self, tuple(exprs))

    def __repr__(self) -> str:
        kind = "placeholder" if self.is_placeholder else "compute"
        return f"Tensor({self.name!r}, {fmt_shape(self.shape)}, {self.dtype}, {kind})"


@dataclass(frozen=True, slots=True)
class TensorLoad(PrimExpr):
    """`tensor[indices]` inside a compute body; lowered to a BufferLoad."""
    tensor: Tensor
    indices: tuple[PrimExpr, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.tensor.dtype


@dataclass(frozen=True, slots=True, eq=False)
class ReduceAxis(PrimExpr):
    """A reduction axis ranging over `[min, min + extent)`; usable as an index
    expression, but only inside a `te.sum/max/min` over it. Compared by identity."""
    name: str
    min: PrimExpr
    extent: PrimExpr
    dtype: str = "int64"

    def __repr__(self) -> str:
        return f"ReduceAxis({self.name!r}, {self.min!r}, {self.extent!r})"


@dataclass(frozen=True, slots=True)
class Reduce(PrimExpr):
    """A commutative reduction of `source` over `axes`, starting from `init`.

    `combiner` is "sum", "max", "min" or "prod"; it must be the whole body of a compute
    (as in TVM), which becomes a block with an init statement and an update."""
    combiner: str
    source: PrimExpr
    axes: tuple[ReduceAxis, ...]
    init: PrimExpr
    dtype: str


def var(name: str, dtype: str = "int64") -> Var:
    """A scalar variable: a symbolic size shared by several tensors, or a scalar
    parameter of the function when it appears in no bare buffer dim."""
    check_dtype(dtype, f"te.var({name!r})")
    return Var(name, dtype)


def reduce_axis(min: Union[int, PrimExpr], extent: Union[int, PrimExpr], name: str = "k") -> ReduceAxis:
    """A reduction axis over `[min, min + extent)` (note: the second argument is the
    extent, not the end)."""
    lo, ext = _dim(min, f"reduce_axis {name!r} min"), _dim(extent, f"reduce_axis {name!r} extent")
    return ReduceAxis(name, lo, ext)


def placeholder(shape: ShapeLike, dtype: str = "float32", name: str = "placeholder") -> Tensor:
    """An input tensor. Shape entries: ints, integer PrimExprs, or strings (by-name Vars)."""
    check_dtype(dtype, f"placeholder {name!r}")
    dims, by_name = _make_shape(shape, f"placeholder {name!r}")
    return Tensor(name, dims, dtype, by_name=by_name)


def compute(shape: ShapeLike, fcompute: Callable[..., Any], name: str = "compute", tag: str = "",
            attrs: Optional[dict[str, Any]] = None, dtype: Optional[str] = None) -> Tensor:
    """A tensor whose element at `(i, j, ...)` is `fcompute(i, j, ...)`.

    `fcompute` takes one index Var per output dim (or `*idx`) and returns a scalar
    expression, or a `te.sum/max/min` reduction as its whole result. Python numbers
    become constants of `dtype`. When `dtype` is given, the body must already have
    it (wrap in `te.cast`), so that a precision change is always written down.
    `attrs` become the block's annotations (with `tag` when non-empty)."""
    where = f"compute {name!r}"
    dims, by_name = _make_shape(shape, where)
    names = _index_names(fcompute, len(dims), where)
    axes = tuple(Var(n, "int64") for n in names)
    body = fcompute(*axes)
    if isinstance(body, (tuple, list)):
        raise TEError(f"{where}: fcompute returned {len(body)} values; one compute makes one tensor "
                      "(write one compute per output)")
    if isinstance(body, (bool, int, float)):
        body = const(body, dtype)
    if not isinstance(body, PrimExpr):
        raise TEError(f"{where}: fcompute returned {type(body).__name__} {body!r}; expected a "
                      "scalar expression (PrimExpr or number)")
    if isinstance(body, ReduceAxis):
        raise TEError(f"{where}: fcompute returned the reduce axis {body.name!r} itself; reduce over it "
                      "with te.sum/max/min")
    _check_no_nested_reduce(body, where, top=True)
    if dtype is not None and body.dtype != dtype:
        raise DTypeError(f"{where}: fcompute returns {body.dtype}, but dtype={dtype!r} was requested; "
                         f"wrap the result in te.cast(..., {dtype!r})")
    check_dtype(body.dtype, where)
    ann = dict(attrs or {})
    if tag:
        ann["tag"] = tag
    return Tensor(name, dims, body.dtype, axes, body, tag, Attrs(ann), by_name)


# ---- helpers ----------------------------------------------------------------------------

def _dim(d: Any, where: str) -> PrimExpr:
    if isinstance(d, numbers.Integral) and not isinstance(d, bool):
        d = int(d)   # numpy integers from array shapes
    if isinstance(d, bool) or not isinstance(d, (int, PrimExpr)):
        raise ShapeError(f"{where}: {d!r} ({type(d).__name__}) is not a size; expected an int, "
                         "an integer PrimExpr or a string naming a symbolic size")
    e = as_expr(d)
    if not is_int_dtype(e.dtype) or e.dtype == "bool":
        raise DTypeError(f"{where}: size {d!r} has dtype {e.dtype}; expected an integer dtype")
    if isinstance(e, IntImm) and e.value < 0:
        raise ShapeError(f"{where}: negative size {e.value}")
    if isinstance(e, ReduceAxis):
        raise TEError(f"{where}: a reduce axis ({e.name!r}) cannot be a size")
    return e


def _make_shape(shape: ShapeLike, where: str) -> tuple[tuple[PrimExpr, ...], tuple[Var, ...]]:
    if isinstance(shape, (int, str, PrimExpr)):
        shape = (shape,)
    dims, by_name, seen = [], [], {}
    for pos, d in enumerate(shape):
        if isinstance(d, str):
            # Within one tensor the same name is the same Var.
            v = seen.get(d) or Var(d, "int64")
            seen[d] = v
            if v not in by_name:
                by_name.append(v)
            dims.append(v)
        else:
            dims.append(_dim(d, f"{where}, dim {pos}"))
    return tuple(dims), tuple(by_name)


def _index_names(fcompute: Callable, ndim: int, where: str) -> list[str]:
    """Names for the index Vars, from fcompute's parameter names (for readable IR)."""
    try:
        params = list(inspect.signature(fcompute).parameters.values())
    except (TypeError, ValueError):   # builtins without a signature: trust the caller
        return [f"i{d}" for d in range(ndim)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return [f"i{d}" for d in range(ndim)]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    if len(positional) != ndim:
        raise ShapeError(f"{where}: fcompute takes {len(positional)} index argument(s) "
                         f"({', '.join(p.name for p in positional)}), but the output has {ndim} dim(s); "
                         "expected one index per dim")
    return [p.name for p in positional]


def _check_no_nested_reduce(e: PrimExpr, where: str, top: bool) -> None:
    if isinstance(e, Reduce):
        if not top:
            raise TEError(f"{where}: a te.{e.combiner} reduction is nested inside a larger expression; "
                          "a reduction must be the whole compute body (reduce in its own compute, "
                          "then combine in the next)")
        _check_no_nested_reduce(e.source, where, top=False)
        return
    for child in _children(e):
        _check_no_nested_reduce(child, where, top=False)


def _children(e: PrimExpr) -> list[PrimExpr]:
    """The PrimExpr children of a node, in field order (lower.py walks with it too)."""
    out = []
    for name in getattr(type(e), "__dataclass_fields__", {}):
        v = getattr(e, name)
        if isinstance(v, PrimExpr):
            out.append(v)
        elif isinstance(v, tuple):
            out.extend(x for x in v if isinstance(x, PrimExpr))
    return out
