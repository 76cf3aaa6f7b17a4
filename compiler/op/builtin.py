"""Script built-ins: value constructors (`R.const`, `R.shape`, `R.prim_value`, `R.str`,
`R.dtype`), the calls into tensor programs and libraries (`R.call_tir`,
`R.call_dps_packed`, `R.call_pure_packed`, `R.call_packed`) and
`R.builtin.alloc_tensor` (emitted by memory planning).

The value constructors are plain functions, not operators: they build leaf nodes
with their struct info filled in. call_tir / call_dps_packed are operators whose
result struct info is given by the caller (`out_sinfo`, kept in `Call.sinfo_args`);
they are printed as `R.call_tir(cls.f, (x, y), out_sinfo=R.Tensor(...), tir_vars=...)`
(see OpDef.script_parts).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from . import sharding as _sharding
from ..ir.errors import DTypeError, ShapeError, StructInfoError
from ..ir.expr import IntImm
from ..ir.graph import (Call, Constant, DataTypeImm, Expr, ExternFunc, GlobalVar, Op, PrimValue,
                        ShapeExpr, StringImm, Tuple)
from ..ir.struct_info import (ObjectStructInfo, StructInfo, TensorStructInfo, TupleStructInfo)
from ..ir.attrs import Attrs
from . import infer as I
from .registry import OPAQUE, make_call, register_op


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
        data = _const_data(value, dtype)
    elif isinstance(value, np.ndarray):
        data = value
    else:
        data = _const_data(value, None)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        elif data.dtype.kind in "iu":
            data = _const_data(value, "int64")     # 2**63 would wrap in astype
    name = str(data.dtype)
    if name not in I.E.DTYPES:
        raise DTypeError(f"R.const: unsupported dtype {name} of value {value!r}")
    sinfo = TensorStructInfo(tuple(IntImm(int(d)) for d in data.shape), name)
    return Constant(data, sinfo)


def _const_data(value: Any, dtype: Optional[str]) -> np.ndarray:
    """`value` as an array of `dtype`; a value out of the dtype's range (numpy's
    OverflowError, or a finite float that would become inf) or nested lists of
    unequal lengths are errors naming R.const, the value and the dtype."""
    what = f"R.const: value {_short_repr(value)}" + (f" with dtype {dtype}" if dtype else "")
    try:
        with np.errstate(over="raise"):
            return np.asarray(value, dtype=None if dtype is None else _np_dtype(dtype))
    except (OverflowError, FloatingPointError):
        raise DTypeError(f"{what}: out of the range of {dtype}{_range_of(dtype)}") from None
    except (ValueError, TypeError) as e:
        if _ragged(value):
            raise ShapeError(f"{what}: nested lists of unequal lengths do not make a tensor; "
                             f"expected a rectangular nesting (every row the same length)") from None
        raise DTypeError(f"{what}: cannot be converted: {e}") from None


def _range_of(dtype: Optional[str]) -> str:
    if dtype is None or dtype == "bool":
        return ""
    info = np.iinfo(dtype) if I.E.is_int_dtype(dtype) else np.finfo(_np_dtype(dtype))
    return f" ({info.min} to {info.max})"


def _ragged(value: Any) -> bool:
    """Whether nested lists/tuples have rows of different lengths or depths."""
    if not isinstance(value, (list, tuple)):
        return False
    rows = [isinstance(v, (list, tuple, np.ndarray)) for v in value]
    if any(rows) and not all(rows):
        return True
    if not any(rows):
        return False
    if len({len(v) for v in value}) > 1:
        return True
    return any(_ragged(list(v) if isinstance(v, np.ndarray) else v) for v in value)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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


_dtype_imm = dtype   # alloc_tensor's parameter `dtype` shadows the function


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
    # A single tensor becomes a one-element Tuple; an expression of tuple type stays (as TVM).
    if isinstance(args, Expr) and not isinstance(args, Tuple) and \
            not isinstance(args.struct_info, TupleStructInfo):
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


@call_tir.sharding
def _call_tir_sharding(call: Call, mod=None):
    """Placements from the callee's loop/buffer access patterns
    (compiler/op/sharding.call_tir_rule); needs the module holding the callee."""
    if mod is None or call.args[0].name_hint not in mod:
        return _sharding.opaque(call)
    return _sharding.call_tir_rule(call, mod[call.args[0].name_hint])


@call_dps_packed.sharding
def _call_dps_packed_sharding(call: Call, mod=None):
    """An external function's meaning is unknown: everything replicated."""
    return _sharding.opaque(call)


# call_pure_packed / call_packed: a runtime function called with its arguments flat ----------


def _define_packed(name: str, pure: bool):
    canonical, script = f"relax.{name}", f"R.{name}"

    def constructor(func, *args, sinfo_args) -> Call:
        if isinstance(func, str):
            func = ExternFunc(func)
        if not isinstance(func, Expr):
            raise StructInfoError(f"{script}: func must be a function name or ExternFunc, "
                                  f"got {func!r}")
        if isinstance(sinfo_args, (list, tuple)):
            if len(sinfo_args) != 1:
                raise StructInfoError(f"{script}: sinfo_args must hold exactly one struct info "
                                      f"(the result's), got {len(sinfo_args)}")
            sinfo_args = sinfo_args[0]
        if not isinstance(sinfo_args, StructInfo):
            raise StructInfoError(f"{script}: sinfo_args must be a struct info, got {sinfo_args!r}")
        exprs = tuple(I.as_expr_arg(script, a, f"args[{i}]") for i, a in enumerate(args))
        return Call(Op(canonical), (func,) + exprs, Attrs(), (sinfo_args,), sinfo_args)

    constructor.__name__ = name
    constructor.__doc__ = (f"`{script}(\"func\", *args, sinfo_args=R.Tensor(...))`: call a runtime "
                           f"function ({'pure' if pure else 'may have side effects'}).")
    opdef = register_op(canonical, script=script, args=("func",), pattern=OPAQUE)(constructor)
    opdef.infer(_out_rule)
    opdef.extra["script_parts"] = lambda call: (list(call.args), [("sinfo_args", call.sinfo_args[0])])
    opdef.extra["pure"] = pure
    return opdef


call_pure_packed = _define_packed("call_pure_packed", True)
call_packed = _define_packed("call_packed", False)


# builtin.alloc_tensor --------------------------------------------------------------------------


@register_op("relax.builtin.alloc_tensor", script="R.builtin.alloc_tensor",
             args=("shape", "dtype", "runtime_device_index"), pattern=OPAQUE)
def alloc_tensor(shape, dtype, runtime_device_index=0) -> Call:
    """`R.builtin.alloc_tensor(R.shape([n, 4]), R.dtype("float32"), R.prim_value(0))`."""
    op = "R.builtin.alloc_tensor"
    dt = dtype if isinstance(dtype, DataTypeImm) else _dtype_imm(dtype)
    return make_call("relax.builtin.alloc_tensor",
                     (I.as_shape_arg(op, shape), dt, I.prim_value(runtime_device_index)))


@alloc_tensor.infer
def _alloc_tensor(call: Call) -> StructInfo:
    op = "R.builtin.alloc_tensor"
    dt = call.args[1]
    if not isinstance(dt, DataTypeImm):
        raise StructInfoError(f"{op}: dtype must be R.dtype(...), got {type(dt).__name__}")
    values = I.shape_values(op, call.args[0], "shape")
    if values is None:
        return I.unknown_tensor(dt.value, I.shape_ndim(op, call.args[0], "shape"))
    I.require_nonnegative_dims(op, values)
    return TensorStructInfo(values, dt.value)
