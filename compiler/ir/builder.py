"""BlockBuilder: the API that constructs graph functions with struct info filled in.

    bb = BlockBuilder()
    n = bb.size_var("n")
    x = Var("x", TensorStructInfo((n, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            lv0 = bb.emit(op.add(x, x))            # DataflowVar lv0, struct info inferred
            gv = bb.emit_output(op.nn.relu(lv0))   # Var gv0, visible after the block
        bb.emit_func_output(gv)
    mod = bb.get()

Why a builder: IR nodes are immutable, so a function is easiest to write as a
sequence of statements that the builder collects into blocks, and every emitted
value is normalised on the spot (struct info from the operator rules, so an
ill-typed program fails where it is written). Emitted values are put in A-normal
form: a nested call argument is bound to its own variable first, as TVM does, so
every later stage sees one call per binding.

Names: DataflowVars are `lv0, lv1, ...`; Vars visible outside a dataflow block are
`gv0, gv1, ...`; both counters restart in each function. Symbolic sizes are defined
by the parameters that mention them (and by match_cast).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .attrs import Attrs
from .errors import CompilerError, StructInfoError
from .expr import IntImm, Var as SizeVar, as_expr
from .graph import (BaseFunc, Binding, BindingBlock, Call, Constant, DataflowBlock, DataflowVar,
                    DataTypeImm, Expr, ExternFunc, Function, GlobalVar, If, MatchCast, Op,
                    PrimValue, SeqExpr, ShapeExpr, StringImm, Tuple, TupleGetItem, Var, VarBinding)
from .module import IRModule
from .struct_info import (FuncStructInfo, ObjectStructInfo, PrimStructInfo, ShapeStructInfo,
                          StructInfo, TensorStructInfo, TupleStructInfo)
from .struct_info_ops import derive_call_ret_struct_info
from .tir import PrimFunc

__all__ = ["BlockBuilder", "function_struct_info"]

# Expressions that may appear as call arguments without a binding of their own.
_LEAVES = (Var, Constant, ShapeExpr, PrimValue, StringImm, DataTypeImm, Op, GlobalVar, ExternFunc)


def function_struct_info(func: Function) -> FuncStructInfo:
    """The FuncStructInfo of a graph function (parameters, return, purity)."""
    return FuncStructInfo(tuple(p.struct_info for p in func.params), func.ret_struct_info,
                          func.is_pure)


@dataclass
class _FunctionFrame:
    name: str
    params: Optional[tuple[Var, ...]]
    attrs: Attrs
    pure: bool
    blocks: list[BindingBlock] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)   # of the open block
    in_dataflow: bool = False
    lv: int = 0
    gv: int = 0
    result: Optional[Function] = None


class BlockBuilder:
    """Builds graph functions into an IRModule; see the module docstring."""

    def __init__(self, mod: Optional[IRModule] = None):
        self._funcs: dict[str, BaseFunc] = dict(mod.functions) if mod is not None else {}
        self._mod_attrs = mod.attrs if mod is not None else Attrs()
        self._global_infos = mod.global_infos if mod is not None else Attrs()
        self._frame: Optional[_FunctionFrame] = None
        self._by_hash: Optional[dict[int, list[str]]] = None

    # module level -------------------------------------------------------------------

    @staticmethod
    def size_var(name: str, dtype: str = "int64") -> SizeVar:
        """A fresh symbolic size (compiler.ir.SizeVar)."""
        return SizeVar(name, dtype)

    def add_func(self, func: BaseFunc, name: str) -> GlobalVar:
        """Add a graph function or tensor program; returns its GlobalVar. A
        structurally equal function already in the module is reused; a taken name
        gets a suffix (`name_1`)."""
        from .structural import structural_equal
        if not isinstance(func, (Function, PrimFunc)):
            raise CompilerError(f"add_func {name!r}: expected a Function or PrimFunc, "
                                f"got {type(func).__name__}")
        h = self._hash(func)
        for k in self._index().get(h, []):
            f = self._funcs.get(k)
            if f is func or (type(f) is type(func) and structural_equal(f, func)):
                return GlobalVar(k)
        unique, i = name, 0
        while unique in self._funcs:
            i += 1
            unique = f"{name}_{i}"
        self._funcs[unique] = func
        self._index().setdefault(h, []).append(unique)
        return GlobalVar(unique)

    def update_func(self, gvar: Union[GlobalVar, str], func: BaseFunc) -> None:
        """Replace (or add) the function named by `gvar`."""
        self._funcs[gvar.name_hint if isinstance(gvar, GlobalVar) else gvar] = func
        self._by_hash = None

    @staticmethod
    def _hash(func: BaseFunc) -> int:
        from .structural import structural_hash
        return structural_hash(func)

    def _index(self) -> dict[int, list[str]]:
        """structural hash -> names, so add_func finds duplicates without comparing
        against every function (fusion adds hundreds)."""
        if self._by_hash is None:
            self._by_hash = {}
            for k, f in self._funcs.items():
                self._by_hash.setdefault(self._hash(f), []).append(k)
        return self._by_hash

    def get(self) -> IRModule:
        """The module built so far."""
        if self._frame is not None:
            raise CompilerError(f"BlockBuilder.get: function {self._frame.name!r} is still being "
                                "built; call get() after its `with bb.function(...)` block")
        return IRModule(tuple(self._funcs.items()), self._mod_attrs, self._global_infos)

    # function and block scopes ----------------------------------------------------

    @contextmanager
    def function(self, name: str, params: Optional[Sequence[Var]] = None,
                 attrs: Optional[Mapping[str, Any]] = None, pure: bool = True) -> Iterator[None]:
        """Scope of graph function `name`; end it with `emit_func_output`. Params may
        also be given to emit_func_output."""
        if self._frame is not None:
            raise CompilerError(f"BlockBuilder.function({name!r}): already building function "
                                f"{self._frame.name!r}; nested functions are not supported")
        self._frame = _FunctionFrame(name, None if params is None else self._check_params(name, params),
                                     Attrs(attrs or {}), pure)
        try:
            yield
            frame = self._frame
            if frame.result is None:
                raise CompilerError(f"function {name!r}: the `with bb.function(...)` block ended "
                                    "without bb.emit_func_output(...)")
            self._funcs[name] = frame.result
            self._by_hash = None
        finally:
            self._frame = None

    @contextmanager
    def dataflow(self) -> Iterator[None]:
        """Scope of a dataflow block: emit gives DataflowVars, emit_output gives Vars."""
        frame = self._need_frame("dataflow")
        if frame.in_dataflow:
            raise CompilerError(f"function {frame.name!r}: dataflow blocks do not nest")
        self._close_block()
        frame.in_dataflow = True
        try:
            yield
        finally:
            self._close_block()
            frame.in_dataflow = False

    def _need_frame(self, what: str) -> _FunctionFrame:
        if self._frame is None:
            raise CompilerError(f"BlockBuilder.{what}: no function is being built; "
                                "use `with bb.function(name, params):` first")
        return self._frame

    def _close_block(self) -> None:
        frame = self._frame
        if frame is not None and frame.bindings:
            cls = DataflowBlock if frame.in_dataflow else BindingBlock
            frame.blocks.append(cls(tuple(frame.bindings)))
            frame.bindings = []

    @staticmethod
    def _check_params(name: str, params: Sequence[Var]) -> tuple[Var, ...]:
        for i, p in enumerate(params):
            if not isinstance(p, Var) or isinstance(p, DataflowVar):
                raise CompilerError(f"function {name!r}: parameter {i} must be a Var, "
                                    f"got {type(p).__name__}")
            if p.struct_info is None:
                raise StructInfoError(f"function {name!r}: parameter {p.name_hint!r} has no "
                                      "struct info; expected e.g. Var(name, TensorStructInfo(...))")
        return tuple(params)

    # emitting ---------------------------------------------------------------------

    def _fresh(self, dataflow: bool, name_hint: Optional[str]) -> tuple[type, str]:
        frame = self._frame
        assert frame is not None
        if dataflow:
            name = name_hint or f"lv{frame.lv}"
            frame.lv += 1 if name_hint is None else 0
            return DataflowVar, name
        name = name_hint or f"gv{frame.gv}"
        frame.gv += 1 if name_hint is None else 0
        return Var, name

    def emit(self, expr: Expr, name_hint: Optional[str] = None) -> Var:
        """Bind `expr` (normalised) to a fresh variable: a DataflowVar inside a
        dataflow block, else a Var."""
        frame = self._need_frame("emit")
        value = self._anf(expr)
        self._check_scope(value, "emit")
        cls, name = self._fresh(frame.in_dataflow, name_hint)
        var = cls(name, value.struct_info)
        frame.bindings.append(VarBinding(var, value))
        return var

    def emit_output(self, expr: Expr, name_hint: Optional[str] = None) -> Var:
        """Inside a dataflow block: bind `expr` to a Var visible after the block."""
        frame = self._need_frame("emit_output")
        if not frame.in_dataflow:
            raise CompilerError(f"function {frame.name!r}: emit_output is only valid inside "
                                "`with bb.dataflow():`; use emit outside it")
        value = self._anf(expr)
        _, name = self._fresh(False, name_hint)
        var = Var(name, value.struct_info)
        frame.bindings.append(VarBinding(var, value))
        return var

    def emit_match_cast(self, value: Expr, struct_info: StructInfo,
                        name_hint: Optional[str] = None) -> Var:
        """`var = R.match_cast(value, struct_info)`: a run-time checked cast that
        defines the symbolic sizes first appearing in `struct_info`."""
        frame = self._need_frame("emit_match_cast")
        if not isinstance(struct_info, StructInfo):
            raise StructInfoError(f"emit_match_cast: expected a StructInfo, got "
                                  f"{type(struct_info).__name__}")
        value = self._anf(value)
        self._check_scope(value, "emit_match_cast")
        cls, name = self._fresh(frame.in_dataflow, name_hint)
        var = cls(name, struct_info)
        frame.bindings.append(MatchCast(var, value, struct_info))
        return var

    def emit_binding(self, binding: Binding) -> Var:
        """Append a ready-made binding (its value must be normalised)."""
        frame = self._need_frame("emit_binding")
        if binding.value.struct_info is None:
            raise StructInfoError(f"emit_binding {binding.var.name_hint!r}: value has no struct info")
        frame.bindings.append(binding)
        return binding.var

    def emit_func_output(self, output: Union[Expr, Sequence[Expr]],
                         params: Optional[Sequence[Var]] = None) -> None:
        """End the function: `output` (an expression, or a list/tuple of them, which
        becomes a Tuple) is its return value."""
        frame = self._need_frame("emit_func_output")
        if frame.in_dataflow:
            raise CompilerError(f"function {frame.name!r}: emit_func_output inside a dataflow "
                                "block; emit the result with emit_output and close the block first")
        if frame.result is not None:
            raise CompilerError(f"function {frame.name!r}: emit_func_output called twice")
        if params is not None:
            if frame.params is not None:
                raise CompilerError(f"function {frame.name!r}: params given twice "
                                    "(to bb.function and to emit_func_output)")
            frame.params = self._check_params(frame.name, params)
        if frame.params is None:
            frame.params = ()
        if isinstance(output, (list, tuple)):
            output = Tuple(tuple(output))
        output = self._anf(output)
        if not isinstance(output, _LEAVES + (Tuple,)):
            output = self.emit(output)
        self._check_scope(output, "emit_func_output")
        self._close_block()
        sinfo = output.struct_info
        body = SeqExpr(tuple(frame.blocks), output, sinfo)
        func = Function(frame.params, body, sinfo, frame.attrs, frame.pure)
        frame.result = replace(func, struct_info=function_struct_info(func))

    def _check_scope(self, value: Expr, what: str) -> None:
        """A DataflowVar may not be used outside its dataflow block."""
        frame = self._frame
        if frame is None or frame.in_dataflow:
            return
        parts = value.args if isinstance(value, Call) else \
            value.fields if isinstance(value, Tuple) else (value,)
        for p in parts:
            if isinstance(p, DataflowVar):
                raise CompilerError(f"function {frame.name!r}: {what} uses dataflow variable "
                                    f"{p.name_hint!r} outside its dataflow block; bind it with "
                                    "emit_output inside the block")

    # normalisation ------------------------------------------------------------------

    def _anf(self, expr: Expr) -> Expr:
        """Normalise `expr`, binding nested non-leaf arguments to variables first."""
        if isinstance(expr, Call):
            args = tuple(self._anf_arg(a) for a in expr.args)
            if any(x is not y for x, y in zip(args, expr.args)):
                expr = replace(expr, args=args, struct_info=None)
        elif isinstance(expr, Tuple):
            fields = tuple(self._anf_arg(a) for a in expr.fields)
            if any(x is not y for x, y in zip(fields, expr.fields)):
                expr = replace(expr, fields=fields, struct_info=None)
        elif isinstance(expr, TupleGetItem):
            t = self._anf_arg(expr.tuple_value)
            if t is not expr.tuple_value:
                expr = replace(expr, tuple_value=t, struct_info=None)
        return self.normalize(expr)

    def _anf_arg(self, arg: Expr) -> Expr:
        if isinstance(arg, Tuple):
            return self._anf(arg)
        if isinstance(arg, (Call, TupleGetItem, If, SeqExpr)):
            return self.emit(arg)
        return self.normalize(arg)

    def normalize(self, expr: Expr) -> Expr:
        """`expr` with struct info filled in everywhere (no bindings are emitted).
        Calls of operators use the operator's rule; calls of graph functions the
        callee's return struct info with its sizes bound by the arguments;
        call_tir / call_dps_packed / extern calls their `sinfo_args`."""
        if not isinstance(expr, Expr):
            raise CompilerError(f"BlockBuilder.normalize: expected a graph expression, "
                                f"got {type(expr).__name__} {expr!r}")
        if expr.struct_info is not None and not isinstance(expr, (Tuple, Call)):
            return expr
        method = getattr(self, "_norm_" + type(expr).__name__, None)
        if method is None:
            if expr.struct_info is None and not isinstance(expr, (Op, ExternFunc)):
                raise StructInfoError(f"cannot infer struct info of {type(expr).__name__} {expr!r}")
            return expr
        return method(expr)

    def _norm_Var(self, v: Var) -> Expr:
        raise StructInfoError(f"variable {v.name_hint!r} has no struct info; give it one when "
                              "creating it, e.g. Var(name, TensorStructInfo(shape, dtype))")

    _norm_DataflowVar = _norm_Var

    def _norm_GlobalVar(self, gv: GlobalVar) -> Expr:
        return gv

    def _norm_Constant(self, c: Constant) -> Expr:
        data = np.asarray(c.data)
        return c.with_struct_info(TensorStructInfo(tuple(IntImm(int(d)) for d in data.shape),
                                                   str(data.dtype)))

    def _norm_ShapeExpr(self, s: ShapeExpr) -> Expr:
        values = tuple(as_expr(v) for v in s.values)
        return replace(s, values=values, struct_info=ShapeStructInfo(values))

    def _norm_PrimValue(self, p: PrimValue) -> Expr:
        value = as_expr(p.value)
        return replace(p, value=value, struct_info=PrimStructInfo(value.dtype, value))

    def _norm_StringImm(self, s: StringImm) -> Expr:
        return s.with_struct_info(ObjectStructInfo())

    _norm_DataTypeImm = _norm_StringImm

    def _norm_Tuple(self, t: Tuple) -> Expr:
        fields = tuple(self.normalize(f) for f in t.fields)
        if t.struct_info is not None and all(x is y for x, y in zip(fields, t.fields)):
            return t
        return replace(t, fields=fields,
                       struct_info=TupleStructInfo(tuple(f.struct_info for f in fields)))

    def _norm_TupleGetItem(self, t: TupleGetItem) -> Expr:
        tup = self.normalize(t.tuple_value)
        sinfo = tup.struct_info
        if not isinstance(sinfo, TupleStructInfo):
            raise StructInfoError(f"tuple index [{t.index}]: expected a tuple, got "
                                  f"{type(sinfo).__name__}")
        if not 0 <= t.index < len(sinfo.fields):
            raise StructInfoError(f"tuple index [{t.index}] out of range for a tuple of "
                                  f"{len(sinfo.fields)} fields")
        return replace(t, tuple_value=tup, struct_info=sinfo.fields[t.index])

    def _norm_If(self, node: If) -> Expr:
        from .structural import structural_equal
        c, a, b = (self.normalize(x) for x in (node.condition, node.true_branch, node.false_branch))
        sinfo = a.struct_info if structural_equal(a.struct_info, b.struct_info) else ObjectStructInfo()
        return replace(node, condition=c, true_branch=a, false_branch=b, struct_info=sinfo)

    def _norm_SeqExpr(self, s: SeqExpr) -> Expr:
        body = self.normalize(s.body)
        return replace(s, body=body, struct_info=body.struct_info)

    def _norm_Function(self, f: Function) -> Expr:
        return f.with_struct_info(function_struct_info(f))

    def _norm_Call(self, call: Call) -> Expr:
        args = tuple(self.normalize(a) for a in call.args)
        if call.struct_info is not None and all(x is y for x, y in zip(args, call.args)):
            return call
        call = replace(call, args=args)
        return call.with_struct_info(self._call_sinfo(call))

    def _call_sinfo(self, call: Call) -> StructInfo:
        op = call.op
        if isinstance(op, Op):
            from ..op.registry import find_op, infer_call
            if find_op(op.name) is not None:
                return infer_call(call).struct_info
            if call.sinfo_args:
                return call.sinfo_args[0]
            raise StructInfoError(f"call of operator {op.name!r}: operator is not registered "
                                  "(import its module) and the call has no sinfo_args")
        if isinstance(op, GlobalVar):
            callee = self._funcs.get(op.name_hint)
            if isinstance(callee, Function):
                return derive_call_ret_struct_info(function_struct_info(callee), call.args,
                                                   op.name_hint)
            if isinstance(op.struct_info, FuncStructInfo):
                return derive_call_ret_struct_info(op.struct_info, call.args, op.name_hint)
            if isinstance(callee, PrimFunc):
                raise StructInfoError(f"call of tensor program {op.name_hint!r}: call it through "
                                      "call_tir, which gives the output struct info")
            if call.sinfo_args:
                return call.sinfo_args[0]
            raise StructInfoError(f"call of {op.name_hint!r}: no such function in the module "
                                  f"(it has {sorted(self._funcs)}) and no sinfo_args")
        if isinstance(op, ExternFunc):
            return call.sinfo_args[0] if call.sinfo_args else ObjectStructInfo()
        callee_sinfo = self.normalize(op).struct_info
        if isinstance(callee_sinfo, FuncStructInfo):
            return derive_call_ret_struct_info(callee_sinfo, call.args, _name(op))
        if call.sinfo_args:
            return call.sinfo_args[0]
        raise StructInfoError(f"call of {_name(op)}: callee is not a function "
                              f"(struct info {type(callee_sinfo).__name__})")


def _name(e: Expr) -> str:
    return getattr(e, "name_hint", None) or type(e).__name__
