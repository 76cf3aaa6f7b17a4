"""The `mpi` backend: collectives through mpi4py's buffer calls (Allreduce, ...).

For CPU arrays across hosts; on one host `shm` is the default because it is faster
(benchmarks/ccl.py). Rank r of MPI_COMM_WORLD must be worker r, which holds for an
`MPISession` (disco.start() under mpiexec); workers that are threads or child
processes of one program are not MPI ranks, and `init` says so.

Reductions of float16 and bfloat16 run in float32 (as in `shm`); data movement
(gather, broadcast, scatter) is byte-wise and works for any dtype. Arrays are
C-contiguous numpy; anything with __array__ / __dlpack__ is converted first.

No mismatch becomes a hang: before its data moves, a collective in which every worker
passes an array agrees on (whether each worker's own arguments were usable, dtype,
op, axis, shape) with one Allreduce of three ints (about 5 us on one host: it roughly
doubles the latency of a tiny all-reduce and is noise from 1 MiB up, benchmarks/ccl.py);
one whose data comes from worker 0 sends worker 0's problem with its metadata. On any
difference every worker raises the same CollectiveError naming the workers and what
each gave.

Point-to-point (`send` / `recv`) runs on a second duplicate of MPI_COMM_WORLD, so its
messages never meet the collectives'. A message is a small header (sequence number on
the pair, dtype name, shape, byte count, or the sender's problem with its arguments)
then the payload as bytes. `send` copies x and starts an Isend, so it returns at once;
the copies are kept until MPI is done with them, and a background thread keeps calling
into MPI (MPI_Test) while any are in flight: MPI moves a message only while its sender
calls into MPI, and a worker that returned from send may not call MPI again for a long
time (it waits for the controller's next command). Each header carries a token that
every worker of the communicator agreed on at init, so a message left unreceived in a
closed communicator is dropped should MPI reuse its context for a later one. `recv` polls for the header until the
timeout (`timeout_s`, env DISCO_CCL_TIMEOUT_S, default 30 s), checks it, and receives the
payload into `out` (or, when the header differs from what it expects, into a scratch
buffer, and raises naming both workers: the pair stays in step).
"""
from __future__ import annotations

import atexit
import os
import threading
import time

import ml_dtypes
import numpy as np

from disco.ccl import OPS, Communicator, register_backend
from disco.ccl.staging import host_staged
from disco.errors import CollectiveError
from disco.tensor import host_array

_NATIVE = {np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                 np.uint8, np.uint16, np.uint32, np.uint64)}
_VIA_FLOAT32 = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
_LAUNCHER_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_TAG_HEADER, _TAG_DATA = 1, 2


class _SendsInFlight:
    """Point-to-point sends MPI may still be reading, with their buffers, tested from a
    background thread until MPI is done with them (see the module docstring). One for
    the process, so sends outlive the communicator that started them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sends: list = []        # (request, buffer or None, destination, owner id)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._registered = False

    def add(self, request, buf, dst: int, owner: int) -> None:
        with self._lock:
            self._sends.append((request, buf, dst, owner))
            if self._thread is None and not self._stop:
                if not self._registered:   # stop before mpi4py finalizes MPI (atexit runs LIFO)
                    atexit.register(self.stop)
                    self._registered = True
                self._thread = threading.Thread(target=self._run, name="disco-mpi-p2p-progress", daemon=True)
                self._thread.start()

    def count(self, dst: int, owner: int) -> int:
        with self._lock:
            return sum(1 for req, buf, d, o in self._sends if buf is not None and d == dst and o == owner)

    def _run(self) -> None:
        nap = 2e-5
        while True:
            with self._lock:
                self._sends = [s for s in self._sends if not s[0].Test()]
                if not self._sends or self._stop:
                    self._thread = None
                    return
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)

    def stop(self, drain_s: float = 30.0) -> None:
        """At exit: let the sends in flight finish (a receiver may still be reading this
        process's memory: MPI finalized under it would fail there), for up to `drain_s`,
        then stop testing them."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=drain_s)
        with self._lock:
            self._stop = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)


_SENDS = _SendsInFlight()


_DTYPE_CODES: dict = {}     # dtype -> a number naming it the same on every worker


def _dtype_code(dtype) -> int:
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        name = str(np.dtype(dtype)).encode()
        code = _DTYPE_CODES[dtype] = int.from_bytes(name[:7].ljust(7, b"\0"), "little")
    return code


def _axis(coll: str, x: np.ndarray, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise CollectiveError(f"ccl.{coll}: axis {axis} is out of range for an array of shape {x.shape}")
    return axis % x.ndim


def _bytes(x: np.ndarray):
    from mpi4py import MPI
    return [x.reshape(-1).view(np.uint8), MPI.BYTE]


def _out(coll: str, out, shape, dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not (type(out) is np.ndarray and out.shape == tuple(shape) and out.dtype == dtype and out.flags.c_contiguous):
        got = (getattr(out, "shape", None), getattr(out, "dtype", None))
        raise CollectiveError(f"ccl.{coll}: out= must be a C-contiguous numpy array of shape {tuple(shape)} "
                              f"and dtype {dtype}, given {got}")
    return out


def _split_blocks(coll: str, x: np.ndarray, axis: int, world: int) -> np.ndarray:
    """x split evenly along `axis` into `world` parts, stacked: shape (world, *part)."""
    if x.shape[axis] % world:
        raise CollectiveError(f"ccl.{coll}: axis {axis} of shape {x.shape} does not split evenly over "
                              f"{world} workers ({x.shape[axis]} % {world} != 0)")
    return np.ascontiguousarray(np.stack(np.split(x, world, axis=axis)))


def _concat_blocks(blocks: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of _split_blocks: (world, *part) -> parts concatenated along `axis`."""
    return blocks.reshape(-1, *blocks.shape[2:]) if axis == 0 else np.concatenate(list(blocks), axis=axis)


@host_staged      # GPU arrays too, through host buffers (staging.py)
class MPICommunicator(Communicator):
    """One worker's end of an MPI group (a duplicate of MPI_COMM_WORLD)."""

    backend = "mpi"

    @staticmethod
    def sub_group(group_name: str, members, rank: int, secret: str) -> "MPICommunicator":
        """The group of workers `members` (disco.ccl.sub_group), from MPI_Comm_create_group:
        collective over the members only, so the other ranks need not take part."""
        return MPICommunicator(group_name, rank, len(members), members=members)

    def __init__(self, group_name: str, rank: int, world: int, *, timeout_s: float | None = None,
                 members=None):
        """`members`: the MPI_COMM_WORLD ranks of a group of part of the workers, in rank
        order (sub_group); None: every rank, worker i being rank i."""
        super().__init__(rank, world)
        self.timeout_s = float(os.environ.get("DISCO_CCL_TIMEOUT_S", "30")) if timeout_s is None else float(timeout_s)
        if world > 1 and not any(v in os.environ for v in _LAUNCHER_VARS):
            raise CollectiveError(
                f"ccl.init('mpi'): worker {rank} of {world} is not an MPI rank (no MPI launcher in its "
                "environment); the mpi backend needs workers that are MPI ranks: launch with mpiexec "
                "or disco-launch and use disco.start() (an MPISession), or use backend 'shm'")
        from mpi4py import MPI

        self._MPI = MPI
        world_comm = base = MPI.COMM_WORLD
        if members is None and (world_comm.size, world_comm.rank) != (world, rank):
            raise CollectiveError(
                f"ccl.init('mpi'): worker {rank} of {world} runs in MPI rank {world_comm.rank} of "
                f"{world_comm.size}; the mpi backend needs worker i to be rank i of a job of exactly "
                f"{world} ranks (use disco.start() under mpiexec -n {world})")
        if members is not None:
            members = [int(m) for m in members]
            if len(members) != world or not 0 <= rank < world or members[rank] != world_comm.rank \
                    or len(set(members)) != world or not all(0 <= m < world_comm.size for m in members):
                raise CollectiveError(
                    f"ccl.sub_group('mpi'): MPI rank {world_comm.rank} of {world_comm.size} was asked to be "
                    f"rank {rank} of the group of ranks {members}; expected distinct ranks of the job, "
                    f"this one at position {rank}")
            everyone = world_comm.Get_group()
            group = everyone.Incl(members)
            base = world_comm.Create_group(group, tag=members[0])   # the members only
            group.Free()
            everyone.Free()
        self._comm = base.Dup()  # collective: every member is in init() now
        self._p2p = base.Dup()   # point-to-point messages, apart from the collectives
        if base is not world_comm:
            base.Free()
        self._sent = [0] * world       # messages sent to / received from each worker
        self._received = [0] * world
        token = int.from_bytes(os.urandom(7), "little") if rank == 0 else None
        self._token = self._p2p.bcast(token, root=0)   # in every header of this communicator
        self._p2p_broken: set = set()
        self._ops = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}
        self._agree_buf = np.zeros(3, np.int64)

    def close(self) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            comm.Free()
        p2p, self._p2p = getattr(self, "_p2p", None), None
        if p2p is not None:
            p2p.Free()          # MPI frees it once the sends in flight (_SENDS) are done

    def _c(self, coll: str):
        if self._comm is None:
            raise CollectiveError(f"ccl.{coll}: the mpi communicator of worker {self.rank} is closed")
        return self._comm

    def _op(self, coll: str, op: str):
        if op not in self._ops:
            raise CollectiveError(f"ccl.{coll}: unknown op {op!r}; expected one of {list(OPS)}")
        return self._ops[op]

    def _agree(self, coll: str, prepare):
        """Run `prepare()` (this worker's argument checks; it returns what the collective
        needs, the last item being (dtype, op, axis, shape)) and make sure every worker
        got the same: otherwise every worker raises the same CollectiveError."""
        problem, got = None, None
        try:
            got = prepare()
        except CollectiveError as e:
            problem = str(e).removeprefix(f"ccl.{coll}: ")
        if self.world == 1:
            if problem is not None:
                raise CollectiveError(f"ccl.{coll}: {problem}")
            return got
        # One Allreduce(MAX) of [problem flag, h, -h], h a hash of (dtype, op, axis,
        # shape) (ints only, so the same in every process; halved so that -h fits in an
        # int64): all agree iff no flag is set and max(h) == min(h).
        buf = self._agree_buf
        if problem is None:
            dtype, op, axis, shape = got[-1]
            h = hash((_dtype_code(dtype), OPS.index(op) + 1 if op else 0, axis, *shape)) >> 1
            buf[0], buf[1], buf[2] = 0, h, -h
        else:
            buf[0], buf[1], buf[2] = 1, 0, 0
        self._c(coll).Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        if buf[0] == 0 and buf[1] == -buf[2]:
            return got
        mine = None if problem else (str(np.dtype(dtype)), op, axis, tuple(shape))
        told = self._c(coll).allgather((problem, mine))
        bad = [f"worker {w}: {p}" for w, (p, _) in enumerate(told) if p is not None]
        if bad:
            raise CollectiveError(f"ccl.{coll}: invalid arguments on {'; '.join(bad)}")
        gave = "; ".join(f"worker {w}: {_gave(d)}" for w, (_, d) in enumerate(told))
        raise CollectiveError(f"ccl.{coll}: the workers' arguments differ ({gave}); every worker "
                              "must pass the same shape, dtype, op and axis")

    def _from_worker0(self, coll: str, prepare):
        """Worker 0's `prepare()` (its checks, then the metadata the others need),
        broadcast with its problem, if any, which every worker raises."""
        meta, problem = None, None
        if self.rank == 0:
            try:
                meta = prepare()
            except CollectiveError as e:
                problem = str(e)
        problem, meta = self._c(coll).bcast((problem, meta), root=0)
        if problem is not None:
            raise CollectiveError(problem if self.rank == 0 else f"{problem} (raised by worker 0)")
        return meta

    def _reducible(self, coll: str, x: np.ndarray) -> np.ndarray:
        """x in a dtype MPI reduces; float16/bfloat16 go through float32."""
        if x.dtype in _NATIVE:
            return x
        if x.dtype in _VIA_FLOAT32:
            return x.astype(np.float32)
        raise CollectiveError(f"ccl.{coll}: dtype {x.dtype} is not supported by the mpi backend; expected "
                              f"one of {sorted(str(d) for d in _NATIVE | _VIA_FLOAT32)}")

    def allreduce(self, x, op="sum", out=None):
        comm = self._c("allreduce")

        def prepare():
            a = host_array(x)
            return (self._op("allreduce", op), a, _out("allreduce", out, a.shape, a.dtype),
                    self._reducible("allreduce", a), (a.dtype, op, 0, a.shape))
        mop, x, out, src, _ = self._agree("allreduce", prepare)
        if src is x:
            comm.Allreduce(x, out, op=mop)
        else:
            tmp = np.empty_like(src)
            comm.Allreduce(src, tmp, op=mop)
            out[...] = tmp
        return out

    def allgather(self, x, axis=0, out=None):
        comm = self._c("allgather")

        def prepare():
            a = host_array(x)
            ax = _axis("allgather", a, axis)
            shape = a.shape[:ax] + (a.shape[ax] * self.world,) + a.shape[ax + 1:]
            return a, ax, _out("allgather", out, shape, a.dtype), (a.dtype, None, ax, a.shape)
        x, axis, out, _ = self._agree("allgather", prepare)
        blocks = out if axis == 0 else np.empty((self.world, *x.shape), x.dtype)
        comm.Allgather(_bytes(x), _bytes(blocks))
        if axis != 0:
            out[...] = _concat_blocks(blocks, axis)
        return out

    def reduce_scatter(self, x, op="sum", axis=0, out=None):
        comm = self._c("reduce_scatter")

        def prepare():
            a = host_array(x)
            ax = _axis("reduce_scatter", a, axis)
            blocks = _split_blocks("reduce_scatter", a, ax, self.world)
            return (self._op("reduce_scatter", op), blocks,
                    _out("reduce_scatter", out, blocks.shape[1:], a.dtype),
                    self._reducible("reduce_scatter", blocks), (a.dtype, op, ax, a.shape))
        mop, blocks, out, src, _ = self._agree("reduce_scatter", prepare)
        dst = out if src is blocks else np.empty(out.shape, src.dtype)
        comm.Reduce_scatter_block(src, dst, op=mop)
        if dst is not out:
            out[...] = dst
        return out

    def broadcast_from_worker0(self, x=None):
        def prepare():
            if x is None:
                raise CollectiveError("ccl.broadcast_from_worker0: worker 0 must pass an array, got None")
            a = host_array(x)
            return a.shape, a.dtype
        shape, dtype = self._from_worker0("broadcast_from_worker0", prepare)
        buf = host_array(x) if self.rank == 0 else np.empty(shape, dtype)
        self._c("broadcast_from_worker0").Bcast(_bytes(buf), root=0)
        return buf.copy() if self.rank == 0 else buf

    def scatter_from_worker0(self, x=None, axis=0):
        blocks = None

        def prepare():
            nonlocal blocks
            if x is None:
                raise CollectiveError("ccl.scatter_from_worker0: worker 0 must pass an array, got None")
            a = host_array(x)
            blocks = _split_blocks("scatter_from_worker0", a, _axis("scatter_from_worker0", a, axis),
                                   self.world)
            return blocks.shape, blocks.dtype
        shape, dtype = self._from_worker0("scatter_from_worker0", prepare)
        out = np.empty(shape[1:], dtype)
        self._c("scatter_from_worker0").Scatter(_bytes(blocks) if blocks is not None else None, _bytes(out), root=0)
        return out

    def gather_to_worker0(self, x, axis=0):
        comm = self._c("gather_to_worker0")

        def prepare():
            a = host_array(x)
            ax = _axis("gather_to_worker0", a, axis)
            return a, ax, (a.dtype, None, ax, a.shape)
        x, axis, _ = self._agree("gather_to_worker0", prepare)
        blocks = np.empty((self.world, *x.shape), x.dtype) if self.rank == 0 else None
        comm.Gather(_bytes(x), _bytes(blocks) if blocks is not None else None, root=0)
        return _concat_blocks(blocks, axis) if blocks is not None else None

    def barrier(self):
        self._c("barrier").Barrier()

    # -- point-to-point ---------------------------------------------------------------

    def _p2p_comm(self, what: str, peer: int, role: str):
        if self._p2p is None:
            raise CollectiveError(f"ccl.{what}: the mpi communicator of worker {self.rank} is closed")
        if not 0 <= peer < self.world or peer == self.rank:
            why = "itself; a worker cannot send to or receive from itself" if peer == self.rank else \
                f"not a worker of this group of {self.world}"
            raise CollectiveError(f"ccl.{what}: worker {self.rank} gave {role} {peer}, which is {why}")
        if (what, peer) in self._p2p_broken:
            raise CollectiveError(f"ccl.{what}: worker {self.rank}: an earlier transfer with worker {peer} timed "
                                  "out in the middle of a message, so the two are out of step; call "
                                  "disco.ccl.init again (sess.init_ccl) to make a new group")
        return self._p2p

    def send(self, x, dst):
        comm = self._p2p_comm("send", dst, "dst")
        problem = None
        try:
            buf = np.array(host_array(x), order="C", copy=True)
            if buf.dtype.hasobject:
                raise CollectiveError(f"cannot send an array of dtype {buf.dtype} (Python objects)")
        except Exception as e:  # noqa: BLE001 - posted to the receiver, then raised here
            problem = str(e) if isinstance(e, CollectiveError) else f"{type(e).__name__}: {e}"
        seq = self._sent[dst]
        self._sent[dst] += 1
        if problem is not None:
            _SENDS.add(comm.isend((self._token, seq, None, None, 0, problem), dst, tag=_TAG_HEADER), None, dst,
                       id(self))
            raise CollectiveError(f"ccl.send: invalid arguments on worker {self.rank}: {problem}")
        header = (self._token, seq, buf.dtype.name, buf.shape, buf.nbytes, None)
        _SENDS.add(comm.isend(header, dst, tag=_TAG_HEADER), None, dst, id(self))
        if buf.nbytes:
            _SENDS.add(comm.Isend(_bytes(buf), dst, tag=_TAG_DATA), buf, dst, id(self))

    def _wait(self, test, deadline: float) -> bool:
        """Poll `test()` until it holds (True) or `deadline` passes (False): without
        sleeping for the first 200 us (a message on its way arrives within that), then
        with naps growing to 0.5 ms."""
        spin_end = time.perf_counter() + 2e-4
        nap = 0.0
        while not test():
            if time.perf_counter() < spin_end:
                continue
            if time.monotonic() > deadline:
                return False
            time.sleep(nap)
            nap = min(max(nap * 2, 1e-5), 5e-4)
        return True

    def recv(self, shape, dtype, src, out=None):
        comm = self._p2p_comm("recv", src, "src")
        shape = tuple(int(d) for d in (shape if np.ndim(shape) else (shape,)))
        dtype = np.dtype(dtype)
        out = _out("recv", out, shape, dtype)
        want = f"a {dtype.name} array of shape {shape}"
        who = f"ccl.recv: worker {self.rank}"
        deadline = time.monotonic() + self.timeout_s
        MPI = self._MPI
        if not self._wait(lambda: comm.Iprobe(source=src, tag=_TAG_HEADER), deadline):
            status, others = MPI.Status(), []
            if comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_HEADER, status=status):
                others.append(f"; worker {status.Get_source()} has sent a message to worker {self.rank} that it "
                              f"has not received (was src={status.Get_source()} meant?)")
            raise CollectiveError(f"{who} timed out after {self.timeout_s:g} s waiting for {want} from worker "
                                  f"{src}, which has sent nothing more to it (did worker {src} call "
                                  f"ccl.send(x, {self.rank})?)" + "".join(others))
        token, seq, dname, sshape, nbytes, problem = comm.recv(source=src, tag=_TAG_HEADER)
        while token != self._token:     # left in a closed communicator whose context MPI reused
            if nbytes:
                comm.Recv(_bytes(np.empty(nbytes, np.uint8)), src, tag=_TAG_DATA)
            if not self._wait(lambda: comm.Iprobe(source=src, tag=_TAG_HEADER), deadline):
                return self.recv(shape, dtype, src, out)      # times out with the usual message
            token, seq, dname, sshape, nbytes, problem = comm.recv(source=src, tag=_TAG_HEADER)
        self._received[src] += 1
        if problem is not None:
            raise CollectiveError(f"{who} expected {want} from worker {src}, which could not send it: invalid "
                                  f"arguments on worker {src}: {problem}")
        match = dname == dtype.name and tuple(sshape) == shape
        if nbytes:
            target = out if match else np.empty(nbytes, np.uint8)
            req = comm.Irecv(_bytes(target), src, tag=_TAG_DATA)
            if not self._wait(req.Test, deadline):
                req.Cancel()
                self._p2p_broken.add(("recv", src))
                raise CollectiveError(f"{who} timed out after {self.timeout_s:g} s in the middle of a message "
                                      f"from worker {src} ({nbytes} bytes)")
        if not match:
            shown = tuple(sshape)
            raise CollectiveError(f"{who} expected {want} from worker {src}, but worker {src} sent a {dname} "
                                  f"array of shape {shown} (its message {seq} to worker {self.rank}; dropped, "
                                  f"so the next recv from worker {src} gets its next message)")
        return out

    def unreceived(self, dst: int) -> int:
        """Payloads this worker sent to `dst` whose transfer MPI has not finished (a lower
        bound on what `dst` has not received: small messages finish once buffered)."""
        return _SENDS.count(dst, id(self))


def _gave(d) -> str:
    dtype, op, axis, shape = d
    return f"{dtype} {tuple(shape)}" + (f" op {op}" if op else "") + f" axis {axis}"


register_backend("mpi", MPICommunicator)
