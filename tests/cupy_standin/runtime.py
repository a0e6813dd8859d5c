"""``cupy.cuda.runtime`` and ``cupy.cuda.nvrtc`` of the stand-in device (what hpcinv calls)."""
from __future__ import annotations

from .streams import _streams, device_count, get_device_id

#: Bytes of the stand-in device (an H100's 80 GB); ``memGetInfo`` subtracts the pool's use.
TOTAL_MEMORY = 80 * 10 ** 9
VERSION = 13000


class CUDARuntimeError(RuntimeError):
    pass


def getDeviceCount() -> int:
    return device_count()


def getDevice() -> int:
    return get_device_id()


def memGetInfo() -> tuple[int, int]:
    from .memory import get_default_memory_pool
    return TOTAL_MEMORY - get_default_memory_pool().total_bytes(), TOTAL_MEMORY


def getDeviceProperties(device: int) -> dict:
    if not 0 <= int(device) < device_count():
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return {"name": b"CuPy stand-in (CPU)", "totalGlobalMem": TOTAL_MEMORY,
            "major": 9, "minor": 0, "multiProcessorCount": 132, "warpSize": 32,
            "pciBusID": 0x10 + int(device), "pciDomainID": 0, "pciDeviceID": 0}


def runtimeGetVersion() -> int:
    return VERSION


def driverGetVersion() -> int:
    return VERSION


def streamGetPriority(stream: int) -> int:
    for s in _streams:
        if s.ptr == stream:
            return s.priority
    raise CUDARuntimeError("cudaErrorInvalidResourceHandle: invalid resource handle")


class nvrtc:    # noqa: N801 - the module cupy.cuda.nvrtc, as a namespace
    @staticmethod
    def getVersion() -> tuple[int, int]:
        return (13, 0)
