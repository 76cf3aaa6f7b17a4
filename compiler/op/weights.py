"""Weights stored in a format other than the computation's (`R.dequantize`).

    R.dequantize(w, format="q4_1")     w: the stored array -> float32 weights (..., k)

A model whose weights are kept in 16 bits or in GGUF's blocks (disco/weight_formats.py)
holds each such weight as it is stored: an array of the format's dtype, (n, k) for
float16 / bfloat16, (n, k // 32 * block_bytes) uint8 for q8_0, q4_0 and q4_1; the
format is this operator's attribute, so the printed module says how every weight is
stored. Its result is the float32 matrix the weight stands for:

    y = R.matmul(x, R.permute_dims(R.dequantize(w, format="q4_1"), [1, 0]))

On CPU, DispatchCPUKernels replaces such a matmul (and an embedding lookup of a
dequantized table) by a library call that reads the stored weight itself
(`disco.cpu.matmul_nt_q4_1`, ...), so the float32 matrix is never made. Elsewhere the
operator legalizes as it reads: a cast for float formats, the runtime's numpy
dequantization for block formats (CPU only: `disco.cpu.dequantize_<format>`).

Sharding: every dim of the stored array maps to the same dim of the result; a split
of the last (byte) dim is a split of k at block boundaries, which holds when each
shard has whole blocks: k // 32 divisible by the shard count (the models check that,
naming the weight; the shape rule rejects a local row of partial blocks).
"""
from __future__ import annotations

from disco.weight_formats import FORMATS

from .. import te
from ..ir.errors import DTypeError, ShapeError, StructInfoError
from ..ir.expr import IntImm, fmt_sinfo
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from . import infer as I
from . import sharding as _sharding
from ._legalize import call_te, out_shape
from .builtin import call_dps_packed
from .registry import OPAQUE, make_call, register_op

COMPUTE_DTYPE = "float32"


def format_of(name) -> "FORMATS[str]":
    """The weight format named `name`; StructInfoError listing the known ones."""
    if not isinstance(name, str) or name not in FORMATS:
        raise StructInfoError(f"R.dequantize: format must be one of {', '.join(FORMATS)}, "
                              f"got {name!r}")
    return FORMATS[name]


@register_op("relax.dequantize", script="R.dequantize", args=("w",), attrs=("format",),
             pattern=OPAQUE)
def dequantize(w, format: str) -> Call:
    """`R.dequantize(w, format="q8_0")`: the float32 weights a stored array holds."""
    format_of(format)
    return make_call("relax.dequantize", (I.as_expr_arg("R.dequantize", w, "w"),),
                     {"format": format})


@dequantize.infer
def _dequantize(call: Call) -> StructInfo:
    op = "R.dequantize"
    f = format_of(call.attrs["format"])
    w = I.tensor_arg(op, call, 0, "w")
    if w.dtype != f.dtype.name:
        raise DTypeError(f"{op}: a {f.name} weight is stored as {f.dtype.name}; got w of dtype "
                         f"{w.dtype} (shape {fmt_sinfo(w)})")
    if not f.quantized or w.shape is None:
        return TensorStructInfo(w.shape, COMPUTE_DTYPE, w.ndim)
    if w.ndim < 1:
        raise ShapeError(f"{op}: w must have at least 1 dim, got {fmt_sinfo(w)}")
    b = w.shape[-1]
    if not isinstance(b, IntImm):
        raise ShapeError(f"{op}: the row length of a {f.name} weight must be a constant, got "
                         f"{fmt_sinfo(w)}")
    if b.value % f.block_bytes:
        raise ShapeError(f"{op}: a {f.name} row is whole blocks of {f.block_bytes} bytes; w has "
                         f"shape {fmt_sinfo(w)} ({b.value} bytes a row; a tensor-parallel split "
                         f"of k must leave every shard whole blocks of {f.block} weights)")
    k = b.value // f.block_bytes * f.block
    return TensorStructInfo(tuple(w.shape[:-1]) + (IntImm(k),), COMPUTE_DTYPE)


@dequantize.sharding
def _dequantize_sharding(call: Call) -> _sharding.DimSpec:
    nd = _sharding.tensor_of(call.args[0].struct_info).ndim
    labels = _sharding._names("d", nd)
    return _sharding.DimSpec([labels], labels)


@dequantize.legalizer
def _dequantize_legalize(bb, call: Call):
    f = format_of(call.attrs["format"])
    if f.quantized:
        return call_dps_packed(f"disco.cpu.dequantize_{f.name}", [call.args[0]],
                               out_sinfo=call.struct_info)
    return call_te(bb, call, lambda x: te.compute(
        out_shape(call), lambda *i: te.cast(x[i], COMPUTE_DTYPE), name="dequantize"), call.args[0])
