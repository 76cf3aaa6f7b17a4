"""compiler.distributed: device meshes, placements, sharding propagation and lowering."""
from .mesh import DeviceMesh, lookup_mesh, parse_mesh_ref
from .placement import (Partial, Placement, PlacementSpec, Replicate, Shard, format_placement,
                        normalize_placement, parse_placement)
