"""conv2d's CUDA path: the variants of its three tuned ops, registered here in autotuner order (the default first),
and the launch of the autotuner's choice for a problem. Backward-data of stride-1 layers may run as a forward
convolution (BackwardDataAsForward), which then gets the forward's variants.

  conv2d_fwd         ImplicitGemmForward for each of CONV_TILES; WinogradForward F(2×2), F(4×4); FewFiltersForward;
                     then, at each SPLIT_BLOCKS_PER_SM, the split ImplicitGemmForward of each tile and FewFiltersForward
  conv2d_bwd_data    ImplicitGemmBackwardData for each of CONV_TILES; BackwardDataAsForward
  conv2d_bwd_filter  ImplicitGemmBackwardFilter for each tile at each SPLIT_BLOCKS_PER_SM; WinogradBackwardFilter
                     F(2×2), F(4×4) at each; FewChannelsBackwardFilter at each
"""
from __future__ import annotations

from dataclasses import dataclass

from cnn_gpu.cuda import autotune
from cnn_gpu.cuda.variants import Variant, applicable, planned, register
from cnn_gpu.ops.activation import activation_code
from cnn_gpu.ops.arrays import contiguous, nan_filled
from cnn_gpu.ops.conv.direct import FewChannelsBackwardFilter, FewFiltersForward
from cnn_gpu.ops.conv.implicit_gemm import (CONV_TILES, ImplicitGemmBackwardData, ImplicitGemmBackwardFilter,
                                            ImplicitGemmForward, _bias_launch, _run)
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM, ConvProblem, conv_problem
from cnn_gpu.ops.conv.winograd import F4X4_FILTER_MAX_CHUNK, WinogradBackwardFilter, WinogradForward
from cnn_gpu.ops.geometry import WindowGeometry


def _cuda_conv2d(x, w, b, g: WindowGeometry, act: int, slope: float):
    import cupy

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    problem = conv_problem(g, w.shape[0])
    choice = autotune.pick("conv2d_fwd", problem.key, lambda: applicable("conv2d_fwd", problem),
                           lambda variant: variant.launch(problem, x, w, b, act, slope))
    return choice.launch(problem, x, w, b, act, slope)


def _cuda_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool):
    import cupy

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    problem = conv_problem(g, w.shape[0])
    dx = dw = None
    if compute_dx:
        choice = autotune.pick("conv2d_bwd_data", problem.key, lambda: applicable("conv2d_bwd_data", problem),
                               lambda variant: variant.launch(problem, dy, w))
        dx = choice.launch(problem, dy, w)
    if compute_dw:
        choice = autotune.pick("conv2d_bwd_filter", problem.key, lambda: applicable("conv2d_bwd_filter", problem),
                               lambda variant: variant.launch(problem, dy, x, w.shape))
        dw = choice.launch(problem, dy, x, w.shape)
    return dx, dw, _run(_bias_launch(problem), (dy,), nan_filled(cupy, (problem.K,)))


def as_forward_geometry(g: WindowGeometry, K: int) -> WindowGeometry:
    """dx's geometry as a forward conv: dy (N, K, OH, OW) under an R × S window padded R−1−p on each side (p this
    layer's pad on that side) has output H × W, since OH = H + pt + pb − R + 1."""
    return WindowGeometry(g.N, K, g.OH, g.OW, g.R, g.S, 1, 1, g.R - 1 - g.pad_top, g.R - 1 - g.pad_bottom,
                          g.S - 1 - g.pad_left, g.S - 1 - g.pad_right, g.H, g.W)


def flipped_filters(xp, w):
    """w (K, C, R, S) as dx's forward filters: (C, K, R, S) with every tap reversed, w'[c, k, r, s] = w[k, c, R−1−r, S−1−s]."""
    return contiguous(xp, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


@dataclass(frozen=True)
class BackwardDataAsForward(Variant):
    """dx of a stride-1 layer as conv2d(dy, flipped w) under as_forward_geometry: the forward's own autotuned variants
    (Winograd for 3×3, the few-filter kernel for first layers) then serve backward-data, e.g. a valid 3×3 layer's
    full convolution. Offered for stride 1 with no pad as wide as the window (the flipped window's pads R−1−p are
    then ≥ 0)."""
    op = "conv2d_bwd_data"
    algorithm = "as forward"
    name = "as forward conv"

    def applies(self, problem: ConvProblem) -> bool:
        g = problem.g
        return ((g.stride_h, g.stride_w) == (1, 1) and max(g.pad_top, g.pad_bottom) < g.R
                and max(g.pad_left, g.pad_right) < g.S)

    def plan(self, problem: ConvProblem) -> WindowGeometry:
        return as_forward_geometry(problem.g, problem.K)

    def launch(self, problem: ConvProblem, dy, w):
        import cupy

        return _cuda_conv2d(dy, flipped_filters(cupy, w), None, planned(self, problem), activation_code(None), 0.0)


register(*(ImplicitGemmForward(tile) for tile in CONV_TILES), WinogradForward(2), WinogradForward(4), FewFiltersForward(),
         *(variant for blocks in SPLIT_BLOCKS_PER_SM
           for variant in (*(ImplicitGemmForward(tile, blocks) for tile in CONV_TILES), FewFiltersForward(blocks))))
register(*(ImplicitGemmBackwardData(tile) for tile in CONV_TILES), BackwardDataAsForward())
register(*(ImplicitGemmBackwardFilter(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES),
         *(WinogradBackwardFilter(m, blocks, F4X4_FILTER_MAX_CHUNK if m == 4 else 0)
           for m in (2, 4) for blocks in SPLIT_BLOCKS_PER_SM),
         *(FewChannelsBackwardFilter(blocks) for blocks in SPLIT_BLOCKS_PER_SM))
