"""The sharding solver: a graph function -> a placement for every tensor variable and,
for every operator call, the placements its operands must have and its result has.
It reads the IR and changes nothing; compiler/distributed/rewrite.py applies the
solution (PropagateSharding runs one after the other, propagate.py).

Constraints: parameter DTensor types, `R.dist.annotate_sharding` (a constraint on its
argument; annotating an annotation's result constrains the same tensor),
`R.dist.redistribute` results, DTensor-typed bindings and the declared return type;
variables bound to one another (aliases, tuple fields) share a placement.

Solving is greedy and deterministic, one mesh axis at a time, with each operator's
sharding rule (rules.py): alternately forwards (bindings in order: a call with a known
input decides) and backwards (in reverse: a call with a known result decides), until
nothing changes; then the first still-unknown variable (parameters first) becomes
replicated, and again. Every step only fills unknown entries, so this ends after at
most one round per unknown entry. A call decides by choosing which of its dim labels is
sharded on the axis (or none), minimising the bytes each device receives converting its
operands and result (conversion.conversion_cost: the steps the lowering emits, priced
as `describe` reports them; the other mesh axes as known so far, symbolic dims counted
as `nominal` elements); ties go to the first candidate in a fixed order (labels sharded
on inputs, in operand order; the result's label; none).

Tuples: every field of a tuple-typed value (parameter, tuple construction, an
operator's tuple result such as split, TupleGetItem, the result) has its own
placement, through one placeholder variable per field; an operator's tuple result has
its rule's placement in every field; a field built from a Partial value is replicated
(the rewrite reduces it first).

Errors (ShardingError) name the function, the variable and the annotation: a static
dim not divisible by the mesh axes that shard it; two annotations of one variable that
contradict; annotations on another mesh; a Partial requested by an annotation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..ir import arith
from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo, TupleStructInfo, placement_spec
from ..op import sharding as rules
from .conversion import conversion_cost
from .dtensor import function_mesh
from .mesh import DeviceMesh, lookup_mesh
from .placement import Partial, PlacementSpec, Replicate, Shard, format_placement

ANNOTATE = "relax.dist.annotate_sharding"
REDISTRIBUTE = "relax.dist.redistribute"
NOMINAL_DIM = 128     # symbolic dims count as this many elements when comparing costs


@dataclass(frozen=True)
class CallPlacement:
    """How one operator call runs: the placement each tensor operand must have (in
    rules.tensor_operands order) and the placement of what it produces."""
    operands: tuple[PlacementSpec, ...]
    result: PlacementSpec


@dataclass
class Solution:
    """What the solver decided for one function (see the module docstring)."""
    mesh_ref: str
    mesh: DeviceMesh
    place: dict = field(default_factory=dict)    # var (or tuple-field placeholder) -> PlacementSpec
    slots: dict = field(default_factory=dict)    # tuple-typed var -> its field placeholders
    calls: dict = field(default_factory=dict)    # id(binding) -> CallPlacement
    origin: dict = field(default_factory=dict)   # var -> the annotation that fixed its placement
    ret_target: Optional[PlacementSpec] = None   # the declared return placement, if any

    @property
    def naxes(self) -> int:
        return self.mesh.ndim


def solve(mod: IRModule, name: str, func: G.Function, nominal: int = NOMINAL_DIM) -> Solution:
    """Placements for `func` (whose operator calls read variables: propagate.flatten_calls)."""
    return _Solver(mod, name, func, nominal).solve()


def _is_tensor(sinfo: Any) -> bool:
    return rules.tensor_of(sinfo) is not None


def _op_name(value: Any) -> str:
    return value.op.name if isinstance(value, G.Call) and isinstance(value.op, G.Op) else ""


class _Solver:
    def __init__(self, mod: IRModule, name: str, func: G.Function, nominal: int):
        self.mod, self.name, self.func, self.nominal = mod, name, func, nominal
        self.bindings = [b for blk in func.body.blocks for b in blk.bindings]
        ref = function_mesh(func, name)
        if ref is None:
            if not mod.global_infos.get("mesh"):
                raise ShardingError(f"function {name!r}: no device mesh is used")
            ref = "mesh[0]"
        self.mesh_ref = ref
        self.mesh: DeviceMesh = lookup_mesh(mod.global_infos, ref)
        self.naxes = self.mesh.ndim
        self.place: dict[G.Var, list] = {}      # var -> per mesh axis placement or None
        self.origin: dict[G.Var, str] = {}      # var -> what fixed its placement (for errors)
        self.alias: dict[G.Var, G.Var] = {}     # annotate_sharding result -> its argument
        self.specs: dict[int, rules.DimSpec] = {}   # id(binding) -> its operator's rule
        self.links: list[tuple[G.Var, G.Var]] = []   # variables with one placement
        self.ret_target: Optional[tuple] = None
        self.made_by: dict[G.Var, str] = {}     # var -> the operator computing it (errors)
        self.slots: dict[G.Var, list] = {}      # tuple var -> one placeholder var per field
        self.order: list = []                   # placeholders, in the order they were made
        self.param_slots = 0                    # how many of `order` belong to parameters
        self.tuple_fields: list = []            # (slot, field var): tuple construction

    # -- constraints ----------------------------------------------------------------------

    def where(self, var: G.Var) -> str:
        return f"function {self.name!r}, variable {var.name_hint!r}"

    def spec_of(self, var: G.Var, placement, what: str) -> tuple:
        t = rules.tensor_of(var.struct_info)
        spec = placement_spec(placement, t.ndim if t.ndim >= 0 else 1)
        if len(spec) != self.naxes:
            raise ShardingError(f"{self.where(var)}: {what} has placement "
                                f"{format_placement(placement)!r} with {len(spec)} entries, but mesh "
                                f"{self.mesh_ref} has {self.naxes} axes (shape {self.mesh.shape})")
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

    def collect(self) -> None:
        """Every tensor variable gets an entry, annotations fix theirs, aliases link."""
        for p in self.func.params:
            if _is_tensor(p.struct_info):
                self.place[p] = [None] * self.naxes
            if isinstance(p.struct_info, TupleStructInfo):
                self.make_slots(p, "parameter type")
            if isinstance(p.struct_info, DTensorStructInfo):
                s = p.struct_info
                self.fix(p, self.spec_of(p, s.placement, "its parameter type"),
                         f"parameter type R.DTensor(..., {s.device_mesh!r}, {s.placement_text!r})")
        self.param_slots = len(self.order)
        for b in self.bindings:
            self.collect_binding(b)
        ret = self.func.ret_struct_info
        if isinstance(ret, DTensorStructInfo) and isinstance(self.func.body.body, G.Var):
            self.ret_target = self.spec_of(self.func.body.body, ret.placement, "the return type")

    def collect_binding(self, b: G.Binding) -> None:
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
                self.annotate(v, value.args[0], spec, what)
            else:
                self.fix(v, spec, what)
        elif isinstance(v.struct_info, DTensorStructInfo):
            s = v.struct_info
            self.fix(v, self.spec_of(v, s.placement, "its type"),
                     f"binding type R.DTensor(..., {s.placement_text!r})")
        elif isinstance(value, G.Var) and (value in self.place or value in self.slots):
            self.link_same(v, value)
        elif isinstance(value, G.TupleGetItem) and isinstance(value.tuple_value, G.Var):
            fields = self.slots.get(value.tuple_value)
            if fields is not None and value.index < len(fields):
                self.link_same(v, fields[value.index])
        elif isinstance(value, G.Tuple) and v in self.slots:
            self.link_fields(self.slots[v], value.fields)
        if isinstance(value, G.Call) and op not in (ANNOTATE, REDISTRIBUTE):
            self.specs[id(b)] = self.rule(value, v)
            if isinstance(value.op, G.Op):
                from ..op.registry import get_op
                self.made_by[v] = get_op(value.op.name).script

    def annotate(self, v: G.Var, x: G.Expr, spec: tuple, what: str) -> None:
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
                             f"{what} R.DTensor(..., {f.device_mesh!r}, {f.placement_text!r})")
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

    def rule(self, call: G.Call, var: G.Var) -> rules.DimSpec:
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

    # -- choosing a call's placements -------------------------------------------------------

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
        axis `axis`; free when `have` is not known yet."""
        if have is None:
            return 0.0
        s = expr.struct_info
        t = rules.result_tensor(s) if isinstance(s, TupleStructInfo) else rules.tensor_of(s)
        if t is None:
            return 0.0
        return conversion_cost(self.placed_as(expr, axis, have), self.placed_as(expr, axis, want), t,
                               self.mesh.shape, self.nominal)

    def choose(self, spec: rules.DimSpec, call: G.Call, var: G.Var, axis: int):
        """The label (or None) to shard on `axis`, with its required operand placements
        and produced result placement."""
        ops = rules.tensor_operands(call)
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
            produced = spec.produced_output(lab)
            if produced is None:
                continue
            req = spec.required_inputs(lab)
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
        n = arith.as_int(t.shape[p.dim])
        return n is None or n % self.mesh.shape[axis] == 0

    # -- the fixpoint -------------------------------------------------------------------------

    def step(self, b: G.VarBinding, forward: bool) -> bool:
        spec = self.specs.get(id(b))
        if spec is None:
            return False
        call, var = b.value, b.var
        ops = rules.tensor_operands(call)
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

    def settle(self) -> None:
        """Forward and backward sweeps until nothing changes (each change fills an
        unknown entry, so this ends)."""
        body = self.func.body.body
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

    def propagate(self) -> None:
        n = self.param_slots
        order = list(self.func.params) + self.order[:n] + [b.var for b in self.bindings] + \
            self.order[n:]
        while True:
            self.settle()
            pending = next((v for v in order if v in self.place and None in self.place[v]), None)
            if pending is None:
                return
            self.place[pending] = [Replicate() if p is None else p for p in self.place[pending]]

    # -- checks and the result ----------------------------------------------------------------

    def check_divisible(self, var: G.Var, spec: tuple) -> None:
        t = rules.tensor_of(var.struct_info)
        if t is None or t.shape is None:
            return
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

    def solve(self) -> Solution:
        self.collect()
        self.propagate()
        for v, p in self.place.items():
            if not isinstance(v.struct_info, TupleStructInfo):
                self.check_divisible(v, tuple(p))
        calls = {}
        for b in self.bindings:
            spec = self.specs.get(id(b))
            if spec is not None:
                choices = [self.choose(spec, b.value, b.var, a) for a in range(self.naxes)]
                nops = len(rules.tensor_operands(b.value))
                calls[id(b)] = CallPlacement(
                    tuple(tuple(c[1][i] for c in choices) for i in range(nops)),
                    tuple(c[2] for c in choices))
        return Solution(self.mesh_ref, self.mesh, {v: tuple(p) for v, p in self.place.items()},
                        self.slots, calls, self.origin, self.ret_target)
