"""DModule: a compiled tensor-parallel module loaded on every worker of a session.

    ex = compiler.build(mod)                 # metadata["distributed"]: placements, mesh
    dmod = sess.load_module(ex)              # the executable on every worker
    y = dmod["main"](x, w1, w2).fetch()      # numpy in, global numpy out

Arguments follow the placements recorded at build time: a replicated parameter is
broadcast, a sharded one split so that each worker gets only its shard (one scatter);
DRefs pass through unchanged, so weights placed once with `dmod.place(...)` (or
`disco.load_shards`) are not sent again. A call returns a `DTensorRef`: a DRef to each
worker's local result whose `fetch()` assembles the global value (worker 0's copy when
replicated, gathered when sharded, summed when partial).

Worker side: the functions registered here ("disco.dmodule.*") load the executable
into a VM per worker (cached by content hash) and run its functions.
"""
from __future__ import annotations

import hashlib
import math
import operator
import weakref
from typing import Any, Optional, Sequence

import numpy as np

from disco import spmd  # noqa: F401  (registers the runtime functions of R.ccl.* here too)
from disco._context import current_context
from disco.errors import PlacementError, SessionError
from disco.placement import Layout
from disco.registry import register_func
from disco.session.base import DRef, Session

def check_fits(layout: Layout, shape, what: str) -> None:
    """SessionError (the caller's arguments are wrong) unless an array of `shape` splits
    evenly under `layout`."""
    try:
        layout.check(shape, what)
    except PlacementError as e:
        raise SessionError(str(e)) from None


# A replicated argument of at most this many bytes (a decode step's token ids) rides in
# the call's own command instead of a broadcast before it (see `place`'s `inline`).
_INLINE_BYTES = 4096
# A call whose trailing arguments are at least this many DRefs, the same as the call
# before (a model's weights), binds them once on the workers (DFunctionHandle.__call__).
_BIND_MIN = 8
_DEREF = weakref.ref.__call__   # a weak reference's referent (None once collected)


def place(sess: Session, array: Any, layout: Layout, what: str = "array", inline: bool = False):
    """A DRef to each worker's piece of `array` under `layout`. With `inline`, a small
    replicated numeric array is returned as a contiguous array instead, for the caller to
    pass in a call's own command (the channel copies it to every worker, as a broadcast
    would, and the call needs no command before it)."""
    if isinstance(array, DRef):
        return array
    a = np.asarray(array)
    if layout.partial:
        raise SessionError(f"{what}: cannot place a value with a Partial placement "
                           f"({layout.text!r}); pass its full value replicated or sharded")
    if a.ndim != layout.ndim:
        raise SessionError(f"{what}: expected a {layout.ndim}-d array, got shape {a.shape}")
    check_fits(layout, a.shape, what)
    if layout.replicated:
        if inline and a.dtype.kind in "biuf" and a.nbytes <= _INLINE_BYTES and a.ndim > 0:
            return np.ascontiguousarray(a)
        return sess.broadcast(np.ascontiguousarray(a))
    dim = layout.single_shard_dim()
    if dim is not None:
        return sess.scatter(np.ascontiguousarray(a), axis=dim)
    stacked = np.stack([a[layout.block(w, a.shape)] for w in range(sess.num_workers)])
    return sess.get_global_func("disco.dmodule.unstack")(sess.scatter(stacked, axis=0))


def assemble(sess: Session, ref: DRef, layout: Layout, shape: Optional[Sequence] = None) -> np.ndarray:
    """The global array behind per-worker pieces `ref` under `layout`."""
    if layout.replicated:
        return np.asarray(sess.fetch(ref, 0))
    dim = layout.single_shard_dim()
    if dim is not None:
        return sess.gather(ref, axis=dim)
    pieces = {w: np.asarray(sess.fetch(ref, w)) for w in range(sess.num_workers) if layout.is_lead(w)}
    first = next(iter(pieces.values()))
    gshape = [n * f for n, f in zip(first.shape, layout.factors)]
    out = np.zeros(gshape, first.dtype)
    for w, piece in pieces.items():
        if layout.partial:
            out[layout.block(w, gshape)] += piece
        else:
            out[layout.block(w, gshape)] = piece
    return out


class DTensorRef(DRef):
    """A DRef to each worker's local piece of a distributed value; `fetch()` gives the
    global value, `fetch_local(worker)` one worker's piece."""

    __slots__ = ("layout",)

    def __init__(self, sess: Session, ref_id: int, layout: Layout):
        super().__init__(sess, ref_id)
        self.layout = layout

    def fetch(self, worker: Optional[int] = None) -> Any:
        # A gather from every worker (a plain split over all of them) needs no sync: each
        # worker replies, with the failure of the call that made the value, if any, and
        # every failure it deferred (disco/session/worker.py). Otherwise sync first, so
        # that every worker's failures are raised; a decode step's logits save a round trip.
        if worker is not None or self.layout.single_shard_dim() is None:
            self._sess.sync()
        if worker is not None:
            return self._sess.fetch(self, worker)
        return assemble(self._sess, self, self.layout)

    def fetch_local(self, worker: int = 0) -> Any:
        self._sess.sync()
        return self._sess.fetch(self, worker)


def adopt(ref: DRef, layout: Layout, device_ids: Optional[Sequence[int]] = None) -> DTensorRef:
    """A DTensorRef that takes over `ref`'s remote object (`ref` must not be used after);
    with `device_ids`, a value on those workers only (a pipeline stage's mesh): a
    disco.pipeline.StageTensorRef."""
    if device_ids is not None:
        from disco.pipeline import StageTensorRef
        out = StageTensorRef(ref._sess, ref._id, layout, device_ids)
    else:
        out = DTensorRef(ref._sess, ref._id, layout)
    ref._sess = _Detached    # the id now belongs to `out`; `ref` must not free it
    return out


class _DetachedSession:
    _closed = True


_Detached = _DetachedSession()


# -- the controller side -----------------------------------------------------------------


class DFunctionHandle:
    """`dmod["main"]`: call with numpy arrays / DRefs; returns DTensorRef(s)."""

    def __init__(self, dmod: "DModule", name: str, info: Optional[dict]):
        self.dmod, self.name, self.info = dmod, name, info
        mesh = dmod.mesh_shape
        self.params = []
        if info is not None:
            for p in info["params"]:
                ndim = len(p["shape"]) if p.get("shape") is not None else 0
                self.params.append((p["name"], Layout(p.get("placement"), mesh, ndim), p))
        else:       # not distributed: every tensor parameter whole on every worker
            for p in dmod.executable.functions[name].params:
                pat = p["pattern"]
                if pat.get("kind") == "tensor" and pat.get("ndim", -1) >= 0:
                    self.params.append((p["name"], Layout(None, mesh, pat["ndim"]), {"shape": None}))
                else:
                    self.params.append((p["name"], Layout(None, mesh, 0), {}))
        self.result = info["result"] if info is not None else None
        # (start, weak references to the trailing DRefs bound, the workers' bound
        # arguments, a token) of the binding in force (`_bind`), and the DRef ids of the
        # previous call's trailing DRefs (never reused in a session: equal ids, the same
        # remote objects)
        self._bound: Optional[tuple] = None
        self._last_tail: tuple = ()
        self._layouts: dict = {}            # id(result description) -> (it, its Layout)

    def place(self, *args: Any) -> list:
        """Each argument placed on the workers per its parameter (DRefs unchanged)."""
        self._check_count(args)
        return self._place(args, False)

    def _check_count(self, args: Sequence) -> None:
        if self.info is not None and len(args) != len(self.params):
            names = ", ".join(n for n, _, _ in self.params)
            raise SessionError(f"{self.name}: expected {len(self.params)} arguments ({names}), "
                               f"got {len(args)}")

    def _place(self, args: Sequence, inline: bool) -> list:
        """The first len(args) arguments placed (`inline`: see `place`)."""
        sess = self.dmod.session
        out = []
        for i, a in enumerate(args):
            if isinstance(a, DRef) or self.info is None:
                out.append(a if isinstance(a, DRef) else sess.broadcast(a))
                continue
            name, layout, p = self.params[i]
            if "shape" not in p:            # a shape or scalar parameter: the same everywhere
                out.append(sess.broadcast(a))
                continue
            out.append(place(sess, a, layout, f"{self.name}: parameter {name!r}", inline))
        return out

    def __call__(self, *args: Any):
        sess = self.dmod.session
        b = self._bound
        if b is not None and len(args) == len(self.params) and \
                all(map(operator.is_, args[b[0]:], map(_DEREF, b[1]))):
            # the trailing arguments bound on the workers: send only the others
            head = self._place(args[:b[0]], True)
            ref = sess.get_global_func("disco.dmodule.call_bound")(self.dmod._vm, self.name, b[2], *head)
            return self._wrap(ref, self.result)
        self._check_count(args)
        placed = self._place(args, True)
        k = len(args)
        while k > 0 and isinstance(args[k - 1], DRef):
            k -= 1
        if len(args) - k >= _BIND_MIN and len(args) == len(self.params):
            tail = args[k:]
            ids = tuple(r._id for r in tail)
            if ids == self._last_tail:      # the same as the call before: bind them
                self._last_tail = ()
                bref = self._bind(k, tail)
                ref = sess.get_global_func("disco.dmodule.call_bound")(self.dmod._vm, self.name, bref,
                                                                      *placed[:k])
                return self._wrap(ref, self.result)
            self._last_tail = ids
        ref = sess.get_global_func("disco.dmodule.call")(self.dmod._vm, self.name, *placed)
        return self._wrap(ref, self.result)

    def _bind(self, start: int, tail: Sequence[DRef]) -> DRef:
        """Bind `tail` as the arguments from `start` on, on the workers. The handle keeps
        weak references to them: when one is dropped, the binding is released (its DRef
        freed, and with it the workers' references to the arrays)."""
        self._bound = None                  # the old binding's DRef dropped: freed
        bref = self.dmod.session.get_global_func("disco.dmodule.bind")(self.dmod._vm, self.name, start, *tail)
        me, token = weakref.ref(self), object()

        def gone(_, me=me, token=token):
            h = me()
            if h is not None and h._bound is not None and h._bound[3] is token:
                h._bound = None
        self._bound = (start, tuple(weakref.ref(r, gone) for r in tail), bref, token)
        return bref

    def _wrap(self, ref: DRef, result: Optional[dict]):
        sess = self.dmod.session
        if result is not None and "fields" in result:
            getter = sess.get_global_func("disco.dmodule.tuple_get")
            return tuple(self._wrap(getter(ref, i), f) for i, f in enumerate(result["fields"]))
        if result is None or result.get("shape") is None:
            return ref
        made = self._layouts.get(id(result))    # a Layout is never changed: made once per result
        if made is None or made[0] is not result:
            made = self._layouts[id(result)] = (result, Layout(result.get("placement"), self.dmod.mesh_shape,
                                                               len(result["shape"])))
        return adopt(ref, made[1])

    def __repr__(self) -> str:
        return f"<DModule function {self.name!r} of {self.dmod.session.name}>"


class DModule:
    """An Executable loaded on every worker of `session` (see the module docstring).

    `ccl_backend`: the collectives' backend, initialised on the workers when the module
    is distributed and the session has not got it yet: "auto" = the session's
    `default_ccl_backend()` ("nccl" on GPU workers, "mpi" when some workers are on
    other hosts, else "shm", the fastest on one host); None: leave the session's as is."""

    def __init__(self, session: Session, executable, *, ccl_backend: Optional[str] = "auto"):
        self.session = session
        self.executable = executable
        dist = executable.metadata.get("distributed") or {}
        self.functions_info: dict = dist.get("functions", {})
        self._handles: dict = {}
        self.mesh_shape = tuple(dist.get("mesh_shape") or (session.num_workers,))
        ids = dist.get("device_ids")
        size = math.prod(self.mesh_shape)
        self.stages = [st for f in self.functions_info.values() for st in f.get("stages", ())]
        if self.stages:     # a pipeline: each stage's mesh on its own workers
            size = 1 + max(i for st in self.stages for i in st["device_ids"])
            self.mesh_shape, ids = (size,), None
        session.check_mesh_size(size, f"the executable (device mesh of shape {self.mesh_shape})")
        if ids is not None and list(ids) != list(range(size)):
            raise SessionError(f"{session.name}: the executable's device mesh lists device ids "
                               f"{ids}; loading expects workers 0..{size - 1} in order")
        session.import_module("disco.dmodule")
        if self.stages:
            session.import_module("disco.pipeline")
        if ccl_backend is not None and session.num_workers > 1 and dist:
            backend = prepare_collectives(session, ccl_backend, self.mesh_shape)
            if self.stages:
                prepare_stage_groups(session, backend, self.stages)
        data = executable.to_bytes()
        self._vm = session.get_global_func("disco.dmodule.load")(
            np.frombuffer(data, np.uint8), hashlib.sha256(data).hexdigest()[:20])
        session.sync()

    def __getitem__(self, name: str) -> DFunctionHandle:
        if name not in self._handles:       # made once: a decode step calls it every token
            self._handles[name] = self._make_handle(name)
        return self._handles[name]

    def _make_handle(self, name: str) -> DFunctionHandle:
        info = self.functions_info.get(name)
        if info is not None and "stages" in info:
            from disco.pipeline import PipelineFunctionHandle
            return PipelineFunctionHandle(self, name, info)
        if name not in self.executable.functions:
            raise SessionError(f"DModule has no function {name!r}; it has "
                               f"{sorted(self.executable.functions)}")
        return DFunctionHandle(self, name, info)

    def place(self, params: dict, function: str = "main") -> dict:
        """Place named arguments of `function` once (e.g. the weights); returns name ->
        DTensorRef, to pass in later calls instead of the arrays."""
        h = self[function]
        by_name = {n: (layout, n) for n, layout, _ in h.params}
        out = {}
        for name, value in params.items():
            if name not in by_name:
                raise SessionError(f"DModule.place: {function!r} has no parameter {name!r}; it "
                                   f"has {[n for n, _, _ in h.params]}")
            layout = by_name[name][0]
            ref = place(self.session, value, layout, f"{function}: parameter {name!r}")
            out[name] = ref if isinstance(value, DRef) else adopt(ref, layout)
        return out

    def placements(self, function: str = "main") -> dict:
        """Parameter name -> placement text of `function`."""
        return {n: layout.text for n, layout, _ in self[function].params}


class _Collectives:
    """What a session's DModules have set up on its workers: the backend, and the
    group communicators of each multi-axis mesh shape."""

    def __init__(self, backend: str):
        self.backend = backend
        self.mesh_groups: set = set()


_COLLECTIVES: "weakref.WeakKeyDictionary[Session, _Collectives]" = weakref.WeakKeyDictionary()


def prepare_collectives(session: Session, backend: str, mesh_shape: tuple) -> str:
    """The collectives a distributed module needs, made once per session: `backend`
    ("auto": the session's default) and, for a mesh of several axes, a communicator per
    group along each axis (spmd.init_groups). Returns the backend."""
    if backend == "auto":
        backend = session.default_ccl_backend()
    made = _COLLECTIVES.get(session)
    if made is None or made.backend != backend:
        session.init_ccl(backend)
        made = _COLLECTIVES[session] = _Collectives(backend)
    if len(mesh_shape) > 1 and mesh_shape not in made.mesh_groups:
        from disco.ccl import segments
        if backend == "shm":
            segments.sweep_stale()
        base = segments.new_group_name()
        session._ccl_groups.append(base)
        session.get_global_func("spmd.init_groups")(backend, base, list(mesh_shape), segments.new_secret())
        session.sync()
        made.mesh_groups.add(mesh_shape)
    return backend


def prepare_stage_groups(session: Session, backend: str, stages: list) -> None:
    """The communicators of each pipeline stage's mesh (spmd.init_stage_groups), once
    per session and mesh."""
    from disco.ccl import segments
    made = _COLLECTIVES[session]
    for st in stages:
        key = ("stage", tuple(st["device_ids"]), tuple(st["mesh_shape"]))
        if key in made.mesh_groups:
            continue
        base = segments.new_group_name()
        session._ccl_groups.append(base)
        session.get_global_func("spmd.init_stage_groups")(backend, base, list(st["device_ids"]),
                                                          list(st["mesh_shape"]), segments.new_secret())
        session.sync()
        made.mesh_groups.add(key)


def load_module(sess: Session, executable, **options: Any) -> DModule:
    """`sess.load_module(ex)`."""
    return DModule(sess, executable, **options)


# -- the worker side --------------------------------------------------------------------


_EXECUTABLES: dict[str, Any] = {}     # content hash -> Executable (per process)


@register_func("disco.dmodule.load", override=True)
def _load(data, digest: str):
    """This worker's VM of the executable in `data` (bytes of its exported file)."""
    from disco.executable import load_executable
    from disco.vm import VirtualMachine
    ex = _EXECUTABLES.get(digest)
    if ex is None:
        ex = _EXECUTABLES[digest] = load_executable(np.asarray(data, np.uint8).tobytes())
    return VirtualMachine(ex, current_context().device)


@register_func("disco.dmodule.call", override=True)
def _call(vm, name: str, *args):
    return vm[name](*args)


@register_func("disco.dmodule.bind", override=True)
def _bind(vm, name: str, start: int, *args):
    """The arguments from position `start` on of many calls of `vm[name]` (call_bound)."""
    h = vm[name]
    return h.bind(start, args) if hasattr(h, "bind") else tuple(args)


@register_func("disco.dmodule.call_bound", override=True)
def _call_bound(vm, name: str, bound, *head):
    """`vm[name](*head, *bound arguments)` (disco.vm.machine.BoundArgs)."""
    h = vm[name]
    if type(bound) is tuple:            # a function handle without binding (CUDA graphs)
        return h(*head, *bound)
    return h.call_bound(head, bound)


@register_func("disco.dmodule.unstack", override=True)
def _unstack(x):
    return np.ascontiguousarray(x[0])


@register_func("disco.dmodule.tuple_get", override=True)
def _tuple_get(t, i):
    return t[i]
