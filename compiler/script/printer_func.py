"""Printing one function: graph functions (`@R.function`) and tensor programs
(`@T.prim_func`). See printer.py for the rules that keep printing lossless."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir import tir as T
from ..ir.errors import CompilerError
from .printer import _INDENT, _TRUE, ExprPrinter, Namer, collect_vars, value_text

_ZERO = E.IntImm(0)
_LOOP_FN = {"serial": "T.serial", "parallel": "T.parallel", "vectorized": "T.vectorized",
            "unrolled": "T.unroll", "thread_binding": "T.thread_binding"}


def q(s: str) -> str:
    """A string literal, double-quoted where that needs no escapes."""
    if '"' not in s and "\\" not in s and s.isprintable():
        return f'"{s}"'
    return repr(s)


def _indent(lines: list[str]) -> list[str]:
    return [_INDENT + line for line in lines]


class _Short(float):
    """A float printed with the shortest text that gives back the same value in its
    own dtype (0.1 rather than 0.10000000149011612 for float32)."""

    def __repr__(self) -> str:
        return self.text


def _short(v: float, np_dtype: Any) -> float:
    if not np.isfinite(v):
        return v
    text = repr(np_dtype.type(v)) if hasattr(np_dtype, "type") else repr(v)
    text = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
    try:
        same = np.asarray(float(text), dtype=np_dtype).tobytes() == np.asarray(v, dtype=np_dtype).tobytes()
    except ValueError:
        same = False
    if not same:
        return v
    out = _Short(v)
    out.text = text
    return out


def _np_list(data: np.ndarray) -> Any:
    if data.dtype.kind == "f" or str(data.dtype) == "bfloat16":
        values = data.astype(np.float64)
        flat = [_short(float(v), data.dtype) for v in values.reshape(-1)]
        if data.ndim == 0:
            return flat[0]
        return np.array(flat, dtype=object).reshape(data.shape).tolist() if flat else values.tolist()
    return data.tolist()


class FunctionPrinter:
    """Prints graph functions, tensor programs and their parts; one namer per function."""

    def __init__(self, namer: Namer, mod: Any = None):
        self.namer = namer
        self.mod = mod
        self.pe = ExprPrinter(namer)
        self.loops: dict[E.Var, T.For] = {}

    # values --------------------------------------------------------------------------

    def value(self, v: Any) -> str:
        if isinstance(v, str):
            return q(v)
        if _is_mapping(v):
            return "{" + ", ".join(f"{q(str(k))}: {self.value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(self.value(x) for x in v) + "]"
        return value_text(v, self.expr, self.sinfo)

    def wrapped_value(self, v: Any, indent: int, width: int = 100) -> str:
        """`value(v)`, with dicts and lists too long for one line (module attrs such as
        "distributed") broken into one entry per line, indented below `indent` columns."""
        flat = self.value(v)
        is_map = _is_mapping(v)
        if indent + len(flat) <= width or not (is_map or isinstance(v, (list, tuple))) or not v:
            return flat
        pad = " " * (indent + 4)
        if is_map:
            items = [f"{q(str(k))}: {self.wrapped_value(x, indent + 4, width)}" for k, x in v.items()]
            open_, close = "{", "}"
        else:
            items = [self.wrapped_value(x, indent + 4, width) for x in v]
            open_, close = "[", "]"
        return open_ + "\n" + ",\n".join(pad + item for item in items) + ",\n" + " " * indent + close

    def dim(self, d: E.PrimExpr, sig: bool) -> str:
        if isinstance(d, E.IntImm) and d.dtype == "int64":
            return str(d.value)
        text = self.pe.expr(d)
        return q(text) if sig else text

    def dims(self, ds, sig: bool) -> str:
        inner = ", ".join(self.dim(d, sig) for d in ds)
        return f"({inner},)" if len(ds) == 1 else f"({inner})"

    def sinfo(self, s: Optional[S.StructInfo], sig: bool = False) -> str:
        """Struct info; `sig` writes symbolic dims as strings (function signatures)."""
        if isinstance(s, S.ObjectStructInfo):
            return "R.Object"
        if isinstance(s, S.TensorStructInfo):
            if s.shape is not None:
                return f"R.Tensor({self.dims(s.shape, sig)}, dtype={q(s.dtype)})"
            nd = f", ndim={s.ndim}" if s.ndim >= 0 else ""
            return f"R.Tensor(dtype={q(s.dtype)}{nd})"
        if isinstance(s, S.TupleStructInfo):
            return "R.Tuple(" + ", ".join(self.sinfo(f, sig) for f in s.fields) + ")"
        if isinstance(s, S.ShapeStructInfo):
            if s.values is not None:
                return "R.Shape([" + ", ".join(self.dim(d, sig) for d in s.values) + "])"
            return f"R.Shape(ndim={s.ndim})" if s.ndim >= 0 else "R.Shape()"
        if isinstance(s, S.PrimStructInfo):
            if s.value is None:
                return f"R.Prim({q(s.dtype)})"
            return f"R.Prim({q(s.dtype)}, value={self.dim(s.value, sig)})"
        if isinstance(s, S.DTensorStructInfo):
            t = s.tensor
            shape = self.dims(t.shape, sig) if t.shape is not None else "None"
            nd = f", ndim={t.ndim}" if t.shape is None and t.ndim >= 0 else ""
            return f"R.DTensor({shape}, {q(t.dtype)}, {q(s.device_mesh)}, {q(s.placement_text)}{nd})"
        if isinstance(s, S.FuncStructInfo):
            params = "None" if s.params is None else \
                "[" + ", ".join(self.sinfo(p, sig) for p in s.params) + "]"
            return f"R.Callable({params}, {self.sinfo(s.ret, sig)}, purity={s.purity})"
        raise CompilerError(f"script printer: cannot print struct info {s!r}")

    # graph expressions -------------------------------------------------------------

    def expr(self, e: Any) -> str:
        if isinstance(e, E.PrimExpr):
            return self.pe.expr(e)
        if isinstance(e, G.Var):
            return self.namer.get(e, e.name_hint)
        if isinstance(e, G.GlobalVar):
            return f"cls.{e.name_hint}"
        if isinstance(e, G.Constant):
            data = np.asarray(e.data)
            value = _np_list(data)
            text = self.value(value) if not isinstance(value, float) else value_text(value, None, None)
            return f"R.const({text}, {q(str(data.dtype))})"
        if isinstance(e, G.ShapeExpr):
            return "R.shape([" + ", ".join(self.pe.expr(v) for v in e.values) + "])"
        if isinstance(e, G.PrimValue):
            return f"R.prim_value({self.pe.expr(e.value)})"
        if isinstance(e, G.StringImm):
            return f"R.str({q(e.value)})"
        if isinstance(e, G.DataTypeImm):
            return f"R.dtype({q(e.value)})"
        if isinstance(e, G.ExternFunc):
            return f"R.ExternFunc({q(e.global_symbol)})"
        if isinstance(e, G.Tuple):
            if len(e.fields) == 1:
                return f"({self.expr(e.fields[0])},)"
            return "(" + ", ".join(self.expr(f) for f in e.fields) + ")"
        if isinstance(e, G.TupleGetItem):
            return f"{self.expr(e.tuple_value)}[{e.index}]"
        if isinstance(e, G.Call):
            return self.call(e)
        raise CompilerError(f"script printer: cannot print {type(e).__name__} expressions "
                            f"(not supported by compiler.script): {e!r}")

    def call(self, c: G.Call) -> str:
        if isinstance(c.op, G.Op):
            from ..op.registry import find_op
            opdef = find_op(c.op.name)
            if opdef is None:   # an operator nobody registered: spell the call out
                parts = [q(c.op.name), self.expr(G.Tuple(c.args))]
                if len(c.attrs):
                    parts.append(f"attrs={self.value(c.attrs)}")
                if c.sinfo_args:
                    parts.append(f"sinfo_args={self.value(list(c.sinfo_args))}")
                if c.struct_info is not None:
                    parts.append(f"struct_info={self.sinfo(c.struct_info)}")
                return f"R.Call({', '.join(parts)})"
            pos, kws = opdef.script_parts(c)
            args = [q(a.global_symbol) if isinstance(a, G.ExternFunc) else self.value(a) for a in pos]
            args += [f"{k}={self.value(v)}" for k, v in kws]
            return f"{opdef.script}({', '.join(args)})"
        args = ", ".join(self.expr(a) for a in c.args)
        if isinstance(c.op, G.GlobalVar):
            return f"cls.{c.op.name_hint}({args})"
        return f"{self.expr(c.op)}({args})"

    # graph functions -----------------------------------------------------------------

    def function(self, f: Any, name: str) -> list[str]:
        if isinstance(f, T.PrimFunc):
            return self.prim_func(f, name)
        if isinstance(f, G.Function):
            return self.r_function(f, name)
        raise CompilerError(f"script printer: function {name!r} is a {type(f).__name__}; "
                            "expected a Function or PrimFunc")

    def r_function(self, f: G.Function, name: str) -> list[str]:
        syms, _ = collect_vars(f)
        for v in syms:
            self.namer.define(v, v.name)
        params = []
        for p in f.params:
            if p.struct_info is None:
                raise CompilerError(f"script printer: parameter {p.name_hint!r} of {name!r} "
                                    "has no struct info")
            params.append(f"{self.namer.define(p, p.name_hint)}: {self.sinfo(p.struct_info, True)}")
        deco = "@R.function" if f.is_pure else "@R.function(pure=False)"
        lines = [deco, f"def {name}({', '.join(params)}) -> {self.sinfo(f.ret_struct_info, True)}:"]
        body = [f"{self.namer.names[v]} = T.{v.dtype}()" for v in syms]
        if len(f.attrs):
            body.append(f"R.func_attr({self.value(f.attrs)})")
        for blk in f.body.blocks:
            if isinstance(blk, G.DataflowBlock):
                inner = [line for b in blk.bindings for line in self.binding(b)]
                outs = [self.namer.names[b.var] for b in blk.bindings
                        if not isinstance(b.var, G.DataflowVar)]
                inner.append(f"R.output({', '.join(outs)})")
                body += ["with R.dataflow():"] + _indent(inner)
            else:
                body += [line for b in blk.bindings for line in self.binding(b)]
        body.append(f"return {self.expr(f.body.body)}")
        return lines + _indent(body)

    def binding(self, b: Any) -> list[str]:
        if isinstance(b, G.MatchCast):
            value, target = self.expr(b.value), self.sinfo(b.struct_info)
            name = self.namer.define(b.var, b.var.name_hint)
            ann = "" if b.var.struct_info == b.struct_info else f": {self.sinfo(b.var.struct_info)}"
            return [f"{name}{ann} = R.match_cast({value}, {target})"]
        value = self.expr(b.value)
        name = self.namer.define(b.var, b.var.name_hint)
        ann = f": {self.sinfo(b.var.struct_info)}" if b.var.struct_info is not None else ""
        return [f"{name}{ann} = {value}"]

    # tensor programs -----------------------------------------------------------------

    def prim_func(self, f: T.PrimFunc, name: str) -> list[str]:
        allv, defined = collect_vars(f)
        scalars = [p for p in f.params if isinstance(p, E.Var)]
        for p in scalars:
            self.namer.define(p, p.name)
        syms = [v for v in allv if v not in defined and v not in scalars]
        for v in syms:
            self.namer.define(v, v.name)
        params = []
        for p in f.params:
            if isinstance(p, E.Var):
                params.append(f"{self.namer.names[p]}: T.{p.dtype}")
            else:
                params.append(f"{self.namer.define(p, p.name)}: {self.buffer(p, True)}")
        lines = ["@T.prim_func", f"def {name}({', '.join(params)}):"]
        body = [f"{self.namer.names[v]} = T.{v.dtype}()" for v in syms]
        if len(f.attrs):
            body.append(f"T.func_attr({self.value(f.attrs)})")
        body += self.stmt(f.body)
        return lines + _indent(body)

    def buffer(self, b: T.Buffer, sig: bool = False) -> str:
        scope = f", scope={q(b.scope)}" if b.scope != "global" else ""
        return f"T.Buffer({self.dims(b.shape, sig)}, {q(b.dtype)}{scope})"

    def prim_value_text(self, v: E.PrimExpr) -> str:
        if isinstance(v, (E.IntImm, E.FloatImm)):
            return self.pe.literal(v)
        return self.pe.expr(v)

    def span(self, lo: E.PrimExpr, ext: E.PrimExpr) -> str:
        """`ext`, or `lo, lo + ext` for ranges that do not start at 0."""
        if lo == _ZERO:
            return self.pe.expr(ext)
        if isinstance(lo, E.IntImm) and isinstance(ext, E.IntImm) and lo.dtype == ext.dtype == "int64":
            return f"{lo.value}, {lo.value + ext.value}"
        a, pa = self.pe._p(lo)
        b, pb = self.pe._p(ext)
        a = a if pa >= 11 else f"({a})"
        b = b if pb > 11 else f"({b})"
        return f"{self.pe.expr(lo)}, {a} + {b}"

    def stmt(self, s: T.Stmt) -> list[str]:
        if isinstance(s, T.SeqStmt):
            if len(s.stmts) < 2:
                return ["with T.seq():"] + _indent([line for x in s.stmts for line in self.stmt(x)]
                                                   or ["pass"])
            out: list[str] = []
            for i, x in enumerate(s.stmts):
                if isinstance(x, T.SeqStmt):   # a nested sequence stays one statement
                    out += ["with T.seq():"] + _indent(self.stmt(x)) if len(x.stmts) >= 2 \
                        else self.stmt(x)
                elif isinstance(x, T.LetStmt) and i < len(s.stmts) - 1:
                    value = self.prim_value_text(x.value)
                    name = self.namer.define(x.var, x.var.name)
                    out += [f"with T.LetStmt({value}, dtype={q(x.var.dtype)}) as {name}:"]
                    out += _indent(self.stmt(x.body))
                else:
                    out += self.stmt(x)
            return out
        if isinstance(s, T.BufferStore):
            buf = self.namer.get(s.buffer, s.buffer.name)
            value = self.pe.explicit(s.value) if isinstance(s.value, (E.IntImm, E.FloatImm)) \
                else self.pe.expr(s.value)
            return [f"{buf}[{self.pe._indices(s.indices)}] = {value}"]
        if isinstance(s, T.For):
            return self.for_(s)
        if isinstance(s, T.BlockRealize):
            return self.block(s)
        if isinstance(s, T.IfThenElse):
            out = [f"if {self.pe.expr(s.condition)}:"] + _indent(self.stmt(s.then_case))
            if s.else_case is not None:
                out += ["else:"] + _indent(self.stmt(s.else_case))
            return out
        if isinstance(s, T.Evaluate):
            return [f"T.evaluate({self.pe.expr(s.value)})"]
        if isinstance(s, T.LetStmt):
            value = self.prim_value_text(s.value)
            name = self.namer.define(s.var, s.var.name)
            ann = "" if s.var.dtype == s.value.dtype else f": T.{s.var.dtype}"
            return [f"{name}{ann} = {value}"] + self.stmt(s.body)
        if isinstance(s, T.Allocate):
            b = s.buffer
            name = self.namer.define(b, b.name)
            scope = f", scope={q(b.scope)}" if b.scope != "global" else ""
            return [f"with T.allocate({self.dims(b.shape, False)}, {q(b.dtype)}{scope}) as {name}:"] \
                + _indent(self.stmt(s.body))
        raise CompilerError(f"script printer: cannot print statement {type(s).__name__}")

    def _simple(self, f: T.For) -> bool:
        return f.kind == "serial" and f.min == _ZERO and f.thread_tag is None and not len(f.annotations)

    def for_(self, f: T.For) -> list[str]:
        loops = [f]
        while self._simple(loops[-1]) and isinstance(loops[-1].body, T.For) and \
                self._simple(loops[-1].body):
            inner = loops[-1].body
            used, _ = collect_vars(inner.extent)
            if any(lp.loop_var in used for lp in loops):
                break
            loops.append(inner)
        if len(loops) > 1:
            extents = ", ".join(self.pe.expr(lp.extent) for lp in loops)
            names = ", ".join(self.namer.define(lp.loop_var, lp.loop_var.name) for lp in loops)
            for lp in loops:
                self.loops[lp.loop_var] = lp
            return [f"for {names} in T.grid({extents}):"] + _indent(self.stmt(loops[-1].body))
        span = self.span(f.min, f.extent)
        if f.kind == "serial" and f.thread_tag is None and not len(f.annotations):
            head = f"range({span})"
        else:
            extra = f", thread={q(f.thread_tag)}" if f.thread_tag is not None else ""
            if len(f.annotations):
                extra += f", annotations={self.value(f.annotations)}"
            fn = _LOOP_FN.get(f.kind)
            if fn is None:
                raise CompilerError(f"script printer: unknown loop kind {f.kind!r}")
            head = f"{fn}({span}{extra})"
        name = self.namer.define(f.loop_var, f.loop_var.name)
        self.loops[f.loop_var] = f
        return [f"for {name} in {head}:"] + _indent(self.stmt(f.body))

    def _remappable(self, br: T.BlockRealize) -> bool:
        b = br.block
        if not b.iter_vars or len(br.iter_values) != len(b.iter_vars):
            return False
        for iv, v in zip(b.iter_vars, br.iter_values):
            loop = self.loops.get(v) if isinstance(v, E.Var) else None
            if loop is None or iv.kind not in ("S", "R") or iv.var.dtype != v.dtype:
                return False
            if iv.dom.min != loop.min or iv.dom.extent != loop.extent:
                return False
        return True

    def block(self, br: T.BlockRealize) -> list[str]:
        b = br.block
        inner: list[str] = []
        if self._remappable(br):
            values = ", ".join(self.pe.expr(v) for v in br.iter_values)
            names = ", ".join(self.namer.define(iv.var, iv.var.name) for iv in b.iter_vars)
            kinds = "".join(iv.kind for iv in b.iter_vars)
            inner.append(f"{names} = T.axis.remap({q(kinds)}, [{values}])")
        else:
            if len(br.iter_values) != len(b.iter_vars):
                raise CompilerError(f"script printer: block {b.name!r} has {len(b.iter_vars)} "
                                    f"iterators but {len(br.iter_values)} values")
            for iv, v in zip(b.iter_vars, br.iter_values):
                kind = {"S": "spatial", "R": "reduce"}.get(iv.kind)
                if kind is None:
                    raise CompilerError(f"script printer: unknown iterator kind {iv.kind!r}")
                span = self.span(iv.dom.min, iv.dom.extent)
                dom = span if iv.dom.min == _ZERO else f"({span})"
                value = self.pe.expr(v)
                dt = "" if iv.var.dtype == iv.dom.extent.dtype else f", dtype={q(iv.var.dtype)}"
                inner.append(f"{self.namer.define(iv.var, iv.var.name)} = T.axis.{kind}({dom}, {value}{dt})")
        if br.predicate != _TRUE:
            inner.append(f"T.where({self.pe.expr(br.predicate)})")
        if len(b.annotations):
            inner.append(f"T.block_attr({self.value(b.annotations)})")
        for buf in b.alloc_buffers:
            name = self.namer.define(buf, buf.name)
            scope = f", scope={q(buf.scope)}" if buf.scope != "global" else ""
            inner.append(f"{name} = T.alloc_buffer({self.dims(buf.shape, False)}, {q(buf.dtype)}{scope})")
        if b.init is not None:
            inner += ["with T.init():"] + _indent(self.stmt(b.init))
        inner += self.stmt(b.body)
        return [f"with T.block({q(b.name)}):"] + _indent(inner)


__all__ = ["FunctionPrinter", "q"]


def _is_mapping(v: Any) -> bool:
    """A dict or an Attrs: printed as a dict literal."""
    return isinstance(v, dict) or type(v).__name__ == "Attrs"
