"""The script printer: IR -> Python-syntax text that `compiler.script.parse` reads back.

    # from compiler.script import I, R, T

    @I.ir_module
    class Module:
        @T.prim_func
        def mm(X: T.Buffer(("n", 128), "float32"), ...):
            n = T.int64()
            for i, j, k in T.grid(n, 64, 128):
                with T.block("Y"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    ...

        @R.function
        def main(x: R.Tensor(("n", 128), dtype="float32")) -> R.Tensor(("n", 64), dtype="float32"):
            n = T.int64()
            with R.dataflow():
                lv: R.Tensor((n, 64), dtype="float32") = R.call_tir(cls.mm, (x,), out_sinfo=...)
                R.output(lv)
            return lv

Rules that make printing lossless (the parser implements the reverse of each):
- Every symbolic size of a function is declared first (`n = T.int64()`); in the
  signature sizes are written as strings (`("n", 128)`, `("n * 2",)`), so the
  annotations of a decorated class evaluate in plain Python.
- Names are made unique per function (`lv`, `lv1`, ...; see `Namer`).
- Literals carry their dtype unless the parser would give them that dtype anyway:
  int64 ints print bare, other ints as `T.int32(5)`, floats as `T.float32(0.5)`
  (repr of the Python float, so values round-trip exactly).
- A loop `range(lo, lo + extent)` and a block axis `(lo, lo + extent)` keep the
  extent expression as written; the parser reads it back from the `+`.
- A LetStmt that is not last in its sequence prints as `with T.LetStmt(v) as x:`;
  an `Allocate` as `with T.allocate(shape, dtype, scope=...) as A:`.
"""
from __future__ import annotations

import keyword
import math
import re
from typing import Any, Optional

import numpy as np

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir import tir as T
from ..ir.attrs import Attrs
from ..ir.errors import CompilerError
from ..ir.module import IRModule

__all__ = ["print_module", "print_function", "print_node", "Namer"]

HEADER = "# from compiler.script import I, R, T"
_INDENT = "    "
_RESERVED = {"I", "R", "T", "cls", "Module", "range", "float", "int", "np", "metadata",
             "True", "False", "None", "self"} | set(keyword.kwlist)
_TRUE = E.IntImm(1, "bool")


class Namer:
    """Unique printable names for variables, by identity of the variable object."""

    def __init__(self, reserved=()):
        self.used = set(_RESERVED) | set(reserved)
        self.names: dict[Any, str] = {}

    def define(self, obj: Any, hint: str) -> str:
        if obj in self.names:
            return self.names[obj]
        base = re.sub(r"\W", "_", hint or "v") or "v"
        if base[0].isdigit():
            base = "v" + base
        name, i = base, 0
        sep = "_" if base[-1].isdigit() else ""
        while name in self.used:
            i += 1
            name = f"{base}{sep}{i}"
        self.used.add(name)
        self.names[obj] = name
        return name

    def get(self, obj: Any, hint: str) -> str:
        return self.names.get(obj) or self.define(obj, hint)


# Scalar expressions ------------------------------------------------------------------

_BIN = {E.Add: ("+", 11), E.Sub: ("-", 11), E.Mul: ("*", 12), E.Div: ("/", 12),
        E.FloorDiv: ("//", 12), E.FloorMod: ("%", 12), E.LT: ("<", 6), E.LE: ("<=", 6),
        E.GT: (">", 6), E.GE: (">=", 6), E.EQ: ("==", 6), E.NE: ("!=", 6),
        E.And: ("and", 4), E.Or: ("or", 3)}
_ATOM = 20


def float_text(value: float) -> str:
    """repr of a float, with inf/nan spelt as strings the parser accepts."""
    if math.isnan(value) or math.isinf(value):
        return f'"{value!r}"'
    return repr(float(value))


def _parsed_literal(lit: E.PrimExpr, other: E.PrimExpr, lit_is_left: bool) -> Optional[E.PrimExpr]:
    """What the parser makes of `lit` printed bare next to `other` (the rules of
    compiler.ir.expr._binary)."""
    if isinstance(lit, E.IntImm):
        v: Any = bool(lit.value) if lit.dtype == "bool" else lit.value
    else:
        v = lit.value
    if lit_is_left:
        dt = other.dtype if not isinstance(v, float) else None
    else:
        dt = other.dtype if not isinstance(v, float) or E.is_float_dtype(other.dtype) else None
    try:
        return E.const(v, dt)
    except (TypeError, ValueError):
        return None


class ExprPrinter:
    """Prints PrimExprs; `names` gives variables (and buffers) their names."""

    def __init__(self, namer: Namer):
        self.namer = namer

    def var(self, v: E.Var) -> str:
        return self.namer.get(v, v.name)

    def expr(self, e: Any) -> str:
        return self._p(e)[0]

    def literal(self, e: E.PrimExpr) -> str:
        """A literal with its dtype spelt out unless it is the default."""
        if isinstance(e, E.IntImm):
            if e.dtype == "bool":
                return "True" if e.value else "False"
            return str(e.value) if e.dtype == "int64" else f"T.{e.dtype}({e.value})"
        return f"T.{e.dtype}({float_text(e.value)})"

    def _p(self, e: Any) -> tuple[str, int]:
        if isinstance(e, bool):
            return repr(e), _ATOM
        if isinstance(e, int):
            return (str(e), _ATOM) if e >= 0 else (str(e), 13)
        if isinstance(e, float):
            return float_text(e), _ATOM
        if isinstance(e, E.Var):
            return self.var(e), _ATOM
        if isinstance(e, E.IntImm):
            text = self.literal(e)
            return text, 13 if e.value < 0 and text[0] == "-" else _ATOM
        if isinstance(e, E.FloatImm):
            return self.literal(e), _ATOM
        if isinstance(e, T.BufferLoad):
            return f"{self.namer.get(e.buffer, e.buffer.name)}[{self._indices(e.indices)}]", _ATOM
        cls = type(e)
        if cls in _BIN:
            sym, prec = _BIN[cls]
            a, b = self._operand(e.a, e.b, True), self._operand(e.b, e.a, False)
            if a[1] < prec or (prec == 6 and a[1] <= prec):
                a = (f"({a[0]})", _ATOM)
            if b[1] <= prec:
                b = (f"({b[0]})", _ATOM)
            text = f"{a[0]} {sym} {b[0]}"
            if e.dtype != _result_dtype(e):
                return f"T.{cls.__name__}({a[0]}, {b[0]}, dtype={e.dtype!r})", _ATOM
            return text, prec
        if isinstance(e, E.Not):
            a = self._p(e.a)
            return f"not {a[0] if a[1] > 5 else '(' + a[0] + ')'}", 5
        if isinstance(e, (E.Min, E.Max)):
            name = "min" if isinstance(e, E.Min) else "max"
            dt = "" if e.dtype == _result_dtype(e) else f", dtype={e.dtype!r}"
            return f"T.{name}({self.expr(e.a)}, {self.expr(e.b)}{dt})", _ATOM
        if isinstance(e, E.Cast):
            return f"T.Cast({e.dtype!r}, {self.expr(e.value)})", _ATOM
        if isinstance(e, E.Select):
            dt = "" if e.dtype == e.true_value.dtype else f", dtype={e.dtype!r}"
            return (f"T.Select({self.expr(e.condition)}, {self.expr(e.true_value)}, "
                    f"{self.expr(e.false_value)}{dt})"), _ATOM
        if isinstance(e, E.Call):
            args = ", ".join(self.expr(a) for a in e.args)
            if e.op in E.INTRINSICS and e.op not in ("max", "min") and e.args and \
                    e.dtype == e.args[0].dtype:
                return f"T.{e.op}({args})", _ATOM
            return f"T.call_intrin({e.dtype!r}, {e.op!r}{', ' if args else ''}{args})", _ATOM
        if isinstance(e, E.StringImm):
            return f"T.StringImm({e.value!r})", _ATOM
        raise CompilerError(f"script printer: cannot print scalar expression {e!r}")

    def explicit(self, x: E.PrimExpr) -> str:
        """A literal with its dtype always spelt out."""
        if isinstance(x, E.IntImm):
            return f"T.{x.dtype}({bool(x.value) if x.dtype == 'bool' else x.value})"
        return f"T.{x.dtype}({float_text(x.value)})"

    def _operand(self, x: E.PrimExpr, other: E.PrimExpr, left: bool) -> tuple[str, int]:
        if not isinstance(x, (E.IntImm, E.FloatImm)):
            return self._p(x)
        if left and isinstance(other, (E.IntImm, E.FloatImm)):
            return self.explicit(x), _ATOM     # two bare literals would fold in Python
        parsed = _parsed_literal(x, other, left)
        if parsed == x and not (isinstance(x, E.FloatImm) and not math.isfinite(x.value)):
            if isinstance(x, E.IntImm):
                text = ("True" if x.value else "False") if x.dtype == "bool" else str(x.value)
            else:
                text = repr(x.value)
            return text, 13 if text.startswith("-") else _ATOM
        return self.explicit(x), _ATOM

    def _indices(self, indices) -> str:
        if not indices:
            return "()"
        return ", ".join(self.expr(i) for i in indices)


def _result_dtype(e: E.PrimExpr) -> str:
    return E._result_dtype(type(e), e.a, e.b)


# Values (attributes, global infos) ---------------------------------------------------


def value_text(v: Any, expr_fn, sinfo_fn) -> str:
    """Attribute-like values: None, bool, int, float, str, PrimExpr, graph Expr,
    StructInfo, tuples (as lists), mappings (as dicts), device meshes."""
    if v is None or isinstance(v, (bool, str)):
        return repr(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f) or math.isinf(f):
            return f"float({float_text(f)})"
        return repr(v) if isinstance(v, float) else repr(f)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x, expr_fn, sinfo_fn) for x in v) + "]"
    if isinstance(v, (dict, Attrs)):
        return "{" + ", ".join(f"{k!r}: {value_text(x, expr_fn, sinfo_fn)}" for k, x in v.items()) + "}"
    if isinstance(v, S.StructInfo):
        return sinfo_fn(v)
    if isinstance(v, (E.PrimExpr, G.Expr)):
        return expr_fn(v)
    if type(v).__name__ == "DeviceMesh":
        shape = "(" + ", ".join(str(s) for s in v.shape) + ("," if len(v.shape) == 1 else "") + ")"
        ids = tuple(v.device_ids)
        if ids == tuple(range(ids[0], ids[0] + len(ids))) if ids else False:
            return f"R.device_mesh({shape}, I.Range({ids[0]}, {ids[0] + len(ids)}))"
        return f"R.device_mesh({shape}, {list(ids)})"
    raise CompilerError(f"script printer: cannot print attribute value of type "
                        f"{type(v).__name__}: {v!r}")


# Collecting symbolic vars -----------------------------------------------------------


def collect_vars(node: Any) -> tuple[list[E.Var], set]:
    """Scalar Vars under `node` in first-appearance order, and the set of those that
    statements define (loop vars, block iterators, let vars)."""
    found: dict[E.Var, None] = {}
    defined: set = set()
    seen: set[int] = set()
    order: list[E.Var] = []

    def visit(x: Any) -> None:
        if isinstance(x, E.Var):
            if x not in found:
                found[x] = None
                order.append(x)
            return
        if isinstance(x, (str, int, float, bool, np.ndarray, np.generic)) or x is None:
            return
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, T.For):
            defined.add(x.loop_var)
        elif isinstance(x, T.IterVar):
            defined.add(x.var)
        elif isinstance(x, T.LetStmt):
            defined.add(x.var)
        if isinstance(x, (tuple, list)):
            for y in x:
                visit(y)
        elif isinstance(x, Attrs):
            for y in x.values():
                visit(y)
        elif hasattr(x, "__dataclass_fields__"):
            if isinstance(x, G.Constant):
                return
            for f in x.__dataclass_fields__:
                visit(getattr(x, f))

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return order, defined


# Entry points ------------------------------------------------------------------------


def print_module(mod: IRModule) -> str:
    """The module as script text (deterministic)."""
    from .printer_func import FunctionPrinter
    lines = [HEADER, "", "@I.ir_module", "class Module:"]
    body: list[str] = []
    gp = FunctionPrinter(Namer(), mod)
    if len(mod.global_infos):
        body.extend(f"I.module_global_infos({gp.wrapped_value(dict(mod.global_infos.items()), 0, 96)})"
                    .split("\n"))
    if len(mod.attrs):
        body.extend(f"I.module_attrs({gp.wrapped_value(dict(mod.attrs.items()), 0, 96)})".split("\n"))
    items = mod.functions.items() if isinstance(mod.functions, dict) else mod.functions
    for name, func in items:
        if body:
            body.append("")
        body.extend(print_function_lines(func, name, mod))
    if not body:
        body.append("pass")
    lines.extend(_INDENT + line if line else "" for line in body)
    return "\n".join(lines) + "\n"


def print_function_lines(func: Any, name: str, mod: Optional[IRModule] = None) -> list[str]:
    from .printer_func import FunctionPrinter
    return FunctionPrinter(Namer(), mod).function(func, name)


def print_function(func: Any, name: str = "main") -> str:
    """A single graph function or tensor program, with its decorator."""
    return HEADER + "\n\n" + "\n".join(print_function_lines(func, name)) + "\n"


def print_node(node: Any) -> str:
    """Script text of a module, a function, a statement, an expression or a struct info."""
    from .printer_func import FunctionPrinter
    if isinstance(node, IRModule):
        return print_module(node)
    if isinstance(node, (G.Function, T.PrimFunc)):
        name = node.attrs.get("global_symbol", "main") if node.attrs else "main"
        return print_function(node, name)
    p = FunctionPrinter(Namer(), None)
    if isinstance(node, T.Stmt):
        return "\n".join(p.stmt(node)) + "\n"
    if isinstance(node, S.StructInfo):
        return p.sinfo(node)
    if isinstance(node, (G.Expr, E.PrimExpr)):
        return p.expr(node)
    return p.value(node)
