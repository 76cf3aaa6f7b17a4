"""Script built-ins: value constructors (`R.const`, `R.shape`, `R.prim_value`, `R.str`,
`R.dtype`) and the calls into tensor programs and libraries (`R.call_tir`,
`R.call_dps_packed`).

The value constructors are plain functions, not operators: they build leaf nodes
with their struct info filled in. call_tir / call_dps_packed are operators whose
result struct info is given by the caller (`out_sinfo`, kept in `Call.sinfo_args`);
they are printed as `R.call_tir(cls.f, (x, y), out_sinfo=R.Tensor(...), tir_vars=...)`
(see OpDef.script_parts).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..ir.errors import DTypeError, StructInfoError
from ..ir.expr import IntImm
from ..ir.graph import (Call, Constant, DataTypeImm, Expr, ExternFunc, GlobalVar, Op, PrimValue,
                        ShapeExpr, StringImm, Tuple)
from ..ir.struct_info import (ObjectStructInfo, StructInfo, TensorStructInfo, TupleStructInfo)
from ..ir.attrs import Attrs
from . import _infer as I
from .registry import OPAQUE, register_op


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def const(value: Any, dtype: Optional[str] = None) -> Constant:
    """`R.const(0.5, "float32")`: a tensor constant (a scalar or any array-like).

    Without dtype: a numpy array keeps its dtype; Python floats give float32, ints
    int64 and bools bool (as TVM)."""
    if dtype is not None:
        I.check_dtype("R.const", dtype)
        data = np.asarray(value, dtype=_np_dtype(dtype))
    elif isinstance(value, np.ndarray):
        data = value
    else:
        data = np.asarray(value)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        elif data.dtype.kind in "iu":
            data = data.astype(np.int64)
    name = str(data.dtype)
    if name not in I.E.DTYPES:
        raise DTypeError(f"R.const: unsupported dtype {name} of value {value!r}")
    sinfo = TensorStructInfo(tuple(IntImm(int(d)) for d in data.shape), name)
    return Constant(data, sinfo)


def shape(values: Sequence[Any]) -> ShapeExpr:
    """`R.shape([n * 2, 16])`."""
    return I.shape_expr(values)


def prim_value(value: Any, dtype: Optional[str] = None) -> PrimValue:
    """`R.prim_value(1)` or a symbolic `R.prim_value(n)`."""
    return I.prim_value(value, dtype)


def string_imm(value: str) -> StringImm:
    """`R.str("...")`."""
    return StringImm(value, ObjectStructInfo())


def dtype(value: str) -> DataTypeImm:
    """`R.dtype("float32")`."""
    return DataTypeImm(I.check_dtype("R.dtype", value), ObjectStructInfo())


# call_tir / call_dps_packed -------------------------------------------------------------


def _out_sinfo(op: str, out_sinfo: Any) -> StructInfo:
    if isinstance(out_sinfo, (list, tuple)):
        return TupleStructInfo(tuple(_out_sinfo(op, s) for s in out_sinfo))
    if isinstance(out_sinfo, TupleStructInfo):
        for s in out_sinfo.fields:
            _out_sinfo(op, s)
        return out_sinfo
    if isinstance(out_sinfo, TensorStructInfo):
        return out_sinfo
    raise StructInfoError(f"{op}: out_sinfo must be a tensor struct info (R.Tensor(...)) or a "
                          f"list of them, got {type(out_sinfo).__name__}")


def _args_tuple(op: str, args: Any) -> Expr:
    if isinstance(args, Expr) and not isinstance(args, Tuple):
        args = [args]
    return I.as_expr_arg(op, args, "args")


def _call_with_out(name: str, args: tuple, out: StructInfo) -> Call:
    # The rule reads only out_sinfo, so infer now even when a callee has no struct info.
    return Call(Op(name), args, Attrs(), (out,), out)


def _script_parts(call: Call):
    positional = [call.args[0], call.args[1]]
    out = call.sinfo_args[0]
    keywords = [("out_sinfo", list(out.fields) if isinstance(out, TupleStructInfo) else out)]
    if len(call.args) > 2:
        keywords.append(("tir_vars", call.args[2]))
    return positional, keywords


@register_op("relax.call_tir", script="R.call_tir", args=("gvar", "args", "tir_vars"),
             pattern=OPAQUE)
def call_tir(gvar, args, out_sinfo, tir_vars=None) -> Call:
    """`R.call_tir(cls.f, (x, y), out_sinfo=R.Tensor((n, 4), "float32"), tir_vars=None)`.

    Calls tensor program `gvar` in destination-passing style; a list of out_sinfo
    gives a tuple result. `tir_vars` (R.shape([...])) passes extra scalar arguments."""
    op = "R.call_tir"
    if not isinstance(gvar, GlobalVar):
        raise StructInfoError(f"{op}: gvar must be a GlobalVar (a tensor program of the "
                              f"module), got {type(gvar).__name__}")
    call_args = (gvar, _args_tuple(op, args))
    if tir_vars is not None:
        call_args += (I.as_shape_arg(op, tir_vars, "tir_vars"),)
    return _call_with_out("relax.call_tir", call_args, _out_sinfo(op, out_sinfo))


@register_op("relax.call_dps_packed", script="R.call_dps_packed", args=("func", "args"),
             pattern=OPAQUE)
def call_dps_packed(func, args, out_sinfo) -> Call:
    """`R.call_dps_packed("cublas_matmul", (x, w), out_sinfo=R.Tensor(...))`."""
    op = "R.call_dps_packed"
    if isinstance(func, str):
        func = ExternFunc(func)
    if not isinstance(func, Expr):
        raise StructInfoError(f"{op}: func must be a function name or ExternFunc, got {func!r}")
    return _call_with_out("relax.call_dps_packed", (func, _args_tuple(op, args)),
                          _out_sinfo(op, out_sinfo))


def _out_rule(call: Call) -> StructInfo:
    return call.sinfo_args[0]


for _opdef in (call_tir, call_dps_packed):
    _opdef.infer(_out_rule)
    _opdef.extra["script_parts"] = _script_parts
