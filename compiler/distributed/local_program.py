"""The per-device copy of a tensor program called by `R.call_tir` in a sharded module.

Each worker runs the program on its local slices, so the copy's buffers take the
local shapes and the loops over sharded dims cover only the local extent. That is
the same computation as the global one exactly when every sharded dim is indexed
by a plain iteration variable (the access analysis of compiler/op/sharding.call_tir_rule: spatial
dims shared by inputs and output, or a summed reduction dim whose partial sums are
all-reduced afterwards). `localize` checks that and rewrites; anything it cannot
prove safe is a ShardingError instead of wrong code:

- a sharded dim indexed by an expression (i + 1, i * 2, a constant);
- a sharded iteration variable used other than as a whole index (arithmetic,
  conditions), or indexing a dim that is not sharded the same way;
- a loop or block iterator over a sharded variable that does not start at 0 or
  whose extent is not the dim's global extent;
- the global extent itself used in arithmetic (a symbolic size anywhere but a
  loop extent, a constant size inside an expression), since it now means the local one.

A symbolic size `n` of a sharded dim is kept: the program binds it from the local
buffer at run time, so it must appear in sharded dims (same factor) only.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ..ir import arith
from ..ir import tir as T
from ..ir.errors import ShardingError
from ..ir.expr import IntImm, PrimExpr, Var
from ..ir.visitor import StmtExprMutator, post_order_visit


def localize(func: T.PrimFunc, factors: list[Optional[list[int]]], where: str) -> T.PrimFunc:
    """`func` with buffer parameter i divided by `factors[i]` (one shard count per dim;
    None or all ones: unchanged). `where` names the call, program and placements for errors."""
    bufs = [p for p in func.params if isinstance(p, T.Buffer)]
    if len(factors) != len(bufs):
        raise ShardingError(f"{where}: the program has {len(bufs)} buffer parameters but the "
                            f"call passes {len(factors)} tensors (inputs and outputs)")
    return _Localizer(func, bufs, factors, where).run()


class _Localizer(StmtExprMutator):
    def __init__(self, func, bufs, factors, where):
        self.func, self.where = func, where
        self.buf_factors: dict[T.Buffer, list[int]] = {}
        for b, f in zip(bufs, factors):
            f = list(f) if f is not None else [1] * len(b.shape)
            if len(f) != len(b.shape):
                raise ShardingError(f"{where}: buffer {b.name!r} has {len(b.shape)} dims but its "
                                    f"tensor has {len(f)}")
            self.buf_factors[b] = f
        self.size_vars: dict[Var, int] = {}       # symbolic sizes of sharded dims
        self.const_sizes: set[int] = set()        # constant global extents of sharded dims
        self.iter_factor: dict[Var, int] = {}     # sharded block iterators / loop vars
        self.global_extent: dict[Var, PrimExpr] = {}
        self.new_bufs: dict[T.Buffer, T.Buffer] = {}

    def fail(self, what: str) -> None:
        raise ShardingError(f"{self.where}: cannot run the tensor program on local shards: {what}")

    # analysis ---------------------------------------------------------------------------

    def run(self) -> T.PrimFunc:
        if all(f == 1 for fs in self.buf_factors.values() for f in fs):
            return self.func
        self._plan_sizes()
        self._plan_iterators()
        for b, fs in self.buf_factors.items():
            shape = tuple(self._local_dim(b, d, f) for d, f in zip(b.shape, fs))
            if any(x is not y for x, y in zip(shape, b.shape)):
                self.new_bufs[b] = replace(b, shape=shape)
        local = self.visit_prim_func(self.func)        # also checks every use
        if not self.new_bufs:
            return self.func    # only symbolic sizes split: the program binds them locally
        return _Fresh().visit_prim_func(local)

    def _plan_sizes(self) -> None:
        for b, fs in self.buf_factors.items():
            for i, (d, f) in enumerate(zip(b.shape, fs)):
                if f == 1:
                    continue
                if isinstance(d, Var):
                    if self.size_vars.get(d, f) != f:
                        self.fail(f"size {d.name!r} is split {self.size_vars[d]} ways and {f} ways")
                    self.size_vars[d] = f
                elif arith.as_int(d) is not None:
                    if arith.as_int(d) % f:
                        self.fail(f"dim {i} of buffer {b.name!r} is {arith.as_int(d)}, not "
                                  f"divisible by {f}")
                    self.const_sizes.add(arith.as_int(d))
                else:
                    self.fail(f"dim {i} of buffer {b.name!r} has extent {d}, an expression")
        for b, fs in self.buf_factors.items():
            for i, (d, f) in enumerate(zip(b.shape, fs)):
                if f == 1 and any(v in self.size_vars for v in arith.free_vars(d)):
                    self.fail(f"size {arith.free_vars(d)[0].name!r} of a sharded dim also sizes "
                              f"the unsharded dim {i} of buffer {b.name!r}")
        for p in self.func.params:
            if isinstance(p, Var) and p in self.size_vars:
                self.fail(f"the size {p.name!r} of a sharded dim is a scalar parameter")

    def _plan_iterators(self) -> None:
        accesses: list = []
        realizes: list = []
        post_order_visit(self.func.body, lambda n: accesses.append(n) if isinstance(
            n, (T.BufferLoad, T.BufferStore)) else realizes.append(n)
            if isinstance(n, T.BlockRealize) else None)
        for a in accesses:
            fs = self.buf_factors.get(a.buffer)
            if fs is None:
                continue
            for i, (idx, f) in enumerate(zip(a.indices, fs)):
                if f == 1:
                    continue
                if not isinstance(idx, Var):
                    self.fail(f"sharded dim {i} of buffer {a.buffer.name!r} is indexed by "
                              f"{idx}, not by a plain iteration variable")
                self._mark(idx, f, a.buffer.shape[i], a.buffer.name, i)
        # a sharded block iterator shards the loop variable bound to it
        for r in realizes:
            for iv, value in zip(r.block.iter_vars, r.iter_values):
                if iv.var in self.iter_factor:
                    if not isinstance(value, Var):
                        self.fail(f"block {r.block.name!r} binds the sharded iterator "
                                  f"{iv.var.name!r} to {value}, not to a loop variable")
                    self._mark(value, self.iter_factor[iv.var], self.global_extent[iv.var],
                               f"block {r.block.name!r}", None)

    def _mark(self, v: Var, f: int, extent: PrimExpr, owner: str, dim) -> None:
        if self.iter_factor.get(v, f) != f:
            self.fail(f"iteration variable {v.name!r} indexes dims split {self.iter_factor[v]} "
                      f"and {f} ways")
        if v in self.global_extent and not arith.prove_equal(self.global_extent[v], extent):
            self.fail(f"iteration variable {v.name!r} indexes sharded dims of extents "
                      f"{self.global_extent[v]} and {extent}")
        self.iter_factor[v] = f
        self.global_extent[v] = extent

    def _local_dim(self, b: T.Buffer, d: PrimExpr, f: int) -> PrimExpr:
        if f == 1 or isinstance(d, Var):
            return d            # a symbolic size is bound from the local buffer
        return IntImm(arith.as_int(d) // f, getattr(d, "dtype", "int64"))

    def _local_extent(self, v: Var, lo: PrimExpr, extent: PrimExpr, what: str) -> PrimExpr:
        if arith.as_int(lo) != 0:
            self.fail(f"{what} over the sharded variable {v.name!r} starts at {lo}, not 0")
        if not arith.prove_equal(extent, self.global_extent[v]):
            self.fail(f"{what} over the sharded variable {v.name!r} has extent {extent}, not the "
                      f"dim's global extent {self.global_extent[v]}")
        if isinstance(extent, Var):
            return extent
        return IntImm(arith.as_int(extent) // self.iter_factor[v], getattr(extent, "dtype", "int64"))

    # rewrite ----------------------------------------------------------------------------

    def visit_buffer(self, buf: T.Buffer) -> T.Buffer:
        return self.new_bufs.get(buf, buf)

    def _indices(self, buf: T.Buffer, indices: tuple) -> tuple:
        fs = self.buf_factors.get(buf)
        out = []
        for i, idx in enumerate(indices):
            f = fs[i] if fs is not None else 1
            if isinstance(idx, Var) and idx in self.iter_factor:
                if f != self.iter_factor[idx]:
                    self.fail(f"the sharded variable {idx.name!r} indexes dim {i} of buffer "
                              f"{buf.name!r}, which is split {f} ways, not {self.iter_factor[idx]}")
                out.append(idx)
            else:
                out.append(self.visit_prim_expr(idx))
        return tuple(out)

    def visit_buffer_load(self, e: T.BufferLoad) -> T.BufferLoad:
        return T.BufferLoad(self.visit_buffer(e.buffer), self._indices(e.buffer, e.indices))

    def visit_buffer_store(self, s: T.BufferStore) -> T.BufferStore:
        return T.BufferStore(self.visit_buffer(s.buffer), self.visit_prim_expr(s.value),
                             self._indices(s.buffer, s.indices))

    def visit_var(self, v: Var) -> PrimExpr:
        if v in self.iter_factor:
            self.fail(f"the sharded iteration variable {v.name!r} is used in arithmetic or a "
                      "condition (its local value differs from the global index)")
        if v in self.size_vars:
            self.fail(f"the size {v.name!r} of a sharded dim is used in arithmetic (it is the "
                      "local size on each worker)")
        return v

    def visit_int_imm(self, e: IntImm) -> PrimExpr:
        if e.value in self.const_sizes:
            self.fail(f"the extent {e.value} of a sharded dim appears in an expression "
                      "(it would keep the global value)")
        return e

    def _extent(self, v: Var, lo: PrimExpr, extent: PrimExpr, what: str) -> tuple:
        if v in self.iter_factor:
            return lo, self._local_extent(v, lo, extent, what)
        return self._plain_extent(lo), self._plain_extent(extent)

    def _plain_extent(self, e: PrimExpr) -> PrimExpr:
        if isinstance(e, Var) and e in self.size_vars:
            return e            # an unsharded loop over a size that is now local
        if isinstance(e, IntImm):
            return e
        return self.visit_prim_expr(e)

    def visit_for(self, s: T.For) -> T.Stmt:
        lo, extent = self._extent(s.loop_var, s.min, s.extent, f"loop {s.loop_var.name!r}")
        body = self.visit_stmt(s.body)
        return replace(s, min=lo, extent=extent, body=body)

    def visit_block_realize(self, s: T.BlockRealize) -> T.Stmt:
        values = []
        for iv, v in zip(s.block.iter_vars, s.iter_values):
            if isinstance(v, Var) and v in self.iter_factor and \
                    self.iter_factor.get(iv.var) != self.iter_factor[v]:
                self.fail(f"block {s.block.name!r} binds its iterator {iv.var.name!r}, which "
                          f"indexes no sharded dim, to the sharded loop {v.name!r}")
            values.append(v if isinstance(v, Var) and v in self.iter_factor
                          else self.visit_prim_expr(v))
        b = s.block
        iter_vars = []
        for iv in b.iter_vars:
            lo, extent = self._extent(iv.var, iv.dom.min, iv.dom.extent,
                                      f"block {b.name!r} iterator")
            iter_vars.append(replace(iv, dom=T.Range(lo, extent)))
        block = replace(b, iter_vars=tuple(iter_vars), body=self.visit_stmt(b.body),
                        init=None if b.init is None else self.visit_stmt(b.init),
                        alloc_buffers=b.alloc_buffers)
        return replace(s, iter_values=tuple(values), predicate=self.visit_prim_expr(s.predicate),
                       block=block)


class _Fresh(StmtExprMutator):
    """A copy with new vars and buffers throughout (they compare by identity, so the
    local copy must not share them with the global program it came from)."""

    def __init__(self):
        self.vars: dict[Var, Var] = {}
        self.bufs: dict[T.Buffer, T.Buffer] = {}

    def visit_var(self, v: Var) -> Var:
        if v not in self.vars:
            self.vars[v] = Var(v.name, v.dtype)
        return self.vars[v]

    def visit_buffer(self, buf: T.Buffer) -> T.Buffer:
        if buf not in self.bufs:
            self.bufs[buf] = replace(buf, shape=tuple(self.visit_prim_expr(d) for d in buf.shape))
        return self.bufs[buf]
