"""A stand-in libcublas for code that calls cuBLAS through ctypes (disco/cublas.py).

`load()` builds (once, with the system C compiler) and loads a small shared object
named `libcublas.so.13` whose entry points forward to the Python functions below, so
that a caller that finds "libcublas.so" among the process's libraries (after
`cupy.cuda.device.get_cublas_handle()`) and declares the argtypes of the real API runs
these. They follow cuBLAS: column-major operands with leading dimensions, host
pointers for alpha/beta, the handle's stream (work on a capturing stream is recorded
into the graph), cublasStatus_t results; every matrix must lie inside a live device
allocation (`_runtime.find_allocation`), as on a GPU it must lie in device memory.
cublasSetStream puts the default workspace back (as cuBLAS documents), and a GEMM on a
capturing stream without the handle's own workspace (cublasSetWorkspace after the last
cublasSetStream) fails with CUBLAS_STATUS_NOT_SUPPORTED: stricter than cuBLAS, whose
default workspace is not safe to capture.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import subprocess
import tempfile
import threading

import numpy as np

from . import _runtime as rt

SUCCESS, NOT_INITIALIZED, INVALID_VALUE, EXECUTION_FAILED, NOT_SUPPORTED = 0, 1, 7, 13, 15
_TYPES = {0: "float32", 1: "float64", 2: "float16", 14: "bfloat16"}     # cudaDataType_t
_COMPUTE = {68: np.float32, 70: np.float64, 74: np.float32, 75: np.float32, 77: np.float32}
# (A/B type, C type, compute) combinations of cublasGemmEx that are run here
_SUPPORTED = {("float16", "float16", np.float32), ("float16", "float32", np.float32),
              ("bfloat16", "bfloat16", np.float32), ("bfloat16", "float32", np.float32),
              ("float32", "float32", np.float32), ("float64", "float64", np.float64)}

_SOURCE = r"""
#include <stddef.h>
typedef int (*create_t)(void**);
typedef int (*destroy_t)(void*);
typedef int (*set_stream_t)(void*, void*);
typedef int (*get_stream_t)(void*, void**);
typedef int (*set_workspace_t)(void*, void*, size_t);
typedef int (*gemm_t)(void*, int, int, int, int, int, const void*, const void*, int, int, long long,
                      const void*, int, int, long long, const void*, void*, int, int, long long,
                      int, int, int);
static create_t p_create; static destroy_t p_destroy; static set_stream_t p_set_stream;
static get_stream_t p_get_stream; static set_workspace_t p_set_workspace; static gemm_t p_gemm;
void disco_standin_set(create_t a, destroy_t b, set_stream_t c, get_stream_t d, set_workspace_t e,
                       gemm_t f) {
  p_create = a; p_destroy = b; p_set_stream = c; p_get_stream = d; p_set_workspace = e; p_gemm = f;
}
int cublasCreate_v2(void** h) { return p_create(h); }
int cublasDestroy_v2(void* h) { return p_destroy(h); }
int cublasSetStream_v2(void* h, void* s) { return p_set_stream(h, s); }
int cublasGetStream_v2(void* h, void** s) { return p_get_stream(h, s); }
int cublasSetWorkspace_v2(void* h, void* w, size_t n) { return p_set_workspace(h, w, n); }
int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha,
    const void* A, int at, int lda, long long sa, const void* B, int bt, int ldb, long long sb,
    const void* beta, void* C, int ct, int ldc, long long sc, int batch, int compute, int algo) {
  return p_gemm(h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch,
                compute, algo);
}
"""

_vp, _i, _ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
_CREATE = ctypes.CFUNCTYPE(_i, ctypes.POINTER(_vp))
_DESTROY = ctypes.CFUNCTYPE(_i, _vp)
_SET_STREAM = ctypes.CFUNCTYPE(_i, _vp, _vp)
_GET_STREAM = ctypes.CFUNCTYPE(_i, _vp, ctypes.POINTER(_vp))
_SET_WORKSPACE = ctypes.CFUNCTYPE(_i, _vp, _vp, ctypes.c_size_t)
_GEMM = ctypes.CFUNCTYPE(_i, _vp, _i, _i, _i, _i, _i, _vp, _vp, _i, _i, _ll, _vp, _i, _i, _ll, _vp, _vp,
                         _i, _i, _ll, _i, _i, _i)

_lock = threading.Lock()
_lib = None
_handles: dict[int, dict] = {}
_handle_ids = itertools.count(0x7c00)


def _create(out):
    h = next(_handle_ids) * 64
    _handles[h] = {"stream": 0, "workspace": None, "device": rt.get_device()}
    out[0] = h
    return SUCCESS


def _destroy(h):
    return SUCCESS if _handles.pop(h or 0, None) is not None else NOT_INITIALIZED


def _set_stream(h, s):
    """As documented for cuBLAS: setting the stream puts the default workspace pool back."""
    st = _handles.get(h or 0)
    if st is None:
        return NOT_INITIALIZED
    st["stream"], st["workspace"] = s or 0, None
    return SUCCESS


def _get_stream(h, out):
    st = _handles.get(h or 0)
    if st is None:
        return NOT_INITIALIZED
    out[0] = st["stream"]
    return SUCCESS


def _set_workspace(h, w, n):
    st = _handles.get(h or 0)
    if st is None:
        return NOT_INITIALIZED
    if n and rt.find_allocation(w or 0, n) is None:
        return INVALID_VALUE
    st["workspace"] = (w, n)
    return SUCCESS


def _matrices(ptr, dt, rows, cols, ld, stride, batch, what):
    """The `batch` column-major rows x cols matrices at ptr (views of device memory)."""
    if rows == 0 or cols == 0:
        return [np.zeros((rows, cols), dt)] * batch
    size = dt.itemsize
    last = (batch - 1) * stride + (cols - 1) * ld + rows          # elements spanned
    base = rt.host_view(ptr or 0, last * size, np.uint8, f"cublasGemmStridedBatchedEx {what}")
    return [np.lib.stride_tricks.as_strided(base[i * stride * size:].view(dt), (rows, cols), (size, ld * size))
            for i in range(batch)]


def _gemm(h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute,
          algo):
    try:
        st = _handles.get(h or 0)
        if st is None:
            return NOT_INITIALIZED
        if min(m, n, k, batch) < 0 or ta not in (0, 1) or tb not in (0, 1):
            return INVALID_VALUE
        a_rows, a_cols = (m, k) if ta == 0 else (k, m)
        b_rows, b_cols = (k, n) if tb == 0 else (n, k)
        if lda < max(1, a_rows) or ldb < max(1, b_rows) or ldc < max(1, m):
            return INVALID_VALUE
        acc = _COMPUTE.get(compute)
        tA, tB, tC = _TYPES.get(at), _TYPES.get(bt), _TYPES.get(ct)
        if acc is None or tA is None or tA != tB or (tA, tC, acc) not in _SUPPORTED:
            return NOT_SUPPORTED
        if m == 0 or n == 0 or batch == 0:
            return SUCCESS
        dA, dB, dC = (_dtype(t) for t in (tA, tB, tC))
        scalar = ctypes.c_double if acc is np.float64 else ctypes.c_float
        al = scalar.from_address(alpha).value
        be = scalar.from_address(beta).value
        As = _matrices(A, dA, a_rows, a_cols, lda, sa, batch, "A")
        Bs = _matrices(B, dB, b_rows, b_cols, ldb, sb, batch, "B")
        Cs = _matrices(C, dC, m, n, ldc, sc, batch, "C")
        stream = rt.stream_from_ptr(st["stream"])
        if rt.capturing(stream) and st["workspace"] is None:
            return NOT_SUPPORTED    # stricter than cuBLAS: capture only with the handle's own workspace
        mems = [rt.find_allocation(p or 0) for p in (A, B, C)]
    except rt.CUDARuntimeError:
        return INVALID_VALUE

    def work():
        for a, b, c in zip(As, Bs, Cs):
            a, b = a.astype(acc), b.astype(acc)
            r = al * ((a if ta == 0 else a.T) @ (b if tb == 0 else b.T))
            if be != 0:
                r = r + be * c.astype(acc)
            c[...] = r.astype(dC)
    rt.launch(work, stream, mems)
    return SUCCESS


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_callbacks = (_CREATE(_create), _DESTROY(_destroy), _SET_STREAM(_set_stream), _GET_STREAM(_get_stream),
              _SET_WORKSPACE(_set_workspace), _GEMM(_gemm))


def load() -> ctypes.CDLL:
    """Build (once per source and folder) and load the stand-in libcublas."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        tag = hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]
        base = os.environ.get("DISCO_STANDIN_KERNELS") or os.path.join(tempfile.gettempdir(),
                                                                       f"disco-standin-{os.getuid()}")
        folder = os.path.join(base, f"cublas-{tag}")
        path = os.path.join(folder, "libcublas.so.13")
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            src = os.path.join(folder, f"shim.{os.getpid()}.c")
            with open(src, "w") as f:
                f.write(_SOURCE)
            tmp = path + f".{os.getpid()}.tmp"
            subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O1", "-o", tmp, src],
                           check=True, capture_output=True)
            os.replace(tmp, path)
            os.unlink(src)
        lib = ctypes.CDLL(path)
        lib.disco_standin_set(*_callbacks)
        _lib = lib
        return lib


def cupy_handle() -> int:
    """cupy's own cuBLAS handle of this thread and device (what makes cupy load libcublas)."""
    load()
    key = ("cupy", threading.get_ident(), rt.get_device())
    h = _cupy_handles.get(key)
    if h is None:
        out = (ctypes.c_void_p * 1)()
        _create(out)
        h = _cupy_handles[key] = out[0]
    return h


_cupy_handles: dict = {}
