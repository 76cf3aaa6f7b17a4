"""Distributed operators: `R.dist.annotate_sharding(x, "mesh[0]", "S[1]")` and
`R.dist.redistribute(x, "mesh[0]", "R")`.

`annotate_sharding` is a constraint: x must have that placement (a value identity;
PropagateSharding reads it and removes it). `redistribute` is an explicit conversion
of a DTensor to another placement on a mesh; LowerToLocalView turns it into
collectives (compiler/op/ccl.py). Both are handled by PropagateSharding itself
(compiler/distributed/propagate.py) rather than by a sharding rule.
"""
from __future__ import annotations

from disco.placement import format_placement

from ..ir.graph import Call
from ..ir.struct_info import DTensorStructInfo, StructInfo, parse_mesh_ref, placement_spec
from . import infer as I
from .registry import OPAQUE, make_call, register_op


def _attrs(device_mesh: str, placement) -> dict:
    """The call's attrs, checked: the mesh reference and the placement in text form (the
    script's; a spec of disco.placement types is accepted too)."""
    parse_mesh_ref(device_mesh)
    return {"device_mesh": device_mesh, "placement": format_placement(placement_spec(placement))}


@register_op("relax.dist.redistribute", script="R.dist.redistribute", args=("x",),
             attrs=("device_mesh", "placement"), pattern=OPAQUE)
def redistribute(x, device_mesh: str, placement: str) -> Call:
    """`R.dist.redistribute(x, "mesh[0]", "R")`: x with placement `placement` on `device_mesh`."""
    return make_call("relax.dist.redistribute", (I.as_expr_arg("R.dist.redistribute", x, "x"),),
                     _attrs(device_mesh, placement))


@redistribute.infer
def _redistribute(call: Call) -> StructInfo:
    t = I.tensor_arg("R.dist.redistribute", call, 0, "x")
    return DTensorStructInfo(t, call.attrs["device_mesh"], call.attrs["placement"])


@register_op("relax.dist.annotate_sharding", script="R.dist.annotate_sharding", args=("x",),
             attrs=("device_mesh", "placement"), pattern=OPAQUE)
def annotate_sharding(x, device_mesh: str, placement: str) -> Call:
    """`R.dist.annotate_sharding(x, "mesh[0]", "S[1]")`: x, constrained to be laid out
    as `placement` on `device_mesh` (checked and resolved by PropagateSharding)."""
    return make_call("relax.dist.annotate_sharding",
                     (I.as_expr_arg("R.dist.annotate_sharding", x, "x"),),
                     _attrs(device_mesh, placement))


@annotate_sharding.infer
def _annotate_sharding(call: Call) -> StructInfo:
    I.tensor_arg("R.dist.annotate_sharding", call, 0, "x")     # a Tensor or a DTensor
    return call.args[0].struct_info       # an identity on values; the placement is a constraint for propagation
