"""`cupy.cuda.device` of the stand-in: Device and cupy's cuBLAS handle (which loads the
stand-in libcublas, see cupy/_cublas.py)."""
from __future__ import annotations

from .. import _cublas
from .. import _runtime as rt
from . import Device  # noqa: F401


def get_device_id() -> int:
    return rt.get_device()


def get_cublas_handle() -> int:
    return _cublas.cupy_handle()


def get_compute_capability() -> str:
    return Device().compute_capability
