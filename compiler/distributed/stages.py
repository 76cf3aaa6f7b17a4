"""Pipeline stages: a graph function whose tensors live on several device meshes.

A function that names two meshes (`I.module_global_infos({"mesh": [mesh A, mesh B]})`)
runs as a pipeline: a binding that names a mesh other than the current one (an
annotation or conversion onto it, a DTensor type on it, or an operand parameter typed
on it) starts a new stage on that mesh; the bindings before the first such mention
belong to the first mesh named. A parameter lives on the mesh of its type, else on the
first stage that reads it; a runtime object (`R.Object`: the KV cache, one per worker)
is a parameter of every stage that reads it.

PropagateSharding solves each stage on its own mesh (solve.py, rewrite.py, as for a
one-mesh function) and joins them: a value made on one stage and read on another
crosses the boundary once, as `R.dist.redistribute(x, "mesh[1]", "R")` from whatever
placement it has on its own mesh (LowerToLocalView: reduce or gather on the sending
mesh, a point-to-point transfer, then a slice where the receiving stage wants it
sharded, as an ordinary conversion on the receiving mesh).

Errors (ShardingError) name the meshes or the variable: meshes whose devices overlap,
a mesh used again after another stage, a tuple that crosses a boundary whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import DTensorStructInfo, ObjectStructInfo, TupleStructInfo
from ..ir.visitor import post_order_visit
from ..op import sharding as rules
from .dtensor import DIST_OPS, dtensors
from .mesh import lookup_mesh

CROSS = "relax.dist.redistribute"


@dataclass
class Stage:
    """One stage of a pipelined function: its mesh and the bindings it runs."""
    mesh_ref: str
    bindings: list = field(default_factory=list)
    params: list = field(default_factory=list)        # original parameters it reads
    incoming: list = field(default_factory=list)      # values of earlier stages it reads
    outgoing: list = field(default_factory=list)      # its values later stages read


def _refs_of(sinfo: Any) -> list[str]:
    return [d.device_mesh for d in dtensors(sinfo)]


def _op_name(value: Any) -> str:
    return value.op.name if isinstance(value, G.Call) and isinstance(value.op, G.Op) else ""


def mesh_refs(func: G.Function) -> list[str]:
    """The meshes `func` names, in the order its bindings first name them (the order of
    its stages), then those only its parameters or its return type name. (Parameters
    come in any order: a model's `last`, read by the last stage, precedes the weights.)"""
    refs: list[str] = []

    def add(rs):
        refs.extend(r for r in rs if r not in refs)

    for blk in func.body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, G.Call):     # an operand parameter typed on a mesh names it here
                add([r for a in b.value.args if isinstance(a, G.Var) and a in func.params
                     for r in _refs_of(a.struct_info)])
            add(_refs_of(b.var.struct_info))
            if _op_name(b.value).startswith(DIST_OPS):
                add([b.value.attrs["device_mesh"]])
    for p in func.params:
        add(_refs_of(p.struct_info))
    add(_refs_of(func.ret_struct_info))
    return refs


def is_pipelined(func: G.Function) -> bool:
    """Whether `func` places tensors on more than one mesh (a pipeline of stages)."""
    return len(mesh_refs(func)) > 1


def check_disjoint(mod: IRModule, name: str, refs: list[str]) -> None:
    """ShardingError unless the meshes `refs` have no device in common."""
    meshes = {r: lookup_mesh(mod.global_infos, r) for r in refs}
    for i, a in enumerate(refs):
        for b in refs[i + 1:]:
            common = sorted(set(meshes[a].device_ids) & set(meshes[b].device_ids))
            if common:
                raise ShardingError(
                    f"function {name!r}: pipeline stages on {a} (devices {list(meshes[a].device_ids)}) "
                    f"and {b} (devices {list(meshes[b].device_ids)}) share devices {common}; the "
                    f"meshes of a pipeline must be disjoint (declare each stage's mesh on its own "
                    f"devices, e.g. I.Range(0, 2) and I.Range(2, 4))")


def _mentions(b: G.Binding, param_home: dict) -> list[str]:
    refs = list(_refs_of(b.var.struct_info))
    if _op_name(b.value).startswith(DIST_OPS):
        refs.append(b.value.attrs["device_mesh"])
    if isinstance(b.value, G.Call):
        for a in b.value.args:
            if isinstance(a, G.Var) and a in param_home and _refs_of(a.struct_info):
                refs.append(param_home[a])
    out: list[str] = []
    for r in refs:
        if r not in out:
            out.append(r)
    return out


def split(mod: IRModule, name: str, func: G.Function) -> list[Stage]:
    """The stages of pipelined `func` (flattened: operands are variables), in order."""
    refs = mesh_refs(func)
    check_disjoint(mod, name, refs)
    typed = {p: _refs_of(p.struct_info)[0] for p in func.params if _refs_of(p.struct_info)}
    bindings = [b for blk in func.body.blocks for b in blk.bindings]
    stages: list[Stage] = []
    pending: list = []          # bindings before the first mention of a mesh
    for b in bindings:
        ms = _mentions(b, typed)
        cur = stages[-1].mesh_ref if stages else None
        new = [m for m in ms if m != cur]
        if len(new) > 1 or (new and cur is None and len(ms) > 1):
            raise ShardingError(f"function {name!r}, variable {b.var.name_hint!r}: its binding names "
                                f"meshes {ms}; a binding belongs to one pipeline stage (convert the "
                                f"operands onto one mesh first with R.dist.redistribute)")
        if new:
            if any(s.mesh_ref == new[0] for s in stages):
                raise ShardingError(
                    f"function {name!r}, variable {b.var.name_hint!r}: {new[0]} is used again after "
                    f"the stage on {cur}; each mesh holds one stage, in program order "
                    f"({' -> '.join(s.mesh_ref for s in stages)} so far)")
            stages.append(Stage(new[0]))
            stages[-1].bindings.extend(pending)
            pending = []
        (stages[-1].bindings if stages else pending).append(b)
    if not stages:
        stages.append(Stage(refs[0]))
    stages[0].bindings[:0] = pending
    _connect(name, func, stages, typed)
    return stages


def _used_vars(node: Any) -> list[G.Var]:
    found: list[G.Var] = []

    def visit(n):
        if isinstance(n, G.Var) and n not in found:
            found.append(n)

    post_order_visit(node, visit)
    return found


def _sub(e: Any, m: dict) -> Any:
    """Graph expression `e` (flattened: variables, tuples, field reads, calls on them)
    with the variables in `m` replaced."""
    if isinstance(e, G.Var):
        return m.get(e, e)
    if isinstance(e, G.Tuple):
        fields = tuple(_sub(f, m) for f in e.fields)
        return G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
    if isinstance(e, G.TupleGetItem):
        return replace(e, tuple_value=_sub(e.tuple_value, m))
    if isinstance(e, G.Call):
        return replace(e, args=tuple(_sub(a, m) for a in e.args))
    return e


def _connect(name: str, func: G.Function, stages: list[Stage], typed: dict) -> None:
    """Which values each stage reads from parameters and from earlier stages."""
    home: dict[G.Var, int] = {}
    params = set(func.params)
    ref_index = {s.mesh_ref: i for i, s in enumerate(stages)}
    for p, r in typed.items():
        if r not in ref_index:
            raise ShardingError(f"function {name!r}: parameter {p.name_hint!r} is placed on {r}, which no "
                                f"binding uses")
        home[p] = ref_index[r]

    def read(i: int, v: G.Var, what: str) -> None:
        if v in params and isinstance(v.struct_info, ObjectStructInfo):
            # a runtime object (the KV cache) is each worker's own: every stage that
            # reads it takes it as its own parameter; it never crosses
            if v not in stages[i].params:
                stages[i].params.append(v)
            return
        if v in params and v not in home:
            home[v] = i
        if v not in home:
            return
        src = home[v]
        if src == i:
            if v in params and v not in stages[i].params:
                stages[i].params.append(v)
            return
        if src > i:
            raise ShardingError(f"function {name!r}: {what} reads {v.name_hint!r}, placed on "
                                f"{stages[src].mesh_ref}, in the earlier stage on {stages[i].mesh_ref}; "
                                f"values flow forward through a pipeline")
        if isinstance(v.struct_info, TupleStructInfo):
            raise ShardingError(
                f"function {name!r}: tuple {v.name_hint!r} made on {stages[src].mesh_ref} is read whole "
                f"by the stage on {stages[i].mesh_ref} ({what}); a stage boundary cannot split a "
                f"tuple: take its fields out (t[0], ...) in the stage that makes it")
        if v in params and v not in stages[src].params:
            stages[src].params.append(v)
        if v not in stages[src].outgoing:
            stages[src].outgoing.append(v)
        if v not in stages[i].incoming:
            stages[i].incoming.append(v)

    for i, s in enumerate(stages):
        for b in s.bindings:
            for v in _used_vars(b.value):
                read(i, v, f"variable {b.var.name_hint!r}")
            home[b.var] = i
    last = len(stages) - 1
    for v in _used_vars(func.body.body):
        read(last, v, "the return value")
    order = {p: k for k, p in enumerate(func.params)}
    for s in stages:
        s.params.sort(key=order.__getitem__)


def received_name(v: G.Var, stage: int) -> str:
    return f"{v.name_hint}_s{stage}"


def stage_function(func: G.Function, stages: list[Stage], i: int) -> tuple[G.Function, dict]:
    """Stage `i` as a one-mesh function: its parameters, then one parameter per value it
    receives (replicated on its mesh); it returns the values later stages read (a tuple)
    or, for the last stage, `func`'s result. Also the map received value -> parameter."""
    s = stages[i]
    recv = {}
    for v in s.incoming:
        t = rules.tensor_of(v.struct_info)
        recv[v] = G.Var(received_name(v, i), DTensorStructInfo(t, s.mesh_ref, "R"))

    bindings = [replace(b, value=_sub(b.value, recv)) for b in s.bindings]
    if i == len(stages) - 1:
        body, ret = _sub(func.body.body, recv), func.ret_struct_info
    else:
        body = G.Tuple(tuple(s.outgoing), TupleStructInfo(tuple(v.struct_info for v in s.outgoing)))
        ret = body.struct_info
    params = tuple(p for p in func.params if p in s.params) + tuple(recv.values())
    block = G.DataflowBlock(tuple(bindings))
    f = G.Function(params, G.SeqExpr((block,), body, ret), ret, func.attrs, func.is_pure)
    return f, recv


def join(func: G.Function, stages: list[Stage], subs: list[G.Function], recvs: list[dict]) -> G.Function:
    """One function from the placed stage functions `subs`: each stage's bindings, the
    values it receives bound to `R.dist.redistribute(x, <its mesh>, "R")` of their
    placed value on the sending stage; parameters in `func`'s order."""
    from ..op.dist import redistribute
    placed: dict = {}           # original value -> its placed version (a stage's result field)
    params_new: dict = {}
    shared: dict = {}           # a later stage's version of a parameter several stages read
    for i, (s, f) in enumerate(zip(stages, subs)):
        n = len(s.params)
        for old, new in zip(s.params, f.params[:n]):
            if old in params_new:
                shared[new] = params_new[old]
                continue
            params_new[old] = new
            placed[old] = new
        if i < len(stages) - 1:
            for v, e in zip(s.outgoing, f.body.body.fields):
                placed[v] = e
    bindings: list = []
    for i, (s, f) in enumerate(zip(stages, subs)):
        n = len(s.params)
        for v, pv in zip(recvs[i], f.params[n:]):
            call = redistribute(placed[v], s.mesh_ref, "R")
            bindings.append(G.VarBinding(G.DataflowVar(pv.name_hint, call.struct_info), call))
            # the stage's bindings read the parameter; bind it as this variable instead
            placed[pv] = bindings[-1].var
        for blk in f.body.blocks:
            bindings.extend(blk.bindings)
    swap = {pv: placed[pv] for f, s in zip(subs, stages) for pv in f.params[len(s.params):]}
    swap.update(shared)
    body = subs[-1].body.body
    returned = set(_used_vars(body))
    out = []
    used = {p.name_hint for p in func.params}
    for b in bindings:
        b = replace(b, value=_sub(b.value, swap))
        name = _fresh(b.var.name_hint, used)
        kind = type(b.var) if b.var in returned else G.DataflowVar
        if name != b.var.name_hint or kind is not type(b.var):
            nv = kind(name, b.var.struct_info)
            swap[b.var] = nv
            b = replace(b, var=nv)
        out.append(b)
    body = _sub(body, swap)
    params = tuple(params_new.get(p, p) for p in func.params)
    seq = G.SeqExpr((G.DataflowBlock(tuple(out)),), body, body.struct_info)
    return replace(func, params=params, body=seq, ret_struct_info=subs[-1].ret_struct_info, struct_info=None)


def _fresh(name: str, used: set) -> str:
    """`name`, or where a stage before took it (each stage's conversions are numbered
    from rd0), the next free one of its stem (rd0 -> rd1)."""
    if name not in used:
        used.add(name)
        return name
    stem = name.rstrip("0123456789")
    i = 0
    while f"{stem}{i}" in used:
        i += 1
    used.add(f"{stem}{i}")
    return f"{stem}{i}"


def propagate_stages(mod: IRModule, name: str, func: G.Function, nominal: int) -> G.Function:
    """PropagateSharding of a pipelined function (see the module docstring); `func` is
    flattened (propagate.flatten_calls)."""
    from .rewrite import rewrite
    from .solve import solve
    if any(not isinstance(blk, G.DataflowBlock) for blk in func.body.blocks):
        raise ShardingError(f"function {name!r}: a pipelined function keeps its bindings in dataflow "
                            f"blocks (with R.dataflow():)")
    stages = split(mod, name, func)
    subs, recvs = [], []
    for i in range(len(stages)):
        f, recv = stage_function(func, stages, i)
        subs.append(rewrite(name, f, solve(mod, name, f, nominal)))
        recvs.append(recv)
    return join(func, stages, subs, recvs)


def stage_of_vars(func: G.Function) -> dict:
    """Placed function -> name of each variable -> its mesh reference."""
    out = {}
    for p in func.params:
        rs = _refs_of(p.struct_info)
        if rs:
            out[p.name_hint] = rs[0]
    for blk in func.body.blocks:
        for b in blk.bindings:
            rs = _refs_of(b.var.struct_info)
            if rs:
                out[b.var.name_hint] = rs[0]
    return out


def is_cross(value: Any) -> bool:
    """Whether `value` is a redistribute from one mesh onto another (a stage boundary)."""
    if _op_name(value) != CROSS:
        return False
    s = value.args[0].struct_info
    return isinstance(s, DTensorStructInfo) and s.device_mesh != value.attrs["device_mesh"]


__all__ = ["Stage", "is_cross", "is_pipelined", "mesh_refs", "propagate_stages", "split", "stage_of_vars"]
