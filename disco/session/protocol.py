"""The wire protocol between a controller and its workers: a closed set of commands.

Every command is (op, a, b, payload) in the channel's ring (csrc/channel.h); the payload
is one value of the native codec (csrc/channel_bindings.cc: None, bool, int, float,
str, bytes, tuple, list, DRef ids, small numpy arrays). What the codec lacks goes
through `Transfer`'s hooks, tagged EXT: large arrays through shared-memory buffers
(never through the ring), rare objects through pickle. Replies are one value each.

    op          a            b            payload            who replies
    CALL        func slot    result id    args tuple         nobody (errors wait for a reply)
    GET_FUNC    func slot    -            name               every worker
    FREE        -            -            ids tuple          nobody
    FETCH       DRef id      worker       -                  that worker: the value
    GATHER      DRef id      -            -                  every worker: its value
    SYNC        -            -            ids tuple or None  every worker
    BROADCAST   -            result id    value              nobody
    SCATTER     axis         result id    array              nobody
    IMPORT      -            -            module name        every worker
    SHUTDOWN    -            -            -                  every worker, then it exits

The numbers of the commands and statuses are defined once, in csrc/protocol.h (the
worker runs CALL, FREE and SYNC in C++); `Op` and `Status` are built from the tables
the extension module exports, as are the markers `chan.next` returns as `missing`.

SYNC's ids are DRefs to free first: the FREE a round trip would otherwise need, folded
into it. A worker runs FREE, and SYNC when it has no failure to report, without
leaving C++ (channel_bindings.cc), so these bookkeeping commands cost no Python there.

A worker keeps the first error of a command that has no reply and reports it in its
next reply (SYNC, FETCH, GATHER, IMPORT, GET_FUNC), so pipelined calls cost no round trip.
"""
from __future__ import annotations

import enum
import mmap
import os
import pickle

import numpy as np

from disco import _native

INLINE_ARRAY_BYTES = 64 << 10  # arrays up to this size ride in the ring, larger ones in buffers
INLINE_PICKLE_BYTES = 64 << 10


# CALL, GET_FUNC, FREE, FETCH, GATHER, SYNC, BROADCAST, SCATTER, IMPORT, SHUTDOWN
Op = enum.IntEnum("Op", _native.PROTOCOL_OPS, module=__name__)
# OK; ERROR, value: (summary, remote traceback, ...); NOT_FOUND (GET_FUNC), value: (message, "")
Status = enum.IntEnum("Status", _native.PROTOCOL_STATUSES, module=__name__)

# `missing` of a worker's chan.next() when it is not a DRef id: nothing is missing; the
# payload did not decode (payload: the error); a CALL run in C++ raised (payload: the
# exception).
NEXT_NOTHING_MISSING = _native.NEXT_NOTHING_MISSING
NEXT_DECODE_FAILED = _native.NEXT_DECODE_FAILED
NEXT_CALL_RAISED = _native.NEXT_CALL_RAISED


class Spill:
    """Wraps a reply too large for the reply area; the codec does not know it, so it goes
    through `Transfer.encode` (pickle into a shared-memory buffer)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def dtype_token(dt: np.dtype) -> str:
    """'<f4' for plain dtypes; the name ('bfloat16') for extension dtypes such as ml_dtypes'."""
    return dt.str if dt.kind in "biufc" else dt.name


def dtype_from_token(token: str) -> np.dtype:
    try:
        return np.dtype(token)
    except TypeError:
        import ml_dtypes  # registers bfloat16 & co. with numpy  # noqa: F401
        return np.dtype(getattr(ml_dtypes, token))


class Transfer:
    """The codec's EXT hooks for one endpoint (the controller, or one worker).

    `encode` turns a value the codec lacks into a codec value; buffers it creates stay
    open in `outgoing` until the peer has read them (the owner calls `release`).
    `decode` reverses it; shared-memory arrays are mapped copy-on-write, so a reader
    gets a writable array without a copy and the writer's buffer is never touched."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.outgoing: list[int] = []  # fds of buffers the peer may still read

    def encode(self, obj):
        if isinstance(obj, Spill):
            return self._pickled(obj.value)
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            if obj.nbytes <= INLINE_ARRAY_BYTES:
                return ("raw", dtype_token(obj.dtype), obj.shape, np.ascontiguousarray(obj).tobytes())
            fd = self._buffer(obj.nbytes)
            if obj.nbytes:
                with mmap.mmap(fd, obj.nbytes) as mm:
                    dst = np.ndarray(obj.shape, obj.dtype, buffer=mm)
                    dst[...] = obj
                    del dst
            return ("shm", self.pid, fd, obj.nbytes, dtype_token(obj.dtype), obj.shape)
        return self._pickled(obj)

    def decode(self, value):
        kind = value[0]
        if kind == "raw":
            _, token, shape, data = value
            return np.frombuffer(data, dtype_from_token(token)).reshape(shape).copy()
        if kind == "shm":
            _, pid, fd, nbytes, token, shape = value
            dt = dtype_from_token(token)
            if nbytes == 0:
                return np.empty(shape, dt)
            return np.frombuffer(_map_private(pid, fd, nbytes), dt).reshape(shape)
        if kind == "pickle":
            return pickle.loads(value[1])
        if kind == "pickle_shm":
            _, pid, fd, nbytes = value
            return pickle.loads(_map_private(pid, fd, nbytes))
        raise ValueError(f"disco protocol: unknown EXT kind {kind!r}")

    def take(self) -> list[int]:
        fds, self.outgoing = self.outgoing, []
        return fds

    def release(self) -> None:
        for fd in self.take():
            os.close(fd)

    def _pickled(self, obj):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) <= INLINE_PICKLE_BYTES:
            return ("pickle", data)
        fd = self._buffer(len(data))
        with mmap.mmap(fd, len(data)) as mm:
            mm[:] = data
        return ("pickle_shm", self.pid, fd, len(data))

    def _buffer(self, nbytes: int) -> int:
        fd = _native.create_buffer(nbytes)
        self.outgoing.append(fd)
        return fd


def _map_private(pid: int, fd: int, nbytes: int) -> mmap.mmap:
    """Map another process's (or our own) buffer fd, copy-on-write."""
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
    try:
        return mmap.mmap(own, nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(own)
