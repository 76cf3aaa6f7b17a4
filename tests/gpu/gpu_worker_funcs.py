"""Functions the GPU session tests run on workers (imported there by sess.import_module)."""
from __future__ import annotations

import numpy as np

import disco
from disco._context import current_context


@disco.register_func("test.gpu.iota")
def iota(n: int, dtype: str = "float32"):
    """A cupy array [1, 2, ..., n] * (worker_id + 1) on the worker's GPU."""
    import cupy
    return (cupy.arange(1, n + 1, dtype=dtype) * (current_context().worker_id + 1)).astype(dtype)


@disco.register_func("test.gpu.to_host")
def to_host(x):
    import cupy
    return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else x


@disco.register_func("test.gpu.device_of")
def device_of(x=None):
    import cupy
    return [current_context().device, int(cupy.cuda.runtime.getDevice())]


@disco.register_func("test.gpu.run_vm")
def run_vm(path: str, fn: str, *args):
    """Load an executable, run `fn` on the worker's GPU, return numpy results."""
    import cupy
    ex = disco.load_executable(path)
    vm = disco.VirtualMachine(ex, device=current_context().device)
    out = vm[fn](*[cupy.asarray(a) for a in args])
    return cupy.asnumpy(out)


@disco.register_func("test.gpu.is_device_array")
def is_device_array(x) -> bool:
    import cupy
    return isinstance(x, cupy.ndarray)
