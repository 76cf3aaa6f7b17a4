"""The CPU device of the VM, which is also the interface every device implements.

The recorder, matcher and plans never touch numpy directly for tensors: they ask the
device what a tensor is, how to make one and where it lives, so the CUDA device
(`disco.cuda.CudaDevice`, same methods and attributes, cupy arrays) runs the same
code. `make_device` picks the device from its name.
"""
from __future__ import annotations

import ctypes
from typing import Any, Callable, Optional

import numpy as np

from .._context import current_context
from ..errors import DiscoError
from ..executable import Executable
from ..tensor import as_numpy, contiguous, data_ptr

_KERNEL_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class CpuDevice:
    """What the VM needs from a device: arrays, pointers and kernel functions."""

    name = "cpu"
    tensor_type = np.ndarray    # the exact type a plan takes without converting (is_tensor)

    def __init__(self, ex: Executable):
        self.lib = ex.load_library()

    empty = staticmethod(np.empty)
    ptr = staticmethod(data_ptr)

    @staticmethod
    def shared_empty(shape, dtype) -> np.ndarray:
        """An array the worker's collectives read in place where they can: from its
        communicator (shm: the arena, see disco.ccl.empty); numpy's without one."""
        comm = current_context().state.get("ccl")
        return np.empty(shape, dtype) if comm is None else comm.empty(shape, dtype)

    def kernel(self, symbol: str) -> Callable:
        if self.lib is None:
            raise DiscoError(f"executable has no kernel library, but needs kernel {symbol!r}")
        try:
            addr = ctypes.cast(getattr(self.lib, symbol), ctypes.c_void_p).value
        except AttributeError:
            raise DiscoError(f"kernel {symbol!r} is missing from the executable's library") from None
        return _KERNEL_PROTO(addr)

    def to_tensor(self, x: Any) -> np.ndarray:
        return contiguous(as_numpy(x))

    @staticmethod
    def is_tensor(x: Any) -> bool:
        """Whether `x` is a tensor of this device (kernels take it as is)."""
        return isinstance(x, np.ndarray)

    def packed(self, name: str) -> Optional[Callable]:
        """A device-specific variant of packed function `name`, or None (use the registry's)."""
        return None

    def wrap_handle(self, handle: Any) -> Any:
        """What `vm[name]` returns (the CUDA device wraps it for CUDA graphs)."""
        return handle


def make_device(device: str, ex: Executable, **options: Any) -> CpuDevice:
    """The device named `device` ("cpu", "cuda", "cuda:N") for executable `ex`."""
    if device == "cpu":
        if options:
            raise DiscoError(f"device 'cpu' takes no options, got {sorted(options)}")
        return CpuDevice(ex)
    if device == "cuda" or device.startswith("cuda:"):
        from ..cuda import CudaDevice     # cupy arrays, NVRTC kernels, CUDA graphs (disco/cuda.py)
        return CudaDevice(ex, device, **options)
    raise DiscoError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
