"""Placements as the compiler uses them: the runtime's model (disco.placement: Shard,
Replicate, Partial, one per mesh axis, text "S[0]R"), with its errors raised as the
compiler's ShardingError."""
from __future__ import annotations

from disco.placement import (REDUCE_OPS, Layout, Partial, Placement, PlacementSpec, Replicate, Shard,
                             format_placement)

from ..ir.errors import ShardingError
from ..ir.struct_info import DTensorStructInfo, placement_spec


def parse_placement(text) -> PlacementSpec:
    """"S[0]R" -> (Shard(0), Replicate()); ShardingError on malformed text."""
    return placement_spec(text)


def normalize_placement(spec, ndim: int) -> PlacementSpec:
    """`spec` with negative shard dims resolved against rank `ndim`, checked in range."""
    return placement_spec(spec, ndim)


def layout_of(s: DTensorStructInfo, mesh_shape, where: str) -> Layout:
    """`s`'s placement resolved against its mesh (of `mesh_shape`): shard factors, local
    shapes. ShardingError naming `where` when the shape is unknown or the placement has
    not one entry per mesh axis."""
    t = s.tensor
    if t.shape is None:
        raise ShardingError(f"{where}: a distributed tensor needs a known shape, got {t}")
    if len(s.placement) != len(mesh_shape):
        raise ShardingError(f"{where}: placement {s.placement_text!r} has {len(s.placement)} entries "
                            f"but mesh {s.device_mesh} has {len(mesh_shape)} axes (shape "
                            f"{tuple(mesh_shape)})")
    return Layout(s.placement, mesh_shape, t.ndim)


__all__ = ["layout_of", "REDUCE_OPS", "Layout", "Partial", "Placement", "PlacementSpec", "Replicate", "Shard",
           "format_placement", "parse_placement", "normalize_placement"]
