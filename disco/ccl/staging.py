"""GPU arrays through host backends: the collectives of `shm` and `mpi` on cupy arrays.

NCCL refuses two ranks on one GPU, so workers that share a device (and, where no NCCL
is wanted, any GPU workers) run their collectives on a host backend. `host_staged`
makes such a backend take device arrays: the input is copied to a host buffer (the
communicator's `empty`: for shm, the shared arena, so peers read it in place), the
host collective runs, and the result is copied back to the device. Results follow the
input: a device array in gives a device array out (for the broadcasts, whose other
workers pass None, the worker's own device decides); host arrays take the backend's
own path untouched.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from disco._context import current_context
from disco.errors import CollectiveError
from disco.tensor import is_device_array


def _on_device(x: Any) -> bool:
    """Whether this call's result goes to the GPU: x is a device array, or x is None
    (a broadcast's receiver) on a worker bound to a GPU."""
    if x is None:
        return str(current_context().device).startswith("cuda")
    return type(x) is not np.ndarray and is_device_array(x)


# How many positional arguments after x come before `out` (the functions that take one).
_BEFORE_OUT = {"allreduce": 1, "allgather": 1, "reduce_scatter": 2}


def _staged(name: str, method: Callable) -> Callable:
    k = _BEFORE_OUT.get(name)

    @functools.wraps(method)
    def call(self, x=None, *args, **kwargs):
        if type(x) is np.ndarray or not _on_device(x):
            return method(self, x, *args, **kwargs)
        import cupy
        out = kwargs.pop("out", None)
        if k is not None and len(args) > k:
            out, args = args[k], args[:k]
        host = None
        if x is not None:
            host = self.empty(x.shape, x.dtype)     # shm: in the arena, read by peers in place
            x.get(out=host)
        res = method(self, host, *args, **kwargs)
        if res is None:                             # gather_to_worker0 on workers other than 0
            return None
        if out is None:
            return cupy.asarray(res)
        if not is_device_array(out) or out.shape != res.shape or out.dtype != res.dtype:
            raise CollectiveError(
                f"ccl.{name} on worker {self.rank}: out= must be a device array of shape "
                f"{res.shape} and dtype {res.dtype} like the device input, got {_describe(out)}")
        out.set(res)
        return out
    return call


def _describe(a: Any) -> str:
    shape = getattr(a, "shape", None)
    return f"a {type(a).__name__}" + (f" of shape {shape} and dtype {a.dtype}" if shape is not None else "")


def _staged_recv(method: Callable) -> Callable:
    """recv on a worker bound to a GPU (or into a device `out`): received into a host
    buffer, then copied to the device."""
    @functools.wraps(method)
    def call(self, shape, dtype, src, out=None):
        if type(out) is np.ndarray or not _on_device(out):
            return method(self, shape, dtype, src, out)
        import cupy
        host = self.empty(shape, dtype) if out is None else self.empty(out.shape, out.dtype)
        res = method(self, shape, dtype, src, host)
        if out is None:
            return cupy.asarray(res)
        out.set(res)
        return out
    return call


def host_staged(cls):
    """Class decorator: the collectives of a host backend also take device arrays."""
    from disco.ccl import FUNCTIONS
    for name in FUNCTIONS:
        if name not in ("barrier", "recv") and name in cls.__dict__:
            setattr(cls, name, _staged(name, cls.__dict__[name]))
    if "recv" in cls.__dict__:
        cls.recv = _staged_recv(cls.__dict__["recv"])
    return cls
