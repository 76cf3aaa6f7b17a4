"""A worker process's peak memory, measured around one piece of work.

    marks = sess.get_global_func("disco.memory.mark")()   # on every worker: (RSS KiB, reset ok)
    ...                                                     # the work
    peaks = sess.get_global_func("disco.memory.peak")()   # peak RSS KiB since the mark

The peak resident set (VmHWM in /proc/self/status) is reset to the current one by writing
5 to /proc/self/clear_refs, so peak - mark is what the work itself needed. Linux only;
where the reset is refused, `mark` says so and a later peak may be an earlier one's.
Used by the weight loader's memory test and benchmarks/weights_load.py.

`HugePageArena` packs host arrays (a worker's weights) into memory backed by 2 MB pages.
"""
from __future__ import annotations

import mmap

import numpy as np

from .registry import register_func


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


@register_func("disco.memory.mark", override=True)
def mark() -> tuple[int, bool]:
    """Reset this process's peak resident size to its current one; returns (resident
    KiB now, whether the reset worked)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    return _status_kib("VmRSS"), reset


@register_func("disco.memory.peak", override=True)
def peak() -> int:
    """The peak resident size (KiB) since the last `mark`."""
    return _status_kib("VmHWM")


class HugePageArena:
    """Copies of host arrays packed into anonymous mappings that Linux backs with 2 MB
    pages (madvise MADV_HUGEPAGE: transparent huge pages in their common "madvise" mode
    give none otherwise). A decode step streams every weight once, and one core read
    13.8 GB/s from 4 KB pages against 15.7 from 2 MB pages on the development machine;
    numpy asks for huge pages for arrays of 4 MiB and more (NUMPY_HUGE), which most
    weights of a small model or of a tensor-parallel shard are not. So only arrays
    between MIN_BYTES and NUMPY_HUGE are copied (a load's peak memory grows by one such
    array, not by its largest block); others, and every array where mmap has no
    MADV_HUGEPAGE (not Linux), are returned as they are."""

    CHUNK = 64 << 20     # bytes mapped at a time (untouched pages take no memory)
    PAGE = 2 << 20
    MIN_BYTES = 64 << 10
    NUMPY_HUGE = 4 << 20  # numpy madvises its own allocations from this size (Linux)

    def __init__(self):
        self._base = None    # uint8 view of the current chunk, 2 MB aligned
        self._used = 0

    def copy(self, a: np.ndarray) -> np.ndarray:
        """A C-contiguous copy of `a` in the arena (or `a` itself, see the class)."""
        if not hasattr(mmap, "MADV_HUGEPAGE") or not self.MIN_BYTES <= a.nbytes < self.NUMPY_HUGE:
            return a
        size = (a.nbytes + 63) // 64 * 64          # the next array starts on a cache line
        if self._base is None or self._used + size > self._base.size:
            self._new_chunk()
        out = self._base[self._used:self._used + a.nbytes].view(a.dtype).reshape(a.shape)
        np.copyto(out, a)
        self._used += size
        return out

    def _new_chunk(self) -> None:
        size = self.CHUNK                          # a whole number of PAGEs; arrays are < NUMPY_HUGE
        # Private: an anonymous shared mapping is shmem, which huge pages need other settings for.
        m = mmap.mmap(-1, size + self.PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(m, np.uint8)
        start = -whole.ctypes.data % self.PAGE     # a multiple of 4 KB: the mapping is page aligned
        m.madvise(mmap.MADV_HUGEPAGE, start, size)
        self._base, self._used = whole[start:start + size], 0
