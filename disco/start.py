"""`disco.start()`: one entry point, whichever way the program was launched.

    sess = disco.start()          # python app.py / disco-launch -n 4 app.py / mpiexec -n 4 python app.py

Under an MPI launcher (seen in the environment: PMI_RANK/PMI_SIZE from MPICH's Hydra,
OMPI_COMM_WORLD_RANK/SIZE from Open MPI, PMIX_RANK) rank 0 gets an `MPISession` over
all ranks, and every other rank serves as a worker inside this call and then exits,
so the code after `disco.start()` runs on the controller only. Otherwise it returns
a `ProcessSession` with `num_workers` workers (the argument, else DISCO_NUM_WORKERS
as set by `disco-launch`, else 1). device="cuda" binds worker i to GPU i modulo the
GPUs of its host (ranks laid out host by host, as mpiexec does by default);
device="cuda:N", as for a VirtualMachine, starts at GPU N: worker i gets GPU N + i,
modulo the GPUs of its host (one worker: GPU N).

DISCO_PREFIX_OUTPUT=1 (set by `disco-launch`) makes what workers print start with
"[<worker id>] ", so their lines can be told from the controller's.
"""
from __future__ import annotations

import os
import sys
import threading

from disco.errors import DiscoError, SessionError
from disco.registry import register_func

_RANK_VARS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
              ("PMIX_RANK", None))


def mpi_environment(environ=None) -> tuple[int, int | None] | None:
    """(rank, size) if this process was started by an MPI launcher, else None. The size
    is None where the launcher does not export it (PMIx alone)."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in _RANK_VARS:
        if rank_var in env:
            size = env.get(size_var) if size_var else None
            return int(env[rank_var]), (int(size) if size else None)
    return None


def start(num_workers: int | None = None, device: str = "cpu"):
    """A session for this program: MPISession under mpiexec (on rank 0; other ranks
    never return), ProcessSession otherwise. See the module docstring."""
    first_gpu = _first_gpu(device)
    env = mpi_environment()
    if env is not None:
        return _with_devices(_start_mpi(env, num_workers, device), first_gpu)
    n = num_workers if num_workers is not None else _env_workers()
    from disco.session.process import ProcessSession

    sess = ProcessSession(n)
    if _prefix_wanted():
        sess.import_module("disco.start")
        sess.get_global_func("disco.start.prefix_output")()
        sess.sync()
    return _with_devices(sess, first_gpu)


def _first_gpu(device) -> int | None:
    """The GPU of worker 0 for `device` ('cuda' -> 0, 'cuda:N' -> N), None for 'cpu'.
    Only the form is checked here; whether the GPU exists, each worker's host tells."""
    if isinstance(device, str):
        if device == "cpu":
            return None
        head, sep, index = device.partition(":")
        if head == "cuda" and (not sep or index.isdigit()):
            return int(index) if sep else 0
    raise SessionError(f"disco.start: device must be 'cpu', 'cuda' (worker i on GPU i) or 'cuda:N' "
                       f"(worker i on GPU N + i), got {device!r}")


def _with_devices(sess, first_gpu: int | None):
    """Bind worker i to GPU first_gpu + i modulo the GPUs of its host; shut the session
    down if a worker cannot (no cupy, no GPU, no GPU first_gpu)."""
    if first_gpu is not None:
        try:
            sess.import_module("disco.start")
            sess.get_global_func("disco.start.bind_gpu")(first_gpu)
            sess.sync()
        except BaseException:
            sess.shutdown()
            raise
    return sess


@register_func("disco.start.bind_gpu", override=True)
def bind_gpu(first: int) -> int:
    """On a worker: use GPU (first + worker id) modulo this host's GPUs; its index."""
    from disco._context import current_context
    from disco.cuda import bind_device, cupy_module

    count = cupy_module().cuda.runtime.getDeviceCount()  # says "needs cupy" / "no GPU" where so
    if first >= count:
        raise DiscoError(f"disco.start: device 'cuda:{first}' but this host has {count} GPU(s) "
                         f"(cuda:0..cuda:{count - 1})")
    n = current_context().num_workers
    return bind_device([(first + w) % count for w in range(n)])


def _env_workers() -> int:
    raw = os.environ.get("DISCO_NUM_WORKERS", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise SessionError(f"disco.start: DISCO_NUM_WORKERS must be an int >= 1, got {raw!r}")
    return n


def _start_mpi(env: tuple[int, int | None], num_workers: int | None, device: str):
    rank, size = env
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise SessionError(f"disco.start: launched by MPI (rank {rank}) but mpi4py cannot be imported ({e}); "
                           "install the `mpi` extra: pip install mpich mpi4py") from None
    comm = MPI.COMM_WORLD
    if num_workers is not None and num_workers != comm.size:
        raise SessionError(f"disco.start: num_workers={num_workers} but the MPI job has {comm.size} ranks; "
                           f"launch with -n {num_workers} or call disco.start() without num_workers")
    prefix = _prefix_wanted()
    if comm.rank == 0:
        from disco.session.mpi import MPISession

        if prefix:
            _install_prefix(thread_workers_only=True)
        return MPISession(comm, device=device)
    from disco.session.mpi import serve_rank

    if prefix:
        _install_prefix(thread_workers_only=False, worker=comm.rank)
    code = serve_rank(comm, device)
    sys.exit(code)


def _prefix_wanted() -> bool:
    return os.environ.get("DISCO_PREFIX_OUTPUT", "") not in ("", "0")


class _PrefixedStream:
    """A text stream that starts each line a worker writes with "[<worker>] ".

    `worker` fixed: every line (a worker process). None: only lines written by a thread
    that is a worker (worker 0 inside rank 0); the controller's lines stay as they are.
    Whole lines go out in one write, so lines of different processes do not mix."""

    def __init__(self, stream, worker: int | None):
        self._stream, self._worker = stream, worker
        self._partial: dict[int, str] = {}  # thread -> its unfinished line
        self._lock = threading.Lock()

    def _who(self) -> int | None:
        if self._worker is not None:
            return self._worker
        from disco import _context
        ctx = getattr(_context._local, "ctx", None)
        return None if ctx is None else ctx.worker_id

    def write(self, text: str) -> int:
        w = self._who()
        if w is None:
            return self._stream.write(text)
        me = threading.get_ident()
        with self._lock:
            text = self._partial.pop(me, "") + text
            done, sep, rest = text.rpartition("\n")
            if rest:
                self._partial[me] = rest
            if sep:
                self._stream.write("".join(f"[{w}] {line}\n" for line in done.split("\n")))
        return len(text)

    def flush(self) -> None:
        w = self._who()
        with self._lock:
            rest = self._partial.pop(threading.get_ident(), "")
            if rest and w is not None:
                self._stream.write(f"[{w}] {rest}")
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _install_prefix(thread_workers_only: bool, worker: int | None = None) -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, _PrefixedStream):
            setattr(sys, name, _PrefixedStream(stream, None if thread_workers_only else worker))


@register_func("disco.start.prefix_output", override=True)
def prefix_output() -> None:
    """On a worker process: prefix its printed lines with its worker id."""
    from disco._context import worker_id

    _install_prefix(thread_workers_only=False, worker=worker_id())


class _CallableModule(type(sys)):
    """`disco.start` is this module once anything imported it as one (the import system
    sets the package attribute); calling it still means `start(...)`."""

    def __call__(self, num_workers: int | None = None, device: str = "cpu"):
        return start(num_workers, device)


sys.modules[__name__].__class__ = _CallableModule
