"""Weight formats of the CPU kernels (disco.cpu_kernels): how a linear layer's weight
W[n, k] (PyTorch's and GGUF's (out, in) layout) is stored.

    float32, float16, bfloat16   an (n, k) array of that dtype
    q8_0, q4_0, q4_1             an (n, k // 32 * block_bytes) uint8 array: each row its
                                 GGUF blocks of 32 weights, byte for byte as llama.cpp
                                 writes them, so a GGUF tensor's data is used as it is

    q8_0  34 bytes: fp16 d, int8 q[32]              w = q * d
    q4_0  18 bytes: fp16 d, 16 bytes of nibbles     w = (q - 8) * d
    q4_1  20 bytes: fp16 d, fp16 m, 16 bytes        w = q * d + m

(nibble i < 16 is the low half of byte i, nibble i >= 16 the high half of byte i - 16).
Blocks run along k and never cross a row, so a block of rows [r0, r1) and of columns
[c0, c1) with c0, c1 multiples of 32 is itself a matrix of the same format:
`take_block` cuts tensor-parallel shards of a quantized weight exactly (every group
stays whole in one shard). `quantize` follows the gguf package's (and llama.cpp's
reference) quantizers, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import KernelError

__all__ = ["WeightFormat", "FORMATS", "weight_format", "quantize", "dequantize", "take_block",
           "storage_shape", "logical_shape"]

QBLOCK = 32   # weights per block of every block format here


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """One format: its name, its code in csrc/cpu_kernels/formats.h, `block` weights per
    block (1 for float formats) stored in `block_bytes` bytes, and the numpy dtype of
    the stored array."""
    name: str
    code: int
    block: int
    block_bytes: int
    dtype: np.dtype

    @property
    def quantized(self) -> bool:
        return self.block > 1

    def row_bytes(self, k: int) -> int:
        """Bytes of a row of k weights (KernelError when k is not whole blocks)."""
        if k % self.block:
            raise KernelError(f"{self.name} rows hold whole blocks of {self.block} weights; "
                              f"{k=} is not a multiple of {self.block} (pad the input dimension, "
                              "or keep this weight in a float format)")
        return k // self.block * self.block_bytes


FORMATS = {f.name: f for f in (
    WeightFormat("float32", 0, 1, 4, np.dtype(np.float32)),
    WeightFormat("float16", 1, 1, 2, np.dtype(np.float16)),
    WeightFormat("bfloat16", 2, 1, 2, np.dtype(ml_dtypes.bfloat16)),
    WeightFormat("q8_0", 3, QBLOCK, 34, np.dtype(np.uint8)),
    WeightFormat("q4_0", 4, QBLOCK, 18, np.dtype(np.uint8)),
    WeightFormat("q4_1", 5, QBLOCK, 20, np.dtype(np.uint8)),
)}


def weight_format(fmt: str | WeightFormat) -> WeightFormat:
    """The format named `fmt` (case-insensitive; "f32", "f16", "bf16" accepted)."""
    if isinstance(fmt, WeightFormat):
        return fmt
    name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(str(fmt).lower(), str(fmt).lower())
    if name not in FORMATS:
        raise KernelError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def storage_shape(shape: tuple[int, ...], fmt: str | WeightFormat) -> tuple[int, ...]:
    """Shape of the stored array of a weight of logical shape (..., k)."""
    f = weight_format(fmt)
    *lead, k = shape
    return (*lead, f.row_bytes(k) // f.dtype.itemsize)


def logical_shape(shape: tuple[int, ...], fmt: str | WeightFormat) -> tuple[int, ...]:
    """Logical shape (..., k) of a stored array of shape `shape`."""
    f = weight_format(fmt)
    *lead, b = shape
    if f.quantized and b % f.block_bytes:
        raise KernelError(f"a {f.name} row is whole blocks of {f.block_bytes} bytes; got {b} bytes")
    return (*lead, b // f.block_bytes * f.block if f.quantized else b)


def quantize(w: np.ndarray, fmt: str | WeightFormat) -> np.ndarray:
    """`w` (..., k), any float dtype, stored in `fmt`: a cast for float formats; for block
    formats the uint8 array (..., k // 32 * block_bytes) gguf.quants.quantize gives."""
    f = weight_format(fmt)
    w = np.asarray(w)
    if not f.quantized:
        return np.ascontiguousarray(w.astype(f.dtype))
    *lead, k = w.shape
    f.row_bytes(k)     # raises unless whole blocks
    blocks = w.astype(np.float32).reshape(-1, QBLOCK)
    out = _QUANTIZE[f.name](blocks)
    return out.reshape(*lead, f.row_bytes(k))


def _scale_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(blocks, 32) values 0..15 -> (blocks, 16) bytes: weight i low, weight i + 16 high."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _quantize_q8_0(b: np.ndarray) -> np.ndarray:
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    v = b * _inverse(d)
    a = np.abs(v)                          # roundf: halves away from zero
    r = np.floor(a)
    r += (a - r) >= np.float32(0.5)
    q = (np.sign(v) * r).astype(np.int8).view(np.uint8)
    return np.concatenate([_scale_bytes(d), q], axis=1)


def _quantize_q4_0(b: np.ndarray) -> np.ndarray:
    i = np.abs(b).argmax(axis=1)[:, None]
    d = np.take_along_axis(b, i, axis=1) / np.float32(-8)   # the largest magnitude maps to q = 0
    q = np.trunc(b * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_scale_bytes(d), _pack_nibbles(q)], axis=1)


def _quantize_q4_1(b: np.ndarray) -> np.ndarray:
    lo = b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - lo) / np.float32(15)
    q = np.trunc((b - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_scale_bytes(d), _scale_bytes(lo), _pack_nibbles(q)], axis=1)


_QUANTIZE = {"q8_0": _quantize_q8_0, "q4_0": _quantize_q4_0, "q4_1": _quantize_q4_1}


def dequantize(q: np.ndarray, fmt: str | WeightFormat) -> np.ndarray:
    """The float32 weights (..., k) a stored array of format `fmt` holds (numpy; for
    checks and for the layers the kernels do not serve)."""
    f = weight_format(fmt)
    q = np.asarray(q)
    if not f.quantized:
        return q.astype(np.float32)
    shape = logical_shape(q.shape, f)
    b = np.ascontiguousarray(q).reshape(-1, f.block_bytes)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    if f.name == "q8_0":
        w = b[:, 2:].copy().view(np.int8).astype(np.float32) * d
    else:
        qs = b[:, -16:]
        nib = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=1).astype(np.float32)
        if f.name == "q4_0":
            w = (nib - np.float32(8)) * d
        else:
            w = nib * d + b[:, 2:4].copy().view(np.float16).astype(np.float32)
    return w.reshape(shape)


def take_block(q: np.ndarray, fmt: str | WeightFormat, rows: tuple[int, int] | None = None,
               cols: tuple[int, int] | None = None) -> np.ndarray:
    """Rows [r0, r1) and logical columns [c0, c1) of a stored 2-D weight, in the same
    format: a view (rows only, or float formats) or a contiguous copy. Column bounds of a
    block format must be multiples of 32, so no block is split (KernelError otherwise)."""
    f = weight_format(fmt)
    if q.ndim != 2:
        raise KernelError(f"take_block: expected a 2-D stored weight, got shape {q.shape}")
    n, k = logical_shape(q.shape, f)
    r0, r1 = rows if rows is not None else (0, n)
    c0, c1 = cols if cols is not None else (0, k)
    if not (0 <= r0 <= r1 <= n and 0 <= c0 <= c1 <= k):
        raise KernelError(f"take_block: rows {(r0, r1)} and cols {(c0, c1)} must lie in the "
                          f"weight's logical shape {(n, k)}")
    if c0 % f.block or c1 % f.block:
        raise KernelError(f"take_block: a {f.name} weight splits only at block boundaries; "
                          f"cols {(c0, c1)} are not multiples of {f.block} (choose a shard "
                          f"count that divides k // {f.block} = {k // f.block})")
    out = q[r0:r1]
    if (c0, c1) != (0, k):
        per = f.block_bytes // f.dtype.itemsize if f.quantized else 1
        out = np.ascontiguousarray(out[:, c0 // f.block * per:c1 // f.block * per])
    return out
