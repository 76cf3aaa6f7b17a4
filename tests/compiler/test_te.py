"""compiler.te: compute definitions lowered to PrimFuncs, run two independent ways
(the reference interpreter in _tir_interp.py, and compiled C through
compiler.codegen, plain and after DefaultSchedule) and compared with numpy."""
import ctypes
import importlib

import numpy as np
import pytest

from _tir_interp import NP_DTYPE, run_prim_func
from compiler import te
from compiler.ir import expr as E
from compiler.ir import tir as T
from compiler.ir.errors import CompilerError, DTypeError, ShapeError

RNG = np.random.default_rng(0)


def _codegen():
    try:
        return importlib.import_module("compiler.codegen")
    except ImportError:
        return None


def _schedule(func):
    try:
        from compiler.transform.default_schedule import schedule_prim_func
    except ImportError:
        return None
    return schedule_prim_func(func)


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


def _call_compiled(lib, name, arrays, scalars):
    sig = lib.signatures[name]
    fn = getattr(ctypes.CDLL(str(lib.so_path)), lib.kernel_names[name])
    fn.restype = None
    ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
    dims = [d for a in arrays for d in a.shape]
    for s in sig.scalars:
        v = scalars[s.name]
        dims.append(int(np.array(float(v), np.float64).view(np.int64)) if E.is_float_dtype(s.dtype) else int(v))
    fn(ptrs, (ctypes.c_int64 * max(len(dims), 1))(*dims))


def _empty(shape, dtype):
    out = np.zeros(shape, NP_DTYPE[dtype])
    if E.is_float_dtype(dtype):
        out[...] = np.nan
    return out


def check(func, inputs, expected, scalars=None, rtol=1e-4, atol=1e-5):
    """Run `func` on `inputs` (+ fresh outputs shaped like `expected`) with the
    interpreter and, when codegen is importable, compiled (plain and scheduled)."""
    scalars = scalars or {}
    out_dtypes = [p.dtype for p in func.params if isinstance(p, T.Buffer)][len(inputs):]
    assert len(out_dtypes) == len(expected)
    runs = {}
    outs = [_empty(e.shape, dt) for e, dt in zip(expected, out_dtypes)]
    run_prim_func(func, [*inputs, *outs], scalars)
    runs["interpreter"] = outs
    cg = _codegen()
    if cg is not None:
        funcs = {"plain": func}
        scheduled = _schedule(func)
        if scheduled is not None:
            funcs["scheduled"] = scheduled
        lib = cg.build_kernels(funcs)
        for name in funcs:
            outs = [_empty(e.shape, dt) for e, dt in zip(expected, out_dtypes)]
            _call_compiled(lib, name, [*inputs, *outs], scalars)
            runs[name] = outs
    for how, outs in runs.items():
        for got, want in zip(outs, expected):
            assert got.shape == want.shape, how
            np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, np.float64),
                                       rtol=rtol, atol=atol, err_msg=how)


def rand(shape, dtype="float32", lo=-2.0, hi=2.0):
    if np.dtype(NP_DTYPE[dtype]).kind in "iu":
        return RNG.integers(0, 5, size=shape).astype(NP_DTYPE[dtype])
    return RNG.uniform(lo, hi, size=shape).astype(NP_DTYPE[dtype])


# ---- elementwise and broadcasting -------------------------------------------------------

UNARY = [("exp", np.exp), ("tanh", np.tanh), ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
         ("abs", np.abs), ("sin", np.sin), ("floor", np.floor),
         ("erf", lambda x: np.vectorize(__import__("math").erf)(x)),
         ("log", lambda x: np.log(np.abs(x) + 0.5)), ("sqrt", lambda x: np.sqrt(np.abs(x))),
         ("rsqrt", lambda x: 1 / np.sqrt(np.abs(x) + 0.5))]


@pytest.mark.parametrize("name,ref", UNARY, ids=[u[0] for u in UNARY])
def test_unary_math(name, ref):
    A = te.placeholder((3, 5), "float32", "A")
    fn = getattr(te, name)
    if name in ("log", "rsqrt"):
        body = lambda i, j: fn(te.abs(A[i, j]) + 0.5)
    elif name == "sqrt":
        body = lambda i, j: fn(te.abs(A[i, j]))
    else:
        body = lambda i, j: fn(A[i, j])
    B = te.compute((3, 5), body, name="B")
    a = rand((3, 5))
    check(te.create_prim_func([A, B]), [a], [ref(a.astype(np.float64))])


def test_binary_math_pow_max_min_select():
    A = te.placeholder((4, 3), "float32", "A")
    B = te.placeholder((4, 3), "float32", "B")
    C = te.compute((4, 3), lambda i, j: te.pow(te.abs(A[i, j]) + 1.0, B[i, j])
                   + te.max(A[i, j], B[i, j]) - te.min(A[i, j], 0.5)
                   + te.select(A[i, j] > B[i, j], 1.0, -1.0), name="C")
    a, b = rand((4, 3)), rand((4, 3))
    want = (np.abs(a) + 1) ** b + np.maximum(a, b) - np.minimum(a, 0.5) + np.where(a > b, 1.0, -1.0)
    check(te.create_prim_func([A, B, C]), [a, b], [want])


@pytest.mark.parametrize("n", [1, 3, 6])
def test_broadcast_add_symbolic_n(n):
    A = te.placeholder(("n", 1, 4), "float32", "A")
    B = te.placeholder((3, 1), "float32", "B")
    out_shape = te.broadcast_shape(A.shape, B.shape)
    assert out_shape[0] is A.shape[0] and [int(d) for d in out_shape[1:]] == [3, 4]
    C = te.compute(out_shape, lambda *i: A[te.broadcast_index(out_shape, A.shape, i)]
                   + B[te.broadcast_index(out_shape, B.shape, i)], name="C")
    func = te.create_prim_func([A, B, C])
    a, b = rand((n, 1, 4)), rand((3, 1))
    check(func, [a, b], [a + b])


def test_broadcast_shape_rejects_mismatch():
    n, m = te.var("n"), te.var("m")
    with pytest.raises(ShapeError, match="expected equal dims or 1"):
        te.broadcast_shape((n, 4), (m, 4))
    with pytest.raises(ShapeError):
        te.broadcast_shape((3, 4), (2, 4))
    assert te.broadcast_shape((n, 1), (1, 4))[0] is n


# ---- reductions ---------------------------------------------------------------------------

def test_matmul_symbolic():
    X = te.placeholder(("n", 6), "float32", "X")
    W = te.placeholder((6, 5), "float32", "W")
    k = te.reduce_axis(0, 6, "k")
    Y = te.compute((X.shape[0], 5), lambda i, j: te.sum(X[i, k] * W[k, j], axis=k), name="Y")
    func = te.create_prim_func([X, W, Y], name="matmul")
    x, w = rand((4, 6)), rand((6, 5))
    check(func, [x, w], [x @ w])


@pytest.mark.parametrize("kind", ["sum", "max", "min"])
def test_reduce_keepdims_and_multi_axis(kind):
    A = te.placeholder((2, 3, 4), "float32", "A")
    k = te.reduce_axis(0, 4, "k")
    keep = te.compute((2, 3, 1), lambda i, j, z: getattr(te, kind)(A[i, j, k], axis=k), name="keep")
    r0, r2 = te.reduce_axis(0, 2, "r0"), te.reduce_axis(0, 4, "r2")
    multi = te.compute((3,), lambda j: getattr(te, kind)(A[r0, j, r2], axis=[r0, r2]), name="multi")
    r_all = [te.reduce_axis(0, d, f"r{q}") for q, d in enumerate((2, 3, 4))]
    scalar = te.compute((), lambda: getattr(te, kind)(A[tuple(r_all)], axis=r_all), name="all")
    a = rand((2, 3, 4))
    ref = getattr(np, {"sum": "sum", "max": "max", "min": "min"}[kind])
    check(te.create_prim_func([A, keep, multi, scalar]), [a],
          [ref(a, axis=2, keepdims=True), ref(a, axis=(0, 2)), ref(a)])


def test_reduce_with_init_where_and_offset_axis():
    A = te.placeholder((3, 8), "float32", "A")
    k = te.reduce_axis(2, 5, "k")        # k in [2, 7)
    S = te.compute((3,), lambda i: te.sum(A[i, k], axis=k, init=10.0), name="S")
    m = te.reduce_axis(0, 8, "m")
    P = te.compute((3,), lambda i: te.max(A[i, m], axis=m, where=m <= i), name="P")
    a = rand((3, 8))
    want_p = np.array([a[i, :i + 1].max() for i in range(3)])
    check(te.create_prim_func([A, S, P]), [a], [a[:, 2:7].sum(axis=1) + 10.0, want_p])


def test_int_reduction_identities():
    A = te.placeholder((2, 5), "int32", "A")
    k1, k2 = te.reduce_axis(0, 5, "k"), te.reduce_axis(0, 5, "k")
    mx = te.compute((2,), lambda i: te.max(A[i, k1], axis=k1), name="mx")
    mn = te.compute((2,), lambda i: te.min(A[i, k2], axis=k2), name="mn")
    a = RNG.integers(-50, 50, size=(2, 5)).astype(np.int32)
    check(te.create_prim_func([A, mx, mn]), [a], [a.max(axis=1), a.min(axis=1)])


def test_argmax_keepdims_axis0():
    A = te.placeholder((4, "n"), "float32", "A")
    out = te.argmax(A, axis=0, keepdims=True, index_dtype="int32")
    a = rand((4, 3))
    check(te.create_prim_func([A, out]), [a], [np.argmax(a, axis=0)[None, :].astype(np.int32)])


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_argmax_argmin(fn):
    A = te.placeholder((3, 6), "float32", "A")
    out = getattr(te, fn)(A, axis=-1)
    a = rand((3, 6))
    a[1, 4] = a[1, 1] = (a[1].max() + 1) if fn == "argmax" else (a[1].min() - 1)   # a tie: first wins
    func = te.create_prim_func([A, out])
    assert out.dtype == "int64" and [int(d) for d in out.shape] == [3]
    check(func, [a], [getattr(np, fn)(a, axis=-1)])


# ---- multi-stage operators --------------------------------------------------------------

def softmax(x):
    n, m = x.shape
    k1, k2 = te.reduce_axis(0, m, "k"), te.reduce_axis(0, m, "k")
    mx = te.compute((n,), lambda i: te.max(x[i, k1], axis=k1), name="max")
    ex = te.compute((n, m), lambda i, j: te.exp(x[i, j] - mx[i]), name="exp")
    sm = te.compute((n,), lambda i: te.sum(ex[i, k2], axis=k2), name="sum")
    return te.compute((n, m), lambda i, j: ex[i, j] / sm[i], name="softmax")


@pytest.mark.parametrize("root_block", [True, False])
def test_softmax_four_stages(root_block):
    X = te.placeholder(("n", 7), "float32", "X")
    Y = softmax(X)
    func = te.create_prim_func([X, Y], root_block=root_block)
    x = rand((3, 7)) * 4
    e = np.exp(x - x.max(axis=1, keepdims=True))
    check(func, [x], [e / e.sum(axis=1, keepdims=True)])
    if root_block:
        root = func.body.block
        assert [b.name for b in root.alloc_buffers] == ["max", "exp", "sum"]
        assert [s.body.block.name if isinstance(s.body, T.BlockRealize) else s.body.body.block.name
                for s in root.body.stmts] == ["max", "exp", "sum", "softmax"]
    else:
        assert isinstance(func.body, T.Allocate)


def rms_norm(x, w, eps):
    n, d = x.shape
    k = te.reduce_axis(0, d, "k")
    sq = te.compute((n,), lambda i: te.sum(x[i, k] * x[i, k], axis=k), name="sq")
    return te.compute((n, d), lambda i, j: x[i, j] * te.rsqrt(sq[i] / te.cast(d, x.dtype) + eps) * w[j],
                      name="rms")


def test_rms_norm_example_from_brief():
    X = te.placeholder(("n", 16), "float32", "X")
    W = te.placeholder((16,), "float32", "W")
    func = te.create_prim_func([X, W, rms_norm(X, W, 1e-5)])
    assert [p.name for p in func.params] == ["X", "W", "rms"]
    x, w = rand((3, 16)), rand((16,))
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
    check(func, [x, w], [want])


def test_layer_norm_with_float_scalar_eps_param():
    X = te.placeholder(("n", "d"), "float32", "X")
    G = te.placeholder(("d",), "float32", "G")
    B = te.placeholder(("d",), "float32", "B")
    eps = te.var("eps", "float32")
    n, d = X.shape
    k1, k2 = te.reduce_axis(0, d, "k"), te.reduce_axis(0, d, "k")
    mean = te.compute((n,), lambda i: te.sum(X[i, k1], axis=k1), name="mean")
    var = te.compute((n,), lambda i: te.sum(X[i, k2] * X[i, k2], axis=k2), name="var")
    dd = te.cast(d, "float32")
    Y = te.compute((n, d), lambda i, j: (X[i, j] - mean[i] / dd)
                   * te.rsqrt(var[i] / dd - (mean[i] / dd) * (mean[i] / dd) + eps) * G[j] + B[j], name="ln")
    func = te.create_prim_func([X, G, B, Y])
    # d from G and B merged with X's by name; eps is appended as a scalar param.
    assert func.params[1].shape[0] is func.params[0].shape[1] is func.params[2].shape[0]
    assert isinstance(func.params[-1], E.Var) and func.params[-1].name == "eps"
    x, g, b = rand((4, 6)), rand((6,)), rand((6,))
    mu, sd = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    check(func, [x, g, b], [(x - mu) / np.sqrt(sd + 1e-3) * g + b], scalars={"eps": 1e-3}, rtol=1e-3, atol=1e-4)


# ---- injective index maps ---------------------------------------------------------------

def test_take_with_int_indices():
    W = te.placeholder((10, 4), "float32", "W")
    I = te.placeholder(("n",), "int32", "I")
    Y = te.compute((I.shape[0], 4), lambda i, j: W[te.cast(I[i], "int64"), j], name="take")
    w = rand((10, 4))
    idx = np.array([3, 0, 9, 3, 5], np.int32)
    check(te.create_prim_func([W, I, Y]), [w, idx], [w[idx]])


def test_reshape_and_permute_index_maps():
    A = te.placeholder((2, 3, 4), "float32", "A")
    flat = te.compute((6, 4), lambda i, j: A[te.unravel_index(te.ravel_index((i, j), (6, 4)), A.shape)],
                      name="reshape")
    back = te.compute((4, 2, 3), lambda i, j, k: A[j, k, i], name="permute")
    a = rand((2, 3, 4))
    check(te.create_prim_func([A, flat, back]), [a], [a.reshape(6, 4), a.transpose(2, 0, 1)])


def test_reshape_symbolic_flatten():
    A = te.placeholder(("n", 3, 2), "float32", "A")
    n = A.shape[0]
    Y = te.compute((n * 6,), lambda f: A[te.unravel_index(f, A.shape)], name="flatten")
    func = te.create_prim_func([A, Y])
    a = rand((5, 3, 2))
    check(func, [a], [a.reshape(-1)])


def test_strided_slice():
    A = te.placeholder((10, 6), "float32", "A")
    Y = te.compute((3, 6), lambda i, j: A[1 + 3 * i, 5 - j], name="slice")   # A[1:10:3, ::-1]
    a = rand((10, 6))
    check(te.create_prim_func([A, Y]), [a], [a[1:10:3, ::-1]])


def test_concat_with_select():
    A = te.placeholder(("n", 2), "float32", "A")
    B = te.placeholder(("n", 3), "float32", "B")
    n = A.shape[0]
    # Both sides' indices stay in bounds (clamped), so any backend may evaluate both.
    Y = te.compute((n, 5), lambda i, j: te.if_then_else(
        j < 2, A[i, te.min(j, 1)], B[i, te.max(j - 2, 0)]), name="concat")
    func = te.create_prim_func([A, B, Y])
    a, b = rand((3, 2)), rand((3, 3))
    check(func, [a, b], [np.concatenate([a, b], axis=1)])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_dtypes_computed_in_float32(dtype):
    X = te.placeholder((3, 8), dtype, "X")
    k = te.reduce_axis(0, 8, "k")
    s = te.compute((3,), lambda i: te.sum(te.cast(X[i, k], "float32"), axis=k), name="s")
    Y = te.compute((3, 8), lambda i, j: te.cast(te.exp(te.cast(X[i, j], "float32")) / s[i], dtype), name="Y")
    func = te.create_prim_func([X, Y])
    assert func.params[1].dtype == dtype
    x = rand((3, 8), dtype)
    xf = x.astype(np.float32)
    check(func, [x], [np.exp(xf) / xf.sum(axis=1, keepdims=True)], rtol=2e-2, atol=2e-2)


# ---- symbolic vars and parameters ---------------------------------------------------------

def test_same_name_strings_merge_explicit_vars_do_not():
    A = te.placeholder(("n", 4), "float32", "A")
    B = te.placeholder(("n", 4), "float32", "B")
    assert A.shape[0] is not B.shape[0]
    C = te.compute(A.shape, lambda i, j: A[i, j] + B[i, j], name="C")
    func = te.create_prim_func([A, B, C])
    a_n, b_n, c_n = (p.shape[0] for p in func.params)
    assert a_n is b_n is c_n
    m1, m2 = te.var("m"), te.var("m")
    P = te.placeholder((m1,), "float32", "P")
    Q = te.compute((m2,), lambda i: P[i] * 2.0, name="Q")
    f2 = te.create_prim_func([P, Q])
    assert f2.params[0].shape[0] is m1 and f2.params[1].shape[0] is m2


def test_int_scalar_param_offset():
    A = te.placeholder((8,), "float32", "A")
    off = te.var("offset")
    Y = te.compute((4,), lambda i: A[i + off], name="Y")
    func = te.create_prim_func([A, Y], name="window")
    assert func.params[-1] is off and func.attrs["global_symbol"] == "window"
    a = rand((8,))
    check(func, [a], [a[3:7]], scalars={"offset": 3})


def test_intermediate_output_also_listed():
    X = te.placeholder((2, 5), "float32", "X")
    W = te.placeholder((5,), "float32", "W")
    out = rms_norm(X, W, 1e-6)
    sq = next(t for t in _deps(out) if t.name == "sq")
    func = te.create_prim_func([X, W, sq, out])
    assert func.body.block.alloc_buffers == ()
    x, w = rand((2, 5)), rand((5,))
    ss = (x.astype(np.float64) ** 2).sum(axis=1)
    check(func, [x, w], [ss, x / np.sqrt(ss[:, None] / 5 + 1e-6) * w])


def _deps(t):
    from compiler.te.lower import _reads
    return _reads(t.body)


# ---- structure ----------------------------------------------------------------------------

def test_structure_matches_tvm_layout(roundtrip):
    X = te.placeholder(("n", 6), "float32", "X")
    W = te.placeholder((6, 5), "float32", "W")
    k = te.reduce_axis(0, 6, "k")
    Y = te.compute((X.shape[0], 5), lambda i, j: te.sum(X[i, k] * W[k, j], axis=k), name="Y",
                   attrs={"op": "matmul"})
    func = te.create_prim_func([X, W, Y], name="mm")
    root = func.body
    assert isinstance(root, T.BlockRealize) and root.block.name == "root" and root.iter_values == ()
    loops, node = [], root.block.body
    while isinstance(node, T.For):
        loops.append(node)
        node = node.body
    assert [lp.loop_var.name for lp in loops] == ["i", "j", "k"]
    assert loops[0].extent is func.params[0].shape[0]
    assert isinstance(node, T.BlockRealize)
    assert all(v is lp.loop_var for v, lp in zip(node.iter_values, loops))
    block = node.block
    assert [(iv.var.name, iv.kind) for iv in block.iter_vars] == [("v_i", "S"), ("v_j", "S"), ("v_k", "R")]
    assert isinstance(block.init, T.BufferStore) and block.init.value == E.FloatImm(0.0)
    assert isinstance(block.body.value, E.Add) and block.body.value.a == T.BufferLoad(func.params[2], (
        block.iter_vars[0].var, block.iter_vars[1].var))
    assert block.annotations["op"] == "matmul"
    from compiler.ir.module import IRModule
    roundtrip(IRModule.from_dict({"mm": func}))


def test_var_only_in_compound_dims_becomes_scalar_param():
    n = te.var("n")
    A = te.placeholder((n * 2,), "float32", "A")
    Y = te.compute((n * 2,), lambda i: A[i] + 1.0, name="Y")
    func = te.create_prim_func([A, Y])
    assert func.params[-1] is n
    a = rand((6,))
    check(func, [a], [a + 1], scalars={"n": 3})


def test_numpy_ints_in_shapes_and_indices_and_no_iteration():
    A = te.placeholder(np.zeros((3, 2)).shape, "float32", "A")
    Y = te.compute((np.int64(3),), lambda i: A[i, np.int64(1)], name="Y")
    a = rand((3, 2))
    check(te.create_prim_func([A, Y]), [a], [a[:, 1]])
    with pytest.raises(TypeError, match="not iterable"):
        list(A)


def test_lowering_twice_gives_fresh_loop_vars():
    A = te.placeholder((4,), "float32", "A")
    B = te.compute((4,), lambda i: A[i] + 1.0, name="B")
    f1, f2 = te.create_prim_func([A, B]), te.create_prim_func([A, B])
    assert f1.body.block.body.loop_var is not f2.body.block.body.loop_var


def test_duplicate_names_get_unique_buffers():
    A = te.placeholder((4,), "float32", "T")
    B = te.compute((4,), lambda i: A[i] * 2.0, name="T")
    C = te.compute((4,), lambda i: B[i] + 1.0, name="T")
    func = te.create_prim_func([A, C])
    names = [p.name for p in func.params] + [b.name for b in func.body.block.alloc_buffers]
    assert len(set(names)) == 3
    a = rand((4,))
    check(func, [a], [a * 2 + 1])


# ---- errors -------------------------------------------------------------------------------

def test_error_wrong_arity():
    A = te.placeholder((2, 3), "float32", "A")
    with pytest.raises(ShapeError, match=r"takes 1 index argument.*2 dim"):
        te.compute((2, 3), lambda i: A[i, 0], name="bad")
    with pytest.raises(ShapeError, match=r"indexed with 1 index"):
        te.compute((2,), lambda i: A[i], name="bad")


def test_error_wrong_dtype():
    A = te.placeholder((2,), "float16", "A")
    with pytest.raises(DTypeError, match=r"returns float16.*dtype='float32'.*te.cast"):
        te.compute((2,), lambda i: A[i] * 2.0, name="bad", dtype="float32")
    I = te.placeholder((2,), "int32", "I")
    with pytest.raises(DTypeError, match="expected a float dtype"):
        te.exp(I[0])
    with pytest.raises(DTypeError, match="index 0"):
        A[A[0]]
    with pytest.raises(DTypeError, match="unknown dtype"):
        te.placeholder((2,), "float8", "X")


def test_error_multiple_outputs_and_non_expr():
    A = te.placeholder((2,), "float32", "A")
    with pytest.raises(te.TEError, match="returned 2 values"):
        te.compute((2,), lambda i: (A[i], A[i]), name="bad")
    with pytest.raises(te.TEError, match="expected a scalar expression"):
        te.compute((2,), lambda i: "x", name="bad")


def test_error_nested_and_stray_reductions():
    A = te.placeholder((2, 3), "float32", "A")
    k = te.reduce_axis(0, 3, "k")
    with pytest.raises(te.TEError, match="nested inside a larger expression"):
        te.compute((2,), lambda i: te.sum(A[i, k], axis=k) * 2.0, name="bad")
    stray = te.compute((2,), lambda i: A[i, k], name="stray")
    with pytest.raises(te.TEError, match="reduce axis 'k' outside"):
        te.create_prim_func([A, stray])


def test_error_index_var_of_another_stage():
    A = te.placeholder((2,), "float32", "A")
    leaked = []
    B = te.compute((2,), lambda i: leaked.append(i) or A[i], name="B")
    C = te.compute((2,), lambda j: B[j] + A[leaked[0]], name="C")
    with pytest.raises(te.TEError, match="index variable 'i' of compute 'B'"):
        te.create_prim_func([A, C])


def test_error_argument_lists():
    A = te.placeholder((2,), "float32", "A")
    W = te.placeholder((2,), "float32", "W")
    B = te.compute((2,), lambda i: A[i] + W[i], name="B")
    with pytest.raises(te.TEError, match="placeholder 'W'.*not among the arguments"):
        te.create_prim_func([A, B])
    with pytest.raises(te.TEError, match="comes after output 'B'"):
        te.create_prim_func([A, B, W])
    with pytest.raises(te.TEError, match="listed twice"):
        te.create_prim_func([A, W, B, B])
    with pytest.raises(te.TEError, match="no computed tensor"):
        te.create_prim_func([A, W])
    assert issubclass(te.TEError, CompilerError)


def test_error_axes_and_shapes():
    with pytest.raises(ShapeError, match="out of range for rank 2"):
        te.normalize_axis(2, 2)
    with pytest.raises(ShapeError, match="repeat"):
        te.normalize_axes((1, -1), 2)
    assert te.normalize_axes(None, 3) == (0, 1, 2) and te.normalize_axis(-1, 3) == 2
    with pytest.raises(ShapeError, match="negative size"):
        te.placeholder((2, -1), "float32", "A")
    with pytest.raises(ShapeError, match="is not a size"):
        te.placeholder((2.5,), "float32", "A")
    with pytest.raises(te.TEError, match="expected a te.reduce_axis"):
        te.sum(E.FloatImm(1.0), axis=[])


def test_max_min_dispatch():
    A = te.placeholder((3,), "float32", "A")
    k = te.reduce_axis(0, 3, "k")
    assert isinstance(te.max(A[k], k), te.Reduce)
    assert isinstance(te.max(A[k], axis=[k]), te.Reduce)
    assert isinstance(te.max(A[0], A[1]), E.Max)
    with pytest.raises(te.TEError, match="one operand and no axis"):
        te.min(A[0])
    with pytest.raises(DTypeError, match="dtypes float32 and int64"):
        te.max(A[0], E.IntImm(1))
    with pytest.raises(DTypeError, match="float constant 0.5"):
        te.max(E.IntImm(1), 0.5)
    assert te.cast(4, "float32") == E.FloatImm(4.0) and te.cast(A[0], "float32") is not None


def test_lowering_is_deterministic_up_to_renaming():
    from compiler.ir import structural

    def build(size_name):
        X = te.placeholder((size_name, 7), "float32", "X")
        return te.create_prim_func([X, softmax(X)])

    X = te.placeholder(("n", 7), "float32", "X")
    Y = softmax(X)
    assert structural.structural_equal(te.create_prim_func([X, Y]), te.create_prim_func([X, Y]))
    assert structural.structural_equal(build("n"), build("m"))
    assert not structural.structural_equal(build("n"), te.create_prim_func([X, Y], root_block=False))


@pytest.mark.parametrize("combiner", ["sum", "max", "min"])
@pytest.mark.parametrize("axes,keepdims", [((0, 2), False), ((-1,), True), (None, False)])
def test_reduce_tensor_numpy_style(combiner, axes, keepdims):
    A = te.placeholder((2, "n", 4), "float16", "A")
    R = te.reduce_tensor(A, axes, keepdims, combiner, element=lambda v: te.cast(v, "float32"))
    a = rand((2, 3, 4), "float16")
    want = getattr(np, combiner)(a.astype(np.float32), axis=axes, keepdims=keepdims)
    check(te.create_prim_func([A, R]), [a], [np.asarray(want)], rtol=1e-3, atol=1e-3)


def test_broadcast_compute_binary():
    A = te.placeholder(("n", 1), "float32", "A")
    B = te.placeholder((3,), "float32", "B")
    C = te.broadcast_compute(lambda a, b: a * b - 1.0, A, B, name="C")
    a, b = rand((4, 1)), rand((3,))
    check(te.create_prim_func([A, B, C]), [a, b], [a * b - 1])
