"""Generic traversal of the IR, for passes to subclass.

Two families, because the IR has two levels:

- `ExprVisitor` / `ExprMutator` walk graph functions: expressions, bindings,
  binding blocks, functions. Dispatch is by node class: a `Call` goes to
  `visit_call`, a `TupleGetItem` to `visit_tuple_get_item`, a `DataflowVar` to
  `visit_dataflow_var` (which defaults to `visit_var`). Override only what the
  pass is about; the defaults walk (or rebuild) everything else.
- `StmtExprVisitor` / `StmtExprMutator` walk tensor programs: statements and
  scalar expressions, buffer loads and stores included (`visit_for`,
  `visit_buffer_store`, `visit_buffer_load`, `visit_add`, ..., and `visit_buffer`
  at every place a buffer is named). For a rewrite that is one function rather than
  a class, `walk(node)` lists a tensor program's nodes and `rewrite(node, pre)`
  rebuilds it with `pre`'s replacements (`substitute_vars`, `replace_node` and
  `vars_in` are made of them). Both kinds enter the same nodes: statements, scalar
  expressions, block iterators, ranges and tuples of them; buffers and Vars are
  leaves (buffer shapes are not entered).

Mutators are copy-on-write: a node is rebuilt (with `dataclasses.replace`) only
when one of its children changed, so `mutator.visit_expr(e) is e` tells a pass
nothing happened. Mutators keep struct info as it was; a pass that changes types
re-normalises through `BlockBuilder`.

`post_order_visit(node, fn)` calls `fn` on every IR node under `node`, children
first, each node once.
"""
from __future__ import annotations

import re
from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable, Iterator, Optional, Union

from . import expr as E
from . import graph as G
from . import tir as T

__all__ = ["ExprVisitor", "ExprMutator", "StmtExprVisitor", "StmtExprMutator", "post_order_visit",
           "walk", "rewrite", "substitute_vars", "replace_node", "vars_in"]

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
_METHOD_CACHE: dict[tuple[type, type, str], Optional[str]] = {}


def _method_name(cls: type) -> str:
    return _SNAKE.sub("_", cls.__name__).lower()


def _dispatch(self: Any, node: Any, prefix: str, base: type) -> Optional[Callable]:
    """The most specific `visit_<class>` of `self` along `type(node)`'s MRO up to `base`."""
    key = (type(self), type(node), prefix)
    name = _METHOD_CACHE.get(key, "")
    if name == "":
        name = None
        for cls in type(node).__mro__:
            if cls is base or not issubclass(cls, base):
                break   # `visit_<base>` is the dispatcher itself
            candidate = prefix + _method_name(cls)
            if hasattr(self, candidate):
                name = candidate
                break
        _METHOD_CACHE[key] = name
    return getattr(self, name) if name else None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _children(node: Any) -> list[tuple[str, Any]]:
    """(field name, value) of every field of a dataclass node; [] for anything else."""
    cls = type(node)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in fields(node)) if is_dataclass(node) else ()
        _FIELD_NAMES[cls] = names
    return [(name, getattr(node, name)) for name in names]


# Graph level --------------------------------------------------------------------------


class ExprVisitor:
    """Read-only walk of graph IR. Entry points: `visit_expr`, `visit_binding`,
    `visit_block`, `visit_function` (or just `visit_expr(func)`)."""

    def visit_expr(self, expr: G.Expr) -> None:
        method = _dispatch(self, expr, "visit_", G.Expr)
        if method is None:
            raise TypeError(f"{type(self).__name__}: no visit method for {type(expr).__name__}")
        method(expr)

    # definition sites and leaves: override to collect vars, shapes, ...
    def visit_var_def(self, var: G.Var) -> None:
        """A parameter or binding target (its definition)."""

    def visit_var(self, var: G.Var) -> None:
        """A use of a variable (DataflowVar uses land here too)."""

    def visit_prim_expr(self, e: E.PrimExpr) -> None:
        """A scalar expression inside ShapeExpr / PrimValue."""

    def visit_constant(self, c: G.Constant) -> None: ...
    def visit_op(self, op: G.Op) -> None: ...
    def visit_global_var(self, gv: G.GlobalVar) -> None: ...
    def visit_extern_func(self, f: G.ExternFunc) -> None: ...
    def visit_string_imm(self, s: G.StringImm) -> None: ...
    def visit_data_type_imm(self, d: G.DataTypeImm) -> None: ...

    def visit_shape_expr(self, s: G.ShapeExpr) -> None:
        for v in s.values:
            self.visit_prim_expr(v)

    def visit_prim_value(self, p: G.PrimValue) -> None:
        self.visit_prim_expr(p.value)

    def visit_tuple(self, t: G.Tuple) -> None:
        for f in t.fields:
            self.visit_expr(f)

    def visit_tuple_get_item(self, t: G.TupleGetItem) -> None:
        self.visit_expr(t.tuple_value)

    def visit_call(self, call: G.Call) -> None:
        self.visit_expr(call.op)
        for a in call.args:
            self.visit_expr(a)

    def visit_if(self, node: G.If) -> None:
        self.visit_expr(node.condition)
        self.visit_expr(node.true_branch)
        self.visit_expr(node.false_branch)

    def visit_seq_expr(self, seq: G.SeqExpr) -> None:
        for block in seq.blocks:
            self.visit_block(block)
        self.visit_expr(seq.body)

    def visit_function(self, func: G.Function) -> None:
        for p in func.params:
            self.visit_var_def(p)
        self.visit_expr(func.body)

    def visit_block(self, block: G.BindingBlock) -> None:
        for b in block.bindings:
            self.visit_binding(b)

    def visit_binding(self, binding: G.Binding) -> None:
        if isinstance(binding, G.MatchCast):
            self.visit_match_cast(binding)
        else:
            self.visit_var_binding(binding)

    def visit_var_binding(self, binding: G.VarBinding) -> None:
        self.visit_expr(binding.value)
        self.visit_var_def(binding.var)

    def visit_match_cast(self, binding: G.MatchCast) -> None:
        self.visit_expr(binding.value)
        self.visit_var_def(binding.var)


BindingResult = Union[G.Binding, list, tuple, None]


class ExprMutator:
    """Copy-on-write rewrite of graph IR. `visit_expr` returns the new expression.

    `var_remap` maps old variables to new ones; every later use is replaced. A
    definition rewritten by `visit_var_def` is recorded there automatically.
    `visit_binding` may return one binding, a list of bindings (to expand), or
    None (to drop it)."""

    def __init__(self) -> None:
        self.var_remap: dict[G.Var, G.Expr] = {}

    def visit_expr(self, expr: G.Expr) -> G.Expr:
        method = _dispatch(self, expr, "visit_", G.Expr)
        if method is None:
            raise TypeError(f"{type(self).__name__}: no visit method for {type(expr).__name__}")
        return method(expr)

    def visit_var_def(self, var: G.Var) -> G.Var:
        """A definition; return a new Var to rename/retype it (uses follow)."""
        return var

    def _def(self, var: G.Var) -> G.Var:
        new = self.visit_var_def(var)
        if new is not var:
            self.var_remap[var] = new
        return new

    def visit_var(self, var: G.Var) -> G.Expr:
        return self.var_remap.get(var, var)

    def visit_prim_expr(self, e: E.PrimExpr) -> E.PrimExpr:
        return e

    def _leaf(self, e: G.Expr) -> G.Expr:
        return e

    visit_constant = visit_op = visit_global_var = visit_extern_func = _leaf
    visit_string_imm = visit_data_type_imm = _leaf

    def visit_shape_expr(self, s: G.ShapeExpr) -> G.Expr:
        values = tuple(self.visit_prim_expr(v) for v in s.values)
        return s if _same(values, s.values) else replace(s, values=values)

    def visit_prim_value(self, p: G.PrimValue) -> G.Expr:
        v = self.visit_prim_expr(p.value)
        return p if v is p.value else replace(p, value=v)

    def visit_tuple(self, t: G.Tuple) -> G.Expr:
        new = tuple(self.visit_expr(f) for f in t.fields)
        return t if _same(new, t.fields) else replace(t, fields=new)

    def visit_tuple_get_item(self, t: G.TupleGetItem) -> G.Expr:
        v = self.visit_expr(t.tuple_value)
        return t if v is t.tuple_value else replace(t, tuple_value=v)

    def visit_call(self, call: G.Call) -> G.Expr:
        op = self.visit_expr(call.op)
        args = tuple(self.visit_expr(a) for a in call.args)
        if op is call.op and _same(args, call.args):
            return call
        return replace(call, op=op, args=args)

    def visit_if(self, node: G.If) -> G.Expr:
        c, t, f = (self.visit_expr(x) for x in (node.condition, node.true_branch, node.false_branch))
        if c is node.condition and t is node.true_branch and f is node.false_branch:
            return node
        return replace(node, condition=c, true_branch=t, false_branch=f)

    def visit_seq_expr(self, seq: G.SeqExpr) -> G.Expr:
        blocks = tuple(self.visit_block(b) for b in seq.blocks)
        body = self.visit_expr(seq.body)
        if body is seq.body and _same(blocks, seq.blocks):
            return seq
        return replace(seq, blocks=blocks, body=body)

    def visit_function(self, func: G.Function) -> G.Expr:
        params = tuple(self._def(p) for p in func.params)
        body = self.visit_expr(func.body)
        if body is func.body and _same(params, func.params):
            return func
        if not isinstance(body, G.SeqExpr):
            body = G.SeqExpr((), body, body.struct_info)
        return replace(func, params=params, body=body)

    def visit_block(self, block: G.BindingBlock) -> G.BindingBlock:
        out: list[G.Binding] = []
        for b in block.bindings:
            res = self.visit_binding(b)
            if res is None:
                continue
            if isinstance(res, (list, tuple)):
                out.extend(res)
            else:
                out.append(res)
        return block if _same(out, block.bindings) else replace(block, bindings=tuple(out))

    def visit_binding(self, binding: G.Binding) -> BindingResult:
        if isinstance(binding, G.MatchCast):
            return self.visit_match_cast(binding)
        return self.visit_var_binding(binding)

    def visit_var_binding(self, binding: G.VarBinding) -> BindingResult:
        value = self.visit_expr(binding.value)
        var = self._def(binding.var)
        if value is binding.value and var is binding.var:
            return binding
        return G.VarBinding(var, value)

    def visit_match_cast(self, binding: G.MatchCast) -> BindingResult:
        value = self.visit_expr(binding.value)
        var = self._def(binding.var)
        if value is binding.value and var is binding.var:
            return binding
        return replace(binding, var=var, value=value)


def _same(new, old) -> bool:
    return len(new) == len(old) and all(x is y for x, y in zip(new, old))


# Tensor programs ------------------------------------------------------------------------


class StmtExprVisitor:
    """Read-only walk of tensor programs. `visit_stmt` and `visit_prim_expr`
    dispatch to `visit_<snake_class>` (`visit_for`, `visit_buffer_load`, ...)
    when defined, else walk children generically. `visit_buffer` sees every
    buffer named by a load, store, allocation or PrimFunc parameter."""

    def visit_prim_func(self, func: T.PrimFunc) -> None:
        for p in func.params:
            if isinstance(p, T.Buffer):
                self.visit_buffer(p)
            else:
                self.visit_prim_expr(p)
        self.visit_stmt(func.body)

    def visit_stmt(self, stmt: T.Stmt) -> None:
        method = _dispatch(self, stmt, "visit_", T.Stmt)
        (method or self.generic_visit)(stmt)

    def visit_prim_expr(self, e: E.PrimExpr) -> None:
        method = _dispatch(self, e, "visit_", E.PrimExpr)
        (method or self.generic_visit)(e)

    def visit_buffer(self, buf: T.Buffer) -> None:
        """A buffer named somewhere; its shape is not walked."""

    def generic_visit(self, node: Any) -> None:
        for _, v in _children(node):
            self._visit_any(v)

    def _visit_any(self, v: Any) -> None:
        if isinstance(v, T.Stmt):
            self.visit_stmt(v)
        elif isinstance(v, E.PrimExpr):
            self.visit_prim_expr(v)
        elif isinstance(v, T.Buffer):
            self.visit_buffer(v)
        elif isinstance(v, (T.IterVar, T.Range)):
            self.generic_visit(v)
        elif isinstance(v, tuple):
            for x in v:
                self._visit_any(x)


class StmtExprMutator:
    """Copy-on-write rewrite of tensor programs; same dispatch as StmtExprVisitor,
    every method returns the (possibly new) node. Override `visit_var` to rename
    or substitute scalar vars (loop vars included), `visit_buffer` to swap buffers."""

    def visit_prim_func(self, func: T.PrimFunc) -> T.PrimFunc:
        params = tuple(self.visit_buffer(p) if isinstance(p, T.Buffer) else self.visit_prim_expr(p)
                       for p in func.params)
        body = self.visit_stmt(func.body)
        if body is func.body and _same(params, func.params):
            return func
        return replace(func, params=params, body=body)

    def visit_stmt(self, stmt: T.Stmt) -> T.Stmt:
        method = _dispatch(self, stmt, "visit_", T.Stmt)
        return (method or self.generic_visit)(stmt)

    def visit_prim_expr(self, e: E.PrimExpr) -> E.PrimExpr:
        method = _dispatch(self, e, "visit_", E.PrimExpr)
        return (method or self.generic_visit)(e)

    def visit_var(self, v: E.Var) -> E.PrimExpr:
        return v

    def visit_buffer(self, buf: T.Buffer) -> T.Buffer:
        return buf

    def generic_visit(self, node: Any) -> Any:
        changes = {}
        for name, v in _children(node):
            nv = self._visit_any(v)
            if nv is not v:
                changes[name] = nv
        return replace(node, **changes) if changes else node

    def _visit_any(self, v: Any) -> Any:
        if isinstance(v, T.Stmt):
            return self.visit_stmt(v)
        if isinstance(v, E.PrimExpr):
            return self.visit_prim_expr(v)
        if isinstance(v, T.Buffer):
            return self.visit_buffer(v)
        if isinstance(v, (T.IterVar, T.Range)):
            return self.generic_visit(v)
        if isinstance(v, tuple):
            new = tuple(self._visit_any(x) for x in v)
            return v if _same(new, v) else new
        return v


# Tensor programs as functions ---------------------------------------------------------

_ENTERED = (T.Stmt, E.PrimExpr, T.IterVar, T.Range, tuple)   # what walk/rewrite go into


def walk(node: Any) -> Iterator[Any]:
    """`node` and everything under it, pre-order: statements, expressions, block
    iterators, ranges, tuples, and the buffers held in tuples (`alloc_buffers`)."""
    yield node
    if isinstance(node, tuple):
        for x in node:
            yield from walk(x)
    elif isinstance(node, _ENTERED) and not isinstance(node, E.Var):
        for _, sub in _children(node):
            if isinstance(sub, _ENTERED):
                yield from walk(sub)


def rewrite(node: Any, pre: Callable[[Any], Optional[Any]]) -> Any:
    """`node` rebuilt with replacements: where `pre(n)` is not None it replaces `n`
    (and is not entered); everything else is rebuilt from its rewritten children.
    Copy-on-write: an unchanged subtree is returned as is (`rewrite(x, pre) is x`)."""
    out = pre(node)
    if out is not None:
        return out
    if isinstance(node, tuple):
        items = tuple(rewrite(x, pre) for x in node)
        return node if _same(items, node) else items
    if isinstance(node, _ENTERED) and not isinstance(node, E.Var):
        changes = {}
        for name, old in _children(node):
            if isinstance(old, _ENTERED):
                new = rewrite(old, pre)
                if new is not old:
                    changes[name] = new
        return replace(node, **changes) if changes else node
    return node


def substitute_vars(node: Any, vmap: dict[int, Any]) -> Any:
    """`node` (statements too) with each Var whose id is a key of `vmap` replaced by
    its value. (`arith.substitute` does one expression, keyed by the Vars.)"""
    if not vmap:
        return node
    return rewrite(node, lambda n: vmap.get(id(n)) if isinstance(n, E.Var) else None)


def replace_node(root: Any, target: Any, new: Any) -> Any:
    """`root` with the node `target` (found by identity) replaced by `new`."""
    return rewrite(root, lambda n: new if n is target else None)


def vars_in(node: Any) -> set[int]:
    """The ids of the Vars under `node` (loop vars and block iterators included)."""
    return {id(n) for n in walk(node) if isinstance(n, E.Var)}


# post-order -------------------------------------------------------------------------


_NODE_TYPES = (G.Expr, E.PrimExpr, T.Stmt, G.VarBinding, G.MatchCast, G.BindingBlock,
               T.IterVar, T.Range, T.Buffer, T.PrimFunc)


def post_order_visit(node: Any, fn: Callable[[Any], None]) -> None:
    """Call `fn` on every IR node under `node` (itself included), children first,
    each node object once. Struct info is metadata and is not entered; buffer
    shapes are (they hold the symbolic sizes of a tensor program)."""
    seen: set[int] = set()
    keep: list[Any] = []   # keep visited nodes alive so ids stay unique

    def go(x: Any) -> None:
        if isinstance(x, tuple):
            for y in x:
                go(y)
            return
        if not isinstance(x, _NODE_TYPES) or id(x) in seen:
            return
        seen.add(id(x))
        keep.append(x)
        for name, v in _children(x):
            if name != "struct_info" and name != "ret_struct_info":
                go(v)
        fn(x)

    go(node)
