"""Finding loops and blocks in a tensor program, for the schedule primitives and the
schedule passes (compiler/transform/*schedule*.py). The generic traversals they are
built on (`walk`, `rewrite`, `substitute_vars`, ...) are compiler.ir.visitor's."""
from __future__ import annotations

import dataclasses

from ..ir import expr as E
from ..ir import tir as T
from ..ir.errors import ScheduleError
from ..ir.visitor import rewrite, substitute_vars, vars_in, walk

__all__ = ["find_loop", "find_block", "loops_of", "loop_paths", "block_realizes",
           "reduction_loop_ids", "dedup_loop_vars", "with_body"]


def loops_of(root) -> list[T.For]:
    """Every loop under `root`, pre-order."""
    return [n for n in walk(root) if isinstance(n, T.For)]


def find_loop(func: T.PrimFunc, loop: E.Var) -> T.For:
    """The loop of `func` over `loop`; ScheduleError when there is none or several."""
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
    """loop_paths of the one block named `name`; ScheduleError unless there is one."""
    found = loop_paths(func.body, name)
    if len(found) != 1:
        names = sorted({n.block.name for n in walk(func.body) if isinstance(n, T.BlockRealize)})
        raise ScheduleError(f"expected one block named {name!r}, found {len(found)}; blocks: {names}")
    return found[0]


def block_realizes(root) -> list[T.BlockRealize]:
    """Every BlockRealize under `root`, pre-order."""
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
            return dataclasses.replace(n, loop_var=fresh, body=substitute_vars(body, {id(n.loop_var): fresh}))
        seen.add(id(n.loop_var))
        return n if body is n.body else dataclasses.replace(n, body=body)

    body = rewrite(func.body, pre)
    return func if body is func.body else dataclasses.replace(func, body=body)


def with_body(func: T.PrimFunc, body: T.Stmt) -> T.PrimFunc:
    """`func` with its body replaced."""
    return dataclasses.replace(func, body=body)
