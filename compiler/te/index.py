"""Index helpers shared by legalizations: axes, broadcasting, row-major index maps.

These are the few lines every operator would otherwise repeat: normalising a
possibly negative axis, numpy broadcasting with symbolic dims, and converting
between a multi-index and a flat row-major offset (reshape, flatten).
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..ir import arith
from ..ir.errors import ShapeError
from ..ir.expr import IntImm, PrimExpr, as_expr
from .tensor import compute

__all__ = ["normalize_axis", "normalize_axes", "broadcast_shape", "broadcast_index",
           "ravel_index", "unravel_index", "reduce_shape", "broadcast_compute"]


def normalize_axis(axis: int, ndim: int, where: str = "axis") -> int:
    """`axis` in `[0, ndim)`; negative axes count from the end, as in numpy."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ShapeError(f"{where}: axis {axis!r} is not an int")
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{where}: axis {axis} is out of range for rank {ndim}; "
                         f"expected {-ndim} <= axis < {ndim}")
    return axis + ndim if axis < 0 else axis


def normalize_axes(axes: Optional[Sequence[int] | int], ndim: int, where: str = "axes") -> tuple[int, ...]:
    """Sorted, non-negative, distinct axes; `None` means every axis."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    out = [normalize_axis(a, ndim, where) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"{where}: axes {tuple(axes)} repeat an axis (rank {ndim})")
    return tuple(sorted(out))


def reduce_shape(shape: Sequence[PrimExpr], axes: Sequence[int], keepdims: bool) -> tuple[PrimExpr, ...]:
    """The shape after reducing `axes` (normalised): dropped, or kept as 1."""
    red = set(axes)
    return tuple(IntImm(1) if d in red else s for d, s in enumerate(shape) if keepdims or d not in red)


def _is_one(d: PrimExpr) -> bool:
    return isinstance(d, IntImm) and d.value == 1


def _same(a: PrimExpr, b: PrimExpr) -> bool:
    return a is b or a == b or arith.prove_equal(a, b)


def broadcast_shape(*shapes: Sequence, where: str = "broadcast") -> tuple[PrimExpr, ...]:
    """numpy broadcasting of shapes (aligned on the right; a dim of 1 stretches).

    A symbolic dim broadcasts only against 1 or a dim provably equal to it; two
    unrelated symbolic dims are an error, since the result would depend on run-time
    values (match the shapes first)."""
    shapes = [tuple(as_expr(d) for d in s) for s in shapes]
    ndim = max((len(s) for s in shapes), default=0)
    out: list[PrimExpr] = []
    for k in range(ndim):
        dim: Optional[PrimExpr] = None
        for s in shapes:
            pos = len(s) - ndim + k
            if pos < 0:
                continue
            d = s[pos]
            if dim is None or _is_one(dim):
                dim = d
            elif not _is_one(d) and not _same(dim, d):
                raise ShapeError(f"{where}: dim {k} (from the right: {ndim - k}) is {dim} in one shape and "
                                 f"{d} in another; expected equal dims or 1")
        out.append(dim)
    return tuple(out)


def broadcast_index(out_shape: Sequence, in_shape: Sequence, idx: Sequence[PrimExpr]) -> tuple[PrimExpr, ...]:
    """The index into an input of `in_shape` for output index `idx` under numpy
    broadcasting: trailing dims align, a dim of (static) 1 is read at 0.

    A symbolic input dim is assumed equal to the output dim (checked by
    `broadcast_shape`), so it is indexed directly."""
    in_shape = tuple(as_expr(d) for d in in_shape)
    if len(idx) != len(out_shape) or len(in_shape) > len(out_shape):
        raise ShapeError(f"broadcast_index: {len(idx)} indices for output rank {len(out_shape)} "
                         f"and input rank {len(in_shape)}; expected len(idx) == output rank >= input rank")
    lead = len(out_shape) - len(in_shape)
    return tuple(IntImm(0) if _is_one(d) and not _is_one(as_expr(out_shape[lead + k])) else idx[lead + k]
                 for k, d in enumerate(in_shape))


def ravel_index(idx: Sequence[PrimExpr], shape: Sequence) -> PrimExpr:
    """Row-major flat offset of multi-index `idx` in `shape`."""
    if len(idx) != len(shape):
        raise ShapeError(f"ravel_index: {len(idx)} indices for a shape of rank {len(shape)}")
    if not idx:
        return IntImm(0)
    flat = as_expr(idx[0])
    for i, d in zip(idx[1:], shape[1:]):
        flat = flat * as_expr(d) + i
    return flat


def unravel_index(flat: PrimExpr, shape: Sequence) -> tuple[PrimExpr, ...]:
    """Multi-index in `shape` of row-major offset `flat` (inverse of ravel_index)."""
    if not shape:
        return ()
    out: list[PrimExpr] = []
    for d in reversed([as_expr(d) for d in shape[1:]]):
        out.append(flat % d if not _is_one(d) else IntImm(0))
        flat = flat // d if not _is_one(d) else flat
    out.append(flat)   # the outermost index needs no modulo when flat is in range
    return tuple(reversed(out))


def broadcast_compute(fcompute, *tensors, name: str = "compute", out_shape: Optional[Sequence] = None):
    """`fcompute(a_elem, b_elem, ...)` over the numpy broadcast of `tensors` (the
    usual binary-operator legalization); `out_shape` overrides the inferred shape
    (e.g. the one struct-info inference already gave)."""
    shape = tuple(out_shape) if out_shape is not None else broadcast_shape(*(t.shape for t in tensors),
                                                                            where=f"compute {name!r}")
    return compute(shape, lambda *idx: fcompute(*(t[broadcast_index(shape, t.shape, idx)] for t in tensors)),
                   name=name)
