"""FuseOps: group the tensor-program calls of each dataflow block into fusible groups.

Why: after LegalizeOps every operator is one `R.call_tir`, and each call reads its
inputs from memory and writes its output back. Elementwise chains, a normalisation
with the residual add before it, a matmul with its epilogue: each group can run as
one kernel that keeps intermediates in registers or cache (FuseTIR makes the kernel).

Grouping reads each callee's attr `op_pattern` (compiler.op.registry.OpPattern;
no attr means OPAQUE). A legalized OPAQUE program made only of loop nests over blocks
with at least one reduction (softmax, rms_norm, layer_norm) counts as COMM_REDUCE.
Bindings are visited in order; a call joins the group of a producer of one of its
arguments (in the same dataflow block) when the kinds allow it:

    producer group   consumer          fused group
    <= INJECTIVE     <= INJECTIVE      max of both      (elementwise / injective chains)
    COMM_REDUCE,     <= BROADCAST      producer's kind  (epilogue of a reduction / matmul)
    OUT_EWISE_FUSABLE
    <= INJECTIVE     COMM_REDUCE       COMM_REDUCE      (add, then the sums of rms_norm)

and the merge creates no cycle (no value outside the group both depends on the group
and feeds it). A group of two or more calls becomes a graph function with attr
`{"Primitive": 1}`, named after its programs ("fused_add_rms_norm"); a value of the
group read outside it is one of its outputs (a tuple when several). Calls with
`tir_vars`, tuple outputs or tuple-variable arguments are left unfused.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import replace
from typing import Optional

from ..ir import expr as E
from ..ir import graph as G
from ..ir import tir as T
from ..ir.builder import BlockBuilder, function_struct_info
from ..ir.module import IRModule
from ..ir.struct_info import TensorStructInfo, TupleStructInfo
from ..ir.struct_info_ops import (derive_call_ret_struct_info, struct_info_free_vars,
                                  substitute_struct_info)
from ..ir.visitor import post_order_visit
from ..op.registry import BROADCAST, COMM_REDUCE, INJECTIVE, OPAQUE, OUT_EWISE_FUSABLE, OpPattern

__all__ = ["FuseOps", "op_pattern", "MAX_NAME_PARTS"]

MAX_NAME_PARTS = 6      # program names joined into a group's name, at most

_CALL_TIR = "relax.call_tir"


def FuseOps(mod: IRModule) -> IRModule:
    """`mod` with the fusible calls of every graph function grouped into Primitive functions."""
    bb = BlockBuilder(mod)
    changed = {}
    patterns: dict[str, OpPattern] = {}     # program name -> its kind, computed once
    for name, func in mod.graph_functions().items():
        if func.attrs.get("Primitive"):
            continue
        new = _fuse_function(mod, bb, func, patterns)
        if new is not func:
            changed[name] = new
    for name, new in changed.items():
        bb.update_func(name, new)
    return bb.get()


def op_pattern(func: T.PrimFunc) -> OpPattern:
    """The fusion kind of a tensor program (see the module docstring)."""
    attr = func.attrs.get("op_pattern")
    if attr is None:
        return OPAQUE
    pattern = OpPattern(int(attr))
    if pattern == OPAQUE and _is_block_program(func) and any(
            iv.kind == "R" for s in stages_of(func) for iv in s.block.iter_vars):
        return COMM_REDUCE
    return pattern


def root_parts(func: T.PrimFunc) -> tuple[tuple[T.Buffer, ...], list[T.Stmt]]:
    """(intermediate buffers of the root block, its top-level statements)."""
    body = func.body
    allocs: tuple[T.Buffer, ...] = ()
    if isinstance(body, T.BlockRealize) and not body.block.iter_vars:
        allocs, body = body.block.alloc_buffers, body.block.body
    return allocs, list(body.stmts) if isinstance(body, T.SeqStmt) else [body]


def stages_of(func: T.PrimFunc) -> list[T.BlockRealize]:
    """The leaf block of each top-level loop nest (empty list when a nest has another shape)."""
    out = []
    for stmt in root_parts(func)[1]:
        while isinstance(stmt, T.For):
            stmt = stmt.body
        if not isinstance(stmt, T.BlockRealize):
            return []
        out.append(stmt)
    return out


def _is_block_program(func: T.PrimFunc) -> bool:
    """Only buffer params, and every top-level statement a loop nest over one simple block."""
    if any(not isinstance(p, T.Buffer) for p in func.params):
        return False
    stmts = root_parts(func)[1]
    stages = stages_of(func)
    return len(stages) == len(stmts) and all(isinstance(s.block.body, T.BufferStore) for s in stages)


# -- grouping ------------------------------------------------------------------------------

def _merged_kind(producer: OpPattern, consumer: OpPattern) -> Optional[OpPattern]:
    """The kind of a group made of a producer group and a consumer group, or None."""
    if producer <= INJECTIVE and consumer <= INJECTIVE:
        return max(producer, consumer)                       # elementwise / injective chain
    if producer in (COMM_REDUCE, OUT_EWISE_FUSABLE) and consumer <= BROADCAST:
        return producer                                      # epilogue
    if producer <= INJECTIVE and consumer == COMM_REDUCE:
        return COMM_REDUCE                                   # prologue of a reduction
    return None


class _Groups:
    """Union-find over the bindings of one block, with each group's kind."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.kind: dict[int, OpPattern] = {}
        self.members: dict[int, list[int]] = {i: [i] for i in range(n)}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, kind: OpPattern) -> None:
        ra, rb = self.find(a), self.find(b)
        self.parent[rb] = ra
        self.kind[ra] = kind
        self.members[ra] = sorted(self.members[ra] + self.members.pop(rb))


def _used_vars(value: G.Expr) -> list[G.Var]:
    out: list[G.Var] = []
    post_order_visit(value, lambda n: out.append(n) if isinstance(n, G.Var) else None)
    return out


def _fusible(mod: IRModule, binding: G.Binding, patterns: dict[str, OpPattern]
             ) -> Optional[tuple[OpPattern, str]]:
    """(pattern, callee name) of a call_tir binding that may be fused, else None."""
    if not isinstance(binding, G.VarBinding):
        return None
    call = binding.value
    if not (isinstance(call, G.Call) and isinstance(call.op, G.Op) and call.op.name == _CALL_TIR):
        return None
    if len(call.args) != 2 or not isinstance(call.args[1], G.Tuple):
        return None
    gvar = call.args[0]
    if not isinstance(call.struct_info, TensorStructInfo) or call.struct_info.shape is None:
        return None
    if any(not isinstance(f.struct_info, TensorStructInfo) or f.struct_info.shape is None
           for f in call.args[1].fields):
        return None
    callee = mod[gvar.name_hint] if gvar.name_hint in mod else None
    if not isinstance(callee, T.PrimFunc):
        return None
    if gvar.name_hint not in patterns:
        patterns[gvar.name_hint] = op_pattern(callee)
    pattern = patterns[gvar.name_hint]
    return (pattern, gvar.name_hint) if pattern <= OUT_EWISE_FUSABLE else None


def _group_block(mod: IRModule, bindings: tuple[G.Binding, ...], uses: list[list[G.Var]],
                 patterns: dict[str, OpPattern]) -> tuple[_Groups, list]:
    n = len(bindings)
    info = [_fusible(mod, b, patterns) for b in bindings]
    producer = {b.var: i for i, b in enumerate(bindings)}
    deps = [sorted({producer[v] for v in used if v in producer}) for used in uses]
    groups = _Groups(n)
    for i, fi in enumerate(info):
        if fi is not None:
            groups.kind[i] = fi[0]
    for i, fi in enumerate(info):
        if fi is None:
            continue
        for p in deps[i]:
            if info[p] is None:
                continue
            rp, ri = groups.find(p), groups.find(i)
            if rp == ri:
                continue
            kind = _merged_kind(groups.kind[rp], groups.kind[ri])
            if kind is None or _creates_cycle(groups, deps, rp, ri, i):
                continue
            groups.union(rp, ri, kind)
    return groups, deps


def _creates_cycle(groups: _Groups, deps: list[list[int]], ra: int, rb: int, last: int) -> bool:
    """Whether merging groups `ra` and `rb` (members all at or before `last`) makes a
    value outside the union both depend on it and feed it."""
    members = sorted(groups.members[ra] + groups.members[rb])
    inside = set(members)
    tainted: set[int] = set()
    for k in range(members[0], last + 1):
        touches = any(d in inside or d in tainted for d in deps[k])
        if k in inside:
            if any(d in tainted for d in deps[k]):
                return True
        elif touches:
            tainted.add(k)
    return False


# -- rewriting ------------------------------------------------------------------------------

def _fuse_function(mod: IRModule, bb: BlockBuilder, func: G.Function,
                   patterns: dict[str, OpPattern]) -> G.Function:
    blocks = list(func.body.blocks)
    new_blocks = []
    changed = False
    for bi, block in enumerate(blocks):
        if not isinstance(block, G.DataflowBlock) or len(block.bindings) < 2:
            new_blocks.append(block)
            continue
        outside: set[G.Var] = set(_used_vars(func.body.body))
        for other in blocks[bi + 1:]:
            for b in other.bindings:
                outside.update(_used_vars(b.value))
        new = _fuse_block(mod, bb, block, outside, patterns)
        changed |= new is not block
        new_blocks.append(new)
    if not changed:
        return func
    return replace(func, body=replace(func.body, blocks=tuple(new_blocks)))


def _fuse_block(mod: IRModule, bb: BlockBuilder, block: G.DataflowBlock, outside: set[G.Var],
                patterns: dict[str, OpPattern]) -> G.DataflowBlock:
    bindings = block.bindings
    uses = [_used_vars(b.value) for b in bindings]
    groups, deps = _group_block(mod, bindings, uses, patterns)
    users: dict[G.Var, set[int]] = {}       # var -> indices of the bindings that read it
    for k, used in enumerate(uses):
        for v in used:
            users.setdefault(v, set()).add(k)
    members: dict[int, list[int]] = {}
    for i in range(len(bindings)):
        members.setdefault(groups.find(i), []).append(i)
    # Nodes of the new block: a fused group (>= 2 calls) or one original binding.
    nodes: list[list[int]] = []
    emitted: dict[int, list[G.Binding]] = {}
    for root, idx in members.items():
        if len(idx) >= 2:
            made = _make_group(bb, bindings, idx, users, outside)
            if made is not None:
                nodes.append(idx)
                emitted[idx[0]] = made
                continue
        nodes.extend([i] for i in idx)
    if not emitted:
        return block
    order = _topo_order(nodes, deps)
    out: list[G.Binding] = []
    for node in order:
        out.extend(emitted[node[0]] if node[0] in emitted else [bindings[node[0]]])
    return replace(block, bindings=tuple(out))


def _topo_order(nodes: list[list[int]], deps: list[list[int]]) -> list[list[int]]:
    """Nodes ordered so that producers come first, otherwise by first binding index."""
    owner = {i: k for k, node in enumerate(nodes) for i in node}
    preds = [{owner[d] for i in node for d in deps[i]} - {k} for k, node in enumerate(nodes)]
    succs: list[list[int]] = [[] for _ in nodes]
    for k, ps in enumerate(preds):
        for p in ps:
            succs[p].append(k)
    count = [len(ps) for ps in preds]
    ready = [(nodes[k][0], k) for k in range(len(nodes)) if count[k] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, k = heapq.heappop(ready)
        out.append(nodes[k])
        for s in succs[k]:
            count[s] -= 1
            if count[s] == 0:
                heapq.heappush(ready, (nodes[s][0], s))
    assert len(out) == len(nodes), "FuseOps: grouping produced a cycle"
    return out


def _make_group(bb: BlockBuilder, bindings, idx: list[int], users: dict[G.Var, set[int]],
                outside: set[G.Var]) -> Optional[list[G.Binding]]:
    """The bindings that replace group `idx` in the block (a call of a new Primitive
    function, then one TupleGetItem per output when several), or None when the
    function's symbolic sizes could not all be bound by its parameters."""
    inside = set(idx)
    defined = {bindings[i].var for i in idx}
    outputs = [bindings[i].var for i in idx
               if users.get(bindings[i].var, set()) - inside or bindings[i].var in outside
               or not isinstance(bindings[i].var, G.DataflowVar)]
    inputs: list[G.Expr] = []
    seen: set[int] = set()
    for i in idx:
        for f in bindings[i].value.args[1].fields:
            if f in defined or id(f) in seen:
                continue
            seen.add(id(f))
            inputs.append(f)
    # Fresh symbolic sizes, bound by bare dims of the parameters.
    size_vars = struct_info_free_vars(TupleStructInfo(tuple(a.struct_info for a in inputs)))
    bare = {d for a in inputs for d in a.struct_info.shape if isinstance(d, E.Var)}
    needed = struct_info_free_vars(TupleStructInfo(tuple(bindings[i].var.struct_info for i in idx)))
    if any(v not in bare for v in size_vars + needed):
        return None
    vmap = {v: E.Var(v.name, v.dtype) for v in size_vars}

    def sinfo(s):
        return substitute_struct_info(s, vmap, simplify=False)

    remap: dict[int, G.Expr] = {}
    params = []
    for k, a in enumerate(inputs):
        name = a.name_hint if isinstance(a, G.Var) else f"c{k}"
        p = G.Var(name, sinfo(a.struct_info))
        params.append(p)
        remap[id(a)] = p
    body: list[G.Binding] = []
    names = []
    for i in idx:
        b = bindings[i]
        call = b.value
        fields = tuple(remap[id(f)] for f in call.args[1].fields)
        args = G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
        out_sinfo = sinfo(call.struct_info)
        new_call = replace(call, args=(call.args[0], args), sinfo_args=(out_sinfo,),
                           struct_info=out_sinfo)
        cls = G.Var if b.var in outputs else G.DataflowVar
        var = cls(b.var.name_hint, out_sinfo)
        remap[id(b.var)] = var
        body.append(G.VarBinding(var, new_call))
        names.append(re.sub(r"_\d+$", "", call.args[0].name_hint))
    if len(outputs) == 1:
        ret: G.Expr = remap[id(outputs[0])]
    else:
        fields = tuple(remap[id(o)] for o in outputs)
        ret = G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
    seq = G.SeqExpr((G.DataflowBlock(tuple(body)),), ret, ret.struct_info)
    func = G.Function(tuple(params), seq, ret.struct_info, G.call_attrs(Primitive=1))
    func = replace(func, struct_info=function_struct_info(func))
    gvar = bb.add_func(func, _group_name(names))
    call_sinfo = derive_call_ret_struct_info(func.struct_info, inputs, gvar.name_hint)
    call = G.Call(gvar, tuple(inputs), struct_info=call_sinfo)
    if len(outputs) == 1:
        return [G.VarBinding(outputs[0], call)]
    tup = G.DataflowVar(f"{outputs[0].name_hint}_fused", call_sinfo)
    out = [G.VarBinding(tup, call)]
    for k, o in enumerate(outputs):
        out.append(G.VarBinding(o, G.TupleGetItem(tup, k, call_sinfo.fields[k])))
    return out


def _group_name(names: list[str]) -> str:
    parts: list[str] = []
    for n in names:
        if not parts or parts[-1] != n:
            parts.append(n)
    if len(parts) > MAX_NAME_PARTS:
        parts = parts[:MAX_NAME_PARTS - 1] + [parts[-1]]
    return "fused_" + "_".join(parts)

