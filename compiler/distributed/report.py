"""`describe(mod, "main")`: what the sharding annotations did, for a person to read.

The report lists every variable's placement and local (per-device) shape, and every
collective the placements imply, with the bytes each device moves per call under the
cost model PropagateSharding uses (all-reduce 2(p-1)/p, all-gather / reduce-scatter /
all-to-all (p-1)/p of the tensor's per-device size before the conversion; p = the
mesh axis extent). Symbolic sizes are reported as expressions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from ..ir import arith
from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo
from ..ir.visitor import post_order_visit
from . import rules
from .mesh import lookup_mesh
from .placement import Shard, normalize_placement
from .propagate import REDISTRIBUTE, PropagateSharding, uses_mesh

Bytes = Union[int, str]


@dataclass
class ShardingReport:
    function: str
    mesh: str = ""
    mesh_shape: tuple = ()
    placements: dict = field(default_factory=dict)      # name -> "S[1]", "P[sum]", ...
    local_shapes: dict = field(default_factory=dict)    # name -> tuple of ints / expr text
    global_shapes: dict = field(default_factory=dict)
    collectives: list = field(default_factory=list)     # (var, kind, bytes per call)

    def __str__(self) -> str:
        lines = [f"sharding of {self.function!r} on {self.mesh} (mesh shape {self.mesh_shape})",
                 f"{'variable':<16} {'placement':<10} {'global shape':<22} local shape"]
        for name, p in self.placements.items():
            lines.append(f"{name:<16} {p:<10} {_fmt(self.global_shapes.get(name)):<22} "
                         f"{_fmt(self.local_shapes.get(name))}")
        lines.append(f"collectives per call: {len(self.collectives)}")
        if self.collectives:
            lines.append(f"  {'variable':<16} {'kind':<15} bytes moved per device")
            for var, kind, nbytes in self.collectives:
                lines.append(f"  {var:<16} {kind:<15} {nbytes}")
        return "\n".join(lines)


def _fmt(shape: Any) -> str:
    if shape is None:
        return "-"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _dim(d) -> Any:
    v = arith.as_int(d)
    if v is not None:
        return v
    from ..op._infer import fmt_expr
    return fmt_expr(arith.simplify(d))


def describe(mod: IRModule, func: str = "main") -> ShardingReport:
    """The sharding report of graph function `func`; propagates placements first where
    the module is not yet fully placed (annotations, unplaced variables)."""
    if func not in mod.graph_functions():
        raise ShardingError(f"describe: no graph function {func!r} in the module; it has "
                            f"{sorted(mod.graph_functions())}")
    if uses_mesh(mod[func]):
        mod = PropagateSharding(mod)
    f = mod[func]
    report = ShardingReport(func)
    mesh_ref = _mesh_ref(f)
    if mesh_ref is None:
        return _describe_lowered(mod, func, report)   # local view (or nothing distributed)
    mesh = lookup_mesh(mod.global_infos, mesh_ref)
    report.mesh, report.mesh_shape = mesh_ref, mesh.shape
    variables = list(f.params) + [b.var for blk in f.body.blocks for b in blk.bindings]
    for v in variables:
        s = v.struct_info
        if isinstance(s, DTensorStructInfo):
            report.placements[v.name_hint] = s.placement
            report.global_shapes[v.name_hint] = tuple(_dim(d) for d in s.tensor.shape or ())
            report.local_shapes[v.name_hint] = tuple(_dim(d) for d in local_shape(s, mesh))
    for blk in f.body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, G.Call) and getattr(b.value.op, "name", "") == REDISTRIBUTE:
                src = b.value.args[0].struct_info
                for kind, nbytes in conversion_collectives(src, b.var.struct_info, mesh):
                    report.collectives.append((b.var.name_hint, kind, nbytes))
    return report


def _mesh_ref(f: G.Function):
    for p in f.params:
        if isinstance(p.struct_info, DTensorStructInfo):
            return p.struct_info.device_mesh
    found = []
    post_order_visit(f, lambda n: found.append(n.struct_info.device_mesh)
                     if isinstance(n, G.Var) and isinstance(n.struct_info, DTensorStructInfo)
                     else None)
    return found[0] if found else None


def local_shape(s: DTensorStructInfo, mesh) -> tuple:
    """Per-device shape: each sharded dim divided by the extents of its mesh axes."""
    shape = list(s.tensor.shape or ())
    for axis, p in enumerate(normalize_placement(s.placement, len(shape))):
        if isinstance(p, Shard):
            shape[p.dim] = arith.simplify(shape[p.dim] // mesh.shape[axis]) \
                if arith.as_int(shape[p.dim]) is None else arith.as_int(shape[p.dim]) // mesh.shape[axis]
    return tuple(shape)


def conversion_collectives(src: DTensorStructInfo, dst: DTensorStructInfo, mesh) -> list:
    """(kind, bytes moved per device) for each mesh axis the conversion changes, in
    axis order; a later axis sees the layout left by the earlier ones."""
    out = []
    a = list(normalize_placement(src.placement, src.tensor.ndim))
    b = normalize_placement(dst.placement, dst.tensor.ndim)
    for axis in range(len(a)):
        kind = rules.conversion_kind(a[axis], b[axis])
        if kind:
            # the tensor the collective works on: the input, or for an all-gather its result
            whole = list(a)
            if kind == "allgather":
                whole[axis] = b[axis]
            cur = DTensorStructInfo(src.tensor, src.device_mesh, "".join(str(p) for p in whole))
            size = 1
            for d in local_shape(cur, mesh):
                size = size * d
            out.append((kind, moved_bytes(kind, size * rules.dtype_bytes(src.tensor.dtype),
                                          mesh.shape[axis])))
        a[axis] = b[axis]
    return out


def moved_bytes(kind: str, size, p: int) -> Bytes:
    """Bytes each device receives for a collective on a tensor of `size` bytes (for an
    all-gather, the gathered size) over `p` devices: all-reduce 2(p-1)/p, others (p-1)/p."""
    num = 2 * (p - 1) if kind == "allreduce" else (p - 1)
    if arith.as_int(size) is not None:
        return int(arith.as_int(size)) * num // p
    return _dim(arith.simplify(size * num // p))


_CCL = {"relax.ccl.allreduce": "allreduce", "relax.ccl.allgather": "allgather",
        "relax.ccl.reduce_scatter": "reduce_scatter"}


def _describe_lowered(mod: IRModule, func: str, report: ShardingReport) -> ShardingReport:
    """A module after LowerToLocalView: placements of the entry's parameters from the
    module attr "distributed", local shapes from the program, collectives from R.ccl.*."""
    info = mod.attrs.get("distributed") if hasattr(mod.attrs, "get") else None
    f = mod[func]
    if info:
        report.mesh = info.get("mesh", "")
        report.mesh_shape = tuple(info.get("mesh_shape", ()))
        sig = info.get("functions", {}).get(func, {})
        for prm in sig.get("params", []):
            report.placements[prm["name"]] = prm["placement"]
            report.global_shapes[prm["name"]] = tuple(prm["shape"])
    variables = list(f.params) + [b.var for blk in f.body.blocks for b in blk.bindings]
    for v in variables:
        t = rules.tensor_of(v.struct_info)
        if t is not None and t.shape is not None:
            report.local_shapes[v.name_hint] = tuple(_dim(d) for d in t.shape)
    for blk in f.body.blocks:
        for b in blk.bindings:
            kind = _CCL.get(getattr(getattr(b.value, "op", None), "name", ""))
            if kind is None:
                continue
            t = rules.tensor_of(b.value.args[0].struct_info)
            if kind == "allgather":
                t = rules.tensor_of(b.var.struct_info)
            size = 1
            for d in t.shape:
                size = size * d
            p = int(b.value.attrs["mesh_shape"][b.value.attrs["mesh_axis"]])
            report.collectives.append((b.var.name_hint, kind,
                                       moved_bytes(kind, size * rules.dtype_bytes(t.dtype), p)))
    return report


__all__ = ["ShardingReport", "describe", "local_shape", "conversion_collectives"]
