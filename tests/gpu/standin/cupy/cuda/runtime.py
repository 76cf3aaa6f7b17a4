"""`cupy.cuda.runtime` of the stand-in (DISCO_STANDIN_GPUS devices, default 1)."""
from __future__ import annotations

from .._runtime import CUDARuntimeError, device_count, get_device, set_device  # noqa: F401

streamCaptureModeGlobal, streamCaptureModeThreadLocal, streamCaptureModeRelaxed = 0, 1, 2
is_hip = False


def getDeviceCount() -> int:
    return device_count()


def getDevice() -> int:
    return get_device()


def setDevice(device: int) -> None:
    set_device(device)


def deviceSynchronize() -> None:
    pass


def runtimeGetVersion() -> int:
    return 13000


def driverGetVersion() -> int:
    return 13000


def memGetInfo():
    from . import Device
    return Device().mem_info


def getDeviceProperties(device: int) -> dict:
    """The keys read here (cupy's dict: `name` is bytes, as in cudaDeviceProp)."""
    if not 0 <= int(device) < device_count():
        raise CUDARuntimeError(101, f"device {device} of {device_count()}")
    return {"name": b"stand-in GPU (cupy stand-in, CPU)", "totalGlobalMem": 64 << 30,
            "sharedMemPerBlock": 48 * 1024, "sharedMemPerBlockOptin": 227 * 1024,
            "warpSize": 32, "maxThreadsPerBlock": 1024, "maxThreadsDim": (1024, 1024, 64),
            "maxGridSize": (2 ** 31 - 1, 65535, 65535), "major": 9, "minor": 0,
            "multiProcessorCount": 132, "clockRate": 1980000, "memoryClockRate": 2619000,
            "memoryBusWidth": 6144, "l2CacheSize": 50 << 20, "pciBusID": device, "pciDeviceID": 0}
