"""DefaultSchedule: CPU loop schedules by rule, for every PrimFunc not marked `scheduled`.

Per loop nest whose leaf is one block (the form legalization produces):
1. Loop order: spatial loops outside, reduction loops inside. When the output's last
   axis is also the last axis of an input (matmul-like, `Y[i, j] += X[i, k] * W[k, j]`),
   that spatial loop goes innermost instead (i, k, j), so the inner loop is contiguous.
2. The innermost loop is vectorized (`omp simd`) when it is spatial and walks the
   output's last axis; a reduction innermost loop is left to the C compiler.
3. When the contiguous loop ended up inside the reduction loops, the block's init is
   split into its own loop nest before them (`decompose_reduction`).
4. The outer spatial loops run in parallel: small constant outer extents are fused
   with the next loop (splitting off a vector-sized tail of the contiguous loop if
   needed); nests with little constant work stay serial; symbolic extents run in
   parallel only when the extent is large enough at run time (`parallel_min_extent`).
Other nests (several blocks under one loop, e.g. a fused softmax row) get the outer
loop parallelized when every write under it depends on it, and the rules above
applied to their inner nests without parallelism. Functions come back with attr
`scheduled` so that later runs leave them alone.

Row merging comes first: when a program's stages (top-level loop nests; softmax,
rms_norm, layer_norm and what FuseTIR merged into them) all start with the same
"row" loops (the spatial loops of the first reduction stage), each has work inside
its rows, and every stage reads and writes the buffers the program computes only in
its own row, the stages are moved under one loop nest over rows (unit keepdims loops
dropped first). A row is then read from memory once and stays in cache for the
following stages, and the row loop runs in parallel.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from ..ir import expr as E
from ..ir import tir as T
from ..ir import arith
from ..ir.module import IRModule
from ..ir.visitor import rewrite, substitute_vars, vars_in, walk
from ..schedule import primitives as P
from ..schedule.loops import dedup_loop_vars, find_loop, reduction_loop_ids

PARALLEL_MIN_WORK = 1 << 15    # loop iterations below which threads cost more than they save
PARALLEL_MIN_EXTENT = 16        # outer extents below this are fused with the next loop
VECTOR_TILE = 64                # tail split off a contiguous loop to fuse the rest outside


def DefaultSchedule(mod: IRModule) -> IRModule:
    """Apply the CPU default schedule to every unscheduled PrimFunc of `mod`."""
    for name, func in mod.prim_funcs().items():
        if not func.attrs.get("scheduled"):
            mod = mod.with_function(name, schedule_prim_func(func))
    return mod


def schedule_prim_func(func: T.PrimFunc) -> T.PrimFunc:
    func = dedup_loop_vars(func)
    func = merge_rows(func) or func
    for loop in _root_loops(func.body):
        func = _schedule_nest(func, loop, allow_parallel=True)
    return dataclasses.replace(func, attrs=func.attrs.replace(scheduled=True))


def _root_loops(stmt) -> list[E.Var]:
    """Loop vars of the outermost loops under `stmt` (through seqs, allocations, blocks)."""
    if isinstance(stmt, T.For):
        return [stmt.loop_var]
    if isinstance(stmt, T.SeqStmt):
        return [v for s in stmt.stmts for v in _root_loops(s)]
    if isinstance(stmt, (T.Allocate, T.LetStmt)):
        return _root_loops(stmt.body)
    if isinstance(stmt, T.IfThenElse):
        return _root_loops(stmt.then_case) + (_root_loops(stmt.else_case) if stmt.else_case else [])
    if isinstance(stmt, T.BlockRealize):
        return _root_loops(stmt.block.body)
    return []


def _chain(node: T.For) -> tuple[list[T.For], T.Stmt]:
    chain = []
    while isinstance(node, T.For):
        chain.append(node)
        node = node.body
    return chain, node


def _const(e: E.PrimExpr) -> Optional[int]:
    return e.value if isinstance(e, E.IntImm) else None


def _schedule_nest(func: T.PrimFunc, loop: E.Var, allow_parallel: bool) -> T.PrimFunc:
    chain, leaf = _chain(find_loop(func, loop))
    if any(c.kind != "serial" for c in chain):
        return func
    if isinstance(leaf, T.BlockRealize):
        simple = _simple_nest(func, chain, leaf, allow_parallel)
        if simple is not None:
            return simple
    if allow_parallel:
        func = _parallel_if_independent(func, chain[0])
    _, leaf = _chain(find_loop(func, loop))
    inner = _root_loops(leaf) if not isinstance(leaf, T.BlockRealize) else _root_loops(leaf.block.body)
    for v in inner:
        func = _schedule_nest(func, v, allow_parallel=False)
    return func


def _simple_nest(func, chain, realize, allow_parallel) -> Optional[T.PrimFunc]:
    block = realize.block
    kinds = {}  # id(loop var) -> "S" | "R"
    iter_loop = {}  # id(block iter var) -> loop var, for iterators bound to one loop
    for iv, value in zip(block.iter_vars, realize.iter_values):
        for vid in vars_in(value):
            if kinds.get(vid, iv.kind) != iv.kind:
                return None
            kinds[vid] = iv.kind
        if isinstance(value, E.Var):
            iter_loop[id(iv.var)] = value
    if any(id(c.loop_var) not in kinds for c in chain) or not isinstance(block.body, T.BufferStore):
        return None
    store = block.body
    last = store.indices[-1] if store.indices else None
    s_last = iter_loop.get(id(last)) if isinstance(last, E.Var) else None
    chain_ids = {id(c.loop_var) for c in chain}
    if s_last is not None and id(s_last) not in chain_ids:
        s_last = None
    spatial = [c.loop_var for c in chain if kinds[id(c.loop_var)] == "S"]
    reduction = [c.loop_var for c in chain if kinds[id(c.loop_var)] == "R"]
    contiguous_read = any(isinstance(n, T.BufferLoad) and n.buffer is not store.buffer and n.indices
                          and n.indices[-1] is last for n in walk(store.value))
    if reduction and s_last is not None and contiguous_read:
        order = [v for v in spatial if v is not s_last] + reduction + [s_last]
    else:
        order = spatial + reduction
    if [c.loop_var for c in chain] != order:
        func = P.reorder(func, *order)
    if s_last is not None and order[-1] is s_last:
        func = P.vectorize(func, s_last)
    if block.init is not None and reduction and order[-1] is s_last:
        func = P.decompose_reduction(func, block.name, reduction[0])
    if not allow_parallel:
        return func
    if reduction and order[-1] is s_last:
        outer = order[:len(spatial) - 1]
    elif reduction:
        outer = spatial
    else:
        outer = order[:-1] or order
    extents = {id(c.loop_var): c.extent for c in chain}
    tail_spatial = kinds[id(order[-1])] == "S" and not reduction
    return _parallelize(func, outer, [extents[id(v)] for v in order], order, tail_spatial)


def _parallelize(func, outer: list[E.Var], all_extents, order, tail_spatial: bool) -> T.PrimFunc:
    consts = [_const(e) for e in all_extents]
    if None not in consts and math.prod(consts) < PARALLEL_MIN_WORK:
        return func
    if not outer:
        return func
    outer = list(outer)
    # A small outer extent with a contiguous inner loop: split off a vector tile to fuse with.
    if tail_spatial and len(outer) == 1 and len(order) > 1 and order[1] is order[-1]:
        first, tail = _const(find_loop(func, outer[0]).extent), _const(find_loop(func, order[-1]).extent)
        if first is not None and first < PARALLEL_MIN_EXTENT and tail and tail % VECTOR_TILE == 0 \
                and tail > VECTOR_TILE:
            kind = find_loop(func, order[-1]).kind
            func, (to, ti) = P.split(func, order[-1], [None, VECTOR_TILE])
            if kind == "vectorized":
                func = P.vectorize(func, ti)
            outer.append(to)
    head, fused = outer[0], {id(outer[0])}
    for nxt in outer[1:]:
        ext = _const(find_loop(func, head).extent)
        if ext is None or ext >= PARALLEL_MIN_EXTENT:
            break
        node = find_loop(func, head)
        if not (isinstance(node.body, T.For) and node.body.loop_var is nxt):
            break
        func, head = P.fuse(func, head, nxt)
        fused.add(id(nxt))
    inner_work = math.prod(_const(find_loop(func, v).extent) or 1 for v in order
                           if id(v) not in fused and _has_loop(func, v))
    return _parallel(func, head, inner_work)


def _has_loop(func: T.PrimFunc, v: E.Var) -> bool:
    return any(isinstance(n, T.For) and n.loop_var is v for n in walk(func.body))


def _parallel(func: T.PrimFunc, loop: E.Var, inner_work: int) -> T.PrimFunc:
    """Mark `loop` parallel; a symbolic extent goes parallel only when big enough at run time."""
    func = P.parallel(func, loop)
    if _const(find_loop(func, loop).extent) is None:
        min_extent = max(2, -(-PARALLEL_MIN_WORK // max(inner_work, 1)))
        func = P.annotate(func, loop, "parallel_min_extent", min_extent)
    return func


def _parallel_if_independent(func: T.PrimFunc, node: T.For) -> T.PrimFunc:
    """Parallelize `node` when it feeds no reduction and every write under it depends on it."""
    if id(node.loop_var) in reduction_loop_ids(node.body):
        return func
    inner_work = sum(_const(n.extent) or PARALLEL_MIN_WORK for n in walk(node.body) if isinstance(n, T.For))
    inner_work = max(inner_work, 1)
    if _const(node.extent) is not None and _const(node.extent) * inner_work < PARALLEL_MIN_WORK:
        return func
    if not _writes_depend_on(node):
        return func
    return _parallel(func, node.loop_var, inner_work)


def _writes_depend_on(loop: T.For) -> bool:
    local = {id(n.buffer) for n in walk(loop.body) if isinstance(n, T.Allocate)}
    local |= {id(b) for n in walk(loop.body) if isinstance(n, T.Block) for b in n.alloc_buffers}
    ok = True

    def visit(stmt, dep: set):
        nonlocal ok
        if isinstance(stmt, T.BufferStore):
            if id(stmt.buffer) not in local and not (vars_in(stmt.indices) & dep):
                ok = False
        elif isinstance(stmt, T.BlockRealize):
            dep = dep | {id(iv.var) for iv, v in zip(stmt.block.iter_vars, stmt.iter_values)
                         if vars_in(v) & dep}
            visit(stmt.block.body, dep)
            if stmt.block.init is not None:
                visit(stmt.block.init, dep)
        elif isinstance(stmt, T.LetStmt):
            visit(stmt.body, dep | ({id(stmt.var)} if vars_in(stmt.value) & dep else set()))
        elif isinstance(stmt, T.SeqStmt):
            for s in stmt.stmts:
                visit(s, dep)
        elif isinstance(stmt, T.IfThenElse):
            visit(stmt.then_case, dep)
            if stmt.else_case is not None:
                visit(stmt.else_case, dep)
        elif isinstance(stmt, (T.For, T.Allocate)):
            visit(stmt.body, dep)

    visit(loop.body, {id(loop.loop_var)})
    return ok


# -- row merging ----------------------------------------------------------------------------

def merge_rows(func: T.PrimFunc) -> Optional[T.PrimFunc]:
    """`func` with its stages under one nest of row loops (see the module docstring), or
    None when the rule does not apply."""
    body = func.body
    if not (isinstance(body, T.BlockRealize) and not body.block.iter_vars and body.block.init is None):
        return None
    stmts = list(body.block.body.stmts) if isinstance(body.block.body, T.SeqStmt) else [body.block.body]
    stages = [_row_stage(_drop_unit_loops(s)) for s in stmts]
    if len(stages) < 2 or any(st is None for st in stages):
        return None
    red = [st for st in stages if "R" in st[2]]
    if not red:
        return None
    r = red[0][2].index("R")
    rows = [f.extent for f in red[0][0][:r]]
    if r == 0:
        return None
    row_ivars = []
    for loops, realize, kinds in stages:
        if len(loops) <= r or kinds[:r] != ["S"] * r:
            return None
        if not all(_const(f.min) == 0 and arith.prove_equal(f.extent, e) for f, e in zip(loops, rows)):
            return None
        bound = {id(v): iv.var for iv, v in zip(realize.block.iter_vars, realize.iter_values)
                 if isinstance(v, E.Var)}
        row_ivars.append([bound[id(f.loop_var)] for f in loops[:r]])
    written = {id(n.buffer) for _, realize, _ in stages for n in walk(realize.block)
               if isinstance(n, T.BufferStore)}
    for (_, realize, _), ivars in zip(stages, row_ivars):
        for n in walk(realize.block):
            if isinstance(n, (T.BufferStore, T.BufferLoad)) and id(n.buffer) in written:
                if len(n.indices) < r or any(i is not v for i, v in zip(n.indices[:r], ivars)):
                    return None
    row_vars = [E.Var(f.loop_var.name, f.loop_var.dtype) for f in red[0][0][:r]]
    parts = []
    for loops, realize, _ in stages:
        inner: T.Stmt = realize
        for f in reversed(loops[r:]):
            inner = dataclasses.replace(f, body=inner)
        parts.append(substitute_vars(inner, {id(f.loop_var): v for f, v in zip(loops, row_vars)}))
    merged: T.Stmt = T.SeqStmt(tuple(parts))
    allocs = []
    for buf in body.block.alloc_buffers:
        row = _row_buffer(buf, r) if id(buf) in written else None
        if row is None:
            allocs.append(buf)
        else:
            merged = T.Allocate(row, _drop_row_indices(merged, buf, row, r))
    for v, extent in reversed(list(zip(row_vars, rows))):
        merged = T.For(v, E.IntImm(0), extent, "serial", merged)
    return dataclasses.replace(func, body=dataclasses.replace(
        body, block=dataclasses.replace(body.block, body=merged, alloc_buffers=tuple(allocs))))


def _row_buffer(buf: T.Buffer, r: int) -> Optional[T.Buffer]:
    """A buffer holding one row of `buf` (its dims after the first r), when that is a
    constant size small enough for the stack: private to the thread that runs the row,
    and known not to alias anything, so the C compiler keeps it in registers/L1."""
    rest = buf.shape[r:]
    if not all(isinstance(d, E.IntImm) for d in rest):
        return None
    from ..codegen.c import STACK_ALLOC_LIMIT
    if math.prod(d.value for d in rest) * E.dtype_bytes(buf.dtype) > STACK_ALLOC_LIMIT:
        return None
    return T.Buffer(buf.name, tuple(rest) or (E.IntImm(1),), buf.dtype, "local")


def _drop_row_indices(stmt: T.Stmt, buf: T.Buffer, row: T.Buffer, r: int) -> T.Stmt:
    def idx(indices):
        return tuple(indices[r:]) or (E.IntImm(0),)

    def pre(n):
        if isinstance(n, T.BufferLoad) and n.buffer is buf:
            return T.BufferLoad(row, tuple(rewrite(i, pre) for i in idx(n.indices)))
        if isinstance(n, T.BufferStore) and n.buffer is buf:
            return T.BufferStore(row, rewrite(n.value, pre), tuple(rewrite(i, pre) for i in idx(n.indices)))
        return None
    return rewrite(stmt, pre)


def _drop_unit_loops(stmt: T.Stmt) -> T.Stmt:
    """Serial loops of extent 1 (keepdims axes) removed, their var replaced by the min."""
    def pre(n):
        if isinstance(n, T.For) and n.kind == "serial" and _const(n.extent) == 1:
            return rewrite(substitute_vars(n.body, {id(n.loop_var): n.min}), pre)
        return None
    return rewrite(stmt, pre)


def _row_stage(stmt: T.Stmt):
    """(loops, realize, kind per loop) of a perfect serial nest over one block whose
    iterators are bound to single loops in order (or constants); else None."""
    loops = []
    while isinstance(stmt, T.For) and stmt.kind == "serial":
        loops.append(stmt)
        stmt = stmt.body
    if not isinstance(stmt, T.BlockRealize) or not loops:
        return None
    pairs = [(iv, v) for iv, v in zip(stmt.block.iter_vars, stmt.iter_values) if not isinstance(v, E.IntImm)]
    if len(pairs) != len(loops) or any(v is not f.loop_var for (_, v), f in zip(pairs, loops)):
        return None
    return loops, stmt, [iv.kind for iv, _ in pairs]
