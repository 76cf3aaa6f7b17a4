"""R.nn (softmax, norms, rotary), creation ops and builtins: struct info vs numpy, errors."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes

from compiler import op
from compiler.ir import (DTypeError, GlobalVar, ShapeError, SizeVar, StructInfoError, Var,
                         Constant, ExternFunc, PrimValue, ShapeExpr, Tuple)
from compiler.ir.struct_info import (PrimStructInfo, ShapeStructInfo, TensorStructInfo,
                                     TupleStructInfo, tensor_sinfo)

from _op_helpers import check_against_numpy, same_dims, static, tvar


def np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_rms_norm(a, w, axes, eps=1e-5):
    return a / np.sqrt(np.mean(a * a, axis=axes, keepdims=True) + eps) * w


def np_layer_norm(a, g, b, axes, eps=1e-5):
    mu = a.mean(axis=axes, keepdims=True)
    return (a - mu) / np.sqrt(a.var(axis=axes, keepdims=True) + eps) * g + b


def np_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


@settings(max_examples=40, deadline=None)
@given(shape=array_shapes(min_dims=1, max_dims=4, max_side=4), data=st.data())
def test_softmax_hypothesis(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_against_numpy(lambda x: op.nn.softmax(x, axis=axis), lambda a: np_softmax(a, axis), [shape])
    check_against_numpy(lambda x: op.nn.log_softmax(x, axis),
                        lambda a: np.log(np_softmax(a, axis)), [shape])


def test_softmax_symbolic_and_errors():
    n = SizeVar("n")
    call = op.nn.softmax(tvar((n, 32, n)))
    assert call.op.name == "relax.nn.softmax" and same_dims(call.struct_info.shape, (n, 32, n))
    assert op.get_op("R.nn.softmax").script_parts(call)[1] == [("axis", -1)]
    with pytest.raises(ShapeError, match=r"R\.nn\.softmax: axis 2 is out of range for data with 2 dims"):
        op.nn.softmax(tvar((n, 4)), axis=2)
    with pytest.raises(DTypeError, match=r"R\.nn\.softmax: argument data must have a float dtype"):
        op.nn.softmax(tvar((n, 4), "int32"))


@settings(max_examples=40, deadline=None)
@given(shape=array_shapes(min_dims=1, max_dims=4, max_side=4), data=st.data())
def test_norms_hypothesis(shape, data):
    nd = len(shape)
    axes = sorted(data.draw(st.lists(st.integers(0, nd - 1), min_size=1, unique=True)))
    pshape = tuple(shape[a] for a in axes)
    # numpy reference: parameters broadcast against the kept dims
    full = [shape[i] if i in axes else 1 for i in range(nd)]
    check_against_numpy(lambda x, w: op.nn.rms_norm(x, w, axes=axes),
                        lambda a, w: np_rms_norm(a, w.reshape(full), tuple(axes)), [shape, pshape])
    check_against_numpy(lambda x, g, b: op.nn.layer_norm(x, g, b, axes),
                        lambda a, g, b: np_layer_norm(a, g.reshape(full), b.reshape(full),
                                                      tuple(axes)), [shape, pshape, pshape])


def test_norms_symbolic_and_errors():
    n = SizeVar("n")
    x = tvar((1, n, 4096), "float16")
    w = tvar((4096,), "float16", "w")
    call = op.nn.rms_norm(x, w)
    assert same_dims(call.struct_info.shape, (1, n, 4096)) and call.struct_info.dtype == "float16"
    assert op.get_op("R.nn.rms_norm").script_parts(call)[1] == [("axes", -1), ("epsilon", 1e-5)]
    ln = op.nn.layer_norm(x, w, w, axes=[-1], epsilon=1e-6)
    assert dict(op.get_op("R.nn.layer_norm").script_parts(ln)[1]) == \
        {"axes": (-1,), "epsilon": 1e-6, "center": True, "scale": True}
    with pytest.raises(ShapeError, match=r"R\.nn\.rms_norm: weight has shape \(4000,\) but data has "
                                         r"shape \(1, n, 4096\); expected weight of shape \(4096,\)"):
        op.nn.rms_norm(x, tvar((4000,), "float16"))
    with pytest.raises(ShapeError, match=r"R\.nn\.layer_norm: beta has shape \(4096, 1\).*expected 1 dims"):
        op.nn.layer_norm(x, w, tvar((4096, 1), "float16"), axes=-1)
    with pytest.raises(DTypeError, match=r"R\.nn\.rms_norm: dtypes differ: data is float16, "
                                         r"weight is float32"):
        op.nn.rms_norm(x, tvar((4096,)))
    with pytest.raises(ShapeError, match=r"R\.nn\.rms_norm: axes 3 is out of range"):
        op.nn.rms_norm(x, w, axes=3)


def test_rotary_embedding():
    s = SizeVar("s")
    for k in (1, 5):
        check_against_numpy(op.nn.rotary_embedding, np_rotary,
                            [(2, s, 4, 8), (s, 8), (s, 8)], binding={s: k})
    with pytest.raises(ShapeError, match=r"R\.nn\.rotary_embedding: cos has shape \(s, 4\) but x has "
                                         r"shape \(2, s, 4, 8\); expected cos of shape \(s, 8\)"):
        op.nn.rotary_embedding(tvar((2, s, 4, 8)), tvar((s, 4)), tvar((s, 8)))
    with pytest.raises(ShapeError, match=r"head_dim .* is 7; expected an even number"):
        op.nn.rotary_embedding(tvar((s, 4, 7)), tvar((s, 7)), tvar((s, 7)))
    with pytest.raises(ShapeError, match=r"x has shape \(s, 8\); expected at least 3 dims"):
        op.nn.rotary_embedding(tvar((s, 8)), tvar((s, 8)), tvar((s, 8)))


# creation ------------------------------------------------------------------------------------


def test_full_zeros_ones():
    n = SizeVar("n")
    c = op.full([n, 4], op.const(0.5, "float32"))
    assert same_dims(c.struct_info.shape, (n, 4)) and c.struct_info.dtype == "float32"
    assert op.full(op.shape([2]), 1, "float16").struct_info.dtype == "float16"
    assert op.full((2, 3), 1.5).struct_info == TensorStructInfo((2, 3), "float32")
    assert op.zeros([n], "int32").struct_info.dtype == "int32"
    assert static(op.ones((2, 3), "float32").struct_info) == np.ones((2, 3)).shape
    assert op.zeros_like(tvar((n, 2)), "int8").struct_info.dtype == "int8"
    assert same_dims(op.ones_like(tvar((n, 2))).struct_info.shape, (n, 2))
    assert op.full_like(tvar((3,)), op.const(1, "int64"), "int64").struct_info.dtype == "int64"
    pos, kw = op.get_op("R.zeros").script_parts(op.zeros([n], "int32"))
    assert isinstance(pos[0], ShapeExpr) and kw == [("dtype", "int32")]
    with pytest.raises(ShapeError, match=r"R\.full: fill_value must be a scalar"):
        op.full([2], tvar((2,)))
    with pytest.raises(DTypeError, match=r"R\.zeros: dtype must be one of"):
        op.zeros([2], "float")


def test_creation_and_allocation_reject_negative_dims():
    """numpy: `np.zeros((2, -1))` raises "negative dimensions are not allowed"; a dim
    of 0 is an empty tensor. Symbolic sizes are non-negative, so only constants (or
    expressions that simplify to one) can be negative."""
    for shape in [(2, -1), (-3,)]:
        with pytest.raises(ValueError, match="negative dimensions"):
            np.zeros(shape)
    n = SizeVar("n")
    cases = {"R.full": lambda s: op.full(s, op.const(0.5, "float32")),
             "R.zeros": lambda s: op.zeros(s, "float32"),
             "R.ones": lambda s: op.ones(s, "int32"),
             "R.builtin.alloc_tensor": lambda s: op.alloc_tensor(op.shape(s), "float32")}
    for name, build in cases.items():
        with pytest.raises(ShapeError, match=rf"{name.replace('.', '[.]')}: shape \(2, -1\) has "
                                             r"the negative dim -1 at position 1"):
            build([2, -1])
        with pytest.raises(ShapeError, match=rf"{name.replace('.', '[.]')}: shape \(.*n - n.*\) has "
                                             r"the negative dim -3 at position 0"):
            build([n - n - 3])
        assert static(build([0, 3]).struct_info) == np.zeros((0, 3)).shape
        assert same_dims(build([n - 1, 2]).struct_info.shape, (n - 1, 2))
    from compiler.op import memory
    with pytest.raises(ShapeError, match=r"R\.memory\.alloc_storage: size \(-8,\) has the negative"):
        memory.alloc_storage(op.shape([-8]), "float32")
    storage = memory.alloc_storage(op.shape([64]), "float32")
    storage_var = Var("s", storage.struct_info)
    with pytest.raises(ShapeError, match=r"R\.memory\.alloc_tensor: shape \(4, -4\) has the negative"):
        memory.alloc_tensor(storage_var, 0, op.shape([4, -4]), "float32")
    assert static(memory.alloc_tensor(storage_var, 0, op.shape([4, 4]), "float32").struct_info) == (4, 4)
    # An impossible arange range is empty in numpy, not an error; the same here.
    assert static(op.arange(5, 0).struct_info) == np.arange(5, 0).shape == (0,)


@pytest.mark.parametrize("args", [(5,), (2, 9), (2, 9, 3), (9, 2, -2), (0, 1, 0.25),
                                  (1.5, 4.0), (3, 3)])
def test_arange_static(args):
    call = op.arange(*args)
    expected = np.arange(*args)
    assert static(call.struct_info) == expected.shape
    assert call.struct_info.dtype == ("int64" if expected.dtype.kind == "i" else "float32")


def test_arange_symbolic_and_errors():
    n, m = SizeVar("n"), SizeVar("m")
    assert same_dims(op.arange(n).struct_info.shape, (n,))
    assert same_dims(op.arange(m, n + m).struct_info.shape, (n,))
    for k in (0, 1, 7):
        from compiler.ir import arith
        got = arith.evaluate(op.arange(1, n, 3).struct_info.shape[0], {n: k + 1})
        assert got == len(np.arange(1, k + 1, 3))
    call = op.arange(op.prim_value(0), op.prim_value(n), op.prim_value(1), dtype="int32")
    assert call.struct_info.dtype == "int32"
    assert all(isinstance(a, PrimValue) for a in call.args)
    with pytest.raises(ShapeError, match=r"R\.arange: step must be non-zero"):
        op.arange(0, 4, 0)


# builtins -----------------------------------------------------------------------------------


def test_const():
    c = op.const(0.5, "float32")
    assert isinstance(c, Constant) and c.struct_info == TensorStructInfo((), "float32")
    assert op.const(1.0).struct_info.dtype == "float32"
    assert op.const(3).struct_info.dtype == "int64"
    assert op.const([[1, 2]], "float16").struct_info == TensorStructInfo((1, 2), "float16")
    assert op.const(np.zeros((2,), "int8")).struct_info.dtype == "int8"
    with pytest.raises(DTypeError, match=r"R\.const: dtype must be one of"):
        op.const(1, "f32")


def test_const_values_that_do_not_fit():
    """numpy raises OverflowError for an int out of range and ValueError for ragged
    nesting; R.const says the same with its own error types, the value and the dtype."""
    for value, dtype, lo, hi in [(300, "int8", -128, 127), (-1, "uint8", 0, 255),
                                 ([1, 2**16], "int16", -2**15, 2**15 - 1)]:
        with pytest.raises(OverflowError):
            np.asarray(value, dtype=dtype)
        with pytest.raises(DTypeError, match=rf"R\.const: value {re.escape(repr(value))} with "
                                             rf"dtype {dtype}: out of the range of {dtype} "
                                             rf"\({lo} to {hi}\)"):
            op.const(value, dtype)
    with pytest.raises(DTypeError, match=r"R\.const: value 70000\.0 with dtype float16: out of "
                                         r"the range of float16 \(-65504\.0 to 65504\.0\)"):
        op.const(70000.0, "float16")          # finite, but float16's largest is 65504
    with pytest.raises(DTypeError, match=r"R\.const: value 9223372036854775808 .*out of the range of int64"):
        op.const(2**63)                       # the default int dtype is int64
    for ragged in ([1, [2, 3]], [[1, 2], [3]]):
        with pytest.raises(ValueError):
            np.asarray(ragged, dtype="float32")
        with pytest.raises(ShapeError, match=r"R\.const: value .* nested lists of unequal lengths"):
            op.const(ragged, "float32")
        with pytest.raises(ShapeError, match=r"R\.const: value .* nested lists of unequal lengths"):
            op.const(ragged)
    with pytest.raises(DTypeError, match=r"R\.const: value 'abc' with dtype float32: cannot be converted"):
        op.const("abc", "float32")
    # Values at the ends of the range, and inf, are fine.
    assert op.const([-128, 127], "int8").data.tolist() == [-128, 127]
    assert np.isinf(op.const(float("inf"), "float16").data)


def test_shape_prim_value_str():
    n = SizeVar("n")
    s = op.shape([n * 2, 16])
    assert s.struct_info == ShapeStructInfo((n * 2, 16))
    assert op.prim_value(n).struct_info == PrimStructInfo("int64", n)
    assert op.string_imm("hi").value == "hi"
    assert op.dtype("float16").value == "float16"


def test_call_tir_and_dps_packed():
    n = SizeVar("n")
    x = tvar((n, 4))
    out = tensor_sinfo((n, 4))
    c = op.call_tir(GlobalVar("add"), (x, x), out_sinfo=out)
    assert c.struct_info == out and c.sinfo_args == (out,) and isinstance(c.args[1], Tuple)
    pos, kw = op.get_op("R.call_tir").script_parts(c)
    assert pos == [GlobalVar("add"), c.args[1]] and kw == [("out_sinfo", out)]
    c2 = op.call_tir(GlobalVar("f"), [x], [out, out], tir_vars=op.shape([n]))
    assert isinstance(c2.struct_info, TupleStructInfo) and len(c2.args) == 3
    kw2 = dict(op.get_op("R.call_tir").script_parts(c2)[1])
    assert kw2["out_sinfo"] == [out, out] and isinstance(kw2["tir_vars"], ShapeExpr)
    d = op.call_dps_packed("cublas_matmul", (x, x), out)
    assert d.args[0] == ExternFunc("cublas_matmul") and d.struct_info == out
    with pytest.raises(StructInfoError, match=r"R\.call_tir: out_sinfo must be a tensor struct info"):
        op.call_tir(GlobalVar("f"), [x], out_sinfo="float32")
    with pytest.raises(StructInfoError, match=r"R\.call_tir: gvar must be a GlobalVar"):
        op.call_tir("f", [x], out_sinfo=out)


def test_every_op_is_registered_once_with_metadata():
    from compiler.op.registry import OpPattern
    for name in op.list_ops():
        d = op.get_op(name)
        assert d.name.startswith("relax.") and d.script.startswith("R.")
        assert d.script[2:] == d.name[len("relax."):]
        assert d.infer_struct_info is not None, name
        assert isinstance(d.pattern, OpPattern)
    want = {"R.exp", "R.log", "R.sqrt", "R.rsqrt", "R.tanh", "R.sigmoid", "R.negative", "R.erf",
            "R.nn.silu", "R.nn.gelu", "R.nn.relu", "R.add", "R.subtract", "R.multiply",
            "R.divide", "R.power", "R.maximum", "R.minimum", "R.equal", "R.less", "R.greater",
            "R.where", "R.astype", "R.matmul", "R.permute_dims", "R.reshape", "R.expand_dims",
            "R.squeeze", "R.concat", "R.split", "R.strided_slice", "R.take", "R.broadcast_to",
            "R.sum", "R.mean", "R.max", "R.min", "R.argmax", "R.nn.softmax", "R.nn.rms_norm",
            "R.nn.layer_norm", "R.full", "R.zeros", "R.ones", "R.arange", "R.call_tir",
            "R.call_dps_packed", "R.nn.rotary_embedding", "R.const", "R.shape"}
    assert want <= set(op.script_namespace())


def test_keyword_and_positional_arguments():
    x = tvar((2, 3))
    a = op.get_op("R.sum")(x, [0], False)
    b = op.get_op("R.sum")(x=x, axis=[0], keepdims=False)
    assert a.attrs == b.attrs and a.struct_info == b.struct_info
    c = op.nn.layer_norm(data=x, gamma=tvar((3,)), beta=tvar((3,)), axes=[-1])
    assert same_dims(c.struct_info.shape, (2, 3))


def test_deferred_inference_without_struct_info():
    from compiler.op import infer_call
    x = Var("x")      # not normalised yet: the call is built, inference waits
    call = op.add(x, x)
    assert call.struct_info is None
    x2 = tvar((2,))
    filled = infer_call(type(call)(call.op, (x2, x2), call.attrs))
    assert static(filled.struct_info) == (2,)


def test_packed_calls_and_alloc_tensor():
    n = SizeVar("n")
    x = tvar((n, 4))
    out = tensor_sinfo((n, 4))
    c = op.call_pure_packed("vm.builtin.copy", x, sinfo_args=(out,))
    assert c.struct_info == out and c.args == (ExternFunc("vm.builtin.copy"), x)
    assert op.get_op("R.call_pure_packed").script_parts(c) == ([ExternFunc("vm.builtin.copy"), x],
                                                             [("sinfo_args", out)])
    assert op.call_packed("f", x, x, sinfo_args=out).op.name == "relax.call_packed"
    a = op.alloc_tensor(op.shape([n, 4]), "float16")
    assert same_dims(a.struct_info.shape, (n, 4)) and a.struct_info.dtype == "float16"
    assert op.get_op("R.builtin.alloc_tensor").args == ("shape", "dtype", "runtime_device_index")
    with pytest.raises(StructInfoError, match=r"R\.call_pure_packed: sinfo_args must hold exactly one"):
        op.call_pure_packed("f", x, sinfo_args=[out, out])
