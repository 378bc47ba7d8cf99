"""The implicit-GEMM convolutions of kernels/conv2d.cu: forward (conv2d_fwd_bias_act), backward-data and
backward-filter, each compiled per tile size (ConvTile), with its reduction optionally split over blocks
(SplitPlan), and the deterministic sum of split partials (conv2d_sum_partials) and bias gradient
(conv2d_bwd_bias) that every split algorithm ends with."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy

from cnn_gpu.cuda.launch import cdiv, grid_stride_blocks
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.arrays import nan_filled
from cnn_gpu.ops.conv.problem import SplitPlan, _Launch, _Problem, _split_count


class ConvTile(NamedTuple):
    """One compiled variant of the implicit-GEMM kernels (kernels/conv2d.cu's CONV_* defines): a block
    computes a bm x bn tile of C in steps of bk, each thread a tm x tn block of it."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def defines(self) -> dict:
        return {"CONV_BM": self.bm, "CONV_BN": self.bn, "CONV_BK": self.bk, "CONV_TM": self.tm, "CONV_TN": self.tn}


# The kernel file's #ifndef defaults (a test checks), so the CI compile check compiles the default variant.
DEFAULT_TILE = ConvTile(64, 64, 16, 4, 4)


# The autotuner's candidates for each implicit GEMM, the default first; each has a CUDA-vs-NumPy test and
# an NVRTC no-spill check. Bigger tiles for many filters and pixels (more FMAs per shared-memory read);
# 32 x 64 for few filters (first layers' forward); 128 x 32 for backward-filter of few input channels,
# whose GEMM is only C·R·S wide (9 or 25 for a 1-channel first layer).
CONV_TILES = (DEFAULT_TILE, ConvTile(128, 64, 16, 8, 4), ConvTile(64, 128, 16, 4, 8), ConvTile(128, 128, 16, 8, 8),
              ConvTile(32, 64, 16, 4, 4), ConvTile(128, 32, 16, 8, 4))


_BIAS_THREADS = 256  # conv2d_bwd_bias's block size (its shared buffer is sized for it)


@functools.lru_cache(maxsize=None)
def _kernel(name, tile: ConvTile = DEFAULT_TILE):
    """A kernel of conv2d.cu compiled with tile's sizes (the reductions ignore them: any variant serves)."""
    return load_kernel("conv2d", name, **tile.defines)


@functools.lru_cache(maxsize=1024)
def _gemm_grid(gemm_m: int, gemm_n: int, tile: ConvTile, splits: int = 1) -> tuple:
    """Grid of an implicit GEMM whose C is gemm_m x gemm_n: x over BN-wide columns, y over BM-tall rows."""
    return (cdiv(gemm_n, tile.bn), cdiv(gemm_m, tile.bm), splits)


# A split forward keeps at least this many BK-steps of the C·R·S reduction a split.
FORWARD_MIN_CHUNK_STEPS = 4


@functools.lru_cache(maxsize=1024)
def _forward_split(problem: _Problem, variant) -> tuple:
    """(tile, splits, chunk) of a direct forward variant: a ConvTile runs unsplit (one chunk of all C·R·S); a
    SplitPlan splits C·R·S into chunks of at least FORWARD_MIN_CHUNK_STEPS steps until its grid has its blocks an SM."""
    g, K = problem.g, problem.K
    crs = g.C * g.R * g.S
    if isinstance(variant, ConvTile):
        return variant, 1, crs
    tile = variant.tile
    tiles = cdiv(K, tile.bm) * cdiv(g.N * g.OH * g.OW, tile.bn)
    return (tile,) + _split_count(crs, FORWARD_MIN_CHUNK_STEPS * tile.bk, tiles, variant.blocks_per_sm)


@functools.lru_cache(maxsize=1024)
def _direct_forward_launch(problem: _Problem, variant, act: int, slope: float) -> _Launch:
    """conv2d_fwd_bias_act for a ConvTile or a SplitPlan of one (_forward_split)."""
    g = problem.g
    tile, splits, chunk = _forward_split(problem, variant)
    return _Launch(_kernel("conv2d_fwd_bias_act", tile), _gemm_grid(problem.K, g.N * g.OH * g.OW, tile, splits),
                   (tile.threads,), problem.args + (numpy.int32(act), numpy.float32(slope), numpy.int32(chunk)), splits)


@functools.lru_cache(maxsize=1024)
def _direct_data_launch(problem: _Problem, tile: ConvTile) -> _Launch:
    """conv2d_bwd_data for a ConvTile: the implicit GEMM over dx's C × N*H*W, unsplit."""
    g = problem.g
    return _Launch(_kernel("conv2d_bwd_data", tile), _gemm_grid(g.C, g.N * g.H * g.W, tile), (tile.threads,), problem.args, 1)


@functools.lru_cache(maxsize=1024)
def _direct_filter_launch(problem: _Problem, plan: SplitPlan) -> _Launch:
    """conv2d_bwd_filter for a SplitPlan of a ConvTile: the N*OH*OW reduction split until the grid fills the GPU."""
    g, K, tile = problem.g, problem.K, plan.tile
    crs = g.C * g.R * g.S
    tiles = cdiv(K, tile.bm) * cdiv(crs, tile.bn)
    splits, chunk = _split_count(g.N * g.OH * g.OW, 8 * tile.bk, tiles, plan.blocks_per_sm)
    return _Launch(_kernel("conv2d_bwd_filter", tile), _gemm_grid(K, crs, tile, splits), (tile.threads,),
                   problem.args + (numpy.int32(chunk),), splits)


@functools.lru_cache(maxsize=1024)
def _bias_launch(problem: _Problem) -> _Launch:
    """conv2d_bwd_bias: db's N*OH*OW reduction, split until its K blocks a split fill the GPU."""
    K, pixels_per_image = problem.K, problem.g.OH * problem.g.OW
    pixels = problem.g.N * pixels_per_image
    splits, chunk = _split_count(pixels, 16 * _BIAS_THREADS, K)
    return _Launch(_kernel("conv2d_bwd_bias"), (K, splits), (_BIAS_THREADS,),
                   tuple(numpy.int32(v) for v in (K, pixels_per_image, pixels, chunk)), splits)


def _run(launch: _Launch, inputs: tuple, out, *epilogue):
    """out from launch on the input arrays: written directly, or (a split reduction) as partials that
    _sum_partials(partials, out, *epilogue) then adds in a fixed order."""
    import cupy

    partials = out if launch.splits == 1 else nan_filled(cupy, (launch.splits,) + out.shape)
    launch.kernel(launch.grid, launch.block, inputs + (partials,) + launch.scalars)
    if launch.splits > 1:
        _sum_partials(partials, out, *epilogue)
    return out


def _sum_partials(partials, out, bias=None, K: int = 1, pixels: int = 1, act: int = 0, slope: float = 0.0):
    """out = act(partials.sum(axis=0) + bias) in a fixed order (the deterministic second pass); out is NCHW-like
    with K channels of `pixels` pixels when bias is given (element i takes bias[(i // pixels) % K])."""
    grid, scalars = _sum_partials_launch(out.size, partials.shape[0], K, pixels, act, slope)
    _kernel("conv2d_sum_partials")(grid, (256,), (partials, bias, out) + scalars)
    return out


@functools.lru_cache(maxsize=1024)
def _sum_partials_launch(n: int, splits: int, K: int, pixels: int, act: int, slope: float) -> tuple:
    """(grid, scalar arguments) of conv2d_sum_partials, worked out once per shape: it runs on every backward."""
    scalars = (numpy.int64(n), numpy.int32(splits), numpy.int32(K), numpy.int32(pixels), numpy.int32(act), numpy.float32(slope))
    return (grid_stride_blocks(n),), scalars
