"""CPU kernels for weights in 16 bits or GGUF blocks, as library calls (csrc/cpu_kernels).

    disco.cpu.matmul_nt(x, w, out)          out = x @ w.T, w float32 / float16 / bfloat16
    disco.cpu.matmul_nt_q8_0(x, w, out)     ... w the (n, k // 32 * 34) bytes of q8_0 blocks
    disco.cpu.matmul_nt_q4_0(x, w, out)     ... 18-byte blocks
    disco.cpu.matmul_nt_q4_1(x, w, out)     ... 20-byte blocks
    disco.cpu.embedding(ids, w, out)        out = w[ids] in float32, w a float format
    disco.cpu.embedding_q8_0(ids, w, out)   ... rows dequantized as they are read (and _q4_0, _q4_1)
    disco.cpu.dequantize_q8_0(w, out)       out = the float32 weights (numpy; what R.dequantize
                                            legalizes to where no kernel reads w in place)

Destination-passing like `disco.blas.matmul_nt` (the same orientation: w is a linear
layer's (out, in) weight, read in place): x is float32 (..., k), out float32 (..., n),
both C-contiguous. The format of a block weight is in the function's name, since its
bytes do not tell it (disco/weight_formats.py describes the layouts). Weights are
converted to float32 in registers and products accumulated in float32; nothing is
materialised. Threads: OpenMP over output columns, `OMP_NUM_THREADS` by default (a
ProcessSession sets it to the host's cores shared among the workers); `num_threads`
overrides it per call. The GIL is released while a kernel runs. `isa` picks a compiled
variant ("amx", "avx512", "avx2", "generic"; default: the best this CPU runs, or the
environment variable DISCO_CPU_ISA); `isas()` lists them. "amx" (Intel AMX tiles, Sapphire
Rapids and later) is "avx512" except for bfloat16 and float32 weights and more than
`amx_rows(dtype=)` rows of x: there the products run on the tile unit, x split into
bfloat16 parts that hold it exactly (`amx_x_terms()`), float32 W split the same way, the
products summed to float32's accuracy (DISCO_CPU_AMX_FLOAT32=0 leaves float32 weights to
AVX-512 and BLAS; see csrc/cpu_kernels/isa_amx.cc).

The VM imports this module when it resolves a name starting with "disco.cpu."
(disco.registry's providers), so compiled code needs no import.
"""
from __future__ import annotations

import functools

import numpy as np

from . import _native
from .errors import KernelError
from .registry import register_func
from .weight_formats import FORMATS, dequantize, weight_format

__all__ = ["matmul_nt", "embedding", "isas", "default_isa", "amx_rows", "amx_x_terms", "MATMUL_NT", "EMBEDDING"]

# Library-call name of each format (what a pass writes into R.call_dps_packed).
MATMUL_NT = {name: "disco.cpu.matmul_nt" if not f.quantized else f"disco.cpu.matmul_nt_{name}"
             for name, f in FORMATS.items()}
FROM_DTYPE = -1     # the native functions' format code for "the float format of w's dtype"
EMBEDDING = {name: "disco.cpu.embedding" if not f.quantized else f"disco.cpu.embedding_{name}"
             for name, f in FORMATS.items()}


def isas() -> list[str]:
    """The compiled variants this build and CPU run, best first."""
    return list(_native.cpu_isas())


def default_isa() -> str:
    return _native.cpu_default_isa()


def amx_rows(isa: str | None = None, dtype: str = "bfloat16") -> int:
    """Rows of x past which variant `isa` (default: the one used) multiplies weights of
    `dtype` ("bfloat16" or "float32") on AMX tiles (prefill, batched decode). -1: never."""
    return _native.cpu_amx_rows(isa or "", dtype)


def amx_x_terms() -> int:
    """The bfloat16 parts x is split into on AMX tiles: 3 holds float32 x exactly (the
    default), 1 rounds x to bfloat16 (DISCO_CPU_AMX_X_TERMS=1: faster prefill, a bfloat16
    model's numerics), 2 keeps 16 bits. 0: no AMX kernels in this build."""
    return _native.cpu_amx_x_terms()


def _code(fmt) -> int:
    """The native format code: `fmt`'s, or FROM_DTYPE (the C++ finds a float format from
    the weight's dtype and names the problem when there is none)."""
    return FROM_DTYPE if fmt is None else weight_format(fmt).code


def matmul_nt(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, fmt=None, *,
              num_threads: int = 0, isa: str | None = None) -> np.ndarray:
    """out[..., n] = x[..., k] @ W[n, k]^T with W stored in `fmt` (default: from w's dtype,
    for float formats). Allocates `out` when not given; returns it."""
    if out is None:
        n = w.shape[0]
        out = np.empty((*np.shape(x)[:-1], n), np.float32)
    _native.cpu_matmul_nt(x, w, out, _code(fmt), num_threads, isa or "")
    return out


def embedding(ids: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, fmt=None, *,
              num_threads: int = 0, isa: str | None = None) -> np.ndarray:
    """out[..., :] = W[ids[...], :] as float32, W stored in `fmt` (default: from w's dtype)."""
    ids = np.asarray(ids)
    if ids.dtype != np.int64:
        if ids.dtype.kind not in "iu":
            raise KernelError(f"embedding: ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
    ids = np.ascontiguousarray(ids)
    f = weight_format(fmt) if fmt is not None else None
    if out is None:
        k = w.shape[1] if f is None or not f.quantized else w.shape[1] // f.block_bytes * f.block
        out = np.empty((*ids.shape, k), np.float32)
    _native.cpu_embedding(ids, w, out, _code(fmt), num_threads, isa or "")
    return out


# The native function itself, the format found from w's dtype (FROM_DTYPE) in C++: a
# decode step makes hundreds of these calls, and a Python wrapper would cost as much as
# a small kernel.
register_func("disco.cpu.matmul_nt", _native.cpu_matmul_nt_fn(FROM_DTYPE))


# Rows of x up to which the kernel beats numpy's BLAS for float32 weights: the BLAS packs
# the whole weight matrix on every call, a cost that only many rows amortize. Kernel time
# over BLAS time, one thread, weights from memory, (n, k) from (768..32000, 768..2048):
# 0.4-0.7 at 16 rows, 0.7-1.0 at 32, 0.5-1.1 at 48, 0.9-1.6 at 64 (a loaded machine:
# noisy); a whole 32-sequence decode step of the ~100M Llama on 2 workers took 27% less
# worker CPU with the kernel. Past this the BLAS's blocked GEMM wins (prefill).
FLOAT32_KERNEL_ROWS = 32


_matmul_nt_float32 = _native.cpu_matmul_nt_fn(weight_format("float32").code)
# Where the default variant puts float32 weights on AMX tiles, it wins at every row count
# (results/amx_matmul.json): no BLAS then.
_FLOAT32_ON_AMX = amx_rows(dtype="float32") >= 0


@register_func("disco.cpu.matmul_nt_auto")
def matmul_nt_auto(x, w, out) -> None:
    """out = x @ w.T for float32 x and w: this module's kernel for decode shapes (at most
    FLOAT32_KERNEL_ROWS rows of x) and on AMX, numpy's BLAS for more (prefill)."""
    if w.dtype == np.float32 and (_FLOAT32_ON_AMX or x.size <= FLOAT32_KERNEL_ROWS * x.shape[-1]):
        _matmul_nt_float32(x, w, out)
    else:
        np.matmul(x, w.T, out=out)


@register_func("disco.cpu.embedding")
def _embedding_float(ids, w, out) -> None:
    embedding(ids, w, out)


def _dequantize_into(w: np.ndarray, out: np.ndarray, fmt: str) -> None:
    out[...] = dequantize(w, fmt)


for _name, _f in FORMATS.items():
    if _f.quantized:
        register_func(MATMUL_NT[_name], _native.cpu_matmul_nt_fn(_f.code))   # as disco.cpu.matmul_nt
        register_func(EMBEDDING[_name], functools.partial(embedding, fmt=_name))
        register_func(f"disco.cpu.dequantize_{_name}", functools.partial(_dequantize_into, fmt=_name))

