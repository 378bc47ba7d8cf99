"""kernels/conv2d.cu's grouped and dilated implicit GEMMs (conv2d_grouped_*) run on the CPU (tests/emulation: g++, one
std::thread per CUDA thread, AddressSanitizer and UBSan) with the launches cnn_gpu.ops.conv.implicit_gemm's
GroupedImplicitGemm* variants plan for the default tile, against float64 references: forward with bias + relu
(whole, and split into partials that sum_splits_bias_act adds with the bias and relu) against the naive loop,
backward-data and backward-filter (split, then summed) against per-tap float64 slices, themselves checked as the
adjoint of the naive loop. Dilations 2 and (2, 3), groups 2 and 4, depthwise with multiplier 2, strides 1 and 2,
odd shapes; NaN-filled outputs; float4 and scalar stores. Skipped where g++ is missing. No GPU involved."""
from __future__ import annotations

import numpy
import pytest

from checks import naive_grouped_conv2d
from cnn_gpu.ops.conv import implicit_gemm as ig
from cnn_gpu.ops.conv.grouped import grouped_problem
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM
from cnn_gpu.ops.geometry import window_geometry
from emulation import emulate
from emulation.conv2d_launches import MAIN, RELU, emulated, nans, planner, rel, sum_splits  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(emulate.available() is not None, reason=f"CPU emulation: {emulate.available()}")

# (x shape, K, (R, S), stride, pad, dilation, groups); the planner sees a GPU of 8 SMs (the planner fixture)
CASES = [
    ((2, 4, 9, 10), 6, (3, 3), (1, 1), (2, 2), (2, 2), 2),     # dilation 2, groups 2; 90 pixels: scalar stores
    ((2, 8, 11, 9), 8, (3, 2), (2, 2), (2, 3), (2, 3), 4),     # groups 4, dilation (2, 3), stride 2
    ((2, 6, 8, 12), 12, (3, 3), (1, 1), (1, 1), (1, 1), 6),    # depthwise, multiplier 2; 96 pixels: float4 stores
    ((1, 4, 13, 11), 8, (3, 3), (2, 2), (2, 2), (2, 2), 4),    # depthwise, multiplier 2, stride 2, dilation 2
    ((3, 32, 10, 9), 8, (3, 3), (1, 1), (2, 1), (2, 1), 2),    # Cg·R·S = 144: forward and backward-filter split
]


def case_id(case):
    shape, K, (R, S), stride, pad, dilation, groups = case
    return "x{}x{}x{}x{}_K{}_w{}x{}_s{}{}_p{}{}_d{}{}_g{}".format(*shape, K, R, S, *stride, *pad, *dilation, groups)


def problem_of(case):
    shape, K, window, stride, pad, dilation, groups = case
    return grouped_problem(window_geometry(shape, window, stride, pad, dilation=dilation), K, groups)


def inputs(p, seed):
    g = p.g
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal(g.input_shape).astype(numpy.float32)
    w = rng.standard_normal((p.K, g.C // p.groups, g.R, g.S)).astype(numpy.float32)
    b = rng.standard_normal(p.K).astype(numpy.float32)
    dy = rng.standard_normal((g.N, p.K, g.OH, g.OW)).astype(numpy.float32)
    return x, w, b, dy


def forward_reference(x, w, b, p):
    g = p.g
    return naive_grouped_conv2d(x, w, b, (g.stride_h, g.stride_w), (g.dilation_h, g.dilation_w),
                                (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right), p.groups)


def reference_backward(x, w, dy, p):
    """(dx, dw) in float64: each group's taps as strided slices of the zero-padded x, tap (r, s) at (r·dh, s·dw)."""
    g, G = p.g, p.groups
    Cg, Kg = g.C // G, p.K // G
    xp = numpy.pad(x.astype(numpy.float64), ((0, 0), (0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right)))
    dy64, w64 = dy.astype(numpy.float64), w.astype(numpy.float64)
    dxp, dw = numpy.zeros_like(xp), numpy.zeros(w.shape)
    for gi in range(G):
        cs, ks = slice(gi * Cg, gi * Cg + Cg), slice(gi * Kg, gi * Kg + Kg)
        for r in range(g.R):
            for s in range(g.S):
                rows = slice(r * g.dilation_h, r * g.dilation_h + (g.OH - 1) * g.stride_h + 1, g.stride_h)
                cols = slice(s * g.dilation_w, s * g.dilation_w + (g.OW - 1) * g.stride_w + 1, g.stride_w)
                dw[ks, :, r, s] = numpy.einsum("nkhw,nchw->kc", dy64[:, ks], xp[:, cs, rows, cols])
                dxp[:, cs, rows, cols] += numpy.einsum("nkhw,kc->nchw", dy64[:, ks], w64[ks, :, r, s])
    return dxp[:, :, g.pad_top:g.pad_top + g.H, g.pad_left:g.pad_left + g.W], dw


def test_reference_backward_is_the_adjoint_of_the_naive_loop():
    """<dy, conv(x, w)> = <dx, x> = <dw, w>: the slice references agree with the naive forward loop."""
    for case in CASES[:4]:
        p = problem_of(case)
        x, w, _, dy = inputs(p, 0)
        y = forward_reference(x, w, None, p)
        dx, dw = reference_backward(x, w, dy, p)
        inner = numpy.vdot(dy.astype(numpy.float64), y)
        assert numpy.isclose(numpy.vdot(dx, x.astype(numpy.float64)), inner, rtol=1e-10)
        assert numpy.isclose(numpy.vdot(dw, w.astype(numpy.float64)), inner, rtol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_grouped_forward_matches_float64(case, planner):
    p = problem_of(case)
    x, w, b, _ = inputs(p, 1)
    ref = forward_reference(x, w, b, p)
    y_shape = ref.shape
    whole = ig.GroupedImplicitGemmForward(ig.DEFAULT_TILE).plan(p, RELU, 0.0)
    assert whole.splits == 1 and whole.grid[2] == p.groups  # one launch over all groups
    run = emulated(whole.kernel, whole.grid, whole.block)
    y = emulate.run(MAIN, run, [x, w, b, nans(y_shape)], whole.scalars)
    assert not numpy.isnan(y).any()
    assert rel(y, numpy.maximum(ref, 0)) < 2e-6
    # no bias (a null pointer), no activation; misaligned tensors: the scalar stores
    scalars = whole.scalars[:-3] + (numpy.int32(0),) + whole.scalars[-2:]
    y = emulate.run(MAIN, run, [x, w, None, nans(y_shape)], scalars, misalign=True)
    assert rel(y, forward_reference(x, w, None, p)) < 2e-6

    split = ig.GroupedImplicitGemmForward(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0])
    if not split.applies(p):
        return
    launch = split.plan(p, RELU, 0.0)
    assert launch.splits > 1 and launch.grid[2] == launch.splits * p.groups
    partials = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block),
                           [x, w, b, nans((launch.splits,) + y_shape)], launch.scalars)
    assert not numpy.isnan(partials).any()
    no_bias = forward_reference(x, w, None, p)
    assert rel(partials.astype(numpy.float64).sum(axis=0), no_bias) < 2e-6
    y = sum_splits(partials, y_shape, b, p.g.OH * p.g.OW, RELU, 0.0)
    assert rel(y, numpy.maximum(ref, 0)) < 2e-6


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_grouped_backward_data_matches_float64(case, planner):
    p = problem_of(case)
    x, w, _, dy = inputs(p, 3)
    ref, _ = reference_backward(x, w, dy, p)
    launch = ig.GroupedImplicitGemmBackwardData(ig.DEFAULT_TILE).plan(p)
    assert launch.grid[2] == p.groups
    for misalign in (False, True):
        dx = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block), [dy, w, nans(x.shape)],
                         launch.scalars, misalign=misalign)
        assert not numpy.isnan(dx).any()
        assert rel(dx, ref) < 2e-6


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_grouped_backward_filter_and_sum_match_float64(case, planner):
    p = problem_of(case)
    x, w, _, dy = inputs(p, 4)
    _, ref = reference_backward(x, w, dy, p)
    launch = ig.GroupedImplicitGemmBackwardFilter(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0]).plan(p)
    assert launch.grid[2] == launch.splits * p.groups
    shape = w.shape if launch.splits == 1 else (launch.splits,) + w.shape
    out = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block), [dy, x, nans(shape)], launch.scalars)
    assert not numpy.isnan(out).any()
    if launch.splits > 1:
        assert rel(out.astype(numpy.float64).sum(axis=0), ref) < 2e-6
        out = sum_splits(out, w.shape)
    assert rel(out, ref) < 2e-6


def test_cases_reach_the_paths_they_are_meant_to(planner):
    """Split forward and backward-filter, float4 and scalar pixel stores, float4 and scalar filter rows, depthwise."""
    problems = [problem_of(c) for c in CASES]
    assert any(ig.GroupedImplicitGemmForward(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0]).applies(p) for p in problems)
    assert any(ig.GroupedImplicitGemmBackwardFilter(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0]).plan(p).splits > 1
               for p in problems)
    assert {p.g.OH * p.g.OW % 4 == 0 for p in problems} == {True, False}
    assert {p.g.C // p.groups * p.g.R * p.g.S % 4 == 0 for p in problems} == {True, False}
    assert any(p.groups == p.g.C and p.K == 2 * p.g.C for p in problems)
