"""PropagateSharding: a placement for every tensor variable of every graph function
that uses a device mesh.

Sources: parameter DTensor types, `R.dist.annotate_sharding` (a constraint on its
argument), `R.dist.redistribute` results, DTensor-typed bindings and the declared
return type. Propagation is greedy and deterministic, one mesh axis at a time, with
each operator's sharding rule (compiler/distributed/rules.py, attached beside the
op's struct-info rule): alternately forwards (bindings in order: a call with a known
input decides) and backwards (in reverse: a call with a known result decides), until
nothing changes; then the first still-unknown variable (parameters first) becomes
replicated and propagation resumes. A call decides by choosing which of its dim
labels is sharded on the axis (or none), minimising the bytes each device receives
converting its operands and result (rules.conversion_cost: the steps LowerToLocalView
emits, priced as `describe` reports them -- all-reduce 2(p-1)/p of the tensor's
per-device size, all-gather (p-1)/p of its gathered size, reduce-scatter (p-1)/p,
Shard(i)->Shard(j) an all-gather then a free local slice, replicate -> shard free;
the other mesh axes as known so far, symbolic dims counted as `nominal_dim`); ties go
to the first candidate in a fixed order (labels sharded on inputs, in operand order;
the result's label; none).

Tuples: every field of a tuple-typed value (parameter, tuple construction, an
operator's tuple result such as split, TupleGetItem, the result) has its own
placement, through one placeholder per field; an operator's tuple result has its
rule's placement in every field, and a field taken out in another placement is
converted there; a Partial field is reduced before the tuple is built.

Output contract (LowerToLocalView's input): every tensor variable (parameters,
bindings, results, tuple fields) has DTensorStructInfo (global shape, mesh,
placement); a returned variable converted on return stays inside its dataflow block
(only the converted value is in R.output); no annotate_sharding is left; every
conversion is an explicit `R.dist.redistribute` binding; a Partial placement only on
the result of an op that produces it (matmul over a sharded contraction dim,
sum/mean/max/min over a sharded dim, take from a vocabulary-sharded table) --
consumers receive it converted, and results are never Partial. `mean` over a sharded
dim is a Partial sum that the lowering scales; `take` from a table sharded along dim 0
must be lowered to a masked lookup.

Errors (ShardingError) name the function, the variable and the annotation: a static
dim not divisible by the mesh axes that shard it; two annotations of one variable
that contradict (also through a chain: annotating an annotation's result annotates the
same tensor); annotations on another mesh; a Partial requested where no operator
produces it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo, TupleStructInfo
from . import rules
from .mesh import DeviceMesh, lookup_mesh
from .placement import Partial, Replicate, Shard, format_placement, normalize_placement

ANNOTATE = "relax.dist.annotate_sharding"
REDISTRIBUTE = "relax.dist.redistribute"
NOMINAL_DIM = 128     # symbolic dims count as this many elements when comparing costs


def PropagateSharding(mod: IRModule, nominal_dim: int = NOMINAL_DIM) -> IRModule:
    """`mod` with every graph function that uses a mesh fully placed (see module doc)."""
    out = mod
    for name, func in mod.graph_functions().items():
        if uses_mesh(func):
            out = out.with_function(name, _Propagator(mod, name, flatten_calls(func),
                                                      nominal_dim).run())
    return out


def dtensors(sinfo: Any) -> list:
    """The DTensor struct infos in `sinfo` (itself, or a tuple's fields, nested)."""
    if isinstance(sinfo, DTensorStructInfo):
        return [sinfo]
    if isinstance(sinfo, TupleStructInfo):
        return [d for f in sinfo.fields for d in dtensors(f)]
    return []


def uses_mesh(func: G.Function) -> bool:
    """Whether `func` mentions a DTensor or a distributed operator."""
    found = []

    def visit(node):
        if isinstance(node, (G.Var, G.Call)) and dtensors(node.struct_info):
            found.append(node)
        elif isinstance(node, G.Call) and getattr(node.op, "name", "").startswith("relax.dist."):
            found.append(node)

    from ..ir.visitor import post_order_visit
    post_order_visit(func, visit)
    return bool(found) or any(dtensors(p.struct_info) for p in func.params) \
        or bool(dtensors(func.ret_struct_info))


def flatten_calls(func: G.Function) -> G.Function:
    """`func` with nested operator calls and tuple fields (`f(t[0])`) bound to their own
    variables (`lv0`, ...), so every tensor an operator reads is a variable that can
    carry a placement."""
    used = {p.name_hint for p in func.params} | {b.var.name_hint for blk in func.body.blocks
                                                  for b in blk.bindings}
    counter = [0]

    def name() -> str:
        while f"lv{counter[0]}" in used:
            counter[0] += 1
        used.add(f"lv{counter[0]}")
        return f"lv{counter[0]}"

    blocks = []
    for blk in func.body.blocks:
        out: list = []
        cls = G.DataflowVar if isinstance(blk, G.DataflowBlock) else G.Var

        def hoist(e: G.Expr) -> G.Expr:
            if isinstance(e, G.Tuple):
                fields = tuple(hoist(f) for f in e.fields)
                return e if all(a is b for a, b in zip(fields, e.fields)) else \
                    G.Tuple(fields, e.struct_info)
            if isinstance(e, G.Call) and isinstance(e.op, G.Op) and e.struct_info is not None:
                v = cls(name(), e.struct_info)
                out.append(G.VarBinding(v, inner(e)))
                return v
            if isinstance(e, G.TupleGetItem) and e.struct_info is not None:
                # `f(t[0])`: the field gets its own variable, which carries its placement
                v = cls(name(), e.struct_info)
                out.append(G.VarBinding(v, G.TupleGetItem(hoist(e.tuple_value), e.index,
                                                          e.struct_info)))
                return v
            return e

        def inner(call: G.Call) -> G.Call:
            args = tuple(hoist(a) for a in call.args)
            return call if all(a is b for a, b in zip(args, call.args)) else \
                G.Call(call.op, args, call.attrs, call.sinfo_args, call.struct_info)

        for b in blk.bindings:
            if isinstance(b, G.VarBinding) and isinstance(b.value, G.Call):
                out.append(G.VarBinding(b.var, inner(b.value)))
            else:
                out.append(b)
        blocks.append(type(blk)(tuple(out)))
    from dataclasses import replace
    return replace(func, body=G.SeqExpr(tuple(blocks), func.body.body, func.body.struct_info))


def _is_tensor(sinfo: Any) -> bool:
    return rules.tensor_of(sinfo) is not None


def _op_name(value: Any) -> str:
    return value.op.name if isinstance(value, G.Call) and isinstance(value.op, G.Op) else ""


class _Propagator:
    def __init__(self, mod: IRModule, name: str, func: G.Function, nominal: int):
        self.mod, self.name, self.func, self.nominal = mod, name, func, nominal
        self.bindings = [b for blk in func.body.blocks for b in blk.bindings]
        self.mesh_ref = self._find_mesh()
        self.mesh: DeviceMesh = lookup_mesh(mod.global_infos, self.mesh_ref)
        self.naxes = self.mesh.ndim
        self.place: dict[G.Var, list] = {}      # var -> per mesh axis placement or None
        self.origin: dict[G.Var, str] = {}      # var -> what fixed its placement (for errors)
        self.alias: dict[G.Var, G.Var] = {}     # annotate_sharding result -> its argument
        self.specs: dict[int, rules.DimSpec] = {}
        self.links: list[tuple[G.Var, G.Var]] = []   # variables with one placement
        self.ret_target: Optional[tuple] = None
        self.made_by: dict[G.Var, str] = {}     # var -> the operator computing it (errors)
        self.slots: dict[G.Var, list] = {}      # tuple var -> one placeholder var per field
        self.order: list = []                   # placeholders, in the order they were made
        self.tuple_fields: list = []            # (slot, field var): tuple construction
        self.demote: set = set()                # returned vars only their conversion leaves

    # -- setup ------------------------------------------------------------------------

    def where(self, var: G.Var) -> str:
        return f"function {self.name!r}, variable {var.name_hint!r}"

    def _find_mesh(self) -> str:
        refs = []
        for p in self.func.params:
            for d in dtensors(p.struct_info):
                refs.append((d.device_mesh, f"parameter {p.name_hint!r}"))
        for b in self.bindings:
            for d in dtensors(b.var.struct_info):
                refs.append((d.device_mesh, f"variable {b.var.name_hint!r}"))
            if _op_name(b.value).startswith("relax.dist."):
                refs.append((b.value.attrs["device_mesh"], f"variable {b.var.name_hint!r}"))
        if isinstance(self.func.ret_struct_info, DTensorStructInfo):
            refs.append((self.func.ret_struct_info.device_mesh, "the return type"))
        if not refs:
            if self.mod.global_infos.get("mesh"):
                return "mesh[0]"
            raise ShardingError(f"function {self.name!r}: no device mesh is used")
        first = refs[0]
        for ref, what in refs[1:]:
            if ref != first[0]:
                raise ShardingError(f"function {self.name!r}: {what} is placed on {ref!r} but "
                                    f"{first[1]} on {first[0]!r}; one function uses one mesh "
                                    f"(no conversion between meshes exists)")
        return first[0]

    def spec_of(self, var: G.Var, text: str, what: str) -> tuple:
        t = rules.tensor_of(var.struct_info)
        spec = normalize_placement(text, t.ndim if t.ndim >= 0 else 1)
        if len(spec) != self.naxes:
            raise ShardingError(f"{self.where(var)}: {what} has placement {text!r} with "
                                f"{len(spec)} entries, but mesh {self.mesh_ref} has {self.naxes} "
                                f"axes (shape {self.mesh.shape})")
        return spec

    def fix(self, var: G.Var, spec: tuple, what: str) -> None:
        old = self.place.get(var)
        if old is not None and all(p is not None for p in old) and var in self.origin:
            if tuple(old) != tuple(spec):
                raise ShardingError(
                    f"{self.where(var)}: contradicting annotations: {self.origin[var]} says "
                    f"{format_placement(tuple(old))!r} but {what} says "
                    f"{format_placement(spec)!r}; annotate one placement per variable and "
                    f"convert explicitly with R.dist.redistribute")
            return
        self.place[var] = list(spec)
        self.origin[var] = what

    def init(self) -> None:
        for p in self.func.params:
            if _is_tensor(p.struct_info):
                self.place[p] = [None] * self.naxes
            if isinstance(p.struct_info, TupleStructInfo):
                self.make_slots(p, "parameter type")
            if isinstance(p.struct_info, DTensorStructInfo):
                s = p.struct_info
                self.fix(p, self.spec_of(p, s.placement, "its parameter type"),
                         f"parameter type R.DTensor(..., {s.device_mesh!r}, {s.placement!r})")
        self.param_slots = len(self.order)
        for b in self.bindings:
            v, value = b.var, b.value
            if isinstance(v.struct_info, TupleStructInfo):
                self.make_slots(v, "binding type")
                if isinstance(value, G.Call):
                    # an operator's tuple result (split): every field placed as the call
                    self.place.setdefault(v, [None] * self.naxes)
                    self.links.extend((s, v) for s in self.slots[v] if s in self.place)
            elif _is_tensor(v.struct_info):
                self.place.setdefault(v, [None] * self.naxes)
            op = _op_name(value)
            if op in (ANNOTATE, REDISTRIBUTE):
                text, mesh = value.attrs["placement"], value.attrs["device_mesh"]
                spec = self.spec_of(v, text, op.rsplit(".", 1)[-1])
                what = (f"{op.replace('relax.', 'R.')}({getattr(value.args[0], 'name_hint', '?')}, "
                        f"{mesh!r}, {text!r})")
                if op == ANNOTATE:
                    x = value.args[0]
                    if not isinstance(x, G.Var):
                        raise ShardingError(f"{self.where(v)}: annotate_sharding needs a variable")
                    if any(isinstance(p, Partial) for p in spec):
                        raise ShardingError(f"{self.where(x)}: {what} asks for a Partial "
                                            f"placement; only operators produce partial values")
                    # an annotation of an annotation's result constrains the same tensor
                    target = self.alias.get(x, x)
                    if target is not x:
                        what += f" (where {x.name_hint!r} is {target.name_hint!r} annotated)"
                    self.fix(target, spec, what)
                    self.alias[v] = target
                    self.links.append((v, target))
                else:
                    self.fix(v, spec, what)
            elif isinstance(v.struct_info, DTensorStructInfo):
                s = v.struct_info
                self.fix(v, self.spec_of(v, s.placement, "its type"),
                         f"binding type R.DTensor(..., {s.placement!r})")
            elif isinstance(value, G.Var) and (value in self.place or value in self.slots):
                self.link_same(v, value)
            elif isinstance(value, G.TupleGetItem) and isinstance(value.tuple_value, G.Var):
                fields = self.slots.get(value.tuple_value)
                if fields is not None and value.index < len(fields):
                    self.link_same(v, fields[value.index])
            elif isinstance(value, G.Tuple) and v in self.slots:
                self.link_fields(self.slots[v], value.fields)
            if isinstance(value, G.Call) and op not in (ANNOTATE, REDISTRIBUTE):
                self.specs[id(b)] = self._rule(value, v)
                if isinstance(value.op, G.Op):
                    from ..op.registry import get_op
                    self.made_by[v] = get_op(value.op.name).script
        ret = self.func.ret_struct_info
        if isinstance(ret, DTensorStructInfo) and isinstance(self.func.body.body, G.Var):
            body = self.func.body.body
            self.ret_target = self.spec_of(body, ret.placement, "the return type")

    def make_slots(self, var: G.Var, what: str) -> None:
        """One placeholder variable per field of tuple-typed `var` (nested tuples get
        their own), so that every field carries its own placement."""
        slots = []
        for i, f in enumerate(var.struct_info.fields):
            s = G.Var(f"{var.name_hint}[{i}]", f)
            slots.append(s)
            if isinstance(f, TupleStructInfo):
                self.make_slots(s, what)
            elif _is_tensor(f):
                self.place[s] = [None] * self.naxes
                self.order.append(s)
                if isinstance(f, DTensorStructInfo):
                    self.fix(s, self.spec_of(s, f.placement, f"its {what}"),
                             f"{what} R.DTensor(..., {f.device_mesh!r}, {f.placement!r})")
        self.slots[var] = slots

    def link_same(self, a: G.Var, b: G.Var) -> None:
        """`a` and `b` hold the same value: the same placement (field by field)."""
        if a in self.slots and b in self.slots:
            for x, y in zip(self.slots[a], self.slots[b]):
                self.link_same(x, y)
        elif a in self.place and b in self.place:
            self.links.append((a, b))

    def link_fields(self, slots: list, fields: tuple) -> None:
        """A tuple built of `fields`: each slot takes its field's placement, a Partial
        one replicated (a tuple holds finished values; the field is converted)."""
        for s, f in zip(slots, fields):
            if isinstance(f, G.Tuple) and s in self.slots:
                self.link_fields(self.slots[s], f.fields)
            elif isinstance(f, G.Var) and s in self.slots:
                self.link_same(s, f)
            elif isinstance(f, G.Var) and s in self.place and f in self.place:
                self.tuple_fields.append((s, f))
            elif s in self.place and not isinstance(f, G.Var):
                self.place[s] = [Replicate()] * self.naxes      # a constant

    def _rule(self, call: G.Call, var: G.Var) -> rules.DimSpec:
        if call.struct_info is None:
            call = call.with_struct_info(var.struct_info)
        if not isinstance(call.op, G.Op):
            return rules.opaque(call)
        from ..op.registry import get_op
        rule = get_op(call.op.name).sharding_rule
        if rule is None:
            return rules.opaque(call)
        if call.op.name in ("relax.call_tir", "relax.call_dps_packed"):
            return rule(call, self.mod)
        return rule(call)

    # -- propagation --------------------------------------------------------------------

    def operands(self, call: G.Call) -> list:
        return rules.tensor_operands(call)

    def cur(self, expr: G.Expr, axis: int):
        if isinstance(expr, G.Var):
            p = self.place.get(expr)
            return p[axis] if p is not None else Replicate()
        return Replicate()           # constants are the same on every device

    def placed_as(self, expr: G.Expr, axis: int, p: Any) -> tuple:
        """`expr`'s whole placement with `p` on mesh axis `axis` and, on the other axes,
        what is known so far (unknown counted as replicated)."""
        known = self.place.get(expr) if isinstance(expr, G.Var) else None
        spec = [Replicate() if known is None or known[a] is None else known[a]
                for a in range(self.naxes)]
        spec[axis] = p
        return tuple(spec)

    def cost(self, expr: G.Expr, axis: int, have: Any, want: Any) -> float:
        """Bytes each device receives converting `expr` from `have` to `want` on mesh
        axis `axis` (rules.conversion_cost: the steps the lowering emits); free when
        `have` is not known yet."""
        if have is None:
            return 0.0
        s = expr.struct_info
        t = rules.result_tensor(s) if isinstance(s, TupleStructInfo) else rules.tensor_of(s)
        if t is None:
            return 0.0
        return rules.conversion_cost(self.placed_as(expr, axis, have),
                                     self.placed_as(expr, axis, want), t, self.mesh.shape,
                                     self.nominal)

    def choose(self, spec: rules.DimSpec, call: G.Call, var: G.Var, axis: int):
        """The label (or None) to shard on `axis`, with its required operand placements
        and produced result placement."""
        ops = self.operands(call)
        ins = [self.cur(o, axis) for o in ops]
        out = self.place[var][axis] if var in self.place else None
        cands: list = []
        for i, p in enumerate(ins):
            if isinstance(p, Shard) and i < len(spec.inputs) and p.dim < len(spec.inputs[i]):
                lab = spec.inputs[i][p.dim]
                if lab is not None and lab not in cands:
                    cands.append(lab)
        if isinstance(out, Shard) and out.dim < len(spec.output):
            lab = spec.output[out.dim]
            if lab is not None and lab not in cands:
                cands.append(lab)
        if isinstance(out, Partial):
            for lab, kind in spec.reduce.items():
                if kind == out.op and lab not in cands and \
                        any(lab in labels for labels in spec.inputs):
                    cands.append(lab)
        cands.append(None)
        best = None
        for lab in cands:
            produced = rules.produced_output(spec, lab)
            if produced is None:
                continue
            req = rules.required_inputs(spec, lab)
            if lab is not None and not (self.splits(var.struct_info, produced, axis) and all(
                    self.splits(o.struct_info, r, axis) for o, r in zip(ops, req))):
                continue        # a static dim this mesh axis does not divide stays whole
            cost = sum(self.cost(o, axis, c, r) for c, r, o in zip(ins, req, ops))
            if out is not None:
                cost += self.cost(var, axis, produced, out)
            if best is None or cost < best[0]:
                best = (cost, lab, req, produced)
        return best[1], best[2], best[3]

    def splits(self, sinfo: Any, p: Any, axis: int) -> bool:
        """Whether placement `p` on mesh axis `axis` splits a tensor evenly (symbolic dims
        are checked when the program runs)."""
        if not isinstance(p, Shard):
            return True
        t = rules.result_tensor(sinfo) if isinstance(sinfo, TupleStructInfo) else \
            rules.tensor_of(sinfo)
        if t is None or t.shape is None or p.dim >= t.ndim:
            return True
        from ..ir import arith
        n = arith.as_int(t.shape[p.dim])
        return n is None or n % self.mesh.shape[axis] == 0

    def step(self, b: G.VarBinding, forward: bool) -> bool:
        spec = self.specs.get(id(b))
        if spec is None:
            return False
        call, var = b.value, b.var
        ops = self.operands(call)
        changed = False
        for axis in range(self.naxes):
            ins = [self.place.get(o, [Replicate()] * self.naxes)[axis]
                   if isinstance(o, G.Var) else Replicate() for o in ops]
            out = self.place[var][axis] if var in self.place else Replicate()
            unknown_in = [i for i, c in enumerate(ins) if c is None]
            if forward and (all(c is None for c in ins) or (out is not None and not unknown_in)):
                continue        # nothing known to go from, or nothing left to decide
            if not forward and (out is None or not unknown_in):
                continue
            lab, req, produced = self.choose(spec, call, var, axis)
            for i in unknown_in:
                self.place[ops[i]][axis] = req[i]
                changed = True
            if out is None:
                self.place[var][axis] = produced
                changed = True
        return changed

    def step_links(self) -> bool:
        changed = False
        for a, b in self.links:
            pa, pb = self.place.get(a), self.place.get(b)
            if pa is None or pb is None:
                continue
            for axis in range(self.naxes):
                if pa[axis] is None and pb[axis] is not None:
                    pa[axis] = pb[axis]
                    changed = True
                elif pb[axis] is None and pa[axis] is not None:
                    pb[axis] = pa[axis]
                    changed = True
        for s, f in self.tuple_fields:
            ps, pf = self.place[s], self.place[f]
            for axis in range(self.naxes):
                if ps[axis] is None and pf[axis] is not None:
                    ps[axis] = Replicate() if isinstance(pf[axis], Partial) else pf[axis]
                    changed = True
                elif pf[axis] is None and ps[axis] is not None:
                    pf[axis] = ps[axis]
                    changed = True
        return changed

    def propagate(self) -> None:
        n = self.param_slots
        order = list(self.func.params) + self.order[:n] + [b.var for b in self.bindings] + \
            self.order[n:]
        body = self.func.body.body
        for _ in range(10 * (len(order) + 1) * self.naxes + 10):
            changed = True
            while changed:
                changed = self.step_links()
                for b in self.bindings:
                    if isinstance(b, G.VarBinding):
                        changed |= self.step(b, True)
                changed |= self.step_links()
                for b in reversed(self.bindings):
                    if isinstance(b, G.VarBinding):
                        changed |= self.step(b, False)
                if self.ret_target is not None and body in self.place:
                    for axis, p in enumerate(self.place[body]):
                        if p is None:
                            self.place[body][axis] = self.ret_target[axis]
                            changed = True
            pending = next((v for v in order if v in self.place and None in self.place[v]), None)
            if pending is None:
                return
            self.place[pending] = [Replicate() if p is None else p for p in self.place[pending]]
        raise ShardingError(f"function {self.name!r}: sharding propagation did not converge")

    # -- checks ---------------------------------------------------------------------------

    def check_divisible(self, var: G.Var, spec: tuple) -> None:
        t = rules.tensor_of(var.struct_info)
        if t is None or t.shape is None:
            return
        from ..ir import arith
        for d in range(t.ndim):
            axes = [a for a, p in enumerate(spec) if isinstance(p, Shard) and p.dim == d]
            if not axes:
                continue
            k = math.prod(self.mesh.shape[a] for a in axes)
            n = arith.as_int(t.shape[d])
            if n is not None and n % k != 0:
                how = self.origin.get(var, "inferred by sharding propagation")
                if var in self.made_by:
                    how += f"; the result of {self.made_by[var]}"
                raise ShardingError(
                    f"{self.where(var)}: placement {format_placement(spec)!r} (from {how}) "
                    f"shards dim {d} of size {n} over mesh {self.mesh_ref} axis "
                    f"{', '.join(map(str, axes))} of size {k}, which does not divide it; "
                    f"expected a multiple of {k}")

    # -- rewrite ------------------------------------------------------------------------------

    def dsinfo(self, sinfo: Any, spec: tuple) -> Any:
        text = format_placement(tuple(spec))
        if isinstance(sinfo, TupleStructInfo):
            return TupleStructInfo(tuple(self.dsinfo(f, spec) for f in sinfo.fields))
        t = rules.tensor_of(sinfo)
        return DTensorStructInfo(t, self.mesh_ref, text) if t is not None else sinfo

    def slot_sinfo(self, var: G.Var) -> Any:
        """Tuple-typed `var`'s struct info with each field in its own placement."""
        fields = []
        for s in self.slots[var]:
            if s in self.slots:
                fields.append(self.slot_sinfo(s))
            elif s in self.place:
                fields.append(self.dsinfo(s.struct_info, self.place[s]))
            else:
                fields.append(s.struct_info)
        return TupleStructInfo(tuple(fields))

    def var_type(self, var: G.Var) -> type:
        return G.DataflowVar if var in self.demote else type(var)

    def return_placement(self, e: G.Expr) -> Optional[tuple]:
        """The placement returned tensor variable `e` is converted to on its way out
        (results are never Partial; the declared return type is honoured), or None."""
        if not (isinstance(e, G.Var) and e in self.place and
                not isinstance(e.struct_info, TupleStructInfo)):
            return None
        have = tuple(self.place[e])
        want = self.ret_target if (self.ret_target is not None and e is self.func.body.body) \
            else tuple(Replicate() if isinstance(p, Partial) else p for p in have)
        return want if want != have else None

    def find_demoted(self) -> set:
        """Variables of the last dataflow block that leave it only through a conversion
        made on return: the converted value is the block's output, they are not."""
        blocks = self.func.body.blocks
        if not blocks or not isinstance(blocks[-1], G.DataflowBlock):
            return set()
        bound = {b.var for b in blocks[-1].bindings if not isinstance(b.var, G.DataflowVar)}
        returned: list = []

        def walk(e):
            if isinstance(e, G.Tuple):
                for f in e.fields:
                    walk(f)
            else:
                returned.append(e)

        walk(self.func.body.body)
        return {e for e in returned if e in bound and self.return_placement(e) is not None}

    def run(self) -> G.Function:
        self.init()
        self.propagate()
        for v, p in self.place.items():
            if not isinstance(v.struct_info, TupleStructInfo):
                self.check_divisible(v, tuple(p))
        self.remap: dict[G.Var, G.Expr] = {}
        self.cache: dict[tuple, G.Var] = {}
        self.demote = self.find_demoted()
        params = []
        for p in self.func.params:
            if p in self.place or p in self.slots:
                nv = type(p)(p.name_hint, self.dsinfo(p.struct_info, self.place[p])
                             if p in self.place else self.slot_sinfo(p))
                self.remap[p] = nv
                params.append(nv)
            else:
                params.append(p)
        blocks = []
        nblocks = len(self.func.body.blocks)
        for bi, blk in enumerate(self.func.body.blocks):
            self.out: list = []
            self.dataflow = isinstance(blk, G.DataflowBlock)
            for b in blk.bindings:
                self.rewrite(b)
            if bi == nblocks - 1:
                body = self.finish_return()
            blocks.append(type(blk)(tuple(self.out)))
        if nblocks == 0:
            self.out, self.dataflow = [], False
            body = self.finish_return()
            if self.out:
                blocks.append(G.BindingBlock(tuple(self.out)))
        seq = G.SeqExpr(tuple(blocks), body, body.struct_info)
        from dataclasses import replace
        return replace(self.func, params=tuple(params), body=seq, ret_struct_info=body.struct_info,
                       struct_info=None)

    def sub(self, e: G.Expr) -> G.Expr:
        if isinstance(e, G.Var):
            return self.remap.get(e, e)
        if isinstance(e, G.Tuple):
            fields = tuple(self.sub(f) for f in e.fields)
            return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
        return e

    def new_name(self, base: str) -> str:
        used = {v.name_hint for v in self.place} | {p.name_hint for p in self.func.params}
        used |= {b.var.name_hint for b in self.bindings} | getattr(self, "_used", set())
        i = 0
        while f"{base}{i}" in used:
            i += 1
        self._used = getattr(self, "_used", set()) | {f"{base}{i}"}
        return f"{base}{i}"

    def convert(self, expr: G.Expr, spec: tuple, visible: bool = False,
                like: Optional[G.Var] = None) -> G.Expr:
        """`expr` (already remapped) as placement `spec`, through a redistribute binding
        (bound to a new variable named and typed like `like` when given)."""
        s = expr.struct_info
        cur = s.placement if isinstance(s, DTensorStructInfo) else format_placement(
            (Replicate(),) * self.naxes)
        text = format_placement(tuple(spec))
        if cur == text:
            return expr
        have = normalize_placement(cur, max(rules.tensor_of(s).ndim, 1)) if s is not None \
            else (Replicate(),) * self.naxes
        if rules.conversion_steps(have, tuple(spec)) is None:
            what = like.name_hint if like is not None else getattr(expr, "name_hint", "?")
            raise ShardingError(
                f"function {self.name!r}, variable {what!r}: placement {text!r} is requested "
                f"({self.origin.get(like, 'by its type') if like is not None else 'by a use'}) "
                f"but the value is {cur!r}; no conversion makes a Partial placement, only "
                f"operators that reduce over a sharded dim produce one")
        key = (id(expr), text, visible)
        if key in self.cache:
            return self.cache[key]
        from ..op.dist import redistribute
        call = redistribute(expr, self.mesh_ref, text)
        if like is not None:
            v = self.var_type(like)(like.name_hint, call.struct_info)
        else:
            cls = G.DataflowVar if self.dataflow and not visible else G.Var
            v = cls(self.new_name("rd"), call.struct_info)
        self.out.append(G.VarBinding(v, call))
        self.cache[key] = v
        return v

    def rewrite(self, b) -> None:
        var, value = b.var, b.value
        if not isinstance(b, G.VarBinding):
            nv = self.var_type(var)(var.name_hint, self.dsinfo(var.struct_info, self.place[var])) \
                if var in self.place else var
            self.remap[var] = nv
            self.out.append(type(b)(nv, self.sub(b.value), nv.struct_info))
            return
        op = _op_name(value)
        if op == ANNOTATE:
            x = self.sub(value.args[0])
            self.remap[var] = x
            return
        spec = self.specs.get(id(b))
        target = tuple(self.place[var]) if var in self.place else None
        if op == REDISTRIBUTE:
            x = self.sub(value.args[0])
            call = value.with_struct_info(self.dsinfo(value.struct_info, target))
            call = G.Call(value.op, (x,), value.attrs, value.sinfo_args, call.struct_info)
        elif spec is not None:
            ops = self.operands(value)
            choices = [self.choose(spec, value, var, a) for a in range(self.naxes)]
            new_ops = {}
            for i, o in enumerate(ops):
                req = tuple(c[1][i] for c in choices)
                new_ops[id(o)] = self.convert(self.sub(o), req)
            produced = tuple(c[2] for c in choices)

            def arg(e):
                if isinstance(e, G.Tuple):
                    fields = tuple(new_ops.get(id(f), self.sub(f)) for f in e.fields)
                    return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
                return new_ops.get(id(e), self.sub(e))

            args = tuple(arg(a) for a in value.args)
            sinfo = value.struct_info if value.struct_info is not None else var.struct_info
            call = G.Call(value.op, args, value.attrs, value.sinfo_args,
                          self.dsinfo(sinfo, produced))
            if isinstance(var.struct_info, TupleStructInfo):
                target = produced       # fields are converted where they are taken out
            elif target is not None and produced != target:
                # the operator's natural result, then the variable in its required placement
                cls = G.DataflowVar if self.dataflow else G.Var
                tmp = cls(self.new_name(var.name_hint + "_"), call.struct_info)
                self.out.append(G.VarBinding(tmp, call))
                self.remap[var] = self.convert(tmp, target, like=var)
                return
        elif isinstance(value, G.Tuple) and var in self.slots:
            call = self.build_tuple(value, self.slots[var])
            target = None               # typed field by field
        elif isinstance(value, G.TupleGetItem):
            tv = self.sub(value.tuple_value)
            field = tv.struct_info.fields[value.index] \
                if isinstance(tv.struct_info, TupleStructInfo) else None
            call = G.TupleGetItem(tv, value.index, field)
            if isinstance(field, DTensorStructInfo) and target is not None and \
                    field.placement != format_placement(target):
                # the field as the tuple holds it, then the variable in its placement
                cls = G.DataflowVar if self.dataflow else G.Var
                tmp = cls(self.new_name(var.name_hint + "_"), field)
                self.out.append(G.VarBinding(tmp, call))
                self.remap[var] = self.convert(tmp, target, like=var)
                return
            if field is not None:
                target = None           # typed as the field it takes
        else:
            call = self.sub(value)
            if var in self.slots:
                target = None           # an alias of a tuple: its fields' types
        sinfo = self.dsinfo(var.struct_info, target) if target is not None else \
            (call.struct_info if call.struct_info is not None else var.struct_info)
        nv = self.var_type(var)(var.name_hint, sinfo)
        self.remap[var] = nv
        self.out.append(G.VarBinding(nv, call))

    def build_tuple(self, value: G.Tuple, slots: list) -> G.Tuple:
        """Tuple `value` (fields remapped) with each tensor field converted to its
        slot's placement."""
        fields = []
        for f, s in zip(value.fields, slots):
            if isinstance(f, G.Tuple) and s in self.slots:
                fields.append(self.build_tuple(f, self.slots[s]))
            elif s in self.place and _is_tensor(f.struct_info):
                fields.append(self.convert(self.sub(f), tuple(self.place[s])))
            else:
                fields.append(self.sub(f))
        return G.Tuple(tuple(fields), TupleStructInfo(tuple(f.struct_info for f in fields)))

    def finish_return(self) -> G.Expr:
        body = self.func.body.body

        def ret(e):
            if isinstance(e, G.Tuple):
                fields = tuple(ret(f) for f in e.fields)
                return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
            ne = self.sub(e)
            want = self.return_placement(e)
            return ne if want is None else self.convert(ne, want, visible=True)

        return ret(body)
