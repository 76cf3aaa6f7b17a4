"""Neural-network operators (`R.nn.*`): activations, softmax, normalisation, rotary embedding.

Pattern kinds: activations are ELEMWISE; softmax, log_softmax, rms_norm and
layer_norm are OPAQUE (their kernels hold several reductions; the fusion pass may
refine this); rotary_embedding is INJECTIVE (each output reads two elements of x).
All of these require float dtypes, except relu.
"""
from __future__ import annotations

from ..ir.errors import ShapeError
from ..ir.expr import IntImm, fmt_shape, fmt_sinfo
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
import math

from .. import te
from . import infer as I
from ._legalize import acc_dtype, axes_of, call_te, count, out_shape
from .registry import INJECTIVE, OPAQUE, make_call, register_op
from .unary import define_elementwise, elementwise_legalizer
from . import sharding as _sharding

relu = define_elementwise("nn.relu", False, "data")
gelu = define_elementwise("nn.gelu", True, "data", doc="`R.nn.gelu(data)`: erf-based GELU.")
gelu_tanh = define_elementwise("nn.gelu_tanh", True, "data",
                               doc="`R.nn.gelu_tanh(data)`: tanh-approximated GELU.")
silu = define_elementwise("nn.silu", True, "data", doc="`R.nn.silu(data)`: data * sigmoid(data).")



def _gelu(v):
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    return te.const(0.5, v.dtype) * v * (te.const(1.0, v.dtype) + te.erf(v * te.const(math.sqrt(0.5), v.dtype)))


def _gelu_tanh(v):
    # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
    inner = te.const(math.sqrt(2.0 / math.pi), v.dtype) * (v + te.const(0.044715, v.dtype) * v * v * v)
    return te.const(0.5, v.dtype) * v * (te.const(1.0, v.dtype) + te.tanh(inner))


relu.legalizer(elementwise_legalizer(lambda v: te.max(v, te.const(0, v.dtype))))
gelu.legalizer(elementwise_legalizer(_gelu))
gelu_tanh.legalizer(elementwise_legalizer(_gelu_tanh))
silu.legalizer(elementwise_legalizer(lambda v: v * te.sigmoid(v)))

# softmax -------------------------------------------------------------------------------


def _softmax_rule(script: str):
    def rule(call: Call) -> StructInfo:
        x = I.tensor_arg(script, call, 0, "data")
        I.require_float(script, "data", x)
        if x.ndim >= 0:
            I.normalize_axis(script, call.attrs["axis"], x.ndim, "axis", x, "data")
        return TensorStructInfo(x.shape, x.dtype, x.ndim)
    return rule


@register_op("relax.nn.softmax", script="R.nn.softmax", args=("data",), attrs=("axis",),
             pattern=OPAQUE)
def softmax(data, axis=-1) -> Call:
    """`R.nn.softmax(data, axis=-1)`."""
    return make_call("relax.nn.softmax", (I.as_expr_arg("R.nn.softmax", data, "data"),),
                     {"axis": I.freeze_axes(axis)})


softmax.infer(_softmax_rule("R.nn.softmax"))



def _softmax_legalizer(log: bool):
    """Numerically stable: m = max(x), s = sum(exp(x - m)) along the axis, then
    exp(x - m) / s (softmax) or x - m - log(s) (log_softmax); float16/bfloat16 in float32."""

    def legalize(bb, call: Call):
        name = call.op.name.rsplit(".", 1)[-1]
        shape = out_shape(call)

        def f(x):
            axis = axes_of(call.attrs["axis"], x.ndim, f"R.nn.{name}")[0]
            acc = acc_dtype(x.dtype)

            def row(i, k):       # i with the axis index replaced by k
                return i[:axis] + (k,) + i[axis + 1:]

            def elem(idx):
                return te.cast(x[idx], acc)

            red = row(shape, 1)     # keepdims shape of the row statistics
            k1 = te.reduce_axis(0, x.shape[axis], "k")
            m = te.compute(red, lambda *i: te.max(elem(row(i, k1)), axis=k1), name=f"{name}_max")
            k2 = te.reduce_axis(0, x.shape[axis], "k")
            z = te.compute(red, lambda *i: te.sum(te.exp(elem(row(i, k2)) - m[row(i, 0)]), axis=k2),
                           name=f"{name}_sum")
            if log:
                body = lambda *i: elem(i) - m[row(i, 0)] - te.log(z[row(i, 0)])  # noqa: E731
            else:
                body = lambda *i: te.exp(elem(i) - m[row(i, 0)]) / z[row(i, 0)]  # noqa: E731
            return te.compute(shape, lambda *i: te.cast(body(*i), x.dtype), name=name)

        return call_te(bb, call, f, call.args[0])

    return legalize


softmax.legalizer(_softmax_legalizer(log=False))
softmax.sharding(_sharding.normalize_over("axis"))   # the axis must be whole

@register_op("relax.nn.log_softmax", script="R.nn.log_softmax", args=("data",), attrs=("axis",),
             pattern=OPAQUE)
def log_softmax(data, axis=-1) -> Call:
    """`R.nn.log_softmax(data, axis=-1)`."""
    return make_call("relax.nn.log_softmax", (I.as_expr_arg("R.nn.log_softmax", data, "data"),),
                     {"axis": I.freeze_axes(axis)})


log_softmax.infer(_softmax_rule("R.nn.log_softmax"))

log_softmax.legalizer(_softmax_legalizer(log=True))
log_softmax.sharding(_sharding.normalize_over("axis"))

# normalisation ---------------------------------------------------------------------------


def _check_param(op: str, x: TensorStructInfo, axes, pname: str, p: TensorStructInfo) -> None:
    """Parameter `p` must have the shape of x's normalised axes, in order."""
    if x.ndim < 0:
        return
    norm = I.normalize_axes(op, axes, x.ndim, "axes", x, "data")
    if p.ndim >= 0 and p.ndim != len(norm):
        raise ShapeError(f"{op}: {pname} has shape {fmt_sinfo(p)} but data has shape "
                         f"{fmt_sinfo(x)} normalised over axes {list(norm)}; expected "
                         f"{len(norm)} dims")
    if x.shape is None or p.shape is None:
        return
    want = tuple(x.shape[a] for a in norm)
    for d, w in zip(p.shape, want):
        if I.dims_differ(d, w):
            raise ShapeError(f"{op}: {pname} has shape {fmt_shape(p.shape)} but data has shape "
                             f"{fmt_shape(x.shape)}; expected {pname} of shape "
                             f"{fmt_shape(want)} (the dims of axes {list(norm)})")


@register_op("relax.nn.rms_norm", script="R.nn.rms_norm", args=("data", "weight"),
             attrs=("axes", "epsilon"), pattern=OPAQUE)
def rms_norm(data, weight, axes=-1, epsilon=1e-5) -> Call:
    """`R.nn.rms_norm(data, weight, axes=-1, epsilon=1e-5)`:
    data / sqrt(mean(data**2, axes) + epsilon) * weight."""
    op = "R.nn.rms_norm"
    return make_call("relax.nn.rms_norm", (I.as_expr_arg(op, data, "data"),
                                           I.as_expr_arg(op, weight, "weight")),
                     {"axes": I.freeze_axes(axes), "epsilon": float(epsilon)})


@rms_norm.infer
def _rms_norm(call: Call) -> StructInfo:
    op = "R.nn.rms_norm"
    x, w = I.tensor_arg(op, call, 0, "data"), I.tensor_arg(op, call, 1, "weight")
    I.require_float(op, "data", x)
    I.same_dtype(op, [("data", x), ("weight", w)])
    _check_param(op, x, call.attrs["axes"], "weight", w)
    return TensorStructInfo(x.shape, x.dtype, x.ndim)



def _reduced(x, axes, shape, fn, name):
    """A keepdims-shaped stage: `sum over axes of fn(index)` at every position whose
    normalised axes are 0 (the stage has the data's rank, size 1 on `axes`)."""
    ks = {a: te.reduce_axis(0, x.shape[a], f"k{a}") for a in axes}
    red_shape = tuple(1 if d in ks else s for d, s in enumerate(shape))
    return te.compute(red_shape, lambda *i: te.sum(
        fn(tuple(ks.get(d, v) for d, v in enumerate(i))), axis=list(ks.values())), name=name)


def _at(axes, i):
    """Index of a keepdims-shaped stage for output index i."""
    return tuple(0 if d in axes else v for d, v in enumerate(i))


rms_norm.sharding(_sharding.normalize_over("axes"))   # normalized dims must be whole


@rms_norm.legalizer
def _rms_norm_legalize(bb, call: Call):
    """As PyTorch: x * rsqrt(mean(x**2 over axes) + eps) * weight, in float32 for
    float16/bfloat16 data."""
    shape = out_shape(call)

    def f(x, w):
        axes = axes_of(call.attrs["axes"], x.ndim, "R.nn.rms_norm")
        acc = acc_dtype(x.dtype)
        eps = te.const(float(call.attrs["epsilon"]), acc)
        sq = _reduced(x, axes, shape, lambda idx: te.cast(x[idx], acc) * te.cast(x[idx], acc),
                      "rms_norm_sq")
        n = count(x.shape, axes, acc)
        return te.compute(shape, lambda *i: te.cast(
            te.cast(x[i], acc) * te.rsqrt(sq[_at(axes, i)] / n + eps) *
            te.cast(w[tuple(i[a] for a in axes)], acc), x.dtype), name="rms_norm")

    return call_te(bb, call, f, call.args[0], call.args[1])

@register_op("relax.nn.layer_norm", script="R.nn.layer_norm", args=("data", "gamma", "beta"),
             attrs=("axes", "epsilon", "center", "scale"), pattern=OPAQUE)
def layer_norm(data, gamma, beta, axes, epsilon=1e-5, center=True, scale=True) -> Call:
    """`R.nn.layer_norm(data, gamma, beta, axes, epsilon=1e-5, center=True, scale=True)`."""
    op = "R.nn.layer_norm"
    return make_call("relax.nn.layer_norm",
                     (I.as_expr_arg(op, data, "data"), I.as_expr_arg(op, gamma, "gamma"),
                      I.as_expr_arg(op, beta, "beta")),
                     {"axes": I.freeze_axes(axes), "epsilon": float(epsilon),
                      "center": bool(center), "scale": bool(scale)})


@layer_norm.infer
def _layer_norm(call: Call) -> StructInfo:
    op = "R.nn.layer_norm"
    named = [(n, I.tensor_arg(op, call, i, n)) for i, n in enumerate(("data", "gamma", "beta"))]
    x = named[0][1]
    I.require_float(op, "data", x)
    I.same_dtype(op, named)
    for name, p in named[1:]:
        _check_param(op, x, call.attrs["axes"], name, p)
    return TensorStructInfo(x.shape, x.dtype, x.ndim)



layer_norm.sharding(_sharding.normalize_over("axes"))


@layer_norm.legalizer
def _layer_norm_legalize(bb, call: Call):
    """As PyTorch: (x - mean) * rsqrt(var + eps) * gamma + beta over `axes`, with the
    biased variance computed from the centred data (two passes, stable); gamma is
    left out when scale=False and beta when center=False."""
    shape = out_shape(call)
    a = call.attrs

    def f(x, gamma, beta):
        axes = axes_of(a["axes"], x.ndim, "R.nn.layer_norm")
        acc = acc_dtype(x.dtype)
        n = count(x.shape, axes, acc)
        eps = te.const(float(a["epsilon"]), acc)
        total = _reduced(x, axes, shape, lambda idx: te.cast(x[idx], acc), "layer_norm_sum")
        mean = lambda i: total[_at(axes, i)] / n  # noqa: E731
        sq = _reduced(x, axes, shape, lambda idx: (te.cast(x[idx], acc) - mean(idx)) *
                      (te.cast(x[idx], acc) - mean(idx)), "layer_norm_sq")

        def element(*i):
            p = tuple(i[d] for d in axes)
            v = (te.cast(x[i], acc) - mean(i)) * te.rsqrt(sq[_at(axes, i)] / n + eps)
            if a["scale"]:
                v = v * te.cast(gamma[p], acc)
            if a["center"]:
                v = v + te.cast(beta[p], acc)
            return te.cast(v, x.dtype)

        return te.compute(shape, element, name="layer_norm")

    return call_te(bb, call, f, *call.args)

# rotary embedding ---------------------------------------------------------------------------


@register_op("relax.nn.rotary_embedding", script="R.nn.rotary_embedding", args=("x", "cos", "sin"),
             pattern=INJECTIVE)
def rotary_embedding(x, cos, sin) -> Call:
    """`R.nn.rotary_embedding(x, cos, sin)`: rotate-half rotary position embedding (Llama/HF).

    x has shape (..., seq, heads, head_dim); cos and sin have shape (seq, head_dim) and
    are broadcast over heads:
        out = x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]
        rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2])
    head_dim must be even."""
    op = "R.nn.rotary_embedding"
    return make_call("relax.nn.rotary_embedding", (I.as_expr_arg(op, x, "x"),
                                                   I.as_expr_arg(op, cos, "cos"),
                                                   I.as_expr_arg(op, sin, "sin")))


@rotary_embedding.infer
def _rotary_embedding(call: Call) -> StructInfo:
    op = "R.nn.rotary_embedding"
    named = [(n, I.tensor_arg(op, call, i, n)) for i, n in enumerate(("x", "cos", "sin"))]
    x, c, s = (t for _, t in named)
    I.require_float(op, "x", x)
    I.same_dtype(op, named)
    if x.ndim >= 0 and x.ndim < 3:
        raise ShapeError(f"{op}: x has shape {fmt_sinfo(x)}; expected at least 3 dims "
                         f"(..., seq, heads, head_dim)")
    for name, t in (("cos", c), ("sin", s)):
        if t.ndim >= 0 and t.ndim != 2:
            raise ShapeError(f"{op}: {name} has shape {fmt_sinfo(t)}; expected 2 dims "
                             f"(seq, head_dim)")
    if x.shape is not None:
        d = x.shape[-1]
        if isinstance(d, IntImm) and d.value % 2:
            raise ShapeError(f"{op}: head_dim (last dim of x, shape {fmt_shape(x.shape)}) is "
                             f"{d.value}; expected an even number")
        for name, t in (("cos", c), ("sin", s)):
            if t.shape is None:
                continue
            if I.dims_differ(t.shape[0], x.shape[-3]) or I.dims_differ(t.shape[1], d):
                raise ShapeError(f"{op}: {name} has shape {fmt_shape(t.shape)} but x has shape "
                                 f"{fmt_shape(x.shape)}; expected {name} of shape "
                                 f"{fmt_shape((x.shape[-3], d))} (seq, head_dim)")
    return TensorStructInfo(x.shape, x.dtype, x.ndim)



rotary_embedding.sharding(_sharding.rotary)   # seq/heads shardable, head_dim whole


@rotary_embedding.legalizer
def _rotary_embedding_legalize(bb, call: Call):
    """out[..., s, h, j] = x[..., s, h, j] * cos[s, j] + rot[..., s, h, j] * sin[s, j] with
    rot = -x[..., j + d/2] for j < d/2, else x[..., j - d/2]: both are x[..., (j + d/2) % d]."""
    shape = out_shape(call)

    def f(x, cos, sin):
        d = x.shape[-1]
        half = d // 2

        def element(*i):
            s, j = i[-3], i[-1]
            other = x[i[:-1] + ((j + half) % d,)]
            rot = te.select(j < half, te.const(0.0, x.dtype) - other, other)
            return x[i] * cos[s, j] + rot * sin[s, j]

        return te.compute(shape, element, name="rotary_embedding")

    return call_te(bb, call, f, *call.args)
