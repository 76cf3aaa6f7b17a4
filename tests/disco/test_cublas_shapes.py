"""disco.cublas's shapes, batch strides and broadcasting, without a GPU: its calls go to a
stand-in cublasGemmStridedBatchedEx that follows the BLAS contract (column-major
matrices, leading dimensions, element strides between batch members), computed with
numpy on host memory, and the results must equal numpy's matmul."""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

_NP = {0: np.float32, 1: np.float64, 2: np.float16}


class _HostArray:
    """The few cupy-array attributes disco.cublas reads, over a numpy array."""

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        self.shape, self.ndim, self.size, self.dtype, self.flags = a.shape, a.ndim, a.size, a.dtype, self.a.flags
        self.data = types.SimpleNamespace(ptr=self.a.__array_interface__["data"][0])

    def fill(self, v):
        self.a.fill(v)


def _view(ptr: int, code: int, n: int) -> np.ndarray:
    dt = np.dtype(_NP[code])
    return np.frombuffer((ctypes.c_char * (n * dt.itemsize)).from_address(ptr), dt)


class _ColumnMajorBlas:
    """cublasGemmStridedBatchedEx by its documented contract (no transposes)."""

    def __init__(self):
        self.calls = 0

    def cublasGemmStridedBatchedEx(self, h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb,
                                   beta, C, ct, ldc, sc, count, compute, algo):
        assert ta in (0, 1) and tb == 0 and lda >= (k if ta else m) and ldb >= k and ldc >= m
        self.calls += 1
        for i in range(count):
            if ta:      # op(A) = A^T, A stored column-major (k x m) with leading dim lda
                a = _view(A.value + i * sa * np.dtype(_NP[at]).itemsize, at, lda * m).reshape(m, lda).T[:k].T
            else:
                a = _view(A.value + i * sa * np.dtype(_NP[at]).itemsize, at, lda * k).reshape(k, lda).T[:m]
            b = _view(B.value + i * sb * np.dtype(_NP[bt]).itemsize, bt, ldb * n).reshape(n, ldb).T[:k]
            c = _view(C.value + i * sc * np.dtype(_NP[ct]).itemsize, ct, ldc * n).reshape(n, ldc).T[:m]
            c[...] = (a.astype(np.float64) @ b).astype(_NP[ct])
        return 0


@pytest.fixture
def blas(monkeypatch):
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.cuda = types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    import disco.cublas as cb
    lib = _ColumnMajorBlas()
    monkeypatch.setattr(cb, "_library", lambda: lib)
    monkeypatch.setattr(cb, "_handle", lambda cp: None)
    return cb, lib


CASES = [((5, 3), (3, 4)), ((2, 5, 3), (3, 4)), ((2, 5, 3), (2, 3, 4)), ((4, 2, 5, 3), (4, 1, 3, 4)),
         ((1, 5, 3), (6, 3, 4)), ((5, 3), (2, 3, 4)), ((3,), (3, 4)), ((5, 3), (3,)), ((3,), (2, 3, 4)),
         ((2, 1, 5, 3), (1, 3, 3, 4)), ((0, 3), (3, 4)), ((5, 0), (0, 4)),
         ((2, 3, 4, 5, 3), (2, 3, 4, 3, 2)), ((2, 3, 4, 5, 3), (2, 1, 4, 3, 2))]


@pytest.mark.parametrize("dtype,out_dtype", [("float32", "float32"), ("float16", "float32"),
                                             ("float16", "float16"), ("float64", "float64")])
@pytest.mark.parametrize("shapes", CASES, ids=[f"{a}@{b}" for a, b in CASES])
def test_matmul_matches_numpy(blas, shapes, dtype, out_dtype):
    cb, _ = blas
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shapes[0]).astype(dtype)
    b = rng.standard_normal(shapes[1]).astype(dtype)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = _HostArray(np.full(want.shape, np.nan, out_dtype))
    cb.matmul(_HostArray(a), _HostArray(b), out)
    tol = 1e-2 if "float16" in (dtype, out_dtype) else 1e-6
    np.testing.assert_allclose(out.a, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape_a", [(5, 3), (2, 5, 3), (3,)])
def test_transposed_b_matches_numpy(blas, shape_a):
    """transpose_b: out = a @ b.T with b (n, k) read in place (a linear layer's weight)."""
    cb, _ = blas
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    want = a @ b.T
    out = _HostArray(np.full(want.shape, np.nan, np.float32))
    cb.matmul(_HostArray(a), _HostArray(b), out, transpose_b=True)
    np.testing.assert_allclose(out.a, want, rtol=1e-6, atol=1e-6)


def test_same_batch_shapes_are_one_call_and_broadcast_ones_a_call_per_outer_index(blas):
    cb, lib = blas
    a, b = np.ones((3, 4, 5, 2), np.float32), np.ones((3, 4, 2, 6), np.float32)
    cb.matmul(_HostArray(a), _HostArray(b), _HostArray(np.empty((3, 4, 5, 6), np.float32)))
    assert lib.calls == 1                       # the two batch dims collapse into one
    b = np.ones((3, 1, 2, 6), np.float32)
    cb.matmul(_HostArray(a), _HostArray(b), _HostArray(np.empty((3, 4, 5, 6), np.float32)))
    assert lib.calls == 1 + 3                   # b repeats along dim 1: one strided call per dim-0 index


def test_unsupported_types_and_shapes_are_refused(blas):
    cb, _ = blas
    from disco.errors import DiscoError
    with pytest.raises(DiscoError, match="int32 @ int32 -> int32 are not supported"):
        x = _HostArray(np.ones((2, 2), np.int32))
        cb.matmul(x, x, x)
    with pytest.raises(DiscoError, match=r"shapes \(2, 3\) @ \(2, 3\) do not match"):
        x = _HostArray(np.ones((2, 3), np.float32))
        cb.matmul(x, x, _HostArray(np.ones((2, 3), np.float32)))
    assert cb.supports("bfloat16", "bfloat16", "float32") and not cb.supports("float16", "float32", "float32")
