"""Unary, binary (broadcasting), where and astype: struct info vs numpy, symbolic, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from compiler import op
from compiler.ir import DTypeError, ShapeError, StructInfoError, SizeVar
from compiler.ir.struct_info import TensorStructInfo

from _op_helpers import check_against_numpy, same_dims, static, tvar

NP_UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda a: 1 / np.sqrt(a),
    "tanh": np.tanh, "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "erf": np.tanh,  # shape only
    "sin": np.sin, "cos": np.cos, "negative": np.negative, "abs": np.abs, "square": np.square,
}
NP_BINARY = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "floor_divide": np.floor_divide, "power": np.power, "maximum": np.maximum,
    "minimum": np.minimum, "equal": np.equal, "not_equal": np.not_equal, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
}
FLOAT_ONLY = {"exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "sin", "cos"}


@pytest.mark.parametrize("name", sorted(NP_UNARY))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_unary_static(name, dtype):
    check_against_numpy(getattr(op, name), NP_UNARY[name], [(2, 3, 5)], [dtype])


@pytest.mark.parametrize("name", ["negative", "abs", "square"])
def test_unary_int(name):
    check_against_numpy(getattr(op, name), NP_UNARY[name], [(4, 1)], ["int32"])


@pytest.mark.parametrize("name", sorted(FLOAT_ONLY))
def test_unary_float_only(name):
    with pytest.raises(DTypeError, match=rf"R\.{name}: argument x must have a float dtype, got int32"):
        getattr(op, name)(tvar((3,), "int32"))


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh", "silu"])
def test_nn_activations(name):
    n = SizeVar("n")
    call = getattr(op.nn, name)(tvar((n, 8), "float16"))
    assert call.op.name == f"relax.nn.{name}"
    assert same_dims(call.struct_info.shape, (n, 8)) and call.struct_info.dtype == "float16"
    assert op.get_op(f"R.nn.{name}").args == ("data",)


def test_relu_int_ok_gelu_int_fails():
    assert op.nn.relu(tvar((3,), "int32")).struct_info.dtype == "int32"
    with pytest.raises(DTypeError, match=r"R\.nn\.gelu"):
        op.nn.gelu(tvar((3,), "int32"))


def test_unary_symbolic_and_unknown():
    n = SizeVar("n")
    assert same_dims(op.exp(tvar((n, 4))).struct_info.shape, (n, 4))
    unk = op.exp(op.astype(tvar((n, 4)), "float16"))
    assert unk.struct_info.dtype == "float16"
    from compiler.ir import Var
    x = Var("x", TensorStructInfo(None, "float32", 3))
    s = op.tanh(x).struct_info
    assert s.shape is None and s.ndim == 3


@pytest.mark.parametrize("name", sorted(NP_BINARY))
def test_binary_static(name):
    check_against_numpy(getattr(op, name), NP_BINARY[name], [(4, 1, 3), (5, 1)])


@settings(max_examples=60, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4),
       name=st.sampled_from(sorted(NP_BINARY)))
def test_binary_broadcast_hypothesis(shapes, name):
    check_against_numpy(getattr(op, name), NP_BINARY[name], list(shapes.input_shapes))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6))
def test_binary_symbolic(n, m):
    vn, vm = SizeVar("n"), SizeVar("m")
    binding = {vn: n, vm: m}
    # (n, 1, 4) + (m, 1): 4 vs 1 -> 4, 1 vs m -> m, n vs (none) -> n
    check_against_numpy(op.add, np.add, [(vn, 1, 4), (vm, 1)], binding=binding)
    check_against_numpy(op.multiply, np.multiply, [(vn * 2, vm), (vn * 2, 1)], binding=binding)
    call = op.add(tvar((vn, 1, 4)), tvar((vm, 1)))
    assert same_dims(call.struct_info.shape, (vn, vm, 4))


def test_binary_symbolic_policy():
    n, m = SizeVar("n"), SizeVar("m")
    # n vs 4 -> 4 (n is 1 or 4); n vs n -> n; n vs m (unprovable) -> first operand's n.
    assert static(op.add(tvar((n,)), tvar((4,))).struct_info) == (4,)
    assert static(op.add(tvar((4,)), tvar((n,))).struct_info) == (4,)
    assert op.add(tvar((n,)), tvar((m,))).struct_info.shape == (n,)
    assert same_dims(op.add(tvar((n + 1,)), tvar((1 + n,))).struct_info.shape, (n + 1,))
    with pytest.raises(ShapeError, match=r"R\.add: shapes do not broadcast"):
        op.add(tvar((n + 1,)), tvar((n + 2,)))


def test_binary_errors():
    with pytest.raises(ShapeError, match=r"R\.add: shapes do not broadcast: x1 has shape \(2, 3\), "
                                         r"x2 has shape \(4,\); dim -1 is 3 in x1 and 4 in x2"):
        op.add(tvar((2, 3)), tvar((4,), name="y"))
    with pytest.raises(DTypeError, match=r"R\.multiply: dtypes differ: x1 is float32, x2 is float16"):
        op.multiply(tvar((2,)), tvar((2,), "float16"))
    with pytest.raises(StructInfoError, match=r"R\.add: argument x2 must be an expression"):
        op.add(tvar((2,)), 1.0)
    from compiler.ir import Var
    from compiler.ir.struct_info import ShapeStructInfo
    with pytest.raises(StructInfoError, match=r"R\.subtract: argument x1 must be a tensor"):
        op.subtract(Var("s", ShapeStructInfo((2,))), tvar((2,)))


def test_binary_unknown_shapes():
    from compiler.ir import Var
    a = Var("a", TensorStructInfo(None, "float32", 2))
    s = op.add(a, tvar((3, 4, 5))).struct_info
    assert s.shape is None and s.ndim == 3
    s = op.less(a, Var("b", TensorStructInfo(None, "float32", -1))).struct_info
    assert s.ndim == -1 and s.dtype == "bool"


@settings(max_examples=40, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=4, max_side=3))
def test_where_hypothesis(shapes):
    check_against_numpy(op.where, np.where, list(shapes.input_shapes),
                        ["bool", "float32", "float32"])


def test_where_errors():
    with pytest.raises(DTypeError, match=r"R\.where: condition must have dtype bool, got float32"):
        op.where(tvar((2,)), tvar((2,)), tvar((2,)))
    with pytest.raises(DTypeError, match=r"R\.where: dtypes differ: x1 is float32, x2 is int32"):
        op.where(tvar((2,), "bool"), tvar((2,)), tvar((2,), "int32"))
    with pytest.raises(ShapeError, match=r"R\.where: shapes do not broadcast"):
        op.where(tvar((3,), "bool"), tvar((2,)), tvar((2,)))


@pytest.mark.parametrize("dtype", ["float16", "int32", "bool", "float64"])
def test_astype(dtype):
    n = SizeVar("n")
    check_against_numpy(lambda x: op.astype(x, dtype), lambda a: a.astype(dtype), [(n, 3)],
                        binding={n: 5})
    call = op.astype(tvar((2,)), dtype)
    assert op.get_op("R.astype").script_parts(call)[1] == [("dtype", dtype)]


def test_astype_bad_dtype():
    with pytest.raises(DTypeError, match=r"R\.astype: dtype must be one of .*got 'float8'"):
        op.astype(tvar((2,)), "float8")


def test_registry_metadata():
    from compiler.op.registry import OpPattern
    assert op.get_op("R.exp").pattern == OpPattern.ELEMWISE
    assert op.get_op("relax.add").pattern == OpPattern.BROADCAST
    assert op.get_op("R.add").args == ("x1", "x2")
    assert op.get_op("R.where").args == ("condition", "x1", "x2")
    assert "R.nn.softmax" in op.script_namespace() and "R.const" in op.script_namespace()
