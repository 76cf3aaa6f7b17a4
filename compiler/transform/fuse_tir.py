"""FuseTIR: turn each Primitive graph function (a FuseOps group) into one tensor program.

Why: a group is only faster once it is one kernel. The programs the group calls
are concatenated into one PrimFunc, in the group's order:

- each group parameter and output becomes a buffer parameter; a value the group
  computes and does not return becomes a local `alloc_buffers` of the root block;
- every program's size vars are unified with the group's (a callee's bare dim `n`
  becomes whatever the argument's shape holds there), and its loop and block vars
  are copied fresh, so one program may appear several times;
- then each stage that is pure elementwise/injective work (a loop nest over one
  block with spatial iterators only, storing to a local buffer at exactly its
  iterators) is inlined into the stages that read it, and its buffer disappears:
  `add` before `rms_norm` is recomputed inside the sum and the output loop instead
  of being written to memory and read back twice. A stage whose inlining would add
  more than MAX_INLINED_NODES expression nodes keeps its local buffer.

The call of the group becomes `R.call_tir` of the new program (named after the
group, e.g. "fused_add_rms_norm"); the Primitive functions and the programs nobody
calls any more are removed. A Primitive function of another form (say, PlanMemory
ran in between and made its allocations explicit) is left as it is: the VM calls it. Stages that end up with the same outer "row" loops
(softmax, rms_norm) are what DefaultSchedule turns into one parallel row loop.
"""
from __future__ import annotations

from typing import Optional

from ..ir import arith
from ..ir import expr as E
from ..ir import graph as G
from ..ir import tir as T
from ..ir.builder import BlockBuilder
from ..ir.errors import CompilerError
from ..ir.module import IRModule
from ..ir.struct_info import TensorStructInfo
from ..ir.visitor import ExprMutator, StmtExprMutator, post_order_visit, rewrite, substitute_vars, walk
from .fuse_ops import root_parts

__all__ = ["FuseTIR", "fuse_primitive", "inline_injective_stages"]

_TRUE = E.IntImm(1, "bool")
MAX_INLINED_NODES = 512     # above this, a stage is kept as a local buffer rather than recomputed


class FuseTIRError(CompilerError):
    """A Primitive function that cannot be merged into one tensor program."""


def FuseTIR(mod: IRModule) -> IRModule:
    """`mod` with every call of a Primitive function replaced by `R.call_tir` of one
    merged tensor program."""
    primitives = {name: f for name, f in mod.graph_functions().items()
                  if f.attrs.get("Primitive") and is_mergeable(mod, f)}
    if not primitives:
        return mod
    rest = mod
    for name in primitives:
        rest = rest.without(name)
    bb = BlockBuilder(rest)     # names and de-duplication only (equal groups share a program)
    fused: dict[str, G.GlobalVar] = {}
    callees: set[str] = set()
    out = rest
    for name, func in primitives.items():
        prim = fuse_primitive(mod, name, func)
        fused[name] = gvar = bb.add_func(prim, name)
        if gvar.name_hint not in out:
            out = out.with_function(gvar.name_hint, prim)
        callees |= _called_programs(func)
    for name, func in out.graph_functions().items():
        new = _ReplaceCalls(fused).visit_expr(func)
        if new is not func:
            out = out.with_function(name, new)
    still = set()
    for func in out.graph_functions().values():
        still |= _called_programs(func)
    for name in callees - still:
        if name in out and name not in {g.name_hint for g in fused.values()}:
            out = out.without(name)
    return out


def is_mergeable(mod: IRModule, func: G.Function) -> bool:
    """Whether a Primitive function is what FuseOps makes: one dataflow block of
    call_tir bindings (without tir_vars) of tensor programs. Others (e.g. rewritten
    by PlanMemory into explicit allocations) stay graph functions that the VM calls."""
    blocks = func.body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], G.DataflowBlock):
        return False
    for b in blocks[0].bindings:
        call = b.value
        if not (isinstance(b, G.VarBinding) and isinstance(call, G.Call) and isinstance(call.op, G.Op)
                and call.op.name == "relax.call_tir" and len(call.args) == 2
                and isinstance(call.args[1], G.Tuple)
                and isinstance(mod[call.args[0].name_hint] if call.args[0].name_hint in mod else None,
                               T.PrimFunc)):
            return False
    return True


def _called_programs(func: G.Function) -> set[str]:
    names: set[str] = set()
    post_order_visit(func, lambda n: names.add(n.name_hint) if isinstance(n, G.GlobalVar) else None)
    return names


class _ReplaceCalls(ExprMutator):
    def __init__(self, fused: dict[str, G.GlobalVar]):
        super().__init__()
        self.fused = fused

    def visit_call(self, call: G.Call) -> G.Expr:
        call = super().visit_call(call)
        if isinstance(call.op, G.GlobalVar) and call.op.name_hint in self.fused:
            from ..op.builtin import call_tir
            sinfo = call.struct_info
            out = sinfo if isinstance(sinfo, TensorStructInfo) else list(sinfo.fields)
            return call_tir(self.fused[call.op.name_hint], list(call.args), out)
        return call


# -- merging --------------------------------------------------------------------------------

def fuse_primitive(mod: IRModule, name: str, func: G.Function) -> T.PrimFunc:
    """The one tensor program that computes Primitive function `func` (see the module
    docstring); raises FuseTIRError naming what it cannot merge."""
    where = f"FuseTIR: function {name!r}"
    size: dict[E.Var, E.PrimExpr] = {}      # graph size var -> the program's var
    for p in func.params:
        for d in _tensor(p, where).shape:
            if isinstance(d, E.Var) and d not in size:
                size[d] = E.Var(d.name, d.dtype)

    def shape_of(s: TensorStructInfo):
        return tuple(arith.substitute(d, size) for d in s.shape)

    names: set[str] = set()

    def new_buffer(var: G.Var, name: Optional[str] = None) -> T.Buffer:
        s = _tensor(var, where)
        return T.Buffer(_unique(name or var.name_hint, names), shape_of(s), s.dtype)

    buf: dict[G.Var, T.Buffer] = {p: new_buffer(p) for p in func.params}
    ret = func.body.body
    outputs = list(ret.fields) if isinstance(ret, G.Tuple) else [ret]
    allocs: list[T.Buffer] = []
    stages: list[T.Stmt] = []
    for block in func.body.blocks:
        for b in block.bindings:
            call = b.value
            if not (isinstance(b, G.VarBinding) and isinstance(call, G.Call)
                    and isinstance(call.op, G.Op) and call.op.name == "relax.call_tir"
                    and len(call.args) == 2 and isinstance(call.args[1], G.Tuple)):
                raise FuseTIRError(f"{where}: binding {b.var.name_hint!r} is not a call_tir "
                                   "without tir_vars; a Primitive function holds only those")
            callee = mod[call.args[0].name_hint]
            if not isinstance(callee, T.PrimFunc):
                raise FuseTIRError(f"{where}: {call.args[0].name_hint!r} is not a tensor program")
            out = new_buffer(b.var, callee.params[-1].name if callee.params else None)
            buf[b.var] = out
            if b.var not in outputs:
                allocs.append(out)
            args = [buf[a] if a in buf else _missing(where, a) for a in call.args[1].fields]
            new_stages, new_allocs = _instantiate(callee, args + [out], names,
                                                  f"{where}, {call.args[0].name_hint!r}")
            stages.extend(new_stages)
            allocs.extend(new_allocs)
    out_bufs = [buf[o] if o in buf else _missing(where, o) for o in outputs]
    local = {id(b) for b in allocs}
    stages, allocs = inline_injective_stages(stages, allocs, local)
    body: T.Stmt = stages[0] if len(stages) == 1 else T.SeqStmt(tuple(stages))
    root = T.BlockRealize((), _TRUE, T.Block("root", (), body, alloc_buffers=tuple(allocs)))
    params = tuple(buf[p] for p in func.params) + tuple(out_bufs)
    return T.PrimFunc(params, root)


def _tensor(var: G.Expr, where: str) -> TensorStructInfo:
    s = var.struct_info
    if not isinstance(s, TensorStructInfo) or s.shape is None:
        raise FuseTIRError(f"{where}: {getattr(var, 'name_hint', var)!r} is not a tensor of "
                           f"known shape ({s}); only such values can be buffers")
    return s


def _missing(where: str, a: G.Expr):
    raise FuseTIRError(f"{where}: call_tir argument {getattr(a, 'name_hint', a)!r} is neither a "
                       "parameter nor a value computed earlier in the function")


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 0
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _instantiate(callee: T.PrimFunc, actual: list[T.Buffer], names: set[str],
                 where: str) -> tuple[list[T.Stmt], list[T.Buffer]]:
    """The callee's top-level statements and root allocations, rewritten onto `actual`
    buffers (its params in order) with its size vars unified and fresh local vars."""
    formal = [p for p in callee.params if isinstance(p, T.Buffer)]
    if len(formal) != len(callee.params) or len(formal) != len(actual):
        raise FuseTIRError(f"{where}: the program takes {len(callee.params)} parameters "
                           f"({len(callee.params) - len(formal)} scalars); the call passes "
                           f"{len(actual)} buffers")
    vmap: dict[int, E.PrimExpr] = {}
    for f, a in zip(formal, actual):
        if len(f.shape) != len(a.shape) or f.dtype != a.dtype:
            raise FuseTIRError(f"{where}: parameter {f.name!r} is {len(f.shape)}-d {f.dtype}, "
                               f"the argument is {len(a.shape)}-d {a.dtype}")
        for fd, ad in zip(f.shape, a.shape):
            if isinstance(fd, E.Var) and id(fd) not in vmap:
                vmap[id(fd)] = ad
    copier = _Copier(vmap, {id(f): a for f, a in zip(formal, actual)}, names)
    allocs, stmts = root_parts(callee)
    new_allocs = [copier.visit_buffer(b) for b in allocs]
    return [copier.visit_stmt(s) for s in stmts], new_allocs


class _Copier(StmtExprMutator):
    """A copy of a callee's statements: size vars substituted, buffers mapped (local
    ones copied with substituted shapes and unique names), loop/block/let vars fresh."""

    def __init__(self, vmap: dict[int, E.PrimExpr], bmap: dict[int, T.Buffer], names: set[str]):
        self.vmap = vmap
        self.bmap = bmap
        self.names = names

    def visit_var(self, v: E.Var) -> E.PrimExpr:
        return self.vmap.get(id(v), v)

    def visit_buffer(self, b: T.Buffer) -> T.Buffer:
        new = self.bmap.get(id(b))
        if new is None:
            shape = tuple(substitute_vars(d, self.vmap) for d in b.shape)
            new = T.Buffer(_unique(b.name, self.names), shape, b.dtype, b.scope)
            self.bmap[id(b)] = new
        return new

    def _fresh(self, v: E.Var) -> None:
        self.vmap[id(v)] = E.Var(v.name, v.dtype)

    def visit_for(self, s: T.For) -> T.Stmt:
        self._fresh(s.loop_var)
        return self.generic_visit(s)

    def visit_block(self, s: T.Block) -> T.Stmt:
        for iv in s.iter_vars:
            self._fresh(iv.var)
        return self.generic_visit(s)

    def visit_let_stmt(self, s: T.LetStmt) -> T.Stmt:
        self._fresh(s.var)
        return self.generic_visit(s)


# -- inlining --------------------------------------------------------------------------------

def _injective_stage(stmt: T.Stmt) -> Optional[tuple[T.Buffer, tuple[E.Var, ...], E.PrimExpr]]:
    """(buffer, iterators, value) when `stmt` is `for i...: block: B[v...] = value(v...)`
    over B's whole domain, with spatial iterators bound to the loops in order and no
    read of B itself; else None."""
    loops = []
    while isinstance(stmt, T.For):
        loops.append(stmt)
        stmt = stmt.body
    if not isinstance(stmt, T.BlockRealize):
        return None
    block = stmt.block
    store = block.body
    if block.init is not None or block.alloc_buffers or not isinstance(store, T.BufferStore):
        return None
    ivs = block.iter_vars
    if len(ivs) != len(loops) or any(iv.kind != "S" for iv in ivs):
        return None
    if not (isinstance(stmt.predicate, E.IntImm) and stmt.predicate.value == 1):
        return None
    for iv, value, loop, dim in zip(ivs, stmt.iter_values, loops, store.buffer.shape):
        if value is not loop.loop_var or not _is_zero(loop.min) or not _is_zero(iv.dom.min):
            return None
        if not (arith.prove_equal(loop.extent, dim) and arith.prove_equal(iv.dom.extent, dim)):
            return None
    if len(store.indices) != len(ivs) or any(i is not iv.var for i, iv in zip(store.indices, ivs)):
        return None
    if any(isinstance(n, T.BufferLoad) and n.buffer is store.buffer for n in walk(store.value)):
        return None
    return store.buffer, tuple(iv.var for iv in ivs), store.value


def _is_zero(e: E.PrimExpr) -> bool:
    return isinstance(e, E.IntImm) and e.value == 0


def inline_injective_stages(stages: list[T.Stmt], allocs: list[T.Buffer],
                            local: set[int]) -> tuple[list[T.Stmt], list[T.Buffer]]:
    """Inline every stage that computes a local buffer elementwise/injectively into the
    stages that read it (see `_injective_stage`); returns the remaining stages and
    allocations. A buffer written by more than one stage is left alone."""
    stages = list(stages)
    k = 0
    while k < len(stages):
        found = _injective_stage(stages[k])
        if found is None or id(found[0]) not in local or _writers(stages, found[0]) != 1 \
                or _inlined_size(stages[k + 1:], found) > MAX_INLINED_NODES:
            k += 1
            continue
        buffer, ivars, value = found

        def pre(n, buffer=buffer, ivars=ivars, value=value):
            if isinstance(n, T.BufferLoad) and n.buffer is buffer:
                idx = tuple(rewrite(i, pre) for i in n.indices)
                return substitute_vars(value, {id(v): i for v, i in zip(ivars, idx)})
            return None

        stages = stages[:k] + [rewrite(s, pre) for s in stages[k + 1:]]
        allocs = [b for b in allocs if b is not buffer]
    return stages, allocs


def _inlined_size(consumers: list[T.Stmt], found) -> int:
    """Expression nodes the inlining would add: the value's size times its readers'
    loads (a chain whose stages each read the previous one twice would grow as 2^k)."""
    buffer, _, value = found
    size = sum(1 for _ in walk(value))
    loads = sum(1 for s in consumers for n in walk(s) if isinstance(n, T.BufferLoad) and n.buffer is buffer)
    return size * loads


def _writers(stages: list[T.Stmt], buffer: T.Buffer) -> int:
    count = 0
    for s in stages:
        if any(isinstance(n, T.BufferStore) and n.buffer is buffer for n in walk(s)):
            count += 1
    return count
