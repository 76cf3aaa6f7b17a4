"""compiler.distributed: device meshes, placements, sharding propagation and lowering."""
from .mesh import DeviceMesh, lookup_mesh, parse_mesh_ref
from .placement import (Layout, Partial, Placement, PlacementSpec, Replicate, Shard, format_placement,
                        normalize_placement, parse_placement)

# Passes load on first use (they import the operators, which import this package).
_LAZY_PASSES = {"LowerToLocalView": "lower_local", "DistributedLowering": "lowering"}
_LAZY_PASSES.update(PropagateSharding="propagate", describe="report",
                    ShardingReport="report")


def __getattr__(name: str):
    module = _LAZY_PASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler.distributed' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
