"""`cupy.cuda.nccl` of the stand-in, with cupy 14's types at the boundary.

`get_unique_id()` returns 128 bytes and `NcclCommunicator(ndev, commId, rank)` accepts
only bytes (a tuple of ints, what cupy < 14 returned, is a TypeError). Buffers and
streams are raw ints (`intptr_t`), checked against the live device allocations and
streams. Ranks of one communicator must live in one process (threads, e.g. a
ThreadedSession); world 1 is the usual case. As with NCCL, two ranks on one GPU are
refused, and a collective on a capturing stream is recorded into the graph.

Point-to-point: `send` queues a copy of the buffer for its peer and returns (a GPU
would hold the stream until the peer receives; here the work is synchronous, so
blocking would make a group of sends and receives deadlock); `recv` takes the next
message from its peer, waiting up to TIMEOUT_S (where a GPU would hang) and refusing a
message whose size differs from the receive's. `groupStart` / `groupEnd` only count.
"""
from __future__ import annotations

import operator
import os
import threading
from collections import deque

import numpy as np

from .. import _runtime as rt

NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 1, 2, 3, 4
NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_BFLOAT16 = 9
NCCL_UNIQUE_ID_BYTES = 128
available = True
TIMEOUT_S = float(os.environ.get("DISCO_STANDIN_NCCL_TIMEOUT_S", "60"))

_DTYPES = {0: "int8", 1: "uint8", 2: "int32", 3: "uint32", 4: "int64", 5: "uint64", 6: "float16",
           7: "float32", 8: "float64", 9: "bfloat16"}
_ERRORS = {1: ("NCCL_ERROR_UNHANDLED_CUDA_ERROR", "unhandled cuda error"),
           2: ("NCCL_ERROR_SYSTEM_ERROR", "unhandled system error"),
           3: ("NCCL_ERROR_INTERNAL_ERROR", "internal error"),
           4: ("NCCL_ERROR_INVALID_ARGUMENT", "invalid argument (run with NCCL_DEBUG=WARN for details)"),
           5: ("NCCL_ERROR_INVALID_USAGE", "invalid usage (run with NCCL_DEBUG=WARN for details)"),
           6: ("NCCL_ERROR_REMOTE_ERROR", "remote process exited or there was a network error")}


class NcclError(RuntimeError):
    def __init__(self, status: int, detail: str = ""):
        self.status = status
        name, msg = _ERRORS.get(status, ("NCCL_ERROR_UNKNOWN", "unknown"))
        super().__init__(f"{name}: {msg}" + (f" [stand-in: {detail}]" if detail else ""))

    def __reduce__(self):
        return (type(self), (self.status,))


def get_version() -> int:
    return 22809            # 2.28.9, what cupy-cuda13x 14.2 reports on the lent H200


def get_build_version() -> int:
    return 22809


def get_unique_id() -> bytes:
    """128 random bytes (cupy 14: bytes; earlier versions: a tuple of ints)."""
    return os.urandom(NCCL_UNIQUE_ID_BYTES)


def _dtype(datatype: int) -> np.dtype:
    name = _DTYPES.get(datatype)
    if name is None:
        raise NcclError(4, f"datatype {datatype}")
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _Group:
    """The ranks of one unique id in this process: a barrier and a slot per rank."""

    def __init__(self, ndev: int):
        self.ndev = ndev
        self.barrier = threading.Barrier(ndev)
        self.slots: list = [None] * ndev
        self.devices: list = [None] * ndev
        self.joined = 0
        self.mail: dict = {}                    # (src, dst) -> deque of sent buffers
        self.mail_cond = threading.Condition()


_groups: dict[bytes, _Group] = {}
_groups_lock = threading.Lock()


class NcclCommunicator:
    """One rank of a communicator (ncclCommInitRank)."""

    def __init__(self, ndev, commId, rank, config=None):
        ndev, rank = operator.index(ndev), operator.index(rank)      # Cython `int`
        if not isinstance(commId, bytes):                          # Cython `bytes commId`
            if commId is None:
                raise TypeError("object of type 'NoneType' has no len()")
            raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got "
                            f"{type(commId).__name__})")
        if len(commId) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"commId length {len(commId)} != {NCCL_UNIQUE_ID_BYTES}.")
        if ndev < 1 or not 0 <= rank < ndev:
            raise NcclError(4, f"ndev={ndev}, rank={rank}")
        self._ndev, self._rank, self._device = ndev, rank, rt.get_device()
        self._closed = False
        if ndev == 1:
            self._group = None
            return
        with _groups_lock:
            g = _groups.setdefault(bytes(commId), _Group(ndev))
            if g.ndev != ndev or g.devices[rank] is not None:
                raise NcclError(5, f"unique id already used by a communicator of {g.ndev} ranks "
                                   f"(rank {rank} joined twice?)")
            g.devices[rank] = self._device
            g.joined += 1
            if g.joined == ndev:
                del _groups[bytes(commId)]
        self._group = g
        self._wait("ncclCommInitRank")
        if len(set(g.devices)) != ndev:
            raise NcclError(5, f"duplicate GPU: ranks on devices {g.devices} (one GPU per rank)")

    def _wait(self, what: str) -> None:
        try:
            self._group.barrier.wait(TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise NcclError(6, f"{what}: not every rank of {self._ndev} arrived within {TIMEOUT_S}s "
                               "(the stand-in runs the ranks of a communicator in one process only)") \
                from None

    # -- queries ------------------------------------------------------------------------
    def device_id(self) -> int:
        return self._device

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._ndev

    def destroy(self) -> None:
        self._closed = True

    def abort(self) -> None:
        self._closed = True

    def check_async_error(self) -> None:
        pass

    # -- collectives ----------------------------------------------------------------------
    def _prepare(self, what, datatype, stream, op=None):
        if self._closed:
            raise NcclError(4, f"{what} on a destroyed communicator")
        dt = _dtype(operator.index(datatype))
        if op is not None and operator.index(op) not in (0, 1, 2, 3, 4):
            raise NcclError(4, f"{what}: reduction op {op}")
        s = rt.stream_from_ptr(operator.index(stream))
        if s.ptr and s.device_id != self._device:
            raise NcclError(4, f"{what}: stream of device {s.device_id} on a communicator of device "
                               f"{self._device}")
        return dt, s

    def _buf(self, what, ptr, count, dt):
        ptr, count = operator.index(ptr), operator.index(count)
        if count < 0:
            raise OverflowError("can't convert negative value to size_t")
        try:
            return rt.host_view(ptr, count * dt.itemsize, dt, f"nccl {what}")
        except rt.CUDARuntimeError as e:
            raise NcclError(4, str(e)) from None

    def _run(self, what, s, mine, result, out):
        """out[...] = result(the `mine` buffers of every rank), on every rank between
        barriers, now or when the graph being captured on `s` is launched."""
        def work():
            if self._group is None:
                res = result([mine])
            else:
                g = self._group
                g.slots[self._rank] = mine
                self._wait(what)                   # every rank has posted its buffer
                res = result(list(g.slots))
                self._wait(what)                   # every rank has read every buffer
            if out is not None:
                out[...] = res
            if self._group is not None:
                self._wait(what)                   # no rank reuses its slot early
        mems = [rt.find_allocation(v.ctypes.data) for v in (mine, out) if v is not None and v.size]
        rt.launch(work, s, mems)

    def _reduction(self, what, sendbuf, recvbuf, count, datatype, op, stream, root=None):
        dt, s = self._prepare(what, datatype, stream, op)
        send = self._buf(what, sendbuf, count, dt)
        recv = self._buf(what, recvbuf, count, dt) if root is None or self._rank == root else None
        op = operator.index(op)
        self._run(what, s, send, lambda slots: _reduce(op, slots, dt), recv)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self._reduction("allReduce", sendbuf, recvbuf, count, datatype, op, stream)

    def reduce(self, sendbuf, recvbuf, count, datatype, op, root, stream):
        self._reduction("reduce", sendbuf, recvbuf, count, datatype, op, stream, operator.index(root))

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        dt, s = self._prepare("allGather", datatype, stream)
        count = operator.index(count)
        send = self._buf("allGather", sendbuf, count, dt)
        recv = self._buf("allGather", recvbuf, count * self._ndev, dt)
        self._run("allGather", s, send, lambda slots: np.concatenate(slots), recv)

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
        dt, s = self._prepare("reduceScatter", datatype, stream, op)
        n = operator.index(recvcount)
        send = self._buf("reduceScatter", sendbuf, n * self._ndev, dt)
        recv = self._buf("reduceScatter", recvbuf, n, dt)
        op, r = operator.index(op), self._rank
        self._run("reduceScatter", s, send,
                  lambda slots: _reduce(op, [v[r * n:(r + 1) * n] for v in slots], dt), recv)

    def broadcast(self, sendbuff, recvbuff, count, datatype, root, stream):
        dt, s = self._prepare("broadcast", datatype, stream)
        root = operator.index(root)
        send = self._buf("broadcast", sendbuff, count, dt) if self._rank == root else None
        recv = self._buf("broadcast", recvbuff, count, dt)
        self._run("broadcast", s, send, lambda slots: np.array(slots[root]), recv)

    def bcast(self, buff, count, datatype, root, stream):
        self.broadcast(buff, buff, count, datatype, root, stream)


def _p2p(self, what, buf, count, datatype, peer, stream):
    dt, s = self._prepare(what, datatype, stream)
    peer = operator.index(peer)
    if not 0 <= peer < self._ndev or peer == self._rank or self._group is None:
        raise NcclError(4, f"{what}: peer {peer} of rank {self._rank} in a communicator of {self._ndev}")
    view = self._buf(what, buf, count, dt)
    return view, s, peer, self._group


def _send(self, sendbuf, count, datatype, peer, stream):
    data, s, peer, g = _p2p(self, "send", sendbuf, count, datatype, peer, stream)

    def work():
        with g.mail_cond:
            g.mail.setdefault((self._rank, peer), deque()).append(np.array(data).reshape(-1).view(np.uint8))
            g.mail_cond.notify_all()
    rt.launch(work, s, [rt.find_allocation(data.ctypes.data)] if data.size else [])


def _recv(self, recvbuf, count, datatype, peer, stream):
    out, s, peer, g = _p2p(self, "recv", recvbuf, count, datatype, peer, stream)

    def work():
        with g.mail_cond:
            q = g.mail.setdefault((peer, self._rank), deque())
            if not g.mail_cond.wait_for(lambda: q, TIMEOUT_S):
                raise NcclError(6, f"recv: nothing from rank {peer} to rank {self._rank} within {TIMEOUT_S} s "
                                   "(a GPU would hang)")
            msg = q.popleft()
        if msg.nbytes != out.nbytes:
            raise NcclError(5, f"recv of {out.nbytes} bytes on rank {self._rank} matched a send of {msg.nbytes} "
                               f"bytes from rank {peer}")
        out.reshape(-1).view(np.uint8)[...] = msg
    rt.launch(work, s, [rt.find_allocation(out.ctypes.data)] if out.size else [])


NcclCommunicator.send = _send
NcclCommunicator.recv = _recv
_group_depth = threading.local()


def groupStart() -> None:
    _group_depth.n = getattr(_group_depth, "n", 0) + 1


def groupEnd() -> None:
    if getattr(_group_depth, "n", 0) <= 0:
        raise NcclError(5, "groupEnd without groupStart")
    _group_depth.n -= 1


def _reduce(op: int, values: list, dt: np.dtype) -> np.ndarray:
    """NCCL's reduction of the ranks' buffers (floats accumulated in float64)."""
    acc_dt = np.float64 if dt.kind == "f" or dt.itemsize == 2 and dt.kind == "V" else dt
    acc = np.array(values[0], dtype=acc_dt)
    for v in values[1:]:
        acc = _combine(op, acc, v)
    if op == NCCL_AVG:
        acc = acc / len(values)
    return acc.astype(dt)


def _combine(op: int, a, b):
    b = np.asarray(b, dtype=a.dtype)
    if op in (NCCL_SUM, NCCL_AVG):
        return a + b
    if op == NCCL_PROD:
        return a * b
    if op == NCCL_MAX:
        return np.maximum(a, b)
    return np.minimum(a, b)
