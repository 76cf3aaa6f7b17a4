"""Neural-network operators (`R.nn.*`): activations, softmax, normalisation, rotary embedding.

Pattern kinds: activations are ELEMWISE; softmax, log_softmax, rms_norm and
layer_norm are OPAQUE (their kernels hold several reductions; the fusion pass may
refine this); rotary_embedding is INJECTIVE (each output reads two elements of x).
All of these require float dtypes, except relu.
"""
from __future__ import annotations

from ..ir.errors import ShapeError
from ..ir.expr import IntImm
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo
from . import _infer as I
from .registry import INJECTIVE, OPAQUE, make_call, register_op
from .unary import define_elementwise

relu = define_elementwise("nn.relu", False, "data")
gelu = define_elementwise("nn.gelu", True, "data", doc="`R.nn.gelu(data)`: erf-based GELU.")
gelu_tanh = define_elementwise("nn.gelu_tanh", True, "data",
                               doc="`R.nn.gelu_tanh(data)`: tanh-approximated GELU.")
silu = define_elementwise("nn.silu", True, "data", doc="`R.nn.silu(data)`: data * sigmoid(data).")


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


@register_op("relax.nn.log_softmax", script="R.nn.log_softmax", args=("data",), attrs=("axis",),
             pattern=OPAQUE)
def log_softmax(data, axis=-1) -> Call:
    """`R.nn.log_softmax(data, axis=-1)`."""
    return make_call("relax.nn.log_softmax", (I.as_expr_arg("R.nn.log_softmax", data, "data"),),
                     {"axis": I.freeze_axes(axis)})


log_softmax.infer(_softmax_rule("R.nn.log_softmax"))


# normalisation ---------------------------------------------------------------------------


def _check_param(op: str, x: TensorStructInfo, axes, pname: str, p: TensorStructInfo) -> None:
    """Parameter `p` must have the shape of x's normalised axes, in order."""
    if x.ndim < 0:
        return
    norm = I.normalize_axes(op, axes, x.ndim, "axes", x, "data")
    if p.ndim >= 0 and p.ndim != len(norm):
        raise ShapeError(f"{op}: {pname} has shape {I.fmt_sinfo(p)} but data has shape "
                         f"{I.fmt_sinfo(x)} normalised over axes {list(norm)}; expected "
                         f"{len(norm)} dims")
    if x.shape is None or p.shape is None:
        return
    want = tuple(x.shape[a] for a in norm)
    for d, w in zip(p.shape, want):
        if I.dims_differ(d, w):
            raise ShapeError(f"{op}: {pname} has shape {I.fmt_shape(p.shape)} but data has shape "
                             f"{I.fmt_shape(x.shape)}; expected {pname} of shape "
                             f"{I.fmt_shape(want)} (the dims of axes {list(norm)})")


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
        raise ShapeError(f"{op}: x has shape {I.fmt_sinfo(x)}; expected at least 3 dims "
                         f"(..., seq, heads, head_dim)")
    for name, t in (("cos", c), ("sin", s)):
        if t.ndim >= 0 and t.ndim != 2:
            raise ShapeError(f"{op}: {name} has shape {I.fmt_sinfo(t)}; expected 2 dims "
                             f"(seq, head_dim)")
    if x.shape is not None:
        d = x.shape[-1]
        if isinstance(d, IntImm) and d.value % 2:
            raise ShapeError(f"{op}: head_dim (last dim of x, shape {I.fmt_shape(x.shape)}) is "
                             f"{d.value}; expected an even number")
        for name, t in (("cos", c), ("sin", s)):
            if t.shape is None:
                continue
            if I.dims_differ(t.shape[0], x.shape[-3]) or I.dims_differ(t.shape[1], d):
                raise ShapeError(f"{op}: {name} has shape {I.fmt_shape(t.shape)} but x has shape "
                                 f"{I.fmt_shape(x.shape)}; expected {name} of shape "
                                 f"{I.fmt_shape((x.shape[-3], d))} (seq, head_dim)")
    return TensorStructInfo(x.shape, x.dtype, x.ndim)
