"""Symbolic integer arithmetic (INTERIM STUB: being replaced by a canonical simplifier).

API (stable): simplify, prove_equal, prove_divisible, substitute, evaluate, free_vars.
"""
from __future__ import annotations

from .expr import IntImm, PrimExpr, Var, as_expr


def simplify(e: PrimExpr) -> PrimExpr:
    return as_expr(e)


def prove_equal(a, b) -> bool:
    a, b = as_expr(a), as_expr(b)
    if isinstance(a, IntImm) and isinstance(b, IntImm):
        return a.value == b.value
    return a == b


def prove_divisible(a, k: int) -> bool:
    a = as_expr(a)
    return isinstance(a, IntImm) and a.value % k == 0


def substitute(e, mapping):
    raise NotImplementedError


def evaluate(e, binding):
    raise NotImplementedError


def free_vars(e) -> list[Var]:
    raise NotImplementedError
