"""Applying a sharding solution (solve.py) to a graph function: every tensor variable
gets its DTensor type, and every place where a value must change placement gets an
explicit `R.dist.redistribute` binding.

Output contract (LowerToLocalView's input): every tensor variable (parameters,
bindings, results, tuple fields) has DTensorStructInfo (global shape, mesh,
placement); a returned variable converted on return stays inside its dataflow block
(only the converted value is in R.output); no annotate_sharding is left; every
conversion is an explicit `R.dist.redistribute` binding; a Partial placement only on
the result of an op that produces it (matmul over a sharded contraction dim,
sum/mean/max/min over a sharded dim, take from a vocabulary-sharded table) --
consumers receive it converted, and results are never Partial. A call whose natural
result differs from its variable's placement binds the result to `<name>_<i>` and
converts it into the variable; a tuple field taken out in another placement likewise.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.struct_info import DTensorStructInfo, TupleStructInfo
from ..op import sharding as rules
from .conversion import conversion_steps
from .placement import Partial, Replicate, format_placement
from .solve import ANNOTATE, REDISTRIBUTE, Solution


def rewrite(name: str, func: G.Function, sol: Solution) -> G.Function:
    """`func` typed and converted as `sol` says (see the module docstring)."""
    return _Rewriter(name, func, sol).run()


def _op_name(value: Any) -> str:
    return value.op.name if isinstance(value, G.Call) and isinstance(value.op, G.Op) else ""


class _Rewriter:
    def __init__(self, name: str, func: G.Function, sol: Solution):
        self.name, self.func, self.sol = name, func, sol
        self.place, self.slots = sol.place, sol.slots
        self.naxes = sol.naxes
        self.bindings = [b for blk in func.body.blocks for b in blk.bindings]
        self.remap: dict[G.Var, G.Expr] = {}
        self.cache: dict[tuple, G.Var] = {}     # (id(expr), placement, visible) -> its conversion
        self.used = {v.name_hint for v in self.place} | {p.name_hint for p in func.params} | \
            {b.var.name_hint for b in self.bindings}
        self.out: list = []                     # bindings of the block being rebuilt
        self.dataflow = False
        self.demote = self.find_demoted()       # returned vars only their conversion leaves

    # -- types ----------------------------------------------------------------------------

    def dsinfo(self, sinfo: Any, spec: tuple) -> Any:
        if isinstance(sinfo, TupleStructInfo):
            return TupleStructInfo(tuple(self.dsinfo(f, spec) for f in sinfo.fields))
        t = rules.tensor_of(sinfo)
        return DTensorStructInfo(t, self.sol.mesh_ref, tuple(spec)) if t is not None else sinfo

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
        have = self.place[e]
        want = self.sol.ret_target if (self.sol.ret_target is not None and e is self.func.body.body) \
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

    # -- the function -------------------------------------------------------------------------

    def run(self) -> G.Function:
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
            self.out = []
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
        i = 0
        while f"{base}{i}" in self.used:
            i += 1
        self.used.add(f"{base}{i}")
        return f"{base}{i}"

    def convert(self, expr: G.Expr, spec: tuple, visible: bool = False,
                like: Optional[G.Var] = None) -> G.Expr:
        """`expr` (already remapped) as placement `spec`, through a redistribute binding
        (bound to a new variable named and typed like `like` when given)."""
        s = expr.struct_info
        have = s.placement if isinstance(s, DTensorStructInfo) else (Replicate(),) * self.naxes
        spec = tuple(spec)
        if have == spec:
            return expr
        text = format_placement(spec)
        if conversion_steps(have, spec) is None:
            what = like.name_hint if like is not None else getattr(expr, "name_hint", "?")
            raise ShardingError(
                f"function {self.name!r}, variable {what!r}: placement {text!r} is requested "
                f"({self.sol.origin.get(like, 'by its type') if like is not None else 'by a use'}) "
                f"but the value is {format_placement(have)!r}; no conversion makes a Partial "
                f"placement, only operators that reduce over a sharded dim produce one")
        key = (id(expr), spec, visible)
        if key in self.cache:
            return self.cache[key]
        from ..op.dist import redistribute
        call = redistribute(expr, self.sol.mesh_ref, text)
        if like is not None:
            v = self.var_type(like)(like.name_hint, call.struct_info)
        else:
            cls = G.DataflowVar if self.dataflow and not visible else G.Var
            v = cls(self.new_name("rd"), call.struct_info)
        self.out.append(G.VarBinding(v, call))
        self.cache[key] = v
        return v

    def converted_into(self, var: G.Var, value: G.Expr, sinfo: Any, target: tuple) -> None:
        """`value` bound to a new variable as it comes, then converted into `var`'s
        placement `target`."""
        cls = G.DataflowVar if self.dataflow else G.Var
        tmp = cls(self.new_name(var.name_hint + "_"), sinfo)
        self.out.append(G.VarBinding(tmp, value))
        self.remap[var] = self.convert(tmp, target, like=var)

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
            self.remap[var] = self.sub(value.args[0])
            return
        placed = self.sol.calls.get(id(b))
        target = self.place.get(var)
        if op == REDISTRIBUTE:
            x = self.sub(value.args[0])
            call = G.Call(value.op, (x,), value.attrs, value.sinfo_args,
                          self.dsinfo(value.struct_info, target))
        elif placed is not None:
            new_ops = {id(o): self.convert(self.sub(o), req)
                       for o, req in zip(rules.tensor_operands(value), placed.operands)}

            def arg(e):
                if isinstance(e, G.Tuple):
                    fields = tuple(new_ops.get(id(f), self.sub(f)) for f in e.fields)
                    return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
                return new_ops.get(id(e), self.sub(e))

            args = tuple(arg(a) for a in value.args)
            sinfo = value.struct_info if value.struct_info is not None else var.struct_info
            call = G.Call(value.op, args, value.attrs, value.sinfo_args,
                          self.dsinfo(sinfo, placed.result))
            if isinstance(var.struct_info, TupleStructInfo):
                target = placed.result      # fields are converted where they are taken out
            elif target is not None and placed.result != target:
                # the operator's natural result, then the variable in its required placement
                self.converted_into(var, call, call.struct_info, target)
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
                    field.placement != target:
                # the field as the tuple holds it, then the variable in its placement
                self.converted_into(var, call, field, target)
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
            elif s in self.place and rules.tensor_of(f.struct_info) is not None:
                fields.append(self.convert(self.sub(f), self.place[s]))
            else:
                fields.append(self.sub(f))
        return G.Tuple(tuple(fields), TupleStructInfo(tuple(f.struct_info for f in fields)))

    def finish_return(self) -> G.Expr:
        def ret(e):
            if isinstance(e, G.Tuple):
                fields = tuple(ret(f) for f in e.fields)
                return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
            ne = self.sub(e)
            want = self.return_placement(e)
            return ne if want is None else self.convert(ne, want, visible=True)

        return ret(self.func.body.body)
