"""What every CUDA convolution algorithm shares: the problem a call poses (geometry, checked once for 32-bit
indexing), the record of one worked-out kernel launch, and the rule that splits a reduction over blocks."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import numpy

from cnn_gpu.cuda import device
from cnn_gpu.cuda.launch import cdiv, require_int32_indexable
from cnn_gpu.ops.geometry import WindowGeometry

if TYPE_CHECKING:
    from cnn_gpu.ops.conv.implicit_gemm import ConvTile


# A SplitPlan splits its reduction until the grid has this many blocks per SM (backward-filter's default is the
# first): 2 fills the GPU once; 6 also trims the last wave's idle SMs, at the cost of more partials to sum.
SPLIT_BLOCKS_PER_SM = (2, 6)


class SplitPlan(NamedTuple):
    """A variant whose reduction is split over blocks (backward-filter's N·OH·OW, a small forward's C·R·S): tile
    sizes (or WINOGRAD, WINOGRAD_4X4 or FEW_CHANNELS, for backward-filter) and the grid size the split aims for, in
    blocks an SM."""
    tile: ConvTile | str
    blocks_per_sm: int


def _output_shape(g: WindowGeometry, K: int):
    return (g.N, K, g.OH, g.OW)


def _require_int32_geometry(g: WindowGeometry, K: int) -> None:
    """The kernels index within one image (and the GEMM extents) in 32 bits, across images in 64."""
    require_int32_indexable("one image of x", (g.C, g.H, g.W))
    require_int32_indexable("one zero-padded image of x", (g.C,) + g.padded_hw)  # gather offsets span the padding
    require_int32_indexable("one image of y", (K, g.OH, g.OW))
    require_int32_indexable("w", (K, g.C, g.R, g.S))
    require_int32_indexable("the output pixels N*OH*OW", (g.N, g.OH, g.OW))
    require_int32_indexable("the input pixels N*H*W", (g.N, g.H, g.W))


def _geometry_ints(g: WindowGeometry, K: int) -> tuple:
    """The geometry every implicit-GEMM kernel takes, in its order (also the autotuner's problem key)."""
    return tuple(int(v) for v in (g.N, g.C, g.H, g.W, K, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top, g.pad_left))


class _Problem(NamedTuple):
    """What every launch for one (geometry, K) needs, checked and converted once: the 32-bit indexing
    checks passed, the autotuner's key, the kernels' geometry arguments (numpy.int32s, in order), x's and y's shapes."""
    g: WindowGeometry
    K: int
    key: tuple
    args: tuple
    x_shape: tuple
    y_shape: tuple


@functools.lru_cache(maxsize=1024)
def _problem(g: WindowGeometry, K: int) -> _Problem:
    _require_int32_geometry(g, K)
    ints = _geometry_ints(g, K)
    return _Problem(g, K, ints, tuple(numpy.int32(v) for v in ints), g.input_shape, _output_shape(g, K))


class _Launch(NamedTuple):
    """One direct convolution kernel (conv2d.cu, conv2d_direct.cu) worked out for a problem and variant, so that a
    call pays one cache lookup: the compiled kernel, grid, block, the scalar arguments after its arrays (numpy
    scalars, in order) and the number of partials its split reduction writes (1: it writes the output directly)."""
    kernel: object
    grid: tuple
    block: tuple
    scalars: tuple
    splits: int


@functools.lru_cache(maxsize=1024)
def _split_count(work: int, min_chunk: int, parallel_units: int, blocks_per_sm: int = 2) -> tuple[int, int]:
    """(splits, chunk) for a reduction of `work` items shared by `parallel_units` independent outputs:
    enough splits to give every SM blocks_per_sm blocks, no chunk under min_chunk items, no empty split."""
    splits = max(1, min(cdiv(blocks_per_sm * device.sm_count(), parallel_units), work // min_chunk))
    chunk = cdiv(cdiv(work, splits), min_chunk) * min_chunk
    return cdiv(work, chunk), chunk


def _fits(plan, *args) -> bool:
    """plan(*args) passes its buffer checks: a Winograd candidate is offered only then."""
    try:
        plan(*args)
    except ValueError:
        return False
    return True
