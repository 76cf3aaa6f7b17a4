"""Small traversals of tensor programs used by the schedule primitives: rebuild a tree
with replacements, substitute vars, find loops and blocks."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

from ..ir import expr as E
from ..ir import tir as T
from ..ir.errors import ScheduleError

_LEAF_TYPES = (T.Buffer, str, int, float, type(None))


def rewrite(node, pre: Callable[[object], Optional[object]]):
    """Rebuild `node` bottom-up; `pre(n)` returning non-None replaces `n` (not descended).
    Unchanged subtrees keep their identity."""
    out = pre(node)
    if out is not None:
        return out
    if isinstance(node, tuple):
        items = tuple(rewrite(x, pre) for x in node)
        return node if all(a is b for a, b in zip(items, node)) else items
    if isinstance(node, (E.PrimExpr, T.Stmt, T.IterVar, T.Range)) and not isinstance(node, E.Var):
        changes = {}
        for f in dataclasses.fields(node):
            old = getattr(node, f.name)
            if isinstance(old, _LEAF_TYPES) or not isinstance(old, (E.PrimExpr, T.Stmt, tuple,
                                                                      T.IterVar, T.Range)):
                continue
            new = rewrite(old, pre)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(node, **changes) if changes else node
    return node


def substitute(node, vmap: dict):
    """`node` with each Var whose id is a key of `vmap` replaced by its value."""
    if not vmap:
        return node
    return rewrite(node, lambda n: vmap.get(id(n)) if isinstance(n, E.Var) else None)


def replace_node(root, target, new):
    """`root` with the node `target` (by identity) replaced by `new`."""
    return rewrite(root, lambda n: new if n is target else None)


def walk(node) -> Iterator[object]:
    """Every statement and expression under `node`, pre-order."""
    yield node
    if isinstance(node, tuple):
        for x in node:
            yield from walk(x)
    elif isinstance(node, (E.PrimExpr, T.Stmt, T.IterVar, T.Range)) and not isinstance(node, E.Var):
        for f in dataclasses.fields(node):
            sub = getattr(node, f.name)
            if isinstance(sub, (E.PrimExpr, T.Stmt, tuple, T.IterVar, T.Range)):
                yield from walk(sub)


def vars_in(node) -> set[int]:
    return {id(n) for n in walk(node) if isinstance(n, E.Var)}


def loops_of(root) -> list[T.For]:
    return [n for n in walk(root) if isinstance(n, T.For)]


def find_loop(func: T.PrimFunc, loop: E.Var) -> T.For:
    found = [f for f in loops_of(func.body) if f.loop_var is loop]
    if not found:
        raise ScheduleError(f"no loop over {loop!r} in the PrimFunc; loops: "
                            f"{[f.loop_var.name for f in loops_of(func.body)]}")
    if len(found) > 1:
        raise ScheduleError(f"loop var {loop.name!r} is bound by {len(found)} loops; "
                            "use Schedule(...), which renames duplicates, first")
    return found[0]


def loop_paths(root, block_name: str) -> list[tuple[list[T.For], T.BlockRealize]]:
    """(enclosing loops inside the parent block, realize) for each block named `block_name`."""
    out = []

    def visit(node, loops):
        if isinstance(node, T.For):
            visit(node.body, loops + [node])
        elif isinstance(node, T.BlockRealize):
            if node.block.name == block_name:
                out.append((loops, node))
            visit(node.block.body, [])
        elif isinstance(node, T.SeqStmt):
            for s in node.stmts:
                visit(s, loops)
        elif isinstance(node, T.IfThenElse):
            visit(node.then_case, loops)
            if node.else_case is not None:
                visit(node.else_case, loops)
        elif isinstance(node, (T.LetStmt, T.Allocate)):
            visit(node.body, loops)
        elif isinstance(node, T.Block):
            visit(node.body, [])

    visit(root, [])
    return out


def find_block(func: T.PrimFunc, name: str) -> tuple[list[T.For], T.BlockRealize]:
    found = loop_paths(func.body, name)
    if len(found) != 1:
        names = sorted({n.block.name for n in walk(func.body) if isinstance(n, T.BlockRealize)})
        raise ScheduleError(f"expected one block named {name!r}, found {len(found)}; blocks: {names}")
    return found[0]


def block_realizes(root) -> list[T.BlockRealize]:
    return [n for n in walk(root) if isinstance(n, T.BlockRealize)]


def reduction_loop_ids(root) -> set[int]:
    """Ids of loop vars that feed a reduction iterator of some block under `root`."""
    ids: set[int] = set()
    for r in block_realizes(root):
        for iv, value in zip(r.block.iter_vars, r.iter_values):
            if iv.kind != "S":
                ids |= vars_in(value)
    return ids


def dedup_loop_vars(func: T.PrimFunc) -> T.PrimFunc:
    """Give every loop its own loop Var (primitives address loops by their var)."""
    seen: set[int] = set()

    def pre(n):
        if not isinstance(n, T.For):
            return None
        body = rewrite(n.body, pre)
        if id(n.loop_var) in seen:
            fresh = E.Var(n.loop_var.name, n.loop_var.dtype)
            return dataclasses.replace(n, loop_var=fresh, body=substitute(body, {id(n.loop_var): fresh}))
        seen.add(id(n.loop_var))
        return n if body is n.body else dataclasses.replace(n, body=body)

    body = rewrite(func.body, pre)
    return func if body is func.body else dataclasses.replace(func, body=body)


def with_body(func: T.PrimFunc, body: T.Stmt) -> T.PrimFunc:
    return dataclasses.replace(func, body=body)
