"""Evaluating script expressions from Python's `ast`, without executing user code.

`Evaluator` turns an expression node into a value: a graph Expr, a PrimExpr, a
StructInfo, a Buffer, or a plain Python value (int, float, str, list, dict). Names
resolve through a stack of scopes; `R.xxx(...)`, `T.xxx(...)` and `I.xxx(...)` calls
dispatch to the tables below or, for operators, to the registry's constructor (so a
call's struct info comes from the operator's own rule). Every error becomes a
ParseError at the node's line and column in the user's text.
"""
from __future__ import annotations

import ast
import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir import tir as T
from ..ir.errors import CompilerError, ParseError

ROOTS = ("R", "T", "I")
_BINOPS = {ast.Add: E.Add, ast.Sub: E.Sub, ast.Mult: E.Mul, ast.Div: E.Div,
           ast.FloorDiv: E.FloorDiv, ast.Mod: E.FloorMod}
_CMPOPS = {ast.Lt: E.LT, ast.LtE: E.LE, ast.Gt: E.GT, ast.GtE: E.GE, ast.Eq: E.EQ, ast.NotEq: E.NE}
_PY_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b,
              ast.Mod: lambda a, b: a % b}
NODE_CLASSES = {c.__name__: c for c in E.BINARY_NODES}


class Source:
    """The user's text and where it sits in its file (for positions in errors)."""

    def __init__(self, text: str, line_offset: int = 0, col_offset: int = 0,
                 lines: Optional[list[str]] = None):
        self.text = text
        self.line_offset = line_offset
        self.col_offset = col_offset
        self.lines = lines if lines is not None else text.splitlines()

    def error(self, node: Any, message: str) -> ParseError:
        if node is None or not hasattr(node, "lineno"):
            err = ParseError(message)
        else:
            src = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else None
            err = ParseError(message, node.lineno + self.line_offset,
                             node.col_offset + self.col_offset + 1,
                             src.rstrip("\n") if src is not None else None)
        err.raw_message = message
        return err


@dataclass(frozen=True)
class ModuleRef:
    """`cls` / `Module` inside an `@I.ir_module` class; `functions` is None when a
    single function is parsed on its own (any `cls.f` is then taken on trust)."""
    functions: Optional[tuple[str, ...]]


@dataclass(frozen=True)
class DtypeMarker:
    """`T.int64` written without a call (a scalar parameter annotation)."""
    dtype: str


class OutOfScope:
    """A dataflow variable after its block ended."""

    def __init__(self, name: str):
        self.name = name


def dotted(node: ast.AST) -> Optional[str]:
    """"R.nn.relu" for an attribute chain rooted at R, T or I; else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ROOTS:
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def operands(a: Any, b: Any) -> tuple[E.PrimExpr, E.PrimExpr]:
    """Literals next to a PrimExpr take its dtype, as Python operators on nodes do."""
    if not isinstance(a, E.PrimExpr):
        a = E.const(a, b.dtype if isinstance(b, E.PrimExpr) and not isinstance(a, float) else None)
    if not isinstance(b, E.PrimExpr):
        b = E.const(b, a.dtype if not isinstance(b, float) or E.is_float_dtype(a.dtype) else None)
    return a, b


def binary(cls, a: Any, b: Any, dtype: Optional[str] = None) -> E.PrimExpr:
    """A node of `cls`, built as written (no constant folding, so printing is lossless)."""
    a, b = operands(a, b)
    return cls(a, b, dtype or E._result_dtype(cls, a, b))


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, bool)


class Evaluator:
    """Expression evaluation shared by the graph-function and tensor-program parsers."""

    def __init__(self, src: Source, module: Optional[ModuleRef] = None,
                 class_name: Optional[str] = None):
        self.src = src
        self.module = module
        self.class_name = class_name
        self.scopes: list[dict[str, Any]] = [{}]
        # T.min / T.max are how the printer writes Min / Max in shapes and in tensor programs
        self.calls: dict[str, Callable[..., Any]] = {
            "T.max": lambda node, a, b, dtype=None: binary(E.Max, a, b, dtype),
            "T.min": lambda node, a, b, dtype=None: binary(E.Min, a, b, dtype),
        }
        for dt in E.DTYPES:                    # T.float32(0.5), T.int64(n): scalars and casts
            self.calls["T." + dt] = self._scalar(dt)
        self.defining_sizes = False   # inside a string size: unknown names are new sizes

    def _scalar(self, dtype: str):
        def make(node, value=None):
            if value is None:
                raise self.err(node, f"T.{dtype}() declares a symbolic size; write it as a "
                                     f"statement of its own: `n = T.{dtype}()`")
            if isinstance(value, E.PrimExpr):
                return value if value.dtype == dtype else E.Cast(dtype, value)
            if E.is_float_dtype(dtype):
                return E.FloatImm(float_value(value), dtype)
            return E.const(value, dtype)
        return make

    # scopes ------------------------------------------------------------------------

    def push(self) -> None:
        self.scopes.append({})

    def pop(self) -> None:
        self.scopes.pop()

    def define(self, name: str, value: Any) -> None:
        self.scopes[-1][name] = value

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise KeyError(name)

    def err(self, node: Any, message: str) -> ParseError:
        return self.src.error(node, message)

    # symbolic sizes ------------------------------------------------------------------

    def size_var(self, name: str, dtype: str = "int64") -> E.Var:
        """The symbolic size `name` of this function, created on first mention."""
        try:
            v = self.lookup(name)
        except KeyError:
            v = E.Var(name, dtype)
            self.scopes[0][name] = v
            return v
        if not isinstance(v, E.Var):
            raise CompilerError(f"'{name}' is used as a symbolic size but is a "
                                f"{type(v).__name__} here")
        return v

    def dim(self, value: Any, node: ast.AST) -> E.PrimExpr:
        """A dimension: an int, a PrimExpr, or a string naming/computing sizes ("n", "n * 2")."""
        if isinstance(value, str):
            try:
                tree = ast.parse(value.strip(), mode="eval")
            except SyntaxError:
                raise self.err(node, f"expected a size expression such as \"n\" or \"n * 2\", "
                                     f"got {value!r}") from None
            saved, self.defining_sizes = self.defining_sizes, True
            try:
                value = self.eval(tree.body)
            except ParseError as e:
                raise self.err(node, f"in size {value!r}: {getattr(e, 'raw_message', e)}") from None
            finally:
                self.defining_sizes = saved
        if isinstance(value, bool) or not isinstance(value, (int, E.PrimExpr)):
            raise self.err(node, f"expected an integer size (int, symbolic size or \"n\"), "
                                 f"got {type(value).__name__} {value!r}")
        return E.as_expr(value)

    def _with_pos(self, node: ast.AST, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ParseError:
            raise
        except (CompilerError, TypeError, ValueError, KeyError, IndexError) as e:
            raise self.err(node, _message(e)) from None

    # evaluation ----------------------------------------------------------------------

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, "eval_" + type(node).__name__, None)
        if method is None:
            raise self.err(node, f"unsupported syntax {type(node).__name__} in script; expected "
                                 "a variable, a literal, arithmetic or an R./T. call")
        return method(node)

    def eval_Constant(self, node: ast.Constant) -> Any:
        return node.value

    def eval_Name(self, node: ast.Name) -> Any:
        try:
            value = self.lookup(node.id)
        except KeyError:
            if node.id in ("cls", self.class_name) and self.module is not None:
                return self.module
            if self.defining_sizes:
                return self.size_var(node.id)
            if node.id in ROOTS:
                raise self.err(node, f"'{node.id}' is a namespace; expected {node.id}.xxx") from None
            raise self.err(node, f"use of undefined variable '{node.id}'") from None
        if isinstance(value, OutOfScope):
            raise self.err(node, f"dataflow variable '{node.id}' is used outside its dataflow "
                                 "block; list it in R.output(...) to use it after the block")
        return value

    def eval_Attribute(self, node: ast.Attribute) -> Any:
        name = dotted(node)
        if name is not None:
            if name == "R.Object":
                return S.ObjectStructInfo()
            if name.startswith("T.") and name[2:] in E.DTYPES:
                return DtypeMarker(name[2:])
            raise self.err(node, f"{name} must be called: expected {name}(...)")
        base = self.eval(node.value)
        if isinstance(base, ModuleRef):
            if base.functions is not None and node.attr not in base.functions:
                close = difflib.get_close_matches(node.attr, base.functions, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise self.err(node, f"the module has no function '{node.attr}'{hint}")
            return G.GlobalVar(node.attr)
        raise self.err(node, f"unsupported attribute access .{node.attr}")

    def eval_Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.eval(e) for e in node.elts)

    def eval_List(self, node: ast.List) -> list:
        return [self.eval(e) for e in node.elts]

    def eval_Dict(self, node: ast.Dict) -> dict:
        if any(k is None for k in node.keys):
            raise self.err(node, "** in a dict is not supported")
        return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}

    def eval_Subscript(self, node: ast.Subscript) -> Any:
        base = self.eval(node.value)
        index = self.eval(node.slice)
        if isinstance(base, T.Buffer):
            idx = index if isinstance(index, tuple) else (index,)
            return self._with_pos(node, lambda: T.BufferLoad(base, tuple(E.as_expr(i) for i in idx)))
        if isinstance(base, G.Expr):
            if isinstance(index, E.IntImm):
                index = index.value
            if not isinstance(index, int) or isinstance(index, bool):
                raise self.err(node.slice, f"expected an integer tuple index, got {index!r}")
            sinfo = base.struct_info
            if not isinstance(sinfo, S.TupleStructInfo):
                raise self.err(node, f"indexing [{index}]: expected a value of tuple type, got "
                                     f"{type(sinfo).__name__ if sinfo else 'no struct info'}")
            if not 0 <= index < len(sinfo.fields):
                raise self.err(node.slice, f"tuple index {index} out of range for a tuple of "
                                           f"{len(sinfo.fields)} fields")
            return G.TupleGetItem(base, index, sinfo.fields[index])
        if isinstance(base, (list, tuple, dict)):
            return self._with_pos(node, lambda: base[index])
        raise self.err(node, f"cannot index a {type(base).__name__}")

    def eval_BinOp(self, node: ast.BinOp) -> Any:
        a, b = self.eval(node.left), self.eval(node.right)
        op = type(node.op)
        if op not in _BINOPS:
            raise self.err(node, f"unsupported operator {type(node.op).__name__}")
        if is_number(a) and is_number(b):
            return self._with_pos(node, lambda: _PY_BINOPS[op](a, b))
        for x, n in ((a, node.left), (b, node.right)):
            if isinstance(x, G.Expr):
                raise self.err(n, "arithmetic on graph values is written with operators, "
                                  "e.g. R.add(x, y), not x + y")
            if not (is_number(x) or isinstance(x, E.PrimExpr)):
                raise self.err(n, f"expected a scalar expression, got {type(x).__name__}")
        return self._with_pos(node, lambda: binary(_BINOPS[op], a, b))

    def eval_UnaryOp(self, node: ast.UnaryOp) -> Any:
        v = self.eval(node.operand)
        if isinstance(node.op, ast.USub):
            if is_number(v):
                return -v
            if isinstance(v, E.PrimExpr):
                return binary(E.Sub, E.const(0, v.dtype), v)
        elif isinstance(node.op, ast.UAdd) and (is_number(v) or isinstance(v, E.PrimExpr)):
            return v
        elif isinstance(node.op, ast.Not):
            if isinstance(v, bool):
                return not v
            if isinstance(v, E.PrimExpr):
                return E.Not(v)
        raise self.err(node, f"unsupported unary operator on {type(v).__name__}")

    def eval_Compare(self, node: ast.Compare) -> Any:
        if len(node.ops) != 1:
            raise self.err(node, "chained comparisons are not supported; use `and`")
        a, b = self.eval(node.left), self.eval(node.comparators[0])
        op = type(node.ops[0])
        if op not in _CMPOPS:
            raise self.err(node, f"unsupported comparison {op.__name__}")
        if not isinstance(a, E.PrimExpr) and not isinstance(b, E.PrimExpr):
            raise self.err(node, "a comparison needs a scalar expression on one side")
        return self._with_pos(node, lambda: binary(_CMPOPS[op], a, b))

    def eval_BoolOp(self, node: ast.BoolOp) -> Any:
        cls = E.And if isinstance(node.op, ast.And) else E.Or
        values = [self.eval(v) for v in node.values]
        out = values[0]
        for v in values[1:]:
            out = self._with_pos(node, lambda: binary(cls, out, v))
        return out

    def eval_Call(self, node: ast.Call) -> Any:
        name = dotted(node.func)
        if isinstance(node.func, ast.Name) and node.func.id == "float" and name is None:
            args = [self.eval(a) for a in node.args]
            return self._with_pos(node, lambda: float(*args))
        args = [self.eval(a) for a in node.args if not isinstance(a, ast.Starred)]
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.err(node, "*args in calls is not supported")
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self.err(kw, "**kwargs in calls is not supported")
            kwargs[kw.arg] = self.eval(kw.value)
        if name is not None:
            handler = self.calls.get(name)
            if handler is not None:
                return self._with_pos(node, lambda: checked_call(name, handler, (node, *args),
                                                                 kwargs, skip=1))
            return self.call_op(node, name, args, kwargs)
        callee = self.eval(node.func)
        return self.call_value(node, callee, args, kwargs)

    def call_op(self, node: ast.Call, name: str, args: list, kwargs: dict) -> Any:
        if not name.startswith("R."):
            raise self.err(node, f"unknown function {name}; expected one of "
                                 f"{', '.join(sorted(k for k in self.calls if k[0] == name[0]))[:400]}")
        from ..op import script_namespace
        table = script_namespace()
        opdef = table.get(name)
        if opdef is None:
            known = list(table) + list(self.calls)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise self.err(node, f"unknown operator {name}{hint}")
        return self._with_pos(node, lambda: checked_call(name, opdef, args, kwargs))

    def call_value(self, node: ast.Call, callee: Any, args: list, kwargs: dict) -> Any:
        raise self.err(node, f"cannot call a {type(callee).__name__}")


def checked_call(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 skip: int = 0) -> Any:
    """`fn(*args, **kwargs)`; arguments that do not fit its parameters are a
    StructInfoError naming script function `name` (operators check their own)."""
    try:
        return fn(*args, **kwargs)
    except TypeError as e:
        if isinstance(e, CompilerError):
            raise
        from ..op.registry import check_arguments
        check_arguments(name, fn, args, kwargs, skip)
        raise


def _message(e: Exception) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def float_value(v: Any) -> float:
    """Python float from a literal or one of the strings "inf", "-inf", "nan"."""
    if isinstance(v, str):
        f = float(v)
        if not (math.isinf(f) or math.isnan(f)):
            raise ValueError(f"expected a number, got the string {v!r}")
        return f
    return float(v)
