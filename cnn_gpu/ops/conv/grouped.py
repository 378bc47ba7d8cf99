"""conv2d's CUDA path for grouped and dilated convolutions (groups > 1 or dilation > 1), which the implicit-GEMM,
Winograd and few-channel kernels do not compute. Three tuned ops, their variants registered here (the default
first):

  conv2d_grouped_fwd         GroupedIm2colForward; DepthwiseForward (groups == C); GroupedImplicitGemmForward for each
                             of CONV_TILES, then at each SPLIT_BLOCKS_PER_SM the split one of each tile
  conv2d_grouped_bwd_data    GroupedIm2colBackwardData; DepthwiseBackwardData; GroupedImplicitGemmBackwardData for each
                             of CONV_TILES
  conv2d_grouped_bwd_filter  GroupedIm2colBackwardFilter; DepthwiseBackwardFilter; GroupedImplicitGemmBackwardFilter for
                             each tile at each SPLIT_BLOCKS_PER_SM (a variant's launch gives (dw, db or None))

GroupedIm2col*: the NumPy path's functions run on CuPy arrays (CuPy's pad, a strided window view, one matmul batched
over images and groups, i.e. one cuBLAS batched GEMM over all groups; col2im's strided adds), over chunks of images
(and, where one image is too large, of groups) whose im2col matrix stays under _IM2COL_MAX_BYTES (summed in chunk
order: deterministic). Correct for every input and
made only of CuPy's own operations, so it is the default; it moves the im2col matrix (R·S times x) through memory.
Depthwise*: kernels/conv2d_depthwise.cu (depthwise.py), which read x and write y once.
GroupedImplicitGemm*: kernels/conv2d.cu's conv2d_grouped_* (implicit_gemm.py), the implicit GEMMs of the dense path
with dilation in their loaders and every group in one launch (grid z over groups and splits); any groups and
dilation, depthwise included (where Kg = K/groups is far below the tile's BM rows, most of a tile's FMAs are wasted).
Neither family has run on a GPU yet, so both are unverified: offered with CNN_GPU_UNVERIFIED=1 or forced
(cnn_gpu.cuda.autotune.forced).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy

from cnn_gpu.cuda import autotune, device
from cnn_gpu.cuda.variants import Variant, applicable, planned, register
from cnn_gpu.ops.arrays import contiguous
from cnn_gpu.ops.conv import depthwise
from cnn_gpu.ops.conv.implicit_gemm import (CONV_TILES, GroupedImplicitGemmBackwardData, GroupedImplicitGemmBackwardFilter,
                                            GroupedImplicitGemmForward)
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM
from cnn_gpu.ops.geometry import WindowGeometry

# The fallback's im2col matrix of one chunk of images takes at most this many bytes.
_IM2COL_MAX_BYTES = 1 << 30


class GroupedProblem(NamedTuple):
    """A grouped or dilated convolution: geometry (with its dilation), K filters, groups; the autotuner's key."""
    g: WindowGeometry
    K: int
    groups: int
    key: tuple


@functools.lru_cache(maxsize=1024)
def grouped_problem(g: WindowGeometry, K: int, groups: int) -> GroupedProblem:
    key = tuple(int(v) for v in (g.N, g.C, g.H, g.W, K, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top,
                                 g.pad_left, g.dilation_h, g.dilation_w, groups))
    return GroupedProblem(g, K, groups, key)


def _depthwise_problem(problem: GroupedProblem) -> depthwise.DepthwiseProblem:
    g = problem.g
    return depthwise.DepthwiseProblem(g.N, g.C, g.H, g.W, problem.K // g.C, g.R, g.S, g.stride_h, g.stride_w,
                                      g.dilation_h, g.dilation_w, g.pad_top, g.pad_left, g.OH, g.OW)


def _is_depthwise(problem: GroupedProblem) -> bool:
    return problem.groups == problem.g.C


# ---- the fallback: the NumPy path on CuPy arrays ------------------------------------------------------
class _Chunk(NamedTuple):
    """Images n0 .. n1 − 1 and groups g0 .. g1 − 1 of a problem: a convolution of its own (groups are independent)."""
    n0: int
    n1: int
    g0: int
    g1: int


def _chunks(problem: GroupedProblem) -> list:
    """The problem as chunks whose im2col matrix (Cg·R·S × OH·OW floats a group and image) fits _IM2COL_MAX_BYTES:
    whole images while one image fits, else one image at a time in runs of groups (a large window on many
    channels: RepLKNet's 31×31 on 128 channels of 56² takes 1.5 GB an image)."""
    g, G = problem.g, problem.groups
    per_group = 4 * (g.C // G) * g.R * g.S * g.OH * g.OW
    images = _IM2COL_MAX_BYTES // (per_group * G)
    if images >= 1:
        step = min(g.N, images)
        return [_Chunk(n0, min(n0 + step, g.N), 0, G) for n0 in range(0, g.N, step)]
    step = max(1, _IM2COL_MAX_BYTES // per_group)
    return [_Chunk(n, n + 1, g0, min(g0 + step, G)) for n in range(g.N) for g0 in range(0, G, step)]


def _chunk_views(problem: GroupedProblem, chunk: _Chunk):
    """(geometry, channel slice, filter slice, groups) of one chunk."""
    g, G = problem.g, problem.groups
    Cg, Kg = g.C // G, problem.K // G
    return (g._replace(N=chunk.n1 - chunk.n0, C=(chunk.g1 - chunk.g0) * Cg), slice(chunk.g0 * Cg, chunk.g1 * Cg),
            slice(chunk.g0 * Kg, chunk.g1 * Kg), chunk.g1 - chunk.g0)


def _module(array):
    """CuPy for the CUDA path; NumPy where a test runs the chunking on the host."""
    if isinstance(array, numpy.ndarray):
        return numpy
    import cupy

    return cupy


class _Im2colVariant(Variant):
    algorithm = "CuPy im2col + batched GEMM"

    @property
    def name(self) -> str:
        return "CuPy im2col + batched GEMM"

    @property
    def verified(self) -> bool:
        # Offered by default although no GPU run has passed it yet: it launches no kernel of this project (CuPy's
        # own pad, strided views, matmul (cuBLAS) and adds: the NumPy path's algorithm on the device), and it is
        # the one CUDA path every grouped or dilated problem has until the implicit GEMM takes groups.
        return True

    def plan(self, problem: GroupedProblem):
        return _chunks(problem)


@dataclass(frozen=True)
class GroupedIm2colForward(_Im2colVariant):
    op = "conv2d_grouped_fwd"

    def launch(self, problem: GroupedProblem, x, w, b, activation, slope):
        from cnn_gpu.ops.conv import _numpy_conv2d

        chunks = planned(self, problem)
        if len(chunks) == 1:
            return _numpy_conv2d(x, w, b, problem.g, activation, slope, problem.groups)
        y = _module(x).empty((problem.g.N, problem.K, problem.g.OH, problem.g.OW), dtype=x.dtype)
        for chunk in chunks:
            g, cs, ks, groups = _chunk_views(problem, chunk)
            y[chunk.n0:chunk.n1, ks] = _numpy_conv2d(x[chunk.n0:chunk.n1, cs], w[ks], None if b is None else b[ks], g,
                                                     activation, slope, groups)
        return y


@dataclass(frozen=True)
class GroupedIm2colBackwardData(_Im2colVariant):
    op = "conv2d_grouped_bwd_data"

    def launch(self, problem: GroupedProblem, dy, x, w):
        from cnn_gpu.ops.conv import _numpy_conv2d_backward

        dx = _module(x).empty(x.shape, dtype=x.dtype)
        for chunk in planned(self, problem):
            g, cs, ks, groups = _chunk_views(problem, chunk)
            dx[chunk.n0:chunk.n1, cs] = _numpy_conv2d_backward(dy[chunk.n0:chunk.n1, ks], x[chunk.n0:chunk.n1, cs],
                                                               w[ks], g, True, False, groups)[0]
        return dx


@dataclass(frozen=True)
class GroupedIm2colBackwardFilter(_Im2colVariant):
    op = "conv2d_grouped_bwd_filter"

    def launch(self, problem: GroupedProblem, dy, x, w):
        from cnn_gpu.ops.conv import _numpy_conv2d_backward

        dw = _module(w).zeros(w.shape, dtype=w.dtype)
        for chunk in planned(self, problem):  # each filter's image chunks added in image order: deterministic
            g, cs, ks, groups = _chunk_views(problem, chunk)
            dw[ks] += _numpy_conv2d_backward(dy[chunk.n0:chunk.n1, ks], x[chunk.n0:chunk.n1, cs], w[ks], g, False,
                                             True, groups)[1]
        return dw, None  # db: the op's own reduction


# ---- the direct depthwise kernels (unverified) ---------------------------------------------------------
class _DepthwiseVariant(Variant):
    algorithm = "direct depthwise"

    @property
    def name(self) -> str:
        return "direct depthwise"

    def applies(self, problem: GroupedProblem) -> bool:
        if not _is_depthwise(problem):
            return False
        try:
            self.plan(problem)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class DepthwiseForward(_DepthwiseVariant):
    op = "conv2d_grouped_fwd"

    def plan(self, problem: GroupedProblem):
        return depthwise.forward_launch(_depthwise_problem(problem))

    def launch(self, problem: GroupedProblem, x, w, b, activation, slope):
        from cnn_gpu.ops.activation import activation_code

        return depthwise.cuda_depthwise_forward(x, w, b, _depthwise_problem(problem), activation_code(activation), slope)


@dataclass(frozen=True)
class DepthwiseBackwardData(_DepthwiseVariant):
    op = "conv2d_grouped_bwd_data"

    def plan(self, problem: GroupedProblem):
        return depthwise.data_launch(_depthwise_problem(problem))

    def launch(self, problem: GroupedProblem, dy, x, w):
        return depthwise.cuda_depthwise_backward_data(dy, w, _depthwise_problem(problem))


@dataclass(frozen=True)
class DepthwiseBackwardFilter(_DepthwiseVariant):
    op = "conv2d_grouped_bwd_filter"

    def plan(self, problem: GroupedProblem):
        return depthwise.filter_launch(_depthwise_problem(problem), device.sm_count())

    def launch(self, problem: GroupedProblem, dy, x, w):
        """(dw, db): db from the same pass over dy."""
        from cnn_gpu.ops.conv.implicit_gemm import _sum_partials

        return depthwise.cuda_depthwise_backward_filter(dy, x, _depthwise_problem(problem), _sum_partials)


register(GroupedIm2colForward(), DepthwiseForward(), *(GroupedImplicitGemmForward(tile) for tile in CONV_TILES),
         *(GroupedImplicitGemmForward(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES))
register(GroupedIm2colBackwardData(), DepthwiseBackwardData(), *(GroupedImplicitGemmBackwardData(tile) for tile in CONV_TILES))
register(GroupedIm2colBackwardFilter(), DepthwiseBackwardFilter(),
         *(GroupedImplicitGemmBackwardFilter(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES))


# ---- the ops ----------------------------------------------------------------------------------------
def cuda_grouped_conv2d(x, w, b, g: WindowGeometry, groups: int, activation, slope: float):
    """y of a grouped or dilated convolution on CuPy arrays (activation by name)."""
    import cupy

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    problem = grouped_problem(g, w.shape[0], groups)
    choice = autotune.pick("conv2d_grouped_fwd", problem.key, lambda: applicable("conv2d_grouped_fwd", problem),
                           lambda variant: variant.launch(problem, x, w, b, activation, slope))
    return choice.launch(problem, x, w, b, activation, slope)


def cuda_grouped_conv2d_backward(dy, x, w, g: WindowGeometry, groups: int, compute_dx: bool, compute_dw: bool):
    """(dx, dw, db) of a grouped or dilated convolution on CuPy arrays."""
    import cupy

    from cnn_gpu.ops.conv.implicit_gemm import _bias_launch, _run
    from cnn_gpu.ops.conv.problem import conv_problem
    from cnn_gpu.ops.arrays import nan_filled

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    problem = grouped_problem(g, w.shape[0], groups)
    dx = dw = db = None
    if compute_dx:
        choice = autotune.pick("conv2d_grouped_bwd_data", problem.key, lambda: applicable("conv2d_grouped_bwd_data", problem),
                               lambda variant: variant.launch(problem, dy, x, w))
        dx = choice.launch(problem, dy, x, w)
    if compute_dw:
        choice = autotune.pick("conv2d_grouped_bwd_filter", problem.key,
                               lambda: applicable("conv2d_grouped_bwd_filter", problem),
                               lambda variant: variant.launch(problem, dy, x, w))
        dw, db = choice.launch(problem, dy, x, w)  # a variant that sums db on the way gives it
    if db is not None:
        return dx, dw, db
    # db: conv2d.cu's deterministic bias reduction, which reads only dy's (N, K, OH·OW) layout: any problem of that
    # output serves, here a 1×1 window over one channel
    bias_problem = conv_problem(g._replace(C=1, R=1, S=1, dilation_h=1, dilation_w=1), problem.K)
    return dx, dw, _run(_bias_launch(bias_problem), (dy,), nan_filled(cupy, (problem.K,)))

