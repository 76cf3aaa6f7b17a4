"""Runtime functions of the compiled SPMD programs (the `R.ccl.*` ops legalize to them).

Each runs inside a worker, on that worker's arrays. A mesh is row-major over worker ids
0..N-1; an op over `mesh_axis` involves the workers whose coordinates differ from the
caller's only along that axis. When that axis spans every worker the collective of
`disco.ccl` runs directly; a sub-group of a multi-dimensional mesh uses its own
communicator where `init_groups` made one (backend shm; `sess.load_module` does it),
otherwise the values of every worker are all-gathered and the group's combined
locally (correct everywhere, more traffic).

Arrays stay on their device: each function works with the array module of its input
(numpy for host arrays, cupy for GPU arrays), so the same compiled program runs its
collectives on CPU workers (shm, mpi) and GPU workers (nccl).
"""
from __future__ import annotations

import functools
import math
import sys
import time

import numpy as np

from disco import ccl
from disco._context import current_context
from disco.errors import DiscoError
from disco.placement import mesh_coordinate
from disco.registry import register_func
from disco.tensor import contiguous

def _xp(x):
    """The array module of `x`: cupy for a cupy array (only when cupy is already loaded,
    as it is on a GPU worker), numpy otherwise."""
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(x, cp.ndarray):
        return cp
    return np


def _copy(x):
    """A new C-contiguous array equal to x, as a collective returns."""
    return _xp(x).array(x, order="C", copy=True)


def _timed(fn):
    """Count the calls of a collective and the seconds spent in them on this worker
    (waiting for peers included), for `collective_stats`."""
    kind = fn.__name__

    @functools.wraps(fn)
    def timed(*args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            _count(current_context().state, kind, t0)
    return timed


def _count(state: dict, kind: str, t0: float) -> None:
    """One call of collective `kind`, begun at perf_counter() `t0`, in `collective_stats`."""
    stats = state.setdefault("spmd_stats", {})
    calls, seconds = stats.get(kind, (0, 0.0))
    stats[kind] = (calls + 1, seconds + time.perf_counter() - t0)


@register_func("spmd.collective_stats", override=True)
def collective_stats(reset: bool = False) -> dict:
    """{collective: (calls, seconds)} on this worker since the last reset: the time the
    compiled programs spent in their collectives (benchmarks/tp_mlp.py reads it)."""
    state = current_context().state
    stats = dict(state.get("spmd_stats") or {})
    if reset:
        state["spmd_stats"] = {}
    return stats


def group_members(worker: int, mesh_shape, mesh_axis: int) -> list[int]:
    """Worker ids of `worker`'s group along `mesh_axis`, in coordinate order."""
    mesh_shape = tuple(mesh_shape)
    coord = list(mesh_coordinate(worker, mesh_shape))
    strides = [math.prod(mesh_shape[i + 1:]) for i in range(len(mesh_shape))]
    base = sum(c * s for i, (c, s) in enumerate(zip(coord, strides)) if i != mesh_axis)
    return [base + j * strides[mesh_axis] for j in range(mesh_shape[mesh_axis])]


def _me(mesh_shape) -> tuple[int, int]:
    ctx = current_context()
    size = math.prod(tuple(mesh_shape))
    if size != ctx.num_workers:
        raise DiscoError(f"worker {ctx.worker_id}: the program was compiled for a device mesh of "
                         f"{size} devices {tuple(mesh_shape)} but the session has {ctx.num_workers} "
                         "workers")
    return ctx.worker_id, ctx.num_workers


def _whole(mesh_shape, mesh_axis: int) -> bool:
    return tuple(mesh_shape)[mesh_axis] == math.prod(tuple(mesh_shape))


def _alone(mesh_shape, mesh_axis: int) -> bool:
    """A group of one worker: every collective is the identity."""
    _me(mesh_shape)
    return tuple(mesh_shape)[mesh_axis] == 1


def _group_comm(mesh_shape, mesh_axis: int):
    """This worker's communicator for its group along `mesh_axis`, if init_groups made one."""
    groups = current_context().state.get("spmd_groups")
    return groups.get((tuple(mesh_shape), int(mesh_axis))) if groups else None


@register_func("spmd.init_groups", override=True)
def init_groups(backend: str, base_name: str, mesh_shape, secret: str = "") -> int:
    """Make this worker's communicators for its groups along each axis of a
    multi-dimensional mesh (backend "shm" only; others keep the all-gather path).
    Every worker calls it with the same arguments; returns how many it made. Each
    group's name ends in, and its secret is, a hash of `secret` with the group's axis
    and first member, so one group's name in /dev/shm tells nothing of its siblings'."""
    from disco.ccl import segments
    import importlib
    mesh_shape = tuple(int(s) for s in mesh_shape)
    ctx = current_context()
    groups = ctx.state.setdefault("spmd_groups", {})
    if backend != "shm" or len(mesh_shape) < 2:
        return 0
    if backend not in ccl._BACKENDS:
        importlib.import_module(ccl._LAZY[backend])
    me, world = _me(mesh_shape)
    coord = mesh_coordinate(me, mesh_shape)
    made = 0
    for axis, extent in enumerate(mesh_shape):
        if extent in (1, world):
            continue
        old = groups.pop((mesh_shape, axis), None)
        if old is not None:
            old.close()
        first = group_members(me, mesh_shape, axis)[0]
        tag = segments.derived(secret, "name", axis, first)[:16]
        groups[(mesh_shape, axis)] = ccl._BACKENDS[backend](f"{base_name}-{tag}", coord[axis], extent,
                                                            secret=segments.derived(secret, "secret", axis, first))
        made += 1
    return made


def _stage_index(device_ids) -> int:
    """This worker's index in the mesh of a pipeline stage over workers `device_ids`."""
    ctx = current_context()
    ids = [int(i) for i in device_ids]
    if ctx.worker_id not in ids:
        raise DiscoError(f"worker {ctx.worker_id}: runs a collective of the pipeline stage on workers "
                         f"{ids}, which it is not one of")
    return ids.index(ctx.worker_id)


def _stage_comm(device_ids, mesh_shape, mesh_axis):
    """This worker's communicator for its group along `mesh_axis` of a stage's mesh over
    workers `device_ids` (made by init_stage_groups; `sess.load_module` does it)."""
    _stage_index(device_ids)
    key = (tuple(int(i) for i in device_ids), tuple(int(s) for s in mesh_shape), int(mesh_axis))
    comm = (current_context().state.get("spmd_stage_groups") or {}).get(key)
    if comm is None:
        raise DiscoError(f"worker {current_context().worker_id}: no communicator for axis {key[2]} of the "
                         f"pipeline stage mesh {list(key[1])} on workers {list(key[0])}; call "
                         f"spmd.init_stage_groups first (sess.load_module does)")
    return comm


@register_func("spmd.init_stage_groups", override=True)
def init_stage_groups(backend: str, base_name: str, device_ids, mesh_shape, secret: str = "") -> int:
    """Make this worker's communicators for the groups along each axis of a pipeline
    stage's mesh of shape `mesh_shape` over workers `device_ids` (disco.ccl.sub_group:
    backends shm, mpi and nccl). Every worker of the session calls it with the same
    arguments; workers outside the stage make none. Returns how many it made."""
    from disco.ccl import segments
    ids = tuple(int(i) for i in device_ids)
    mesh_shape = tuple(int(s) for s in mesh_shape)
    ctx = current_context()
    if ctx.worker_id not in ids:
        return 0
    groups = ctx.state.setdefault("spmd_stage_groups", {})
    idx = ids.index(ctx.worker_id)
    made = 0
    for axis, extent in enumerate(mesh_shape):
        old = groups.pop((ids, mesh_shape, axis), None)
        if old is not None:
            old.close()
        if extent == 1:
            continue
        members = [ids[j] for j in group_members(idx, mesh_shape, axis)]
        tag = segments.derived(secret, "stage", axis, members[0])[:16]
        groups[(ids, mesh_shape, axis)] = ccl.sub_group(
            backend, f"{base_name}-{tag}", members, secret=segments.derived(secret, "stage-secret", axis, members[0]))
        made += 1
    return made


@register_func("spmd.group_count", override=True)
def group_count() -> int:
    """How many group communicators this worker holds (for tests and diagnostics)."""
    return len(current_context().state.get("spmd_groups") or ())


def _group_values(x: np.ndarray, mesh_shape, mesh_axis: int) -> list[np.ndarray]:
    """Every group member's x, in coordinate order (through an all-gather of everyone's)."""
    me, _ = _me(mesh_shape)
    everyone = ccl.allgather(contiguous(x)[None], 0)
    return [everyone[w] for w in group_members(me, mesh_shape, mesh_axis)]


def _split(x: np.ndarray, axis: int, parts: int, index: int, what: str) -> np.ndarray:
    size = x.shape[axis]
    if size % parts:
        raise DiscoError(f"{what}: dim {axis} of shape {x.shape} is {size}, not divisible by the "
                         f"{parts} workers it is split over")
    n = size // parts
    xp = _xp(x)
    return contiguous(xp.take(x, xp.arange(index * n, (index + 1) * n), axis=axis))


@register_func("spmd.allreduce", override=True)
@_timed
def allreduce(x, op, mesh_shape, mesh_axis, device_ids=None):
    if device_ids is not None:
        if tuple(mesh_shape)[int(mesh_axis)] == 1:
            return _copy(x)
        return _stage_comm(device_ids, mesh_shape, mesh_axis).allreduce(contiguous(x), op, None)
    if _alone(mesh_shape, mesh_axis):
        return _copy(x)
    if _whole(mesh_shape, mesh_axis):
        _me(mesh_shape)
        return ccl.allreduce(contiguous(x), op)
    comm = _group_comm(mesh_shape, mesh_axis)
    if comm is not None:
        return comm.allreduce(contiguous(x), op, None)
    if op not in ccl.OPS:     # the op names are also numpy's and cupy's reductions
        raise DiscoError(f"R.ccl.allreduce: unknown op {op!r}; expected one of {list(ccl.OPS)}")
    vals = _group_values(x, mesh_shape, mesh_axis)
    xp = _xp(x)
    total = getattr(xp, op)(xp.stack(vals), axis=0)
    return contiguous(total.astype(x.dtype, copy=False))


# The VM allocates this argument with device.shared_empty (the shm arena), so that the
# all-reduce reads it on every worker in place (disco.ccl.empty).
allreduce.in_place_inputs = (0,)
# Its result is never its input (a plan may then allocate the input once: disco/vm).
allreduce.result_is_fresh = True


def _specialize_allreduce(args, varies):
    """What a VM plan calls for `allreduce(x, op, mesh_shape, mesh_axis)` over the whole
    mesh: the communicator's all-reduce of x's shape and dtype with its checks made once
    (`allreduce_fn`, where the backend has one), counted in `collective_stats` like every
    call. A decode step makes two per layer, each otherwise a dozen Python calls deep.
    None (the plan calls `allreduce`) for sub-groups, stages, or arguments that vary."""
    if len(args) != 4 or any(varies[1:]) or type(args[0]) is not np.ndarray:
        return None
    x, op, mesh_shape, mesh_axis = args
    try:
        if _alone(mesh_shape, mesh_axis) or not _whole(mesh_shape, mesh_axis):
            return None
    except (DiscoError, TypeError, IndexError):
        return None
    state = current_context().state
    comm = state.get("ccl")
    make = getattr(comm, "allreduce_fn", None)
    fast = make(x.shape, x.dtype, op) if make is not None else None
    if fast is None:
        return None

    def call(x, *rest):
        if state.get("ccl") is not comm:      # the communicator was replaced: the general path
            return allreduce(x, *rest)
        t0 = time.perf_counter()
        try:
            return fast(x)
        finally:
            _count(state, "allreduce", t0)
    return call


allreduce.specialize = _specialize_allreduce


@register_func("spmd.allgather", override=True)
@_timed
def allgather(x, axis, mesh_shape, mesh_axis, device_ids=None):
    axis = int(axis) % max(x.ndim, 1)
    if device_ids is not None:
        if tuple(mesh_shape)[int(mesh_axis)] == 1:
            return _copy(x)
        return _stage_comm(device_ids, mesh_shape, mesh_axis).allgather(contiguous(x), axis, None)
    if _alone(mesh_shape, mesh_axis):
        return _copy(x)
    if _whole(mesh_shape, mesh_axis):
        _me(mesh_shape)
        return ccl.allgather(contiguous(x), axis)
    comm = _group_comm(mesh_shape, mesh_axis)
    if comm is not None:
        return comm.allgather(contiguous(x), axis, None)
    xp = _xp(x)
    return contiguous(xp.concatenate(_group_values(x, mesh_shape, mesh_axis), axis=axis))


@register_func("spmd.reduce_scatter", override=True)
@_timed
def reduce_scatter(x, axis, op, mesh_shape, mesh_axis, device_ids=None):
    axis = int(axis) % max(x.ndim, 1)
    if device_ids is not None:
        if tuple(mesh_shape)[int(mesh_axis)] == 1:
            return _copy(x)
        return _stage_comm(device_ids, mesh_shape, mesh_axis).reduce_scatter(contiguous(x), op, axis, None)
    if _alone(mesh_shape, mesh_axis):
        return _copy(x)
    if _whole(mesh_shape, mesh_axis):
        _me(mesh_shape)
        return ccl.reduce_scatter(contiguous(x), op, axis)
    comm = _group_comm(mesh_shape, mesh_axis)
    if comm is not None:
        return comm.reduce_scatter(contiguous(x), op, axis, None)
    me, _ = _me(mesh_shape)
    total = allreduce.__wrapped__(x, op, mesh_shape, mesh_axis)   # counted as reduce_scatter
    return _split(total, axis, mesh_shape[mesh_axis], mesh_coordinate(me, mesh_shape)[mesh_axis],
                  "R.ccl.reduce_scatter")


@register_func("spmd.local_slice", override=True)
def local_slice(x, axis, mesh_shape, mesh_axis, device_ids=None):
    me = _stage_index(device_ids) if device_ids is not None else _me(mesh_shape)[0]
    axis = int(axis) % max(x.ndim, 1)
    return _split(x, axis, mesh_shape[mesh_axis], mesh_coordinate(me, mesh_shape)[mesh_axis],
                  "R.ccl.local_slice")


@register_func("spmd.masked_take", override=True)
def masked_take(table, indices, mesh_shape, mesh_axis, device_ids=None):
    """Rows of this worker's slice of a table split along dim 0; zero rows for indices
    that belong to another worker's slice."""
    me = _stage_index(device_ids) if device_ids is not None else _me(mesh_shape)[0]
    xp = _xp(table)
    rows = table.shape[0]
    start = mesh_coordinate(me, mesh_shape)[mesh_axis] * rows
    local = xp.asarray(indices).astype(xp.int64) - start
    inside = (local >= 0) & (local < rows)
    out = table[xp.where(inside, local, 0)]
    out[~inside] = 0
    return contiguous(out)


@register_func("spmd.masked_embedding", override=True)
def masked_embedding(table, indices, mesh_shape, mesh_axis, fmt, device_ids=None):
    """`masked_take` of a table stored in weight format `fmt` (disco/weight_formats.py),
    rows converted to float32 as the CPU kernel reads them (disco.cpu.embedding*): the
    local table is never converted whole."""
    from disco.cpu_kernels import embedding
    from disco.weight_formats import logical_shape
    me = _stage_index(device_ids) if device_ids is not None else _me(mesh_shape)[0]
    rows = table.shape[0]
    start = mesh_coordinate(me, mesh_shape)[mesh_axis] * rows
    local = np.asarray(indices).astype(np.int64) - start
    inside = (local >= 0) & (local < rows)
    out = np.empty(local.shape + logical_shape(table.shape, fmt)[1:], np.float32)
    embedding(np.where(inside, local, 0), table, out, fmt)
    out[~inside] = 0
    return out


def _specialize_masked_embedding(args, varies):
    """What a VM plan calls for `masked_embedding`: this worker's slice, the format and
    the row length resolved once, one native call that also masks (the plan fixes the
    table's shape; the native call checks it against the ids and out again)."""
    table, _, mesh_shape, mesh_axis, fmt, *rest = args
    device_ids = rest[0] if rest else None          # a pipeline stage's workers
    if any(varies[2:]) or type(table) is not np.ndarray:
        return None
    from disco import _native
    from disco.weight_formats import logical_shape, weight_format
    try:
        me = _stage_index(device_ids) if device_ids is not None else _me(mesh_shape)[0]
        rows = table.shape[0]
        start = mesh_coordinate(me, mesh_shape)[mesh_axis] * rows
        k = logical_shape(table.shape, fmt)[1]
        code = weight_format(fmt).code
    except (DiscoError, TypeError, ValueError, IndexError):
        return None

    def fast(table, indices, *rest):
        if type(indices) is not np.ndarray or indices.dtype != np.int64 or not indices.flags.c_contiguous:
            return masked_embedding(table, indices, *rest)
        out = np.empty(indices.shape + (k,), np.float32)
        _native.cpu_embedding(indices, table, out, code, 0, "", start)     # masked in C++
        return out
    return fast


masked_embedding.specialize = _specialize_masked_embedding


def _pairs(senders, receivers, what: str) -> tuple[list[int], list[int]]:
    """The worker pairs of a transfer between two stages' meshes, checked against the session."""
    ctx = current_context()
    senders, receivers = [int(w) for w in senders], [int(w) for w in receivers]
    if len(senders) != len(receivers) or any(not 0 <= w < ctx.num_workers for w in senders + receivers):
        raise DiscoError(f"worker {ctx.worker_id}: {what} pairs senders {senders} with receivers {receivers}, "
                         f"which are not workers of this session of {ctx.num_workers} (was the program compiled "
                         "for another number of devices?)")
    return senders, receivers


@register_func("spmd.send", override=True)
@_timed
def send(x, senders, receivers, with_shape=0):
    """Pipeline transfer, sending side (R.ccl.send): worker senders[i] sends x to worker
    receivers[i] (a worker may be the sender of several pairs: a receiving mesh larger
    than the sending one); the other workers do nothing. `with_shape`: x's shape goes
    first, as an int64 array, for a receiver whose program has a symbolic dim there
    (`recv` with -1 dims). Returns an empty tuple."""
    senders, receivers = _pairs(senders, receivers, "R.ccl.send")
    me = current_context().worker_id
    for dst in (r for s, r in zip(senders, receivers) if s == me):
        if int(with_shape):
            ccl.send(np.asarray(x.shape, np.int64), dst)
        ccl.send(contiguous(x), dst)
    return ()


@register_func("spmd.recv", override=True)
@_timed
def recv(shape, dtype, senders, receivers):
    """Pipeline transfer, receiving side (R.ccl.recv): on worker receivers[i], the array of
    `shape` and `dtype` that worker senders[i] sends it; None on the other workers. Dims
    of -1 are the sender's: its shape comes first (`send` with `with_shape`), checked
    against the dims given."""
    senders, receivers = _pairs(senders, receivers, "R.ccl.recv")
    ctx = current_context()
    me = ctx.worker_id
    if me not in receivers:
        return None
    src = senders[receivers.index(me)]
    shape = tuple(int(d) for d in shape)
    if any(d == -1 for d in shape):
        sent = tuple(int(d) for d in ccl.recv((len(shape),), "int64", src))
        if any(d not in (-1, s) or s < 0 for d, s in zip(shape, sent)):
            raise DiscoError(f"worker {me}: R.ccl.recv from worker {src} expected shape "
                             f"{list(shape)} (-1: any), but the sender's array has shape {list(sent)}")
        shape = sent
    out = ccl.recv(shape, dtype, src)
    call = ctx.state.get("stage_call")      # the pipeline stage call running (disco/pipeline.py)
    if call is not None:
        call["received"] = time.time()      # its timeline: when its inputs arrived
    return out


@register_func("spmd.broadcast_from_worker0", override=True)
def broadcast_from_worker0(x):
    if current_context().num_workers == 1:
        return _copy(x)
    return ccl.broadcast_from_worker0(contiguous(x))
