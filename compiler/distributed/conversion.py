"""Placement conversions: the steps LowerToLocalView emits to turn one placement into
another, and the bytes each step moves. One plan serves the three places that need it,
so they cannot disagree: the lowering emits these steps, the sharding solver prices
them to pick the cheapest placements, and `describe` reports them.

Costs are the bytes each device receives under ring algorithms: all-reduce 2(p-1)/p
of the tensor's per-device size, reduce-scatter (p-1)/p of it, all-gather (p-1)/p of
its gathered size (p: the extent of the mesh axis); local slices move nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..ir import arith
from ..ir.expr import dtype_bytes
from ..ir.struct_info import TensorStructInfo
from .placement import Partial, Replicate, Shard

COLLECTIVES = ("allreduce", "reduce_scatter", "allgather")    # local_slice moves nothing


@dataclass(frozen=True)
class ConversionStep:
    """One operation of a placement conversion on one mesh axis."""
    kind: str                   # one of COLLECTIVES or "local_slice"
    mesh_axis: int
    dim: Optional[int]          # the tensor dim gathered, scattered or sliced
    op: Optional[str]           # the reduction of an allreduce / reduce_scatter
    before: tuple               # the whole placement this step starts from
    after: tuple                # and the one it leaves


def conversion_steps(src: tuple, dst: tuple) -> Optional[list]:
    """The steps that convert placement `src` to `dst` (one entry per mesh axis), in
    the order they run: pending reductions (all-reduce, or reduce-scatter to a Shard)
    in axis order, then all-gathers of every axis whose Shard changes (last axis
    first), then local slices by worker coordinate (to every new Shard). Shard(i) ->
    Shard(j) is an all-gather and a slice: the runtime has no all-to-all. None when no
    conversion exists: to a Partial, or between two different Partials."""
    for s, d in zip(src, dst):
        if isinstance(d, Partial) and d != s:
            return None
    cur = list(src)
    steps: list = []

    def step(kind, axis, dim, op, new):
        before = tuple(cur)
        cur[axis] = new
        steps.append(ConversionStep(kind, axis, dim, op, before, tuple(cur)))

    for a, (s, d) in enumerate(zip(src, dst)):
        if isinstance(s, Partial) and d != s:
            if isinstance(d, Shard):
                step("reduce_scatter", a, d.dim, s.op, d)
            else:
                step("allreduce", a, None, s.op, d)
    for a in reversed(range(len(src))):
        s, d = src[a], dst[a]
        if isinstance(s, Shard) and s != d:
            step("allgather", a, s.dim, None, Replicate())
    for a, (s, d) in enumerate(zip(src, dst)):
        if isinstance(d, Shard) and s != d and not isinstance(s, Partial):
            step("local_slice", a, d.dim, None, d)
    return steps


def collective_bytes(kind: str, size: Any, p: int) -> Any:
    """Bytes each device receives in collective `kind` over `p` devices (ring
    algorithms) on a tensor of `size` bytes per device -- for an all-gather the
    gathered result, otherwise the input: all-reduce 2(p-1)/p of it, all-gather and
    reduce-scatter (p-1)/p. `size` is an int or a symbolic expression."""
    num = 2 * (p - 1) if kind == "allreduce" else (p - 1)
    n = arith.as_int(size)
    if n is not None:
        return n * num // p
    return arith.simplify(size * num // p)


def local_nbytes(tensor: TensorStructInfo, spec: tuple, mesh_shape, nominal: Optional[int] = None):
    """Bytes of one device's part of `tensor` (global struct info) under placement `spec`:
    an int, or a symbolic expression where the shape is symbolic and `nominal` is None;
    with `nominal`, symbolic dims count as that many elements (to compare costs)."""
    if tensor.shape is None:
        return 0
    dims = list(tensor.shape)
    if nominal is not None:
        dims = [_nominal(d, nominal) for d in dims]
    for axis, p in enumerate(spec):
        if isinstance(p, Shard) and p.dim < len(dims):
            d, k = dims[p.dim], mesh_shape[axis]
            dims[p.dim] = d // k if isinstance(d, int) else arith.simplify(d // k)
    size: Any = dtype_bytes(tensor.dtype)
    for d in dims:
        size = size * d if isinstance(d, int) else arith.simplify(d * size)
    return size


def _nominal(d, nominal: int) -> int:
    v = arith.as_int(d)
    if v is None:
        v = arith.as_int(arith.substitute(d, {x: nominal for x in arith.free_vars(d)}))
    return v if v is not None else nominal


def step_bytes(step: ConversionStep, tensor: TensorStructInfo, mesh_shape,
               nominal: Optional[int] = None):
    """Bytes each device receives in `step` converting `tensor`; 0 for a local slice."""
    if step.kind not in COLLECTIVES:
        return 0
    spec = step.after if step.kind == "allgather" else step.before
    return collective_bytes(step.kind, local_nbytes(tensor, spec, mesh_shape, nominal),
                            mesh_shape[step.mesh_axis])


def conversion_cost(src: tuple, dst: tuple, tensor: TensorStructInfo, mesh_shape,
                    nominal: int) -> float:
    """Bytes each device receives converting `tensor` from `src` to `dst` (the sum over
    conversion_steps), symbolic dims counted as `nominal`; inf when impossible."""
    steps = conversion_steps(src, dst)
    if steps is None:
        return math.inf
    return float(sum(step_bytes(s, tensor, mesh_shape, nominal) for s in steps))
