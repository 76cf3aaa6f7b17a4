"""DistributedLowering: the first stage of `compiler.build` (compiler/pipeline.py).

A module that uses a device mesh (DTensor types, sharding annotations) is propagated
(PropagateSharding) and lowered to the local view (LowerToLocalView). What the runtime
needs to feed and read the lowered functions -- each entry function's parameters and
result with their global shapes and placements, and the mesh -- goes in the module
attr "distributed"; `compiler.build` copies it into the Executable's metadata, where
`sess.load_module` reads it. For `describe` (report.py) the attr also keeps every
variable's placement ("variables", recorded by LowerToLocalView) and the names the
user bound with annotate_sharding ("aliases": function -> [[name, annotated
variable]]), which propagation removes.

Modules without a mesh are returned unchanged.
"""
from __future__ import annotations

from ..ir.module import IRModule
from .dtensor import distributed_functions, function_mesh
from .lower_local import LowerToLocalView, lowered_signature
from .mesh import lookup_mesh
from .pipeline import connect, split_placed, stage_table
from .propagate import PropagateSharding
from .stages import is_pipelined, mesh_refs
from .report import annotated_names

ATTR = "distributed"


def DistributedLowering(mod: IRModule) -> IRModule:
    """PropagateSharding + LowerToLocalView, recording placements in attr "distributed"."""
    if not distributed_functions(mod):
        return mod
    aliases = {name: [[a, t] for a, t in annotated_names(func).items()]
               for name, func in mod.graph_functions().items()}
    mod = PropagateSharding(mod)
    functions = {}
    mesh_ref = None
    pipelines = {}
    for name, func in distributed_functions(mod).items():
        functions[name] = lowered_signature(func, mod)
        if is_pipelined(func):
            # one program per stage (pipeline.py); the whole function leaves the module
            stage_funcs, pipelines[name] = split_placed(mod, name, func)
            for i, p in enumerate(functions[name]["params"]):
                mesh = getattr(func.params[i].struct_info, "device_mesh", None)
                if mesh is not None:        # not a runtime object (the KV cache): every stage's own
                    p["mesh"] = mesh
            functions[name]["result"]["mesh"] = mesh_refs(func)[-1]
            functions[name]["stages"] = stage_table(mod, name, pipelines[name])
            mod = IRModule(tuple((k, v) for k, v in mod.functions if k != name), mod.attrs,
                           mod.global_infos)
            for sname, sf in stage_funcs.items():
                mod = mod.with_function(sname, sf)
            continue
        mesh_ref = mesh_ref or function_mesh(func, name)
    if mesh_ref is None and mod.global_infos.get("mesh"):
        mesh_ref = "mesh[0]"
    lowered = LowerToLocalView(mod)
    for name, plan in pipelines.items():
        lowered = connect(lowered, name, plan)
    recorded = lowered.attrs.get(ATTR) or {}
    info = dict(functions=functions)
    if recorded.get("variables"):
        info["variables"] = recorded["variables"]
    aliases = {name: pairs for name, pairs in aliases.items() if pairs and name in functions}
    if aliases:
        info["aliases"] = aliases
    if mesh_ref is not None:
        mesh = lookup_mesh(mod.global_infos, mesh_ref)
        info.update(mesh=mesh_ref, mesh_shape=list(mesh.shape), device_ids=list(mesh.device_ids))
    return IRModule(lowered.functions, lowered.attrs.replace(**{ATTR: info}), lowered.global_infos)
