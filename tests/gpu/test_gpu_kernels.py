"""Generated CUDA kernels on the GPU against numpy: fused row kernels (softmax, rms_norm,
add+rms_norm, layer_norm), elementwise (silu*mul, rotary), reductions, in float32,
float16 and bfloat16 (bf16 arrays travel as uint16 bit patterns), launched directly
through disco.cuda (NVRTC), without the VM."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import te_kernels as K
from compiler.codegen.cuda import generate_cuda
from compiler.transform.gpu_schedule import schedule_gpu

pytestmark = pytest.mark.gpu

TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
NAMES = ["softmax", "rms_norm", "add_rms_norm", "layer_norm", "silu_mul", "rotary", "row_sum",
         "col_sum", "total_sum"]


def _to_gpu(cp, a):
    if a.dtype == ml_dtypes.bfloat16:
        return cp.asarray(a.view(np.uint16))
    return cp.asarray(a)


def _from_gpu(cp, a, dtype):
    h = cp.asnumpy(a)
    return h.view(ml_dtypes.bfloat16) if dtype == ml_dtypes.bfloat16 else h


@pytest.fixture(scope="module")
def compiled():
    """Every kernel of the parametrization, compiled by NVRTC in one module."""
    import disco.cuda as dc
    funcs, refs = {}, {}
    for name in NAMES:
        for dtype in ("float32", "float16", "bfloat16"):
            if name in ("row_sum", "col_sum", "total_sum") and dtype != "float32":
                continue
            m = {"rotary": 128, "col_sum": 64}.get(name, 4096)
            func, ref = K.MAKERS[name](m=m, dtype=dtype)
            funcs[f"{name}_{dtype}"] = schedule_gpu(func)
            refs[f"{name}_{dtype}"] = (ref, m)
    mod = generate_cuda(funcs)
    raw = dc.compile_module(mod.source)
    fns = {key: dc.CudaFunction(raw, mod.functions[mod.kernel_names[key]].to_json()) for key in funcs}
    return fns, refs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [1, 5, 1024])
def test_kernel_matches_numpy(compiled, name, dtype, n):
    import cupy as cp
    fns, refs = compiled
    key = f"{name}_{dtype}"
    if key not in fns:
        pytest.skip("reductions are tested in float32")
    ref, m = refs[key]
    inputs = K.inputs_for(name, n, m, dtype)
    want = ref(*inputs)
    args = [_to_gpu(cp, a) for a in inputs]
    out = cp.full(want.shape, 0x7fff if want.dtype == ml_dtypes.bfloat16 else np.nan,
                  dtype=np.uint16 if want.dtype == ml_dtypes.bfloat16 else want.dtype)
    fns[key](*args, out)
    got = _from_gpu(cp, out, want.dtype)
    tol = TOL[dtype] if name not in ("row_sum", "total_sum", "col_sum") else 1e-4 * max(m, n) ** 0.5
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=TOL[dtype], atol=tol)


def test_kernel_cache_is_by_content():
    import disco.cuda as dc
    func, _ = K.silu_mul(m=64)
    src = generate_cuda({"a": schedule_gpu(func)}).source
    assert dc.compile_module(src) is dc.compile_module(src)
    assert dc.compile_module(src) is not dc.compile_module(src + "\n// other\n")
