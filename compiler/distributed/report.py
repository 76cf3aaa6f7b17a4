"""`describe(mod, "main")`: what the sharding annotations did, for a person to read.

The report lists every variable's placement and local (per-device) shape, and every
collective the placements imply -- the ones LowerToLocalView emits, named after the
conversion's variable -- with the bytes each device receives per call under the cost
model PropagateSharding uses (conversion.collective_bytes: all-reduce 2(p-1)/p of the
tensor's per-device size, reduce-scatter (p-1)/p of it, all-gather (p-1)/p of its
gathered size; p = the mesh axis extent; Shard(i)->Shard(j) is an all-gather and a
local slice). Symbolic sizes are reported as expressions.

It accepts a module at any stage: annotated (propagated first), propagated, lowered
to the local view (LowerToLocalView, DistributedLowering) and legalized. Once the
DTensor types are gone, placements and global shapes come from the module attr
"distributed" (key "variables", recorded by LowerToLocalView's `record_variables`),
local shapes from the program, collectives from its R.ccl.* calls (or the
"spmd.*" packed calls they legalize to). A variable the user bound with
`R.dist.annotate_sharding` is listed under its own name, next to the variable it
annotates: from the annotated module itself, or from key "aliases" (recorded by
DistributedLowering); PropagateSharding alone does not keep those names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from ..ir import arith
from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.expr import dim_value, dtype_bytes, fmt_shape
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo
from ..op import sharding as rules
from .conversion import COLLECTIVES, collective_bytes, conversion_steps, step_bytes
from .dtensor import function_mesh, uses_mesh, variables
from .mesh import lookup_mesh
from .placement import layout_of
from .solve import ANNOTATE, REDISTRIBUTE
from .stages import is_cross, is_pipelined, mesh_refs

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
    # pipelines (several meshes): each stage's (mesh, mesh shape, device ids), each
    # variable's mesh, and each transfer between stages as (var, from mesh, to mesh,
    # bytes each receiving device gets, bytes sent in all)
    stages: list = field(default_factory=list)
    meshes: dict = field(default_factory=dict)
    transfers: list = field(default_factory=list)

    def __str__(self) -> str:
        if self.stages:
            lines = [f"pipeline {self.function!r}: {len(self.stages)} stages"]
            lines += [f"  stage {i}: {ref} (mesh shape {shape}) on devices {list(ids)}"
                      for i, (ref, shape, ids) in enumerate(self.stages)]
            lines.append(f"{'variable':<16} {'mesh':<8} {'placement':<10} {'global shape':<22} local shape")
        else:
            lines = [f"sharding of {self.function!r} on {self.mesh} (mesh shape {self.mesh_shape})",
                     f"{'variable':<16} {'placement':<10} {'global shape':<22} local shape"]
        for name, p in self.placements.items():
            where = f"{self.meshes.get(name, ''):<8} " if self.stages else ""
            lines.append(f"{name:<16} {where}{p:<10} {_fmt(self.global_shapes.get(name)):<22} "
                         f"{_fmt(self.local_shapes.get(name))}")
        lines.append(f"collectives per call: {len(self.collectives)}")
        if self.collectives:
            lines.append(f"  {'variable':<16} {'kind':<15} bytes moved per device")
            for var, kind, nbytes in self.collectives:
                lines.append(f"  {var:<16} {kind:<15} {nbytes}")
        if self.stages:
            lines.append(f"transfers between stages per call: {len(self.transfers)}")
            for var, src, dst, each, total in self.transfers:
                lines.append(f"  {var:<16} {src} -> {dst}: {each} bytes to each device, {total} in all")
        return "\n".join(lines)


def _fmt(shape: Any) -> str:
    return "-" if shape is None else fmt_shape(shape)


def _dim(d) -> Any:
    v = arith.as_int(d)
    return v if v is not None else dim_value(arith.simplify(d))


def describe(mod: IRModule, func: str = "main") -> ShardingReport:
    """The sharding report of graph function `func`; propagates placements first where
    the module is not yet fully placed (annotations, unplaced variables)."""
    if func not in mod.graph_functions():
        stages = _lowered_stages(mod, func)
        if stages:
            return _describe_lowered_stages(mod, func, stages)
        raise ShardingError(f"describe: no graph function {func!r} in the module; it has "
                            f"{sorted(mod.graph_functions())}")
    aliases = annotated_names(mod[func])
    if uses_mesh(mod[func]):
        from .propagate import PropagateSharding
        mod = PropagateSharding(mod)
    f = mod[func]
    report = ShardingReport(func)
    if is_pipelined(f):
        return _describe_stages(mod, f, report, aliases)
    mesh_ref = function_mesh(f, func)
    if mesh_ref is None:
        return _describe_lowered(mod, func, report)   # local view (or nothing distributed)
    mesh = lookup_mesh(mod.global_infos, mesh_ref)
    report.mesh, report.mesh_shape = mesh_ref, mesh.shape
    for v in variables(f):
        s = v.struct_info
        if isinstance(s, DTensorStructInfo):
            report.placements[v.name_hint] = s.placement_text
            report.global_shapes[v.name_hint] = tuple(_dim(d) for d in s.tensor.shape or ())
            report.local_shapes[v.name_hint] = tuple(_dim(d) for d in local_shape(s, mesh))
    for blk in f.body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, G.Call) and getattr(b.value.op, "name", "") == REDISTRIBUTE:
                src = b.value.args[0].struct_info
                for kind, nbytes in conversion_collectives(src, b.var.struct_info, mesh):
                    report.collectives.append((b.var.name_hint, kind, nbytes))
    _add_aliases(report, aliases)
    return report


def _describe_stages(mod: IRModule, f: G.Function, report: ShardingReport, aliases) -> ShardingReport:
    """The report of a placed pipelined function: as for one mesh, per variable on its
    own mesh, plus the stages and the transfers between them (stages.py)."""
    from ..ir.expr import dtype_bytes
    refs = mesh_refs(f)
    meshes = {r: lookup_mesh(mod.global_infos, r) for r in refs}
    report.stages = [(r, meshes[r].shape, meshes[r].device_ids) for r in refs]
    report.mesh, report.mesh_shape = refs[0], meshes[refs[0]].shape
    for v in variables(f):
        s = v.struct_info
        if isinstance(s, DTensorStructInfo):
            mesh = meshes[s.device_mesh]
            report.meshes[v.name_hint] = s.device_mesh
            report.placements[v.name_hint] = s.placement_text
            report.global_shapes[v.name_hint] = tuple(_dim(d) for d in s.tensor.shape or ())
            report.local_shapes[v.name_hint] = tuple(_dim(d) for d in local_shape(s, mesh))
    for blk in f.body.blocks:
        for b in blk.bindings:
            if not (isinstance(b.value, G.Call) and getattr(b.value.op, "name", "") == REDISTRIBUTE):
                continue
            src, dst = b.value.args[0].struct_info, b.var.struct_info
            if is_cross(b.value):
                size = dtype_bytes(src.tensor.dtype)
                for d in src.tensor.shape:
                    size = size * d
                n = meshes[dst.device_mesh].size
                report.transfers.append((b.var.name_hint, src.device_mesh, dst.device_mesh,
                                         _bytes(size), _bytes(size * n)))
                continue
            for kind, nbytes in conversion_collectives(src, dst, meshes[dst.device_mesh]):
                report.collectives.append((b.var.name_hint, kind, nbytes))
    for name in aliases:
        if aliases[name] in report.meshes:
            report.meshes[name] = report.meshes[aliases[name]]
    _add_aliases(report, aliases)
    return report


def annotated_names(f: G.Function) -> dict:
    """name bound by `R.dist.annotate_sharding(x, ...)` -> the name of the variable x it
    annotates (through chains of annotations); PropagateSharding replaces the former by
    the latter, so a report lists the user's name beside it."""
    out: dict = {}
    for blk in f.body.blocks:
        for b in blk.bindings:
            v = b.value
            if isinstance(v, G.Call) and getattr(v.op, "name", "") == ANNOTATE \
                    and isinstance(v.args[0], G.Var):
                target = v.args[0].name_hint
                out[b.var.name_hint] = out.get(target, target)
    return out


def _add_aliases(report: ShardingReport, aliases) -> None:
    """List each alias right after its target, with the target's placement and shapes."""
    aliases = {a: t for a, t in dict(aliases).items() if t in report.placements and a not in report.placements}
    if not aliases:
        return
    for table in ("placements", "global_shapes", "local_shapes"):
        old, new = getattr(report, table), {}
        for name, value in old.items():
            new[name] = value
            for alias, target in aliases.items():
                if target == name and target in old:
                    new[alias] = value
        setattr(report, table, new)


def local_shape(s: DTensorStructInfo, mesh) -> tuple:
    """Per-device shape: each sharded dim divided by the extents of its mesh axes."""
    shape = layout_of(s, mesh.shape, "describe").local_shape(s.tensor.shape)
    return tuple(arith.simplify(d) for d in shape)


def conversion_collectives(src: DTensorStructInfo, dst: DTensorStructInfo, mesh) -> list:
    """(kind, bytes each device receives) of each collective of the conversion, in the
    order LowerToLocalView emits them (conversion.conversion_steps; local slices move
    nothing and are left out)."""
    return [(step.kind, _bytes(step_bytes(step, src.tensor, mesh.shape)))
            for step in conversion_steps(src.placement, dst.placement) or ()
            if step.kind in COLLECTIVES]


def moved_bytes(kind: str, size, p: int) -> Bytes:
    """Bytes each device receives for collective `kind` on a tensor of `size` bytes
    per device (for an all-gather, the gathered size) over `p` devices
    (conversion.collective_bytes), printable."""
    return _bytes(collective_bytes(kind, size, p))


def _bytes(n) -> Bytes:
    v = arith.as_int(n)
    return int(v) if v is not None else _dim(n)


_CCL = {"relax.ccl.allreduce": "allreduce", "relax.ccl.allgather": "allgather",
        "relax.ccl.reduce_scatter": "reduce_scatter"}
_LEGALIZED_CCL = {"spmd.allreduce": "allreduce", "spmd.allgather": "allgather",
                  "spmd.reduce_scatter": "reduce_scatter"}    # compiler/op/ccl.py's legalizers


def _collective(call) -> tuple | None:
    """(kind, group size) of an R.ccl.* collective, or of the R.call_pure_packed("spmd.*",
    x, ..., mesh_shape, mesh_axis) it legalizes to; None for anything else."""
    if not isinstance(call, G.Call):
        return None
    name = getattr(call.op, "name", "")
    if name in _CCL:
        return _CCL[name], int(call.attrs["mesh_shape"][call.attrs["mesh_axis"]])
    if name == "relax.call_pure_packed" and isinstance(call.args[0], G.ExternFunc):
        kind = _LEGALIZED_CCL.get(call.args[0].global_symbol)
        if kind is not None:
            tail = call.args[:-1] if isinstance(call.args[-1], G.ShapeExpr) else call.args  # device_ids
            shape, axis = tail[-2], tail[-1]
            return kind, int(arith.as_int(shape.values[int(arith.as_int(axis.value))]))
    return None


def _info(mod: IRModule) -> dict:
    return (mod.attrs.get("distributed") if hasattr(mod.attrs, "get") else None) or {}


def _lowered_stages(mod: IRModule, func: str) -> list:
    """The stage table of pipelined function `func` after DistributedLowering replaced it
    by its stage programs (attr "distributed", compiler/distributed/pipeline.py); []."""
    return list((_info(mod).get("functions", {}).get(func) or {}).get("stages") or ())


def _describe_lowered_stages(mod: IRModule, func: str, stages: list) -> ShardingReport:
    """The report of a lowered pipelined function, as `_describe_stages` gives it before
    lowering: each stage program's report on its own mesh, and a transfer per
    R.ccl.recv (or its legalized spmd.recv) of a stage."""
    report = ShardingReport(func)
    owner = {w: st for st in stages for w in st["device_ids"]}
    for st in stages:
        part = _describe_lowered(mod, st["function"], ShardingReport(st["function"]), stage=st)
        report.stages.append((st["mesh"], tuple(st["mesh_shape"]), tuple(st["device_ids"])))
        for table in ("placements", "global_shapes", "local_shapes"):
            getattr(report, table).update(getattr(part, table))
        report.meshes.update((name, st["mesh"]) for name in part.placements)
        report.collectives += part.collectives
        for blk in mod[st["function"]].body.blocks:
            for b in blk.bindings:
                pairs = _recv_pairs(b.value)
                if pairs is None:
                    continue
                senders, receivers = pairs
                t = rules.tensor_of(b.var.struct_info)
                size = dtype_bytes(t.dtype)
                for d in t.shape:
                    size = size * d
                report.transfers.append((b.var.name_hint, owner[senders[0]]["mesh"], st["mesh"],
                                         _bytes(size), _bytes(size * len(receivers))))
    report.mesh, report.mesh_shape = report.stages[0][0], report.stages[0][1]
    aliases = dict((_info(mod).get("aliases") or {}).get(func, ()))
    report.meshes.update((a, report.meshes[t]) for a, t in aliases.items() if t in report.meshes)
    _add_aliases(report, aliases)
    return report


def _recv_pairs(call) -> tuple | None:
    """(senders, receivers) of an R.ccl.recv, or of the spmd.recv packed call it
    legalizes to; None for anything else."""
    if not isinstance(call, G.Call):
        return None
    name = getattr(call.op, "name", "")
    if name == "relax.ccl.recv":
        return tuple(call.attrs["senders"]), tuple(call.attrs["receivers"])
    if name == "relax.call_packed" and isinstance(call.args[0], G.ExternFunc) \
            and call.args[0].global_symbol == "spmd.recv":
        return tuple(tuple(int(arith.as_int(v)) for v in a.values) for a in call.args[-2:])
    return None


def _describe_lowered(mod: IRModule, func: str, report: ShardingReport, stage: dict | None = None) -> ShardingReport:
    """A module after LowerToLocalView: placements and global shapes from the module attr
    "distributed" (every variable where recorded, else the entry's parameters), local
    shapes from the program, collectives from R.ccl.* (or their legalized calls). The
    mesh is the module's, or `stage`'s for a pipeline stage's program (found in the
    stage tables when not given)."""
    info = _info(mod)
    f = mod[func]
    aliases = {}
    if stage is None:
        stage = next((st for fn in info.get("functions", {}).values() for st in fn.get("stages") or ()
                      if st["function"] == func), None)
    if info:
        report.mesh = info.get("mesh", "") if stage is None else stage["mesh"]
        report.mesh_shape = tuple(info.get("mesh_shape", ()) if stage is None else stage["mesh_shape"])
        recorded = (info.get("variables") or {}).get(func)
        if recorded is None:   # recorded before variables were
            recorded = info.get("functions", {}).get(func, {}).get("params", [])
        for v in recorded:
            if v.get("placement") is not None:
                report.placements[v["name"]] = v["placement"]
                report.global_shapes[v["name"]] = tuple(v["shape"])
        aliases = dict((info.get("aliases") or {}).get(func, ()))
    for v in variables(f):
        t = rules.tensor_of(v.struct_info)
        if t is not None and t.shape is not None and (
                not report.placements or v.name_hint in report.placements):
            # the lowering's own intermediates (steps of a conversion, ...) are not listed
            report.local_shapes[v.name_hint] = tuple(_dim(d) for d in t.shape)
    owner = _conversion_owners(f, set(report.placements))
    for blk in f.body.blocks:
        for b in blk.bindings:
            found = _collective(b.value)
            if found is None:
                continue
            kind, p = found
            x = b.value.args[1] if b.value.op.name == "relax.call_pure_packed" else b.value.args[0]
            t = rules.tensor_of(b.var.struct_info if kind == "allgather" else x.struct_info)
            size = 1
            for d in t.shape:
                size = size * d
            report.collectives.append((owner.get(b.var, b.var.name_hint), kind,
                                       moved_bytes(kind, size * dtype_bytes(t.dtype), p)))
    _add_aliases(report, aliases)
    return report


def _conversion_owners(f: G.Function, placed: set) -> dict:
    """Lowered variable -> the name of the conversion it is a step of: a conversion of
    several steps binds its last step to the conversion's variable and the others to
    new names (`r_1`), each read only by the next step; an intermediate is named after
    the placed variable at the end of its chain, as in the report before lowering."""
    bindings = [b for blk in f.body.blocks for b in blk.bindings]
    reader: dict = {}
    for b in bindings:
        if isinstance(b.value, G.Call):
            for a in b.value.args:
                if isinstance(a, G.Var) and a not in reader:
                    reader[a] = b.var
    owners: dict = {}
    for b in bindings:
        v, seen = b.var, set()
        while v.name_hint not in placed and v in reader and v not in seen:
            seen.add(v)
            v = reader[v]
        if v is not b.var and v.name_hint in placed:
            owners[b.var] = v.name_hint
    return owners


__all__ = ["ShardingReport", "describe", "local_shape", "conversion_collectives", "annotated_names"]
