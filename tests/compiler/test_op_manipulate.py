"""reshape, permute_dims, expand_dims, squeeze, concat, split, strided_slice, take,
broadcast_to: struct info vs numpy on static and symbolic shapes, and error cases."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes

from compiler import op
from compiler.ir import DTypeError, ShapeError, SizeVar, StructInfoError, Var
from compiler.ir.struct_info import ShapeStructInfo, TensorStructInfo

from _op_helpers import check_against_numpy, same_dims, static, tvar

shapes = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)


# reshape ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data())
def test_reshape_hypothesis(shape, data):
    size = int(np.prod(shape))
    target = []
    rest = size
    while rest > 1:
        d = data.draw(st.sampled_from([k for k in range(1, rest + 1) if rest % k == 0]))
        target.append(d)
        rest //= d
    target = data.draw(st.permutations(target + [1] * data.draw(st.integers(0, 1))))
    if target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    check_against_numpy(lambda x: op.reshape(x, target), lambda a: a.reshape(target), [shape])


def test_reshape_symbolic():
    n, m = SizeVar("n"), SizeVar("m")
    x = tvar((n, 4, 8))
    assert same_dims(op.reshape(x, [n * 2, 16]).struct_info.shape, (n * 2, 16))
    assert same_dims(op.reshape(x, [-1, 16]).struct_info.shape, (n * 2, 16))
    assert same_dims(op.reshape(x, [n, -1]).struct_info.shape, (n, 32))
    assert same_dims(op.reshape(tvar((n, m, 4)), [-1]).struct_info.shape, (n * m * 4,))
    for k in (1, 3, 7):
        check_against_numpy(lambda a: op.reshape(a, op.shape([-1, 2, n])),
                            lambda a: a.reshape(-1, 2, k), [(n, 4)], binding={n: k})


def test_reshape_shape_var_and_printing():
    n = SizeVar("n")
    s = Var("s", ShapeStructInfo((n, 2)))
    assert same_dims(op.reshape(tvar((2 * n,)), s).struct_info.shape, (n, 2))
    call = op.reshape(tvar((4,)), [2, 2])
    pos, kw = op.get_op("R.reshape").script_parts(call)
    assert len(pos) == 2 and kw == []
    assert op.reshape(tvar((4,)), Var("t", ShapeStructInfo(ndim=3))).struct_info.ndim == 3


def test_reshape_errors():
    with pytest.raises(ShapeError, match=r"R\.reshape: cannot reshape x of shape \(2, 3\) "
                                         r"\(6 elements\) to \(4, 2\) \(8 elements\)"):
        op.reshape(tvar((2, 3)), [4, 2])
    with pytest.raises(ShapeError, match=r"R\.reshape: .*6 is not divisible by 4"):
        op.reshape(tvar((2, 3)), [4, -1])
    with pytest.raises(ShapeError, match=r"R\.reshape: .*at most one -1"):
        op.reshape(tvar((2, 3)), [-1, -1])
    n = SizeVar("n")
    with pytest.raises(ShapeError, match=r"R\.reshape: cannot reshape"):
        op.reshape(tvar((n, 4)), [n, 5])



def test_reshape_minus_one_needs_provable_divisibility():
    """-1 is the element count divided by the other dims; symbolically that division
    must be exact for every value of the sizes (numpy: `reshape(-1, 3)` of 4*n elements
    fails unless 3 divides n), else the op asks for R.match_cast."""
    n = SizeVar("n")
    with pytest.raises(ShapeError, match=r"R\.reshape: cannot reshape x of shape \(n, 4\) "
                                         r".*to \(-1, 3\): cannot prove .* divisible by 3.*"
                                         r"R\.match_cast"):
        op.reshape(tvar((n, 4)), [-1, 3])
    with pytest.raises(ShapeError, match=r"R\.reshape: .*\(8,\).*divisible by n.*R\.match_cast"):
        op.reshape(tvar((8,)), [-1, n])
    with pytest.raises(ShapeError, match=r"R\.reshape: .*\(-1, 0\).*0 elements"):
        op.reshape(tvar((0, 4)), [-1, 0])       # numpy: cannot reshape size 0 into (-1, 0)
    # Provable cases: n*4 elements in rows of 2 -> n*2 rows; n*8 in rows of n -> 8 rows.
    assert same_dims(op.reshape(tvar((n, 4)), [-1, 2]).struct_info.shape, (n * 2, 2))
    assert same_dims(op.reshape(tvar((n * 8,)), [-1, n]).struct_info.shape, (8, n))
    for k in (1, 3, 5):
        check_against_numpy(lambda a: op.reshape(a, [-1, 2]), lambda a: a.reshape(-1, 2),
                            [(n, 4)], binding={n: k})


# permute_dims / expand_dims / squeeze -------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_permute_dims_hypothesis(shape, data):
    axes = data.draw(st.permutations(range(len(shape))))
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
    check_against_numpy(lambda x: op.permute_dims(x, axes), lambda a: np.transpose(a, axes),
                        [shape])
    check_against_numpy(op.permute_dims, np.transpose, [shape])


def test_permute_dims_symbolic_and_errors():
    n = SizeVar("n")
    assert same_dims(op.permute_dims(tvar((n, 4, 2)), [2, 0, 1]).struct_info.shape, (2, n, 4))
    with pytest.raises(ShapeError, match=r"R\.permute_dims: axes \[0\] has 1 entries but x has 2"):
        op.permute_dims(tvar((n, 4)), [0])
    with pytest.raises(ShapeError, match=r"R\.permute_dims: axes \[0, 0\] repeats an axis"):
        op.permute_dims(tvar((n, 4)), [0, 0])
    with pytest.raises(ShapeError, match=r"R\.permute_dims: axes 2 is out of range for x with 2 "
                                         r"dims \(shape \(n, 4\)\)"):
        op.permute_dims(tvar((n, 4)), [0, 2])
    assert op.permute_dims(Var("u", TensorStructInfo(None, "float32", 3)), [1, 0, 2]).struct_info.ndim == 3


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_expand_dims_hypothesis(shape, data):
    out_ndim = len(shape) + data.draw(st.integers(1, 2))
    axes = data.draw(st.lists(st.integers(-out_ndim, out_ndim - 1), min_size=out_ndim - len(shape),
                              max_size=out_ndim - len(shape),
                              unique_by=lambda a: a % out_ndim))
    check_against_numpy(lambda x: op.expand_dims(x, axes), lambda a: np.expand_dims(a, axes),
                        [shape])


def test_expand_dims_errors():
    with pytest.raises(ShapeError, match=r"R\.expand_dims: axis 3 is out of range for x with 3 dims"):
        op.expand_dims(tvar((2, 3)), 3)
    with pytest.raises(ShapeError, match=r"R\.expand_dims: axis \[0, -4\] repeats an axis"):
        op.expand_dims(tvar((2, 3)), [0, -4])


@settings(max_examples=40, deadline=None)
@given(shape=array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=2), data=st.data())
def test_squeeze_hypothesis(shape, data):
    ones = [i for i, d in enumerate(shape) if d == 1]
    axes = data.draw(st.lists(st.sampled_from(ones), unique=True)) if ones else []
    check_against_numpy(lambda x: op.squeeze(x, axes), lambda a: np.squeeze(a, tuple(axes)), [shape])
    check_against_numpy(op.squeeze, np.squeeze, [shape])


def test_squeeze_symbolic_and_errors():
    n = SizeVar("n")
    assert same_dims(op.squeeze(tvar((n, 1, 4)), [1]).struct_info.shape, (n, 4))
    assert same_dims(op.squeeze(tvar((n, 1, 4)), -2).struct_info.shape, (n, 4))
    # A symbolic dim may be 1 at run time: squeeze(axis=None) loses the rank, as in TVM.
    assert op.squeeze(tvar((n, 1, 4))).struct_info.ndim == -1
    assert same_dims(op.squeeze(tvar((1, n)), [1]).struct_info.shape, (1,))  # n assumed 1
    with pytest.raises(ShapeError, match=r"R\.squeeze: cannot squeeze axis 2 of x with shape "
                                         r"\(n, 1, 4\): its size is 4, expected 1"):
        op.squeeze(tvar((n, 1, 4)), [2])


# concat / split ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_concat_hypothesis(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    count = data.draw(st.integers(1, 3))
    all_shapes = []
    for _ in range(count):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 4))
        all_shapes.append(tuple(s))
    check_against_numpy(lambda *xs: op.concat(list(xs), axis=axis),
                        lambda *arrs: np.concatenate(arrs, axis=axis), all_shapes)


def test_concat_symbolic_and_errors():
    n, m = SizeVar("n"), SizeVar("m")
    call = op.concat([tvar((n, 4)), tvar((m, 4)), tvar((2, 4))], axis=0)
    assert same_dims(call.struct_info.shape, (n + m + 2, 4))
    check_against_numpy(lambda a, b: op.concat((a, b), axis=1),
                        lambda a, b: np.concatenate([a, b], 1), [(n, 3), (n, m)],
                        binding={n: 2, m: 5})
    with pytest.raises(ShapeError, match=r"R\.concat: tensors\[0\] has shape \(n, 4\) and "
                                         r"tensors\[1\] has shape \(n, 5\); dim 1 differs"):
        op.concat([tvar((n, 4)), tvar((n, 5))], axis=0)
    with pytest.raises(ShapeError, match=r"R\.concat: ranks differ"):
        op.concat([tvar((n, 4)), tvar((4,))], axis=0)
    with pytest.raises(DTypeError, match=r"R\.concat: dtypes differ: tensors\[0\] is float32, "
                                         r"tensors\[1\] is float16"):
        op.concat([tvar((4,)), tvar((4,), "float16")])
    with pytest.raises(ShapeError, match=r"R\.concat: axis 2 is out of range"):
        op.concat([tvar((4, 4)), tvar((4, 4))], axis=2)
    with pytest.raises(StructInfoError, match=r"R\.concat: tensors must be a tuple"):
        op.concat(tvar((4,)))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_split_hypothesis(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    if data.draw(st.booleans()):
        ios = data.draw(st.sampled_from([k for k in range(1, dim + 1) if dim % k == 0]))
    else:
        ios = sorted(data.draw(st.lists(st.integers(0, dim + 2), max_size=3)))
    check_against_numpy(lambda x: op.split(x, ios, axis=axis),
                        lambda a: np.split(a, ios, axis=axis), [shape])


def test_split_symbolic_and_errors():
    n = SizeVar("n")
    parts = op.split(tvar((n * 4, 3)), 2, axis=0).struct_info.fields
    assert len(parts) == 2 and all(same_dims(p.shape, (n * 2, 3)) for p in parts)
    check_against_numpy(lambda x: op.split(x, [2, n], axis=1),
                        lambda a: np.split(a, [2, 5], axis=1), [(3, n + 4)], binding={n: 5})
    with pytest.raises(ShapeError, match=r"R\.split: cannot split axis 1 of x with shape \(2, 5\) "
                                         r"into 2 equal sections"):
        op.split(tvar((2, 5)), 2, axis=1)
    with pytest.raises(ShapeError, match=r"R\.split: axis -3 is out of range"):
        op.split(tvar((2, 5)), 1, axis=-3)



def test_split_equal_sections_needs_provable_divisibility():
    """numpy rejects an unequal split (np.split(arange(5), 2) raises); a symbolic dim
    must be provably divisible by the section count."""
    n = SizeVar("n")
    for dim in (n, n * 2 + 1, n + 2):
        with pytest.raises(ShapeError, match=r"R\.split: cannot split axis 0 of x with shape "
                                             r"\(.*\) into 2 equal sections: cannot prove .*"
                                             r"divisible by 2.*R\.match_cast"):
            op.split(tvar((dim, 3)), 2)
    assert len(op.split(tvar((n,)), 1).struct_info.fields) == 1
    for k in (1, 2, 7):
        check_against_numpy(lambda x: op.split(x, 3, axis=1),
                            lambda a: np.split(a, 3, axis=1), [(2, n * 6)], binding={n: k})
        check_against_numpy(lambda x: op.split(x, 2), lambda a: np.split(a, 2),
                            [(n * 4 + 2,)], binding={n: k})


# strided_slice / take / broadcast_to -----------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(shape=shapes, data=st.data())
def test_strided_slice_hypothesis(shape, data):
    nd = len(shape)
    axes = data.draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
    begin = [data.draw(st.integers(-6, 6)) for _ in axes]
    end = [data.draw(st.integers(-6, 6) | st.just(2**31 - 1)) for _ in axes]
    strides = [data.draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in axes]

    def ref(a):
        idx = [slice(None)] * nd
        for ax, b, e, s in zip(axes, begin, end, strides):
            idx[ax] = slice(b, e, s)
        return a[tuple(idx)]

    check_against_numpy(lambda x: op.strided_slice(x, axes, begin, end, strides), ref, [shape])


def test_strided_slice_symbolic():
    n, m = SizeVar("n"), SizeVar("m")
    x = tvar((n, 8, 16))
    assert same_dims(op.strided_slice(x, [0], [0], [m]).struct_info.shape, (m, 8, 16))
    assert same_dims(op.strided_slice(x, [0, 2], [1, 0], [n, 16], [1, 2]).struct_info.shape,
                     (n - 1, 8, 8))
    assert same_dims(op.strided_slice(x, [0], [-2], [2**31 - 1]).struct_info.shape, (2, 8, 16))
    for k in (2, 5, 8):   # in-bounds symbolic slices agree with numpy
        check_against_numpy(lambda a: op.strided_slice(a, [0, 1], [1, 2], [n, -1], [2, 1]),
                            lambda a: a[1:k:2, 2:-1], [(n, 8)], binding={n: k})
    call = op.strided_slice(x, [0], [0], [m])
    kw = dict(op.get_op("R.strided_slice").script_parts(call)[1])
    assert kw["axes"] == (0,) and kw["end"] == (m,) and kw["strides"] is None


def test_strided_slice_errors():
    with pytest.raises(ShapeError, match=r"R\.strided_slice: axes 2 is out of range"):
        op.strided_slice(tvar((4, 4)), [2], [0], [1])
    with pytest.raises(ShapeError, match=r"R\.strided_slice: strides must be non-zero"):
        op.strided_slice(tvar((4, 4)), [0], [0], [1], [0])
    with pytest.raises(ShapeError, match=r"R\.strided_slice: axes, begin, end and strides"):
        op.strided_slice(tvar((4, 4)), [0, 1], [0], [1])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, idx_shape=array_shapes(min_dims=0, max_dims=2, max_side=3), data=st.data())
def test_take_hypothesis(shape, idx_shape, data):
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    check_against_numpy(lambda x, i: op.take(x, i, axis=axis),
                        lambda a, i: np.take(a, i % (a.size if axis is None else a.shape[axis]),
                                             axis=axis),
                        [shape, idx_shape], ["float32", "int64"])


def test_take_symbolic_and_errors():
    n, s = SizeVar("n"), SizeVar("s")
    emb = op.take(tvar((32000, 4096)), tvar((1, s), "int32"), axis=0)
    assert same_dims(emb.struct_info.shape, (1, s, 4096))
    with pytest.raises(DTypeError, match=r"R\.take: argument indices must have an integer dtype, "
                                         r"got float32"):
        op.take(tvar((n, 4)), tvar((2,)), axis=0)
    with pytest.raises(ShapeError, match=r"R\.take: axis 2 is out of range"):
        op.take(tvar((n, 4)), tvar((2,), "int64"), axis=2)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_broadcast_to_hypothesis(shape, data):
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = lead + [data.draw(st.integers(1, 3)) if d == 1 else d for d in shape]
    check_against_numpy(lambda x: op.broadcast_to(x, target),
                        lambda a: np.broadcast_to(a, target), [shape])


def test_broadcast_to_symbolic_and_errors():
    n = SizeVar("n")
    assert same_dims(op.broadcast_to(tvar((1, 4)), op.shape([2, n, 4])).struct_info.shape,
                     (2, n, 4))
    with pytest.raises(ShapeError, match=r"R\.broadcast_to: cannot broadcast x of shape \(3, 4\) "
                                         r"to \(n, 5\): dim -1 is 4, expected 1 or 5"):
        op.broadcast_to(tvar((3, 4)), [n, 5])
    with pytest.raises(ShapeError, match=r"R\.broadcast_to: x has shape \(3, 4\) with more dims"):
        op.broadcast_to(tvar((3, 4)), [4])
