"""A stand-in for cupy 14, used only by the test suite (tests/gpu).

It provides the subset of cupy's API this project uses, so that the CUDA code paths
(disco/cuda.py's VM device, disco/ccl/nccl.py, disco/spmd.py on device arrays,
sessions with GPU workers) run on a machine without a GPU, and so that a wrong type at
the boundary fails here as it would with cupy: device arrays are their own type (not
numpy subclasses; `np.asarray` of one raises), NCCL ids are bytes, kernel launches
refuse numpy arrays. Kernels of compiler/codegen/cuda.py run as C builds of the same
tensor programs (see _kernel.py); everything runs synchronously on the CPU, and work
issued to a stream that captures a CUDA graph is recorded and replayed by the graph.

tests/gpu/conftest.py puts this package on sys.path only while tests/gpu runs, and
only where the real cupy with a GPU is not importable.
"""
from __future__ import annotations

import numpy as _np

from . import _runtime as _rt  # noqa: F401
from . import cuda, random  # noqa: F401
from ._core import (FUNCTIONS as _FUNCTIONS, UFUNCS as _UFUNCS, arange, array, asanyarray,  # noqa: F401
                    asarray, ascontiguousarray, asnumpy, copy, empty, empty_like, eye, from_dlpack,
                    full, full_like, get_array_module, identity, linspace, matmul, ndarray, ones,
                    ones_like, ufunc, zeros, zeros_like)
from ._kernel import RawKernel, RawModule  # noqa: F401

__standin__ = True
__version__ = "14.2.0-standin"

globals().update(_FUNCTIONS)
globals().update(_UFUNCS)

bool_ = _np.bool_
int8, int16, int32, int64 = _np.int8, _np.int16, _np.int32, _np.int64
uint8, uint16, uint32, uint64 = _np.uint8, _np.uint16, _np.uint32, _np.uint64
float16, float32, float64 = _np.float16, _np.float32, _np.float64
complex64, complex128 = _np.complex64, _np.complex128
intp, uintp, int_, single, double, half = _np.intp, _np.uintp, _np.int_, _np.float32, _np.float64, _np.float16
dtype, finfo, iinfo = _np.dtype, _np.finfo, _np.iinfo
result_type, can_cast, promote_types = _np.result_type, _np.can_cast, _np.promote_types
newaxis, inf, nan, pi, e = None, _np.inf, _np.nan, _np.pi, _np.e


def is_available() -> bool:
    return cuda.is_available()


def get_default_memory_pool():
    return cuda._pool


def get_default_pinned_memory_pool():
    return cuda._pinned_pool
