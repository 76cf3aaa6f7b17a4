"""DistributedLowering: the first stage of `compiler.build` (compiler/pipeline.py).

A module that uses DTensors (parameters, annotations, a device mesh in its global
infos) is propagated (PropagateSharding, where that pass exists) and lowered to the
local view (LowerToLocalView). What the runtime needs to feed and read the lowered
functions -- each entry function's parameters and result with their global shapes
and placements, and the mesh -- goes in the module attr "distributed"; `compiler.build`
copies it into the Executable's metadata, where `sess.load_module` reads it. For
`describe` (report.py) the attr also keeps every variable's placement ("variables",
recorded by LowerToLocalView) and the names the user bound with annotate_sharding
("aliases": function -> [[name, annotated variable]]), which propagation removes.

Modules without DTensors are returned unchanged.
"""
from __future__ import annotations

import importlib

from ..ir.module import IRModule
from .lower_local import LowerToLocalView, _function_mentions_dtensor, has_dtensor, lowered_signature
from .mesh import lookup_mesh

ATTR = "distributed"


def _propagate(mod: IRModule) -> IRModule:
    try:
        m = importlib.import_module("compiler.distributed.propagate")
    except ModuleNotFoundError as e:
        if e.name is not None and "compiler.distributed.propagate".startswith(e.name):
            return mod      # not there yet: the input must carry every placement already
        raise
    return m.PropagateSharding(mod)


def _needs_lowering(mod: IRModule) -> bool:
    return has_dtensor(mod) or any(getattr(c.op, "name", "").startswith("relax.dist.")
                                   for c in _calls(mod))


def _calls(mod: IRModule):
    from ..ir.graph import Call
    from ..ir.visitor import post_order_visit
    found = []
    for f in mod.graph_functions().values():
        post_order_visit(f, lambda n: found.append(n) if isinstance(n, Call) else None)
    return found


def DistributedLowering(mod: IRModule) -> IRModule:
    """PropagateSharding + LowerToLocalView, recording placements in attr "distributed"."""
    if not _needs_lowering(mod):
        return mod
    from .report import annotated_names
    aliases = {name: [[a, t] for a, t in annotated_names(func).items()]
               for name, func in mod.graph_functions().items()}
    mod = _propagate(mod)
    functions = {}
    mesh_ref = None
    for name, func in mod.graph_functions().items():
        if not _function_mentions_dtensor(func):
            continue
        functions[name] = lowered_signature(func, mod)
        mesh_ref = mesh_ref or _mesh_of(func)
    if mesh_ref is None and mod.global_infos.get("mesh"):
        mesh_ref = "mesh[0]"
    lowered = LowerToLocalView(mod)
    recorded = lowered.attrs.get("distributed") or {}
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


def _mesh_of(func) -> str | None:
    from ..ir.struct_info import DTensorStructInfo
    for p in func.params:
        if isinstance(p.struct_info, DTensorStructInfo):
            return p.struct_info.device_mesh
    s = func.ret_struct_info
    return s.device_mesh if isinstance(s, DTensorStructInfo) else None
