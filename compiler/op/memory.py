"""Explicit memory, as PlanMemory (compiler/transform/plan_memory.py) writes it.

    s = R.memory.alloc_storage(R.shape([4096]), R.dtype("float32"))        # bytes, dtype class
    t = R.memory.alloc_tensor(s, R.prim_value(0), R.shape([n, 4]), R.dtype("float32"))
    y = R.memory.call_tir(cls.add, (x, x), (t,))                            # writes t, returns it
    z = R.memory.call_dps_packed("disco.blas.matmul", (y, w), (u,))

A storage is a flat byte buffer (the VM: a numpy uint8 array); `alloc_tensor` is a
view of it at a byte offset, so tensors whose lifetimes do not overlap share one
storage. `call_tir` / `call_dps_packed` here are the destination-passing forms of
`R.call_tir` / `R.call_dps_packed`: the outputs are given, not allocated by the
call, and the call's value is those outputs (one tensor or a tuple), so the rest
of the function reads them exactly as before planning.
"""
from __future__ import annotations

from ..ir.errors import StructInfoError
from ..ir.expr import fmt_shape
from ..ir.graph import Call, DataTypeImm, Expr, ExternFunc, GlobalVar, Op, Tuple
from ..ir.struct_info import ObjectStructInfo, StructInfo, TensorStructInfo, TupleStructInfo
from . import infer as I
from .registry import OPAQUE, infer_call, make_call, register_op


def _dtype_arg(op: str, dtype) -> DataTypeImm:
    from .builtin import dtype as dtype_imm
    return dtype if isinstance(dtype, DataTypeImm) else dtype_imm(dtype)


@register_op("relax.memory.alloc_storage", script="R.memory.alloc_storage",
             args=("size", "dtype"), pattern=OPAQUE)
def alloc_storage(size, dtype) -> Call:
    """`R.memory.alloc_storage(R.shape([nbytes]), R.dtype("float32"))`: `nbytes` bytes for
    tensors of the dtype's class (float, int, ...)."""
    op = "R.memory.alloc_storage"
    return make_call("relax.memory.alloc_storage",
                     (I.as_shape_arg(op, size, "size"), _dtype_arg(op, dtype)))


@alloc_storage.infer
def _alloc_storage(call: Call) -> StructInfo:
    op = "R.memory.alloc_storage"
    values = I.shape_values(op, call.args[0], "size")
    if values is not None and len(values) != 1:
        raise StructInfoError(f"{op}: size must be one dim (bytes), got {fmt_shape(values)}")
    if values is not None:
        I.require_nonnegative_dims(op, values, "size")
    if not isinstance(call.args[1], DataTypeImm):
        raise StructInfoError(f"{op}: dtype must be R.dtype(...), got {type(call.args[1]).__name__}")
    return ObjectStructInfo()


@register_op("relax.memory.alloc_tensor", script="R.memory.alloc_tensor",
             args=("storage", "offset", "shape", "dtype"), pattern=OPAQUE)
def alloc_tensor(storage, offset, shape, dtype) -> Call:
    """`R.memory.alloc_tensor(storage, R.prim_value(0), R.shape([n, 4]), R.dtype("float32"))`:
    a tensor viewing `storage` from byte `offset`."""
    op = "R.memory.alloc_tensor"
    return make_call("relax.memory.alloc_tensor",
                     (I.as_expr_arg(op, storage, "storage"), I.prim_value(offset),
                      I.as_shape_arg(op, shape), _dtype_arg(op, dtype)))


@alloc_tensor.infer
def _alloc_tensor(call: Call) -> StructInfo:
    op = "R.memory.alloc_tensor"
    if not isinstance(call.args[0].struct_info, ObjectStructInfo):
        raise StructInfoError(f"{op}: storage must come from R.memory.alloc_storage (an "
                              f"R.Object), got struct info {call.args[0].struct_info}")
    dt = call.args[3]
    if not isinstance(dt, DataTypeImm):
        raise StructInfoError(f"{op}: dtype must be R.dtype(...), got {type(dt).__name__}")
    values = I.shape_values(op, call.args[2], "shape")
    if values is None:
        return I.unknown_tensor(dt.value, I.shape_ndim(op, call.args[2], "shape"))
    I.require_nonnegative_dims(op, values)
    return TensorStructInfo(values, dt.value)


def _outs_rule(op: str, call: Call) -> StructInfo:
    outs = call.args[2]
    sinfos = outs.struct_info.fields if isinstance(outs.struct_info, TupleStructInfo) else None
    if sinfos is None or not sinfos or \
            not all(isinstance(s, TensorStructInfo) for s in sinfos):
        raise StructInfoError(f"{op}: outs must be a non-empty tuple of tensors, got "
                              f"struct info {outs.struct_info}")
    return sinfos[0] if len(sinfos) == 1 else TupleStructInfo(tuple(sinfos))


@register_op("relax.memory.call_tir", script="R.memory.call_tir",
             args=("gvar", "args", "outs", "tir_vars"), pattern=OPAQUE)
def call_tir(gvar, args, outs, tir_vars=None) -> Call:
    """`R.memory.call_tir(cls.f, (x, y), (out,), tir_vars)`: run tensor program `f` on the
    inputs and the given outputs; the value is the output (a tuple if several)."""
    op = "R.memory.call_tir"
    if not isinstance(gvar, GlobalVar):
        raise StructInfoError(f"{op}: gvar must be a GlobalVar (a tensor program of the "
                              f"module), got {type(gvar).__name__}")
    call_args = (gvar, _tuple(op, args, "args"), _tuple(op, outs, "outs"))
    if tir_vars is not None:
        call_args += (I.as_shape_arg(op, tir_vars, "tir_vars"),)
    return _infer_when_typed("relax.memory.call_tir", call_args)


@register_op("relax.memory.call_dps_packed", script="R.memory.call_dps_packed",
             args=("func", "args", "outs"), pattern=OPAQUE)
def call_dps_packed(func, args, outs) -> Call:
    """`R.memory.call_dps_packed("name", (x, y), (out,))`: call runtime function `name`
    with the inputs and then the outputs; the value is the output (a tuple if several)."""
    op = "R.memory.call_dps_packed"
    if isinstance(func, str):
        func = ExternFunc(func)
    if not isinstance(func, ExternFunc):
        raise StructInfoError(f"{op}: func must be a function name, got {func!r}")
    return _infer_when_typed("relax.memory.call_dps_packed",
                             (func, _tuple(op, args, "args"), _tuple(op, outs, "outs")))


def _infer_when_typed(name: str, args: tuple) -> Call:
    # The rule reads only the outputs, so infer even when the callee has no struct info.
    call = Call(Op(name), args)
    return infer_call(call) if args[2].struct_info is not None else call


def _tuple(op: str, value, name: str) -> Expr:
    if isinstance(value, Expr) and not isinstance(value, Tuple):
        value = [value]
    return I.as_expr_arg(op, value, name)


call_tir.infer(lambda call: _outs_rule("R.memory.call_tir", call))
call_dps_packed.infer(lambda call: _outs_rule("R.memory.call_dps_packed", call))


def _already_low_level(bb, call: Call) -> Call:
    """Memory ops are what the VM runs directly: LegalizeOps keeps them as they are."""
    return call


for _opdef in (alloc_storage, alloc_tensor, call_tir, call_dps_packed):
    _opdef.legalizer(_already_low_level)
