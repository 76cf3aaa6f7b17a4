"""PropagateSharding: a placement for every tensor variable of every graph function
that uses a device mesh, in two steps: solve (solve.py: a placement per variable and
per operator call, from the annotations and each operator's sharding rule, reading the
IR only), then rewrite (rewrite.py: DTensor types everywhere, and an explicit
`R.dist.redistribute` wherever a value changes placement). Before both, nested calls
are bound to their own variables (`flatten_calls`), so that every tensor an operator
reads is a variable that can carry a placement.

A function on several meshes is a pipeline: each stage is solved on its own mesh and
values crossing a stage boundary are converted onto the next mesh (stages.py).

`mean` over a sharded dim is a Partial sum that the lowering scales; `take` from a table
sharded along dim 0 is lowered to a masked lookup (LowerToLocalView).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import graph as G
from ..ir.module import IRModule
from .dtensor import uses_mesh
from .rewrite import rewrite
from .stages import is_pipelined, propagate_stages
from .solve import ANNOTATE, NOMINAL_DIM, REDISTRIBUTE, solve


def PropagateSharding(mod: IRModule, nominal_dim: int = NOMINAL_DIM) -> IRModule:
    """`mod` with every graph function that uses a mesh fully placed (see module doc)."""
    out = mod
    for name, func in mod.graph_functions().items():
        if uses_mesh(func):
            flat = flatten_calls(func)
            if is_pipelined(flat):
                out = out.with_function(name, propagate_stages(mod, name, flat, nominal_dim))
            else:
                out = out.with_function(name, rewrite(name, flat, solve(mod, name, flat, nominal_dim)))
    return out


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
    return replace(func, body=G.SeqExpr(tuple(blocks), func.body.body, func.body.struct_info))


__all__ = ["PropagateSharding", "flatten_calls", "uses_mesh", "ANNOTATE", "REDISTRIBUTE", "NOMINAL_DIM"]
