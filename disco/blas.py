"""BLAS-backed runtime functions that DispatchLibrary calls through `call_dps_packed`.

    disco.blas.matmul(a, b, out)     out[...] = a @ b   (numpy.matmul, i.e. the system BLAS)
    disco.blas.matmul_nt(a, b, out)  out[...] = a @ b.T (b 2-D, read transposed in place)

Destination-passing: the VM allocates `out` and passes it last. Nothing is copied:
numpy writes the product straight into `out` (which must be C-contiguous, like every
VM tensor) and reads the operands in place. Where the output dtype differs from the
operands' (`out_dtype`), or the operands are float16 (numpy has no half-precision
BLAS and would accumulate in float16), the product is computed in the wider of the
two float types and cast into `out`, as the legalized kernel does.

The VM imports this module when it resolves a name starting with "disco.blas.", so
users need not import it.
"""
from __future__ import annotations

import numpy as np

from .errors import DiscoError
from .registry import register_func

_FLOATS = (np.dtype("float16"), np.dtype("float32"), np.dtype("float64"))
_F32 = np.dtype("float32")


def _check(name: str, a, b, out) -> None:
    for what, x in (("a", a), ("b", b), ("out", out)):
        if not isinstance(x, np.ndarray):
            raise DiscoError(f"disco.blas.{name}: {what} must be a numpy array, "
                             f"got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise DiscoError(f"disco.blas.{name}: {what} has dtype {x.dtype}; expected float16, "
                             "float32 or float64")
    if not out.flags.c_contiguous:
        raise DiscoError(f"disco.blas.{name}: out (shape {out.shape}) must be C-contiguous")


@register_func("disco.blas.matmul")
def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b with numpy's broadcasting rules; `out` has the result's shape."""
    _check("matmul", a, b, out)
    _matmul(a, b, out)


@register_func("disco.blas.matmul_nt")
def matmul_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b.T for a 2-D `b` (a linear layer's (out, in) weight): the BLAS reads the
    transposed view, nothing is copied."""
    if type(a) is type(b) is type(out) is np.ndarray and a.dtype == b.dtype == out.dtype == _F32 \
            and b.ndim == 2 and out.flags.c_contiguous:
        np.matmul(a, b.T, out=out)      # the common case, checked in one line (decode calls it often)
        return
    _check("matmul_nt", a, b, out)
    if b.ndim != 2:
        raise DiscoError(f"disco.blas.matmul_nt: b must be 2-D (out, in), got shape {b.shape}")
    _matmul(a, b.T, out)


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    if a.dtype == b.dtype == out.dtype and a.dtype != np.float16:
        np.matmul(a, b, out=out)
        return
    acc = np.result_type(a.dtype, b.dtype, out.dtype, np.float32)
    if acc == out.dtype:
        np.matmul(a, b, out=out, dtype=acc)
    else:   # float16 output: accumulate in float32, round once
        np.copyto(out, np.matmul(a, b, dtype=acc), casting="same_kind")
