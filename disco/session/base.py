"""Session, DRef and DFunction: the controller's side, shared by every session kind.

A subclass only starts and watches its workers (`_start_workers`, `_check_workers`,
`_stop_workers`); everything else -- encoding, waiting, errors, freeing -- is here.
"""
from __future__ import annotations

import itertools
import os
import time
import weakref
from typing import Any, Optional

import numpy as np

from disco import _native
from disco.errors import DiscoError, SessionError, WorkerError, WorkerTimeoutError
from disco.registry import UnknownFunctionError
from disco.session.protocol import INLINE_ARRAY_BYTES, Op, Status, Transfer

_session_numbers = itertools.count(1)


def default_timeout_s() -> float | None:
    """How long the controller waits for its workers' replies unless told
    (Session(timeout_s=...), sync(timeout=...)): $DISCO_SESSION_TIMEOUT_S seconds
    ("0", "none" or "inf": no deadline), else 900 (a hung worker is reported, and a
    load or warm-up of a large model still fits)."""
    text = os.environ.get("DISCO_SESSION_TIMEOUT_S", "900").strip().lower()
    try:
        value = float(text) if text not in ("none", "") else 0.0
    except ValueError:
        raise SessionError(f"DISCO_SESSION_TIMEOUT_S={text!r}: expected a number of seconds, or 0/none "
                           "for no deadline") from None
    return None if value <= 0 or value == float("inf") else value


_UNSET = object()
_RECENT = 4096  # commands remembered by seq (a power of 2), to name what a late worker runs


class DRef:
    """A handle to one object per worker (worker i's result of the call that made it).

    Dropping the last reference frees the objects on the workers: the ids collect in a
    list and go out as one FREE command before the session's next command (never from
    `__del__` itself, which may run in the middle of sending one)."""

    # __weakref__: a DModule function's binding of weight DRefs (disco/dmodule.py) must not
    # keep them alive
    __slots__ = ("_sess", "_id", "_tok", "_made_by", "__weakref__")

    def __init__(self, sess: "Session", ref_id: int, made_by: str = "?"):
        self._sess = sess
        self._id = ref_id
        self._tok = sess._tok
        self._made_by = made_by  # the function (or "broadcast", "scatter") whose result it is, for errors

    def fetch(self, worker: int = 0, *, timeout: Optional[float] = None) -> Any:
        """A copy of `worker`'s object on the controller (`timeout`: see Session.sync)."""
        return self._sess.fetch(self, worker, timeout=timeout)

    @property
    def session(self) -> "Session":
        return self._sess

    def __repr__(self) -> str:
        return f"<DRef {self._id} of {self._sess.name}>"

    def __del__(self):
        try:  # only a list append: safe in any context, even at interpreter shutdown
            sess = self._sess
            if not sess._closed:
                sess._to_free.append(self._id)
        except Exception:
            pass


# Dropped DRefs are freed on the workers in batches: before any command the controller
# waits for (so what it reads reflects them), or once this many are pending. One FREE
# per call would double the commands of a loop that drops each result.
_FREE_BATCH = 8
_WAITED_FOR = frozenset((Op.SYNC, Op.FETCH, Op.GATHER, Op.GET_FUNC, Op.IMPORT, Op.SHUTDOWN))
_CALL = int(Op.CALL)  # a plain int: an enum member lookup costs ~0.15 us of every call


class DFunction:
    """A registered function, called on every worker at once; returns a DRef."""

    __slots__ = ("_sess", "_slot", "name")

    def __init__(self, sess: "Session", slot: int, name: str):
        self._sess, self._slot, self.name = sess, slot, name

    def __call__(self, *args: Any) -> DRef:
        sess = self._sess
        rid = next(sess._ids)
        sess._post(_CALL, self._slot, rid, args)
        return DRef(sess, rid, self.name)

    def __repr__(self) -> str:
        return f"<DFunction {self.name!r} of {self._sess.name}>"


class Session:
    """A controller and `num_workers` workers that run the same calls (SPMD).

    Calls are pipelined: `f(x)` returns at once; a worker's failure is raised as
    WorkerError at the next `sync`, `fetch`, `gather`, `import_module` or
    `get_global_func`, after which the session is usable again. Each failure is
    raised once: several since the last report are one WorkerError (the earliest
    first, the others on "also failed:" lines), and a call that failed on several
    workers is one failure. Fetching or gathering a DRef whose call failed raises
    that call's error (every time: it has no value). A dead worker makes every later
    operation raise WorkerError; `shutdown` then ends the others.
    A session is driven by one thread at a time.

    Deadlines: every wait for replies ends after `timeout_s` seconds (default
    `default_timeout_s()`, 900 s or $DISCO_SESSION_TIMEOUT_S; None: no deadline), or a
    call's own `timeout=`, with a WorkerTimeoutError naming each late worker and the
    function it is still running; the session is then unusable (shutdown stops the
    workers, in parallel and within a bounded time)."""

    def __init__(self, num_workers: int, *, ring_bytes: int = 16 << 20, spin_us: float = 20.0,
                 timeout_s: Any = _UNSET):
        if not isinstance(num_workers, int) or num_workers < 1:
            raise SessionError(f"{type(self).__name__}: num_workers must be an int >= 1, got {num_workers!r}")
        self.num_workers = num_workers
        self.name = f"{type(self).__name__}#{next(_session_numbers)}(pid {os.getpid()})"
        self._tok = object()
        self._ids = itertools.count(1)
        self._funcs: dict[str, DFunction] = {}
        self._to_free: list[int] = []
        self._pending: list[tuple[int, list[int]]] = []  # (seq, buffer fds) until consumed
        self._failure: WorkerError | None = None
        self._reported: set[int] = set()  # seqs of failed commands raised since every worker last replied
        self._closed = False
        self._stopping = False  # shutdown began: workers exiting is expected
        self._deadline: float | None = None   # shutdown's
        self.timeout_s: float | None = default_timeout_s() if timeout_s is _UNSET else timeout_s
        self._wait: tuple | None = None        # (deadline, seq, what, timeout) of the wait in progress
        self._recent: list = [None] * _RECENT  # seq % _RECENT -> (seq, op, a)
        self._ccl_groups: list[str] = []       # group names made here (unlinked at shutdown)
        self._transfer = Transfer()
        try:
            self._chan = _native.Channel(num_workers, ring_bytes=ring_bytes, spin_us=spin_us)
        except _native.ChannelError as e:  # e.g. /dev/shm full
            raise SessionError(f"{self.name}: cannot create the command channel: {e}") from e
        self._transfer.codec = self._chan
        self._chan.set_codec(DRef, self._tok, self._transfer.encode, self._transfer.decode, None,
                             INLINE_ARRAY_BYTES)
        me = weakref.ref(self)
        self._chan.set_liveness(lambda: (s := me()) is not None and s._check_alive())
        self._start_workers()
        try:
            self._wait_attached(timeout_s=60.0)
        except BaseException:
            self.shutdown()
            raise

    # -- for subclasses ---------------------------------------------------------------
    def _start_workers(self) -> None:
        raise NotImplementedError

    def _check_workers(self) -> WorkerError | None:
        """The failure of a worker that is gone, if one is."""
        raise NotImplementedError

    def _stop_workers(self, timeout_s: float) -> None:
        """Make sure every worker has ended (after SHUTDOWN, or kill them)."""
        raise NotImplementedError

    # -- the public API ---------------------------------------------------------------
    def get_global_func(self, name: str) -> DFunction:
        """The function registered as `name` on the workers (UnknownFunctionError if absent)."""
        f = self._funcs.get(name)
        if f is None:
            slot = len(self._funcs) + 1
            status, value = self._collect(self._post(Op.GET_FUNC, slot, 0, name), f"get_global_func({name!r})",
                                          not_found_ok=True, timeout=None)
            if status == Status.NOT_FOUND:
                raise UnknownFunctionError(f"{self.name}: {value[0]}")
            f = self._funcs[name] = DFunction(self, slot, name)
        return f

    def import_module(self, module: str, *, timeout: Optional[float] = None) -> None:
        """Import `module` on every worker (so that what it registers exists there)."""
        self._collect(self._post(Op.IMPORT, 0, 0, module), f"import_module({module!r})", timeout=timeout)

    def broadcast(self, value: Any) -> DRef:
        """A DRef to a copy of `value` on every worker."""
        rid = next(self._ids)
        self._post(Op.BROADCAST, 0, rid, value)
        return DRef(self, rid, "broadcast")

    def scatter(self, array, axis: int = 0) -> DRef:
        """Split `array` evenly along `axis`; worker i gets part i."""
        array = np.asarray(array)
        if array.ndim == 0:
            raise SessionError(f"{self.name}.scatter: expected an array with at least 1 dimension, got a scalar")
        ax = axis + array.ndim if axis < 0 else axis
        if not 0 <= ax < array.ndim:
            raise SessionError(f"{self.name}.scatter: axis {axis} out of range for shape {array.shape}")
        if array.shape[ax] % self.num_workers:
            raise SessionError(
                f"{self.name}.scatter: cannot split axis {axis} of shape {array.shape} evenly over "
                f"{self.num_workers} workers ({array.shape[ax]} % {self.num_workers} != 0)")
        rid = next(self._ids)
        self._post(Op.SCATTER, ax, rid, array)
        return DRef(self, rid, "scatter")

    def fetch(self, ref: DRef, worker: int = 0, *, timeout: Optional[float] = None) -> Any:
        """A copy of `worker`'s object behind `ref` (`timeout`: see `sync`)."""
        self._own(ref, "fetch")
        if not 0 <= worker < self.num_workers:
            raise SessionError(f"{self.name}.fetch: worker {worker} out of range [0, {self.num_workers})")
        seq = self._post(Op.FETCH, ref._id, worker, None)
        return self._collect(seq, f"fetch of DRef {ref._id}", workers=(worker,), timeout=timeout)[0]

    def gather(self, ref: DRef, axis: int = 0, *, timeout: Optional[float] = None) -> np.ndarray:
        """Every worker's array behind `ref`, concatenated along `axis` in worker order."""
        self._own(ref, "gather")
        values = self._collect(self._post(Op.GATHER, ref._id, 0, None), f"gather of DRef {ref._id}",
                               timeout=timeout)
        try:
            return np.concatenate([np.asarray(v) for v in values], axis=axis)
        except (ValueError, TypeError) as e:  # numpy's AxisError is a ValueError
            held = "; ".join(f"worker {w}: {_value_kind(v)}" for w, v in enumerate(values))
            raise SessionError(
                f"{self.name}.gather of DRef {ref._id} (result of {ref._made_by}): expected arrays that concatenate "
                f"along axis {axis}, the workers hold {held} (numpy: {e})") from e

    def sync(self, *, timeout: Optional[float] = None) -> None:
        """Wait until every worker has run every command sent so far; raise their errors.
        After `timeout` seconds (default: the session's `timeout_s`) raise
        WorkerTimeoutError naming the late workers and what they run."""
        self._collect(self._post(Op.SYNC, 0, 0, self._take_free_ids()), "sync", timeout=timeout)

    @property
    def workers_on_other_hosts(self) -> tuple[int, ...]:
        """Workers that do not share the controller's host (an MPISession's may)."""
        return ()

    def default_ccl_backend(self) -> str:
        """The collectives' backend `init_ccl()` and `load_module` use unless told:
        "nccl" when the workers compute on GPUs of their own, "mpi" when some run on
        other hosts, else "shm" (same host, the fastest on CPU). Workers that share a
        GPU get "shm" too (NCCL refuses two ranks on one device), which copies their
        device arrays through host memory (disco/ccl/staging.py)."""
        ref = self.get_global_func("disco.worker_device")()
        devices = [str(ref.fetch(worker=w)) for w in range(self.num_workers)]
        if devices[0].startswith("cuda"):
            remote = set(self.workers_on_other_hosts)
            local = [d for w, d in enumerate(devices) if w not in remote]
            if len(set(local)) == len(local):
                return "nccl"
        return "mpi" if self.workers_on_other_hosts else "shm"

    def init_ccl(self, backend: Optional[str] = None, **options: Any) -> None:
        """Make a collective communicator on every worker: calls the global function
        "disco.ccl.init"(backend, group_name, options) on all workers, with a group name
        unique to this call, and waits for it. `backend` defaults to
        `default_ccl_backend()`. `options` go to the backend (shm: timeout_s,
        chunk_bytes, ...); a backend may add its own first, through this session (nccl:
        worker 0's unique id, see `disco.ccl.session_options`)."""
        from disco import ccl
        from disco.ccl import segments
        if backend is None:
            backend = self.default_ccl_backend()
        group = segments.new_group_name()
        options = ccl.session_options(backend, self, dict(options))
        self._ccl_groups.append(group)
        try:
            self.get_global_func("disco.ccl.init")(backend, group, tuple(options.items()))
            self.sync()
        except BaseException:
            segments.unlink_groups([group])  # a worker 0 that died while it formed left it
            raise

    def load_module(self, executable, **options: Any):
        """A `disco.dmodule.DModule`: `executable` (a compiled, possibly tensor-parallel
        module) loaded on every worker; call its functions with `dmod["main"](*args)`."""
        from disco.dmodule import load_module
        return load_module(self, executable, **options)

    def shutdown(self) -> None:
        """End the workers (each finishes the commands before SHUTDOWN). Idempotent."""
        if self._closed:
            return
        try:
            self._stopping = True
            if self._failure is None:
                self._to_free.clear()
                self._deadline = time.monotonic() + 10.0
                self._collect(self._post(Op.SHUTDOWN, 0, 0, None), "shutdown", timeout=0)
        except DiscoError:
            pass  # a failing worker must not keep the others alive
        finally:
            self._closed = True
            self._chan.close()
            # Workers that did not answer SHUTDOWN are hung or dead: less grace for them.
            self._stop_workers(timeout_s=5.0 if self._failure is None else 1.0)
            if self._ccl_groups:
                from disco.ccl import segments
                segments.unlink_groups(self._ccl_groups)
            self._release(force=True)
            self._chan.set_liveness(None)
            # The codec's hooks and the channel refer to each other (Transfer.codec): a
            # cycle through a native object, which GC cannot see; cut it so the fd closes.
            self._chan.set_codec(None, None, None, None, None, INLINE_ARRAY_BYTES)
            self._transfer.codec = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("failed" if self._failure else "running")
        return f"<{self.name} num_workers={self.num_workers} {state}>"

    def check_mesh_size(self, mesh_size: int, what: str = "the model") -> None:
        """Raise SessionError unless a device mesh of `mesh_size` fits this session
        exactly (one worker per mesh device); loaders call it before sending weights."""
        if mesh_size != self.num_workers:
            raise SessionError(
                f"{self.name}: {what} is sharded over a device mesh of {mesh_size} devices but the session "
                f"has {self.num_workers} workers; start it with {mesh_size} workers (disco-launch -n "
                f"{mesh_size}, mpiexec -n {mesh_size}, or disco.start({mesh_size})) or compile the model "
                f"for a mesh of {self.num_workers}")

    # -- the plumbing -----------------------------------------------------------------
    def _post(self, op: int, a: int, b: int, payload: Any) -> int:
        if self._to_free and (len(self._to_free) >= _FREE_BATCH or op in _WAITED_FOR):
            self._flush_free()
        if self._failure is not None or self._closed:
            self._raise_unusable()
        try:
            seq = self._chan.post(op, a, b, payload)
        except TypeError:
            self._explain_foreign(payload)
            raise
        except _native.ChannelError as e:  # the command does not fit in the ring
            raise SessionError(
                f"{self.name}: {self._command_name(op, a)}: {e}; pass large data as numpy arrays (they travel "
                f"through shared-memory buffers, not the ring) or start the session with a larger ring "
                f"({type(self).__name__}({self.num_workers}, ring_bytes=...), at least 4x the command)") from e
        if self._transfer.outgoing:
            self._pending.append((seq, self._transfer.take()))
        self._recent[seq & (_RECENT - 1)] = (seq, op, a)
        return seq

    def _command_name(self, op: int, a: int) -> str:
        """How the user wrote command `op` (a: its first operand), for error messages."""
        if op == Op.CALL:
            name = next((f.name for f in self._funcs.values() if f._slot == a), f"function slot {a}")
            return f"call of {name}"
        return {Op.BROADCAST: "broadcast", Op.SCATTER: "scatter", Op.IMPORT: "import_module",
                Op.GET_FUNC: "get_global_func", Op.FREE: "freeing dropped DRefs"}.get(op, Op(op).name)

    def _collect(self, seq: int, what: str, workers=None, not_found_ok: bool = False,
                 timeout: Optional[float] = None):
        """Wait for the replies to `seq` (at most `timeout` s, None: the session's
        timeout_s, 0: no deadline); their values, or raise the worker failures they
        report (worker.py's docstring gives the ERROR reply's value)."""
        limit = self.timeout_s if timeout is None else (timeout or None)
        self._wait = (time.monotonic() + limit, seq, what, limit) if limit else None
        try:
            return self._collect_replies(seq, what, workers, not_found_ok)
        finally:
            self._wait = None

    def _collect_replies(self, seq: int, what: str, workers, not_found_ok: bool):
        chan = self._chan
        every = workers is None
        if every and chan.wait_all(seq):  # every reply OK with value None (checked in C++): nothing to decode
            if self._pending:
                self._release()
            self._reported.clear()
            return (Status.OK, None) if not_found_ok else [None] * self.num_workers
        values, own, deferred, not_found = [], [], [], None
        for w in range(self.num_workers) if every else workers:
            chan.wait(w, seq)
            status, value = chan.reply(w)
            if status == Status.NOT_FOUND and not_found_ok:
                not_found = not_found or (status, value)
            elif status == Status.ERROR:
                summary, tb, failed_seq, later, value = value
                if summary is not None:  # this command's own failure, always raised
                    own.append((failed_seq, w, summary, tb))
                deferred.extend((s, w, m, t) for s, m, t in later)
            elif status != Status.OK:
                own.append((seq, w, value[0], value[1]))
            values.append(value)
        if self._pending:
            self._release()
        # A deferred failure already raised (e.g. at a fetch from another worker) is not raised again.
        fresh = sorted((d for d in deferred if d[0] == 0 or d[0] not in self._reported),
                       key=lambda d: (d[0] == 0, d[0]))
        failures = own + fresh
        if every:  # every worker has now reported everything before `seq`
            self._reported.clear()
        else:
            self._reported.update(f[0] for f in failures if f[0])
        if failures:
            raise self._worker_error(failures)
        if not_found:
            return not_found
        return (Status.OK, values[0]) if not_found_ok else values

    def _worker_error(self, failures: list[tuple[int, int, str, str]]) -> WorkerError:
        """One WorkerError for (seq, worker, summary, traceback) failures, the first one
        leading; failures of one command on several workers are named together."""
        groups: dict[int, list] = {}
        for f in failures:
            groups.setdefault(f[0] or -len(groups) - 1, []).append(f)
        lines = []
        for group in groups.values():
            _, w, summary, _ = group[0]
            ws = sorted({f[1] for f in group})
            lines.append(f"worker {w}: {summary}" + (f" (workers {ws} failed)" if len(ws) > 1 else ""))
        _, w, _, tb = failures[0]
        also = "".join(f"\nalso failed: {line}" for line in lines[1:])
        return WorkerError(f"{self.name}: {lines[0]}{also}\n--- remote traceback (worker {w}) ---\n{tb}", w, tb)

    def _take_free_ids(self) -> tuple | None:
        """The dropped DRefs' ids for a SYNC to free on its way (protocol.py), if they
        fit in one command; else they go out as FREE commands now and this is None."""
        if not self._to_free or len(self._to_free) > self._chan.max_message // 16:
            self._flush_free()
            return None
        ids, self._to_free = tuple(self._to_free), []
        return ids

    def _flush_free(self) -> None:
        ids, self._to_free = self._to_free, []
        if self._failure is None and not self._closed:
            # In batches that fit in the ring (an id takes 9 bytes): many DRefs dropped at
            # once must not make one command too large for a small ring.
            batch = max(1, self._chan.max_message // 16)
            for i in range(0, len(ids), batch):
                self._post_free(tuple(ids[i:i + batch]))

    def _post_free(self, ids: tuple) -> int:
        """Send one FREE command (a batch of DRef ids); sessions that relay commands
        elsewhere (MPISession) also send it there."""
        return self._chan.post(Op.FREE, 0, 0, ids)

    def _release(self, force: bool = False) -> None:
        """Close buffers that every worker has read past."""
        done = None if force else min(self._chan.consumed(w) for w in range(self.num_workers))
        keep = []
        for seq, fds in self._pending:
            if done is None or seq <= done:
                for fd in fds:
                    os.close(fd)
            else:
                keep.append((seq, fds))
        self._pending = keep

    def _check_alive(self) -> None:
        """Between timed waits: raise if a worker died or shutdown's deadline passed."""
        if self._failure is None:
            self._failure = self._check_workers()
        if self._failure is not None:
            self._raise_unusable()
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise SessionError(f"{self.name}: workers did not answer before the shutdown deadline")
        if self._wait is not None and time.monotonic() > self._wait[0]:
            self._failure = self._timed_out(*self._wait[1:])
            self._raise_unusable()

    def _timed_out(self, seq: int, what: str, limit: float) -> WorkerTimeoutError:
        """The error of a wait for `seq` that passed its deadline: each worker that has not
        reached `seq` and the command it is still running (the last one it took)."""
        late = []
        for w in range(self.num_workers):
            running = self._chan.consumed(w)
            if running < seq:
                rec = self._recent[running & (_RECENT - 1)]
                doing = self._command_name(rec[1], rec[2]) if rec and rec[0] == running else "a command"
                late.append((w, f"worker {w} is still running {doing} (command {running})"))
        late = late or [(w, f"worker {w} has not replied") for w in range(self.num_workers)]
        return WorkerTimeoutError(
            f"{self.name}: {what} timed out after {limit:g} s: {'; '.join(t for _, t in late)}. The session is "
            "unusable: call shutdown() (it stops the workers) and start a new one; for longer work pass "
            "timeout= or start the session with timeout_s= (env DISCO_SESSION_TIMEOUT_S)", late[0][0], None)

    def _raise_unusable(self):
        if self._failure is not None:
            f = self._failure
            raise type(f)(str(f), f.worker_id, f.remote_traceback)
        raise SessionError(f"{self.name} is shut down; start a new session")

    def _wait_attached(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        while not all(self._chan.attached(w) for w in range(self.num_workers)):
            self._check_alive()
            if time.monotonic() - t0 > timeout_s:
                raise SessionError(f"{self.name}: workers did not start within {timeout_s} s")
            time.sleep(0.001)

    def _own(self, ref: Any, what: str) -> None:
        if not isinstance(ref, DRef):
            raise SessionError(f"{self.name}.{what}: expected a DRef, got {type(ref).__name__}")
        if ref._tok is not self._tok:
            raise _foreign(self, ref, what)

    def _explain_foreign(self, payload: Any) -> None:
        stack = [payload]
        while stack:
            x = stack.pop()
            if isinstance(x, (tuple, list)):
                stack.extend(x)
            elif isinstance(x, DRef) and x._tok is not self._tok:
                raise _foreign(self, x, "call")


def _value_kind(value: Any) -> str:
    """'ndarray of shape (4, 2) and dtype float32', or the type's name ('int', 'NoneType')."""
    if isinstance(value, np.ndarray):
        return f"ndarray of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def _foreign(sess: Session, ref: DRef, what: str) -> SessionError:
    return SessionError(f"{sess.name}.{what}: {ref!r} belongs to {ref._sess.name}, not to {sess.name}; "
                        "a DRef is valid only in the session that made it (fetch it and pass the value)")
