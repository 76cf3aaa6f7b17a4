"""Schedule primitives and DefaultSchedule: loop structure, and results unchanged
(kernels compiled and compared with numpy)."""
import ctypes

import numpy as np
import pytest

from compiler.codegen import build_kernels
from compiler.ir import expr as E
from compiler.ir import tir as T
from compiler.ir.module import IRModule
from compiler.schedule import Schedule, ScheduleError, get_loops
from compiler.transform.default_schedule import DefaultSchedule


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISCO_TP_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


def run(func, *arrays):
    """Compile `func` alone and call it (ABI: buffer pointers; dims = shapes)."""
    lib = build_kernels({"k": func})
    fn = getattr(ctypes.CDLL(str(lib.so_path)), lib.kernel_names["k"])
    fn.restype = None
    ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    dims = [d for a in arrays for d in a.shape]
    fn(ptrs, (ctypes.c_int64 * max(len(dims), 1))(*dims))
    return lib


def nest(func):
    """[(loop name, kind, extent text)] of the first perfect nest of loops."""
    out, node = [], func.body
    while isinstance(node, T.For):
        ext = node.extent.value if isinstance(node.extent, E.IntImm) else "sym"
        out.append((node.loop_var.name, node.kind, ext))
        node = node.body
    return out


def block(name, iters, values, body_fn, init_fn=None):
    bvs = [E.Var(f"v{name}{i}") for i in range(len(iters))]
    ivs = tuple(T.IterVar(v, T.Range(E.IntImm(0), E.as_expr(ext)), kind) for v, (kind, ext) in zip(bvs, iters))
    return T.BlockRealize(tuple(values), E.IntImm(1, "bool"),
                          T.Block(name, ivs, body_fn(*bvs), init_fn(*bvs) if init_fn else None))


def loops(names_extents, body_fn):
    vs = [E.Var(nm) for nm, _ in names_extents]
    body = body_fn(*vs)
    for v, (_, ext) in reversed(list(zip(vs, names_extents))):
        body = T.For(v, E.IntImm(0), E.as_expr(ext), "serial", body)
    return body


def matmul(n=None, k=128, m=64):
    n = n if n is not None else E.Var("n")
    X, W, Y = T.Buffer("X", (n, k)), T.Buffer("W", (k, m)), T.Buffer("Y", (n, m))
    return T.PrimFunc((X, W, Y), loops([("i", n), ("j", m), ("k", k)], lambda i, j, kk: block(
        "Y", [("S", n), ("S", m), ("R", k)], [i, j, kk],
        lambda vi, vj, vk: T.BufferStore(Y, Y[vi, vj] + X[vi, vk] * W[vk, vj], (vi, vj)),
        lambda vi, vj, vk: T.BufferStore(Y, E.FloatImm(0.0), (vi, vj)))))


def add2d(rows, cols):
    A, B, C = (T.Buffer(x, (rows, cols)) for x in "ABC")
    return T.PrimFunc((A, B, C), loops([("i", rows), ("j", cols)], lambda i, j: block(
        "C", [("S", rows), ("S", cols)], [i, j],
        lambda vi, vj: T.BufferStore(C, A[vi, vj] + B[vi, vj], (vi, vj)))))


def rowsum(cols=100):
    n = E.Var("n")
    A, S = T.Buffer("A", (n, cols)), T.Buffer("S", (n,))
    return T.PrimFunc((A, S), loops([("i", n), ("k", cols)], lambda i, k: block(
        "S", [("S", n), ("R", cols)], [i, k],
        lambda vi, vk: T.BufferStore(S, S[vi] + A[vi, vk], (vi,)),
        lambda vi, vk: T.BufferStore(S, E.FloatImm(0.0), (vi,)))))


def check_matmul(func, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 128), dtype=np.float32)
    w = rng.standard_normal((128, 64), dtype=np.float32)
    y = np.full((n, 64), np.nan, np.float32)
    run(func, x, w, y)
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)


def test_readme_example_structure_and_result():
    sch = Schedule(matmul())
    i, j, k = sch.get_loops("Y")
    io, ii = sch.split(i, [None, 8])
    sch.parallel(io)
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(io, jo, k, ii, ji)
    sch.vectorize(ji)
    assert nest(sch.func) == [("i_0", "parallel", "sym"), ("j_0", "serial", 4), ("k", "serial", 128),
                              ("i_1", "serial", 8), ("j_1", "vectorized", 16)]
    for n in (1, 7, 8, 19):  # non-dividing n exercises the split predicate
        check_matmul(sch.func, n)


def test_split_fuse_unroll_preserve_result():
    sch = Schedule(add2d(5, 37))
    i, j = sch.get_loops("C")
    f = sch.fuse(i, j)
    a, b, c = sch.split(f, [3, None, 4])
    sch.unroll(c)
    assert [(nm, kind, ext) for nm, kind, ext in nest(sch.func)] == [
        ("i_j_fused_0", "serial", 3), ("i_j_fused_1", "serial", 16), ("i_j_fused_2", "unrolled", 4)]
    A, B = np.random.default_rng(0).standard_normal((2, 5, 37), dtype=np.float32)
    C = np.zeros_like(A)
    run(sch.func, A, B, C)
    np.testing.assert_array_equal(C, A + B)


def test_decompose_reduction_and_reorder_rowsum():
    sch = Schedule(rowsum())
    i, k = sch.get_loops("S")
    ko, ki = sch.split(k, [None, 16])  # 100 = 7 * 16 - 12: predicate on the reduction
    sch.decompose_reduction("S", ko)
    sch.parallel(i)
    assert [v.name for v in sch.get_loops("S_init")] == ["i"]
    assert [v.name for v in sch.get_loops("S")] == ["i", "k_0", "k_1"]
    assert sch.func.body.body.stmts[0].block.init is None
    a = np.random.default_rng(1).standard_normal((9, 100), dtype=np.float32)
    s = np.full(9, np.nan, np.float32)
    run(sch.func, a, s)
    np.testing.assert_allclose(s, a.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_illegal_primitives_raise():
    sch = Schedule(matmul())
    i, j, k = sch.get_loops("Y")
    with pytest.raises(ScheduleError, match="reduction"):
        sch.parallel(k)
    with pytest.raises(ScheduleError, match="not directly inside"):
        sch.fuse(i, k)
    with pytest.raises(ScheduleError, match="no loop"):
        sch.vectorize(E.Var("zz"))
    with pytest.raises(ScheduleError, match="block"):
        sch.get_loops("nope")
    with pytest.raises(ScheduleError, match="out of range"):
        sch.cache_read("Y", 5, "shared")


def test_default_schedule_matmul_structure_and_result():
    mod = IRModule.from_dict({"mm": matmul()})
    out = DefaultSchedule(mod)["mm"]
    text = build_kernels({"k": out}).source
    assert "#pragma omp parallel for" in text and "#pragma omp simd" in text
    kinds = [kind for _, kind, _ in nest(out)]
    assert kinds[0] == "parallel"
    # i, k, j order (contiguous inner loop over j); init split into its own nest.
    assert [v.name for v in get_loops(out, "Y")] == ["i", "k", "j"]
    assert [v.name for v in get_loops(out, "Y_init")] == ["i", "j_init"]
    for n in (1, 3, 33):
        check_matmul(out, n)
    assert out.attrs.get("scheduled")


def test_default_schedule_small_outer_extent_is_fused_and_tiny_not_parallel():
    out = DefaultSchedule(IRModule.from_dict({"add": add2d(3, 16384)}))["add"]
    assert nest(out) == [("i_j_0_fused", "parallel", 3 * 16384 // 64), ("j_1", "vectorized", 64)]
    A, B = np.random.default_rng(2).standard_normal((2, 3, 16384), dtype=np.float32)
    C = np.zeros_like(A)
    run(out, A, B, C)
    np.testing.assert_array_equal(C, A + B)
    tiny = DefaultSchedule(IRModule.from_dict({"add": add2d(2, 3)}))["add"]
    assert all(kind != "parallel" for _, kind, _ in nest(tiny))


def test_default_schedule_skips_scheduled_and_keeps_rowsum_correct():
    sch = Schedule(add2d(4, 4))
    done = sch.mark_scheduled()
    mod = DefaultSchedule(IRModule.from_dict({"a": done, "r": rowsum()}))
    assert mod["a"] is done
    a = np.random.default_rng(3).standard_normal((5, 100), dtype=np.float32)
    s = np.zeros(5, np.float32)
    run(mod["r"], a, s)
    np.testing.assert_allclose(s, a.sum(axis=1), rtol=1e-5, atol=1e-5)
