"""`cupy.cuda` of the stand-in: devices, streams, events, CUDA graphs (captured work is
replayed by Graph.launch), memory pointers and pool, and the runtime / driver / nvrtc /
nccl modules."""
from __future__ import annotations

import time

from .. import _runtime as rt
from .._runtime import Memory, Stream, find_allocation  # noqa: F401
from . import driver, nvrtc, runtime  # noqa: F401

get_current_stream_ptr = lambda: rt.current_stream().ptr  # noqa: E731


def is_available() -> bool:
    return rt.device_count() > 0


def get_current_stream(device_id: int = -1) -> Stream:
    return rt.current_stream()


class Device:
    """cupy.cuda.Device: `id`, use(), `with` (switch and restore), compute_capability."""

    def __init__(self, device=None):
        self.id = rt.get_device() if device is None else int(device)

    def __int__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def use(self):
        rt.set_device(self.id)
        return self

    def __enter__(self):
        self._prev = getattr(self, "_prev", [])
        self._prev.append(rt.get_device())
        rt.set_device(self.id)
        return self

    def __exit__(self, *exc):
        rt.set_device(self._prev.pop())

    def synchronize(self):
        pass

    @property
    def compute_capability(self) -> str:
        if not 0 <= self.id < rt.device_count():
            raise rt.CUDARuntimeError(101, f"device {self.id}")
        return "90"

    @property
    def mem_info(self):
        return (64 << 30) - rt.used_bytes(), 64 << 30


class Event:
    """A CUDA event: record() takes the host clock (work here is synchronous)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.ptr = id(self)
        self.disable_timing = disable_timing
        self._t = None

    @property
    def done(self) -> bool:
        return True

    def record(self, stream=None):
        s = rt.current_stream() if stream is None else stream
        rt.launch(lambda: setattr(self, "_t", time.perf_counter()), s)

    def synchronize(self):
        pass


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """Milliseconds between two recorded events (cudaEventElapsedTime)."""
    for e in (start_event, end_event):
        if e.disable_timing or e._t is None:
            raise rt.CUDARuntimeError(400, "event not recorded or created with disable_timing")
    return (end_event._t - start_event._t) * 1e3


class Graph:
    """A captured CUDA graph: launch() replays the recorded work on `stream` (or records
    it again, when that stream is itself capturing)."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("currently this class cannot be initiated by the user and must "
                                  "be created via stream capture")

    @classmethod
    def _from_ops(cls, ops):
        g = cls.__new__(cls)
        g._ops = list(ops)
        return g

    def launch(self, stream=None):
        mems = []
        for _, refs in self._ops:
            for ref in refs:
                m = ref()
                if m is None:
                    raise rt.CUDARuntimeError(700, "the graph touches device memory that was freed after "
                                                   "the capture (keep the arrays a graph uses alive)")
                mems.append(m)
        ops = [fn for fn, _ in self._ops]

        def replay():
            for fn in ops:
                fn()
        rt.launch(replay, stream, mems)

    def upload(self, stream=None):
        pass


class MemoryPointer:
    """A pointer into device memory: `ptr` (int), `mem`, `device_id`."""

    def __init__(self, mem: Memory, offset: int):
        self.mem, self.device_id = mem, mem.device_id
        self.ptr = mem.ptr + offset if mem.ptr else 0

    def __int__(self):
        return self.ptr

    def __add__(self, offset: int):
        return MemoryPointer(self.mem, self.ptr - self.mem.ptr + offset)

    @property
    def device(self):
        return Device(self.device_id)


def alloc(size: int) -> MemoryPointer:
    return MemoryPointer(Memory(size), 0)


class MemoryPool:
    """cupy's default pool, as far as it is read: bytes in use (live allocations)."""

    def used_bytes(self) -> int:
        return rt.used_bytes()

    def total_bytes(self) -> int:
        return rt.used_bytes()

    def free_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self, stream=None) -> None:
        pass

    def set_limit(self, size=None, fraction=None) -> None:
        pass

    def get_limit(self) -> int:
        return 0

    def malloc(self, size: int) -> MemoryPointer:
        return alloc(size)


class PinnedMemoryPool(MemoryPool):
    pass


_pool, _pinned_pool = MemoryPool(), PinnedMemoryPool()


def get_allocator():
    return _pool.malloc


def set_allocator(allocator=None):
    pass


from . import device, nccl  # noqa: E402,F401  (they use the names above)
