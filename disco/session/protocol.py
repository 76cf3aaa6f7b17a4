"""The wire protocol between a controller and its workers: a closed set of commands.

Every command is (op, a, b, payload) in the channel's ring (csrc/channel.h); the payload
is one value of the native codec (csrc/channel_bindings.cc: None, bool, int, float,
str, bytes, tuple, list, DRef ids, small numpy arrays). What the codec lacks goes
through `Transfer`'s hooks, tagged EXT: large arrays through shared-memory buffers
(never through the ring), dicts, sets, numpy scalars and a few more as tagged tuples;
anything else is a ProtocolError when sent. No pickle, so decoding a message never runs
code it names (docs/trust.md). Replies are one value each.

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

import numpy as np

from disco import _native
from disco.errors import ProtocolError

INLINE_ARRAY_BYTES = 64 << 10  # arrays up to this size ride in the ring, larger ones in buffers


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
    through `Transfer.encode`: its codec bytes in a shared-memory buffer."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def dtype_token(dt: np.dtype) -> str:
    """'<f4' for plain dtypes; the name ('bfloat16') for extension dtypes such as ml_dtypes'."""
    return dt.str if dt.kind in "biufc" else dt.name


def dtype_from_token(token: str) -> np.dtype:
    """The array dtype `token` names; ProtocolError for anything but plain numbers and
    ml_dtypes' floats (never an object dtype)."""
    try:
        dt = np.dtype(token)
    except TypeError:
        import ml_dtypes  # registers bfloat16 & co. with numpy
        dt = getattr(ml_dtypes, token, None) if isinstance(token, str) else None
        if dt is None:
            raise ProtocolError(f"disco protocol: unknown array dtype {token!r}") from None
        dt = np.dtype(dt)
    if dt.hasobject or dt.kind not in "biufcV" or dt.itemsize == 0:
        raise ProtocolError(f"disco protocol: array dtype {token!r} is not a number type")
    return dt


# What the channel carries besides the codec's own types (module docstring); nothing is
# pickled, so a payload cannot run code where it is decoded.
CARRIED = ("None, bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset, slice, "
           "numpy arrays and scalars of number dtypes, numpy dtypes, DRefs")


class Transfer:
    """The codec's EXT hooks for one endpoint (the controller, or one worker).

    `encode` turns a value the codec lacks into a codec value (tagged tuples, no
    pickle); buffers it creates stay open in `outgoing` until the peer has read them
    (the owner calls `release`). `decode` reverses it, checking what it reads;
    shared-memory arrays are mapped copy-on-write, so a reader gets a writable array
    without a copy and the writer's buffer is never touched. `codec` is the channel
    whose codec spills large replies into buffers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.outgoing: list[int] = []  # fds of buffers the peer may still read
        self.codec = None

    def encode(self, obj):
        if isinstance(obj, Spill):
            data = self.codec.encode(obj.value)
            fd = self._buffer(len(data))
            with mmap.mmap(fd, len(data)) as mm:
                mm[:] = data
            return ("spill", self.pid, fd, len(data))
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
        if isinstance(obj, np.generic) and not obj.dtype.hasobject:
            return ("scalar", dtype_token(obj.dtype), obj.tobytes())
        if isinstance(obj, dict):
            return ("dict", list(obj.keys()), list(obj.values()))
        if isinstance(obj, (set, frozenset)):
            return ("frozenset" if isinstance(obj, frozenset) else "set", list(obj))
        if type(obj) is complex:
            return ("complex", obj.real, obj.imag)
        if type(obj) is int:   # beyond int64
            return ("int", str(obj))
        if isinstance(obj, np.dtype) and not obj.hasobject:
            return ("dtype", dtype_token(obj))
        if type(obj) is slice:
            return ("slice", obj.start, obj.stop, obj.step)
        raise ProtocolError(f"disco channel: cannot send a value of type {type(obj).__module__}."
                            f"{type(obj).__qualname__}; the channel carries {CARRIED} (no pickle: see "
                            "docs/trust.md); convert it, or make it on the workers with a registered function")

    def decode(self, value):
        try:
            return self._decode(value)
        except ProtocolError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, OSError, MemoryError) as e:
            raise ProtocolError(f"disco protocol: a malformed EXT value ({type(e).__name__}: {e})") from None

    def _decode(self, value):
        if not isinstance(value, tuple) or not value or not isinstance(value[0], str):
            raise ProtocolError(f"disco protocol: an EXT value must be a tagged tuple, got {type(value).__name__}")
        kind, args = value[0], value[1:]
        if kind == "raw":
            token, shape, data = args
            dt = dtype_from_token(token)
            return np.frombuffer(data, dt).reshape(_shape(shape)).copy()
        if kind == "shm":
            pid, fd, nbytes, token, shape = args
            dt, shape = dtype_from_token(token), _shape(shape)
            if nbytes != int(np.prod(shape, dtype=object)) * dt.itemsize:
                raise ProtocolError(f"disco protocol: a shared array of {nbytes} bytes for shape {shape} of {dt}")
            if nbytes == 0:
                return np.empty(shape, dt)
            return np.frombuffer(_map_private(pid, fd, nbytes), dt).reshape(shape)
        if kind == "spill":
            pid, fd, nbytes = args
            return self.codec.decode(_map_private(pid, fd, nbytes))
        if kind == "scalar":
            token, data = args
            return np.frombuffer(data, dtype_from_token(token)).reshape(())[()] if isinstance(data, bytes) else _bad(kind)
        if kind == "dict":
            keys, values = args
            if not (isinstance(keys, list) and isinstance(values, list) and len(keys) == len(values)):
                _bad(kind)
            return dict(zip(keys, values))
        if kind in ("set", "frozenset"):
            (items,) = args
            return (set if kind == "set" else frozenset)(items)
        if kind == "complex":
            re_, im = args
            return complex(float(re_), float(im))
        if kind == "int":
            (text,) = args
            if not isinstance(text, str) or len(text) > 4000:
                _bad(kind)
            return int(text)
        if kind == "dtype":
            (token,) = args
            return dtype_from_token(token)
        if kind == "slice":
            return slice(*args) if len(args) == 3 else _bad(kind)
        raise ProtocolError(f"disco protocol: unknown EXT kind {kind!r}")

    def take(self) -> list[int]:
        fds, self.outgoing = self.outgoing, []
        return fds

    def release(self) -> None:
        for fd in self.take():
            os.close(fd)

    def _buffer(self, nbytes: int) -> int:
        fd = _native.create_buffer(nbytes)
        self.outgoing.append(fd)
        return fd


def _shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"disco protocol: array shape {shape!r:.80} is not a tuple of non-negative ints")
    return tuple(shape)


def _bad(kind: str):
    raise ProtocolError(f"disco protocol: a malformed EXT value of kind {kind!r}")


def _map_private(pid: int, fd: int, nbytes: int) -> mmap.mmap:
    """Map another process's (or our own) buffer fd, copy-on-write."""
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
    try:
        return mmap.mmap(own, nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(own)
