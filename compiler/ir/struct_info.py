"""Struct info: the static type of a graph expression, with symbolic shapes.

`TensorStructInfo(shape=(n, 4096), dtype="float32")` says a value is a tensor of that
shape; `shape=None` with `ndim` set means the rank is known but not the dims;
`ndim=-1` means nothing is known. `DTensorStructInfo` adds where the tensor lives
on a device mesh and how it is split (filled in by compiler.distributed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .expr import PrimExpr, as_expr, check_dtype


class StructInfo:
    """Base of struct info kinds."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ObjectStructInfo(StructInfo):
    """Any runtime object; nothing static is known."""


@dataclass(frozen=True, slots=True)
class PrimStructInfo(StructInfo):
    """A scalar of `dtype`; `value` when it is a known (possibly symbolic) expression."""
    dtype: str = "int64"
    value: Optional[PrimExpr] = None

    def __post_init__(self):
        check_dtype(self.dtype, "R.Prim (PrimStructInfo)")


@dataclass(frozen=True, slots=True)
class ShapeStructInfo(StructInfo):
    """A shape value (what `R.shape([n, 4])` evaluates to)."""
    values: Optional[tuple[PrimExpr, ...]] = None
    ndim: int = -1

    def __post_init__(self):
        if self.values is not None:
            object.__setattr__(self, "values", tuple(as_expr(v) for v in self.values))
            object.__setattr__(self, "ndim", len(self.values))


@dataclass(frozen=True, slots=True)
class TensorStructInfo(StructInfo):
    """A dense tensor. `shape` is a tuple of PrimExpr, or None when unknown."""
    shape: Optional[tuple[PrimExpr, ...]] = None
    dtype: str = "float32"
    ndim: int = -1

    def __post_init__(self):
        check_dtype(self.dtype, "R.Tensor (TensorStructInfo)")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(as_expr(v) for v in self.shape))
            object.__setattr__(self, "ndim", len(self.shape))

    @property
    def unknown_rank(self) -> bool:
        return self.ndim < 0


@dataclass(frozen=True, slots=True)
class TupleStructInfo(StructInfo):
    fields: tuple[StructInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class FuncStructInfo(StructInfo):
    """A callable: parameter struct infos (None = opaque/any) and the return's."""
    params: Optional[tuple[StructInfo, ...]] = None
    ret: StructInfo = field(default_factory=ObjectStructInfo)
    purity: bool = True


@dataclass(frozen=True, slots=True)
class DTensorStructInfo(StructInfo):
    """A tensor distributed over a device mesh.

    `tensor` is the GLOBAL view (shape and dtype of the whole tensor); `device_mesh`
    names a mesh in the module's global infos, as in "mesh[0]"; `placement` is one
    placement per mesh axis in text form, e.g. "S[1]" or "S[0]R" (parsed and checked
    by compiler.distributed)."""
    tensor: TensorStructInfo
    device_mesh: str
    placement: str


def tensor_sinfo(shape, dtype: str = "float32") -> TensorStructInfo:
    """Shorthand: `tensor_sinfo(("n", 4), "float16")`; strings become fresh Vars."""
    return TensorStructInfo(tuple(as_expr(d) for d in shape) if shape is not None else None, dtype)


def tensor_view(sinfo: Any) -> Optional[TensorStructInfo]:
    """The tensor a Tensor struct info describes (itself) or a DTensor's global view;
    None for any other struct info."""
    if isinstance(sinfo, DTensorStructInfo):
        return sinfo.tensor
    if isinstance(sinfo, TensorStructInfo):
        return sinfo
    return None


def get_shape(sinfo: Any) -> Optional[tuple[PrimExpr, ...]]:
    """Shape of a Tensor or DTensor struct info (global view), else None."""
    t = tensor_view(sinfo)
    return None if t is None else t.shape
