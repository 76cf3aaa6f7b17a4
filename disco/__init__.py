"""Disco: the runtime. Imports neither `compiler` nor `launch`.

Light to import (a worker process starts with it): the registry, errors and worker
identity load eagerly; sessions, the VM and executables load on first use.
"""
import os as _os

# OpenBLAS's threads spin for a while after each BLAS call. On a machine whose cores are
# all busy that starves the OpenMP threads of the compiled kernels that run next (an
# rms_norm beside a matmul ran 100x slower: benchmarks/llama_decode.py's prefill). Ask
# them to sleep almost at once, unless the user set it: this holds where disco is imported
# before numpy, and always in worker processes, which inherit the environment.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from ._context import num_workers, worker_id
from .errors import DiscoError, SessionError, WorkerError
from .registry import get_global_func, list_global_funcs, register_func

_LAZY = {
    "Session": "disco.session", "DRef": "disco.session", "DFunction": "disco.session",
    "ThreadedSession": "disco.session", "ProcessSession": "disco.session",
    "Executable": "disco.executable", "load_executable": "disco.executable",
    "VirtualMachine": "disco.vm",
    "MPISession": "disco.session.mpi", "start": "disco.start",
    "DModule": "disco.dmodule", "load_shards": "disco.shards",
}

__all__ = ["register_func", "get_global_func", "list_global_funcs", "worker_id", "num_workers",
           "DiscoError", "WorkerError", "SessionError", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'disco' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
