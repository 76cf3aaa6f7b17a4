"""`create_prim_func`: compute definitions to a tensor program (PrimFunc).

The structure is TVM's, because schedules, fusion and codegen read it:

    PrimFunc(params = [inputs..., outputs..., scalar vars...])
      BlockRealize(root)                         # root block: alloc_buffers = intermediates
        SeqStmt                                  # one entry per stage, dependencies first
          for i in range(n): for j in range(m): for k in range(lo, lo + K):
            BlockRealize(iter_values=(i, j, k))
              Block(name, iter_vars=(v_i: S [0, n), v_j: S [0, m), v_k: R [lo, lo + K)),
                    init = Y[v_i, v_j] = <identity>            # reductions only
                    body = Y[v_i, v_j] = Y[v_i, v_j] + src)    # or = value

Each stage's loops follow its output dims, then its reduction axes. Loop vars and
block vars are fresh per stage, so a tensor may be lowered into several functions.
`root_block=False` puts intermediates in `Allocate` statements instead.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..ir.attrs import Attrs
from ..ir.expr import Add, IntImm, Max, Min, Mul, PrimExpr, Var
from ..ir.tir import (Allocate, Block, BlockRealize, Buffer, BufferLoad, BufferStore, For, IterVar,
                      PrimFunc, Range, SeqStmt, Stmt)
from .tensor import Reduce, ReduceAxis, Tensor, TensorLoad, TEError, _children

__all__ = ["create_prim_func"]

_COMBINE: dict[str, Callable[[PrimExpr, PrimExpr, str], PrimExpr]] = {
    "sum": lambda a, b, dt: Add(a, b, dt),
    "max": lambda a, b, dt: Max(a, b, dt),
    "min": lambda a, b, dt: Min(a, b, dt),
    "prod": lambda a, b, dt: Mul(a, b, dt),
}
_TRUE = IntImm(1, "bool")


def create_prim_func(args: Sequence[Union[Tensor, Var]], name: Optional[str] = None,
                     attrs: Optional[Mapping[str, Any]] = None, root_block: bool = True) -> PrimFunc:
    """Lower the stages that compute the computed tensors of `args` into a PrimFunc.

    `args` gives the parameters in order, destination-passing style: placeholders
    (inputs) first, then computed tensors (outputs, which the caller allocates);
    `te.var`s may appear anywhere and become scalar params. Computed tensors that
    the outputs need but `args` does not list become intermediates. A Var that is
    used but is no bare dim of a parameter buffer is appended as a scalar param.
    `name` sets attr `global_symbol`; `attrs` are added to the function's attrs."""
    where = f"create_prim_func({name!r})" if name else "create_prim_func"
    listed = _check_args(args, where)
    stages = _stages([a for a in args if isinstance(a, Tensor) and not a.is_placeholder], listed, where)
    tensors = [a for a in args if isinstance(a, Tensor)] + [t for t in stages if id(t) not in listed]
    low = _Lowerer(tensors, stages, where)
    body_stmts = [low.stage(t) for t in stages]
    body: Stmt = body_stmts[0] if len(body_stmts) == 1 else SeqStmt(tuple(body_stmts))
    inter = [low.buffers[id(t)] for t in stages if id(t) not in listed]
    if root_block:
        body = BlockRealize((), _TRUE, Block("root", (), body, alloc_buffers=tuple(inter)))
    else:
        for buf in reversed(inter):
            body = Allocate(buf, body)
    params = [low.buffers[id(a)] if isinstance(a, Tensor) else low.var(a, {}, where) for a in args]
    params += _implicit_scalars(params, body, low.bound)
    func_attrs = dict(attrs or {})
    if name is not None:
        func_attrs = {"global_symbol": name, **func_attrs}
    return PrimFunc(tuple(params), body, Attrs(func_attrs))


def _check_args(args, where: str) -> set[int]:
    if not isinstance(args, (list, tuple)):
        raise TEError(f"{where}: expected a list of tensors (inputs, then outputs), got {type(args).__name__}")
    seen: set[int] = set()
    output_seen = None
    for pos, a in enumerate(args):
        if not isinstance(a, (Tensor, Var)):
            raise TEError(f"{where}: argument {pos} is {type(a).__name__} {a!r}; expected a te.Tensor or te.var")
        if id(a) in seen:
            raise TEError(f"{where}: argument {pos} ({a.name!r}) is listed twice")
        seen.add(id(a))
        if isinstance(a, Tensor):
            if not a.is_placeholder:
                output_seen = output_seen or a
            elif output_seen is not None:
                raise TEError(f"{where}: input {a.name!r} (argument {pos}) comes after output "
                              f"{output_seen.name!r}; list inputs first, then outputs (destination-passing style)")
    if output_seen is None:
        raise TEError(f"{where}: no computed tensor among the arguments; expected at least one output")
    return seen


def _stages(outputs: list[Tensor], listed: set[int], where: str) -> list[Tensor]:
    """Computed tensors the outputs depend on, dependencies first (DFS post-order)."""
    order: list[Tensor] = []
    done: set[int] = set()

    def visit(t: Tensor, user: Optional[Tensor]) -> None:
        if id(t) in done:
            return
        done.add(id(t))
        if t.is_placeholder:
            if id(t) not in listed:
                raise TEError(f"{where}: stage {user.name!r} reads placeholder {t.name!r}, which is not "
                              "among the arguments; add it to the list (before the outputs)")
            return
        for dep in _reads(t.body):
            visit(dep, t)
        order.append(t)

    for t in outputs:
        visit(t, None)
    return order


def _reads(e: PrimExpr) -> list[Tensor]:
    out: list[Tensor] = []
    stack = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, TensorLoad):
            out.append(node.tensor)
        stack.extend(reversed(_children(node)))
    return out


class _Lowerer:
    """Maps TE nodes to IR nodes: tensors to buffers, index vars and reduce axes to
    block vars, by-name size vars to one Var per name."""

    def __init__(self, tensors: list[Tensor], stages: list[Tensor], where: str):
        self.where = where
        self.var_map: dict[int, Var] = {}
        canonical: dict[str, Var] = {}
        for t in tensors:
            for v in t.by_name:
                first = canonical.setdefault(v.name, v)
                if first is not v:
                    self.var_map[id(v)] = first
        # Index vars of every stage: one seen in another stage's body is a closure bug.
        self.axis_owner = {id(a): t for t in stages for a in t.axes}
        self.bound: set[int] = set()   # ids of loop and block vars made here
        self.buffers: dict[int, Buffer] = {}
        used: set[str] = set()
        for t in tensors:
            name, k = t.name, 1
            while name in used:
                name, k = f"{t.name}_{k}", k + 1
            used.add(name)
            shape = tuple(self.expr(d, {}, f"{where}: shape of {t.name!r}") for d in t.shape)
            self.buffers[id(t)] = Buffer(name, shape, t.dtype)

    def var(self, v: Var, ctx: dict, where: str) -> Var:
        if id(v) in ctx:
            return ctx[id(v)]
        if id(v) in self.var_map:
            return self.var_map[id(v)]
        owner = self.axis_owner.get(id(v))
        if owner is not None:
            raise TEError(f"{where}: uses index variable {v.name!r} of compute {owner.name!r}; "
                          "an fcompute may use only its own index arguments")
        return v

    def expr(self, e: PrimExpr, ctx: dict, where: str) -> PrimExpr:
        if isinstance(e, Var):
            return self.var(e, ctx, where)
        if isinstance(e, ReduceAxis):
            if id(e) not in ctx:
                raise TEError(f"{where}: uses reduce axis {e.name!r} outside a te.sum/max/min over it")
            return ctx[id(e)]
        if isinstance(e, TensorLoad):
            return BufferLoad(self.buffers[id(e.tensor)], tuple(self.expr(i, ctx, where) for i in e.indices))
        if isinstance(e, BufferLoad):
            raise TEError(f"{where}: reads Buffer {e.buffer.name!r} directly; compute bodies read "
                          "te tensors (te.placeholder / te.compute)")
        if isinstance(e, Reduce):
            raise TEError(f"{where}: a nested te.{e.combiner}; a reduction must be the whole body")
        return _map_children(e, lambda c: self.expr(c, ctx, where))

    def _fresh(self, name: str) -> tuple[Var, Var]:
        loop_var, block_var = Var(name, "int64"), Var("v_" + name, "int64")
        self.bound.update((id(loop_var), id(block_var)))
        return loop_var, block_var

    def stage(self, t: Tensor) -> Stmt:
        where = f"{self.where}: compute {t.name!r}"
        buf = self.buffers[id(t)]
        ctx: dict[int, Var] = {}
        loops: list[tuple[Var, PrimExpr, PrimExpr]] = []
        iter_vars: list[IterVar] = []
        for axis, extent in zip(t.axes, buf.shape):
            loop_var, block_var = self._fresh(axis.name)
            ctx[id(axis)] = block_var
            loops.append((loop_var, IntImm(0), extent))
            iter_vars.append(IterVar(block_var, Range(IntImm(0), extent), "S"))
        idx = tuple(iv.var for iv in iter_vars)
        init = None
        if isinstance(t.body, Reduce):
            red = t.body
            spatial_ctx = dict(ctx)
            for axis in red.axes:
                dom_where = f"{where}: domain of reduce axis {axis.name!r}"
                lo, ext = self.expr(axis.min, {}, dom_where), self.expr(axis.extent, {}, dom_where)
                loop_var, block_var = self._fresh(axis.name)
                ctx[id(axis)] = block_var
                loops.append((loop_var, lo, ext))
                iter_vars.append(IterVar(block_var, Range(lo, ext), "R"))
            source = self.expr(red.source, ctx, where)
            init = BufferStore(buf, self.expr(red.init, spatial_ctx, f"{where}: init"), idx)
            value = _COMBINE[red.combiner](BufferLoad(buf, idx), source, red.dtype)
        else:
            value = self.expr(t.body, ctx, where)
        block = Block(buf.name, tuple(iter_vars), BufferStore(buf, value, idx), init, annotations=t.attrs)
        stmt: Stmt = BlockRealize(tuple(lv for lv, _, _ in loops), _TRUE, block)
        for loop_var, lo, ext in reversed(loops):
            stmt = For(loop_var, lo, ext, "serial", stmt)
        return stmt


def _map_children(e: PrimExpr, fn: Callable[[PrimExpr], PrimExpr]) -> PrimExpr:
    """`e` with `fn` applied to its PrimExpr children; `e` itself when none changed."""
    changes = {}
    for f in fields(e):
        v = getattr(e, f.name)
        if isinstance(v, PrimExpr):
            new = fn(v)
        elif isinstance(v, tuple) and v and isinstance(v[0], PrimExpr):
            new = tuple(fn(x) for x in v)
            if all(a is b for a, b in zip(new, v)):
                continue
        else:
            continue
        if new is not v:
            changes[f.name] = new
    return replace(e, **changes) if changes else e


def _implicit_scalars(params: list, body: Stmt, bound: set[int]) -> list[Var]:
    """Vars the body or buffer shapes use that no param defines: the function needs
    them as scalar params (codegen binds a size var only from a bare param dim)."""
    defined = {id(p) for p in params if isinstance(p, Var)} | set(bound)
    for p in params:
        if isinstance(p, Buffer):
            defined.update(id(d) for d in p.shape if isinstance(d, Var))
    found: dict[int, Var] = {}
    for node in (*[p for p in params if isinstance(p, Buffer)], body):
        _collect_vars(node, found)
    return [v for k, v in found.items() if k not in defined]


def _collect_vars(node: Any, out: dict[int, Var]) -> None:
    """Every Var under `node` (statements, expressions, buffer shapes), in order."""
    if isinstance(node, Var):
        out.setdefault(id(node), node)
    elif isinstance(node, (tuple, list)):
        for x in node:
            _collect_vars(x, out)
    elif is_dataclass(node) and not isinstance(node, type):
        for f in fields(node):
            _collect_vars(getattr(node, f.name), out)
