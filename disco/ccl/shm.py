"""The `shm` backend: collectives in C++ over a shared-memory segment (same host).

Works for workers that are processes and for workers that are threads of one process
(the C++ side releases the GIL while it waits). See csrc/ccl/communicator.h for the
segment layout and the protocol; this module only maps numpy arrays onto it.
"""
from __future__ import annotations

import math
import operator
import os

import ml_dtypes
import numpy as np

from disco import _native
from disco.ccl import OPS, Communicator, register_backend
from disco.ccl import segments
from disco.ccl.staging import host_staged
from disco.errors import CollectiveError
from disco.tensor import host_array

# Codes of csrc/ccl/dtypes.h (enum DType). float16 and bfloat16 are reduced in float32.
_DTYPE_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(ml_dtypes.bfloat16): 3,
    np.dtype(np.int8): 4,
    np.dtype(np.int32): 5,
    np.dtype(np.int64): 6,
}
_CODE_DTYPES = {code: dt for dt, code in _DTYPE_CODES.items()}
_OP_CODES = {name: i for i, name in enumerate(OPS)}

DEFAULT_TIMEOUT_S = float(os.environ.get("DISCO_CCL_TIMEOUT_S", "30"))


def _dtype(x: np.ndarray) -> tuple[int, str]:
    """(code, name) of x's dtype; code -1 and the name (for the error) when unsupported."""
    code = _DTYPE_CODES.get(x.dtype)
    return (code, "") if code is not None else (-1, str(x.dtype))  # str(dtype) costs ~2 us


def _alloc(shape, code: int) -> np.ndarray:
    return np.empty(shape, _CODE_DTYPES[code])


class _BadArgument(Exception):
    """This worker's arguments to a collective are unusable; the message says how.
    Never escapes: `ShmCommunicator._fail` posts it so every worker raises it."""


def _axis(x: np.ndarray, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise _BadArgument(f"axis {axis} is out of range for an array of shape {x.shape}")
    return axis % x.ndim


def _op(op) -> int:
    code = _OP_CODES.get(op) if isinstance(op, str) else None
    if code is None:
        raise _BadArgument(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    return code


def _out(out, shape, dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not (type(out) is np.ndarray and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous):
        if type(out) is np.ndarray:
            got = f"an array of shape {out.shape} and dtype {out.dtype}" + (
                "" if out.flags.c_contiguous else ", not C-contiguous")
        else:
            got = f"a {type(out).__name__}"
        raise _BadArgument(f"out= must be a C-contiguous numpy array of shape {tuple(shape)} and dtype {dtype}, "
                           f"given {got}")
    return out


class _Closed:
    def __init__(self, rank: int):
        self.rank = rank

    def __getattr__(self, name):
        raise CollectiveError(f"ccl.{name}: the shm communicator of worker {self.rank} is closed")


@host_staged      # GPU arrays too, through host buffers (staging.py)
class ShmCommunicator(Communicator):
    """Shared-memory communicator of one worker; see disco.ccl for the functions.

    Options: chunk_bytes (staging per pipeline step), small_bytes (all-reduces up to
    this size use one barrier), timeout_s (longest wait for peers before a
    CollectiveError; env DISCO_CCL_TIMEOUT_S), spin_us (spin before sleeping),
    stream_bytes (all-reduce outputs this large are written with streaming
    stores; 0, the default: never), arena_bytes (each worker's arena, 256 MiB of
    address space by default; 0: none), p2p_bytes (the byte ring of each mailbox of
    send/recv, csrc/ccl/p2p.h), secret (the group's, which a worker checks in the
    segment before joining it; `session_setup` makes one per init_ccl).

    The arena: `empty` makes arrays in shared memory that every worker maps, and an
    all-reduce whose input and output are such arrays on every worker reads its
    peers' data in place instead of staging it (communicator.h); with only the outputs
    there, the inputs are staged and the all-gather reads in place. An all-reduce
    larger than small_bytes without `out=` returns an arena array, so it takes at
    least the second way; a full arena gives ordinary arrays.

    Each method first checks this worker's own arguments; if they are unusable it does
    not raise alone (its peers would wait for it until the timeout) but posts the
    problem through the collective (`_fail`), so every worker raises it at once."""

    backend = "shm"

    def __init__(self, group_name: str, rank: int, world: int, *, chunk_bytes: int = 256 << 10,
                 small_bytes: int = 16 << 10, timeout_s: float | None = None, spin_us: float = 50.0,
                 stream_bytes: int = 0, arena_bytes: int = 256 << 20, p2p_bytes: int = 64 << 10,
                 secret: str = ""):
        super().__init__(rank, world)
        timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        self._c = _native.ShmCommunicator(str(group_name), rank, world, chunk_bytes, small_bytes, timeout, spin_us,
                                          stream_bytes, arena_bytes, p2p_bytes, str(secret))
        self._small_bytes = small_bytes

    @staticmethod
    def sub_group(group_name: str, members, rank: int, secret: str) -> "ShmCommunicator":
        """The group of workers `members` (disco.ccl.sub_group): a segment of their own."""
        return ShmCommunicator(group_name, rank, len(members), secret=secret)

    @staticmethod
    def session_setup(sess, options: dict) -> dict:
        """On the controller, before `sess.init_ccl("shm")`: sweep segments that dead
        runs left, and give the group a fresh secret (segments.py)."""
        segments.sweep_stale()
        return {**options, "secret": options.get("secret") or segments.new_secret()}

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        """An uninitialised array in this worker's arena (see the class docstring), or an
        ordinary one when the arena has no room (or numpy's error for a bad shape)."""
        shape = (operator.index(shape),) if np.ndim(shape) == 0 else tuple(operator.index(d) for d in shape)
        dtype = np.dtype(dtype)
        a = self._c.arena_empty(shape, dtype) if not dtype.hasobject else None
        return np.empty(shape, dtype) if a is None else a

    def allreduce_paths(self) -> dict[str, int]:
        """How many of this worker's all-reduces ran each way: "one_barrier" (small),
        "staged" (through the slots), "outputs_in_arenas" (inputs staged, the
        all-gather read from the peers' arena outputs), "in_arenas" (read in place)."""
        return self._c.allreduce_paths()

    def in_arena(self, x: np.ndarray) -> bool:
        """Whether x's bytes lie in this worker's arena (collectives read them in place)."""
        return self._c.in_arena(x)

    def close(self) -> None:
        self._c = _Closed(self.rank)  # unmaps the segment once no call is using it

    def _fail(self, coll: str, error: Exception):
        """Raise `error` (this worker's arguments to ccl.`coll` are unusable) on every
        worker of the group: the same CollectiveError everywhere, naming this worker."""
        if isinstance(self._c, _Closed):  # nothing to post through: say so for `coll`
            raise CollectiveError(f"ccl.{coll}: the shm communicator of worker {self.rank} is closed") from error
        problem = str(error) if isinstance(error, _BadArgument) else f"{type(error).__name__}: {error}"
        try:
            self._c.fail_arguments(coll, problem)
        except CollectiveError as shared:
            raise shared from error

    def allreduce(self, x, op="sum", out=None):
        try:
            x = host_array(x)
            code, name = _dtype(x)
            op_code = _op(op)
            if out is None and code >= 0 and x.nbytes > self._small_bytes:
                out = self.empty(x.shape, x.dtype)
            out = _out(out, x.shape, x.dtype) if code >= 0 else None
        except Exception as e:
            self._fail("allreduce", e)
        self._c.allreduce(x, out, code, name, op_code)
        return out

    def allreduce_fn(self, shape, dtype, op="sum"):
        """`lambda x: self.allreduce(x, op)` for arrays of `shape` and `dtype`, with the
        argument checks made once: a compiled plan all-reduces the same shape on every call
        (disco.spmd.allreduce's `specialize`). Another x takes `allreduce`. None when no
        array of that dtype and op could be all-reduced here (`allreduce` explains)."""
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        code = _DTYPE_CODES.get(dtype)
        op_code = _OP_CODES.get(op) if isinstance(op, str) else None
        if code is None or op_code is None:
            return None
        big = math.prod(shape) * dtype.itemsize > self._small_bytes

        def run(x):
            if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype or not x.flags.c_contiguous:
                return self.allreduce(x, op)
            out = self.empty(shape, dtype) if big else np.empty(shape, dtype)
            self._c.allreduce(x, out, code, "", op_code)
            return out
        return run

    def allgather(self, x, axis=0, out=None):
        try:
            x = host_array(x)
            axis = _axis(x, axis)
            shape = x.shape[:axis] + (x.shape[axis] * self.world,) + x.shape[axis + 1:]
            code, name = _dtype(x)
            out = _out(out, shape, x.dtype) if code >= 0 else None
        except Exception as e:
            self._fail("allgather", e)
        self._c.allgather(x, out, code, name, axis)
        return out

    def reduce_scatter(self, x, op="sum", axis=0, out=None):
        try:
            x = host_array(x)
            axis = _axis(x, axis)
            op_code = _op(op)
            shape = x.shape[:axis] + (x.shape[axis] // self.world,) + x.shape[axis + 1:]
            code, name = _dtype(x)
            out = _out(out, shape, x.dtype) if code >= 0 else None
        except Exception as e:
            self._fail("reduce_scatter", e)
        self._c.reduce_scatter(x, out, code, name, op_code, axis)
        return out

    def broadcast_from_worker0(self, x=None):
        try:
            x = host_array(x) if x is not None and self.rank == 0 else None
            code, name = _dtype(x) if x is not None else (0, "")
        except Exception as e:
            self._fail("broadcast_from_worker0", e)
        return self._c.broadcast_from_worker0(x, code, name, _alloc)

    def scatter_from_worker0(self, x=None, axis=0):
        try:
            x = host_array(x) if x is not None and self.rank == 0 else None
            if x is not None:
                axis = _axis(x, axis)
            code, name = _dtype(x) if x is not None else (0, "")
        except Exception as e:
            self._fail("scatter_from_worker0", e)
        return self._c.scatter_from_worker0(x, code, name, axis, _alloc)

    def gather_to_worker0(self, x, axis=0):
        try:
            x = host_array(x)
            axis = _axis(x, axis)
            code, name = _dtype(x)
            out = None
            if self.rank == 0 and code >= 0:
                out = np.empty(x.shape[:axis] + (x.shape[axis] * self.world,) + x.shape[axis + 1:], x.dtype)
        except Exception as e:
            self._fail("gather_to_worker0", e)
        self._c.gather_to_worker0(x, out, code, name, axis)
        return out

    def barrier(self):
        self._c.barrier()

    # Point-to-point (csrc/ccl/p2p.h): a mailbox per (sender, receiver) in the segment.
    # Payloads move as bytes, so any dtype but object goes; the receiver checks the
    # dtype's name and the shape. A sender whose own arguments are unusable posts the
    # problem to the receiver (when dst is a valid peer), which raises it at once.

    def send(self, x, dst):
        try:
            x = host_array(x)
            if x.dtype.hasobject:
                raise _BadArgument(f"cannot send an array of dtype {x.dtype} (Python objects)")
            if x.ndim > 12:
                raise _BadArgument(f"arrays of at most 12 dims are supported, given one of {x.ndim} dims")
            if not x.dtype.isnative:
                x = x.astype(x.dtype.newbyteorder("="))
        except Exception as e:
            if isinstance(self._c, _Closed):
                raise CollectiveError(f"ccl.send: the shm communicator of worker {self.rank} is closed") from e
            problem = str(e) if isinstance(e, _BadArgument) else f"{type(e).__name__}: {e}"
            try:
                self._c.send_invalid(operator.index(dst), problem)
            except CollectiveError as shared:
                raise shared from e
        self._c.send(x, dst, x.dtype.name)

    def recv(self, shape, dtype, src, out=None):
        shape = (operator.index(shape),) if np.ndim(shape) == 0 else tuple(operator.index(d) for d in shape)
        dtype = np.dtype(dtype)
        if dtype.hasobject or len(shape) > 12:
            raise CollectiveError(f"ccl.recv: worker {self.rank} cannot receive an array of dtype {dtype} and "
                                  f"shape {shape} (no Python objects, at most 12 dims)")
        try:
            out = _out(out, shape, dtype)
        except _BadArgument as e:
            raise CollectiveError(f"ccl.recv: invalid arguments on worker {self.rank}: {e}") from None
        self._c.recv(out, src, dtype.name)
        return out

    def unreceived(self, dst: int) -> int:
        """Messages this worker sent to `dst` that `dst` has not received yet."""
        return self._c.p2p_unreceived(dst)


register_backend("shm", ShmCommunicator)
