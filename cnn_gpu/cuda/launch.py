"""Launch shapes from problem sizes and the device's properties (never tuned to one GPU by hand)."""
from __future__ import annotations

import functools

INT32_MAX = 2**31 - 1


@functools.lru_cache(maxsize=None)
def _device_attributes(device_id: int) -> dict:
    import cupy

    return cupy.cuda.Device(device_id).attributes


def sm_count() -> int:
    import cupy

    return _device_attributes(cupy.cuda.runtime.getDevice())["MultiProcessorCount"]


def grid_stride_blocks(n: int, threads: int = 256, waves: int = 8) -> int:
    """Blocks for a grid-stride loop over n items: enough to fill every SM a few times over, no more."""
    return max(1, min((n + threads - 1) // threads, sm_count() * waves))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def is_aligned(alignment: int, *arrays) -> bool:
    """True when every array's data pointer is a multiple of alignment bytes (what vector loads need)."""
    return all(a.data.ptr % alignment == 0 for a in arrays)


def require_int32_indexable(name: str, shape) -> None:
    """Kernels that index with 32-bit ints call this before launch: a clear error instead of wrap-around."""
    size = 1
    for extent in shape:
        size *= int(extent)
    if size > INT32_MAX:
        raise ValueError(f"{name} of shape {tuple(shape)} has {size} elements, more than this kernel's 32-bit indexing allows (2**31 - 1)")
