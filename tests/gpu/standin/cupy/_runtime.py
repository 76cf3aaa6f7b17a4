"""The stand-in's "device": allocations, current device and stream, CUDA-graph capture.

Device memory is host memory (numpy byte buffers) registered in a table of live
allocations, so that every pointer handed to a kernel or to NCCL can be checked to lie
inside one (a numpy array's address, a freed buffer or a too-small workspace fails
like an illegal address on a GPU, only earlier and with a message).

Work runs synchronously on the calling thread. Work issued to a stream that is
capturing is not run but recorded into the graph (as CUDA does), and host<->device
copies and synchronizations on a capturing stream raise, as they do on a GPU.
"""
from __future__ import annotations

import bisect
import itertools
import os
import threading
import weakref

import numpy as np

ALIGN = 256                       # cudaMalloc / cupy's pool hand out 256-byte aligned blocks
_lock = threading.Lock()
_starts: list[int] = []           # sorted start addresses of live allocations
_live: dict[int, "weakref.ref[Memory]"] = {}
_used = [0]


# -- errors (the messages of cupy's CUDARuntimeError / CUDADriverError) --------------------

_RUNTIME_ERRORS = {
    1: ("cudaErrorInvalidValue", "invalid argument"),
    100: ("cudaErrorNoDevice", "no CUDA-capable device is detected"),
    101: ("cudaErrorInvalidDevice", "invalid device ordinal"),
    400: ("cudaErrorInvalidResourceHandle", "invalid resource handle"),
    600: ("cudaErrorNotReady", "device not ready"),
    700: ("cudaErrorIllegalAddress", "an illegal memory access was encountered"),
    900: ("cudaErrorStreamCaptureUnsupported", "operation not permitted when stream is capturing"),
    901: ("cudaErrorStreamCaptureInvalidated", "operation failed due to a previous error during capture"),
    906: ("cudaErrorStreamCaptureImplicit",
          "operation would make the legacy stream depend on a capturing blocking stream"),
}


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, detail: str = ""):
        self.status = status
        name, msg = _RUNTIME_ERRORS.get(status, (f"cudaError{status}", "unknown error"))
        super().__init__(f"{name}: {msg}" + (f" [stand-in: {detail}]" if detail else ""))

    def __reduce__(self):
        return (type(self), (self.status,))


class CUDADriverError(RuntimeError):
    def __init__(self, name: str, msg: str, detail: str = ""):
        self.status = name
        super().__init__(f"{name}: {msg}" + (f" [stand-in: {detail}]" if detail else ""))


# -- devices ----------------------------------------------------------------------------

def device_count() -> int:
    """DISCO_STANDIN_GPUS (default 1): how many GPUs the stand-in pretends to have."""
    return int(os.environ.get("DISCO_STANDIN_GPUS", "1"))


class _Local(threading.local):
    def __init__(self):
        self.device = 0
        self.streams: dict[int, list] = {}     # device id -> stack of streams made current


_tls = _Local()


def get_device() -> int:
    return _tls.device


def set_device(i: int) -> None:
    i = int(i)
    if not 0 <= i < device_count():
        raise CUDARuntimeError(101, f"device {i} of {device_count()} (DISCO_STANDIN_GPUS)")
    _tls.device = i


# -- memory ------------------------------------------------------------------------------

class Memory:
    """One device allocation (cupy.cuda.memory.Memory): `ptr`, `size`, `device_id`."""

    __slots__ = ("ptr", "size", "device_id", "buf", "__weakref__")

    def __init__(self, size: int):
        size = int(size)
        self.size = size
        self.device_id = get_device()
        if size == 0:
            self.ptr, self.buf = 0, np.empty(0, np.uint8)
            return
        raw = np.empty(size + ALIGN, np.uint8)
        off = (-raw.ctypes.data) % ALIGN
        self.buf = raw[off:off + size]
        self.ptr = int(self.buf.ctypes.data)
        with _lock:
            bisect.insort(_starts, self.ptr)
            _live[self.ptr] = weakref.ref(self)
            _used[0] += size
        weakref.finalize(self, _forget, self.ptr, size)


def _forget(ptr: int, size: int) -> None:
    with _lock:
        i = bisect.bisect_left(_starts, ptr)
        if i < len(_starts) and _starts[i] == ptr:
            del _starts[i]
        _live.pop(ptr, None)
        _used[0] -= size


def used_bytes() -> int:
    return _used[0]


def find_allocation(ptr: int, nbytes: int = 1):
    """The live allocation holding [ptr, ptr + nbytes), or None."""
    with _lock:
        i = bisect.bisect_right(_starts, ptr) - 1
        if i < 0:
            return None
        ref = _live.get(_starts[i])
    mem = ref() if ref is not None else None
    if mem is None or ptr + max(nbytes, 1) > mem.ptr + mem.size:
        return None
    return mem


def host_view(ptr: int, nbytes: int, dtype, what: str) -> np.ndarray:
    """A numpy view of device memory at `ptr` (checked against the live allocations)."""
    dtype = np.dtype(dtype)
    if nbytes == 0:
        return np.empty(0, dtype)
    mem = find_allocation(ptr, nbytes)
    if mem is None:
        raise CUDARuntimeError(700, f"{what}: [{ptr:#x}, +{nbytes}) is not inside a live device "
                                    "allocation (a host pointer, a freed buffer or too small a buffer)")
    off = ptr - mem.ptr
    return mem.buf[off:off + nbytes].view(dtype)


# -- streams and capture ---------------------------------------------------------------

_stream_ids = itertools.count(1)
_streams: "weakref.WeakValueDictionary[int, Stream]" = weakref.WeakValueDictionary()


class Stream:
    """cupy.cuda.Stream: `ptr` (0 for the legacy null stream), current through `with` or
    use(), capture into a Graph (begin_capture / end_capture)."""

    null: "Stream"

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        if null:
            self.ptr, self.device_id = 0, -1
        else:
            self.ptr, self.device_id = 0x5100 + 16 * next(_stream_ids), get_device()
            _streams[self.ptr] = self
        self.non_blocking = bool(non_blocking)
        self._capture: list | None = None

    # current stream
    def __enter__(self):
        _tls.streams.setdefault(get_device(), []).append(self)
        return self

    def __exit__(self, *exc):
        _tls.streams[get_device()].pop()

    def use(self):
        stack = _tls.streams.setdefault(get_device(), [])
        if stack:
            stack[-1] = self
        else:
            stack.append(self)
        return self

    def __eq__(self, other):
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self):
        return self.ptr

    def __repr__(self):
        return f"<Stream {self.ptr} (device {self.device_id})>"

    @property
    def done(self) -> bool:
        return True

    def synchronize(self) -> None:
        if self._capture is not None:
            raise CUDARuntimeError(900, "Stream.synchronize() while the stream is capturing")

    def record(self, event=None):
        from .cuda import Event
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event) -> None:
        pass

    # capture
    def begin_capture(self, mode=None) -> None:
        if self.ptr in (0, 1):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self._capture is not None:
            raise CUDARuntimeError(1, "begin_capture on a stream that is already capturing")
        self._capture = []

    def end_capture(self):
        if self._capture is None:
            raise CUDARuntimeError(1, "end_capture without begin_capture")
        ops, self._capture = self._capture, None
        from .cuda import Graph
        return Graph._from_ops(ops)

    def is_capturing(self) -> bool:
        return self._capture is not None


Stream.null = Stream(null=True)


def current_stream() -> Stream:
    stack = _tls.streams.get(get_device())
    return stack[-1] if stack else Stream.null


def stream_from_ptr(ptr: int) -> Stream:
    if ptr == 0:
        return Stream.null
    s = _streams.get(int(ptr))
    if s is None:
        raise CUDARuntimeError(400, f"stream handle {ptr:#x} is not a live cupy.cuda.Stream")
    return s


def launch(fn, stream: Stream | None = None, mems=()) -> None:
    """Run device work `fn()` now, or record it when `stream` (default: the current one)
    is capturing, with the allocations `mems` it touches: a graph refuses to replay into
    an allocation freed since the capture (on a GPU the pool hands that memory out again
    while the graph still writes to it)."""
    s = current_stream() if stream is None else stream
    if s._capture is not None:
        s._capture.append((fn, [weakref.ref(m) for m in mems if m is not None and m.ptr]))
    else:
        fn()


def capturing(stream: Stream | None = None) -> bool:
    s = current_stream() if stream is None else stream
    return s._capture is not None


def check_host_transfer(direction: str) -> None:
    """Host<->device copies ("D2H" or "H2D") are refused on a capturing stream, with
    cupy's message (its copy_to_host_async / copy_from_host_async)."""
    if current_stream()._capture is not None:
        raise RuntimeError(f"the current stream is capturing, so {direction} transfers are disallowed")


def check_library_call(library: str) -> None:
    """cupy refuses cuBLAS / cuRAND calls on a capturing stream (its setStream)."""
    if current_stream()._capture is not None:
        raise NotImplementedError(f"calling {library} API during stream capture is currently unsupported")
