"""What every CUDA convolution algorithm shares: the problem a call poses (ConvProblem: geometry, checked once for
32-bit indexing), the record of one worked-out kernel launch, and the rule that splits a reduction over blocks."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy

from cnn_gpu.cuda import device
from cnn_gpu.cuda.grid import cdiv, require_int32_indexable
from cnn_gpu.ops.geometry import WindowGeometry


# A split variant splits its reduction (backward-filter's N·OH·OW, a small forward's C·R·S) over blocks until the
# grid has this many blocks per SM (backward-filter's default is the first): 2 fills the GPU once; 6 also trims
# the last wave's idle SMs, at the cost of more partials to sum.
SPLIT_BLOCKS_PER_SM = (2, 6)


def _output_shape(g: WindowGeometry, K: int):
    return (g.N, K, g.OH, g.OW)


def _require_int32_geometry(g: WindowGeometry, K: int, groups: int = 1) -> None:
    """The kernels index within one image (and the GEMM extents) in 32 bits, across images in 64."""
    require_int32_indexable("one image of x", (g.C, g.H, g.W))
    require_int32_indexable("one zero-padded image of x", (g.C,) + g.padded_hw)  # gather offsets span the padding
    require_int32_indexable("one image of y", (K, g.OH, g.OW))
    require_int32_indexable("w", (K, g.C // groups, g.R, g.S))
    require_int32_indexable("the output pixels N*OH*OW", (g.N, g.OH, g.OW))
    require_int32_indexable("the input pixels N*H*W", (g.N, g.H, g.W))


def _geometry_ints(g: WindowGeometry, K: int) -> tuple:
    """The geometry every implicit-GEMM kernel takes, in its order (also the autotuner's problem key)."""
    return tuple(int(v) for v in (g.N, g.C, g.H, g.W, K, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top, g.pad_left))


class ConvProblem(NamedTuple):
    """What every launch for one (geometry, K) needs, checked and converted once: the 32-bit indexing
    checks passed, the autotuner's key, the kernels' geometry arguments (numpy.int32s, in order), x's and y's shapes."""
    g: WindowGeometry
    K: int
    key: tuple
    args: tuple
    x_shape: tuple
    y_shape: tuple


@functools.lru_cache(maxsize=1024)
def conv_problem(g: WindowGeometry, K: int) -> ConvProblem:
    """The problem of K filters over geometry g (cnn_gpu.ops.geometry.window_geometry); ValueError where the
    kernels' 32-bit indexing cannot hold it."""
    _require_int32_geometry(g, K)
    ints = _geometry_ints(g, K)
    return ConvProblem(g, K, ints, tuple(numpy.int32(v) for v in ints), g.input_shape, _output_shape(g, K))


class _Launch(NamedTuple):
    """One direct convolution kernel (conv2d.cu, conv2d_direct.cu) worked out for a problem and variant, so that a
    call pays one cache lookup: the compiled kernel, grid, block, the scalar arguments after its arrays (numpy
    scalars, in order) and the number of partials its split reduction writes (1: it writes the output directly)."""
    kernel: object
    grid: tuple
    block: tuple
    scalars: tuple
    splits: int


def _split_count(work: int, min_chunk: int, parallel_units: int, blocks_per_sm: int = 2) -> tuple[int, int]:
    """(splits, chunk) for a reduction of `work` items shared by `parallel_units` independent outputs:
    enough splits to give every SM blocks_per_sm blocks, no chunk under min_chunk items, no empty split."""
    splits = max(1, min(cdiv(blocks_per_sm * device.sm_count(), parallel_units), work // min_chunk))
    chunk = cdiv(cdiv(work, splits), min_chunk) * min_chunk
    return cdiv(work, chunk), chunk



def earlier_split_matches(variant, blocks_per_sm: int, splits) -> bool:
    """Whether a split variant at an earlier SPLIT_BLOCKS_PER_SM than blocks_per_sm gives the same split (then only
    that one is offered): splits(blocks) is the split at another blocks-per-SM value."""
    earlier = SPLIT_BLOCKS_PER_SM[:SPLIT_BLOCKS_PER_SM.index(blocks_per_sm)] if blocks_per_sm in SPLIT_BLOCKS_PER_SM else ()
    own = splits(blocks_per_sm)
    return any(splits(b) == own for b in earlier)
