"""Schedule primitives: pure functions PrimFunc -> PrimFunc.

Loops are addressed by their loop Var (unique per PrimFunc, see `dedup_loop_vars`),
blocks by name. Each primitive checks what it needs and raises ScheduleError
naming the loop or block otherwise. Semantics follow TVM's tir.Schedule.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from ..ir import arith
from ..ir import expr as E
from ..ir import tir as T
from ..ir.errors import ScheduleError
from ..ir.visitor import replace_node, rewrite, substitute_vars as substitute, vars_in, walk
from .loops import find_block, find_loop, reduction_loop_ids, with_body

Factor = Union[int, E.PrimExpr, None]


def get_loops(func: T.PrimFunc, block_name: str) -> list[E.Var]:
    """Loop vars around block `block_name`, outermost first."""
    loops, _ = find_block(func, block_name)
    return [f.loop_var for f in loops]


def _and_predicates(body: T.Stmt, cond: E.PrimExpr) -> T.Stmt:
    """Add `cond` to the predicate of every block directly under `body`; a guard if none."""
    hit = []

    def pre(n):
        if isinstance(n, T.BlockRealize):
            hit.append(n)
            pred = cond if _is_true(n.predicate) else E.logical_and(n.predicate, cond)
            return dataclasses.replace(n, predicate=pred)
        return None

    out = rewrite(body, pre)
    return out if hit else T.IfThenElse(cond, body)


def split(func: T.PrimFunc, loop: E.Var, factors: Sequence[Factor]) -> tuple[T.PrimFunc, list[E.Var]]:
    """Split `loop` into len(factors) nested loops (outermost first); one factor may be
    None (inferred). A non-dividing split guards the body with a predicate."""
    node = find_loop(func, loop)
    if len(factors) < 2:
        raise ScheduleError(f"split {loop.name!r}: need at least 2 factors, got {list(factors)}")
    if sum(f is None for f in factors) > 1:
        raise ScheduleError(f"split {loop.name!r}: at most one factor may be None, got {list(factors)}")
    known = [E.as_expr(f) for f in factors if f is not None]
    prod_known = known[0]
    for f in known[1:]:
        prod_known = prod_known * f
    exprs = []
    for f in factors:
        if f is None:
            if isinstance(node.extent, E.IntImm) and isinstance(prod_known, E.IntImm):
                f = E.IntImm(-(-node.extent.value // prod_known.value))
            else:
                f = (node.extent + (prod_known - 1)) // prod_known
        f = E.as_expr(f)
        if isinstance(f, E.IntImm) and f.value <= 0:
            raise ScheduleError(f"split {loop.name!r}: factors must be positive, got {list(factors)}")
        exprs.append(f)
    total = exprs[0]
    for f in exprs[1:]:
        total = total * f
    new_vars = [E.Var(f"{loop.name}_{k}", loop.dtype) for k in range(len(exprs))]
    value, stride = None, E.IntImm(1)
    for v, f in zip(reversed(new_vars), reversed(exprs)):
        term = v if isinstance(stride, E.IntImm) and stride.value == 1 else v * stride
        value = term if value is None else term + value
        stride = stride * f
    if not (isinstance(node.min, E.IntImm) and node.min.value == 0):
        value = node.min + value
    body = substitute(node.body, {id(loop): value})
    if not arith.prove_equal(total, node.extent):
        body = _and_predicates(body, value < node.min + node.extent)
    for v, f in zip(reversed(new_vars), reversed(exprs)):
        body = T.For(v, E.IntImm(0), f, "serial", body)
    return with_body(func, replace_node(func.body, node, body)), new_vars


def fuse(func: T.PrimFunc, *loops: E.Var) -> tuple[T.PrimFunc, E.Var]:
    """Fuse directly nested loops (outermost first) into one loop."""
    if len(loops) < 2:
        raise ScheduleError(f"fuse: need at least 2 loops, got {[v.name for v in loops]}")
    nodes = [find_loop(func, loops[0])]
    for v in loops[1:]:
        body = nodes[-1].body
        if not (isinstance(body, T.For) and body.loop_var is v):
            raise ScheduleError(f"fuse: loop {v.name!r} is not directly inside {nodes[-1].loop_var.name!r}")
        nodes.append(body)
    ids = {id(v) for v in loops}
    for n in nodes:
        if vars_in((n.min, n.extent)) & ids:
            raise ScheduleError(f"fuse: extent of loop {n.loop_var.name!r} depends on a fused loop")
    fused = E.Var("_".join(v.name for v in loops) + "_fused", loops[0].dtype)
    extent = nodes[0].extent
    for n in nodes[1:]:
        extent = extent * n.extent
    vmap, stride = {}, E.IntImm(1)
    for k in reversed(range(len(nodes))):
        n = nodes[k]
        value = fused if isinstance(stride, E.IntImm) and stride.value == 1 else fused // stride
        if k > 0:
            value = value % n.extent
        if not (isinstance(n.min, E.IntImm) and n.min.value == 0):
            value = n.min + value
        vmap[id(n.loop_var)] = value
        stride = stride * n.extent
    new = T.For(fused, E.IntImm(0), extent, "serial", substitute(nodes[-1].body, vmap))
    return with_body(func, replace_node(func.body, nodes[0], new)), fused


def reorder(func: T.PrimFunc, *loops: E.Var) -> T.PrimFunc:
    """Reorder loops of one perfect nest so that `loops` appear in the given order."""
    if len(set(map(id, loops))) != len(loops):
        raise ScheduleError(f"reorder: loops repeated in {[v.name for v in loops]}")
    wanted = {id(v) for v in loops}
    nodes = [find_loop(func, v) for v in loops]
    # The outermost one is the loop that contains all the others.
    outer = next((n for n in nodes if wanted <= _chain_ids(n, len(wanted))), None)
    if outer is None:
        raise ScheduleError(f"reorder: loops {[v.name for v in loops]} are not in one perfect nest "
                            "(each loop's body must be the next loop)")
    chain, node = [], outer
    while True:
        chain.append(node)
        if wanted <= {id(c.loop_var) for c in chain}:
            break
        node = node.body
    positions = [k for k, c in enumerate(chain) if id(c.loop_var) in wanted]
    by_var = {id(c.loop_var): c for c in chain}
    new_chain = list(chain)
    for pos, v in zip(positions, loops):
        new_chain[pos] = by_var[id(v)]
    chain_ids = {id(c.loop_var) for c in chain}
    for c in chain:
        if vars_in((c.min, c.extent)) & chain_ids:
            raise ScheduleError(f"reorder: extent of loop {c.loop_var.name!r} depends on another loop of the nest")
    body = chain[-1].body
    for c in reversed(new_chain):
        body = dataclasses.replace(c, body=body)
    return with_body(func, replace_node(func.body, outer, body))


def _chain_ids(node: T.For, depth_hint: int) -> set[int]:
    ids = set()
    while isinstance(node, T.For):
        ids.add(id(node.loop_var))
        node = node.body
    return ids


def _set_kind(func: T.PrimFunc, loop: E.Var, kind: str, what: str, thread_tag: Optional[str] = None,
              spatial_only: bool = True) -> T.PrimFunc:
    node = find_loop(func, loop)
    if spatial_only and id(loop) in reduction_loop_ids(node.body):
        raise ScheduleError(f"{what}: loop {loop.name!r} feeds a reduction iterator; only spatial "
                            "loops can be run in parallel or vectorized")
    new = dataclasses.replace(node, kind=kind, thread_tag=thread_tag)
    return with_body(func, replace_node(func.body, node, new))


def parallel(func: T.PrimFunc, loop: E.Var) -> T.PrimFunc:
    """Run iterations of `loop` on several threads (OpenMP on CPU)."""
    return _set_kind(func, loop, "parallel", "parallel")


def vectorize(func: T.PrimFunc, loop: E.Var) -> T.PrimFunc:
    """Mark `loop` for SIMD execution (`omp simd` on CPU)."""
    return _set_kind(func, loop, "vectorized", "vectorize")


def unroll(func: T.PrimFunc, loop: E.Var) -> T.PrimFunc:
    return _set_kind(func, loop, "unrolled", "unroll", spatial_only=False)


def serial(func: T.PrimFunc, loop: E.Var) -> T.PrimFunc:
    return _set_kind(func, loop, "serial", "serial", spatial_only=False)


def bind(func: T.PrimFunc, loop: E.Var, thread_tag: str) -> T.PrimFunc:
    """Bind `loop` to a GPU thread axis ("blockIdx.x", "threadIdx.x", ...)."""
    if thread_tag.split(".")[0] not in ("blockIdx", "threadIdx", "vthread"):
        raise ScheduleError(f"bind {loop.name!r}: unknown thread tag {thread_tag!r}")
    return _set_kind(func, loop, "thread_binding", "bind", thread_tag=thread_tag,
                     spatial_only=thread_tag.startswith("blockIdx"))


def annotate(func: T.PrimFunc, loop: E.Var, key: str, value) -> T.PrimFunc:
    node = find_loop(func, loop)
    new = dataclasses.replace(node, annotations=node.annotations.replace(**{key: value}))
    return with_body(func, replace_node(func.body, node, new))


def decompose_reduction(func: T.PrimFunc, block_name: str, loop: E.Var) -> T.PrimFunc:
    """Move the init of block `block_name` into its own block `<name>_init`, placed right
    before `loop` (an ancestor of the block) inside copies of the spatial loops that lie
    between `loop` and the block. The block keeps only its update."""
    loops, realize = find_block(func, block_name)
    block = realize.block
    if block.init is None:
        raise ScheduleError(f"decompose_reduction: block {block_name!r} has no init")
    idx = next((k for k, f in enumerate(loops) if f.loop_var is loop), None)
    if idx is None:
        raise ScheduleError(f"decompose_reduction: loop {loop.name!r} does not enclose block {block_name!r}")
    inner = loops[idx:]
    spatial = [(iv, v) for iv, v in zip(block.iter_vars, realize.iter_values) if iv.kind == "S"]
    used = vars_in(tuple(v for _, v in spatial))
    copies = [f for f in inner if id(f.loop_var) in used]
    red_inner = {id(f.loop_var) for f in inner} - used
    # Conjuncts over the reduction loops (from splits) hold at their first iteration,
    # where init runs; the init block keeps the others.
    init_pred = E.IntImm(1, "bool")
    for c in _conjuncts(realize.predicate):
        if not vars_in(c) & red_inner:
            init_pred = c if _is_true(init_pred) else E.logical_and(init_pred, c)
    vmap = {id(f.loop_var): E.Var(f.loop_var.name + "_init", f.loop_var.dtype) for f in copies}
    new_ivs, ivmap = [], {}
    for iv, _ in spatial:
        nv = E.Var(iv.var.name + "_init", iv.var.dtype)
        ivmap[id(iv.var)] = nv
        new_ivs.append(T.IterVar(nv, iv.dom, "S"))
    init_block = T.Block(block_name + "_init", tuple(new_ivs), substitute(block.init, ivmap))
    init: T.Stmt = T.BlockRealize(tuple(substitute(v, vmap) for _, v in spatial),
                                  substitute(init_pred, vmap), init_block)
    for f in reversed(copies):
        kind = f.kind if f.kind in ("serial", "vectorized", "unrolled") else "serial"
        init = T.For(vmap[id(f.loop_var)], substitute(f.min, vmap), substitute(f.extent, vmap), kind, init)
    update = dataclasses.replace(realize, block=dataclasses.replace(block, init=None))
    target = inner[0]
    new_loop = replace_node(target, realize, update)
    return with_body(func, replace_node(func.body, target, T.SeqStmt((init, new_loop))))


def _conjuncts(e: E.PrimExpr) -> list[E.PrimExpr]:
    if isinstance(e, E.And):
        return _conjuncts(e.a) + _conjuncts(e.b)
    return [] if _is_true(e) else [e]


def _is_true(e: E.PrimExpr) -> bool:
    return isinstance(e, E.IntImm) and e.value != 0


def _reads_writes(block: T.Block) -> tuple[list[T.Buffer], list[T.Buffer]]:
    """Buffers a block reads and writes, each in order of first appearance (the
    `buffer_index` of cache_read / cache_write counts in these lists)."""
    reads, writes = [], []
    stmts = [block.init, block.body] if block.init is not None else [block.body]
    for stmt in stmts:
        for n in walk(stmt):
            if isinstance(n, T.BufferLoad) and not any(n.buffer is b for b in reads):
                reads.append(n.buffer)
            elif isinstance(n, T.BufferStore) and not any(n.buffer is b for b in writes):
                writes.append(n.buffer)
    own = [b for b in reads if any(b is w for w in writes)]
    return [b for b in reads if not any(b is o for o in own)], writes


def _with_root(func: T.PrimFunc) -> tuple[T.BlockRealize, list[T.Stmt]]:
    """The root block realize (made if missing) and its top-level statements."""
    body = func.body
    if not (isinstance(body, T.BlockRealize) and not body.block.iter_vars and body.block.init is None):
        body = T.BlockRealize((), E.IntImm(1, "bool"), T.Block("root", (), body))
    inner = body.block.body
    return body, list(inner.stmts) if isinstance(inner, T.SeqStmt) else [inner]


def _top_index(stmts: list[T.Stmt], block_name: str) -> int:
    for k, s in enumerate(stmts):
        if any(isinstance(n, T.Block) and n.name == block_name for n in walk(s)):
            return k
    raise ScheduleError(f"block {block_name!r} is not under the root block's statements")


def _copy_nest(name: str, dst: T.Buffer, src: T.Buffer) -> T.Stmt:
    """for v...: block name: dst[v...] = src[v...] over the whole buffer."""
    loops = [E.Var(f"{name}_l{k}") for k in range(len(src.shape))]
    ivars = [E.Var(f"{name}_v{k}") for k in range(len(src.shape))]
    ivs = tuple(T.IterVar(v, T.Range(E.IntImm(0), d), "S") for v, d in zip(ivars, src.shape))
    store = T.BufferStore(dst, T.BufferLoad(src, tuple(ivars)), tuple(ivars))
    body: T.Stmt = T.BlockRealize(tuple(loops), E.IntImm(1, "bool"), T.Block(name, ivs, store))
    for v, d in reversed(list(zip(loops, src.shape))):
        body = T.For(v, E.IntImm(0), d, "serial", body)
    return body


def _retarget(stmt, old: T.Buffer, new: T.Buffer, loads: bool, stores: bool):
    def pre(n):
        if loads and isinstance(n, T.BufferLoad) and n.buffer is old:
            return T.BufferLoad(new, tuple(rewrite(i, pre) for i in n.indices))
        if stores and isinstance(n, T.BufferStore) and n.buffer is old:
            return T.BufferStore(new, rewrite(n.value, pre), tuple(rewrite(i, pre) for i in n.indices))
        return None
    return rewrite(stmt, pre)


_SCOPES = ("global", "shared", "local")


def cache_read(func: T.PrimFunc, block_name: str, buffer_index: int, scope: str,
               consumer_blocks: Optional[Sequence[str]] = None) -> tuple[T.PrimFunc, T.Buffer]:
    """Stage the `buffer_index`-th buffer that block `block_name` reads in a new buffer of
    `scope` ("shared": GPU shared memory): a copy block `<buffer>_<scope>` over the whole
    buffer runs before the first consumer's loop nest, and the consumers (`block_name`,
    plus `consumer_blocks`) read the copy. Returns (func, cache buffer). The GPU schedule
    keeps one row of such a copy per thread block."""
    _, src, cache = _cache_for("cache_read", func, block_name, buffer_index, scope, "reads")
    names = [block_name] + [b for b in (consumer_blocks or ()) if b != block_name]
    root, stmts = _with_root(func)
    for name in names:
        _, r = find_block(func, name)
        stmts = [replace_node(s, r, dataclasses.replace(
            r, block=_retarget(r.block, src, cache, loads=True, stores=False))) for s in stmts]
    first = min(_top_index(stmts, n) for n in names)
    stmts.insert(first, _copy_nest(cache.name, cache, src))
    return _rebuild_root(func, root, stmts, cache), cache


def cache_write(func: T.PrimFunc, block_name: str, buffer_index: int, scope: str) -> tuple[T.PrimFunc, T.Buffer]:
    """Make block `block_name` compute its `buffer_index`-th written buffer into a new
    buffer of `scope`, copied back (block `<buffer>_<scope>`) right after the block's
    loop nest. Returns (func, cache buffer)."""
    realize, dst, cache = _cache_for("cache_write", func, block_name, buffer_index, scope, "writes")
    root, stmts = _with_root(func)
    new_block = _retarget(realize.block, dst, cache, loads=True, stores=True)
    stmts = [replace_node(s, realize, dataclasses.replace(realize, block=new_block)) for s in stmts]
    k = _top_index(stmts, block_name)
    stmts.insert(k + 1, _copy_nest(cache.name, dst, cache))
    return _rebuild_root(func, root, stmts, cache), cache


def _cache_for(primitive: str, func: T.PrimFunc, block_name: str, buffer_index: int, scope: str,
               access: str) -> tuple[T.BlockRealize, T.Buffer, T.Buffer]:
    """(block `block_name`, the `buffer_index`-th buffer it `access`es ("reads" or
    "writes"), a new buffer `<buffer>_<scope>` of its shape and dtype to cache it in)."""
    if scope not in _SCOPES:
        raise ScheduleError(f"{primitive}: unknown scope {scope!r}; expected one of {_SCOPES}")
    _, realize = find_block(func, block_name)
    reads, writes = _reads_writes(realize.block)
    buffers = reads if access == "reads" else writes
    if not 0 <= buffer_index < len(buffers):
        raise ScheduleError(f"{primitive}: block {block_name!r} {access} {len(buffers)} buffers "
                            f"({[b.name for b in buffers]}); index {buffer_index} is out of range")
    buf = buffers[buffer_index]
    return realize, buf, T.Buffer(f"{buf.name}_{scope}", buf.shape, buf.dtype, scope)


def _rebuild_root(func: T.PrimFunc, root: T.BlockRealize, stmts, cache: T.Buffer) -> T.PrimFunc:
    """`func` with the root block's statements `stmts` and `cache` allocated at the root."""
    block = dataclasses.replace(root.block, body=T.SeqStmt(tuple(stmts)),
                                alloc_buffers=root.block.alloc_buffers + (cache,))
    return with_body(func, dataclasses.replace(root, block=block))


def loop_extent(func: T.PrimFunc, loop: E.Var) -> E.PrimExpr:
    return find_loop(func, loop).extent
