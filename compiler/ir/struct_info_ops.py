"""Operations on struct info that involve symbolic sizes: free vars, substitution,
matching an argument against a parameter, and the result of calling a function.

`derive_call_ret_struct_info` is how the builder types a call of a graph function:
the callee's parameters bind their symbolic dims (`x: (n, 4)` called with a
`(m * 2, 4)` argument binds n := m * 2), then the return struct info is rewritten
with those bindings and simplified.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

from . import arith
from .errors import StructInfoError
from .expr import PrimExpr, Var
from .struct_info import (DTensorStructInfo, FuncStructInfo, ObjectStructInfo, PrimStructInfo,
                          ShapeStructInfo, StructInfo, TensorStructInfo, TupleStructInfo)

__all__ = ["struct_info_free_vars", "substitute_struct_info", "match_struct_info",
           "derive_call_ret_struct_info"]


def _exprs(sinfo: Optional[StructInfo]) -> list[PrimExpr]:
    """Every PrimExpr of `sinfo`, in order."""
    if isinstance(sinfo, TensorStructInfo):
        return list(sinfo.shape or ())
    if isinstance(sinfo, DTensorStructInfo):
        return _exprs(sinfo.tensor)
    if isinstance(sinfo, ShapeStructInfo):
        return list(sinfo.values or ())
    if isinstance(sinfo, PrimStructInfo):
        return [sinfo.value] if sinfo.value is not None else []
    if isinstance(sinfo, TupleStructInfo):
        return [e for f in sinfo.fields for e in _exprs(f)]
    if isinstance(sinfo, FuncStructInfo):
        out = [e for p in sinfo.params or () for e in _exprs(p)]
        return out + _exprs(sinfo.ret)
    return []


def struct_info_free_vars(sinfo: Optional[StructInfo]) -> list[Var]:
    """Symbolic vars mentioned by `sinfo`, in first-appearance order, each once."""
    return arith.free_vars(_exprs(sinfo))


def substitute_struct_info(sinfo: StructInfo, mapping: Mapping[Var, Any],
                           simplify: bool = True) -> StructInfo:
    """`sinfo` with symbolic vars replaced (and the dims simplified)."""
    if not mapping:
        return sinfo

    def sub(e: PrimExpr) -> PrimExpr:
        out = arith.substitute(e, mapping)
        return arith.simplify(out) if simplify and out is not e else out

    def go(s: StructInfo) -> StructInfo:
        if isinstance(s, TensorStructInfo) and s.shape is not None:
            return replace(s, shape=tuple(sub(d) for d in s.shape))
        if isinstance(s, DTensorStructInfo):
            return replace(s, tensor=go(s.tensor))
        if isinstance(s, ShapeStructInfo) and s.values is not None:
            return replace(s, values=tuple(sub(d) for d in s.values))
        if isinstance(s, PrimStructInfo) and s.value is not None:
            return replace(s, value=sub(s.value))
        if isinstance(s, TupleStructInfo):
            return replace(s, fields=tuple(go(f) for f in s.fields))
        if isinstance(s, FuncStructInfo):
            params = None if s.params is None else tuple(go(p) for p in s.params)
            return replace(s, params=params, ret=go(s.ret))
        return s

    return go(sinfo)


def match_struct_info(param: StructInfo, arg: Optional[StructInfo],
                      bindings: dict[Var, PrimExpr]) -> None:
    """Bind the symbolic vars of `param` that appear bare (`(n, 4)` binds n) to the
    matching dims of `arg`; other dims are left to run-time checks."""
    if arg is None:
        return
    if isinstance(param, DTensorStructInfo):
        param = param.tensor
    if isinstance(arg, DTensorStructInfo):
        arg = arg.tensor
    pairs: list[tuple[PrimExpr, PrimExpr]] = []
    if isinstance(param, TensorStructInfo) and isinstance(arg, TensorStructInfo):
        if param.shape is not None and arg.shape is not None and len(param.shape) == len(arg.shape):
            pairs = list(zip(param.shape, arg.shape))
    elif isinstance(param, ShapeStructInfo) and isinstance(arg, ShapeStructInfo):
        if param.values is not None and arg.values is not None and len(param.values) == len(arg.values):
            pairs = list(zip(param.values, arg.values))
    elif isinstance(param, PrimStructInfo) and isinstance(arg, PrimStructInfo):
        if param.value is not None and arg.value is not None:
            pairs = [(param.value, arg.value)]
    elif isinstance(param, TupleStructInfo) and isinstance(arg, TupleStructInfo):
        for p, a in zip(param.fields, arg.fields):
            match_struct_info(p, a, bindings)
    for p, a in pairs:
        if isinstance(p, Var) and p not in bindings:
            bindings[p] = a


def derive_call_ret_struct_info(func_sinfo: StructInfo, args: Sequence[Any],
                                callee: str = "function") -> StructInfo:
    """The struct info of calling a function of struct info `func_sinfo` with `args`
    (expressions with struct info, or struct infos)."""
    if not isinstance(func_sinfo, FuncStructInfo):
        raise StructInfoError(f"call of {callee}: expected a function (FuncStructInfo), "
                              f"got {type(func_sinfo).__name__}")
    arg_sinfos = [a if isinstance(a, StructInfo) or a is None else a.struct_info for a in args]
    if func_sinfo.params is None:
        return func_sinfo.ret
    if len(func_sinfo.params) != len(arg_sinfos):
        raise StructInfoError(f"call of {callee}: expected {len(func_sinfo.params)} arguments, "
                              f"given {len(arg_sinfos)}")
    bindings: dict[Var, PrimExpr] = {}
    for p, a in zip(func_sinfo.params, arg_sinfos):
        match_struct_info(p, a, bindings)
    # A size of the callee's parameters that no argument determines (it appears only
    # inside an expression such as `n * 2`) leaves the result's shape unknown.
    param_vars = set(struct_info_free_vars(TupleStructInfo(func_sinfo.params)))
    unbound = [v for v in struct_info_free_vars(func_sinfo.ret)
               if v in param_vars and v not in bindings]
    ret = substitute_struct_info(func_sinfo.ret, bindings)
    if unbound and isinstance(ret, TensorStructInfo):
        return TensorStructInfo(None, ret.dtype, ret.ndim)
    return ret if ret is not None else ObjectStructInfo()
