"""Sessions: a controller drives N workers that run the same calls (SPMD).

Control plane. The controller (your Python program) holds a `Session`. Every
operation becomes one command of a closed set (`protocol.Op`: CALL, FREE, FETCH,
SYNC, ...) written once into a shared-memory broadcast ring that every worker reads
(csrc/channel.h). Commands are a compact binary encoding -- ints, floats, strings,
tuples, DRef ids, small arrays, and dicts, sets, numpy scalars as tagged values --
never pickle (an MPISession's relay to other hosts does pickle: docs/trust.md). Every
wait has a deadline (Session timeout_s). Calls are pipelined: `f(x)` returns as
soon as the command is in the ring; `sync()` (and fetch/gather) wait for the replies,
one reply slot per worker. Waiting spins a few microseconds, then sleeps on a futex, so
idle workers use no CPU.

Data plane. Large arrays never ride in the ring: `broadcast`, `scatter`, arguments,
fetched results and gathers move them through unlinked shared-memory buffers that the
reader maps copy-on-write. Between workers, data moves by collectives (`disco.ccl`,
set up by `sess.init_ccl(backend)`), not through the controller.

DRefs. A call returns a `DRef`: a handle to one object per worker (worker i's result),
living in that worker's object table under the DRef's id. Passed as an argument, a DRef
resolves on each worker to that worker's own object. `dref.fetch(worker)` copies one to
the controller; dropping the last DRef frees the objects (FREE commands, batched).

Who owns what. The controller owns the channel and the worker processes/threads; a
worker owns its objects and its per-worker state (`disco._context.current_context()`,
e.g. the collective communicator). The shared-memory segment is unlinked right after
creation, so it disappears with the last process holding it, whichever dies first;
workers die with their controller (PR_SET_PDEATHSIG plus a getppid check).

Kinds: `ThreadedSession` (workers are threads; same channel and loop) and
`ProcessSession` (workers are processes). Both are `Session`s; the API is defined once.
`MPISession` (disco.session.mpi, workers are MPI ranks; imported on first use so that
mpi4py is needed only there).
"""
from disco.session.base import DFunction, DRef, Session
from disco.session.process import ProcessSession
from disco.session.threaded import ThreadedSession

__all__ = ["Session", "DRef", "DFunction", "ThreadedSession", "ProcessSession"]
