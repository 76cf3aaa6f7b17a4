"""C codegen: hand-built PrimFuncs compiled, called through the kernel ABI with
ctypes, and compared with numpy."""
import ctypes

import ml_dtypes
import numpy as np
import pytest

from compiler.codegen import build_kernels, cc
from compiler.codegen.c import generate_c, kernel_names
from compiler.ir import expr as E
from compiler.ir import tir as T

NP_DTYPE = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
            "bfloat16": ml_dtypes.bfloat16, "int32": np.int32, "int64": np.int64,
            "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


def call(lib, name, *arrays, scalars=()):
    """Call kernel `name` following the ABI: buffer pointers, then dims + scalars."""
    sig = lib.signatures[name]
    assert len(arrays) == len(sig.buffers)
    dll = ctypes.CDLL(str(lib.so_path))
    fn = getattr(dll, lib.kernel_names[name])
    fn.restype = None
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)]
    for a, b in zip(arrays, sig.buffers):
        assert a.flags.c_contiguous and a.ndim == b.ndim and a.dtype == NP_DTYPE[b.dtype]
    ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
    dims = [d for a in arrays for d in a.shape] + [int(s) for s in scalars]
    dims_arr = (ctypes.c_int64 * max(len(dims), 1))(*dims)
    fn(ptrs, dims_arr)


def loop_nest(extents, make_body, kinds=None):
    """Loops over `extents` around make_body(*loop_vars)."""
    vs = [E.Var(f"l{i}") for i in range(len(extents))]
    body = make_body(*vs)
    for i in reversed(range(len(extents))):
        body = T.For(vs[i], E.IntImm(0), E.as_expr(extents[i]), (kinds or {}).get(i, "serial"), body)
    return body


def block(name, iters, values, body_fn, init_fn=None, predicate=None):
    """A BlockRealize; iters = [(kind, extent)], body_fn(*block_vars) -> Stmt."""
    bvs = [E.Var(f"v{name}{i}") for i in range(len(iters))]
    ivs = tuple(T.IterVar(v, T.Range(E.IntImm(0), E.as_expr(ext)), kind)
                for v, (kind, ext) in zip(bvs, iters))
    blk = T.Block(name, ivs, body_fn(*bvs), init_fn(*bvs) if init_fn else None)
    return T.BlockRealize(tuple(values), predicate if predicate is not None else E.IntImm(1, "bool"), blk)


def make_matmul(n=None, k=128, m=64):
    n = n if n is not None else E.Var("n")
    X = T.Buffer("X", (n, k)); W = T.Buffer("W", (k, m)); Y = T.Buffer("Y", (n, m))
    body = loop_nest([n, m, k], lambda i, j, kk: block(
        "Y", [("S", n), ("S", m), ("R", k)], [i, j, kk],
        lambda vi, vj, vk: T.BufferStore(Y, Y[vi, vj] + X[vi, vk] * W[vk, vj], (vi, vj)),
        lambda vi, vj, vk: T.BufferStore(Y, E.FloatImm(0.0), (vi, vj))))
    return T.PrimFunc((X, W, Y), body)


def make_exp(dtype="float32"):
    n = E.Var("n")
    A = T.Buffer("A", (n, 33), dtype); B = T.Buffer("B", (n, 33), dtype)
    body = loop_nest([n, 33], lambda i, j: block(
        "B", [("S", n), ("S", 33)], [i, j],
        lambda vi, vj: T.BufferStore(B, E.Call(dtype, "exp", (A[vi, vj],)), (vi, vj))))
    return T.PrimFunc((A, B), body)


def make_softmax(m=37):
    """Row softmax with local scratch buffers and two reductions (max, sum)."""
    n = E.Var("n")
    A = T.Buffer("A", (n, m)); B = T.Buffer("B", (n, m))
    mx = T.Buffer("mx", (1,), scope="local"); sm = T.Buffer("sm", (1,), scope="local")
    i = E.Var("i")
    z = E.IntImm(0)

    def red_max(k):
        return block("max", [("R", m)], [k],
                     lambda vk: T.BufferStore(mx, E.Call("float32", "max", (mx[z], A[i, vk])), (z,)),
                     lambda vk: T.BufferStore(mx, E.FloatImm(float("-inf")), (z,)))

    def red_sum(k):
        return block("sum", [("R", m)], [k],
                     lambda vk: T.BufferStore(sm, sm[z] + E.Call("float32", "exp", (A[i, vk] - mx[z],)), (z,)),
                     lambda vk: T.BufferStore(sm, E.FloatImm(0.0), (z,)))

    def norm(k):
        return block("out", [("S", m)], [k], lambda vk: T.BufferStore(
            B, E.Call("float32", "exp", (A[i, vk] - mx[z],)) / sm[z], (i, vk)))

    row = T.SeqStmt((loop_nest([m], red_max), loop_nest([m], red_sum), loop_nest([m], norm)))
    body = T.For(i, z, n, "serial", T.Allocate(mx, T.Allocate(sm, row)))
    return T.PrimFunc((A, B), body)


def softmax_ref(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_matmul_symbolic_n(n):
    lib = build_kernels({"mm": make_matmul()})
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 128), dtype=np.float32)
    w = rng.standard_normal((128, 64), dtype=np.float32)
    y = np.full((n, 64), np.nan, np.float32)
    call(lib, "mm", x, w, y)
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)


def test_matmul_init_is_hoisted_before_reduction_loop():
    src = generate_c({"mm": make_matmul()})
    assert "hoisted" in src and "== 0) {" not in src


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 5])
def test_exp(dtype, n):
    lib = build_kernels({"exp": make_exp(dtype)})
    assert lib.kernel_names["exp"] != "exp"  # must not shadow libm's exp
    a = np.random.default_rng(0).standard_normal((n, 33)).astype(dtype)
    b = np.zeros_like(a)
    call(lib, "exp", a, b)
    np.testing.assert_allclose(b, np.exp(a), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 20])
def test_softmax_local_buffers_two_reductions(n):
    lib = build_kernels({"softmax": make_softmax()})
    a = (np.random.default_rng(1).standard_normal((n, 37)) * 4).astype(np.float32)
    a[0, 3] = -np.inf  # masked entry
    b = np.zeros_like(a)
    call(lib, "softmax", a, b)
    np.testing.assert_allclose(b, softmax_ref(a), rtol=1e-5, atol=1e-7)
    # Both reductions accumulate in a local with an OpenMP SIMD reduction.
    assert "reduction(max:" in lib.source and "reduction(+:" in lib.source


def test_nested_parallel_loops_only_outermost_forks():
    n = E.Var("n")
    A, B = T.Buffer("A", (n, 6)), T.Buffer("B", (n, 6))
    body = loop_nest([n, 6], lambda i, j: T.BufferStore(B, A[i, j] * E.FloatImm(3.0), (i, j)),
                     kinds={0: "parallel", 1: "parallel"})
    body = T.For(body.loop_var, body.min, body.extent, body.kind, body.body,
                 annotations=T.Attrs({"parallel_min_extent": 4}))
    lib = build_kernels({"k": T.PrimFunc((A, B), body)})
    # One fork, taken only where OpenMP has more than one thread and n >= 4; else the
    # loop's serial copy runs without entering OpenMP (its team setup costs more than a
    # small kernel). Rows 1 and 9 run one copy each (the tests run with 2 threads or more).
    assert lib.source.count("omp parallel for") == 1 and "DISCO_FORK((n) >= 4)" in lib.source
    for rows in (1, 9):
        a = np.random.default_rng(rows).standard_normal((rows, 6)).astype(np.float32)
        b = np.zeros_like(a)
        call(lib, "k", a, b)
        np.testing.assert_array_equal(b, a * 3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_add(dtype):
    n = E.Var("n")
    A, B, C = (T.Buffer(x, (n,), dtype) for x in "ABC")
    body = loop_nest([n], lambda i: block("C", [("S", n)], [i],
                                         lambda v: T.BufferStore(C, A[v] + B[v] * E.FloatImm(0.5, dtype), (v,))))
    lib = build_kernels({"add": T.PrimFunc((A, B, C), body)})
    rng = np.random.default_rng(2)
    npd = NP_DTYPE[dtype]
    a = rng.standard_normal(101).astype(npd); b = rng.standard_normal(101).astype(npd)
    c = np.zeros(101, npd)
    call(lib, "add", a, b, c)
    ref = (a.astype(np.float32) + b.astype(np.float32) * 0.5).astype(npd)  # float compute, one rounding
    np.testing.assert_array_equal(c.view(np.uint16), ref.view(np.uint16))


def test_casts_bf16_f16_int():
    n = E.Var("n")
    A = T.Buffer("A", (n,), "float32")
    Bb, Bh, Bi = T.Buffer("Bb", (n,), "bfloat16"), T.Buffer("Bh", (n,), "float16"), T.Buffer("Bi", (n,), "int32")
    body = loop_nest([n], lambda i: T.SeqStmt((
        T.BufferStore(Bb, E.Cast("bfloat16", A[i]), (i,)),
        T.BufferStore(Bh, E.Cast("float16", A[i]), (i,)),
        T.BufferStore(Bi, E.Cast("int32", A[i]), (i,)))))
    lib = build_kernels({"casts": T.PrimFunc((A, Bb, Bh, Bi), body)})
    a = (np.random.default_rng(3).standard_normal(50) * 100).astype(np.float32)
    bb, bh, bi = np.zeros(50, ml_dtypes.bfloat16), np.zeros(50, np.float16), np.zeros(50, np.int32)
    call(lib, "casts", a, bb, bh, bi)
    np.testing.assert_array_equal(bb.view(np.uint16), a.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(bh, a.astype(np.float16))
    np.testing.assert_array_equal(bi, a.astype(np.int32))


def test_if_else_and_select_with_scalar_params():
    n, t = E.Var("n"), E.Var("t", "float32")
    A, B, C = T.Buffer("A", (n,)), T.Buffer("B", (n,)), T.Buffer("C", (n,))
    body = loop_nest([n], lambda i: T.SeqStmt((
        T.IfThenElse(A[i] > t, T.BufferStore(B, A[i] * E.FloatImm(2.0), (i,)),
                     T.BufferStore(B, E.FloatImm(-1.0), (i,))),
        T.BufferStore(C, E.Select(E.eq(E.FloorMod(i, E.IntImm(2)), E.IntImm(0)), A[i], E.FloatImm(0.0)), (i,)))))
    lib = build_kernels({"ite": T.PrimFunc((A, B, C, t), body)})
    a = np.random.default_rng(4).standard_normal(11).astype(np.float32)
    b, c = np.zeros_like(a), np.zeros_like(a)
    thr = np.array(0.25, np.float64).view(np.int64)  # float scalars: a double's bits
    call(lib, "ite", a, b, c, scalars=[thr])
    np.testing.assert_array_equal(b, np.where(a > 0.25, a * 2, -1).astype(np.float32))
    np.testing.assert_array_equal(c, np.where(np.arange(11) % 2 == 0, a, 0))


def test_floordiv_floormod_negative_and_index_pattern():
    # B[i] = A[(i - 5) // 3 + 2, (i - 5) % 3]   (negative dividends exercise floor semantics)
    n = E.Var("n")
    A = T.Buffer("A", (6, 3)); B = T.Buffer("B", (n,))
    Q = T.Buffer("Q", (n,), "int64"); R = T.Buffer("R", (n,), "int64")
    d = E.Var("d")

    def body(i):
        s = i - E.IntImm(5)
        return T.SeqStmt((
            T.BufferStore(B, A[s // 3 + 2, s % 3], (i,)),
            T.BufferStore(Q, E.FloorDiv(s, d), (i,)),
            T.BufferStore(R, E.FloorMod(s, d), (i,))))
    lib = build_kernels({"fd": T.PrimFunc((A, B, Q, R, d), loop_nest([n], body))})
    a = np.arange(18, dtype=np.float32).reshape(6, 3)
    b, q, r = np.zeros(12, np.float32), np.zeros(12, np.int64), np.zeros(12, np.int64)
    call(lib, "fd", a, b, q, r, scalars=[-4])
    s = np.arange(12) - 5
    np.testing.assert_array_equal(b, a[s // 3 + 2, s % 3])
    np.testing.assert_array_equal(q, s // -4)
    np.testing.assert_array_equal(r, s % -4)


@pytest.mark.parametrize("n", [1, 5])
def test_divmod_index_folds_into_one_offset(n):
    # B[i, j] = A[i, j // 8, j % 8]: a reshape's read; the offset i * 48 + (j // 8) * 8 +
    # j % 8 is printed as i * 48 + j, which the C compiler sees is contiguous
    nv = E.Var("n")
    A = T.Buffer("A", (nv, 6, 8)); B = T.Buffer("B", (nv, 48))
    func = T.PrimFunc((A, B), loop_nest([nv, 48], lambda i, j: T.BufferStore(
        B, A[i, j // 8, j % 8], (i, j))))
    src = generate_c({"rs": func})
    read = [line for line in src.splitlines() if "A[" in line]
    assert read and all("/" not in line and "%" not in line for line in read), read
    lib = build_kernels({"rs": func})
    a = np.random.default_rng(0).standard_normal((n, 6, 8)).astype(np.float32)
    b = np.zeros((n, 48), np.float32)
    call(lib, "rs", a, b)
    np.testing.assert_array_equal(b, a.reshape(n, 48))


def test_predicate_and_large_local_buffer():
    n = E.Var("n")
    A = T.Buffer("A", (n,)); B = T.Buffer("B", (n,))
    tmp = T.Buffer("tmp", (n,), scope="local")
    big = T.Buffer("big", (10000,), scope="local")
    body = T.Allocate(tmp, T.Allocate(big, T.SeqStmt((
        loop_nest([n], lambda i: T.BufferStore(tmp, A[i] + E.FloatImm(1.0), (i,))),
        loop_nest([n], lambda i: T.BufferStore(big, tmp[i], (i % 10000,))),
        loop_nest([n], lambda i: block("B", [("S", n)], [i], lambda v: T.BufferStore(B, big[v % 10000], (v,)),
                                        predicate=i < E.IntImm(4)))))))
    lib = build_kernels({"k": T.PrimFunc((A, B), body)})
    assert "malloc" in lib.source and "free(" in lib.source
    a = np.arange(9, dtype=np.float32)
    b = np.zeros(9, np.float32)
    call(lib, "k", a, b)
    np.testing.assert_array_equal(b, np.where(np.arange(9) < 4, a + 1, 0))


def test_kernel_names_are_c_identifiers_and_unique():
    names = kernel_names(["fused.add-1", "exp", "3x", "fused_add_1"])
    assert names == {"fused.add-1": "fused_add_1", "exp": "exp_kernel", "3x": "_3x", "fused_add_1": "fused_add_1_1"}


def test_compile_cache_hit_does_not_invoke_compiler():
    func = make_matmul(n=4, k=8, m=8)
    lib1 = build_kernels({"mm_cache": func})
    count = cc.compile_count
    mtime = lib1.so_path.stat().st_mtime_ns
    lib2 = build_kernels({"mm_cache": func})
    assert cc.compile_count == count
    assert lib2.so_path == lib1.so_path and lib2.so_path.stat().st_mtime_ns == mtime
    assert lib1.so_bytes[:4] == b"\x7fELF"


def test_cache_entry_is_per_host_instruction_set(monkeypatch):
    """Another CPU (other -march=native macros) never reuses this host's object."""
    func = make_matmul(n=4, k=8, m=8)
    here = build_kernels({"mm_isa": func}).so_path
    monkeypatch.setattr(cc, "native_target", lambda _cc: "#define __SOME_OTHER_CPU__ 1")
    count = cc.compile_count
    other = build_kernels({"mm_isa": func}).so_path
    assert cc.compile_count == count + 1 and other != here


def test_compile_error_shows_message_and_source():
    with pytest.raises(cc.CCompileError, match=r"(?s)error.*offending source lines.*>>.*not_a_type"):
        cc.compile_shared_object("void f(void) { not_a_type x = 1; }\n")
