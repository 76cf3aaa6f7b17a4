"""Collectives for code running inside a worker: one interface, several backends.

`FUNCTIONS` is the one table of collective names. Each backend (shm.py, mpi.py,
nccl.py) provides a `Communicator` subclass with a method per name it supports; the
functions below look up the calling worker's communicator (in
`current_context().state["ccl"]`) and dispatch to it, so a backend that lacks one
raises "no `allreduce` for backend `shm`". `init(backend, group_name)` makes the
communicator; a session's `init_ccl(backend, **options)` calls it on every worker
through the global function "disco.ccl.init", after `session_options` let the backend
add what its workers must agree on (NCCL: worker 0's unique id). The collectives are
also global functions "ccl.allreduce", ... so that a controller can call them on DRefs.

Point-to-point: `send(x, dst)` and `recv(shape, dtype, src)` move one array between two
workers of the group. Each (sender, receiver) pair keeps its messages in order, apart
from every other pair and from the collectives, so a worker may interleave them freely;
`send` returns once x may be reused, normally without waiting for the receiver (see each
backend for when it does wait). The receiver names the shape and dtype it expects; a
message that differs, or a sender that could not send, raises CollectiveError on the
receiver naming both workers and both arrays (the message is consumed: the pair stays
in step), and a recv that nothing matches raises after the backend's timeout instead of
hanging. Because a session runs each call on every worker, `dst` and `src` may also be
one entry per worker (entry i: worker i's peer; -1 or None: worker i takes no part and
gets None), which is how a controller runs a transfer or a ring exchange:
`sess.get_global_func("ccl.send")(x, (1, -1))` and `...("ccl.recv")(shape, dtype, (-1, 0))`.

All functions take and return arrays of the worker's device (numpy on CPU) and return
new arrays (numpy semantics); `out=` writes into a given array instead. Every worker
of the group must call the same collectives in the same order with matching
arguments; a mismatch raises `CollectiveError` on every worker.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from disco._context import current_context
from disco.errors import CollectiveError

FUNCTIONS = (
    "allreduce",
    "allgather",
    "reduce_scatter",
    "broadcast_from_worker0",
    "scatter_from_worker0",
    "gather_to_worker0",
    "barrier",
    "send",
    "recv",
)
OPS = ("sum", "prod", "min", "max")

# Backends: name -> factory(group_name, rank, world, **options) -> Communicator.
# Backends listed in _LAZY are imported on first use and register themselves.
_BACKENDS: dict[str, Callable[..., "Communicator"]] = {}
_LAZY = {"shm": "disco.ccl.shm", "mpi": "disco.ccl.mpi", "nccl": "disco.ccl.nccl"}


class Communicator:
    """One worker's end of a group. Subclasses override a method for each name in
    `FUNCTIONS` that the backend supports (same signature as the module functions);
    the ones they leave raise "no `name` for backend `backend`"."""

    backend = "?"

    def __init__(self, rank: int, world: int):
        self.rank = rank
        self.world = world

    def close(self) -> None:
        """Release the backend's resources; the communicator is unusable afterwards."""

    def empty(self, shape, dtype=np.float32):
        """An uninitialised array of this worker's device that the collectives handle
        best (shm: in the shared arena, read by peers in place). Here: numpy's."""
        return np.empty(shape, dtype)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend!r} rank={self.rank} world={self.world}>"


def _missing(name: str):
    def method(self, *args, **kwargs):
        raise CollectiveError(f"no `{name}` for backend `{self.backend}`")

    method.__name__ = name
    return method


for _name in FUNCTIONS:
    setattr(Communicator, _name, _missing(_name))


def register_backend(name: str, factory: Callable[..., Communicator]) -> None:
    """Make `init(name, ...)` build communicators with `factory(group, rank, world, **options)`.
    A factory with a `session_setup(sess, options) -> options` attribute is asked, on the
    controller, for the options every worker's communicator needs (see session_options);
    one with a `sub_group(group_name, members, rank, secret)` attribute makes
    communicators for some of the workers (see sub_group)."""
    _BACKENDS[name] = factory


def _factory(backend: str, where: str) -> Callable[..., Communicator]:
    if backend not in _BACKENDS and backend in _LAZY:
        importlib.import_module(_LAZY[backend])
    if backend not in _BACKENDS:
        known = sorted(set(_BACKENDS) | set(_LAZY))
        raise CollectiveError(f"{where}: unknown backend {backend!r}; expected one of {known}")
    return _BACKENDS[backend]


def session_options(backend: str, sess: Any, options: dict) -> dict:
    """On the controller of `sess`, before `sess.init_ccl(backend)` reaches the workers:
    `options` with what the backend's `session_setup` adds through the session (the
    values every worker must share, such as an NCCL unique id made on worker 0 and
    handed to the others through the controller, which works on one host or many)."""
    setup = getattr(_factory(backend, "init_ccl"), "session_setup", None)
    return setup(sess, options) if setup is not None else options


def sub_group(backend: str, group_name: str, members, *, secret: str = "") -> Communicator:
    """A communicator of `backend` for the workers `members` (worker ids of the session,
    in rank order), which the calling worker must be one of: a pipeline stage's group
    (spmd.init_stage_groups). Every member calls it with the same arguments, the other
    workers not at all; it returns once all members have joined. `group_name` must be
    unique to the group; `secret` is the group's (shm checks it before joining)."""
    members = [int(m) for m in members]
    me = current_context().worker_id
    if me not in members:
        raise CollectiveError(f"ccl.sub_group: worker {me} is not one of the members {members} of group "
                              f"{group_name!r}; only members make its communicator")
    make = getattr(_factory(backend, "ccl.sub_group"), "sub_group", None)
    if make is None:
        raise CollectiveError(f"ccl.sub_group: backend {backend!r} makes no communicators for part of the "
                              f"workers {members} (needed for pipeline stages)")
    return make(group_name, members, members.index(me), secret)


def init(backend: str = "shm", group_name: str | None = None, **options: Any) -> Communicator:
    """Create this worker's communicator for `backend` and install it in its context.

    Rank and world size come from `disco._context.current_context()`. Every worker of
    the group must call this with the same arguments; it returns once all have joined.
    `group_name` is required and must be unique to the group (there is no shared
    default: two jobs would meet in it); `sess.init_ccl` makes one, with a secret.
    `options` go to the backend (shm: chunk_bytes, small_bytes, timeout_s, spin_us, secret)."""
    if not group_name or not isinstance(group_name, str):
        raise CollectiveError(f"ccl.init: a group name unique to this group is required, given {group_name!r} "
                              "(sess.init_ccl makes one; disco.ccl.segments.new_group_name gives one to share)")
    factory = _factory(backend, "ccl.init")
    ctx = current_context()
    old = ctx.state.pop("ccl", None)
    if old is not None:
        old.close()
    comm = factory(group_name, ctx.worker_id, ctx.num_workers, **options)
    ctx.state["ccl"] = comm
    return comm


def communicator() -> Communicator:
    """The calling worker's communicator; CollectiveError if `init` was not called."""
    ctx = current_context()
    comm = ctx.state.get("ccl")
    if comm is None:
        raise CollectiveError(
            f"worker {ctx.worker_id} has no collective communicator: call sess.init_ccl(backend) "
            "(or disco.ccl.init(backend, group_name) on every worker) first"
        )
    return comm


def shutdown() -> None:
    """Close and forget the calling worker's communicator, if any."""
    comm = current_context().state.pop("ccl", None)
    if comm is not None:
        comm.close()


def allreduce(x, op: str = "sum", *, out=None):
    """op(x over all workers), elementwise; same shape and dtype on every worker."""
    return communicator().allreduce(x, op, out)


def allgather(x, axis: int = 0, *, out=None):
    """Concatenation of every worker's x (same shape everywhere) along `axis`."""
    return communicator().allgather(x, axis, out)


def reduce_scatter(x, op: str = "sum", axis: int = 0, *, out=None):
    """Part `worker_id` of allreduce(x, op) split evenly along `axis`."""
    return communicator().reduce_scatter(x, op, axis, out)


def broadcast_from_worker0(x=None):
    """A copy of worker 0's x on every worker. Other workers' x is ignored (may be None)."""
    return communicator().broadcast_from_worker0(x)


def scatter_from_worker0(x=None, axis: int = 0):
    """Part `worker_id` of worker 0's x split evenly along `axis` (worker 0's axis counts).
    Other workers' x is ignored (may be None)."""
    return communicator().scatter_from_worker0(x, axis)


def gather_to_worker0(x, axis: int = 0):
    """On worker 0: concatenation of every worker's x (same shape everywhere) along
    `axis`. On the other workers: None."""
    return communicator().gather_to_worker0(x, axis)


def empty(shape, dtype=np.float32):
    """An uninitialised array for collectives of this worker's communicator to read in
    place where the backend can (shm: in shared memory every worker maps; an all-reduce
    of such arrays on every worker stages nothing). Use it for buffers that are
    all-reduced repeatedly, with `out=` another one."""
    return communicator().empty(shape, dtype)


def barrier() -> None:
    """Return once every worker of the group has called barrier()."""
    return communicator().barrier()


def _peer(peer, role: str):
    """This worker's peer: `peer` itself (an int), or its entry of a per-worker sequence;
    None where this worker takes no part (-1 or None)."""
    if isinstance(peer, (list, tuple)):
        ctx = current_context()
        if len(peer) != ctx.num_workers:
            raise CollectiveError(f"ccl: worker {ctx.worker_id} was given {role}={tuple(peer)!r}, one entry per "
                                  f"worker, but the group has {ctx.num_workers} workers")
        peer = peer[ctx.worker_id]
    if peer is None or (isinstance(peer, (int, np.integer)) and peer == -1):
        return None
    if not isinstance(peer, (int, np.integer)) or isinstance(peer, bool):
        raise CollectiveError(f"ccl: {role} must be a worker id (an int) or one per worker, given {peer!r}")
    return int(peer)


def send(x, dst) -> None:
    """Send x to worker `dst` (or, with one entry per worker, to this worker's entry; -1:
    send nothing). Returns None once x may be reused; the receiver calls `recv`."""
    dst = _peer(dst, "dst")
    if dst is None:
        return None
    return communicator().send(x, dst)


def recv(shape, dtype, src, *, out=None):
    """The next array worker `src` sends to this one (or, with one entry per worker, from
    this worker's entry; -1: receive nothing and return None). It must have `shape` and
    `dtype`; `out=` receives into a given array of that shape and dtype instead."""
    src = _peer(src, "src")
    if src is None:
        return None
    return communicator().recv(shape, dtype, src, out)


def _init_from_session(backend: str, group_name: str, options: tuple = ()) -> Communicator:
    """`init` as the global function "disco.ccl.init": the options come as the
    (name, value) pairs a session sends."""
    return init(backend, group_name, **dict(options))


def _register_global_funcs() -> None:
    """Expose init and the collectives as global functions, for sessions and DRefs."""
    try:
        from disco.registry import register_func
    except ImportError:  # the registry is not part of this checkout yet
        return
    register_func("disco.ccl.init", override=True)(_init_from_session)
    for name in FUNCTIONS:
        register_func(f"ccl.{name}", override=True)(globals()[name])


_register_global_funcs()
