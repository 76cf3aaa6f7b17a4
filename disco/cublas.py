"""Matmuls through cuBLAS directly (ctypes), for CUDA graphs and for bfloat16.

cupy's own cuBLAS calls refuse to run while a stream is captured ("calling cuBLAS
API during stream capture is currently unsupported"), so a VM function with a
matmul could not become a CUDA graph, and cupy.matmul has no bfloat16 path. cuBLAS
itself does both: a handle given its own workspace (cublasSetWorkspace) is safe to
capture, and cublasGemmStridedBatchedEx takes raw pointers of any data type (bfloat16
arrays of cupy 14 through ml_dtypes, or their bits in uint16 arrays with dtype=). This module uses
the libcublas that cupy has loaded, one handle and 32 MiB workspace per thread and
GPU, and runs row-major matmuls `out = a @ b` (numpy's broadcasting over the batch
dims) as column-major `out^T = b^T a^T`, accumulating in float32 (float64 for
float64).

    from disco import cublas
    cublas.matmul(a, b, out)                                   # cupy arrays
    cublas.matmul(a16, b16, out16, dtype="bfloat16")           # bf16 bits in uint16 arrays
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from typing import Any, Optional

import numpy as np

from .errors import DiscoError

_OP_N, _OP_T = 0, 1
_GEMM_DEFAULT = -1
_COMPUTE_32F, _COMPUTE_64F = 68, 70
# cudaDataType_t of each element type cuBLAS takes here
_CUDA_TYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}
_WORKSPACE_BYTES = 32 << 20     # what cuBLAS asks for on Hopper
_INT_MAX = 2 ** 31 - 1

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_handles: dict = {}             # (thread id, device) -> _Handle


def _find_library() -> ctypes.CDLL:
    """The libcublas cupy uses: the one already mapped into this process (after asking
    cupy for its handle), else the usual names and the pip wheels' folders."""
    import cupy
    cupy.cuda.device.get_cublas_handle()          # makes cupy load libcublas
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "/libcublas.so" in path:
                    return ctypes.CDLL(path)
    except OSError:
        pass
    names = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    for base in sys.path:
        names += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcublas.so*")))
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise DiscoError("disco.cublas: libcublas was not found (looked in this process's libraries, "
                     f"then {names[:3]} and the nvidia wheels' folders)")


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            lib = _find_library()
            vp, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
            lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
            lib.cublasSetStream_v2.argtypes = [vp, vp]
            lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
            lib.cublasGemmStridedBatchedEx.argtypes = [
                vp, i, i, i, i, i, vp, vp, i, i, ll, vp, i, i, ll, vp, vp, i, i, ll, i, i, i]
            for f in (lib.cublasCreate_v2, lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2,
                      lib.cublasGemmStridedBatchedEx):
                f.restype = ctypes.c_int
            _lib = lib
    return _lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise DiscoError(f"disco.cublas: {what} failed with cublasStatus_t {status}")


class _Handle:
    """A cuBLAS handle of one thread on one GPU, with its own workspace (what makes its
    calls safe to capture into a CUDA graph) and the stream it was last set to."""

    def __init__(self, lib, cp):
        self.lib = lib
        self.h = ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(self.h)), "cublasCreate")
        self.workspace = cp.empty(_WORKSPACE_BYTES, cp.uint8)
        self.stream = None

    def on(self, stream: int) -> ctypes.c_void_p:
        """The handle, set to `stream`. cublasSetStream puts the library's default
        workspace back, so the own workspace is set again after it."""
        if stream != self.stream:
            _check(self.lib.cublasSetStream_v2(self.h, ctypes.c_void_p(stream)), "cublasSetStream")
            _check(self.lib.cublasSetWorkspace_v2(self.h, ctypes.c_void_p(self.workspace.data.ptr),
                                                  _WORKSPACE_BYTES), "cublasSetWorkspace")
            self.stream = stream
        return self.h


def _handle(cp) -> ctypes.c_void_p:
    """This thread's handle on the current GPU, set to the current stream."""
    key = (threading.get_ident(), cp.cuda.runtime.getDevice())
    entry = _handles.get(key)
    if entry is None:
        entry = _handles[key] = _Handle(_library(), cp)
    return entry.on(cp.cuda.get_current_stream().ptr)


def supports(a_dtype: str, b_dtype: str, out_dtype: str) -> bool:
    """Whether `matmul` runs these element types (a and b alike; out the same or float32)."""
    if a_dtype != b_dtype or a_dtype not in _CUDA_TYPE:
        return False
    return out_dtype == a_dtype or (out_dtype == "float32" and a_dtype in ("float16", "bfloat16"))


def _batch_strides(shape: tuple, batch: tuple, matrix: int) -> list[int]:
    """Element strides of each batch dim of a C-contiguous array of `shape` broadcast to
    `batch` (0 along broadcast dims), for matrices of `matrix` elements."""
    own = (1,) * (len(batch) - len(shape)) + tuple(shape)
    strides, step = [0] * len(batch), matrix
    for i in range(len(batch) - 1, -1, -1):
        strides[i] = step if own[i] != 1 else 0
        step *= own[i]
    return strides


def _collapse(batch: list, sa: list, sb: list, sc: list) -> None:
    """Merge adjacent batch dims that every operand steps through contiguously, in place."""
    i = len(batch) - 2
    while i >= 0:
        if all(s[i] == s[i + 1] * batch[i + 1] for s in (sa, sb, sc)):
            batch[i] *= batch.pop(i + 1)
            for s in (sa, sb, sc):
                s.pop(i)            # the merged dim steps like the inner one
        i -= 1


def matmul(a: Any, b: Any, out: Any, dtype: Optional[str] = None, out_dtype: Optional[str] = None,
           transpose_b: bool = False) -> None:
    """out = a @ b on the current stream, for C-contiguous cupy arrays (numpy's matmul
    shapes and broadcasting). `dtype` / `out_dtype` name the element types when the
    arrays' own differ (bfloat16 held as uint16). `transpose_b`: out = a @ b.T for a 2-D
    b of shape (n, k), read transposed in place (a linear layer's (out, in) weight)."""
    import cupy as cp
    from .tensor import dtype_name
    at = dtype or dtype_name(a.dtype)
    ot = out_dtype or dtype or dtype_name(out.dtype)
    if not supports(at, dtype or dtype_name(b.dtype), ot):
        raise DiscoError(f"disco.cublas.matmul: element types {a.dtype} @ {b.dtype} -> {out.dtype} "
                         "are not supported (float32, float64, float16, bfloat16; out the same or "
                         "float32)")
    for what, x in (("a", a), ("b", b), ("out", out)):
        if not x.flags.c_contiguous:
            raise DiscoError(f"disco.cublas.matmul: {what} of shape {x.shape} is not C-contiguous")
    if transpose_b and b.ndim != 2:
        raise DiscoError(f"disco.cublas.matmul: transpose_b needs a 2-D b, got shape {b.shape}")
    a2 = a.shape if a.ndim >= 2 else (1,) + a.shape
    b2 = b.shape[::-1] if transpose_b else b.shape if b.ndim >= 2 else b.shape + (1,)
    m, k, n = a2[-2], a2[-1], b2[-1]
    if b2[-2] != k:
        raise DiscoError(f"disco.cublas.matmul: shapes {a.shape} @ {b.shape} do not match")
    if out.size == 0:
        return
    if k == 0:
        out.fill(0)
        return
    if b.ndim <= 2:                 # the batch folds into the rows of a
        batch, sa, sb, sc, m = [1], [0], [0], [0], a.size // k
    else:
        batch = list(np.broadcast_shapes(a2[:-2], b2[:-2]))
        sa = _batch_strides(a2[:-2], tuple(batch), m * k)
        sb = _batch_strides(b2[:-2], tuple(batch), k * n)
        sc = _batch_strides(tuple(batch), tuple(batch), m * n)
        _collapse(batch, sa, sb, sc)
    if max(m, n, k, batch[-1]) > _INT_MAX:
        raise DiscoError(f"disco.cublas.matmul: a dim of {a.shape} @ {b.shape} exceeds cuBLAS's int32")
    lib, h = _library(), _handle(cp)
    wide = at == "float64"
    one, zero = (ctypes.c_double(1.0), ctypes.c_double(0.0)) if wide else (ctypes.c_float(1.0), ctypes.c_float(0.0))
    compute = _COMPUTE_64F if wide else _COMPUTE_32F
    ta, to = _CUDA_TYPE[at], _CUDA_TYPE[ot]
    ia, ib, ic = a.dtype.itemsize, b.dtype.itemsize, out.dtype.itemsize
    outer = batch[:-1]
    for idx in (np.ndindex(*outer) if outer else ((),)):
        oa = sum(i * s for i, s in zip(idx, sa))
        ob = sum(i * s for i, s in zip(idx, sb))
        oc = sum(i * s for i, s in zip(idx, sc))
        # column-major: out^T (n x m) = b^T (n x k) @ a^T (k x m); a transposed b (n, k)
        # row-major is the column-major (k x n) matrix b^T, read with op T
        _check(lib.cublasGemmStridedBatchedEx(
            h, _OP_T if transpose_b else _OP_N, _OP_N, n, m, k, ctypes.byref(one),
            ctypes.c_void_p(b.data.ptr + ob * ib), ta, k if transpose_b else n, sb[-1],
            ctypes.c_void_p(a.data.ptr + oa * ia), ta, k, sa[-1],
            ctypes.byref(zero), ctypes.c_void_p(out.data.ptr + oc * ic), to, n, sc[-1],
            batch[-1], compute, _GEMM_DEFAULT), "cublasGemmStridedBatchedEx")
