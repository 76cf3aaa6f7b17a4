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
"""
from __future__ import annotations

import os

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

    def __init__(self, group_name: str, rank: int, world: int):
        super().__init__(rank, world)
        if world > 1 and not any(v in os.environ for v in _LAUNCHER_VARS):
            raise CollectiveError(
                f"ccl.init('mpi'): worker {rank} of {world} is not an MPI rank (no MPI launcher in its "
                "environment); the mpi backend needs workers that are MPI ranks: launch with mpiexec "
                "or disco-launch and use disco.start() (an MPISession), or use backend 'shm'")
        from mpi4py import MPI

        self._MPI = MPI
        world_comm = MPI.COMM_WORLD
        if (world_comm.size, world_comm.rank) != (world, rank):
            raise CollectiveError(
                f"ccl.init('mpi'): worker {rank} of {world} runs in MPI rank {world_comm.rank} of "
                f"{world_comm.size}; the mpi backend needs worker i to be rank i of a job of exactly "
                f"{world} ranks (use disco.start() under mpiexec -n {world})")
        self._comm = world_comm.Dup()  # collective: every worker is in init() now
        self._ops = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}
        self._agree_buf = np.zeros(3, np.int64)

    def close(self) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            comm.Free()

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


def _gave(d) -> str:
    dtype, op, axis, shape = d
    return f"{dtype} {tuple(shape)}" + (f" op {op}" if op else "") + f" axis {axis}"


register_backend("mpi", MPICommunicator)
