"""Lowering a placed pipelined function (stages.py) to one program per stage.

`main` on mesh[0] then mesh[1] becomes `main__stage0` and `main__stage1`, each a
one-mesh function that LowerToLocalView lowers as usual (its collectives carry the
stage mesh's device ids and run on that stage's sub-group). Where a value crosses to
the next stage (`y_s1 = R.dist.redistribute(y, "mesh[1]", "R")`), the sending stage
makes it replicated on its mesh (an all-reduce or all-gather there) and sends it,
`R.ccl.send(y, senders=[0, 1], receivers=[2, 3])`; the receiving stage starts with
`y_s1 = R.ccl.recv(R.shape([...]), dtype=..., senders=[0, 1], receivers=[2, 3])`.
Receiver j gets its copy from sender j mod |sending mesh| (a sender serves several
receivers when the receiving mesh is larger: `transfer_pairs`). A value with a symbolic dim (the tokens of a
step) goes with its shape first: `R.ccl.send(y, ..., with_shape=True)`, received as
`R.ccl.recv(R.shape([-1, 64]), ...)` and bound by `y_s1 = R.match_cast(y_s1_in,
R.Tensor((n, 64)))`, which defines `n` in the receiving program. A runtime object
parameter (the KV cache, each worker's own) is a parameter of every stage that reads
it. A worker runs only its stage's program (`sess.load_module` picks it); the controller records which in attr "distributed":
functions[name]["stages"] = [{function, mesh, mesh_shape, device_ids, params}] where
params are indices into the whole function's parameters.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import arith
from ..ir.expr import IntImm
from ..ir import graph as G
from ..ir.errors import ShardingError
from ..ir.module import IRModule
from ..ir.struct_info import TensorStructInfo, TupleStructInfo
from ..op import ccl
from .mesh import lookup_mesh
from .placement import Replicate
from .stages import _refs_of, _used_vars, is_cross, mesh_refs


def stage_name(name: str, i: int) -> str:
    return f"{name}__stage{i}"


def _mesh_of(v: G.Var) -> str | None:
    """The mesh of a variable's DTensor (of its fields' for a tuple: a split's parts)."""
    refs = _refs_of(v.struct_info)
    return refs[0] if refs else None


def split_placed(mod: IRModule, name: str, func: G.Function) -> tuple[dict, dict]:
    """The placed one-mesh functions of `func`'s stages, by name, and what the lowering
    needs to connect them: per stage, its mesh, parameter indices, the variables it
    receives (with their sender mesh) and the values it sends (to which mesh)."""
    from ..op.dist import redistribute
    func = _no_dataflow_vars(func)
    refs = mesh_refs(func)
    index = {r: i for i, r in enumerate(refs)}
    plans = [dict(mesh=r, params=[], incoming=[], outgoing=[], bindings=[]) for r in refs]
    for k, p in enumerate(func.params):
        m = _mesh_of(p)
        if m is not None:
            plans[index[m]]["params"].append(k)
    sent: dict = {}         # (value, sending stage) -> its replicated version there
    for blk in func.body.blocks:
        for b in blk.bindings:
            if isinstance(b, G.VarBinding) and is_cross(b.value):
                src, dst = index[_mesh_of(b.value.args[0])], index[_mesh_of(b.var)]
                u = b.value.args[0]
                if (u, src) not in sent:
                    if any(not isinstance(p, Replicate) for p in u.struct_info.placement):
                        call = redistribute(u, refs[src], "R")
                        r = G.Var(f"{u.name_hint}_r", call.struct_info)
                        plans[src]["bindings"].append(G.VarBinding(r, call))
                    else:
                        r = u
                    sent[(u, src)] = r
                plans[src]["outgoing"].append((sent[(u, src)], dst))
                plans[dst]["incoming"].append((G.Var(b.var.name_hint, b.var.struct_info), src, b.var))
                continue
            m = _mesh_of(b.var)
            if m is None:
                raise ShardingError(f"function {name!r}: variable {b.var.name_hint!r} has no mesh; "
                                    f"propagate the pipeline first (PropagateSharding)")
            plans[index[m]]["bindings"].append(b)
    unplaced = [k for k, p in enumerate(func.params) if _mesh_of(p) is None]
    for plan in plans:          # a runtime object (the KV cache): a parameter of each stage reading it
        used = {v for b in plan["bindings"] for v in _used_vars(b.value)}
        plan["params"] = sorted(plan["params"] + [k for k in unplaced if func.params[k] in used])
    functions = {}
    for i, plan in enumerate(plans):
        swap = {orig: new for new, _, orig in plan["incoming"]}
        bindings = [replace(b, value=_sub(b.value, swap)) for b in plan["bindings"]]
        params = tuple(func.params[k] for k in plan["params"]) + tuple(v for v, _, _ in plan["incoming"])
        if i == len(plans) - 1:
            body, ret = _sub(func.body.body, swap), func.ret_struct_info
        else:
            fields = tuple(dict.fromkeys(v for v, _ in plan["outgoing"]))
            body = G.Tuple(fields, TupleStructInfo(tuple(f.struct_info for f in fields)))
            ret = body.struct_info
        f = G.Function(params, G.SeqExpr((G.DataflowBlock(tuple(bindings)),), body, ret), ret,
                       func.attrs.replace(global_symbol=stage_name(name, i))
                       if "global_symbol" in func.attrs else func.attrs, False)
        functions[stage_name(name, i)] = f
    return functions, {"plans": plans, "refs": refs}


def _sub(e, m: dict):
    from .stages import _sub as sub
    return sub(e, m)


def _no_dataflow_vars(func: G.Function) -> G.Function:
    """`func` with its DataflowVars made Vars: a stage's values may be read after its
    block (by the sends)."""
    ren: dict = {}
    bindings = []
    for blk in func.body.blocks:
        for b in blk.bindings:
            b = replace(b, value=_sub(b.value, ren))
            if isinstance(b.var, G.DataflowVar):
                ren[b.var] = G.Var(b.var.name_hint, b.var.struct_info)
                b = replace(b, var=ren[b.var])
            bindings.append(b)
    body = _sub(func.body.body, ren)
    return replace(func, body=G.SeqExpr((G.BindingBlock(tuple(bindings)),), body, func.body.struct_info))


def transfer_pairs(senders: tuple, receivers: tuple) -> tuple[list, list]:
    """(senders, receivers) of one transfer between two meshes, pair by pair: receiver j
    gets the value from sender j mod len(senders), so a sender serves several receivers
    when the receiving mesh is larger, and the senders past the receivers' count send
    nothing when it is smaller."""
    return [senders[j % len(senders)] for j in range(len(receivers))], list(receivers)


def _static(t) -> bool:
    """Whether tensor struct info `t` has every dim known."""
    return t.shape is not None and all(arith.as_int(d) is not None for d in t.shape)


def connect(mod: IRModule, name: str, info: dict) -> IRModule:
    """The lowered stage functions of `name` with their sends and receives (module doc)."""
    plans, refs = info["plans"], info["refs"]
    meshes = [lookup_mesh(mod.global_infos, r) for r in refs]
    out = mod
    for i, plan in enumerate(plans):
        sname = stage_name(name, i)
        f = mod[sname]
        nown = len(plan["params"])
        head, swap = [], {}
        for (_, src, _), p in zip(plan["incoming"], f.params[nown:]):
            t = p.struct_info
            if not isinstance(t, TensorStructInfo) or t.shape is None:
                raise ShardingError(f"function {name!r}: value {p.name_hint!r} crosses to {refs[i]} "
                                    f"without a known shape")
            ss, rs = transfer_pairs(meshes[src].device_ids, meshes[i].device_ids)
            if _static(t):
                call = ccl.recv(G.ShapeExpr(tuple(t.shape)), t.dtype, ss, rs)
                swap[p] = G.Var(p.name_hint, call.struct_info)
                head.append(G.VarBinding(swap[p], call))
            else:
                # a symbolic dim (the tokens of a step): the sender sends the shape first,
                # and match_cast binds the dim in this stage's program
                dims = tuple(d if arith.as_int(d) is not None else IntImm(-1, "int64") for d in t.shape)
                call = ccl.recv(G.ShapeExpr(dims), t.dtype, ss, rs)
                raw = G.Var(f"{p.name_hint}_in", call.struct_info)
                swap[p] = G.Var(p.name_hint, t)
                head += [G.VarBinding(raw, call), G.MatchCast(swap[p], raw, t)]
        tail = []
        ret_body = f.body.body
        if i < len(plans) - 1:
            fields = ret_body.fields
            for k, (v, dst) in enumerate(plan["outgoing"]):
                field = fields[list(dict.fromkeys(x for x, _ in plan["outgoing"])).index(v)]
                ss, rs = transfer_pairs(meshes[i].device_ids, meshes[dst].device_ids)
                call = ccl.send(field, ss, rs, with_shape=not _static(field.struct_info))
                tail.append(G.VarBinding(G.Var(f"send{len(tail)}", call.struct_info), call))
            ret_body = G.Tuple((), TupleStructInfo(()))
        # receives, the stage's dataflow, sends (impure, outside the dataflow block)
        blocks = [G.BindingBlock(tuple(head))] if head else []
        blocks += [replace(blk, bindings=tuple(replace(b, value=_sub(b.value, swap)) for b in blk.bindings))
                   for blk in f.body.blocks]
        if tail:
            blocks.append(G.BindingBlock(tuple(tail)))
        ret_body = _sub(ret_body, swap)
        nf = replace(f, params=f.params[:nown], body=G.SeqExpr(tuple(blocks), ret_body, ret_body.struct_info),
                     ret_struct_info=ret_body.struct_info, is_pure=False, struct_info=None)
        out = out.with_function(sname, nf)
    return out


def stage_table(mod: IRModule, name: str, info: dict) -> list[dict]:
    """attr "distributed" functions[name]["stages"] (module doc)."""
    out = []
    for i, plan in enumerate(info["plans"]):
        mesh = lookup_mesh(mod.global_infos, plan["mesh"])
        out.append({"function": stage_name(name, i), "mesh": plan["mesh"], "mesh_shape": list(mesh.shape),
                    "device_ids": list(mesh.device_ids), "params": list(plan["params"])})
    return out
