"""Collectives and per-worker ops of the local (per-device) view: `R.ccl.*`.

LowerToLocalView (compiler/distributed/lower_local.py) writes these where the
placements of a distributed module imply communication or worker-dependent work:

    R.ccl.allreduce(x, op="sum", mesh_shape=[2], mesh_axis=0)        Partial -> Replicate
    R.ccl.allgather(x, axis=1, mesh_shape=[2], mesh_axis=0)          Shard(1) -> Replicate
    R.ccl.reduce_scatter(x, axis=0, op="sum", mesh_shape=[2], mesh_axis=0)  Partial -> Shard(0)
    R.ccl.local_slice(x, axis=0, mesh_shape=[2], mesh_axis=0)        Replicate -> Shard(0)
    R.ccl.masked_take(table, indices, mesh_shape=[2], mesh_axis=0)   take on a row-sharded table
    R.ccl.broadcast_from_worker0(x)
    R.ccl.send(x, senders=[0, 1], receivers=[2, 3])                   pipeline stage -> next stage
    R.ccl.recv(R.shape([4, 8]), dtype="float32", senders=[0, 1], receivers=[2, 3])
    R.ccl.send(x, senders=[0], receivers=[1], with_shape=True)       a symbolic shape: sent first,
    R.ccl.recv(R.shape([-1, 8]), dtype="float32", senders=[0], receivers=[1])   -1 dims learnt

`mesh_shape`/`mesh_axis` say which workers take part: those that differ from the
caller only in their coordinate along `mesh_axis` of a row-major mesh over worker
ids 0..N-1 (the whole group for a 1-D mesh), or over `device_ids` where given (the mesh
of a pipeline stage, e.g. device_ids=[2, 3]). Shapes are the local ones.

`senders`/`receivers` pair workers of two stages' meshes: worker senders[i] sends to
worker receivers[i]; other workers take no part (a send does nothing there, a recv
gives None). send and recv are not pure (dead-code elimination keeps them; send's
value is an empty tuple).

Each op legalizes to `R.call_pure_packed` (send, recv: `R.call_packed`) of a runtime function of `disco.spmd`
("spmd.allreduce", ...), which runs the worker's collectives (disco.ccl).
"""
from __future__ import annotations

import math


from ..ir import arith
from ..ir.errors import ShapeError, StructInfoError
from ..ir.expr import IntImm
from ..ir.graph import Call
from ..ir.struct_info import StructInfo, TensorStructInfo, TupleStructInfo
from . import infer as I
from .builtin import call_packed, call_pure_packed, prim_value, shape as shape_expr, string_imm
from .registry import OPAQUE, make_call, register_op

REDUCE_OPS = ("sum", "prod", "min", "max")
_GROUP = ("mesh_shape", "mesh_axis", "device_ids")


def _group_attrs(op: str, mesh_shape, mesh_axis, device_ids=None) -> dict:
    ms = tuple(int(s) for s in mesh_shape)
    if not ms or any(s < 1 for s in ms):
        raise StructInfoError(f"{op}: mesh_shape must be a non-empty list of positive ints, "
                              f"got {mesh_shape!r}")
    ax = int(mesh_axis)
    if not 0 <= ax < len(ms):
        raise StructInfoError(f"{op}: mesh_axis {mesh_axis} out of range for mesh_shape {list(ms)}")
    out = {"mesh_shape": ms, "mesh_axis": ax}
    if device_ids is not None:
        ids = tuple(int(i) for i in device_ids)
        if len(ids) != math.prod(ms) or len(set(ids)) != len(ids) or min(ids) < 0:
            raise StructInfoError(f"{op}: device_ids {list(ids)} must be {math.prod(ms)} distinct worker "
                                  f"ids, one per device of mesh_shape {list(ms)}")
        out["device_ids"] = ids         # a pipeline stage's mesh: a part of the session's workers
    return out


def group_size(call: Call) -> int:
    """How many workers take part in the call's collective (its mesh axis's extent)."""
    return int(call.attrs["mesh_shape"][call.attrs["mesh_axis"]])


def _check_op(op: str, reduce_op: str) -> str:
    if reduce_op not in REDUCE_OPS:
        raise StructInfoError(f"{op}: op must be one of {REDUCE_OPS}, got {reduce_op!r}")
    return reduce_op


def _local_tensor(op: str, call: Call, index: int, name: str) -> TensorStructInfo:
    sinfo = call.args[index].struct_info
    if not isinstance(sinfo, TensorStructInfo):
        raise StructInfoError(f"{op}: argument {name} must be a local tensor (R.Tensor), got "
                              f"{type(sinfo).__name__ if sinfo is not None else 'no struct info'}; "
                              "collectives belong to the local view (after LowerToLocalView)")
    return sinfo


def _axis(op: str, x: TensorStructInfo, axis) -> int:
    if x.ndim < 0:
        raise ShapeError(f"{op}: needs a tensor of known rank")
    return I.normalize_axis(op, axis, x.ndim)


def _with_dim(x: TensorStructInfo, axis: int, dim) -> TensorStructInfo:
    if x.shape is None:
        return TensorStructInfo(None, x.dtype, x.ndim)
    shape = list(x.shape)
    shape[axis] = arith.simplify(dim)
    return TensorStructInfo(tuple(shape), x.dtype)


def _split_dim(op: str, x: TensorStructInfo, axis: int, k: int):
    d = x.shape[axis]
    if isinstance(d, IntImm) and d.value % k:
        raise ShapeError(f"{op}: dim {axis} of size {d.value} cannot be split evenly over {k} "
                         f"workers")
    return d // k


# allreduce / broadcast: same shape -----------------------------------------------------------


@register_op("relax.ccl.allreduce", script="R.ccl.allreduce", args=("x",),
             attrs=("op",) + _GROUP, pattern=OPAQUE)
def allreduce(x, op: str = "sum", mesh_shape=(1,), mesh_axis: int = 0, device_ids=None) -> Call:
    """`R.ccl.allreduce(x, op="sum", mesh_shape=[2], mesh_axis=0)`: op(x over the group)."""
    name = "R.ccl.allreduce"
    return make_call("relax.ccl.allreduce", (I.as_expr_arg(name, x, "x"),),
                     {"op": _check_op(name, op), **_group_attrs(name, mesh_shape, mesh_axis, device_ids)})


@allreduce.infer
def _allreduce(call: Call) -> StructInfo:
    return _local_tensor("R.ccl.allreduce", call, 0, "x")


@register_op("relax.ccl.broadcast_from_worker0", script="R.ccl.broadcast_from_worker0",
             args=("x",), pattern=OPAQUE)
def broadcast_from_worker0(x) -> Call:
    """`R.ccl.broadcast_from_worker0(x)`: worker 0's x on every worker."""
    return make_call("relax.ccl.broadcast_from_worker0",
                     (I.as_expr_arg("R.ccl.broadcast_from_worker0", x, "x"),))


@broadcast_from_worker0.infer
def _broadcast(call: Call) -> StructInfo:
    return _local_tensor("R.ccl.broadcast_from_worker0", call, 0, "x")


# allgather: dim grows; reduce_scatter / local_slice: dim shrinks -----------------------------


@register_op("relax.ccl.allgather", script="R.ccl.allgather", args=("x",),
             attrs=("axis",) + _GROUP, pattern=OPAQUE)
def allgather(x, axis: int = 0, mesh_shape=(1,), mesh_axis: int = 0, device_ids=None) -> Call:
    """`R.ccl.allgather(x, axis=1, mesh_shape=[2], mesh_axis=0)`: the group's x concatenated
    along `axis` in mesh-coordinate order."""
    name = "R.ccl.allgather"
    return make_call("relax.ccl.allgather", (I.as_expr_arg(name, x, "x"),),
                     {"axis": int(axis), **_group_attrs(name, mesh_shape, mesh_axis, device_ids)})


@allgather.infer
def _allgather(call: Call) -> StructInfo:
    op = "R.ccl.allgather"
    x = _local_tensor(op, call, 0, "x")
    ax = _axis(op, x, call.attrs["axis"])
    return _with_dim(x, ax, x.shape[ax] * group_size(call)) if x.shape else x


@register_op("relax.ccl.reduce_scatter", script="R.ccl.reduce_scatter", args=("x",),
             attrs=("axis", "op") + _GROUP, pattern=OPAQUE)
def reduce_scatter(x, axis: int = 0, op: str = "sum", mesh_shape=(1,), mesh_axis: int = 0, device_ids=None) -> Call:
    """`R.ccl.reduce_scatter(x, axis=0, op="sum", mesh_shape=[2], mesh_axis=0)`: this
    worker's part (by its mesh coordinate) of allreduce(x) split along `axis`."""
    name = "R.ccl.reduce_scatter"
    return make_call("relax.ccl.reduce_scatter", (I.as_expr_arg(name, x, "x"),),
                     {"axis": int(axis), "op": _check_op(name, op),
                      **_group_attrs(name, mesh_shape, mesh_axis, device_ids)})


@register_op("relax.ccl.local_slice", script="R.ccl.local_slice", args=("x",),
             attrs=("axis",) + _GROUP, pattern=OPAQUE)
def local_slice(x, axis: int = 0, mesh_shape=(1,), mesh_axis: int = 0, device_ids=None) -> Call:
    """`R.ccl.local_slice(x, axis=0, mesh_shape=[2], mesh_axis=0)`: this worker's part (by
    its coordinate along `mesh_axis`) of x split evenly along `axis`; no communication."""
    name = "R.ccl.local_slice"
    return make_call("relax.ccl.local_slice", (I.as_expr_arg(name, x, "x"),),
                     {"axis": int(axis), **_group_attrs(name, mesh_shape, mesh_axis, device_ids)})


def _shrink_rule(op: str):
    def rule(call: Call) -> StructInfo:
        x = _local_tensor(op, call, 0, "x")
        ax = _axis(op, x, call.attrs["axis"])
        return _with_dim(x, ax, _split_dim(op, x, ax, group_size(call))) if x.shape else x
    return rule


reduce_scatter.infer(_shrink_rule("R.ccl.reduce_scatter"))
local_slice.infer(_shrink_rule("R.ccl.local_slice"))


# masked take: embedding lookup on a row (vocabulary) sharded table ---------------------------


@register_op("relax.ccl.masked_take", script="R.ccl.masked_take", args=("x", "indices"),
             attrs=_GROUP, pattern=OPAQUE)
def masked_take(x, indices, mesh_shape=(1,), mesh_axis: int = 0, device_ids=None) -> Call:
    """`R.ccl.masked_take(table, indices, mesh_shape=[2], mesh_axis=0)`: rows of this
    worker's slice of a table split along dim 0; indices outside the slice's global
    range give zero rows. Summed over the group, that is `take(table, indices, axis=0)`."""
    name = "R.ccl.masked_take"
    return make_call("relax.ccl.masked_take", (I.as_expr_arg(name, x, "x"),
                                               I.as_expr_arg(name, indices, "indices")),
                     _group_attrs(name, mesh_shape, mesh_axis, device_ids))


@masked_take.infer
def _masked_take(call: Call) -> StructInfo:
    op = "R.ccl.masked_take"
    x = _local_tensor(op, call, 0, "x")
    idx = _local_tensor(op, call, 1, "indices")
    I.require_int(op, "indices", idx)
    if x.shape is None or idx.shape is None:
        return TensorStructInfo(None, x.dtype, -1 if x.ndim < 0 or idx.ndim < 0 else x.ndim - 1 + idx.ndim)
    return TensorStructInfo(tuple(idx.shape) + tuple(x.shape[1:]), x.dtype)


# send / recv: point-to-point between the meshes of two pipeline stages -------------------------


def _pairs(op: str, senders, receivers) -> dict:
    s, r = tuple(int(v) for v in senders), tuple(int(v) for v in receivers)
    if not s or len(s) != len(r) or min(s + r) < 0 or len(set(r)) != len(r) or set(s) & set(r):
        raise StructInfoError(f"{op}: senders and receivers must be two disjoint lists of worker ids of one "
                              f"length, the receivers distinct (worker senders[i] sends to worker receivers[i]; "
                              f"a sender may serve several receivers), got senders={list(s)}, receivers={list(r)}")
    return {"senders": s, "receivers": r}


@register_op("relax.ccl.send", script="R.ccl.send", args=("x",), attrs=("senders", "receivers", "with_shape"),
             pattern=OPAQUE)
def send(x, senders=(0,), receivers=(1,), with_shape: bool = False) -> Call:
    """`R.ccl.send(x, senders=[0, 1], receivers=[2, 3])`: worker senders[i] sends its x to
    worker receivers[i]; an empty tuple. Not pure. `with_shape=True`: x's shape goes
    first (int64, one per dim), for a receiver that cannot know it (a recv with -1 dims:
    a symbolic dim, such as the tokens of a step, crossing a stage boundary)."""
    name = "R.ccl.send"
    attrs = _pairs(name, senders, receivers)
    if with_shape:
        attrs["with_shape"] = True
    return make_call("relax.ccl.send", (I.as_expr_arg(name, x, "x"),), attrs)


@send.infer
def _send(call: Call) -> StructInfo:
    _local_tensor("R.ccl.send", call, 0, "x")
    return TupleStructInfo(())


@register_op("relax.ccl.recv", script="R.ccl.recv", args=("shape",), attrs=("dtype", "senders", "receivers"),
             pattern=OPAQUE)
def recv(shape, dtype="float32", senders=(0,), receivers=(1,)) -> Call:
    """`R.ccl.recv(R.shape([n, 8]), dtype="float32", senders=[0, 1], receivers=[2, 3])`: on
    worker receivers[i], the array worker senders[i] sends it (local shape and dtype as
    given); None on the other workers. Not pure. A dim of -1 is learnt from the sender,
    which sends the shape first (`R.ccl.send(..., with_shape=True)`); the result then
    has only a rank (bind its dims with R.match_cast)."""
    name = "R.ccl.recv"
    return make_call("relax.ccl.recv", (I.as_shape_arg(name, shape),),
                     {"dtype": str(dtype), **_pairs(name, senders, receivers)})


@recv.infer
def _recv(call: Call) -> StructInfo:
    op = "R.ccl.recv"
    values = I.shape_values(op, call.args[0], "shape")
    if values is None or any(arith.as_int(d) == -1 for d in values):
        return I.unknown_tensor(call.attrs["dtype"], I.shape_ndim(op, call.args[0], "shape"))
    I.require_nonnegative_dims(op, values)
    return TensorStructInfo(values, call.attrs["dtype"])


send.extra["pure"] = False
recv.extra["pure"] = False


# legalization: runtime functions of disco.spmd ------------------------------------------------


def _group_args(call: Call) -> tuple:
    out = (shape_expr(list(call.attrs["mesh_shape"])), prim_value(call.attrs["mesh_axis"]))
    if "device_ids" in call.attrs:      # a stage's mesh: the worker ids it runs on, last
        out += (shape_expr(list(call.attrs["device_ids"])),)
    return out


@allreduce.legalizer
def _legalize_allreduce(bb, call: Call):
    return call_pure_packed("spmd.allreduce", call.args[0], string_imm(call.attrs["op"]),
                            *_group_args(call), sinfo_args=call.struct_info)


@allgather.legalizer
def _legalize_allgather(bb, call: Call):
    return call_pure_packed("spmd.allgather", call.args[0], prim_value(call.attrs["axis"]),
                            *_group_args(call), sinfo_args=call.struct_info)


@reduce_scatter.legalizer
def _legalize_reduce_scatter(bb, call: Call):
    return call_pure_packed("spmd.reduce_scatter", call.args[0], prim_value(call.attrs["axis"]),
                            string_imm(call.attrs["op"]), *_group_args(call),
                            sinfo_args=call.struct_info)


@local_slice.legalizer
def _legalize_local_slice(bb, call: Call):
    return call_pure_packed("spmd.local_slice", call.args[0], prim_value(call.attrs["axis"]),
                            *_group_args(call), sinfo_args=call.struct_info)


@masked_take.legalizer
def _legalize_masked_take(bb, call: Call):
    return call_pure_packed("spmd.masked_take", call.args[0], call.args[1], *_group_args(call),
                            sinfo_args=call.struct_info)


@broadcast_from_worker0.legalizer
def _legalize_broadcast(bb, call: Call):
    return call_pure_packed("spmd.broadcast_from_worker0", call.args[0], sinfo_args=call.struct_info)


def _pair_args(call: Call) -> tuple:
    return (shape_expr(list(call.attrs["senders"])), shape_expr(list(call.attrs["receivers"])))


@send.legalizer
def _legalize_send(bb, call: Call):
    shape_first = (prim_value(1),) if call.attrs.get("with_shape") else ()
    return call_packed("spmd.send", call.args[0], *_pair_args(call), *shape_first, sinfo_args=call.struct_info)


@recv.legalizer
def _legalize_recv(bb, call: Call):
    return call_packed("spmd.recv", call.args[0], string_imm(call.attrs["dtype"]), *_pair_args(call),
                       sinfo_args=call.struct_info)
