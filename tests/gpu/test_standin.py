"""The stand-in cupy (tests/gpu/standin) behaves like cupy 14 where the project relies on it.

The expectations are cupy's documented behaviour (and its v14.2.0 source): tests that
do not say `standin_only` run on the real cupy too where a GPU is present, which
checks the expectations themselves. `standin_only` tests check what only the stand-in
does (C builds of kernels, pointer checks, several devices and NCCL ranks in one
process)."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def cp():
    import cupy
    return cupy


@pytest.fixture
def standin_only(cp):
    if not getattr(cp, "__standin__", False):
        pytest.skip("checks the stand-in cupy itself")


# -- arrays ----------------------------------------------------------------------------------

def test_device_arrays_are_not_numpy_arrays(cp):
    x = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    assert not isinstance(x, np.ndarray) and type(x).__module__.startswith("cupy")
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.testing.assert_allclose(x, np.zeros((2, 3)))
    host = x.get()
    assert type(host) is np.ndarray and host.tolist() == [[0, 1, 2], [3, 4, 5]]
    host[0, 0] = 7                                  # a copy, not the device memory
    assert cp.asnumpy(x)[0, 0] == 0
    src = np.ones(3, np.float32)
    d = cp.asarray(src)
    src[0] = 5                                      # asarray copied to the device
    assert cp.asnumpy(d).tolist() == [1, 1, 1]


def test_attributes(cp):
    x = cp.zeros((4, 6), cp.float16)
    assert (x.shape, x.dtype, x.ndim, x.size, x.nbytes, x.itemsize, x.strides) == \
        ((4, 6), np.float16, 2, 24, 48, 2, (12, 2))
    assert x.flags.c_contiguous and not x.flags.f_contiguous
    assert isinstance(x.data.ptr, int) and x.data.ptr != 0
    t = x.T
    assert t.shape == (6, 4) and not t.flags.c_contiguous and t.flags.f_contiguous
    assert t.data.ptr == x.data.ptr                 # a view
    assert x[1].data.ptr == x.data.ptr + 12 and x[1:, 2:].shape == (3, 4)
    assert x[1, 2].shape == () and isinstance(x[1, 2], cp.ndarray)
    assert len(x) == 4 and [r.shape for r in x] == [(6,)] * 4
    assert cp.float32 is np.float32


def test_numpy_and_device_arrays_do_not_mix(cp):
    x = cp.ones(3, cp.float32)
    h = np.ones(3, np.float32)
    for f in (lambda: x + h, lambda: h + x, lambda: np.add(h, x), lambda: x * h,
              lambda: cp.concatenate([x, h]), lambda: np.concatenate([x, h])):
        with pytest.raises(TypeError):
            f()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[...] = h                                  # cupy refuses implicit host-to-device copies
    x[...] = 2.5                                    # scalars are fine
    x[1:] = cp.zeros(2, cp.float32)
    assert cp.asnumpy(x).tolist() == [2.5, 0, 0]
    assert (x + np.float32(1)).dtype == np.float32   # numpy scalars are scalars


def test_numpy_functions_dispatch_to_the_device(cp):
    x = cp.asarray(np.array([[1.0, 4.0], [9.0, 16.0]], np.float32))
    for y in (np.sqrt(x), np.exp(x), np.sum(x, axis=0), np.concatenate([x, x]), np.moveaxis(x, 0, 1)):
        assert isinstance(y, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(np.sqrt(x)), [[1, 2], [3, 4]])
    assert float(x.sum()) == 30.0 and x.max().item() == 16.0
    a, b = cp.split(x, 2, axis=1)
    assert a.shape == (2, 1) and cp.asnumpy(b).ravel().tolist() == [4, 16]


def test_ascontiguousarray_makes_0d_arrays_1d(cp):
    s = cp.asarray(np.float32(3))
    assert s.shape == () and cp.ascontiguousarray(s).shape == (1,)
    t = cp.arange(6).reshape(2, 3).T
    c = cp.ascontiguousarray(t)
    assert c.flags.c_contiguous and cp.asnumpy(c).tolist() == [[0, 3], [1, 4], [2, 5]]
    with pytest.raises(TypeError):
        cp.ascontiguousarray(np.zeros(3))           # cupy arrays only


def test_scalar_conversions_and_pickle(cp):
    assert int(cp.asarray(np.int64(7))) == 7 and cp.ones(1).item() == 1.0
    with pytest.raises(ValueError, match="more than one element"):
        bool(cp.ones(2))
    with pytest.raises(ValueError, match="size 1"):
        cp.ones(2).item()
    y = pickle.loads(pickle.dumps(cp.arange(3)))
    assert isinstance(y, cp.ndarray) and cp.asnumpy(y).tolist() == [0, 1, 2]


def test_dlpack_reports_a_cuda_device(cp):
    x = cp.ones(3, cp.float32)
    assert x.__dlpack_device__() == (2, 0)          # kDLCUDA
    with pytest.raises(BufferError):
        np.from_dlpack(x)                          # numpy takes CPU memory only
    assert cp.from_dlpack(x).data.ptr == x.data.ptr


def test_cuda_module(cp):
    assert cp.cuda.runtime.getDeviceCount() >= 1
    assert cp.cuda.runtime.getDevice() == 0
    assert isinstance(cp.cuda.runtime.getDeviceProperties(0)["name"], bytes)
    assert isinstance(cp.cuda.Device(0).compute_capability, str)
    major, minor = cp.cuda.nvrtc.getVersion()
    assert major >= 11
    with cp.cuda.Device(0) as dev:
        assert dev.id == 0 and cp.cuda.runtime.getDevice() == 0
    pool = cp.get_default_memory_pool()
    before = pool.used_bytes()
    keep = cp.empty(1 << 20, cp.uint8)
    assert pool.used_bytes() >= before + (1 << 20)
    del keep
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    end.record()
    end.synchronize()
    assert cp.cuda.get_elapsed_time(start, end) >= 0


def test_stream_capture_records_and_graph_replays(cp):
    x = cp.zeros(4, cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        assert cp.cuda.get_current_stream() == s
        s.begin_capture()
        x += 1                                      # captured, not run
        y = x * 2                                   # a new array, written when the graph runs
        g = s.end_capture()
    s.synchronize()
    assert cp.asnumpy(x).tolist() == [0, 0, 0, 0]
    g.launch(stream=s)
    s.synchronize()
    assert cp.asnumpy(x).tolist() == [1] * 4 and cp.asnumpy(y).tolist() == [2] * 4
    g.launch(stream=s)
    s.synchronize()
    assert cp.asnumpy(x).tolist() == [2] * 4 and cp.asnumpy(y).tolist() == [4] * 4


def test_capture_refuses_host_copies_and_cublas(cp):
    x = cp.ones((4, 4), cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            with pytest.raises(RuntimeError, match="capturing, so D2H transfers are disallowed"):
                x.get()
            with pytest.raises(RuntimeError, match="capturing, so H2D transfers are disallowed"):
                cp.asarray(np.ones(3))
            with pytest.raises(NotImplementedError, match="cuBLAS"):
                cp.matmul(x, x)
        finally:
            s.end_capture()
    with pytest.raises(RuntimeError):
        cp.cuda.Stream.null.begin_capture()        # not on the legacy stream


def test_graph_refuses_to_replay_into_memory_freed_after_capture(cp, standin_only):
    x = cp.ones(4, cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        y = x * 2                                   # the graph writes y
        g = s.end_capture()
    g.launch(stream=s)
    assert cp.asnumpy(y).tolist() == [2] * 4
    del y                                           # on a GPU the pool may hand y's memory out again
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="freed after the capture"):
        g.launch(stream=s)


# -- kernels ---------------------------------------------------------------------------------

_TINY = r'''
extern "C" __global__ void scale(float* __restrict__ x, const int64_t d0, const double d1) {
  int64_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < d0) x[i] = x[i] * (float)d1;
}
'''


def test_raw_module_checks_like_cupy(cp):
    mod = cp.RawModule(code="typedef long long int64_t;\n" + _TINY, options=("-std=c++17",))
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="CUDA_ERROR_NOT_FOUND"):
        mod.get_function("missing")
    k = mod.get_function("scale")
    with pytest.raises(TypeError, match="numpy.ndarray of shape"):
        k((1,), (32,), (np.ones(4, np.float32), np.int64(4), 2.0))       # not device memory
    with pytest.raises(TypeError):
        k([1], (32,), (cp.ones(4, cp.float32), np.int64(4), 2.0))       # grid must be a tuple
    with pytest.raises(TypeError, match="Unsupported type"):
        k((1,), (32,), (cp.ones(4, cp.float32), "4", 2.0))
    with pytest.raises(TypeError):
        cp.RawModule(code=_TINY, options=["-std=c++17"])                   # options must be a tuple


def _silu_mul(cp, n=5, m=64):
    """A generated kernel through disco.cuda, as the VM launches it."""
    import te_kernels as K
    from compiler.codegen import cuda as C
    from compiler.transform.gpu_schedule import schedule_gpu

    import disco.cuda as dc
    func, ref = K.silu_mul(m=m)
    mod = C.generate_cuda({"silu_mul": schedule_gpu(func)})
    sym = mod.kernel_names["silu_mul"]
    return dc.compile_module(mod.source), mod.functions[sym], ref, K.inputs_for("silu_mul", n, m, "float32")


def test_generated_kernel_runs(cp):
    import disco.cuda as dc
    raw, info, ref, (a, b) = _silu_mul(cp)
    out = cp.empty(a.shape, cp.float32)
    dc.CudaFunction(raw, info.to_json())(cp.asarray(a), cp.asarray(b), out)
    np.testing.assert_allclose(cp.asnumpy(out), ref(a, b), rtol=1e-5, atol=1e-6)


def test_launch_argument_types_and_buffer_bounds(cp, standin_only):
    raw, info, ref, (a, b) = _silu_mul(cp)
    k = raw.get_function(info.kernels[0].symbol)
    da, db, out = cp.asarray(a), cp.asarray(b), cp.empty(a.shape, cp.float32)
    dims = tuple(np.int64(v) for v in (*a.shape, *b.shape, *a.shape))
    k((5,), (64,), (da, db, out) + dims)
    np.testing.assert_allclose(cp.asnumpy(out), ref(a, b), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="int64_t.*int32"):
        k((5,), (64,), (da, db, out) + tuple(np.int32(v) for v in dims))     # 4 bytes read as 8
    with pytest.raises(TypeError, match="points to float, got a float16"):
        k((5,), (64,), (da.astype(cp.float16), db, out) + dims)
    with pytest.raises(TypeError, match="takes 9 parameters"):
        k((5,), (64,), (da, db, out) + dims[:-1])
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorIllegalAddress"):
        k((5,), (64,), (da, db, cp.empty((2, 64), cp.float32)) + dims)      # out too small
    host = np.empty(a.shape, np.float32)
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="not inside a live device allocation"):
        k((5,), (64,), (da, db, np.uint64(host.ctypes.data)) + dims)        # a host pointer
    with pytest.raises(cp.cuda.driver.CUDADriverError, match="CUDA_ERROR_INVALID_VALUE"):
        k((5,), (2048,), (da, db, out) + dims)                               # > 1024 threads


def test_source_without_c_build_fails_at_launch(cp, standin_only):
    mod = cp.RawModule(code=_TINY)
    mod.compile()                                   # "compiling" only parses
    x = cp.ones(4, cp.float32)
    with pytest.raises(RuntimeError, match="no C build of this CUDA source"):
        mod.get_function("scale")((1,), (4,), (x, 4, 2.0))


def test_standin_libcublas(cp, standin_only):
    """The stand-in libcublas (what disco/cublas.py finds after get_cublas_handle): a
    column-major GEMM, and capture only with the handle's own workspace."""
    import ctypes

    from cupy import _cublas
    cp.cuda.device.get_cublas_handle()
    with open("/proc/self/maps") as f:
        assert "/libcublas.so" in f.read()
    lib = _cublas.load()
    vp = ctypes.c_void_p
    h = vp()
    assert lib.cublasCreate_v2(ctypes.byref(h)) == 0
    a = cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    b = cp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    out = cp.zeros((2, 4), cp.float32)
    one, zero = ctypes.c_float(1), ctypes.c_float(0)

    def gemm():         # row-major out = a @ b as column-major out^T = b^T a^T
        return lib.cublasGemmStridedBatchedEx(
            h, 0, 0, 4, 2, 3, ctypes.byref(one), vp(b.data.ptr), 0, 4, ctypes.c_longlong(0),
            vp(a.data.ptr), 0, 3, ctypes.c_longlong(0), ctypes.byref(zero), vp(out.data.ptr), 0, 4,
            ctypes.c_longlong(0), 1, 68, -1)
    assert gemm() == 0
    np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(a) @ cp.asnumpy(b))
    s = cp.cuda.Stream(non_blocking=True)
    ws = cp.empty(1 << 20, cp.uint8)
    assert lib.cublasSetWorkspace_v2(h, vp(ws.data.ptr), ctypes.c_size_t(1 << 20)) == 0
    assert lib.cublasSetStream_v2(h, vp(s.ptr)) == 0            # puts the default workspace back
    out.fill(0)
    with s:
        s.begin_capture()
        assert gemm() == _cublas.NOT_SUPPORTED
        assert lib.cublasSetWorkspace_v2(h, vp(ws.data.ptr), ctypes.c_size_t(1 << 20)) == 0
        assert gemm() == 0
        g = s.end_capture()
    assert not cp.asnumpy(out).any()
    g.launch(stream=s)
    np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(a) @ cp.asnumpy(b))


# -- NCCL --------------------------------------------------------------------------------------

def test_nccl_unique_id_is_bytes_and_only_bytes_are_accepted(cp):
    from cupy.cuda import nccl
    uid = nccl.get_unique_id()
    assert type(uid) is bytes and len(uid) == 128
    with pytest.raises(TypeError):
        nccl.NcclCommunicator(1, tuple(uid), 0)    # what cupy < 14 returned
    with pytest.raises(ValueError, match="128"):
        nccl.NcclCommunicator(1, uid[:64], 0)
    assert (nccl.NCCL_FLOAT32, nccl.NCCL_INT64, nccl.NCCL_SUM, nccl.NCCL_MAX) == (7, 4, 0, 2)


def test_one_rank_collectives(cp):
    from cupy.cuda import nccl
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    x = cp.arange(1, 7, dtype=cp.float32)
    y = cp.empty_like(x)
    stream = cp.cuda.get_current_stream().ptr
    comm.allReduce(x.data.ptr, y.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream)
    g = cp.empty_like(x)
    comm.allGather(x.data.ptr, g.data.ptr, x.size, nccl.NCCL_FLOAT32, stream)
    comm.bcast(x.data.ptr, x.size, nccl.NCCL_FLOAT32, 0, stream)
    cp.cuda.get_current_stream().synchronize()
    assert cp.asnumpy(y).tolist() == cp.asnumpy(g).tolist() == [1, 2, 3, 4, 5, 6]
    assert (comm.size(), comm.rank_id()) == (1, 0)
    comm.destroy()


def test_nccl_refuses_host_pointers(cp, standin_only):
    from cupy.cuda import nccl
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    h = np.ones(4, np.float32)
    d = cp.empty(4, cp.float32)
    with pytest.raises(nccl.NcclError, match="INVALID_ARGUMENT"):
        comm.allReduce(h.ctypes.data, d.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(nccl.NcclError, match="INVALID_ARGUMENT"):
        comm.allReduce(d.data.ptr, d.data.ptr, 8, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)   # past the end


def test_two_ranks_in_threads_on_two_devices(cp, standin_only, monkeypatch):
    from cupy.cuda import nccl
    monkeypatch.setenv("DISCO_STANDIN_GPUS", "2")
    uid, results, errors = nccl.get_unique_id(), {}, []

    def rank(r, device):
        try:
            cp.cuda.Device(device).use()
            comm = nccl.NcclCommunicator(2, uid, r)
            x = cp.full(3, r + 1, cp.float32)
            out = cp.empty(6, cp.float32)
            comm.allReduce(x.data.ptr, x.data.ptr, 3, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
            comm.allGather(x.data.ptr, out.data.ptr, 3, nccl.NCCL_FLOAT32, 0)
            results[r] = cp.asnumpy(out).tolist()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=rank, args=(r, r)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {0: [3.0] * 6, 1: [3.0] * 6}
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorInvalidDevice"):
        cp.cuda.Device(2).use()


def test_two_ranks_on_one_device_are_refused(cp, standin_only, monkeypatch):
    from cupy.cuda import nccl
    uid, errors = nccl.get_unique_id(), []

    def rank(r):
        try:
            nccl.NcclCommunicator(2, uid, r)
        except nccl.NcclError as e:
            errors.append(e)
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 2 and all("INVALID_USAGE" in str(e) for e in errors)


def test_nccl_call_on_a_capturing_stream_is_replayed(cp):
    from cupy.cuda import nccl
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    x = cp.full(4, 2, cp.float32)
    y = cp.zeros(4, cp.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        comm.allReduce(x.data.ptr, y.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, s.ptr)
        g = s.end_capture()
    s.synchronize()
    assert cp.asnumpy(y).tolist() == [0] * 4
    g.launch(stream=s)
    s.synchronize()
    assert cp.asnumpy(y).tolist() == [2] * 4
