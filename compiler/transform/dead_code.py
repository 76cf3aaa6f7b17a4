"""DeadCodeElimination: drop bindings nobody uses and functions nobody calls.

Why: legalization, fusion and library dispatch leave behind tensor programs that
are no longer called and values that are no longer read; each costs compile time
(a kernel to build) or run time (a kernel to run, a buffer to allocate).

- A binding is removed when its variable is not used by anything that stays, and
  its value is pure. Impure: `R.call_packed`, direct calls of runtime functions
  (`R.ExternFunc`), calls of graph functions declared `pure=False`. A `match_cast`
  stays when it binds a symbolic size (its check is how the size is known).
- A function is removed when no entry function reaches it (through calls and
  `call_tir`). Entries default to the public graph functions: those with attr
  `global_symbol`, and those not marked private by attr `{"private": True}` or
  `{"Primitive": True}` (fused groups, as TVM). The script has no other mark:
  `@R.function(private=True)` is accepted and dropped by the parser.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir.errors import CompilerError
from ..ir.module import IRModule
from ..ir.visitor import post_order_visit

__all__ = ["DeadCodeElimination", "public_functions"]


def DeadCodeElimination(mod: IRModule, entry_functions: Optional[Iterable[str]] = None) -> IRModule:
    """`mod` without unused pure bindings and without functions the entries do not reach."""
    entries = list(entry_functions) if entry_functions is not None else public_functions(mod)
    for name in entries:
        if name not in mod:
            raise CompilerError(f"DeadCodeElimination: entry function {name!r} is not in the "
                                f"module; it has {mod.names()}")
    out = mod
    for name, func in mod.graph_functions().items():
        new = _prune_function(mod, func)
        if new is not func:
            out = out.with_function(name, new)
    reached = _reachable(out, entries)
    for name in out.names():
        if name not in reached:
            out = out.without(name)
    return out


def public_functions(mod: IRModule) -> list[str]:
    """The graph functions callers outside the module may call (see the module docstring)."""
    return [name for name, f in mod.graph_functions().items()
            if "global_symbol" in f.attrs or not (f.attrs.get("private") or f.attrs.get("Primitive"))]


# -- functions --------------------------------------------------------------------------

def _callees(func) -> set[str]:
    names: set[str] = set()
    if isinstance(func, G.Function):
        post_order_visit(func, lambda n: names.add(n.name_hint) if isinstance(n, G.GlobalVar) else None)
    return names


def _reachable(mod: IRModule, entries: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen or name not in mod:
            continue
        seen.add(name)
        todo.extend(_callees(mod[name]))
    return seen


# -- bindings ---------------------------------------------------------------------------

def _is_impure(mod: IRModule, value: G.Expr) -> bool:
    if not isinstance(value, G.Call):
        return False
    op = value.op
    if isinstance(op, G.Op):
        from ..op.registry import get_op
        try:
            return get_op(op.name).extra.get("pure") is False
        except CompilerError:
            return True           # unknown operator: keep it
    if isinstance(op, G.ExternFunc):
        return True
    if isinstance(op, G.GlobalVar):
        callee = mod[op.name_hint] if op.name_hint in mod else None
        return isinstance(callee, G.Function) and not callee.is_pure
    return True                   # a call through a variable: unknown callee


def _graph_vars(e: G.Expr) -> set[G.Var]:
    out: set[G.Var] = set()
    post_order_visit(e, lambda n: out.add(n) if isinstance(n, G.Var) else None)
    return out


def _sym_vars(sinfo) -> set[E.Var]:
    """Symbolic sizes mentioned by a struct info."""
    out: set[E.Var] = set()
    if isinstance(sinfo, S.TensorStructInfo):
        exprs = sinfo.shape or ()
    elif isinstance(sinfo, S.ShapeStructInfo):
        exprs = sinfo.values or ()
    elif isinstance(sinfo, S.PrimStructInfo):
        exprs = (sinfo.value,) if sinfo.value is not None else ()
    elif isinstance(sinfo, S.TupleStructInfo):
        for f in sinfo.fields:
            out |= _sym_vars(f)
        return out
    else:
        return out
    for e in exprs:
        post_order_visit(e, lambda n: out.add(n) if isinstance(n, E.Var) else None)
    return out


def _prune_function(mod: IRModule, func: G.Function) -> G.Function:
    body = func.body
    param_syms = set().union(*(_sym_vars(p.struct_info) for p in func.params)) if func.params else set()
    live = _graph_vars(body.body)
    kept_blocks = []
    changed = False
    for block in reversed(body.blocks):
        kept = []
        for b in reversed(block.bindings):
            binds_size = isinstance(b, G.MatchCast) and bool(_sym_vars(b.struct_info) - param_syms)
            if b.var in live or binds_size or _is_impure(mod, b.value):
                kept.append(b)
                live |= _graph_vars(b.value)
            else:
                changed = True
        kept.reverse()
        if kept:
            kept_blocks.append(block if len(kept) == len(block.bindings)
                               else replace(block, bindings=tuple(kept)))
        else:
            changed = True
    if not changed:
        return func
    kept_blocks.reverse()
    return replace(func, body=replace(body, blocks=tuple(kept_blocks)))
