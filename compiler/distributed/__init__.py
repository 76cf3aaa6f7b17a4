"""compiler.distributed: device meshes, placements, sharding propagation and lowering.

The operators' sharding rules live with the operators (compiler/op/sharding.py); this
package depends on them, never the other way round."""
from .lower_local import LowerToLocalView
from .lowering import DistributedLowering
from .mesh import DeviceMesh, lookup_mesh, parse_mesh_ref
from .placement import (Layout, Partial, Placement, PlacementSpec, Replicate, Shard, format_placement,
                        normalize_placement, parse_placement)
from .propagate import PropagateSharding
from .report import ShardingReport, describe

__all__ = ["DeviceMesh", "DistributedLowering", "Layout", "LowerToLocalView", "Partial", "Placement",
           "PlacementSpec", "PropagateSharding", "Replicate", "Shard", "ShardingReport", "describe",
           "format_placement", "lookup_mesh", "normalize_placement", "parse_mesh_ref", "parse_placement"]
