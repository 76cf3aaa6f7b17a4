"""LowerToLocalView: a module whose tensors all carry placements (DTensor struct info,
the output of PropagateSharding) -> the per-device program every worker runs.

- Struct info: a DTensor becomes the Tensor one worker holds: each sharded dim is
  divided by the extent of the mesh axes that shard it. A symbolic sharded dim `n`
  stays symbolic: `n // 2` where some parameter binds `n` whole, otherwise `n` is
  replaced by `n_local * 2` everywhere and the sharded dims become `n_local` (the
  controller checks that the global size is divisible before splitting it).
- Operators: rebuilt on their local arguments (struct info re-inferred and checked
  against the placement's local shape); shape arguments (reshape, broadcast_to, full,
  ...) take the local shape; `mean` over a sharded dim (a Partial sum) is scaled by
  the shard count; `take` from a row-sharded table becomes `R.ccl.masked_take`.
- `R.call_tir`: out_sinfo is the bound variable's local type and the callee a local copy
  of the tensor program (`<name>_local`, one per distinct placement) whose buffers and
  loops over sharded dims have the local extents (compiler/distributed/local_program.py
  checks the program indexes sharded dims plainly, else ShardingError); a summed
  reduction dim sharded on the inputs yields this worker's partial sum (P[sum]).
  `R.call_dps_packed` is replicated (PropagateSharding) and keeps the whole shape.
- Conversions `R.dist.redistribute(x, mesh, placement)` become collectives
  (compiler/op/ccl.py): Partial->Replicate all-reduce, Shard->Replicate all-gather,
  Replicate->Shard local slice, Partial->Shard reduce-scatter, Shard(i)->Shard(j)
  all-gather then local slice; the steps and their order are conversion.conversion_steps
  (the plan PropagateSharding prices and `describe` reports). A conversion of several
  steps binds the last one to the conversion's variable, the others to `<name>_<i>`.

The result has no DTensor left; `lowered_signature` describes what the caller must
know (global shapes and placements of the parameters and results), and module attr
"distributed" records every variable's placement for `describe` (`record_variables`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional

from ..ir import arith
from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.expr import IntImm, PrimExpr, Var as SymVar, fmt_shape, fmt_sinfo
from ..ir.expr import dim_value as expr_dim_value
from ..ir.module import IRModule
from ..ir.struct_info import (DTensorStructInfo, FuncStructInfo, StructInfo, TensorStructInfo,
                              TupleStructInfo)
from ..op import ccl
from ..op.registry import infer_call, make_call
from .conversion import ConversionStep, conversion_steps
from .dtensor import function_mesh, uses_mesh, variables
from .mesh import DeviceMesh, lookup_mesh
from .placement import Layout, Partial, Shard, format_placement, layout_of

# Operators whose shape argument (args[1] or args[0]) is the result's shape.
_SHAPE_ARG = {"relax.reshape": 1, "relax.broadcast_to": 1, "relax.full": 0, "relax.zeros": 0,
              "relax.ones": 0}
_REDISTRIBUTE = "relax.dist.redistribute"
_ANNOTATE = "relax.dist.annotate_sharding"


def LowerToLocalView(mod: IRModule) -> IRModule:
    """`mod` with every graph function that uses DTensors rewritten to the local view."""
    out = mod
    taken: set[str] = set()
    programs: dict = {}         # local copies of tensor programs, shared by all functions
    for name, func in mod.graph_functions().items():
        if uses_mesh(func):
            lowerer = _Lowerer(mod, name, func)
            lowerer.taken_names, lowerer.local_programs = taken, programs
            out = out.with_function(name, lowerer.run())
    for gvar, prim in programs.values():
        out = out.with_function(gvar.name_hint, prim)
    return record_variables(mod, out)


def record_variables(placed: IRModule, lowered: IRModule) -> IRModule:
    """`lowered` (LowerToLocalView of `placed`) with what `describe` needs once DTensor
    types are gone, in module attr "distributed": "variables" (function -> [{name,
    placement, shape (global)}] of every DTensor variable, in program order) and, unless
    recorded already, "mesh" and "mesh_shape". Modules with no function lowered are
    returned unchanged."""
    info = dict(lowered.attrs.get("distributed") or {})
    recorded = dict(info.get("variables") or {})
    mesh_ref = None
    for name, f in placed.graph_functions().items():
        if name not in lowered or lowered[name] is f:
            continue            # not lowered (no DTensor in it)
        entries = []
        for v in variables(f):
            s = v.struct_info
            if isinstance(s, DTensorStructInfo):
                mesh_ref = mesh_ref or s.device_mesh
                entries.append({"name": v.name_hint, "placement": s.placement_text,
                                "shape": [dim_value(d) for d in s.tensor.shape or ()]})
        recorded[name] = entries
    if mesh_ref is None:
        return lowered
    info["variables"] = recorded
    if "mesh" not in info:
        info["mesh"] = mesh_ref
        info["mesh_shape"] = list(lookup_mesh(placed.global_infos, mesh_ref).shape)
    return IRModule(lowered.functions, lowered.attrs.replace(distributed=info), lowered.global_infos)


# -- the rewrite of one function ------------------------------------------------------------


class _Lowerer:
    def __init__(self, mod: IRModule, name: str, func: G.Function):
        self.mod, self.name, self.func = mod, name, func
        self.mesh_ref, self.mesh = self._find_mesh()
        # in a module of several meshes (pipeline stages) collectives name their workers
        self.stage_ids = self.mesh.device_ids if len(mod.global_infos.get("mesh") or ()) > 1 else None
        self.remap: dict[G.Var, G.Expr] = {}
        self.sym: dict[SymVar, PrimExpr] = {}      # n -> n_local * k where n is not bound whole
        self.div_vars: set[SymVar] = set()
        self._plan_symbols()
        self.bindings: list[G.Binding] = []
        self.counter = 0
        self.local_programs: dict = {}      # (callee, factors) -> (GlobalVar, local PrimFunc)
        self.taken_names: set[str] = set()

    # mesh and symbols ------------------------------------------------------------------

    def _all_dtensors(self) -> list[tuple[str, DTensorStructInfo]]:
        found: list[tuple[str, DTensorStructInfo]] = []

        def add(where: str, s: Any) -> None:
            if isinstance(s, DTensorStructInfo):
                found.append((where, s))
            elif isinstance(s, TupleStructInfo):
                for i, f in enumerate(s.fields):
                    add(f"{where}[{i}]", f)

        for p in self.func.params:
            add(f"parameter {p.name_hint!r}", p.struct_info)
        for block in self.func.body.blocks:
            for b in block.bindings:
                add(f"variable {b.var.name_hint!r}", b.var.struct_info)
        add("the result", self.func.ret_struct_info)
        return found

    def _find_mesh(self) -> tuple[str, DeviceMesh]:
        ref = function_mesh(self.func, self.name)
        if ref is None:
            raise ShardingError(f"function {self.name!r}: LowerToLocalView needs DTensor types "
                                "(run PropagateSharding first); the function has none")
        return ref, lookup_mesh(self.mod.global_infos, ref)

    def _plan_symbols(self) -> None:
        factors: dict[SymVar, int] = {}
        for where, s in self._all_dtensors():
            lay = self.layout(s, where)
            for d, f in zip(s.tensor.shape, lay.factors):
                if f > 1 and isinstance(d, SymVar):
                    factors[d] = math.lcm(factors.get(d, 1), f)
        whole: set[SymVar] = set()      # bound as an unsharded param dim
        for p in self.func.params:
            s = p.struct_info
            if isinstance(s, DTensorStructInfo):
                lay = self.layout(s, f"parameter {p.name_hint!r}")
                whole.update(d for d, f in zip(s.tensor.shape, lay.factors)
                             if f == 1 and isinstance(d, SymVar))
            elif isinstance(s, TensorStructInfo) and s.shape is not None:
                whole.update(d for d in s.shape if isinstance(d, SymVar))
        for v, k in factors.items():
            if v in whole:
                self.div_vars.add(v)
            else:
                self.sym[v] = SymVar(f"{v.name}_local", v.dtype) * IntImm(k)

    def subst(self, e: PrimExpr) -> PrimExpr:
        return arith.simplify(arith.substitute(e, self.sym)) if self.sym else e

    # struct info -------------------------------------------------------------------------

    def local_sinfo(self, s: Optional[StructInfo], where: str) -> Optional[StructInfo]:
        if isinstance(s, DTensorStructInfo):
            if s.device_mesh != self.mesh_ref:
                raise ShardingError(f"function {self.name!r}, {where}: on mesh {s.device_mesh}, "
                                    f"but the function uses {self.mesh_ref}")
            lay = self.layout(s, where)
            shape = []
            for i, (d, f) in enumerate(zip(s.tensor.shape, lay.factors)):
                d = self.subst(d)
                if f > 1:
                    if isinstance(d, IntImm) and d.value % f:
                        raise ShardingError(
                            f"function {self.name!r}, {where}: dim {i} of shape "
                            f"{fmt_shape(s.tensor.shape)} is {d.value}, not divisible by the {f} devices "
                            f"of placement {s.placement_text!r} on mesh {self.mesh_ref} {self.mesh.shape}")
                    d = arith.simplify(d // f)
                shape.append(d)
            return TensorStructInfo(tuple(shape), s.tensor.dtype)
        if isinstance(s, TensorStructInfo):
            if s.shape is None or not self.sym:
                return s
            return TensorStructInfo(tuple(self.subst(d) for d in s.shape), s.dtype)
        if isinstance(s, TupleStructInfo):
            return TupleStructInfo(tuple(self.local_sinfo(f, f"{where}[{i}]")
                                         for i, f in enumerate(s.fields)))
        if isinstance(s, FuncStructInfo):
            return s
        return s

    def layout(self, s: DTensorStructInfo, where: str) -> Layout:
        return layout_of(s, self.mesh.shape, f"function {self.name!r}, {where}")

    # driver ------------------------------------------------------------------------------

    def run(self) -> G.Function:
        params = []
        for p in self.func.params:
            new = G.Var(p.name_hint, self.local_sinfo(p.struct_info, f"parameter {p.name_hint!r}"))
            self.remap[p] = new
            params.append(new)
        blocks = []
        for block in self.func.body.blocks:
            self.bindings = []
            self.in_dataflow = isinstance(block, G.DataflowBlock)
            for b in block.bindings:
                self.lower_binding(b)
            blocks.append(type(block)(tuple(self.bindings)))
        body_expr = self.expr(self.func.body.body)
        ret = self.local_sinfo(self.func.ret_struct_info, "the result")
        body = G.SeqExpr(tuple(blocks), body_expr, ret)
        attrs = self.func.attrs
        return replace(self.func, params=tuple(params), body=body, ret_struct_info=ret,
                       attrs=attrs, struct_info=None)

    def expr(self, e: G.Expr) -> G.Expr:
        if isinstance(e, G.Var):
            return self.remap.get(e, e)
        if isinstance(e, G.Tuple):
            fields = tuple(self.expr(f) for f in e.fields)
            return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
        if isinstance(e, G.TupleGetItem):
            t = self.expr(e.tuple_value)
            return G.TupleGetItem(t, e.index, t.struct_info.fields[e.index]
                                  if isinstance(t.struct_info, TupleStructInfo) else None)
        if isinstance(e, G.ShapeExpr):
            return G.ShapeExpr(tuple(self.subst(v) for v in e.values), e.struct_info) \
                if self.sym else e
        return e

    def emit(self, value: G.Expr, hint: str, dataflow: bool = True) -> G.Var:
        self.counter += 1
        var = (G.DataflowVar if dataflow else G.Var)(f"{hint}_{self.counter}", value.struct_info)
        self.bindings.append(G.VarBinding(var, value))
        return var

    def lower_binding(self, b: G.Binding) -> None:
        where = f"variable {b.var.name_hint!r}"
        want = self.local_sinfo(b.var.struct_info, where)
        if isinstance(b, G.MatchCast):
            value = self.expr(b.value)
            sinfo = self.local_sinfo(b.struct_info, where)
            var = type(b.var)(b.var.name_hint, sinfo)
            self.remap[b.var] = var
            self.bindings.append(G.MatchCast(var, value, sinfo))
            return
        value = b.value
        dataflow = self.in_dataflow
        if isinstance(value, G.Call) and isinstance(value.op, G.Op):
            new = self.lower_call(value, b.var, want, where, dataflow)
        else:
            new = self.expr(value)
        sinfo = want if want is not None else new.struct_info
        if isinstance(sinfo, TensorStructInfo) and isinstance(new.struct_info, TensorStructInfo):
            self._check_same(new.struct_info, sinfo, where)
        if isinstance(new, G.Call):
            new = new.with_struct_info(sinfo)
        var = type(b.var)(b.var.name_hint, sinfo)
        self.remap[b.var] = var
        self.bindings.append(G.VarBinding(var, new))

    def _check_same(self, got: TensorStructInfo, want: TensorStructInfo, where: str) -> None:
        ok = got.dtype == want.dtype and (got.shape is None or want.shape is None or (
            len(got.shape) == len(want.shape) and
            all(arith.prove_equal(a, b) for a, b in zip(got.shape, want.shape))))
        if not ok:
            raise ShardingError(f"function {self.name!r}, {where}: the local operator gives "
                                f"{fmt_sinfo(got)} but its placement needs {fmt_sinfo(want)}; "
                                "the placements of this operator's arguments and result do not "
                                "match its sharding rule")

    # calls ---------------------------------------------------------------------------------

    def lower_call(self, call: G.Call, var: G.Var, want, where: str, dataflow: bool) -> G.Expr:
        name = call.op.name
        args = tuple(self.expr(a) for a in call.args)
        if name == _REDISTRIBUTE:
            return self.redistribute(call, args[0], var, where, dataflow)
        if name == _ANNOTATE:
            src = call.args[0].struct_info
            if isinstance(src, DTensorStructInfo) and isinstance(var.struct_info, DTensorStructInfo) \
                    and self.layout(src, where).spec != self.layout(var.struct_info, where).spec:
                raise ShardingError(f"function {self.name!r}, {where}: annotate_sharding changes "
                                    f"the placement from {src.placement_text!r} to "
                                    f"{var.struct_info.placement_text!r}; run PropagateSharding first, "
                                    "which turns such conflicts into R.dist.redistribute")
            return args[0]
        if name == "relax.call_tir":
            return self.call_tir(call, args, var, want, where)
        if name in ("relax.call_dps_packed", "relax.call_pure_packed", "relax.call_packed"):
            sinfo_args = tuple(self.local_sinfo(s, where) for s in call.sinfo_args)
            if name == "relax.call_dps_packed" and want is not None:
                sinfo_args = (want,)        # the bound variable's local (= replicated) type
            return G.Call(call.op, args, call.attrs, sinfo_args,
                          want if want is not None else sinfo_args[0])
        if name in _SHAPE_ARG and isinstance(want, TensorStructInfo) and want.shape is not None:
            i = _SHAPE_ARG[name]
            args = args[:i] + (G.ShapeExpr(want.shape),) + args[i + 1:]
        if name == "relax.take" and self._is_vocab_take(call, var, where):
            opdef_args = dict(mesh_shape=self.mesh.shape, mesh_axis=self._vocab_axis(call, where),
                              device_ids=self.stage_ids)
            return ccl.masked_take(args[0], args[1], **opdef_args)
        new = infer_call(G.Call(call.op, args, call.attrs, call.sinfo_args))
        if name == "relax.mean":
            k = self._mean_shards(call, var, where)
            if k > 1:
                m = self.emit(new, "mean", dataflow)
                from ..op.builtin import const
                return make_call("relax.divide", (m, const(float(k), m.struct_info.dtype)))
        return new

    def call_tir(self, call: G.Call, args: tuple, var: G.Var, want, where: str) -> G.Call:
        """A call of the local copy of the tensor program: out_sinfo is the bound variable's
        local type, the copy's buffers take the local shapes (local_program.localize)."""
        gvar = call.args[0]
        out_sinfo = want if want is not None else self.local_sinfo(call.sinfo_args[0], where)
        operands = list(call.args[1].fields) if isinstance(call.args[1], G.Tuple) else [call.args[1]]
        in_s = [o.struct_info for o in operands]
        if isinstance(call.args[1], G.Var) and isinstance(call.args[1].struct_info, TupleStructInfo):
            in_s = list(call.args[1].struct_info.fields)
        out_s = list(var.struct_info.fields) if isinstance(var.struct_info, TupleStructInfo) \
            else [var.struct_info]
        factors = [self.layout(s, where).factors if isinstance(s, DTensorStructInfo) else None
                   for s in in_s + out_s]
        self._check_partial(call, var, in_s, out_s, where)
        if all(f is None or all(x == 1 for x in f) for f in factors):
            callee = gvar
        else:
            callee = self.local_program(gvar, factors, in_s + out_s, where)
        sinfo_args = (out_sinfo,)
        return G.Call(call.op, (callee,) + args[1:], call.attrs, sinfo_args, out_sinfo)

    def local_program(self, gvar: G.GlobalVar, factors: list, sinfos: list, where: str):
        from .local_program import localize
        key = (gvar.name_hint, tuple(None if f is None else tuple(f) for f in factors))
        if key in self.local_programs:
            return self.local_programs[key][0]
        placements = ", ".join(s.placement_text if isinstance(s, DTensorStructInfo) else "R"
                               for s in sinfos)
        what = (f"function {self.name!r}, {where}: R.call_tir of tensor program "
                f"{gvar.name_hint!r} with placements ({placements})")
        prim = localize(self.mod[gvar.name_hint], factors, what)
        if prim is self.mod[gvar.name_hint]:        # only symbolic sizes: bound locally
            self.local_programs[key] = (gvar, prim)
            return gvar
        taken = set(self.mod) | self.taken_names
        new_name = f"{gvar.name_hint}_local"
        i = 1
        while new_name in taken:
            new_name = f"{gvar.name_hint}_local_{i}"
            i += 1
        self.taken_names.add(new_name)
        if prim.attrs and "global_symbol" in prim.attrs:
            prim = replace(prim, attrs=prim.attrs.replace(global_symbol=new_name))
        new_gvar = G.GlobalVar(new_name, gvar.struct_info)
        self.local_programs[key] = (new_gvar, prim)
        return new_gvar

    def _check_partial(self, call, var, in_s, out_s, where: str) -> None:
        """A result that PropagateSharding typed Partial must come from a summed reduction
        dim sharded on the inputs (the local program then yields this worker's partial sum)."""
        for s in out_s:
            if not isinstance(s, DTensorStructInfo):
                continue
            for p in self.layout(s, where).spec:
                if isinstance(p, Partial) and p.op != "sum":
                    raise ShardingError(f"function {self.name!r}, {where}: R.call_tir of "
                                        f"{call.args[0].name_hint!r} cannot produce "
                                        f"{s.placement_text!r} (only a summed reduction gives P[sum])")

    def _is_vocab_take(self, call: G.Call, var: G.Var, where: str) -> bool:
        x = call.args[0].struct_info
        if not isinstance(x, DTensorStructInfo):
            return False
        axis = call.attrs.get("axis")
        rows_sharded = any(isinstance(p, Shard) and p.dim == 0 for p in self.layout(x, where).spec)
        if rows_sharded and axis not in (0, -x.tensor.ndim):
            raise ShardingError(f"function {self.name!r}, {where}: take along axis {axis} of a table "
                                f"sharded along dim 0 ({x.placement_text!r}) is not supported")
        return rows_sharded

    def _vocab_axis(self, call: G.Call, where: str) -> int:
        spec = self.layout(call.args[0].struct_info, where).spec
        axes = [a for a, p in enumerate(spec) if isinstance(p, Shard) and p.dim == 0]
        if len(axes) != 1:
            raise ShardingError(f"function {self.name!r}, {where}: take on a table sharded along "
                                f"dim 0 over {len(axes)} mesh axes is not supported (one expected)")
        return axes[0]

    def _mean_shards(self, call: G.Call, var: G.Var, where: str) -> int:
        x = call.args[0].struct_info
        if not isinstance(x, DTensorStructInfo):
            return 1
        ndim = x.tensor.ndim
        axes = call.attrs.get("axis")
        axes = range(ndim) if axes is None else [a % ndim for a in
                                                 (axes if isinstance(axes, tuple) else (axes,))]
        lay = self.layout(x, where)
        return math.prod(lay.factors[a] for a in axes)

    # redistribute ------------------------------------------------------------------------

    def redistribute(self, call: G.Call, x: G.Expr, var: G.Var, where: str, dataflow: bool):
        src_s, dst_s = call.args[0].struct_info, var.struct_info
        if not isinstance(src_s, DTensorStructInfo) or not isinstance(dst_s, DTensorStructInfo):
            raise ShardingError(f"function {self.name!r}, {where}: redistribute needs DTensor "
                                f"argument and result, got {type(src_s).__name__} -> "
                                f"{type(dst_s).__name__}")
        src, dst = self.layout(src_s, where).spec, self.layout(dst_s, where).spec
        steps = conversion_steps(src, dst)
        if steps is None:
            raise ShardingError(f"function {self.name!r}, {where}: cannot convert "
                                f"{format_placement(src)} to {format_placement(dst)}: no "
                                "conversion makes a Partial placement (or changes its reduction)")
        e = x
        for i, step in enumerate(steps):
            value = self.conversion_step(step, e)
            if i == len(steps) - 1:
                return value        # bound to the conversion's own variable
            e = self.emit(value, var.name_hint, dataflow)
        return e

    def conversion_step(self, step: ConversionStep, e: G.Expr) -> G.Call:
        """The R.ccl operator of one step of a conversion (conversion.conversion_steps)."""
        group = dict(mesh_shape=self.mesh.shape, mesh_axis=step.mesh_axis, device_ids=self.stage_ids)
        if step.kind == "allreduce":
            return ccl.allreduce(e, step.op, **group)
        if step.kind == "reduce_scatter":
            return ccl.reduce_scatter(e, step.dim, step.op, **group)
        if step.kind == "allgather":
            return ccl.allgather(e, step.dim, **group)
        return ccl.local_slice(e, step.dim, **group)


def lowered_signature(func: G.Function, mod: IRModule) -> dict:
    """Parameters and result of a (not yet lowered) function: name, global shape (ints or
    symbol names), dtype and placement text ("R" for plain tensors), for the runtime."""

    def describe(s: Any) -> Any:
        if isinstance(s, DTensorStructInfo):
            t = s.tensor
            return {"shape": [dim_value(d) for d in t.shape], "dtype": t.dtype,
                    "placement": s.placement_text}
        if isinstance(s, TensorStructInfo):
            return {"shape": None if s.shape is None else [dim_value(d) for d in s.shape],
                    "dtype": s.dtype, "placement": None}
        if isinstance(s, TupleStructInfo):
            return {"fields": [describe(f) for f in s.fields]}
        return {"object": type(s).__name__}

    params = [dict(name=p.name_hint, **describe(p.struct_info)) for p in func.params]
    return {"params": params, "result": describe(func.ret_struct_info)}


def dim_value(d: PrimExpr) -> Any:
    """A dim for metadata: its int, else its text ("n", "(n * 2)")."""
    v = arith.as_int(d)
    return v if v is not None else expr_dim_value(d)
