"""Parsing `@R.function` definitions into graph Functions.

    def main(x: R.Tensor(("n", 128), "float32")) -> R.Tensor(("n", 64), "float32"):
        n = T.int64()                      # symbolic size (the same `n` as in "n")
        R.func_attr({"global_symbol": "main"})
        with R.dataflow():                 # DataflowBlock
            lv = R.call_tir(cls.mm, (x,), R.Tensor((n, 64), "float32"))
            gv: R.Tensor((n, 64), "float32") = R.nn.relu(lv)
            R.output(gv)                   # gv is a Var, lv a DataflowVar
        y = R.match_cast(gv, R.Tensor((n, 64), "float32"))   # MatchCast
        return y

Operator calls go through the registry's constructors, so struct info is inferred
by each operator's rule; a call of another function of the module (`cls.f(x)`) gets
its struct info from f's signature with sizes bound by the arguments.
"""
from __future__ import annotations

import ast
from typing import Any, Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import struct_info as S
from ..ir.attrs import Attrs
from ..ir.struct_info_ops import derive_call_ret_struct_info
from .evaluator import DtypeMarker, Evaluator, ModuleRef, OutOfScope, Source, dotted, float_value


class RelaxEvaluator(Evaluator):
    """Expression evaluation inside graph functions (and module-level infos)."""

    def __init__(self, src: Source, module: Optional[ModuleRef], class_name: Optional[str],
                 module_parser: Any = None):
        super().__init__(src, module, class_name)
        self.module_parser = module_parser
        self.calls.update({
            "R.Tensor": self.r_tensor, "R.Tuple": self.r_tuple, "R.Shape": self.r_shape,
            "R.Object": lambda node: S.ObjectStructInfo(), "R.Prim": self.r_prim,
            "R.Callable": self.r_callable, "R.DTensor": self.r_dtensor,
            "R.const": self.r_const, "R.ExternFunc": lambda node, name: G.ExternFunc(name),
            "R.device_mesh": self.r_device_mesh, "R.Call": self.r_call, "I.Range": lambda node, a, b=None:
                range(a) if b is None else range(a, b),
        })

    # struct info -------------------------------------------------------------------

    def r_tensor(self, node, shape=None, dtype="float32", ndim=-1):
        if isinstance(shape, str):   # R.Tensor("float32"): the dtype alone
            shape, dtype = None, shape
        if shape is None:
            return S.TensorStructInfo(None, dtype, ndim)
        if not isinstance(shape, (list, tuple)):
            raise self.err(node, f"R.Tensor: expected a shape tuple such as (\"n\", 4), got {shape!r}")
        dims = tuple(self.dim(d, node) for d in shape)
        if ndim not in (-1, len(dims)):
            raise self.err(node, f"R.Tensor: ndim={ndim} does not match the shape's {len(dims)} dims")
        return S.TensorStructInfo(dims, dtype)

    def r_tuple(self, node, *fields):
        if len(fields) == 1 and isinstance(fields[0], (list, tuple)):
            fields = tuple(fields[0])
        for f in fields:
            if not isinstance(f, S.StructInfo):
                raise self.err(node, f"R.Tuple: expected struct infos (R.Tensor(...), ...), got {f!r}")
        return S.TupleStructInfo(tuple(fields))

    def r_shape(self, node, values=None, ndim=-1):
        if values is None:
            return S.ShapeStructInfo(None, ndim)
        return S.ShapeStructInfo(tuple(self.dim(d, node) for d in values))

    def r_prim(self, node, dtype=None, value=None):
        if value is not None:
            v = self.dim(value, node) if isinstance(value, str) else E.as_expr(value)
            return S.PrimStructInfo(dtype or v.dtype, v)
        return S.PrimStructInfo(dtype or "int64")

    def r_callable(self, node, params=None, ret=None, purity=True):
        return S.FuncStructInfo(None if params is None else tuple(params),
                                ret if ret is not None else S.ObjectStructInfo(), purity)

    def r_dtensor(self, node, shape=None, dtype="float32", device_mesh="mesh[0]", placement="R",
                  ndim=-1):
        tensor = self.r_tensor(node, shape, dtype, ndim)
        return S.DTensorStructInfo(tensor, device_mesh, placement)

    # values ------------------------------------------------------------------------------

    def r_const(self, node, value, dtype=None):
        from ..op.builtin import const
        return const(_floats(value), dtype)

    def r_device_mesh(self, node, shape, device_ids):
        from ..distributed import DeviceMesh
        return DeviceMesh(tuple(shape), device_ids)

    def r_call(self, node, op_name, args, attrs=None, sinfo_args=(), struct_info=None):
        """`R.Call("relax.my_op", (x,), attrs={...}, sinfo_args=[...], struct_info=...)`:
        a call of an operator that is not registered, spelt out."""
        fields = self.to_expr(tuple(args), node).fields
        return G.Call(G.Op(op_name), fields, Attrs(attrs or {}), tuple(sinfo_args or ()), struct_info)

    def call_value(self, node, callee, args, kwargs):
        if kwargs:
            raise self.err(node, "calls of functions take positional arguments only")
        args = [self.to_expr(a, node) for a in args]
        if isinstance(callee, G.GlobalVar):
            mp = self.module_parser
            if mp is not None and mp.kind(callee.name_hint) == "T.prim_func":
                raise self.err(node, f"'{callee.name_hint}' is a tensor program; call it with "
                                     f"R.call_tir(cls.{callee.name_hint}, (args...), out_sinfo=...)")
            sinfo = mp.relax_parser(callee.name_hint).signature() if mp is not None else None
            ret = self._with_pos(node, lambda: derive_call_ret_struct_info(
                sinfo, args, callee.name_hint))
            return G.Call(callee, tuple(args), struct_info=ret)
        if isinstance(callee, G.Var) and isinstance(callee.struct_info, S.FuncStructInfo):
            ret = self._with_pos(node, lambda: derive_call_ret_struct_info(
                callee.struct_info, args, callee.name_hint))
            return G.Call(callee, tuple(args), struct_info=ret)
        raise self.err(node, f"cannot call a {type(callee).__name__}")

    def to_expr(self, value: Any, node: ast.AST) -> G.Expr:
        """A graph expression from an evaluated value (tuples become Tuple)."""
        from ..op import infer
        if isinstance(value, G.Expr):
            return value
        if isinstance(value, (list, tuple)):
            return infer.tuple_expr([self.to_expr(v, node) for v in value])
        if isinstance(value, E.PrimExpr) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return infer.prim_value(value)
        if isinstance(value, str):
            return G.StringImm(value, S.ObjectStructInfo())
        raise self.err(node, f"expected a graph value (a variable, a call, a tuple), got "
                             f"{type(value).__name__} {value!r}")


def _floats(value: Any) -> Any:
    """R.const data: the strings "inf"/"nan" inside lists mean floats."""
    if isinstance(value, str):
        return float_value(value)
    if isinstance(value, (list, tuple)):
        return [_floats(v) for v in value]
    return value


def is_size_decl(stmt: ast.stmt) -> Optional[tuple[str, str]]:
    """`n = T.int64()` -> ("n", "int64")."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
            isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call) and \
            not stmt.value.args and not stmt.value.keywords:
        name = dotted(stmt.value.func)
        if name is not None and name.startswith("T.") and name[2:] in E.DTYPES:
            return stmt.targets[0].id, name[2:]
    return None


def _call_name(stmt: ast.stmt) -> Optional[str]:
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return dotted(stmt.value.func)
    return None


class RelaxParser:
    """One `@R.function`: signature first (other functions' calls need it), then body."""

    def __init__(self, src: Source, fdef: ast.FunctionDef, kwargs: dict, module_parser: Any,
                 ref: Optional[ModuleRef], class_name: Optional[str]):
        self.src = src
        self.fdef = fdef
        self.pure = bool(kwargs.pop("pure", True))
        kwargs.pop("private", None)
        if kwargs:
            raise src.error(fdef, f"@R.function: unknown arguments {sorted(kwargs)}; expected pure=")
        self.ev = RelaxEvaluator(src, ref, class_name, module_parser)
        self.params: Optional[list[G.Var]] = None
        self.ret: Optional[S.StructInfo] = None
        self.result: Optional[G.Function] = None
        self.busy = False

    def err(self, node, message):
        return self.src.error(node, message)

    def _signature(self) -> None:
        if self.params is not None:
            return
        ev, fdef = self.ev, self.fdef
        for stmt in fdef.body:
            decl = is_size_decl(stmt)
            if decl is not None:
                if decl[0] in ev.scopes[0]:
                    raise self.err(stmt, f"symbolic size '{decl[0]}' is declared twice")
                ev.scopes[0][decl[0]] = E.Var(decl[0], decl[1])
        a = fdef.args
        if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
            raise self.err(fdef, f"function '{fdef.name}': only plain positional parameters are supported")
        params = []
        for arg in a.args:
            if arg.annotation is None:
                raise self.err(arg, f"expected R.Tensor(...) annotation for parameter '{arg.arg}'")
            sinfo = ev.eval(arg.annotation)
            if not isinstance(sinfo, S.StructInfo):
                raise self.err(arg.annotation, f"expected R.Tensor(...) annotation for parameter "
                                               f"'{arg.arg}', got {type(sinfo).__name__}")
            var = G.Var(arg.arg, sinfo)
            if isinstance(ev.scopes[0].get(arg.arg), E.Var):
                raise self.err(arg, f"parameter '{arg.arg}' has the name of a symbolic size")
            params.append(var)
        for p in params:
            ev.define(p.name_hint, p)
        self.params = params
        if fdef.returns is not None:
            ret = ev.eval(fdef.returns)
            if not isinstance(ret, S.StructInfo):
                raise self.err(fdef.returns, f"expected a struct info return annotation "
                                             f"(R.Tensor(...)), got {type(ret).__name__}")
            self.ret = ret

    def signature(self) -> S.FuncStructInfo:
        """The function's FuncStructInfo (parses the body when the return is not annotated)."""
        self._signature()
        if self.ret is None:
            if self.busy:
                raise self.err(self.fdef, f"function '{self.fdef.name}' is called recursively; "
                                          "annotate its return type (-> R.Tensor(...))")
            self.parse()
        return S.FuncStructInfo(tuple(p.struct_info for p in self.params), self.ret, self.pure)

    def parse(self) -> G.Function:
        if self.result is not None:
            return self.result
        self._signature()
        self.busy = True
        ev = self.ev
        attrs: dict = {}
        blocks: list[G.BindingBlock] = []
        current: list[Any] = []
        body = list(self.fdef.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        ret_expr = None
        for i, stmt in enumerate(body):
            if ret_expr is not None:
                raise self.err(stmt, "statement after return")
            if is_size_decl(stmt) is not None or isinstance(stmt, ast.Pass):
                continue
            name = _call_name(stmt)
            if name == "R.func_attr":
                value = ev.eval(stmt.value.args[0]) if stmt.value.args else None
                if not isinstance(value, dict):
                    raise self.err(stmt, "R.func_attr takes a dict, e.g. R.func_attr({\"global_symbol\": \"main\"})")
                attrs.update(value)
            elif isinstance(stmt, ast.With):
                if len(stmt.items) != 1 or dotted(getattr(stmt.items[0].context_expr, "func", None)) \
                        != "R.dataflow":
                    raise self.err(stmt, "expected `with R.dataflow():`")
                if current:
                    blocks.append(G.BindingBlock(tuple(current)))
                    current = []
                blocks.append(self.dataflow(stmt))
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                current.append(self.binding(stmt, dataflow=False))
            elif isinstance(stmt, ast.Return):
                if stmt.value is None:
                    raise self.err(stmt, "expected a value to return")
                ret_expr = ev.to_expr(ev.eval(stmt.value), stmt.value)
            elif name == "R.output":
                raise self.err(stmt, "R.output(...) is only valid inside `with R.dataflow():`")
            else:
                raise self.err(stmt, "unexpected statement in an R.function; expected an assignment "
                                     "`x = R.op(...)`, `with R.dataflow():`, R.func_attr({...}) "
                                     "or return")
        if current:
            blocks.append(G.BindingBlock(tuple(current)))
        if ret_expr is None:
            raise self.err(self.fdef, f"function '{self.fdef.name}' has no return statement")
        if ret_expr.struct_info is None:
            raise self.err(self.fdef, "cannot infer the struct info of the returned value")
        if self.ret is None:
            self.ret = ret_expr.struct_info
        seq = G.SeqExpr(tuple(blocks), ret_expr, ret_expr.struct_info)
        func = G.Function(tuple(self.params), seq, self.ret, Attrs(attrs), self.pure)
        from ..ir.builder import function_struct_info
        self.result = func.with_struct_info(function_struct_info(func))
        self.busy = False
        return self.result

    def dataflow(self, stmt: ast.With) -> G.DataflowBlock:
        ev = self.ev
        outputs: dict[str, ast.AST] = {}
        last: dict[str, int] = {}
        for i, s in enumerate(stmt.body):
            if _call_name(s) == "R.output":
                for a in s.value.args:
                    if not isinstance(a, ast.Name):
                        raise self.err(a, "R.output takes variable names")
                    outputs[a.id] = a
            elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
                last[s.targets[0].id] = i
            elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                last[s.target.id] = i
        for name, node in outputs.items():
            if name not in last:
                raise self.err(node, f"R.output: '{name}' is not assigned in this dataflow block")
        bindings = []
        local: list[str] = []
        for i, s in enumerate(stmt.body):
            if _call_name(s) == "R.output" or isinstance(s, ast.Pass):
                continue
            if not isinstance(s, (ast.Assign, ast.AnnAssign)):
                raise self.err(s, "expected an assignment or R.output(...) inside `with R.dataflow():`")
            target = s.targets[0] if isinstance(s, ast.Assign) else s.target
            is_out = isinstance(target, ast.Name) and last.get(target.id) == i and target.id in outputs
            b = self.binding(s, dataflow=not is_out)
            if not is_out:
                local.append(b.var.name_hint)
            bindings.append(b)
        for name in local:
            if isinstance(ev.scopes[-1].get(name), G.DataflowVar):
                ev.scopes[-1][name] = OutOfScope(name)
        return G.DataflowBlock(tuple(bindings))

    def binding(self, stmt: Any, dataflow: bool) -> Any:
        ev = self.ev
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                raise self.err(stmt, "expected an assignment to one name, `x = ...`")
            target, ann_node = stmt.targets[0], None
        else:
            if not isinstance(stmt.target, ast.Name) or stmt.value is None:
                raise self.err(stmt, "expected `x: R.Tensor(...) = ...`")
            target, ann_node = stmt.target, stmt.annotation
        name = target.id
        if isinstance(ev.scopes[0].get(name), E.Var):
            raise self.err(target, f"'{name}' is a symbolic size; choose another variable name")
        ann = None
        if ann_node is not None:
            ann = ev.eval(ann_node)
            if not isinstance(ann, S.StructInfo):
                raise self.err(ann_node, f"expected a struct info annotation (R.Tensor(...)), "
                                         f"got {type(ann).__name__}")
        cls = G.DataflowVar if dataflow else G.Var
        value_node = stmt.value
        if isinstance(value_node, ast.Call) and dotted(value_node.func) == "R.match_cast":
            if len(value_node.args) != 2:
                raise self.err(value_node, "R.match_cast takes (value, struct_info)")
            value = ev.to_expr(ev.eval(value_node.args[0]), value_node.args[0])
            sinfo = ev.eval(value_node.args[1])
            if not isinstance(sinfo, S.StructInfo):
                raise self.err(value_node.args[1], "R.match_cast: expected a struct info "
                                                   "(R.Tensor(...)) as second argument")
            var = cls(name, ann if ann is not None else sinfo)
            ev.define(name, var)
            return G.MatchCast(var, value, sinfo)
        value = ev.to_expr(ev.eval(value_node), value_node)
        sinfo = value.struct_info
        if ann is not None:
            _check_annotation(self, ann_node, ann, sinfo)
            sinfo = ann
            if isinstance(value, G.Call) and value.struct_info is not None:
                # A variable's struct info is its value's (as the builder makes them);
                # the annotation may only refine it, e.g. a shape the rule cannot prove.
                value = value.with_struct_info(ann)
        if sinfo is None:
            raise self.err(value_node, f"cannot infer the struct info of '{name}'; annotate it: "
                                       f"`{name}: R.Tensor(...) = ...`")
        var = cls(name, sinfo)
        ev.define(name, var)
        return G.VarBinding(var, value)


def _check_annotation(p: RelaxParser, node: ast.AST, ann: S.StructInfo,
                      inferred: Optional[S.StructInfo]) -> None:
    """An annotation may refine what is inferred but not contradict it."""
    if inferred is None:
        return
    a = ann.tensor if isinstance(ann, S.DTensorStructInfo) else ann
    b = inferred.tensor if isinstance(inferred, S.DTensorStructInfo) else inferred
    if isinstance(a, S.TensorStructInfo) and isinstance(b, S.TensorStructInfo):
        if a.dtype != b.dtype or (a.ndim >= 0 and b.ndim >= 0 and a.ndim != b.ndim):
            raise p.err(node, f"annotation does not match the value: annotated dtype {a.dtype}, "
                              f"ndim {a.ndim}; inferred dtype {b.dtype}, ndim {b.ndim}")
    elif type(a) is not type(b) and not isinstance(a, S.ObjectStructInfo):
        raise p.err(node, f"annotation does not match the value: annotated "
                          f"{type(a).__name__}, inferred {type(b).__name__}")


__all__ = ["RelaxParser", "RelaxEvaluator", "is_size_decl", "DtypeMarker"]
