"""A reference interpreter for PrimFuncs: runs the loop nest element by element in
Python, on numpy arrays. Slow (tiny shapes only) but independent of the compute
DSL and of the C backend, so tests can check both against numpy.

Semantics follow the IR documentation: blocks bind their iterators to the realize
values, skip the body when the predicate is false, and run `init` when every
reduction iterator is at the minimum of its domain. Values are Python floats/ints
(so float math is done in double); a store converts to the buffer's dtype, and a
`Cast` to a float dtype rounds through that dtype, as the C backend does.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from compiler.ir import expr as E
from compiler.ir import tir as T

NP_DTYPE = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
            "bfloat16": ml_dtypes.bfloat16, "int8": np.int8, "int16": np.int16, "int32": np.int32,
            "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
            "uint64": np.uint64, "bool": np.bool_}

_MATH = {
    "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "rsqrt": lambda x: 1.0 / math.sqrt(x),
    "tanh": math.tanh, "erf": math.erf, "pow": math.pow, "fabs": abs,
    "max": max, "min": min, "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "exp2": lambda x: 2.0 ** x, "log2": math.log2, "sin": math.sin, "cos": math.cos,
    "floor": math.floor, "ceil": math.ceil, "round": round,
}
_BIN = {
    E.Add: lambda a, b: a + b, E.Sub: lambda a, b: a - b, E.Mul: lambda a, b: a * b,
    E.Div: lambda a, b: a / b, E.FloorDiv: lambda a, b: a // b, E.FloorMod: lambda a, b: a % b,
    E.Min: min, E.Max: max, E.LT: lambda a, b: a < b, E.LE: lambda a, b: a <= b,
    E.GT: lambda a, b: a > b, E.GE: lambda a, b: a >= b, E.EQ: lambda a, b: a == b,
    E.NE: lambda a, b: a != b,
}


def _scalar(value, dtype: str):
    """A Python number of `dtype` (float values rounded through the dtype)."""
    if dtype == "bool":
        return bool(value)
    if E.is_float_dtype(dtype):
        return float(NP_DTYPE[dtype](value))
    return int(value)


class Interpreter:
    def __init__(self, func: T.PrimFunc):
        self.func = func
        self.env: dict[int, Any] = {}
        self.arrays: dict[int, np.ndarray] = {}

    def run(self, arrays: list[np.ndarray], scalars: Mapping[str, Any]) -> None:
        buffers = [p for p in self.func.params if isinstance(p, T.Buffer)]
        assert len(arrays) == len(buffers), (len(arrays), [b.name for b in buffers])
        for buf, arr in zip(buffers, arrays):
            assert arr.dtype == NP_DTYPE[buf.dtype], (buf.name, arr.dtype, buf.dtype)
            assert arr.ndim == len(buf.shape), (buf.name, arr.shape)
            for d, size in zip(buf.shape, arr.shape):
                if isinstance(d, E.Var) and id(d) not in self.env:
                    self.env[id(d)] = size
            self.arrays[id(buf)] = arr
        for p in self.func.params:
            if isinstance(p, E.Var):
                self.env[id(p)] = _scalar(scalars[p.name], p.dtype)
        for buf, arr in zip(buffers, arrays):   # compound dims are checked, not bound
            for d, size in zip(buf.shape, arr.shape):
                assert self.eval(d) == size, (buf.name, d, arr.shape)
        self.exec(self.func.body)

    # statements
    def exec(self, s: T.Stmt) -> None:
        if isinstance(s, T.SeqStmt):
            for x in s.stmts:
                self.exec(x)
        elif isinstance(s, T.For):
            lo, ext = self.eval(s.min), self.eval(s.extent)
            for v in range(lo, lo + ext):
                self.env[id(s.loop_var)] = v
                self.exec(s.body)
        elif isinstance(s, T.BlockRealize):
            self.block(s)
        elif isinstance(s, T.BufferStore):
            arr = self.arrays[id(s.buffer)]
            idx = tuple(self.eval(i) for i in s.indices)
            for i, n in zip(idx, arr.shape):
                assert 0 <= i < n, f"store out of bounds: {s.buffer.name}{idx} shape {arr.shape}"
            arr[idx] = self.eval(s.value)
        elif isinstance(s, T.Allocate):
            self.alloc(s.buffer)
            self.exec(s.body)
        elif isinstance(s, T.IfThenElse):
            if self.eval(s.condition):
                self.exec(s.then_case)
            elif s.else_case is not None:
                self.exec(s.else_case)
        elif isinstance(s, T.LetStmt):
            self.env[id(s.var)] = self.eval(s.value)
            self.exec(s.body)
        elif isinstance(s, T.Evaluate):
            self.eval(s.value)
        else:
            raise NotImplementedError(type(s).__name__)

    def alloc(self, buf: T.Buffer) -> None:
        shape = tuple(self.eval(d) for d in buf.shape)
        # NaN-filled so that reading before writing shows up in results.
        arr = np.zeros(shape, NP_DTYPE[buf.dtype])
        if E.is_float_dtype(buf.dtype):
            arr[...] = np.nan
        self.arrays[id(buf)] = arr

    def block(self, r: T.BlockRealize) -> None:
        blk = r.block
        for iv, value in zip(blk.iter_vars, r.iter_values):
            self.env[id(iv.var)] = self.eval(value)
        if not self.eval(r.predicate):
            return
        for buf in blk.alloc_buffers:
            self.alloc(buf)
        if blk.init is not None and all(self.env[id(iv.var)] == self.eval(iv.dom.min)
                                        for iv in blk.iter_vars if iv.kind == "R"):
            self.exec(blk.init)
        self.exec(blk.body)

    # expressions
    def eval(self, e: E.PrimExpr):
        if isinstance(e, E.IntImm):
            return bool(e.value) if e.dtype == "bool" else e.value
        if isinstance(e, E.FloatImm):
            return e.value
        if isinstance(e, E.Var):
            return self.env[id(e)]
        if isinstance(e, T.BufferLoad):
            arr = self.arrays[id(e.buffer)]
            idx = tuple(self.eval(i) for i in e.indices)
            for i, n in zip(idx, arr.shape):
                assert 0 <= i < n, f"load out of bounds: {e.buffer.name}{idx} shape {arr.shape}"
            v = arr[idx]
            return bool(v) if e.buffer.dtype == "bool" else float(v) if E.is_float_dtype(e.buffer.dtype) else int(v)
        if isinstance(e, E.Select):   # lazy, like the C backend's `?:`
            return self.eval(e.true_value) if self.eval(e.condition) else self.eval(e.false_value)
        if isinstance(e, E.And):
            return bool(self.eval(e.a)) and bool(self.eval(e.b))
        if isinstance(e, E.Or):
            return bool(self.eval(e.a)) or bool(self.eval(e.b))
        if isinstance(e, E.Not):
            return not self.eval(e.a)
        if isinstance(e, E.Cast):
            v = self.eval(e.value)
            return _scalar(math.trunc(v) if not E.is_float_dtype(e.dtype) and e.dtype != "bool" else v, e.dtype)
        if isinstance(e, E.Call):
            return _MATH[e.op](*[self.eval(a) for a in e.args])
        fn = _BIN.get(type(e))
        if fn is None:
            raise NotImplementedError(type(e).__name__)
        a, b = self.eval(e.a), self.eval(e.b)
        if type(e) is E.Div and not E.is_float_dtype(e.dtype):
            return a // b
        return fn(a, b)


def run_prim_func(func: T.PrimFunc, arrays: list[np.ndarray], scalars: Mapping[str, Any] | None = None) -> None:
    """Run `func` in place on `arrays` (one per buffer param, outputs included)."""
    Interpreter(func).run(arrays, scalars or {})
