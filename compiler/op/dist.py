"""Distributed operators: `R.dist.redistribute(x, "mesh[0]", "R")`.

Minimal version (written by the lowering side so that LowerToLocalView has its input);
the owner of sharding propagation extends this file (annotate_sharding, sharding rules).

`redistribute` is an explicit conversion of a DTensor to another placement on a mesh;
LowerToLocalView turns it into collectives (compiler/op/ccl.py).
"""
from __future__ import annotations

from ..ir.errors import StructInfoError
from ..ir.graph import Call
from ..ir.struct_info import DTensorStructInfo, StructInfo, TensorStructInfo
from . import _infer as I
from .registry import OPAQUE, make_call, register_op


@register_op("relax.dist.redistribute", script="R.dist.redistribute", args=("x",),
             attrs=("device_mesh", "placement"), pattern=OPAQUE)
def redistribute(x, device_mesh: str, placement: str) -> Call:
    """`R.dist.redistribute(x, "mesh[0]", "R")`: x with placement `placement` on `device_mesh`."""
    from ..distributed.mesh import parse_mesh_ref
    from ..distributed.placement import parse_placement
    parse_mesh_ref(device_mesh)
    parse_placement(placement)
    return make_call("relax.dist.redistribute", (I.as_expr_arg("R.dist.redistribute", x, "x"),),
                     {"device_mesh": device_mesh, "placement": placement})


@redistribute.infer
def _redistribute(call: Call) -> StructInfo:
    x = call.args[0].struct_info
    if isinstance(x, DTensorStructInfo):
        t = x.tensor
    elif isinstance(x, TensorStructInfo):
        t = x
    else:
        raise StructInfoError(f"R.dist.redistribute: x must be a tensor, got "
                              f"{type(x).__name__ if x is not None else 'no struct info'}")
    return DTensorStructInfo(t, call.attrs["device_mesh"], call.attrs["placement"])
