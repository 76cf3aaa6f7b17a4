"""What in a graph function is distributed: the DTensor struct infos it mentions, whether
it uses a device mesh at all, and which one (a function uses one mesh). The passes
and the report ask these questions here, not each its own way."""
from __future__ import annotations

from typing import Any, Optional

from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo, TupleStructInfo
from ..ir.visitor import post_order_visit

DIST_OPS = "relax.dist."        # prefix of annotate_sharding and redistribute


def dtensors(sinfo: Any) -> list[DTensorStructInfo]:
    """The DTensor struct infos in `sinfo` (itself, or a tuple's fields, nested)."""
    if isinstance(sinfo, DTensorStructInfo):
        return [sinfo]
    if isinstance(sinfo, TupleStructInfo):
        return [d for f in sinfo.fields for d in dtensors(f)]
    return []


def variables(func: G.Function) -> list[G.Var]:
    """Parameters and bound variables of `func`, in program order."""
    return list(func.params) + [b.var for blk in func.body.blocks for b in blk.bindings]


def _op_name(node: Any) -> str:
    return getattr(node.op, "name", "") if isinstance(node, G.Call) else ""


def uses_mesh(func: G.Function) -> bool:
    """Whether `func` mentions a DTensor (parameters, bindings, result) or calls a
    distributed operator (R.dist.*): whether the distributed passes have work in it."""
    if any(dtensors(p.struct_info) for p in func.params) or dtensors(func.ret_struct_info):
        return True
    found = []

    def visit(node):
        if not found and (isinstance(node, (G.Var, G.Call)) and dtensors(node.struct_info)
                          or _op_name(node).startswith(DIST_OPS)):
            found.append(node)

    post_order_visit(func, visit)
    return bool(found)


def distributed_functions(mod: IRModule) -> dict[str, G.Function]:
    """The graph functions of `mod` that use a mesh, by name."""
    return {name: f for name, f in mod.graph_functions().items() if uses_mesh(f)}


def function_mesh(func: G.Function, name: str) -> Optional[str]:
    """The mesh reference ("mesh[0]") `func` places its tensors on: from its parameter,
    binding and return types and its R.dist.* calls; None when it names none.
    ShardingError when it names two (one function uses one mesh)."""
    refs: list[tuple[str, str]] = []

    def add(sinfo: Any, what: str) -> None:
        refs.extend((d.device_mesh, what) for d in dtensors(sinfo))

    for p in func.params:
        add(p.struct_info, f"parameter {p.name_hint!r}")
    for blk in func.body.blocks:
        for b in blk.bindings:
            what = f"variable {b.var.name_hint!r}"
            add(b.var.struct_info, what)
            if _op_name(b.value).startswith(DIST_OPS):
                refs.append((b.value.attrs["device_mesh"], what))
    add(func.ret_struct_info, "the return type")
    if not refs:
        return None
    first, first_what = refs[0]
    for ref, what in refs[1:]:
        if ref != first:
            raise ShardingError(f"function {name!r}: {what} is placed on {ref!r} but {first_what} on "
                                f"{first!r}; one function uses one mesh (no conversion between "
                                f"meshes exists)")
    return first
