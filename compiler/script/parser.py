"""The script parser: Python-syntax text -> IRModule / Function / PrimFunc.

The text is read with Python's `ast` and interpreted, never executed: a class
decorated `@I.ir_module` becomes an IRModule, its `@R.function` members graph
functions (parser_relax.py), its `@T.prim_func` members tensor programs
(parser_tir.py). Errors are ParseErrors at the line and column of the user's text
(for a decorated class, of the file it is written in).
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any, Optional

from ..ir.errors import ParseError
from ..ir.module import IRModule
from .evaluator import Evaluator, ModuleRef, Source, dotted

__all__ = ["parse", "parse_source_of", "from_source"]


def _decorator_kind(node: ast.AST) -> Optional[str]:
    """"R.function", "T.prim_func" or "I.ir_module" for a decorator node."""
    target = node.func if isinstance(node, ast.Call) else node
    name = dotted(target)
    return name if name in ("R.function", "T.prim_func", "I.ir_module") else None


def _decorator_kwargs(src: Source, node: ast.AST) -> dict:
    if not isinstance(node, ast.Call):
        return {}
    if node.args:
        raise src.error(node, "decorator arguments must be keywords, e.g. @R.function(pure=False)")
    ev = Evaluator(src)
    return {kw.arg: ev.eval(kw.value) for kw in node.keywords}


def _function_kind(src: Source, fdef: ast.FunctionDef) -> tuple[str, dict]:
    for deco in fdef.decorator_list:
        kind = _decorator_kind(deco)
        if kind in ("R.function", "T.prim_func"):
            return kind, _decorator_kwargs(src, deco)
    raise src.error(fdef, f"function '{fdef.name}' needs a decorator: expected @R.function "
                          "or @T.prim_func")


class ModuleParser:
    """Parses the body of an `@I.ir_module` class."""

    def __init__(self, src: Source, cdef: ast.ClassDef):
        self.src = src
        self.cdef = cdef
        self.defs: dict[str, tuple[ast.FunctionDef, str, dict]] = {}
        self.attrs: dict = {}
        self.global_infos: dict = {}
        self.functions: dict[str, Any] = {}
        self.relax: dict[str, Any] = {}      # name -> RelaxParser (signatures shared by callers)
        self.ref: Optional[ModuleRef] = None

    def parse(self) -> IRModule:
        body = self.cdef.body
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef):
                if stmt.name in self.defs:
                    raise self.src.error(stmt, f"function '{stmt.name}' is defined twice in the module")
                kind, kwargs = _function_kind(self.src, stmt)
                self.defs[stmt.name] = (stmt, kind, kwargs)
        self.ref = ModuleRef(tuple(self.defs))
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.FunctionDef):
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and i == 0:
                continue   # docstring
            if isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                name = dotted(stmt.value.func)
                if name in ("I.module_attrs", "I.module_global_infos"):
                    self._module_info(name, stmt.value)
                    continue
            raise self.src.error(stmt, "unexpected statement in an @I.ir_module class; expected "
                                       "@R.function / @T.prim_func definitions, I.module_attrs({...}) "
                                       "or I.module_global_infos({...})")
        for name, (fdef, kind, kwargs) in self.defs.items():
            self.functions[name] = self.function(name)
        return IRModule.from_dict(self.functions, self.attrs, self.global_infos)

    def _module_info(self, name: str, call: ast.Call) -> None:
        from .parser_relax import RelaxEvaluator
        ev = RelaxEvaluator(self.src, self.ref, self.cdef.name)
        if len(call.args) != 1 or call.keywords:
            raise self.src.error(call, f"{name} takes one dict argument")
        value = ev.eval(call.args[0])
        if not isinstance(value, dict):
            raise self.src.error(call.args[0], f"{name}: expected a dict, got {type(value).__name__}")
        (self.attrs if name == "I.module_attrs" else self.global_infos).update(value)

    def relax_parser(self, name: str):
        from .parser_relax import RelaxParser
        if name not in self.relax:
            fdef, kind, kwargs = self.defs[name]
            self.relax[name] = RelaxParser(self.src, fdef, kwargs, self, self.ref, self.cdef.name)
        return self.relax[name]

    def function(self, name: str) -> Any:
        if name in self.functions:
            return self.functions[name]
        fdef, kind, kwargs = self.defs[name]
        if kind == "T.prim_func":
            from .parser_tir import TIRParser
            func = TIRParser(self.src, fdef, kwargs, self.ref, self.cdef.name).parse()
        else:
            func = self.relax_parser(name).parse()
        self.functions[name] = func
        return func

    def kind(self, name: str) -> str:
        return self.defs[name][1]


def _parse_tree(src: Source, tree: ast.Module) -> Any:
    stmts = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    classes = [s for s in stmts if isinstance(s, ast.ClassDef)]
    funcs = [s for s in stmts if isinstance(s, ast.FunctionDef)]
    if len(classes) == 1 and not funcs:
        return ModuleParser(src, classes[0]).parse()
    if len(funcs) == 1 and not classes:
        fdef = funcs[0]
        kind, kwargs = _function_kind(src, fdef)
        if kind == "T.prim_func":
            from .parser_tir import TIRParser
            return TIRParser(src, fdef, kwargs, None, None).parse()
        from .parser_relax import RelaxParser
        return RelaxParser(src, fdef, kwargs, None, ModuleRef(None), None).parse()
    if not stmts:
        raise ParseError("empty script: expected an @I.ir_module class or one decorated function")
    raise src.error(stmts[0], "expected exactly one @I.ir_module class, or one @R.function / "
                              "@T.prim_func definition")


def parse(text: str) -> Any:
    """Parse script text: an `@I.ir_module` class gives an IRModule; a single
    `@R.function` / `@T.prim_func` definition gives a Function / PrimFunc."""
    if not isinstance(text, str):
        raise TypeError(f"compiler.script.parse: expected a str, got {type(text).__name__}")
    lines = text.splitlines()
    dedented = textwrap.dedent(text)
    indent = 0
    for a, b in zip(lines, dedented.splitlines()):
        if a.strip():
            indent = len(a) - len(b)
            break
    src = Source(dedented, 0, indent, lines)
    try:
        tree = ast.parse(dedented)
    except SyntaxError as e:
        line = lines[e.lineno - 1] if e.lineno and 0 < e.lineno <= len(lines) else None
        raise ParseError(f"invalid Python syntax: {e.msg}", e.lineno,
                         (e.offset or 1) + indent, line) from None
    return _parse_tree(src, tree)


def from_source(obj: Any) -> Any:
    """Parse the source of a decorated class or function (the decorators' job);
    positions in errors are those of the file it is written in."""
    try:
        lines, start = inspect.getsourcelines(obj)
    except (OSError, TypeError) as e:
        raise ParseError(f"cannot read the source of {getattr(obj, '__qualname__', obj)!r}: {e}; "
                         "the decorators need the definition in a .py file "
                         "(use compiler.script.parse(text) for strings)") from None
    text = "".join(lines)
    dedented = textwrap.dedent(text)
    indent = 0
    for a, b in zip(text.splitlines(), dedented.splitlines()):
        if a.strip():
            indent = len(a) - len(b)
            break
    src = Source(dedented, start - 1, indent, text.splitlines())
    try:
        tree = ast.parse(dedented)
    except SyntaxError as e:
        raise ParseError(f"invalid Python syntax: {e.msg}", (e.lineno or 1) + start - 1,
                         (e.offset or 1) + indent) from None
    return _parse_tree(src, tree)


parse_source_of = from_source
