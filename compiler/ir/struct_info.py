"""Struct info: the static type of a graph expression, with symbolic shapes.

`TensorStructInfo(shape=(n, 4096), dtype="float32")` says a value is a tensor of that
shape; `shape=None` with `ndim` set means the rank is known but not the dims;
`ndim=-1` means nothing is known. `DTensorStructInfo` adds where the tensor lives
on a device mesh and how it is split (filled in by compiler.distributed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from disco.errors import PlacementError
from disco.placement import PlacementSpec, format_placement, normalize_placement, parse_placement

from .errors import ShardingError
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
    placement per mesh axis (disco.placement: Shard, Replicate, Partial), given as a
    spec or as its text ("S[1]", "S[0]R"); negative shard dims are resolved against
    the tensor's rank when it is known. `placement_text` is the text form."""
    tensor: TensorStructInfo
    device_mesh: str
    placement: PlacementSpec

    def __post_init__(self):
        ndim = self.tensor.ndim if isinstance(self.tensor, TensorStructInfo) else -1
        object.__setattr__(self, "placement", placement_spec(self.placement, ndim))

    @property
    def placement_text(self) -> str:
        return format_placement(self.placement)


_MESH_REF = re.compile(r"^(\w+)\[(\d+)\]$")


def parse_mesh_ref(ref: str) -> tuple[str, int]:
    """"mesh[0]" -> ("mesh", 0): a device mesh in the module's global infos."""
    m = _MESH_REF.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise ShardingError(f"bad device mesh reference {ref!r}; expected e.g. 'mesh[0]'")
    return m.group(1), int(m.group(2))


def placement_spec(value: Union[str, PlacementSpec], ndim: int = -1) -> PlacementSpec:
    """A placement (text or spec) as a spec, shard dims resolved against rank `ndim`
    when it is known; ShardingError (the compiler's error) when it is malformed."""
    try:
        spec = parse_placement(value)
        return normalize_placement(spec, ndim) if ndim >= 0 else spec
    except PlacementError as e:
        raise ShardingError(str(e)) from None


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
