"""The `mpi` backend: collectives through mpi4py's buffer calls (Allreduce, ...).

For CPU arrays across hosts; on one host `shm` is the default because it is faster
(benchmarks/ccl.py). Rank r of MPI_COMM_WORLD must be worker r, which holds for an
`MPISession` (disco.start() under mpiexec); workers that are threads or child
processes of one program are not MPI ranks, and `init` says so.

Reductions of float16 and bfloat16 run in float32 (as in `shm`); data movement
(gather, broadcast, scatter) is byte-wise and works for any dtype. Arrays are
C-contiguous numpy; anything with __array__ / __dlpack__ is converted first.
"""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from disco.ccl import OPS, Communicator, register_backend
from disco.errors import CollectiveError

_NATIVE = {np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                 np.uint8, np.uint16, np.uint32, np.uint64)}
_VIA_FLOAT32 = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
_LAUNCHER_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def _array(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
        x = np.from_dlpack(x)
    return np.ascontiguousarray(x)


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

    def _reducible(self, coll: str, x: np.ndarray) -> np.ndarray:
        """x in a dtype MPI reduces; float16/bfloat16 go through float32."""
        if x.dtype in _NATIVE:
            return x
        if x.dtype in _VIA_FLOAT32:
            return x.astype(np.float32)
        raise CollectiveError(f"ccl.{coll}: dtype {x.dtype} is not supported by the mpi backend; expected "
                              f"one of {sorted(str(d) for d in _NATIVE | _VIA_FLOAT32)}")

    def allreduce(self, x, op="sum", out=None):
        comm, mop = self._c("allreduce"), self._op("allreduce", op)
        x = _array(x)
        out = _out("allreduce", out, x.shape, x.dtype)
        src = self._reducible("allreduce", x)
        if src is x:
            comm.Allreduce(x, out, op=mop)
        else:
            tmp = np.empty_like(src)
            comm.Allreduce(src, tmp, op=mop)
            out[...] = tmp
        return out

    def allgather(self, x, axis=0, out=None):
        comm = self._c("allgather")
        x = _array(x)
        axis = _axis("allgather", x, axis)
        shape = x.shape[:axis] + (x.shape[axis] * self.world,) + x.shape[axis + 1:]
        out = _out("allgather", out, shape, x.dtype)
        blocks = out if axis == 0 else np.empty((self.world, *x.shape), x.dtype)
        comm.Allgather(_bytes(x), _bytes(blocks))
        if axis != 0:
            out[...] = _concat_blocks(blocks, axis)
        return out

    def reduce_scatter(self, x, op="sum", axis=0, out=None):
        comm, mop = self._c("reduce_scatter"), self._op("reduce_scatter", op)
        x = _array(x)
        axis = _axis("reduce_scatter", x, axis)
        blocks = _split_blocks("reduce_scatter", x, axis, self.world)
        out = _out("reduce_scatter", out, blocks.shape[1:], x.dtype)
        src = self._reducible("reduce_scatter", blocks)
        dst = out if src is blocks else np.empty(out.shape, src.dtype)
        comm.Reduce_scatter_block(src, dst, op=mop)
        if dst is not out:
            out[...] = dst
        return out

    def _meta(self, coll: str, x: np.ndarray | None):
        """Worker 0's (shape, dtype) on every worker."""
        meta = (x.shape, x.dtype) if self.rank == 0 else None
        return self._c(coll).bcast(meta, root=0)

    def broadcast_from_worker0(self, x=None):
        x = _array(x) if self.rank == 0 else None
        if self.rank == 0 and x is None:
            raise CollectiveError("ccl.broadcast_from_worker0: worker 0 must pass an array, got None")
        shape, dtype = self._meta("broadcast_from_worker0", x)
        buf = x if self.rank == 0 else np.empty(shape, dtype)
        self._c("broadcast_from_worker0").Bcast(_bytes(buf), root=0)
        return buf.copy() if self.rank == 0 else buf

    def scatter_from_worker0(self, x=None, axis=0):
        blocks = None
        if self.rank == 0:
            x = _array(x)
            blocks = _split_blocks("scatter_from_worker0", x, _axis("scatter_from_worker0", x, axis), self.world)
        shape, dtype = self._meta("scatter_from_worker0", blocks)
        out = np.empty(shape[1:], dtype)
        self._c("scatter_from_worker0").Scatter(_bytes(blocks) if blocks is not None else None, _bytes(out), root=0)
        return out

    def gather_to_worker0(self, x, axis=0):
        comm = self._c("gather_to_worker0")
        x = _array(x)
        axis = _axis("gather_to_worker0", x, axis)
        blocks = np.empty((self.world, *x.shape), x.dtype) if self.rank == 0 else None
        comm.Gather(_bytes(x), _bytes(blocks) if blocks is not None else None, root=0)
        return _concat_blocks(blocks, axis) if blocks is not None else None

    def barrier(self):
        self._c("barrier").Barrier()


register_backend("mpi", MPICommunicator)
