"""Graph-level IR: dataflow of tensor operators, calls to tensor programs and libraries.

A `Function` has parameters and a body `SeqExpr`: binding blocks (a `DataflowBlock`
is a pure region) followed by the returned expression. Every expression carries
`struct_info` once normalised (the builder fills it from operator rules).
Variables compare by identity; everything else by fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

import numpy as np

from .attrs import Attrs
from .expr import PrimExpr
from .struct_info import StructInfo


class Expr:
    """Base of graph expressions. `struct_info` is None until normalised."""

    __slots__ = ()
    struct_info: Optional[StructInfo]

    def with_struct_info(self, sinfo: StructInfo) -> "Expr":
        return replace(self, struct_info=sinfo)


@dataclass(frozen=True, slots=True, eq=False)
class Var(Expr):
    """A graph variable: a function parameter or the target of a binding."""
    name_hint: str
    struct_info: Optional[StructInfo] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_hint!r})"


@dataclass(frozen=True, slots=True, eq=False)
class DataflowVar(Var):
    """A variable local to a dataflow block; not visible after the block ends."""


@dataclass(frozen=True, slots=True)
class GlobalVar(Expr):
    """Names a function of the IRModule (graph function or tensor program)."""
    name_hint: str
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class ExternFunc(Expr):
    """A function provided by the runtime by name (`call_dps_packed("cublas_matmul", ...)`)."""
    global_symbol: str
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class Op(Expr):
    """A registered operator, e.g. Op("relax.add"); its rules live in compiler.op."""
    name: str
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True, eq=False)
class Constant(Expr):
    """A tensor constant; compared by identity here, by content in structural_equal."""
    data: np.ndarray
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class ShapeExpr(Expr):
    """A shape value such as `R.shape([n * 2, 16])`."""
    values: tuple[PrimExpr, ...]
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class PrimValue(Expr):
    """A scalar value such as `R.prim_value(1)` or a symbolic `n`."""
    value: PrimExpr
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class StringImm(Expr):
    value: str
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class DataTypeImm(Expr):
    value: str
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class Tuple(Expr):
    fields: tuple[Expr, ...]
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class TupleGetItem(Expr):
    tuple_value: Expr
    index: int
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A call of an Op, a GlobalVar, an ExternFunc or a Var holding a function.

    `attrs` are operator attributes (axis, keepdims, ...); `sinfo_args` carry struct
    info the callee cannot infer (the output of call_tir / call_dps_packed)."""
    op: Expr
    args: tuple[Expr, ...] = ()
    attrs: Attrs = field(default_factory=Attrs)
    sinfo_args: tuple[StructInfo, ...] = ()
    struct_info: Optional[StructInfo] = None


@dataclass(frozen=True, slots=True)
class If(Expr):
    condition: Expr
    true_branch: Expr
    false_branch: Expr
    struct_info: Optional[StructInfo] = None


# Bindings and blocks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VarBinding:
    """`var = value`."""
    var: Var
    value: Expr


@dataclass(frozen=True, slots=True)
class MatchCast:
    """`var = R.match_cast(value, struct_info)`: checks `value` at run time against
    `struct_info` and binds the symbolic dims that first appear there."""
    var: Var
    value: Expr
    struct_info: StructInfo


Binding = Union[VarBinding, MatchCast]


@dataclass(frozen=True, slots=True)
class BindingBlock:
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True, slots=True)
class DataflowBlock(BindingBlock):
    """A pure region: no side effects, control flow or impure calls inside."""


@dataclass(frozen=True, slots=True)
class SeqExpr(Expr):
    blocks: tuple[BindingBlock, ...]
    body: Expr
    struct_info: Optional[StructInfo] = None


class BaseFunc:
    """Anything an IRModule maps a global name to."""

    __slots__ = ()
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Function(Expr, BaseFunc):
    """A graph function. Symbolic dims are bound by the first parameter that mentions
    them; `attrs` holds e.g. {"global_symbol": "main"} or shape upper bounds."""
    params: tuple[Var, ...]
    body: SeqExpr
    ret_struct_info: StructInfo
    attrs: Attrs = field(default_factory=Attrs)
    is_pure: bool = True
    struct_info: Optional[StructInfo] = None

    def script(self, name: Optional[str] = None) -> str:
        """This function alone as script, `@R.function def <name>(...)` (name: the
        attr global_symbol, else "main"); compiler.script.parse reads it back."""
        from ..script.printer import print_function
        return print_function(self, name or self.attrs.get("global_symbol", "main"))


def call_attrs(**kwargs: Any) -> Attrs:
    return Attrs(kwargs)
