"""conv2d's CUDA path: the autotuner's candidates for each of the forward, backward-data and backward-filter
kernels on one problem, and the launch of the chosen one by its algorithm's module (implicit_gemm, winograd,
direct); backward-data of stride-1 layers may run as a forward convolution (AS_FORWARD)."""
from __future__ import annotations

import functools

from cnn_gpu.cuda import autotune, device
from cnn_gpu.ops.activation import activation_code
from cnn_gpu.ops.arrays import contiguous, nan_filled
from cnn_gpu.ops.conv.direct import (FEW_CHANNELS, FEW_FILTERS, _few_channels_filters, _few_channels_plan,
                                     _few_filters_plan, _few_filters_tile, _launch_conv2d_bwd_filter_few_channels,
                                     _launch_conv2d_fwd_few_filters)
from cnn_gpu.ops.conv.implicit_gemm import (CONV_TILES, _bias_launch, _direct_data_launch, _direct_filter_launch,
                                            _direct_forward_launch, _forward_split, _run)
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM, SplitPlan, _fits, _Problem, _problem
from cnn_gpu.ops.conv.winograd import (_WINOGRAD_FILTER_SIZES, _WINOGRAD_FORWARD_SIZES, _launch_conv2d_bwd_filter_winograd,
                                       _launch_conv2d_fwd_winograd, _winograd_applies, _winograd_filter_plan,
                                       _winograd_plan)
from cnn_gpu.ops.geometry import WindowGeometry


# Backward-data's variant for stride-1 layers with pads narrower than the window: dx is the forward conv of dy
# with w's channel axes swapped and its taps reversed (_launch_conv2d_bwd_data_as_forward); never the default.
AS_FORWARD = "backward-data as forward conv"


def _tuned(kernel: str, problem: _Problem, candidates, launch):
    """The autotuner's choice among candidates() for one implicit-GEMM kernel on this geometry."""
    return autotune.pick("conv2d", (kernel,) + problem.key, candidates, launch)


def _cuda_conv2d(x, w, b, g: WindowGeometry, act: int, slope: float):
    import cupy

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    problem = _problem(g, w.shape[0])
    launch = functools.partial(_launch_conv2d_fwd, x, w, b, problem, act, slope)
    return launch(_tuned("conv2d_fwd_bias_act", problem, lambda: _forward_candidates(problem) + _forward_split_plans(problem), launch))


def _cuda_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool):
    import cupy

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    problem = _problem(g, w.shape[0])
    dx = dw = None
    if compute_dx:
        launch = functools.partial(_launch_conv2d_bwd_data, dy, w, problem)
        dx = launch(_tuned("conv2d_bwd_data", problem, lambda: _backward_data_candidates(problem.g), launch))
    if compute_dw:
        launch = functools.partial(_launch_conv2d_bwd_filter, dy, x, w.shape, problem)
        dw = launch(_tuned("conv2d_bwd_filter", problem, lambda: _filter_plans(problem), launch))
    return dx, dw, _run(_bias_launch(problem), (dy,), nan_filled(cupy, (problem.K,)))


def _forward_candidates(problem: _Problem) -> tuple:
    """The forward's autotuner candidates but the split ones: CONV_TILES (the default first), WINOGRAD and
    WINOGRAD_4X4 for 3×3 stride-1 windows, each where its buffers fit (_winograd_plan), and FEW_FILTERS where the
    layer has few filters (_few_filters_tile)."""
    candidates = CONV_TILES
    if _winograd_applies(problem.g):
        candidates += tuple(v for v in _WINOGRAD_FORWARD_SIZES if _fits(_winograd_plan, problem, v))
    if _few_filters_tile(problem.g, problem.K):
        candidates += (FEW_FILTERS,)
    return candidates


def _forward_split_plans(problem: _Problem) -> tuple:
    """The forward's split-reduction candidates: each CONV_TILES, and FEW_FILTERS where it applies, at each
    SPLIT_BLOCKS_PER_SM whose grid would otherwise leave SMs idle (split at least in two), one per distinct split."""
    plans = {}
    for blocks in SPLIT_BLOCKS_PER_SM:
        for tile in CONV_TILES:
            plan = SplitPlan(tile, blocks)
            _, splits, _ = _forward_split(problem, plan)
            if splits > 1:
                plans.setdefault((tile, splits), plan)
        if _few_filters_tile(problem.g, problem.K):
            plan = SplitPlan(FEW_FILTERS, blocks)
            splits = _few_filters_plan(problem, plan).splits
            if splits > 1:
                plans.setdefault((FEW_FILTERS, splits), plan)
    return tuple(plans.values())


def _launch_conv2d_fwd(x, w, b, problem: _Problem, act: int, slope: float, variant):
    """y for one forward candidate: WINOGRAD or WINOGRAD_4X4, FEW_FILTERS or a SplitPlan of it, a ConvTile, or a
    SplitPlan of one (C·R·S split: partials, then a fixed-order sum that adds the bias and applies the activation)."""
    import cupy

    if variant in _WINOGRAD_FORWARD_SIZES:
        return _launch_conv2d_fwd_winograd(x, w, b, problem, act, slope, variant)
    if variant == FEW_FILTERS or isinstance(variant, SplitPlan) and variant.tile == FEW_FILTERS:
        return _launch_conv2d_fwd_few_filters(x, w, b, problem, act, slope, variant)
    y = nan_filled(cupy, problem.y_shape)
    return _run(_direct_forward_launch(problem, variant, act, slope), (x, w, b), y, b, problem.K, problem.g.OH * problem.g.OW,
                act, slope)


def _backward_data_candidates(g: WindowGeometry) -> tuple:
    """Backward-data's autotuner candidates: CONV_TILES (the default first), and AS_FORWARD when dx is a forward
    convolution of dy: stride 1 and no pad as wide as the window (the flipped window's pads R−1−p are then ≥ 0)."""
    as_forward = (g.stride_h, g.stride_w) == (1, 1) and max(g.pad_top, g.pad_bottom) < g.R and max(g.pad_left, g.pad_right) < g.S
    return CONV_TILES + (AS_FORWARD,) if as_forward else CONV_TILES


def _launch_conv2d_bwd_data(dy, w, problem: _Problem, tile):
    import cupy

    if tile == AS_FORWARD:
        return _launch_conv2d_bwd_data_as_forward(dy, w, problem)
    return _run(_direct_data_launch(problem, tile), (dy, w), nan_filled(cupy, problem.x_shape))


@functools.lru_cache(maxsize=1024)
def _as_forward_geometry(g: WindowGeometry, K: int) -> WindowGeometry:
    """dx's geometry as a forward conv: dy (N, K, OH, OW) under an R × S window padded R−1−p on each side (p this
    layer's pad on that side) has output H × W, since OH = H + pt + pb − R + 1."""
    return WindowGeometry(g.N, K, g.OH, g.OW, g.R, g.S, 1, 1, g.R - 1 - g.pad_top, g.R - 1 - g.pad_bottom,
                          g.S - 1 - g.pad_left, g.S - 1 - g.pad_right, g.H, g.W)


def _flipped_filters(xp, w):
    """w (K, C, R, S) as dx's forward filters: (C, K, R, S) with every tap reversed, w'[c, k, r, s] = w[k, c, R−1−r, S−1−s]."""
    return contiguous(xp, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _launch_conv2d_bwd_data_as_forward(dy, w, problem: _Problem):
    """dx of a stride-1 layer as conv2d(dy, flipped w) under _as_forward_geometry: the forward's own autotuned
    candidates (Winograd for 3×3) then serve backward-data, e.g. a valid 3×3 layer's full convolution."""
    import cupy

    return _cuda_conv2d(dy, _flipped_filters(cupy, w), None, _as_forward_geometry(problem.g, problem.K),
                        activation_code(None), 0.0)


def _filter_plans(problem: _Problem) -> list:
    """Backward-filter's autotuner candidates: every CONV_TILES at each SPLIT_BLOCKS_PER_SM (the default first),
    then WINOGRAD and WINOGRAD_4X4 at each for 3×3 stride-1 layers where their buffers fit (_winograd_filter_plan),
    then FEW_CHANNELS at each for layers with few input channels (_few_channels_filters), one per distinct grid."""
    plans = [SplitPlan(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES]
    if _winograd_applies(problem.g):
        plans += [SplitPlan(variant, blocks) for variant in _WINOGRAD_FILTER_SIZES for blocks in SPLIT_BLOCKS_PER_SM
                  if _fits(_winograd_filter_plan, problem, variant, blocks, device.sm_count())]
    if _few_channels_filters(problem.g):
        few_channels = {}
        for blocks in SPLIT_BLOCKS_PER_SM:
            few_channels.setdefault(_few_channels_plan(problem, blocks, device.sm_count()).grid, SplitPlan(FEW_CHANNELS, blocks))
        plans += few_channels.values()
    return plans


def _launch_conv2d_bwd_filter(dy, x, w_shape, problem: _Problem, plan: SplitPlan):
    """dw, its N*OH*OW reduction split so that small filters still fill the GPU: partials, then a fixed-order sum."""
    import cupy

    if plan.tile in _WINOGRAD_FILTER_SIZES:
        return _launch_conv2d_bwd_filter_winograd(dy, x, w_shape, problem, plan)
    if plan.tile == FEW_CHANNELS:
        return _launch_conv2d_bwd_filter_few_channels(dy, x, w_shape, problem, plan.blocks_per_sm)
    return _run(_direct_filter_launch(problem, plan), (dy, x), nan_filled(cupy, w_shape))
