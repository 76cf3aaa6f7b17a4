"""disco.cublas on the GPU against numpy: bfloat16 (held as uint16: cupy has no
bfloat16 dtype) and float16 matmuls through cublasGemmStridedBatchedEx with raw
pointers, broadcast batches, and a matmul captured into a CUDA graph (which cupy's
own cuBLAS calls refuse)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_bfloat16_matmul_through_raw_pointers():
    import cupy as cp

    from disco import cublas
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 33, 64)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((64, 40)).astype(ml_dtypes.bfloat16)
    out = cp.zeros((3, 33, 40), cp.uint16)
    cublas.matmul(cp.asarray(a.view(np.uint16)), cp.asarray(b.view(np.uint16)), out, dtype="bfloat16")
    got = cp.asnumpy(out).view(ml_dtypes.bfloat16).astype(np.float64)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=0.15)        # bf16 output rounding


def test_float16_into_float32_with_broadcast_batches():
    import cupy as cp

    from disco import cublas
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 2, 5, 16)).astype(np.float16)
    b = rng.standard_normal((4, 1, 16, 7)).astype(np.float16)
    out = cp.empty((4, 2, 5, 7), cp.float32)
    cublas.matmul(cp.asarray(a), cp.asarray(b), out)
    np.testing.assert_allclose(cp.asnumpy(out), a.astype(np.float64) @ b.astype(np.float64),
                               rtol=1e-3, atol=1e-3)


def test_matmul_is_captured_into_a_cuda_graph():
    import cupy as cp

    from disco import cublas
    rng = np.random.default_rng(2)
    a = cp.asarray(rng.standard_normal((64, 32)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((32, 48)).astype(np.float32))
    out = cp.empty((64, 48), cp.float32)
    cublas.matmul(a, b, out)                     # handle and workspace made outside the capture
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cublas.matmul(a, b, out)
        graph = stream.end_capture()
    for seed in (3, 4):
        a_new = rng.standard_normal((64, 32)).astype(np.float32)
        a.set(a_new)
        out.fill(0)
        graph.launch(stream=stream)
        stream.synchronize()
        np.testing.assert_allclose(cp.asnumpy(out), a_new @ cp.asnumpy(b), rtol=1e-4, atol=1e-4)
