"""`Schedule`: a small stateful wrapper over the pure primitives, for users.

    sch = Schedule(prim_func)
    i, j = sch.get_loops("Y")
    io, ii = sch.split(i, [None, 8])
    sch.parallel(io); sch.vectorize(ii)
    new_func = sch.func
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from ..ir import expr as E
from ..ir import tir as T
from . import primitives as P
from .loops import dedup_loop_vars


class Schedule:
    """Holds the current PrimFunc; each method applies one primitive to it. Loops are
    handles (the loop Vars) returned by `get_loops`, `split` and `fuse`."""

    def __init__(self, func: T.PrimFunc):
        if not isinstance(func, T.PrimFunc):
            raise TypeError(f"Schedule: expected a PrimFunc, got {type(func).__name__}")
        self.func = dedup_loop_vars(func)

    def get_loops(self, block_name: str) -> list[E.Var]:
        return P.get_loops(self.func, block_name)

    def split(self, loop: E.Var, factors: Sequence[P.Factor]) -> list[E.Var]:
        self.func, loops = P.split(self.func, loop, factors)
        return loops

    def fuse(self, *loops: E.Var) -> E.Var:
        self.func, fused = P.fuse(self.func, *loops)
        return fused

    def reorder(self, *loops: E.Var) -> None:
        self.func = P.reorder(self.func, *loops)

    def parallel(self, loop: E.Var) -> None:
        self.func = P.parallel(self.func, loop)

    def vectorize(self, loop: E.Var) -> None:
        self.func = P.vectorize(self.func, loop)

    def unroll(self, loop: E.Var) -> None:
        self.func = P.unroll(self.func, loop)

    def bind(self, loop: E.Var, thread_tag: str) -> None:
        self.func = P.bind(self.func, loop, thread_tag)

    def annotate(self, loop: E.Var, key: str, value) -> None:
        self.func = P.annotate(self.func, loop, key, value)

    def decompose_reduction(self, block_name: str, loop: E.Var) -> None:
        self.func = P.decompose_reduction(self.func, block_name, loop)

    def cache_read(self, block_name: str, buffer_index: int, scope: str,
                   consumer_blocks: Sequence[str] = ()) -> T.Buffer:
        self.func, buf = P.cache_read(self.func, block_name, buffer_index, scope, consumer_blocks)
        return buf

    def cache_write(self, block_name: str, buffer_index: int, scope: str) -> T.Buffer:
        self.func, buf = P.cache_write(self.func, block_name, buffer_index, scope)
        return buf

    def extent(self, loop: E.Var) -> E.PrimExpr:
        return P.loop_extent(self.func, loop)

    def mark_scheduled(self) -> T.PrimFunc:
        """The function with attr `scheduled`, so DefaultSchedule leaves it alone."""
        self.func = dataclasses.replace(self.func, attrs=self.func.attrs.replace(scheduled=True))
        return self.func
