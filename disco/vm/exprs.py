"""Shape expressions of the executable format, compiled to Python functions.

Bytecode carries shapes, offsets and kernel scalars as expression strings over the
heap `h` of symbolic dims ("h[0] * 4"). They come from a file, so before compiling
one this module checks that it uses only arithmetic, comparisons, conditionals,
`h[...]` and min/max/int/float: nothing else can be evaluated.
"""
from __future__ import annotations

import ast
from typing import Any, Callable

from ..errors import DiscoError

_ALLOWED_NODES = (ast.Expression, ast.Tuple, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp,
                  ast.IfExp, ast.Call, ast.Subscript, ast.Constant, ast.Name, ast.Load,
                  ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Div, ast.USub, ast.Not,
                  ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.And, ast.Or)
_NAMES = {"h": None, "min": min, "max": max, "int": int, "float": float}


def compile_exprs(exprs: list, what: str) -> Callable[[list], tuple]:
    """`lambda h: (e0, e1, ...)` for expression strings (or ints) over the heap `h`."""
    parts = [str(e) if isinstance(e, int) else e for e in exprs]
    src = "(" + "".join(f"{p}, " for p in parts) + ")"
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        raise DiscoError(f"{what}: malformed shape expression {src!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES) or \
                (isinstance(node, ast.Name) and node.id not in _NAMES) or \
                (isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool)):
            raise DiscoError(f"{what}: shape expression {src!r} uses {ast.dump(node)[:40]}, "
                             "which the executable format does not allow")
    env = {"__builtins__": {}, **{k: v for k, v in _NAMES.items() if v is not None}}
    return eval(compile(f"lambda h: {src}", "<shape>", "eval"), env)  # noqa: S307 (checked above)


def compile_expr(e, what: str) -> Callable[[list], Any]:
    """`lambda h: e` for one expression string (or int); see `compile_exprs`."""
    f = compile_exprs([e], what)
    return lambda h: f(h)[0]
