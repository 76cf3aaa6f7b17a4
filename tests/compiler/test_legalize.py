"""LegalizeOps and the operators' legalizations, checked against numpy.

Every legalizable operator (the registry is iterated, so a new operator without a
legalizer or a case here fails `test_every_operator_has_a_legalizer_and_a_case`)
has cases in CASES. All cases become graph functions of ONE module, legalized and
compiled by ONE `compiler.build(mod, passes=[LegalizeOps])`; each function then runs
for several values of the symbolic size "n" (1, 7 and 128 from that one build) and
is compared with numpy on random inputs. A second size "m" is always 1 at run time:
it checks broadcasting that the struct info could not prove (`(n, 4) + (m, 4)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import ml_dtypes
import numpy as np
import pytest

from compiler import build, op
from compiler.ir import BlockBuilder, IRModule, Var
from compiler.ir.graph import Function, Op
from compiler.ir.struct_info import TensorStructInfo
from compiler.ir.tir import PrimFunc
from compiler.op import get_op, list_ops
from compiler.op.registry import OpPattern
from compiler.script import parse
from compiler.transform.legalize_ops import LegalizeError, LegalizeOps, is_left_alone
from disco.vm import VirtualMachine

from _op_helpers import assert_all_pass

BIG = 2**31 - 1
NS = (1, 7, 128)

# ---- input generators: (rng, shape, dtype) -> array ----------------------------------------


def np_dtype(dtype: str):
    return ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)


def normal(rng, shape, dtype):
    if np.dtype(np_dtype(dtype)).kind in "iu":
        return rng.integers(-6, 7, size=shape).astype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return rng.standard_normal(shape).astype(np_dtype(dtype))


def positive(rng, shape, dtype):
    return rng.uniform(0.5, 2.0, shape).astype(np_dtype(dtype))


def nonzero(rng, shape, dtype):
    if np.dtype(dtype).kind in "iu":
        return (rng.integers(1, 7, size=shape) * rng.choice([-1, 1], size=shape)).astype(dtype)
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], size=shape)).astype(dtype)


def small_ints(lo, hi):
    return lambda rng, shape, dtype: rng.integers(lo, hi, size=shape).astype(dtype)


def ties(rng, shape, dtype):
    """Floats with many equal values (comparisons must see equality)."""
    return rng.integers(-2, 3, size=shape).astype(dtype)


def large(rng, shape, dtype):
    """Values where exp overflows without subtracting the max first."""
    return (rng.standard_normal(shape) * 30 + 500).astype(dtype)


def near_one(rng, shape, dtype):
    return rng.uniform(0.8, 1.25, shape).astype(dtype)


def distinct(rng, shape, dtype):
    """A permutation: no ties for argmax/argmin."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


def as_bf16(rng, shape, dtype):
    return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)


def blocks(fmt):
    """Rows of GGUF blocks of normal weights (disco.weight_formats.quantize)."""
    from disco.weight_formats import FORMATS, quantize
    f = FORMATS[fmt]
    return lambda rng, shape, dtype: quantize(
        rng.standard_normal((shape[0], shape[1] // f.block_bytes * 32)).astype(np.float32), fmt)


def decode_q8_0(w):
    b = w.reshape(w.shape[0], -1, 34)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    return (b[..., 2:].view(np.int8).astype(np.float32) * d).reshape(w.shape[0], -1)


def decode_q4_1(w):
    b = w.reshape(w.shape[0], -1, 20)
    d, m = (b[..., i:i + 2].copy().view(np.float16).astype(np.float32) for i in (0, 2))
    q = np.concatenate([b[..., 4:] & 15, b[..., 4:] >> 4], axis=-1).astype(np.float32)
    return (q * d + m).reshape(w.shape[0], -1)


# ---- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    op: str                                      # canonical operator name
    inputs: list                                 # (shape with "n", dtype, generator)
    make: Callable                               # (n, *vars) -> Call
    ref: Callable                                # (*arrays) -> array or tuple of arrays
    tol: float = 1e-5
    ns: tuple = NS
    id: str = ""
    needs: list = field(default_factory=list)    # (shape, dtype) params only used for binding n


def T(shape, dtype="float32", gen=normal):
    return (shape, dtype, gen)


erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def rms_norm(x, w, axes, eps=1e-5):
    x32 = x.astype(np.float64)
    return x32 / np.sqrt((x32 ** 2).mean(axis=axes, keepdims=True) + eps) * w


def layer_norm(x, g, b, axes, eps=1e-5, center=True, scale=True):
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mu) / np.sqrt(var + eps)
    return y * (g if scale else 1) + (b if center else 0)


def rotary(x, cos, sin):
    d = x.shape[-1]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def floor_div(a, b):
    return np.floor_divide(a, b)


def trunc_div(a, b):
    return (np.trunc(a.astype(np.float64) / b)).astype(a.dtype)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def dim0(v):
    return v.struct_info.shape[0]


def shape(*dims):
    return op.shape(list(dims))


UNARY = {
    "relax.exp": (np.exp, normal), "relax.log": (np.log, positive), "relax.sqrt": (np.sqrt, positive),
    "relax.rsqrt": (lambda x: 1 / np.sqrt(x), positive), "relax.tanh": (np.tanh, normal),
    "relax.sigmoid": (lambda x: 1 / (1 + np.exp(-x)), normal), "relax.erf": (erf, normal),
    "relax.sin": (np.sin, normal), "relax.cos": (np.cos, normal), "relax.negative": (np.negative, normal),
    "relax.abs": (np.abs, normal), "relax.square": (np.square, normal),
    "relax.nn.relu": (lambda x: np.maximum(x, 0), normal), "relax.nn.gelu": (gelu, normal),
    "relax.nn.gelu_tanh": (gelu_tanh, normal), "relax.nn.silu": (lambda x: x / (1 + np.exp(-x)), normal),
}

BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.floor_divide": floor_div, "relax.power": np.power,
    "relax.maximum": np.maximum, "relax.minimum": np.minimum, "relax.equal": np.equal,
    "relax.not_equal": np.not_equal, "relax.less": np.less, "relax.less_equal": np.less_equal,
    "relax.greater": np.greater, "relax.greater_equal": np.greater_equal,
}


def _cases() -> list[Case]:
    cases = []
    for name, (fn, gen) in UNARY.items():
        opdef = get_op(name)
        cases.append(Case(name, [T(("n", 5), gen=gen)], lambda n, x, o=opdef: o(x), fn, tol=2e-5))
    cases += [
        Case("relax.exp", [T(("n", 3), "float16")], lambda n, x: op.exp(x), np.exp, tol=2e-3, id="f16"),
        Case("relax.sqrt", [T(("n", 3), "bfloat16", positive)], lambda n, x: op.sqrt(x), np.sqrt, tol=1e-2,
             id="bf16"),
        Case("relax.negative", [T(("n", 3), "int32")], lambda n, x: op.negative(x), np.negative, id="int"),
        Case("relax.abs", [T(("n", 3), "int64")], lambda n, x: op.abs(x), np.abs, id="int"),
        Case("relax.square", [T(("n", 3), "int32")], lambda n, x: op.square(x), np.square, id="int"),
        Case("relax.nn.relu", [T(("n", 3), "int32")], lambda n, x: op.nn.relu(x), lambda x: np.maximum(x, 0),
             id="int"),
    ]
    for name, fn in BINARY.items():
        opdef = get_op(name)
        cmp = name.split(".")[-1] in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
        gen = ties if cmp else positive if name == "relax.power" else nonzero if "div" in name else normal
        # (n, 1, 4) with (3, 1): both operands broadcast.
        cases.append(Case(name, [T(("n", 1, 4), gen=gen), T((3, 1), gen=gen)], lambda n, a, b, o=opdef: o(a, b),
                          fn, tol=2e-5))
    cases += [
        Case("relax.add", [T(("n", 4), "float16"), T((4,), "float16")], lambda n, a, b: op.add(a, b), np.add,
             tol=2e-3, id="f16"),
        Case("relax.add", [T(("n", 4), "bfloat16"), T(("n", 4), "bfloat16")], lambda n, a, b: op.add(a, b),
             np.add, tol=1e-2, id="bf16"),
        Case("relax.add", [T(("n", 4)), T(("m", 4))], lambda n, a, b: op.add(a, b), np.add, id="unproven"),
        Case("relax.subtract", [T((2, "m")), T((3, 1, 4))], lambda n, a, b: op.subtract(a, b), np.subtract,
             id="unproven_vs_const"),
        Case("relax.multiply", [T(("n", 4))], lambda n, x: op.multiply(x, op.const(2.5, "float32")),
             lambda x: x * np.float32(2.5), id="scalar_const"),
        Case("relax.multiply", [T(("n", 4), "int32"), T((4,), "int32")], lambda n, a, b: op.multiply(a, b),
             np.multiply, id="int"),
        Case("relax.divide", [T(("n", 4), "int32"), T((4,), "int32", nonzero)], lambda n, a, b: op.divide(a, b),
             trunc_div, id="int_truncates"),
        Case("relax.floor_divide", [T(("n", 4), "int64"), T((4,), "int64", nonzero)],
             lambda n, a, b: op.floor_divide(a, b), floor_div, id="int"),
        Case("relax.power", [T(("n", 4), "int32", small_ints(-3, 4)), T((4,), "int32", small_ints(0, 4))],
             lambda n, a, b: op.power(a, b), np.power, id="int"),
        Case("relax.less", [T(("n", 4), "int32"), T(("n", 4), "int32")], lambda n, a, b: op.less(a, b), np.less,
             id="int"),
        Case("relax.equal", [T(("n", 4), "bool"), T((4,), "bool")], lambda n, a, b: op.equal(a, b), np.equal,
             id="bool"),
    ]
    # manipulation
    cases += [
        Case("relax.reshape", [T(("n", 4, 6))], lambda n, x: op.reshape(x, shape(n * 3, 8)),
             lambda x: x.reshape(-1, 8)),
        Case("relax.reshape", [T(("n", 4, 6))], lambda n, x: op.reshape(x, shape(-1, 6)),
             lambda x: x.reshape(-1, 6), id="minus_one"),
        Case("relax.reshape", [T((2, 3, 4), "int32")], lambda n, x, v: op.reshape(x, shape(4, 6)),
             lambda x, v: x.reshape(4, 6), id="static", needs=[(("n",), "float32")]),
        # runs of dims split or merged (the index is taken run by run: reshape_index)
        Case("relax.reshape", [T(("n", 6, 8), gen=distinct)], lambda n, x: op.reshape(x, shape(n, 48)),
             lambda x: x.reshape(-1, 48), id="merge_inner"),
        Case("relax.reshape", [T(("n", 48), gen=distinct)], lambda n, x: op.reshape(x, shape(n, 6, 8)),
             lambda x: x.reshape(-1, 6, 8), id="split_inner"),
        Case("relax.reshape", [T(("n", 6, 4, 2), gen=distinct)], lambda n, x: op.reshape(x, shape(n, 3, 2, 8)),
             lambda x: x.reshape(-1, 3, 2, 8), id="split_and_merge"),
        Case("relax.reshape", [T(("n", 6, 1, 8), gen=distinct)], lambda n, x: op.reshape(x, shape(n, 1, 48, 1)),
             lambda x: x.reshape(-1, 1, 48, 1), id="unit_dims"),
        Case("relax.reshape", [T(("n", 2, 3), gen=distinct)], lambda n, x: op.reshape(x, shape(3, n * 2)),
             lambda x: x.reshape(3, -1), id="no_runs"),
        Case("relax.permute_dims", [T(("n", 3, 4))], lambda n, x: op.permute_dims(x, [2, 0, 1]),
             lambda x: x.transpose(2, 0, 1)),
        Case("relax.permute_dims", [T(("n", 3, 4))], lambda n, x: op.permute_dims(x), lambda x: x.transpose(),
             id="reverse"),
        Case("relax.permute_dims", [T(("n", 3, 4))], lambda n, x: op.permute_dims(x, [-1, 0, 1]),
             lambda x: x.transpose(2, 0, 1), id="negative_axis"),
        Case("relax.expand_dims", [T(("n", 4))], lambda n, x: op.expand_dims(x, [0, -1]),
             lambda x: x[None, :, :, None]),
        Case("relax.squeeze", [T(("n", 1, 4))], lambda n, x: op.squeeze(x, [1]), lambda x: x[:, 0, :]),
        Case("relax.squeeze", [T((1, 3, 1))], lambda n, x, v: op.squeeze(x), lambda x, v: x.reshape(3), id="all",
             needs=[(("n",), "float32")]),
        Case("relax.concat", [T(("n", 4)), T(("n", 2)), T(("n", 3))], lambda n, a, b, c: op.concat([a, b, c], 1),
             lambda a, b, c: np.concatenate([a, b, c], 1)),
        Case("relax.concat", [T(("n", 4), "int32"), T((3, 4), "int32")], lambda n, a, b: op.concat([a, b], 0),
             lambda a, b: np.concatenate([a, b], 0), id="axis0"),
        Case("relax.split", [T(("n", 6))], lambda n, x: op.split(x, 3, axis=1), lambda x: tuple(np.split(x, 3, 1))),
        Case("relax.concat", [T(("n", 6))], lambda n, x: op.concat(op.split(x, [1, 4], axis=1), axis=1),
             lambda x: x, id="of_tuple_var"),
        Case("relax.split", [T(("n", 6))], lambda n, x: op.split(x, [2, 5], axis=-1),
             lambda x: tuple(np.split(x, [2, 5], -1)), id="indices"),
        Case("relax.strided_slice", [T(("n", 10))],
             lambda n, x: op.strided_slice(x, axes=[1], begin=[1], end=[8], strides=[2]), lambda x: x[:, 1:8:2]),
        Case("relax.strided_slice", [T(("n", 10))],
             lambda n, x: op.strided_slice(x, axes=[1], begin=[8], end=[1], strides=[-3]), lambda x: x[:, 8:1:-3],
             id="negative_stride"),
        Case("relax.strided_slice", [T(("n", 10))],
             lambda n, x: op.strided_slice(x, axes=[1], begin=[-4], end=[BIG]), lambda x: x[:, -4:], id="to_end"),
        Case("relax.strided_slice", [T(("n", 10))],
             lambda n, x: op.strided_slice(x, axes=[0], begin=[n - 1], end=[n]), lambda x: x[-1:],
             id="symbolic_begin"),
        Case("relax.strided_slice", [T(("n", 10))],    # m is no dim of x: the kernel takes it as a scalar
             lambda n, x, v: op.strided_slice(x, axes=[1], begin=[dim0(v) + 2], end=[dim0(v) + 6]),
             lambda x, v: x[:, 3:7], id="scalar_param", needs=[(("m",), "float32")]),
        Case("relax.take", [T(("n", 5)), T((3,), "int32", small_ints(-5, 5))], lambda n, x, i: op.take(x, i, axis=1),
             lambda x, i: np.take(x, i, axis=1)),
        Case("relax.take", [T((10, 4)), T(("n",), "int64", small_ints(0, 10))], lambda n, x, i: op.take(x, i, 0),
             lambda x, i: np.take(x, i, axis=0), id="embedding"),
        Case("relax.take", [T((3, 4)), T(("n", 2), "int64", small_ints(-12, 12))], lambda n, x, i: op.take(x, i),
             lambda x, i: np.take(x, i), id="flat"),
        Case("relax.broadcast_to", [T(("n", 1))], lambda n, x: op.broadcast_to(x, shape(2, n, 4)),
             lambda x: np.broadcast_to(x, (2, x.shape[0], 4))),
        Case("relax.broadcast_to", [T(("m", 3))], lambda n, x, v: op.broadcast_to(x, shape(n, 3)),
             lambda x, v: np.broadcast_to(x, (len(v), 3)), id="unproven", needs=[(("n",), "float32")]),
        Case("relax.where", [T(("n", 4), "bool"), T(("n", 4)), T((4,))], lambda n, c, a, b: op.where(c, a, b),
             np.where),
        Case("relax.where", [T(("n", 1), "bool"), T((3,)), T(("m", 3))], lambda n, c, a, b: op.where(c, a, b),
             np.where, id="unproven"),
        Case("relax.astype", [T(("n", 4))], lambda n, x: op.astype(x, "float16"), lambda x: x.astype(np.float16),
             tol=1e-3),
        Case("relax.astype", [T(("n", 4))], lambda n, x: op.astype(x, "bfloat16"),
             lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), tol=1e-6, id="bf16"),
        Case("relax.astype", [T(("n", 4))], lambda n, x: op.astype(x, "int32"), lambda x: x.astype(np.int32),
             id="to_int"),
        Case("relax.astype", [T(("n", 4), "int64")], lambda n, x: op.astype(x, "float32"),
             lambda x: x.astype(np.float32), id="from_int"),
        # stored weights -> float32: a cast, or GGUF blocks decoded here by hand (4 blocks a
        # row, so that a split of the byte dim over up to 4 shards keeps whole blocks)
        Case("relax.dequantize", [T(("n", 4), "bfloat16", as_bf16)],
             lambda n, w: op.dequantize(w, "bfloat16"), lambda w: w.astype(np.float32), tol=0, id="bf16"),
        Case("relax.dequantize", [T(("n", 4), "float16")],
             lambda n, w: op.dequantize(w, "float16"), lambda w: w.astype(np.float32), tol=0, id="f16"),
        Case("relax.dequantize", [T(("n", 4 * 34), "uint8", blocks("q8_0"))],
             lambda n, w: op.dequantize(w, "q8_0"), decode_q8_0, tol=0, id="q8_0"),
        Case("relax.dequantize", [T(("n", 4 * 20), "uint8", blocks("q4_1"))],
             lambda n, w: op.dequantize(w, "q4_1"), decode_q4_1, tol=0, id="q4_1"),
    ]
    # matmul
    cases += [
        Case("relax.matmul", [T(("n", 64)), T((64, 32))], lambda n, a, b: op.matmul(a, b), np.matmul, tol=1e-4),
        Case("relax.matmul", [T((2, 1, "n", 8)), T((3, 8, 5))], lambda n, a, b: op.matmul(a, b), np.matmul,
             tol=1e-4, id="batch_broadcast"),
        Case("relax.matmul", [T((2, "n", 8)), T(("m", 8, 5))], lambda n, a, b: op.matmul(a, b), np.matmul,
             tol=1e-4, id="unproven_batch"),
        Case("relax.matmul", [T((8,)), T(("n", 8, 5))], lambda n, a, b: op.matmul(a, b), np.matmul, tol=1e-4,
             id="vector_matrix"),
        Case("relax.matmul", [T(("n", 8)), T((8,))], lambda n, a, b: op.matmul(a, b), np.matmul, tol=1e-4,
             id="matrix_vector"),
        Case("relax.matmul", [T((8,)), T((8,))], lambda n, a, b, v: op.matmul(a, b), lambda a, b, v: a @ b, tol=1e-4,
             id="dot", needs=[(("n",), "float32")]),
        Case("relax.matmul", [T(("n", 32), "float16"), T((32, 16), "float16")], lambda n, a, b: op.matmul(a, b),
             lambda a, b: f32(a) @ f32(b), tol=1e-2, id="f16"),
        Case("relax.matmul", [T(("n", 32), "float16"), T((32, 16), "float16")],
             lambda n, a, b: op.matmul(a, b, out_dtype="float32"), lambda a, b: f32(a) @ f32(b), tol=1e-4,
             id="f16_out_f32"),
        Case("relax.matmul", [T(("n", 6), "int32"), T((6, 3), "int32")], lambda n, a, b: op.matmul(a, b),
             np.matmul, id="int"),
    ]
    # reductions
    cases += [
        Case("relax.sum", [T(("n", 4, 5))], lambda n, x: op.sum(x, [1, 2]), lambda x: x.sum((1, 2)), tol=1e-4),
        Case("relax.sum", [T(("n", 4))], lambda n, x: op.sum(x, keepdims=True),
             lambda x: x.sum(keepdims=True), tol=1e-3, id="all_keepdims"),
        Case("relax.sum", [T(("n", 64), "float16")], lambda n, x: op.sum(x, -1), lambda x: f32(x).sum(-1),
             tol=1e-2, id="f16"),
        Case("relax.sum", [T(("n", 3), "int32")], lambda n, x: op.sum(x, 0), lambda x: x.sum(0, dtype=np.int32),
             id="int"),
        Case("relax.mean", [T(("n", 6))], lambda n, x: op.mean(x, 1, keepdims=True),
             lambda x: x.mean(1, keepdims=True), tol=1e-4),
        Case("relax.mean", [T(("n", 16), "bfloat16")], lambda n, x: op.mean(x, [-1]), lambda x: f32(x).mean(-1),
             tol=2e-2, id="bf16"),
        Case("relax.max", [T(("n", 5))], lambda n, x: op.max(x, 1), lambda x: x.max(1)),
        Case("relax.max", [T(("n", 5), "int32")], lambda n, x: op.max(x), lambda x: x.max(), id="int_all"),
        Case("relax.min", [T(("n", 5))], lambda n, x: op.min(x), lambda x: x.min()),
        Case("relax.min", [T((3, "n"))], lambda n, x: op.min(x, 0, keepdims=True),
             lambda x: x.min(0, keepdims=True), id="keepdims"),
        Case("relax.prod", [T(("n", 4), gen=near_one)], lambda n, x: op.prod(x, 1), lambda x: x.prod(1),
             tol=1e-5),
        Case("relax.prod", [T(("n", 3), "int64", small_ints(-3, 4))], lambda n, x: op.prod(x, 1),
             lambda x: x.prod(1), id="int"),
        Case("relax.argmax", [T(("n", 6), gen=distinct)], lambda n, x: op.argmax(x, 1), lambda x: x.argmax(1)),
        Case("relax.argmax", [T(("n", 6), gen=distinct)], lambda n, x: op.argmax(x, keepdims=True),
             lambda x: x.argmax(keepdims=True), id="flat_keepdims"),
        Case("relax.argmax", [T(("n", 6), "int32", small_ints(0, 3))], lambda n, x: op.argmax(x, -1),
             lambda x: x.argmax(-1), id="ties_first"),
        Case("relax.argmin", [T(("n", 6), gen=distinct)], lambda n, x: op.argmin(x, 0, keepdims=True),
             lambda x: x.argmin(0, keepdims=True)),
        Case("relax.argmin", [T(("n", 2, 3), gen=distinct)], lambda n, x: op.argmin(x), lambda x: x.argmin(),
             id="flat"),
    ]
    # nn
    cases += [
        Case("relax.nn.softmax", [T(("n", 16), gen=large)], lambda n, x: op.nn.softmax(x),
             lambda x: softmax(x, -1)),
        Case("relax.nn.softmax", [T(("n", 3))], lambda n, x: op.nn.softmax(x, 0), lambda x: softmax(x, 0),
             id="axis0"),
        Case("relax.nn.softmax", [T((2, "n", 8), "float16")], lambda n, x: op.nn.softmax(x, 1),
             lambda x: softmax(f32(x), 1), tol=2e-3, id="f16"),
        Case("relax.nn.log_softmax", [T(("n", 16), gen=large)], lambda n, x: op.nn.log_softmax(x),
             lambda x: log_softmax(x.astype(np.float64), -1), tol=1e-4),
        Case("relax.nn.rms_norm", [T(("n", 16)), T((16,))], lambda n, x, w: op.nn.rms_norm(x, w),
             lambda x, w: rms_norm(x, w, -1), tol=1e-4),
        Case("relax.nn.rms_norm", [T(("n", 3, 4)), T((3, 4))], lambda n, x, w: op.nn.rms_norm(x, w, [-2, -1], 1e-3),
             lambda x, w: rms_norm(x, w, (-2, -1), 1e-3), tol=1e-4, id="two_axes"),
        Case("relax.nn.rms_norm", [T(("n", 32), "bfloat16"), T((32,), "bfloat16")],
             lambda n, x, w: op.nn.rms_norm(x, w), lambda x, w: rms_norm(f32(x), f32(w), -1), tol=2e-2,
             id="bf16"),
        Case("relax.nn.layer_norm", [T(("n", 16), gen=large), T((16,)), T((16,))],
             lambda n, x, g, b: op.nn.layer_norm(x, g, b, -1), lambda x, g, b: layer_norm(x, g, b, -1), tol=1e-3),
        Case("relax.nn.layer_norm", [T(("n", 3, 4)), T((3, 4)), T((3, 4))],
             lambda n, x, g, b: op.nn.layer_norm(x, g, b, [1, 2], 1e-3, center=False, scale=False),
             lambda x, g, b: layer_norm(x, g, b, (1, 2), 1e-3, False, False), tol=1e-4, id="plain"),
        Case("relax.nn.layer_norm", [T(("n", 16), "float16"), T((16,), "float16"), T((16,), "float16")],
             lambda n, x, g, b: op.nn.layer_norm(x, g, b, -1), lambda x, g, b: layer_norm(f32(x), g, b, -1),
             tol=1e-2, id="f16"),
        Case("relax.nn.rotary_embedding", [T((2, "n", 3, 8)), T(("n", 8)), T(("n", 8))],
             lambda n, x, c, s: op.nn.rotary_embedding(x, c, s), rotary, tol=1e-5),
    ]
    # creation (a parameter of shape (n,) binds n)
    cases += [
        Case("relax.full", [], lambda n, v: op.full(shape(n, 3), op.const(2.5, "float32"), "int32"),
             lambda v: np.full((v.shape[0], 3), 2, np.int32), needs=[(("n",), "float32")]),
        Case("relax.full", [], lambda n, v: op.full(shape(2, n), op.const(1.5, "float32")),
             lambda v: np.full((2, v.shape[0]), 1.5, np.float32), id="same_dtype", needs=[(("n",), "float32")]),
        Case("relax.full", [T((), "float32")], lambda n, f, v: op.full(shape(n, 2), f, "float16"),
             lambda f, v: np.full((len(v), 2), f, np.float16), id="tensor_fill", needs=[(("n",), "float32")]),
        Case("relax.full_like", [T(("n", 4), "int64")], lambda n, x: op.full_like(x, op.const(3, "int64"), "float32"),
             lambda x: np.full(x.shape, 3, np.float32)),
        Case("relax.zeros", [], lambda n, v: op.zeros(shape(n, 2), "float32"),
             lambda v: np.zeros((v.shape[0], 2), np.float32), needs=[(("n",), "float32")]),
        Case("relax.ones", [], lambda n, v: op.ones(shape(3,), "int32"), lambda v: np.ones(3, np.int32),
             needs=[(("n",), "float32")]),
        Case("relax.zeros_like", [T(("n", 2), "int32")], lambda n, x: op.zeros_like(x), np.zeros_like),
        Case("relax.ones_like", [T(("n", 2))], lambda n, x: op.ones_like(x, "float16"),
             lambda x: np.ones(x.shape, np.float16)),
        Case("relax.arange", [], lambda n, v: op.arange(n), lambda v: np.arange(v.shape[0]),
             needs=[(("n",), "float32")]),
        Case("relax.arange", [], lambda n, v: op.arange(1.0, 2.0, 0.25), lambda v: np.arange(1.0, 2.0, 0.25),
             id="float", needs=[(("n",), "float32")]),
        Case("relax.arange", [], lambda n, v: op.arange(n, n * 3, 2), lambda v: np.arange(len(v), 3 * len(v), 2),
             id="symbolic_start", needs=[(("n",), "float32")]),
        Case("relax.arange", [], lambda n, v, w: op.arange(dim0(w), dim0(w) + n),
             lambda v, w: np.arange(1, 1 + len(v)), id="scalar_param",
             needs=[(("n",), "float32"), (("m",), "float32")]),
    ]
    return cases


CASES = _cases()


def case_name(i: int, c: Case) -> str:
    return f"f{i}_{c.op.split('.')[-1]}" + (f"_{c.id}" if c.id else "")


def _param(name, shape, dtype, sizes):
    return Var(name, TensorStructInfo(tuple(sizes.get(d, d) for d in shape), dtype))


def make_module(cases) -> IRModule:
    """One graph function per case: params (the case's inputs, then `needs`), one call."""
    bb = BlockBuilder()
    for i, c in enumerate(cases):
        sizes = {"n": bb.size_var("n"), "m": bb.size_var("m")}
        n = sizes["n"]
        params = [_param(f"x{k}", s, d, sizes) for k, (s, d, _) in enumerate(c.inputs)]
        extra = [_param(f"v{k}", s, d, sizes) for k, (s, d) in enumerate(c.needs)]
        with bb.function(case_name(i, c), params + extra):
            with bb.dataflow():
                out = bb.emit_output(c.make(n, *params, *extra))
            bb.emit_func_output(out)
    return bb.get()


def run_case(vm, i: int, c: Case, n: int, rng) -> None:
    def concrete(s):
        return tuple({"n": n, "m": 1}.get(d, d) for d in s)

    args = [gen(rng, concrete(s), d) for s, d, gen in c.inputs]
    extra = [normal(rng, concrete(s), d) for s, d in c.needs]
    got = vm[case_name(i, c)](*args, *extra)
    want = c.ref(*args, *extra)
    name = f"{case_name(i, c)} (n={n})"
    if isinstance(want, tuple):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), name
        pairs = list(zip(got, want))
    else:
        pairs = [(got, want)]
    for g, w in pairs:
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
        if w.dtype.kind in "biu" and g.dtype.kind in "biu":
            assert g.dtype == w.dtype, f"{name}: dtype {g.dtype}, expected {w.dtype}"
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=c.tol, atol=c.tol,
                                       err_msg=name)


def run_case_at(vm, i: int, c: Case, ns) -> None:
    """Run case `i` at each size n in `ns`, inputs drawn from one generator seeded by `i`."""
    rng = np.random.default_rng(i)
    for n in ns:
        run_case(vm, i, c, n, rng)


@pytest.fixture(scope="module")
def legalized():
    mod = make_module(CASES)
    return mod, LegalizeOps(mod)


@pytest.fixture(scope="module")
def vm():
    return VirtualMachine(build(make_module(CASES), passes=[LegalizeOps]))


# ---- tests -------------------------------------------------------------------------------------


def test_every_operator_has_a_legalizer_and_a_case():
    tested = {c.op for c in CASES}
    for name in list_ops():
        if is_left_alone(name):
            continue
        assert get_op(name).legalize is not None, f"operator {name} has no legalizer"
        assert name in tested, f"operator {name} has no case in tests/compiler/test_legalize.py"


@pytest.mark.parametrize("i", range(len(CASES)), ids=[case_name(i, c) for i, c in enumerate(CASES)])
def test_matches_numpy(vm, i):
    run_case_at(vm, i, CASES[i], CASES[i].ns)


def test_every_case_through_the_default_pipeline():
    """The same module built by `compiler.build(mod)` (library dispatch, legalization,
    schedules, memory planning, ...): every case still matches numpy."""
    vm = VirtualMachine(build(make_module(CASES)))
    assert_all_pass(CASES, lambda i, c: run_case_at(vm, i, c, (1, 7)), case_name)


def test_legalized_module_round_trips_and_has_no_operator_calls(legalized, roundtrip):
    mod, out = legalized
    roundtrip(out)
    for name, func in out.graph_functions().items():
        for b in func.body.blocks[0].bindings:
            # a tensor program, or a library call (R.dequantize of GGUF blocks: the runtime's)
            assert b.value.op in (Op("relax.call_tir"), Op("relax.call_dps_packed")), \
                f"{name}: {b.value.op} left"
    assert all(isinstance(mod[name], Function) for name in mod.names())     # input untouched
    assert len(out.prim_funcs()) > 0


def test_prim_funcs_carry_op_pattern_and_readable_names(legalized):
    _, out = legalized
    by_op = {}
    for name, func in out.graph_functions().items():
        call = func.body.blocks[0].bindings[-1].value        # the case's operator call
        if call.op == Op("relax.call_tir"):                  # (not a library call)
            by_op[name] = call.args[0].name_hint
    for i, c in enumerate(CASES):
        kernel = by_op.get(case_name(i, c))
        if kernel is None:
            continue
        func = out[kernel]
        assert isinstance(func, PrimFunc)
        assert func.attrs["op_pattern"] == int(get_op(c.op).pattern), kernel
        short = c.op.split(".")[-1]
        assert kernel == short or kernel.startswith(short + "_"), (kernel, c.op)
    assert out[by_op[case_name(0, CASES[0])]].attrs["op_pattern"] == OpPattern.ELEMWISE


def test_equal_programs_are_shared_across_calls_and_functions(roundtrip):
    bb = BlockBuilder()
    for fname in ("f", "g"):
        n = bb.size_var("n")
        x = Var("x", TensorStructInfo((n, 4), "float32"))
        with bb.function(fname, [x]):
            with bb.dataflow():
                a = bb.emit(op.add(x, x))
                b = bb.emit(op.add(a, a))
                c = bb.emit(op.add(b, op.const(np.ones(4, np.float32))))   # other shapes: a second program
                out = bb.emit_output(op.nn.softmax(c))
            bb.emit_func_output(out)
    out = LegalizeOps(bb.get())
    roundtrip(out)
    assert sorted(out.prim_funcs()) == ["add", "add_1", "softmax"]
    assert out["softmax"].attrs["op_pattern"] == int(OpPattern.OPAQUE)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    vm = VirtualMachine(build(out, passes=[]))
    np.testing.assert_allclose(vm["g"](x), softmax(4 * x + 1, -1), rtol=1e-5, atol=1e-6)


def _one_op_module(make, sinfo=None):
    bb = BlockBuilder()
    x = Var("x", sinfo or TensorStructInfo((bb.size_var("n"), 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            lv = bb.emit(make(x))
            out = bb.emit_output(op.exp(lv))
        bb.emit_func_output(out)
    return bb.get()


def test_skip_keeps_the_named_operators(roundtrip):
    mod = _one_op_module(lambda x: op.nn.softmax(x))
    out = LegalizeOps(mod, skip=["R.nn.softmax"])
    roundtrip(out)
    ops = [b.value.op for b in out["main"].body.blocks[0].bindings]
    assert ops == [Op("relax.nn.softmax"), Op("relax.call_tir")]
    assert list(out.prim_funcs()) == ["exp"]


def test_builtins_are_left_alone(roundtrip):
    mod = LegalizeOps(_one_op_module(lambda x: op.nn.relu(x)))
    again = LegalizeOps(mod)              # only call_tir left: nothing changes
    roundtrip(again)
    assert again.script() == mod.script()


def test_operator_without_legalizer_is_an_error_naming_op_function_and_variable(monkeypatch):
    mod = _one_op_module(lambda x: op.nn.relu(x))
    monkeypatch.setattr(get_op("relax.nn.relu"), "legalize", None)
    with pytest.raises(LegalizeError, match=r"function 'main', variable 'lv0' = R\.nn\.relu.*"
                                            r"relax\.nn\.relu has no legalization"):
        LegalizeOps(mod)


def test_unknown_shape_is_an_error_naming_the_call():
    mod = _one_op_module(lambda x: op.nn.relu(x), TensorStructInfo(None, "float32", 2))
    with pytest.raises(LegalizeError, match=r"function 'main', variable 'lv0' = R\.nn\.relu.*unknown shape"):
        LegalizeOps(mod)


def test_seed_example_builds_with_the_default_pipeline(roundtrip):
    from test_script import SEED
    mod = parse(SEED)
    roundtrip(LegalizeOps(mod))
    vm = VirtualMachine(build(mod))
    rng = np.random.default_rng(3)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    for n in (1, 7, 128):
        x = rng.standard_normal((n, 128)).astype(np.float32)
        np.testing.assert_allclose(vm["main"](x, w), np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)
