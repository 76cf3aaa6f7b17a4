"""Tensor programs for the CUDA backend's tests (CPU-side codegen checks and GPU runs)
and the GPU benchmark, written with compiler.te, each with a numpy reference.

Every maker returns (PrimFunc, reference) where reference(*inputs) -> expected output
(numpy, computed in float64 then cast). Sizes are parameters so that CPU tests can
use tiny shapes (the reference interpreter is slow) and GPU tests real ones.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from compiler import te

NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _f32(x):
    return te.cast(x, "float32")


def softmax(m=4096, dtype="float32"):
    X = te.placeholder(("n", m), dtype, "X")
    n, mm = X.shape
    k = te.reduce_axis(0, mm, "k")
    mx = te.compute((n,), lambda i: te.max(_f32(X[i, k]), axis=k), name="mx")
    e = te.compute((n, mm), lambda i, j: te.exp(_f32(X[i, j]) - mx[i]), name="e")
    k2 = te.reduce_axis(0, mm, "k2")
    s = te.compute((n,), lambda i: te.sum(e[i, k2], axis=k2), name="s")
    Y = te.compute((n, mm), lambda i, j: te.cast(e[i, j] / s[i], dtype), name="Y")

    def ref(x):
        x = x.astype(np.float64)
        z = np.exp(x - x.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(NP[dtype])
    return te.create_prim_func([X, Y], name="softmax"), ref


def rms_norm(m=4096, dtype="float32", eps=1e-5):
    X = te.placeholder(("n", m), dtype, "X")
    W = te.placeholder((m,), dtype, "W")
    n, d = X.shape
    k = te.reduce_axis(0, d, "k")
    sq = te.compute((n,), lambda i: te.sum(_f32(X[i, k]) * _f32(X[i, k]), axis=k), name="sq")
    Y = te.compute((n, d), lambda i, j: te.cast(_f32(X[i, j]) * te.rsqrt(sq[i] / float(m) + eps)
                                                * _f32(W[j]), dtype), name="Y")

    def ref(x, w):
        x64 = x.astype(np.float64)
        r = 1.0 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps)
        return (x64 * r * w.astype(np.float64)).astype(NP[dtype])
    return te.create_prim_func([X, W, Y], name="rms_norm"), ref


def add_rms_norm(m=4096, dtype="float32", eps=1e-5):
    """(residual + x) then rms_norm: the sum is an intermediate the row kernel keeps in
    shared memory."""
    X = te.placeholder(("n", m), dtype, "X")
    R = te.placeholder(("n", m), dtype, "R")
    W = te.placeholder((m,), dtype, "W")
    n, d = X.shape
    h = te.compute((n, d), lambda i, j: _f32(X[i, j]) + _f32(R[i, j]), name="h")
    k = te.reduce_axis(0, d, "k")
    sq = te.compute((n,), lambda i: te.sum(h[i, k] * h[i, k], axis=k), name="sq")
    Y = te.compute((n, d), lambda i, j: te.cast(h[i, j] * te.rsqrt(sq[i] / float(m) + eps)
                                                * _f32(W[j]), dtype), name="Y")

    def ref(x, r, w):
        hh = x.astype(np.float64) + r.astype(np.float64)
        s = 1.0 / np.sqrt((hh * hh).mean(axis=1, keepdims=True) + eps)
        return (hh * s * w.astype(np.float64)).astype(NP[dtype])
    return te.create_prim_func([X, R, W, Y], name="add_rms_norm"), ref


def layer_norm(m=4096, dtype="float32", eps=1e-5):
    X = te.placeholder(("n", m), dtype, "X")
    G = te.placeholder((m,), dtype, "G")
    B = te.placeholder((m,), dtype, "B")
    n, d = X.shape
    k = te.reduce_axis(0, d, "k")
    mean = te.compute((n,), lambda i: te.sum(_f32(X[i, k]), axis=k), name="mean")
    k2 = te.reduce_axis(0, d, "k2")
    var = te.compute((n,), lambda i: te.sum((_f32(X[i, k2]) - mean[i] / float(m))
                                            * (_f32(X[i, k2]) - mean[i] / float(m)), axis=k2), name="var")
    Y = te.compute((n, d), lambda i, j: te.cast((_f32(X[i, j]) - mean[i] / float(m))
                                                * te.rsqrt(var[i] / float(m) + eps) * _f32(G[j])
                                                + _f32(B[j]), dtype), name="Y")

    def ref(x, g, b):
        x64 = x.astype(np.float64)
        mu = x64.mean(axis=1, keepdims=True)
        v = ((x64 - mu) ** 2).mean(axis=1, keepdims=True)
        return ((x64 - mu) / np.sqrt(v + eps) * g.astype(np.float64) + b.astype(np.float64)).astype(NP[dtype])
    return te.create_prim_func([X, G, B, Y], name="layer_norm"), ref


def silu_mul(m=4096, dtype="float32"):
    A = te.placeholder(("n", m), dtype, "A")
    B = te.placeholder(("n", m), dtype, "B")
    Y = te.compute(A.shape, lambda i, j: te.cast(_f32(A[i, j]) * te.sigmoid(_f32(A[i, j])) * _f32(B[i, j]),
                                                 dtype), name="Y")

    def ref(a, b):
        a64 = a.astype(np.float64)
        return (a64 / (1 + np.exp(-a64)) * b.astype(np.float64)).astype(NP[dtype])
    return te.create_prim_func([A, B, Y], name="silu_mul"), ref


def rotary(m=128, dtype="float32"):
    """Rotate-half rotary embedding of rows of width m (head dim) with cos/sin tables."""
    X = te.placeholder(("n", m), dtype, "X")
    C = te.placeholder(("n", m), "float32", "C")
    S = te.placeholder(("n", m), "float32", "S")
    half = m // 2
    Y = te.compute(X.shape, lambda i, j: te.cast(
        _f32(X[i, j]) * C[i, j] + te.select(j < half, -_f32(X[i, te.min(j + half, m - 1)]),
                                            _f32(X[i, te.max(j - half, 0)])) * S[i, j], dtype), name="Y")

    def ref(x, c, s):
        x64 = x.astype(np.float64)
        rot = np.concatenate([-x64[:, half:], x64[:, :half]], axis=1)
        return (x64 * c + rot * s).astype(NP[dtype])
    return te.create_prim_func([X, C, S, Y], name="rotary"), ref


def row_sum(m=4096, dtype="float32"):
    X = te.placeholder(("n", m), dtype, "X")
    n, d = X.shape
    k = te.reduce_axis(0, d, "k")
    Y = te.compute((n,), lambda i: te.sum(_f32(X[i, k]), axis=k), name="Y")
    return te.create_prim_func([X, Y], name="row_sum"), \
        lambda x: x.astype(np.float64).sum(axis=1).astype(np.float32)


def col_sum(m=64, dtype="float32"):
    """A reduction over the rows (axis 0): no row kernel; one thread per column."""
    X = te.placeholder(("n", m), dtype, "X")
    n, d = X.shape
    k = te.reduce_axis(0, n, "k")
    Y = te.compute((d,), lambda j: te.sum(_f32(X[k, j]), axis=k), name="Y")
    return te.create_prim_func([X, Y], name="col_sum"), \
        lambda x: x.astype(np.float64).sum(axis=0).astype(np.float32)


def total_sum(dtype="float32"):
    """A full reduction to one value: one thread block."""
    X = te.placeholder(("n",), dtype, "X")
    k = te.reduce_axis(0, X.shape[0], "k")
    Y = te.compute((1,), lambda i: te.sum(_f32(X[k]), axis=k), name="Y")
    return te.create_prim_func([X, Y], name="total_sum"), \
        lambda x: np.array([x.astype(np.float64).sum()], np.float32)


def inputs_for(name: str, n: int, m: int, dtype: str, seed: int = 0) -> list[np.ndarray]:
    """Random inputs for maker `name` with n rows of width m."""
    rng = np.random.default_rng(seed)
    t = NP[dtype]

    def mat(scale=1.0):
        return (rng.standard_normal((n, m)) * scale).astype(t)

    if name == "softmax":
        return [mat(3.0)]
    if name == "rms_norm":
        return [mat(), (rng.standard_normal(m) + 1).astype(t)]
    if name == "add_rms_norm":
        return [mat(), mat(), (rng.standard_normal(m) + 1).astype(t)]
    if name == "layer_norm":
        return [mat(2.0) + t(1), (rng.standard_normal(m)).astype(t), (rng.standard_normal(m)).astype(t)]
    if name == "silu_mul":
        return [mat(), mat()]
    if name == "rotary":
        ang = rng.uniform(0, 6.3, (n, m))
        return [mat(), np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)]
    if name in ("row_sum", "col_sum"):
        return [mat()]
    if name == "total_sum":
        return [rng.standard_normal(n * m).astype(t)]
    raise KeyError(name)


MAKERS = {"softmax": softmax, "rms_norm": rms_norm, "add_rms_norm": add_rms_norm,
          "layer_norm": layer_norm, "silu_mul": silu_mul, "rotary": rotary, "row_sum": row_sum,
          "col_sum": col_sum, "total_sum": lambda m=0, dtype="float32": total_sum(dtype)}
