"""DefaultGPUSchedule: bind the loops of every tensor program to GPU blocks and threads.

Rules, per PrimFunc (programs that already bind a loop to a thread axis are left alone):

1. Row kernels. When every stage (top-level loop nest) of the program starts with the
   same "row" loops (the spatial loops of its reductions: softmax, rms_norm, layer_norm,
   sums over the last axes) and each stage reads intermediate values of its own row
   only, the stages are merged under one loop over rows bound to blockIdx.x (one
   thread block per row). Inside, each stage's remaining loops are fused and strided
   over threadIdx.x (`k = ko * T + tx`, so neighbouring threads touch neighbouring
   elements); a reduction stage becomes a cross-thread reduction (warp shuffles and
   shared memory, see compiler.codegen.cuda). Intermediates that hold one row (or one
   scalar per row) move to shared memory when their row fits (`SHARED_BUDGET`).
2. Otherwise each stage is scheduled on its own (one kernel each): its spatial loops
   are fused and split into blockIdx.x x threadIdx.x (`THREADS` per block); reduction
   loops stay serial inside each thread. A stage with only reduction loops (a full
   reduction) runs as one thread block with a cross-thread reduction.
3. Nests of another shape are left as they are; the CUDA codegen runs them in a single
   thread (slow, but correct).

Functions come back with attr `scheduled`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from ..ir import arith
from ..ir import expr as E
from ..ir import tir as T
from ..ir.module import IRModule
from ..ir.visitor import rewrite, substitute_vars, vars_in, walk
from ..schedule import primitives as P
from ..schedule.loops import dedup_loop_vars, find_block

THREADS = 256            # threads per block for elementwise stages
ITEMS = 4                # elements per thread of an elementwise stage (one each left an f16
                         # multiply at 30% of copy bandwidth on an H200, stalled on loads)
ROW_THREADS = 256        # upper bound of threads per block for row kernels (H200 sweep: 256
                         # beat 1024 by 1.3-1.6x on softmax and norms, benchmarks/gpu_schedule_sweep.py)
SHARED_BUDGET = 32 * 1024  # bytes of shared memory the row intermediates may take

_TRUE = E.IntImm(1, "bool")


def DefaultGPUSchedule(mod: IRModule, threads: int = THREADS, row_threads: int = ROW_THREADS,
                       items: int = ITEMS) -> IRModule:
    """Apply the GPU default schedule to every PrimFunc of `mod` without thread bindings."""
    for name, func in mod.prim_funcs().items():
        if not has_thread_binding(func):
            mod = mod.with_function(name, schedule_gpu(func, threads, row_threads, items=items))
    return mod


def has_thread_binding(func: T.PrimFunc) -> bool:
    return any(isinstance(n, T.For) and n.kind == "thread_binding" for n in walk(func.body))


def schedule_gpu(func: T.PrimFunc, threads: int = THREADS, row_threads: int = ROW_THREADS,
                 stage_inputs: bool = True, items: int = ITEMS) -> T.PrimFunc:
    func = _serialize(dedup_loop_vars(func))
    if stage_inputs:
        staged = _cache_shared_inputs(func)
        if staged is not None:
            out = _schedule_rows(staged, row_threads)
            if out is not None:
                return out
    return _schedule(func, threads, row_threads, items)


def _schedule_rows(func: T.PrimFunc, row_threads: int) -> Optional[T.PrimFunc]:
    root, allocs, stmts = _split_root(func)
    stages = [_stage(s) for s in stmts]
    if not all(st is not None for st in stages):
        return None
    res = _row_kernel(func, stages, allocs, row_threads)
    if res is None:
        return None
    return dataclasses.replace(func, body=_rebuild_root(root, res[1], res[0]),
                               attrs=func.attrs.replace(scheduled=True))


def _cache_shared_inputs(func: T.PrimFunc) -> Optional[T.PrimFunc]:
    """`func` with each input that several stages read (rms_norm's and softmax's X)
    staged through shared memory by `cache_read` (so a row kernel reads it from global
    memory once), or None when there is none whose row fits."""
    _, allocs, stmts = _split_root(func)
    stages = [_stage(s) for s in stmts]
    if not stages or not all(st is not None for st in stages):
        return None
    red = [st for st in stages if st.reduction]
    if not red or not all(isinstance(st.realize, T.BlockRealize) for st in stages):
        return None
    r = len(red[0].spatial)
    written = {id(n.buffer) for st in stages for n in walk(st.realize.block) if isinstance(n, T.BufferStore)}
    budget = SHARED_BUDGET - sum(_row_bytes(b, r) or 0 for b in allocs)
    out = func
    for p in func.params:
        if not isinstance(p, T.Buffer) or id(p) in written or len(p.shape) <= r:
            continue
        readers = [st.realize.block.name for st in stages
                   if any(isinstance(n, T.BufferLoad) and n.buffer is p for n in walk(st.realize.block))]
        size = _row_bytes(p, r)
        if len(readers) < 2 or size is None or size > budget:
            continue
        _, realize = find_block(out, readers[0])
        reads, _ = P._reads_writes(realize.block)
        index = next(k for k, b in enumerate(reads) if b is p)
        out, _ = P.cache_read(out, readers[0], index, "shared", consumer_blocks=readers[1:])
        budget -= size
    return None if out is func else out


def _row_bytes(buf: T.Buffer, r: int) -> Optional[int]:
    rest = buf.shape[r:]
    if not all(isinstance(d, E.IntImm) for d in rest):
        return None
    return math.prod(d.value for d in rest) * E.dtype_bytes(buf.dtype)


def _schedule(func: T.PrimFunc, threads: int, row_threads: int, items: int) -> T.PrimFunc:
    root, allocs, stmts = _split_root(func)
    stages = [_stage(s) for s in stmts]
    new_body = None
    if all(st is not None for st in stages):
        new_body, allocs = _row_kernel(func, stages, allocs, row_threads) or (None, allocs)
        if new_body is None:
            new_body = T.SeqStmt(tuple(_bind_stage(st, threads, row_threads, items) for st in stages)) \
                if len(stages) > 1 else _bind_stage(stages[0], threads, row_threads, items)
    else:
        parts = [(_bind_stage(st, threads, row_threads, items) if st is not None else s)
                 for st, s in zip(stages, stmts)]
        new_body = T.SeqStmt(tuple(parts)) if len(parts) > 1 else parts[0]
    body = _rebuild_root(root, allocs, new_body)
    return dataclasses.replace(func, body=body, attrs=func.attrs.replace(scheduled=True))


# -- structure ---------------------------------------------------------------------------

def _serialize(func: T.PrimFunc) -> T.PrimFunc:
    """Loops marked parallel/vectorized (a CPU schedule) become serial again, and loops
    of extent 1 (keepdims axes: `sq[i, 0]`) disappear, their var replaced by the min,
    so that a reduction's rows line up with its consumers' rows."""
    def pre(n):
        if isinstance(n, T.For) and n.kind in ("serial", "parallel", "vectorized", "unrolled"):
            if isinstance(n.extent, E.IntImm) and n.extent.value == 1:
                return rewrite(substitute_vars(n.body, {id(n.loop_var): n.min}), pre)
            if n.kind in ("parallel", "vectorized"):
                return dataclasses.replace(n, kind="serial", body=rewrite(n.body, pre))
        return None
    return dataclasses.replace(func, body=rewrite(func.body, pre))


def _split_root(func: T.PrimFunc):
    """(root realize or None, root alloc buffers, top-level statements)."""
    body = func.body
    if isinstance(body, T.BlockRealize) and not body.block.iter_vars and body.block.init is None:
        inner = body.block.body
        stmts = list(inner.stmts) if isinstance(inner, T.SeqStmt) else [inner]
        return body, list(body.block.alloc_buffers), stmts
    stmts = list(body.stmts) if isinstance(body, T.SeqStmt) else [body]
    return None, [], stmts


def _rebuild_root(root, allocs, body):
    if root is None:
        if allocs:
            raise AssertionError("allocations without a root block")
        return body
    block = dataclasses.replace(root.block, body=body, alloc_buffers=tuple(allocs))
    return dataclasses.replace(root, block=block)


@dataclasses.dataclass
class _Stage:
    loops: list[T.For]          # the perfect nest, outermost first
    realize: T.Stmt             # the block (or a bare BufferStore) under the loops
    kinds: list[str]            # "S" | "R" per loop

    @property
    def name(self) -> str:
        return self.realize.block.name if isinstance(self.realize, T.BlockRealize) else "s"

    @property
    def spatial(self):
        return [f for f, k in zip(self.loops, self.kinds) if k == "S"]

    @property
    def reduction(self):
        return [f for f, k in zip(self.loops, self.kinds) if k == "R"]


def _stage(stmt) -> Optional[_Stage]:
    """A perfect loop nest around one block whose loops each feed one kind of iterator,
    spatial loops outside; None for anything else."""
    loops, node = [], stmt
    while isinstance(node, T.For):
        loops.append(node)
        node = node.body
    if isinstance(node, T.BufferStore) and loops:
        # A bare store: independent iterations when every loop indexes the written element
        # and the value does not read the written buffer.
        idx = vars_in(node.indices)
        if all(id(f.loop_var) in idx for f in loops) and \
                not any(isinstance(n, T.BufferLoad) and n.buffer is node.buffer for n in walk(node.value)):
            return _Stage(loops, node, ["S"] * len(loops))
        return None
    if not isinstance(node, T.BlockRealize) or not loops:
        return None
    kind_of: dict[int, str] = {}
    for iv, value in zip(node.block.iter_vars, node.iter_values):
        for vid in vars_in(value):
            if kind_of.get(vid, iv.kind) != iv.kind:
                return None
            kind_of[vid] = iv.kind
    kinds = [kind_of.get(id(f.loop_var), "S") for f in loops]
    if "R" in kinds and "S" in kinds[kinds.index("R"):]:
        return None          # a spatial loop inside a reduction loop
    loop_ids = {id(f.loop_var) for f in loops}
    if any(vars_in((f.min, f.extent)) & loop_ids for f in loops):
        return None
    return _Stage(loops, node, kinds)


def _fused_index(loops: list[T.For], flat: E.PrimExpr) -> dict:
    """Loop var -> its value when `loops` are fused into `flat` (row-major)."""
    vmap, stride = {}, E.IntImm(1)
    for k in reversed(range(len(loops))):
        f = loops[k]
        v = flat if _is_one(stride) else flat // stride
        if k > 0:
            v = v % f.extent
        if not _is_zero(f.min):
            v = f.min + v
        vmap[id(f.loop_var)] = v
        stride = stride * f.extent
    return vmap


def _extent_product(loops: list[T.For]) -> E.PrimExpr:
    out = E.IntImm(1)
    for f in loops:
        out = out * f.extent
    return arith.simplify(out) if hasattr(arith, "simplify") else out


def _is_one(e) -> bool:
    return isinstance(e, E.IntImm) and e.value == 1


def _is_zero(e) -> bool:
    return isinstance(e, E.IntImm) and e.value == 0


def _threads_for(extent: E.PrimExpr, cap: int) -> int:
    """Threads for a strided loop over `extent`: a multiple of 32 up to `cap`."""
    if isinstance(extent, E.IntImm):
        return max(32, min(cap, -(-extent.value // 32) * 32))
    return cap


def _strided(inner: list[T.For], body: T.BlockRealize, nthreads: int, name: str,
             extra_vmap: dict) -> T.Stmt:
    """`inner` loops fused and strided over threadIdx.x around `body` (with `extra_vmap`
    substituted): for tx in threadIdx.x: for ko in ceil(K / T): k = ko * T + tx."""
    K = _extent_product(inner)
    tx = E.Var(f"{name}_tx")
    ko = E.Var(f"{name}_ko")
    flat = ko * nthreads + tx
    vmap = dict(extra_vmap)
    vmap.update(_fused_index(inner, flat))
    realize = substitute_vars(body, vmap)
    if isinstance(K, E.IntImm):
        outer = E.IntImm(-(-K.value // nthreads))
        exact = K.value % nthreads == 0
    else:
        outer = (K + (nthreads - 1)) // nthreads
        exact = False
    if not exact:
        cond = flat < K
        pred = cond if _is_true(realize.predicate) else E.logical_and(realize.predicate, cond)
        realize = dataclasses.replace(realize, predicate=pred)
    loop = T.For(ko, E.IntImm(0), outer, "serial", realize)
    return T.For(tx, E.IntImm(0), E.IntImm(nthreads), "thread_binding", loop, thread_tag="threadIdx.x")


def _is_true(e) -> bool:
    return isinstance(e, E.IntImm) and e.value != 0


# -- rule 2: one stage on its own ---------------------------------------------------------

def _bind_stage(st: _Stage, threads: int, row_threads: int, items: int = ITEMS) -> T.Stmt:
    spatial, reduction = st.spatial, st.reduction
    if not spatial:
        # A full reduction: one block, threads across the reduction loops.
        n = _threads_for(_extent_product(reduction), row_threads)
        return _strided(reduction, st.realize, n, st.name, {})
    # Spatial loops fused, split into blocks x items x threads (an elementwise stage's
    # thread does `items` elements, a block's width apart: coalesced, and independent
    # loads in flight); reductions serial per thread.
    flat_b = E.Var(f"{st.name}_bx")
    flat_t = E.Var(f"{st.name}_tx")
    S = _extent_product(spatial)
    n = threads if not isinstance(S, E.IntImm) else max(1, min(threads, S.value))
    per = 1 if reduction else items
    if isinstance(S, E.IntImm):
        per = max(1, min(per, -(-S.value // n)))
    item = E.Var(f"{st.name}_i")
    flat = (flat_b * per + item) * n + flat_t if per > 1 else flat_b * n + flat_t
    vmap = _fused_index(spatial, flat)
    body: T.Stmt = substitute_vars(st.realize, vmap)
    for f in reversed(reduction):
        body = T.For(f.loop_var, f.min, f.extent, f.kind, body)
    if isinstance(S, E.IntImm):
        nb = E.IntImm(-(-S.value // (n * per)))
        exact = S.value % (n * per) == 0
    else:
        nb = (S + (n * per - 1)) // (n * per)
        exact = False
    body = substitute_vars(body, vmap)
    if not exact:
        body = T.IfThenElse(flat < S, body)
    if per > 1:
        body = T.For(item, E.IntImm(0), E.IntImm(per), "unrolled", body)
    body = T.For(flat_t, E.IntImm(0), E.IntImm(n), "thread_binding", body, thread_tag="threadIdx.x")
    return T.For(flat_b, E.IntImm(0), nb, "thread_binding", body, thread_tag="blockIdx.x")


# -- rule 1: row kernels --------------------------------------------------------------------

def _row_kernel(func: T.PrimFunc, stages: list[_Stage], allocs: list[T.Buffer], row_threads: int):
    """(body, allocs) of the merged row kernel, or None when the rule does not apply."""
    red = [st for st in stages if st.reduction]
    if not red or not all(isinstance(st.realize, T.BlockRealize) for st in stages):
        return None
    r = len(red[0].spatial)
    rows = [f.extent for f in red[0].spatial]
    for st in stages:
        if len(st.spatial) < r or (st.reduction and len(st.spatial) != r):
            return None
        if not all(arith.prove_equal(a.extent, b) for a, b in zip(st.loops[:r], rows)):
            return None
        if not all(_is_zero(f.min) for f in st.loops[:r]):
            return None
    # Row iterator of each block: the block var bound to exactly the row loop var.
    row_ivars = []
    for st in stages:
        ivs = []
        for f in st.loops[:r]:
            iv = next((iv for iv, v in zip(st.realize.block.iter_vars, st.realize.iter_values)
                       if v is f.loop_var and iv.kind == "S"), None)
            if iv is None:
                return None
            ivs.append(iv.var)
        row_ivars.append(ivs)
    # Buffers written by some stage: every access must address its own row.
    written = {id(n.buffer): n.buffer for st in stages for n in walk(st.realize.block)
               if isinstance(n, T.BufferStore)}
    for st, ivs in zip(stages, row_ivars):
        for n in walk(st.realize.block):
            if isinstance(n, (T.BufferStore, T.BufferLoad)) and id(n.buffer) in written:
                if len(n.indices) < r or any(i is not v for i, v in zip(n.indices[:r], ivs)):
                    return None
    # Merge: one loop over rows bound to blockIdx.x.
    bx = E.Var("row_bx")
    row_loops = red[0].spatial
    nthreads = max(_threads_for(_extent_product(st.loops[r:]), row_threads) if st.loops[r:] else 32
                   for st in stages)
    parts = []
    for st in stages:
        vmap = _fused_index(st.loops[:r], bx)
        inner = st.loops[r:]
        if inner:
            parts.append(_strided(inner, st.realize, nthreads, st.realize.block.name, vmap))
        else:   # one value per row: thread 0 computes it
            tx = E.Var(f"{st.realize.block.name}_tx")
            parts.append(T.For(tx, E.IntImm(0), E.IntImm(1), "thread_binding",
                               substitute_vars(st.realize, vmap), thread_tag="threadIdx.x"))
    body = T.For(bx, E.IntImm(0), _extent_product(row_loops), "thread_binding",
                 T.SeqStmt(tuple(parts)) if len(parts) > 1 else parts[0], thread_tag="blockIdx.x")
    # Intermediates that hold one row move to shared memory.
    params = {id(p) for p in func.params if isinstance(p, T.Buffer)}
    budget, remap, new_allocs = SHARED_BUDGET, {}, []
    for buf in allocs:
        rest = buf.shape[r:]
        size = math.prod(d.value for d in rest) if all(isinstance(d, E.IntImm) for d in rest) else None
        fits = size is not None and size * E.dtype_bytes(buf.dtype) <= budget
        if buf.scope == "shared" and not fits:
            return None     # a shared copy (cache_read) whose row does not fit
        if id(buf) not in params and id(buf) in written and buf.scope in ("global", "shared") and fits:
            budget -= size * E.dtype_bytes(buf.dtype)
            shared = T.Buffer(buf.name + "_shared", tuple(rest) or (E.IntImm(1),), buf.dtype, "shared")
            remap[id(buf)] = (shared, not rest)
            new_allocs.append(shared)
        else:
            new_allocs.append(buf)
    if remap:
        body = _compact(body, remap, r)
    return body, new_allocs


def _compact(body, remap: dict, r: int):
    """Accesses of remapped buffers with their first `r` (row) indices dropped."""
    def pre(n):
        if isinstance(n, T.BufferLoad) and id(n.buffer) in remap:
            buf, scalar = remap[id(n.buffer)]
            idx = (E.IntImm(0),) if scalar else tuple(rewrite(i, pre) for i in n.indices[r:])
            return T.BufferLoad(buf, idx)
        if isinstance(n, T.BufferStore) and id(n.buffer) in remap:
            buf, scalar = remap[id(n.buffer)]
            idx = (E.IntImm(0),) if scalar else tuple(rewrite(i, pre) for i in n.indices[r:])
            return T.BufferStore(buf, rewrite(n.value, pre), idx)
        return None
    return rewrite(body, pre)
