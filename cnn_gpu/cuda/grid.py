"""Launch shapes from problem sizes and the device's properties (never tuned to one GPU by hand)."""
from __future__ import annotations

from cnn_gpu.cuda.device import sm_count  # noqa: F401  (launch shapes' one device property)

INT32_MAX = 2**31 - 1
# What require_int32_indexable admits: 2**31 - 1 less a margin. Kernels form indices a tile, a block or a
# grid-stride step past an extent before testing them against it (p0 + a tile column, i + blockDim.x); the
# margin keeps every such index below 2**31 (the largest step in kernels/*.cu is a few thousand).
INDEX_HEADROOM = 2**16
INT32_INDEXABLE = INT32_MAX - INDEX_HEADROOM


def grid_stride_blocks(n: int, threads: int = 256, waves: int = 8) -> int:
    """Blocks for a grid-stride loop over n items: enough to fill every SM a few times over, no more."""
    return max(1, min((n + threads - 1) // threads, sm_count() * waves))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# Items each thread of an element-wise kernel takes: kernels/common.cuh's ELEMENTWISE_UNROLL.
ELEMENTWISE_UNROLL = 4


def elementwise_blocks(n: int, vec4: bool, threads: int = 256) -> int:
    """Blocks of an element-wise kernel over n elements (common.cuh's unrolled_item layout):
    ELEMENTWISE_UNROLL items a thread, an item being a float4 when vec4 (the n % 4 tail goes as
    scalars), else one element."""
    return max(1, cdiv(n // 4 if vec4 else n, threads * ELEMENTWISE_UNROLL))


def is_aligned(alignment: int, *arrays) -> bool:
    """True when every array's data pointer is a multiple of alignment bytes (what vector loads need)."""
    for a in arrays:  # a loop, not all() over a generator: this runs on most launches
        if a.data.ptr % alignment:
            return False
    return True


def require_int32_indexable(name: str, shape) -> None:
    """Kernels that index with 32-bit ints call this before launch: a clear error instead of wrap-around.
    Admits up to INT32_INDEXABLE elements (2**31 - 1 less INDEX_HEADROOM)."""
    size = 1
    for extent in shape:
        size *= int(extent)
    if size > INT32_INDEXABLE:
        raise ValueError(f"{name} of shape {tuple(shape)} has {size} elements, more than this kernel's 32-bit "
                         f"indexing allows (2**31 - 1 - {INDEX_HEADROOM}: {INT32_INDEXABLE})")


def fast_divmod_params(divisor: int) -> tuple[int, int]:
    """(multiplier, shift) of kernels/common.cuh's FastDivmod: for 0 <= n < 2**31,
    n // divisor == (n * multiplier >> 32) >> shift (divisor 1 is special-cased on the device; its
    pair is (0, 0)). l = ceil(log2 divisor), multiplier = ceil(2**(31 + l) / divisor), shift = l - 1."""
    if not 1 <= divisor <= INT32_MAX:
        raise ValueError(f"divisor must be in [1, 2**31 - 1], got {divisor}")
    if divisor == 1:
        return 0, 0
    log2_ceil = (divisor - 1).bit_length()
    return -(-(1 << (31 + log2_ceil)) // divisor), log2_ceil - 1

