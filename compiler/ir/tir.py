"""Tensor programs: loop nests over buffers.

A `PrimFunc` takes buffers (and scalar vars) in destination-passing style: outputs
are buffers the caller allocates and passes last. Its body is a statement tree of
loops, blocks and stores. A `Block` names its iteration variables with their kind
("S" spatial, "R" reduction), which is what schedules, fusion and the sharding
analysis read; `BlockRealize` binds them to loop expressions. Buffers and vars
compare by identity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .attrs import Attrs
from .errors import ShapeError
from .expr import PrimExpr, Var, as_expr, check_dtype, fmt_expr, fmt_shape
from .graph import BaseFunc


@dataclass(frozen=True, slots=True, eq=False)
class Buffer:
    """A multi-dimensional array; `scope` is "global", "local" or "shared"."""
    name: str
    shape: tuple[PrimExpr, ...]
    dtype: str = "float32"
    scope: str = "global"

    def __post_init__(self):
        check_dtype(self.dtype, f"T.Buffer {self.name!r}")
        object.__setattr__(self, "shape", tuple(as_expr(d) for d in self.shape))

    def __getitem__(self, indices) -> "BufferLoad":
        if not isinstance(indices, tuple):
            indices = (indices,)
        return BufferLoad(self, tuple(as_expr(i) for i in indices))

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, {self.dtype})"


def _check_index_count(node: str, buffer: Buffer, indices: tuple) -> None:
    """One index per buffer dim: a load/store of the wrong rank is refused where it is
    built, not discovered (or silently mis-addressed) by codegen."""
    if len(indices) != len(buffer.shape):
        given = ", ".join(fmt_expr(i) for i in indices)
        raise ShapeError(f"{node} of buffer {buffer.name!r} with shape {fmt_shape(buffer.shape)} "
                         f"(rank {len(buffer.shape)}): {len(indices)} indices given [{given}]; "
                         f"expected {len(buffer.shape)}")


@dataclass(frozen=True, slots=True)
class BufferLoad(PrimExpr):
    buffer: Buffer
    indices: tuple[PrimExpr, ...]

    def __post_init__(self):
        _check_index_count("BufferLoad", self.buffer, self.indices)

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.buffer.dtype


@dataclass(frozen=True, slots=True)
class Range:
    min: PrimExpr
    extent: PrimExpr


class Stmt:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class BufferStore(Stmt):
    buffer: Buffer
    value: PrimExpr
    indices: tuple[PrimExpr, ...]

    def __post_init__(self):
        _check_index_count("BufferStore", self.buffer, self.indices)


@dataclass(frozen=True, slots=True)
class For(Stmt):
    """`for loop_var in range(min, min + extent)`; `thread_tag` for thread_binding
    loops ("blockIdx.x", "threadIdx.x", ...)."""
    loop_var: Var
    min: PrimExpr
    extent: PrimExpr
    kind: str
    body: Stmt
    thread_tag: Optional[str] = None
    annotations: Attrs = field(default_factory=Attrs)


@dataclass(frozen=True, slots=True)
class SeqStmt(Stmt):
    stmts: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class IfThenElse(Stmt):
    condition: PrimExpr
    then_case: Stmt
    else_case: Optional[Stmt] = None


@dataclass(frozen=True, slots=True)
class Evaluate(Stmt):
    value: PrimExpr


@dataclass(frozen=True, slots=True)
class LetStmt(Stmt):
    var: Var
    value: PrimExpr
    body: Stmt


@dataclass(frozen=True, slots=True)
class Allocate(Stmt):
    """A buffer that lives for the duration of `body` (local scratch space)."""
    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, slots=True)
class IterVar:
    """A block iterator: spatial ("S") or reduction ("R") over `dom`."""
    var: Var
    dom: Range
    kind: str  # "S" | "R"


@dataclass(frozen=True, slots=True)
class Block(Stmt):
    """A unit of computation with named iterators. `init` runs at the first
    iteration of the reduction iterators."""
    name: str
    iter_vars: tuple[IterVar, ...]
    body: Stmt
    init: Optional[Stmt] = None
    alloc_buffers: tuple[Buffer, ...] = ()
    annotations: Attrs = field(default_factory=Attrs)


@dataclass(frozen=True, slots=True)
class BlockRealize(Stmt):
    """Binds a block's iterators to values (usually loop vars)."""
    iter_values: tuple[PrimExpr, ...]
    predicate: PrimExpr
    block: Block


PrimParam = Union[Buffer, Var]


@dataclass(frozen=True, slots=True)
class PrimFunc(BaseFunc):
    """A tensor program. `params` are buffers (and scalar vars); symbolic dims are
    the free Vars in the buffers' shapes."""
    params: tuple[PrimParam, ...]
    body: Stmt
    attrs: Attrs = field(default_factory=Attrs)

    def script(self, name: Optional[str] = None) -> str:
        """This tensor program alone as script, `@T.prim_func def <name>(...)` (name: the
        attr global_symbol, else "main"); compiler.script.parse reads it back."""
        from ..script.printer import print_function
        return print_function(self, name or self.attrs.get("global_symbol", "main"))
