"""A worker process's peak memory, measured around one piece of work.

    marks = sess.get_global_func("disco.memory.mark")()   # on every worker: (RSS KiB, reset ok)
    ...                                                     # the work
    peaks = sess.get_global_func("disco.memory.peak")()   # peak RSS KiB since the mark

The peak resident set (VmHWM in /proc/self/status) is reset to the current one by writing
5 to /proc/self/clear_refs, so peak - mark is what the work itself needed. Linux only;
where the reset is refused, `mark` says so and a later peak may be an earlier one's.
Used by the weight loader's memory test and benchmarks/weights_load.py.
"""
from __future__ import annotations

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
