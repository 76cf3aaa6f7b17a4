"""matmul (numpy rules) and reductions: struct info vs numpy, symbolic shapes, errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

from compiler import op
from compiler.ir import DTypeError, ShapeError, SizeVar, Var
from compiler.ir.struct_info import TensorStructInfo

from _op_helpers import check_against_numpy, same_dims, tvar


@settings(max_examples=80, deadline=None)
@given(batch=mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3),
       m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4),
       vec1=st.booleans(), vec2=st.booleans())
def test_matmul_hypothesis(batch, m, k, n, vec1, vec2):
    b1, b2 = batch.input_shapes
    s1 = (k,) if vec1 else tuple(b1) + (m, k)
    s2 = (k,) if vec2 else tuple(b2) + (k, n)
    check_against_numpy(op.matmul, np.matmul, [s1, s2])


def test_matmul_symbolic():
    b, s, k = SizeVar("b"), SizeVar("s"), SizeVar("k")
    x = tvar((b, s, 4096))
    w = tvar((4096, 11008))
    assert same_dims(op.matmul(x, w).struct_info.shape, (b, s, 11008))
    q, kk = tvar((b, 32, s, 128)), tvar((b, 32, 128, k))
    assert same_dims(op.matmul(q, kk).struct_info.shape, (b, 32, s, k))
    for bv, sv, kv in [(1, 3, 5), (2, 1, 7)]:
        check_against_numpy(op.matmul, np.matmul, [(b, 1, s, 8), (32, 8, k)],
                            binding={b: bv, s: sv, k: kv})
    # a symbolic contraction dim is accepted when not provably different
    assert same_dims(op.matmul(tvar((s, k)), tvar((k, 4))).struct_info.shape, (s, 4))
    assert same_dims(op.matmul(tvar((s, b)), tvar((k, 4))).struct_info.shape, (s, 4))


def test_matmul_dtypes():
    x, w = tvar((2, 3), "float16"), tvar((3, 4), "float16")
    assert op.matmul(x, w).struct_info.dtype == "float16"
    assert op.matmul(x, w, out_dtype="float32").struct_info.dtype == "float32"
    assert op.matmul(x, tvar((3, 4), "int8"), out_dtype="float32").struct_info.dtype == "float32"
    with pytest.raises(DTypeError, match=r"R\.matmul: dtypes differ: x1 is float16, x2 is float32"):
        op.matmul(x, tvar((3, 4)))
    kw = op.get_op("R.matmul").script_parts(op.matmul(x, w))[1]
    assert kw == [("out_dtype", None)]


def test_matmul_errors():
    n = SizeVar("n")
    with pytest.raises(ShapeError, match=r"R\.matmul: contraction dims differ: x1 has shape "
                                         r"\(n, 128\) \(last dim 128\), x2 has shape \(64, 32\) "
                                         r"\(dim -2 is 64\); expected equal"):
        op.matmul(tvar((n, 128)), tvar((64, 32)))
    with pytest.raises(ShapeError, match=r"R\.matmul: contraction dims differ: .*\(dim 0 is 5\)"):
        op.matmul(tvar((2, 4)), tvar((5,)))
    with pytest.raises(ShapeError, match=r"R\.matmul: batch dims do not broadcast: x1 has shape "
                                         r"\(2, 3, 4\) \(batch \(2,\)\), x2 has shape \(3, 4, 5\)"):
        op.matmul(tvar((2, 3, 4)), tvar((3, 4, 5)))
    with pytest.raises(ShapeError, match=r"R\.matmul: x1 is a 0-d tensor"):
        op.matmul(tvar(()), tvar((3,)))


def test_matmul_unknown():
    u = Var("u", TensorStructInfo(None, "float32", 3))
    s = op.matmul(u, tvar((4, 5))).struct_info
    assert s.shape is None and s.ndim == 3
    s = op.matmul(tvar((4,)), Var("v", TensorStructInfo(None, "float32", -1))).struct_info
    assert s.ndim == -1


# reductions ------------------------------------------------------------------------------

NP_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


@settings(max_examples=80, deadline=None)
@given(shape=array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=3),
       name=st.sampled_from(sorted(NP_REDUCE)), keepdims=st.booleans(), data=st.data())
def test_reduce_hypothesis(shape, name, keepdims, data):
    nd = len(shape)
    axis = data.draw(st.none() | (st.lists(st.integers(0, nd - 1), unique=True).map(
        lambda axes: [a - nd if a % 2 else a for a in axes]) if nd else st.none()))
    if axis is not None and len(axis) == 1 and data.draw(st.booleans()):
        axis = axis[0]
    np_axis = tuple(axis) if isinstance(axis, list) else axis
    check_against_numpy(lambda x: getattr(op, name)(x, axis, keepdims),
                        lambda a: NP_REDUCE[name](a, axis=np_axis, keepdims=keepdims), [shape])


@settings(max_examples=40, deadline=None)
@given(shape=array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3),
       name=st.sampled_from(["argmax", "argmin"]), keepdims=st.booleans(), data=st.data())
def test_argreduce_hypothesis(shape, name, keepdims, data):
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    check_against_numpy(lambda x: getattr(op, name)(x, axis, keepdims),
                        lambda a: getattr(np, name)(a, axis=axis, keepdims=keepdims).astype("int64"),
                        [shape])


def test_reduce_symbolic():
    n, m = SizeVar("n"), SizeVar("m")
    x = tvar((n, m, 8))
    assert same_dims(op.sum(x, axis=[0], keepdims=False).struct_info.shape, (m, 8))
    assert same_dims(op.max(x, axis=-1, keepdims=True).struct_info.shape, (n, m, 1))
    assert op.mean(x).struct_info.shape == ()
    assert same_dims(op.argmax(x, axis=1).struct_info.shape, (n, 8))
    check_against_numpy(lambda a: op.sum(a, [1, 2], True), lambda a: a.sum((1, 2), keepdims=True),
                        [(n, m, 8)], binding={n: 3, m: 2})
    kw = op.get_op("R.sum").script_parts(op.sum(x, axis=[0], keepdims=False))[1]
    assert kw == [("axis", (0,)), ("keepdims", False)]


def test_reduce_dtypes_and_errors():
    assert op.sum(tvar((3,), "int32")).struct_info.dtype == "int32"  # as TVM, no widening
    assert op.argmax(tvar((3,), "float16")).struct_info.dtype == "int64"
    with pytest.raises(DTypeError, match=r"R\.mean: argument x must have a float dtype, got int32"):
        op.mean(tvar((3,), "int32"))
    with pytest.raises(ShapeError, match=r"R\.sum: axis 2 is out of range for x with 2 dims "
                                         r"\(shape \(2, 3\)\); expected -2 <= axis < 2"):
        op.sum(tvar((2, 3)), axis=[2])
    with pytest.raises(ShapeError, match=r"R\.max: axis \[0, -2\] repeats an axis"):
        op.max(tvar((2, 3)), axis=[0, -2])
    with pytest.raises(ShapeError, match=r"R\.argmax: axis must be an int or None"):
        op.argmax(tvar((2, 3)), axis=[0])


def test_reduce_unknown():
    u = Var("u", TensorStructInfo(None, "float32", 3))
    assert op.sum(u, axis=[0]).struct_info.ndim == 2
    assert op.sum(u, axis=[0], keepdims=True).struct_info.ndim == 3
    v = Var("v", TensorStructInfo(None, "float32", -1))
    assert op.sum(v).struct_info.ndim == 0
    assert op.sum(v, axis=1).struct_info.ndim == -1
