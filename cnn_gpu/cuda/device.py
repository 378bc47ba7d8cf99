"""The current device's properties that launch shapes depend on, read once per device."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _device_attributes(device_id: int) -> dict:
    import cupy

    return cupy.cuda.Device(device_id).attributes


def sm_count() -> int:
    """Streaming multiprocessors of the current device."""
    import cupy

    return _device_attributes(cupy.cuda.runtime.getDevice())["MultiProcessorCount"]
