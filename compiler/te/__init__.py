"""compiler.te: a small compute DSL for writing tensor programs, after TVM's `te`.

An operator's legalization describes *what* each output element is; `create_prim_func`
makes the loop nest (one block per stage) that schedules and codegen work on:

    from compiler import te
    X = te.placeholder(("n", 4096), "float32", "X")
    W = te.placeholder((4096,), "float32", "W")
    n, d = X.shape
    k = te.reduce_axis(0, d, "k")                       # min, extent, name
    sq = te.compute((n,), lambda i: te.sum(X[i, k] * X[i, k], axis=k), name="sq")
    Y = te.compute((n, d), lambda i, j: X[i, j] * te.rsqrt(sq[i] / te.cast(d, "float32") + 1e-5) * W[j],
                   name="rms")
    func = te.create_prim_func([X, W, Y])               # params X, W, Y; `sq` is an intermediate

Pieces: `placeholder`, `compute`, `var`, `reduce_axis` (tensor.py); `sum/max/min/prod`
reductions, `reduce_tensor` (numpy-style axes) and `argmax/argmin` (reduce.py); math
helpers (elementwise.py); broadcasting (`broadcast_shape/index/compute`), axes and
row-major index maps for reshapes (index.py); `create_prim_func` (lower.py).

Notes: Python `==` on expressions compares structure; use `te.eq` / `te.ne` for
conditions. `te.max(a, b)` is elementwise, `te.max(e, axis=k)` reduces. Strings in
shapes are symbolic sizes merged by name within one `create_prim_func` call.
"""
from .elementwise import (abs, all, any, cast, ceil, const, cos, eq, erf, exp, exp2, floor, if_then_else,
                          log, log2, logical_not, ne, pow, round, rsqrt, select, sigmoid, sin, sqrt, tanh)
from .index import (broadcast_compute, broadcast_index, broadcast_shape, normalize_axes, normalize_axis, ravel_index,
                    reduce_shape, unravel_index)
from .lower import create_prim_func
from .reduce import argmax, argmin, identity, max, max_value, min, min_value, prod, reduce_tensor, sum
from .tensor import (Reduce, ReduceAxis, TEError, Tensor, TensorLoad, compute, placeholder, reduce_axis,
                     var)

__all__ = [
    "Tensor", "TensorLoad", "ReduceAxis", "Reduce", "TEError",
    "placeholder", "compute", "var", "reduce_axis", "create_prim_func",
    "sum", "max", "min", "prod", "argmax", "argmin", "reduce_tensor", "identity", "min_value", "max_value",
    "exp", "log", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "exp2", "log2", "sin", "cos", "floor",
    "ceil", "round", "pow", "abs", "cast", "const", "select", "if_then_else", "eq", "ne", "all", "any",
    "logical_not",
    "normalize_axis", "normalize_axes", "broadcast_shape", "broadcast_index", "ravel_index",
    "unravel_index", "reduce_shape", "broadcast_compute",
]
