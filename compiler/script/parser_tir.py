"""Parsing `@T.prim_func` definitions into tensor programs (PrimFunc).

Statements: `for i in range(n)` / `T.serial|parallel|vectorized|unroll(...)` /
`T.thread_binding(n, thread="threadIdx.x")` / `T.grid(n, m)`; `with T.block("name"):`
with `T.axis.remap("SSR", [i, j, k])`, `T.axis.spatial(extent, value)`,
`T.axis.reduce(...)`, `T.where(cond)`, `T.block_attr({...})`, `T.reads/T.writes`
(ignored), `A = T.alloc_buffer(...)` and `with T.init():`; `Y[i, j] = value`;
`if`/`else`; `T.evaluate(x)`; `x = value` (a LetStmt over the rest of the
statements) or `with T.LetStmt(value) as x:`; `with T.allocate(shape, dtype) as A:`;
`T.func_attr({...})`. `T.alloc_buffer` at the top level of the function makes the
implicit root block, as in TVM.
"""
from __future__ import annotations

import ast
from typing import Any, Optional

from ..ir import expr as E
from ..ir import tir as T
from ..ir.attrs import Attrs
from .evaluator import (NODE_CLASSES, DtypeMarker, Evaluator, ModuleRef, Source, binary, dotted,
                        float_value, operands)
from .parser_relax import is_size_decl

_TRUE = E.IntImm(1, "bool")
_LOOPS = {"T.serial": "serial", "T.parallel": "parallel", "T.vectorized": "vectorized",
          "T.unroll": "unrolled", "T.thread_binding": "thread_binding"}


def _seq(stmts: list[T.Stmt]) -> T.Stmt:
    if not stmts:
        return T.Evaluate(E.IntImm(0))
    return stmts[0] if len(stmts) == 1 else T.SeqStmt(tuple(stmts))


class TIREvaluator(Evaluator):
    """Scalar expressions of tensor programs: literals, casts, intrinsics, loads."""

    def __init__(self, src: Source, module: Optional[ModuleRef], class_name: Optional[str]):
        super().__init__(src, module, class_name)
        c = self.calls
        c["T.Cast"] = lambda node, dtype, value: E.Cast(dtype, E.as_expr(value))
        c["T.Select"] = c["T.if_then_else"] = self.select
        c["T.floordiv"] = lambda node, a, b: binary(E.FloorDiv, a, b)
        c["T.floormod"] = lambda node, a, b: binary(E.FloorMod, a, b)
        c["T.call_intrin"] = lambda node, dtype, op, *args: E.Call(
            dtype, op, tuple(E.as_expr(a) for a in args))
        c["T.StringImm"] = lambda node, value: E.StringImm(value)
        c["T.Buffer"] = self.buffer
        c["T.let"] = lambda node, value: E.as_expr(value)   # `x = T.let(v)` reads as `x = v`
        for name in E.INTRINSICS:
            if name not in ("max", "min"):
                c["T." + name] = self._intrinsic(name)
        for name, cls in NODE_CLASSES.items():
            c["T." + name] = (lambda cls: lambda node, a, b, dtype=None: binary(cls, a, b, dtype))(cls)

    def _intrinsic(self, name: str):
        def make(node, *args, dtype=None):
            if not args:
                raise self.err(node, f"T.{name} needs arguments")
            exprs = [a for a in args]
            first = next((a for a in exprs if isinstance(a, E.PrimExpr)), None)
            exprs = [E.as_expr(a, first.dtype if first is not None and not isinstance(a, float)
                               or (first is not None and E.is_float_dtype(first.dtype)) else None)
                     if not isinstance(a, E.PrimExpr) else a for a in exprs]
            return E.Call(dtype or exprs[0].dtype, name, tuple(exprs))
        return make

    def select(self, node, cond, a, b, dtype=None):
        if not isinstance(a, E.PrimExpr) or not isinstance(b, E.PrimExpr):
            a, b = operands(a, b)
        return E.Select(E.as_expr(cond), a, b, dtype or a.dtype)

    def buffer(self, node, shape, dtype="float32", scope="global", name=""):
        if not isinstance(shape, (list, tuple)):
            shape = (shape,)
        return T.Buffer(name, tuple(self.dim(d, node) for d in shape), dtype, scope)


class TIRParser:
    """One `@T.prim_func`."""

    def __init__(self, src: Source, fdef: ast.FunctionDef, kwargs: dict,
                 ref: Optional[ModuleRef], class_name: Optional[str]):
        self.src = src
        self.fdef = fdef
        kwargs.pop("private", None)
        if kwargs:
            raise src.error(fdef, f"@T.prim_func: unknown arguments {sorted(kwargs)}")
        self.ev = TIREvaluator(src, ref, class_name)
        self.attrs: dict = {}
        self.loops: dict[E.Var, tuple[E.PrimExpr, E.PrimExpr]] = {}
        self.root_allocs: list[T.Buffer] = []

    def err(self, node, message):
        return self.src.error(node, message)

    def parse(self) -> T.PrimFunc:
        ev, fdef = self.ev, self.fdef
        a = fdef.args
        if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
            raise self.err(fdef, f"function '{fdef.name}': only plain positional parameters are supported")
        kinds = []
        for arg in a.args:     # scalar params first: buffer shapes may use them
            ann = arg.annotation
            if ann is None:
                raise self.err(arg, f"expected T.Buffer(...) or T.int64 annotation for parameter "
                                    f"'{arg.arg}'")
            name = dotted(ann.func) if isinstance(ann, ast.Call) else dotted(ann)
            if name is not None and name.startswith("T.") and name[2:] in E.DTYPES:
                if isinstance(ann, ast.Call) and (ann.args or ann.keywords):
                    raise self.err(ann, f"scalar parameter '{arg.arg}': write T.{name[2:]} without arguments")
                v = E.Var(arg.arg, name[2:])
                ev.define(arg.arg, v)
                kinds.append(v)
            else:
                kinds.append(None)
        body = list(fdef.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        for stmt in body:
            decl = is_size_decl(stmt)
            if decl is not None:
                existing = ev.scopes[0].get(decl[0])
                if existing is not None and not (isinstance(existing, E.Var) and existing.dtype == decl[1]):
                    raise self.err(stmt, f"'{decl[0]}' is declared twice")
                if existing is None:
                    ev.scopes[0][decl[0]] = E.Var(decl[0], decl[1])
        params: list[Any] = []
        for arg, v in zip(a.args, kinds):
            if v is not None:
                params.append(v)
                continue
            ann = arg.annotation
            if not (isinstance(ann, ast.Call) and dotted(ann.func) == "T.Buffer"):
                raise self.err(ann, f"expected T.Buffer(...) or T.int64 annotation for "
                                    f"parameter '{arg.arg}'")
            buf = ev.eval(ann)
            if not isinstance(buf, T.Buffer):
                raise self.err(arg.annotation, f"expected T.Buffer(...) or T.int64 annotation for "
                                               f"parameter '{arg.arg}'")
            buf = T.Buffer(arg.arg, buf.shape, buf.dtype, buf.scope)
            if isinstance(ev.scopes[0].get(arg.arg), E.Var):
                raise self.err(arg, f"parameter '{arg.arg}' has the name of a symbolic size")
            ev.define(arg.arg, buf)
            params.append(buf)
        stmt = self.stmts(body, top=True)
        if self.root_allocs:
            stmt = T.BlockRealize((), _TRUE, T.Block("root", (), stmt,
                                                     alloc_buffers=tuple(self.root_allocs)))
        return T.PrimFunc(tuple(params), stmt, Attrs(self.attrs))

    # statements ------------------------------------------------------------------------

    def stmts(self, body: list[ast.stmt], top: bool = False) -> T.Stmt:
        return _seq(self._stmt_list(body, top))

    def _stmt_list(self, body: list[ast.stmt], top: bool = False) -> list[T.Stmt]:
        out: list[T.Stmt] = []
        ev = self.ev
        for i, s in enumerate(body):
            if isinstance(s, ast.Pass) or is_size_decl(s) is not None:
                if is_size_decl(s) is not None and not top:
                    raise self.err(s, "symbolic sizes (`n = T.int64()`) are declared at the top "
                                      "of the function")
                continue
            call = dotted(s.value.func) if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) else None
            if call == "T.func_attr":
                if not top:
                    raise self.err(s, "T.func_attr belongs at the top level of the function")
                value = ev.eval(s.value.args[0]) if s.value.args else None
                if not isinstance(value, dict):
                    raise self.err(s, "T.func_attr takes a dict")
                self.attrs.update(value)
            elif call in ("T.reads", "T.writes"):
                continue
            elif call == "T.evaluate":
                args = [ev.eval(a) for a in s.value.args]
                if len(args) != 1:
                    raise self.err(s, "T.evaluate takes one expression")
                out.append(T.Evaluate(E.as_expr(args[0])))
            elif isinstance(s, (ast.Assign, ast.AnnAssign)):
                target = s.targets[0] if isinstance(s, ast.Assign) else s.target
                if isinstance(s, ast.Assign) and len(s.targets) != 1:
                    raise self.err(s, "expected one assignment target")
                if isinstance(target, ast.Subscript):
                    out.append(self.store(s, target))
                    continue
                if not isinstance(target, ast.Name) or s.value is None:
                    raise self.err(s, "expected `Y[i, j] = value`, `x = value` or "
                                      "`A = T.alloc_buffer(...)`")
                value_call = dotted(s.value.func) if isinstance(s.value, ast.Call) else None
                if value_call == "T.alloc_buffer":
                    if not top:
                        raise self.err(s, "T.alloc_buffer belongs at the top of a block "
                                          "(or of the function)")
                    self.root_allocs.append(self.alloc(s, target.id))
                    continue
                out.append(self.let(s, target, body[i + 1:], top))
                break
            elif isinstance(s, ast.For):
                out.append(self.for_(s))
            elif isinstance(s, ast.With):
                out.append(self.with_(s))
            elif isinstance(s, ast.If):
                cond = E.as_expr(ev.eval(s.test))
                then = self.scoped(s.body)
                other = self.scoped(s.orelse) if s.orelse else None
                out.append(T.IfThenElse(cond, then, other))
            else:
                raise self.err(s, "unexpected statement in a T.prim_func; expected a loop, "
                                  "`with T.block(...)`, a store `Y[i] = ...`, if/else, "
                                  "T.evaluate(...) or `x = value`")
        return out

    def scoped(self, body: list[ast.stmt]) -> T.Stmt:
        self.ev.push()
        try:
            return self.stmts(body)
        finally:
            self.ev.pop()

    def store(self, s: Any, target: ast.Subscript) -> T.Stmt:
        ev = self.ev
        buf = ev.eval(target.value)
        if not isinstance(buf, T.Buffer):
            raise self.err(target.value, f"expected a buffer to store into, got {type(buf).__name__}")
        index = ev.eval(target.slice)
        idx = index if isinstance(index, tuple) else (index,)
        value = ev.eval(s.value)
        if not isinstance(value, E.PrimExpr):
            try:
                value = E.const(float_value(value) if E.is_float_dtype(buf.dtype) else value, buf.dtype)
            except (TypeError, ValueError):
                raise self.err(s.value, f"expected a scalar value to store into "
                                        f"{target.value.id if isinstance(target.value, ast.Name) else 'buffer'}, "
                                        f"got {value!r}") from None
        return ev._with_pos(target, lambda: T.BufferStore(buf, value, tuple(E.as_expr(i) for i in idx)))

    def let(self, s: Any, target: ast.Name, rest: list[ast.stmt], top: bool) -> T.Stmt:
        ev = self.ev
        value = ev.eval(s.value)
        if not isinstance(value, E.PrimExpr):
            value = ev._with_pos(s.value, lambda: E.as_expr(value))
        dtype = value.dtype
        if isinstance(s, ast.AnnAssign):
            ann = ev.eval(s.annotation)
            if not isinstance(ann, DtypeMarker):
                raise self.err(s.annotation, "expected a dtype annotation such as T.int32")
            dtype = ann.dtype
        var = E.Var(target.id, dtype)
        ev.push()
        ev.define(target.id, var)
        try:
            body = self.stmts(rest, top)
        finally:
            ev.pop()
        return T.LetStmt(var, value, body)

    def alloc(self, s: Any, name: str) -> T.Buffer:
        ev = self.ev
        call = s.value
        args = [ev.eval(a) for a in call.args]
        kwargs = {k.arg: ev.eval(k.value) for k in call.keywords}
        buf = ev._with_pos(call, lambda: ev.buffer(call, *args, **kwargs))
        buf = T.Buffer(name, buf.shape, buf.dtype, buf.scope)
        ev.define(name, buf)
        return buf

    def span(self, node: ast.Call, args: list[ast.expr]) -> tuple[E.PrimExpr, E.PrimExpr]:
        """(min, extent) of `range(ext)` or `range(lo, lo + ext)`."""
        ev = self.ev
        if len(args) == 1:
            return E.IntImm(0), ev.dim(ev.eval(args[0]), node)
        if len(args) != 2:
            raise self.err(node, "expected (extent) or (start, stop)")
        lo = ev.dim(ev.eval(args[0]), node)
        end = args[1]
        if isinstance(end, ast.BinOp) and isinstance(end.op, ast.Add) and \
                ast.dump(end.left) == ast.dump(args[0]):
            return lo, ev.dim(ev.eval(end.right), node)
        hi = ev.dim(ev.eval(end), node)
        if isinstance(lo, E.IntImm) and isinstance(hi, E.IntImm):
            return lo, E.IntImm(hi.value - lo.value, hi.dtype)
        return lo, hi - lo

    def for_(self, s: ast.For) -> T.Stmt:
        ev = self.ev
        if s.orelse:
            raise self.err(s, "for/else is not supported")
        it = s.iter
        if not isinstance(it, ast.Call):
            raise self.err(it, "expected range(...), T.grid(...), T.serial(...), ...")
        name = dotted(it.func) or (it.func.id if isinstance(it.func, ast.Name) else None)
        kwargs = {k.arg: ev.eval(k.value) for k in it.keywords}
        names = [s.target] if isinstance(s.target, ast.Name) else \
            list(s.target.elts) if isinstance(s.target, ast.Tuple) else None
        if names is None or not all(isinstance(n, ast.Name) for n in names):
            raise self.err(s.target, "expected loop variable names")
        if name == "T.grid":
            if len(names) != len(it.args):
                raise self.err(s.target, f"T.grid has {len(it.args)} extents but {len(names)} "
                                         "loop variables")
            spans = [(E.IntImm(0), ev.dim(ev.eval(a), it)) for a in it.args]
            kinds = [("serial", None, Attrs())] * len(spans)
        else:
            if name == "range":
                kind = "serial"
            elif name in _LOOPS:
                kind = _LOOPS[name]
            else:
                raise self.err(it, f"unknown loop kind {name}; expected range, T.grid, T.serial, "
                                   "T.parallel, T.vectorized, T.unroll or T.thread_binding")
            if len(names) != 1:
                raise self.err(s.target, "expected one loop variable (use T.grid for several)")
            tag = kwargs.pop("thread", None)
            ann = Attrs(kwargs.pop("annotations", None) or {})
            if kwargs:
                raise self.err(it, f"{name}: unknown arguments {sorted(kwargs)}")
            if kind == "thread_binding" and tag is None:
                raise self.err(it, "T.thread_binding needs thread=\"threadIdx.x\" (or another tag)")
            spans = [self.span(it, it.args)]
            kinds = [(kind, tag, ann)]
        loop_vars = []
        ev.push()
        try:
            for n, (lo, ext) in zip(names, spans):
                dtype = ext.dtype if E.is_int_dtype(ext.dtype) and ext.dtype != "bool" else "int64"
                v = E.Var(n.id, dtype)
                ev.define(n.id, v)
                self.loops[v] = (lo, ext)
                loop_vars.append(v)
            body = self.stmts(s.body)
        finally:
            ev.pop()
        for v, (lo, ext), (kind, tag, ann) in reversed(list(zip(loop_vars, spans, kinds))):
            body = T.For(v, lo, ext, kind, body, tag, ann)
        return body

    def with_(self, s: ast.With) -> T.Stmt:
        ev = self.ev
        if len(s.items) != 1 or not isinstance(s.items[0].context_expr, ast.Call):
            raise self.err(s, "expected `with T.block(\"name\"):`")
        item = s.items[0]
        call = item.context_expr
        name = dotted(call.func)
        if name == "T.block":
            return self.block(s, call)
        if name == "T.init":
            raise self.err(s, "`with T.init():` is only valid directly inside a block")
        if name == "T.seq":
            ev.push()
            try:
                return T.SeqStmt(tuple(self._stmt_list(s.body)))
            finally:
                ev.pop()
        if name in ("T.LetStmt", "T.allocate"):
            if not isinstance(item.optional_vars, ast.Name):
                raise self.err(s, f"expected `with {name}(...) as x:`")
            var_name = item.optional_vars.id
            args = [ev.eval(a) for a in call.args]
            kwargs = {k.arg: ev.eval(k.value) for k in call.keywords}
            ev.push()
            try:
                if name == "T.LetStmt":
                    value = E.as_expr(args[0])
                    var = E.Var(var_name, kwargs.get("dtype", value.dtype))
                    ev.define(var_name, var)
                    return T.LetStmt(var, value, self.stmts(s.body))
                buf = ev._with_pos(call, lambda: ev.buffer(call, *args, **kwargs))
                buf = T.Buffer(var_name, buf.shape, buf.dtype, buf.scope)
                ev.define(var_name, buf)
                return T.Allocate(buf, self.stmts(s.body))
            finally:
                ev.pop()
        raise self.err(call, f"unknown context {name}; expected T.block, T.init, T.LetStmt or T.allocate")

    def block(self, s: ast.With, call: ast.Call) -> T.Stmt:
        ev = self.ev
        args = [ev.eval(a) for a in call.args]
        if len(args) != 1 or not isinstance(args[0], str):
            raise self.err(call, "expected T.block(\"name\")")
        block_name = args[0]
        iter_vars: list[T.IterVar] = []
        values: list[E.PrimExpr] = []
        predicate: E.PrimExpr = _TRUE
        annotations: dict = {}
        allocs: list[T.Buffer] = []
        init_node: Optional[ast.With] = None
        rest: list[ast.stmt] = []
        ev.push()
        try:
            for st in s.body:
                value = st.value if isinstance(st, (ast.Assign, ast.Expr)) else None
                cname = dotted(value.func) if isinstance(value, ast.Call) else None
                if cname in ("T.axis.remap", "T.axis.spatial", "T.axis.reduce", "T.axis.S", "T.axis.R"):
                    if not isinstance(st, ast.Assign) or len(st.targets) != 1:
                        raise self.err(st, f"expected `v = {cname}(...)`")
                    self.axes(st, cname, value, iter_vars, values)
                elif cname == "T.where":
                    predicate = E.as_expr(ev.eval(value.args[0]))
                elif cname == "T.block_attr":
                    annotations.update(ev.eval(value.args[0]))
                elif cname in ("T.reads", "T.writes"):
                    continue
                elif cname == "T.alloc_buffer" and isinstance(st, ast.Assign) and \
                        isinstance(st.targets[0], ast.Name):
                    allocs.append(self.alloc(st, st.targets[0].id))
                elif isinstance(st, ast.With) and len(st.items) == 1 and \
                        isinstance(st.items[0].context_expr, ast.Call) and \
                        dotted(st.items[0].context_expr.func) == "T.init":
                    if init_node is not None:
                        raise self.err(st, "a block has one `with T.init():`")
                    init_node = st
                else:
                    rest.append(st)
            init = self.scoped(init_node.body) if init_node is not None else None
            body = self.stmts(rest)
        finally:
            ev.pop()
        block = T.Block(block_name, tuple(iter_vars), body, init, tuple(allocs), Attrs(annotations))
        return T.BlockRealize(tuple(values), predicate, block)

    def axes(self, st: ast.Assign, cname: str, call: ast.Call, iter_vars: list, values: list) -> None:
        ev = self.ev
        target = st.targets[0]
        if cname == "T.axis.remap":
            if len(call.args) != 2:
                raise self.err(call, "T.axis.remap takes (kinds, [loop vars])")
            kinds = ev.eval(call.args[0])
            loops = ev.eval(call.args[1])
            names = [target] if isinstance(target, ast.Name) else list(getattr(target, "elts", []))
            if not isinstance(kinds, str) or not isinstance(loops, (list, tuple)) or \
                    len(kinds) != len(loops) or len(names) != len(loops):
                raise self.err(call, "T.axis.remap: expected one kind letter (S or R) and one "
                                     "target per loop variable, e.g. vi, vk = T.axis.remap(\"SR\", [i, k])")
            for n, k, lv in zip(names, kinds, loops):
                if k not in "SR":
                    raise self.err(call.args[0], f"T.axis.remap: unknown kind {k!r}; expected S or R")
                if not isinstance(lv, E.Var) or lv not in self.loops:
                    raise self.err(call.args[1], f"T.axis.remap: {lv!r} is not a loop variable")
                lo, ext = self.loops[lv]
                v = E.Var(n.id, lv.dtype)
                iter_vars.append(T.IterVar(v, T.Range(lo, ext), k))
                values.append(lv)
                ev.define(n.id, v)
            return
        if not isinstance(target, ast.Name) or len(call.args) != 2:
            raise self.err(call, f"expected `v = {cname}(extent, value)`")
        dom = call.args[0]
        if isinstance(dom, ast.Tuple):
            lo, ext = self.span(call, dom.elts)
        else:
            lo, ext = E.IntImm(0), ev.dim(ev.eval(dom), call)
        value = E.as_expr(ev.eval(call.args[1]))
        dtype = ev.eval(call.keywords[0].value) if call.keywords else ext.dtype
        v = E.Var(target.id, dtype)
        kind = "S" if cname in ("T.axis.spatial", "T.axis.S") else "R"
        iter_vars.append(T.IterVar(v, T.Range(lo, ext), kind))
        values.append(value)
        ev.define(target.id, v)
