"""kernels/conv2d.cu's implicit-GEMM convolutions and its split sum run on the CPU (tests/emulation: g++, one
std::thread per CUDA thread, AddressSanitizer and UBSan) with the launches cnn_gpu.ops.conv.implicit_gemm plans for
the default tile, against float64 loops: forward with bias + relu (whole, and split into partials that
sum_splits_bias_act adds with the bias and relu), backward-data, backward-filter (split, then summed). NaN-filled
outputs, odd shapes, strides 1 and 2, scalar and float4 stores. Skipped where g++ is missing. No GPU involved."""
from __future__ import annotations

import numpy
import pytest

from checks import naive_conv2d
from cnn_gpu.ops.conv import implicit_gemm as ig
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM, conv_problem
from cnn_gpu.ops.geometry import window_geometry
from emulation import emulate
from emulation.conv2d_launches import MAIN, RELU, emulated, nans, planner, rel, sum_splits  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(emulate.available() is not None, reason=f"CPU emulation: {emulate.available()}")

# (x shape, K, R×S window, stride, padding)
CASES = [
    ((2, 3, 9, 9), 5, 3, 1, 1),     # 81 pixels an image: scalar stores, partial tiles
    ((2, 3, 9, 9), 5, 3, 2, 1),     # stride 2
    ((3, 16, 11, 12), 5, 3, 1, 1),  # 132 pixels, C·R·S = 144: float4 stores, forward and backward-filter split
]


def case_id(case):
    shape, K, R, stride, pad = case
    return "x{}x{}x{}x{}_K{}_w{}_s{}_p{}".format(*shape, K, R, stride, pad)


def problem_of(case):
    shape, K, R, stride, pad = case
    return conv_problem(window_geometry(shape, (R, R), (stride, stride), (pad, pad)), K)


def inputs(p, seed):
    g = p.g
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal(p.x_shape).astype(numpy.float32)
    w = rng.standard_normal((p.K, g.C, g.R, g.S)).astype(numpy.float32)
    b = rng.standard_normal(p.K).astype(numpy.float32)
    dy = rng.standard_normal(p.y_shape).astype(numpy.float32)
    return x, w, b, dy


def reference_backward(x, w, dy, g):
    """(dx, dw) in float64: every tap's window of the zero-padded x, as slices."""
    xp = numpy.pad(x.astype(numpy.float64), ((0, 0), (0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right)))
    dy64, w64 = dy.astype(numpy.float64), w.astype(numpy.float64)
    dxp, dw = numpy.zeros_like(xp), numpy.zeros(w.shape)
    for r in range(g.R):
        for s in range(g.S):
            rows = slice(r, r + (g.OH - 1) * g.stride_h + 1, g.stride_h)
            cols = slice(s, s + (g.OW - 1) * g.stride_w + 1, g.stride_w)
            dw[:, :, r, s] = numpy.einsum("nkhw,nchw->kc", dy64, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += numpy.einsum("nkhw,kc->nchw", dy64, w64[:, :, r, s])
    return dxp[:, :, g.pad_top:g.pad_top + g.H, g.pad_left:g.pad_left + g.W], dw


def forward_reference(x, w, b, g):
    return naive_conv2d(x, w, b, (g.stride_h, g.stride_w), (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_forward_matches_float64(case, planner):
    p = problem_of(case)
    x, w, b, _ = inputs(p, 1)
    ref = forward_reference(x, w, b, p.g)
    launch = ig.ImplicitGemmForward(ig.DEFAULT_TILE).plan(p, RELU, 0.0)
    assert launch.splits == 1
    run = emulated(launch.kernel, launch.grid, launch.block)
    y = emulate.run(MAIN, run, [x, w, b, nans(p.y_shape)], launch.scalars)
    assert not numpy.isnan(y).any()
    assert rel(y, numpy.maximum(ref, 0)) < 2e-6
    # no bias (a null pointer), no activation; misaligned tensors: the scalar stores
    scalars = launch.scalars[:-3] + (numpy.int32(0),) + launch.scalars[-2:]
    y = emulate.run(MAIN, run, [x, w, None, nans(p.y_shape)], scalars, misalign=True)
    assert rel(y, forward_reference(x, w, None, p.g)) < 2e-6


@pytest.mark.parametrize("case", [c for c in CASES if c[0][1] * c[2] ** 2 >= 128], ids=case_id)
def test_emulated_split_forward_and_sum_match_float64(case, planner):
    p = problem_of(case)
    x, w, b, _ = inputs(p, 2)
    variant = ig.ImplicitGemmForward(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0])
    assert variant.applies(p)
    launch = variant.plan(p, RELU, 0.0)
    assert launch.splits > 1
    partials = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block),
                           [x, w, b, nans((launch.splits,) + p.y_shape)], launch.scalars)
    assert not numpy.isnan(partials).any()
    ref = forward_reference(x, w, None, p.g)
    assert rel(partials.astype(numpy.float64).sum(axis=0), ref) < 2e-6
    y = sum_splits(partials, p.y_shape, b, p.g.OH * p.g.OW, RELU, 0.0)
    assert not numpy.isnan(y).any()
    assert rel(y, numpy.maximum(ref + b.astype(numpy.float64)[None, :, None, None], 0)) < 2e-6


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_backward_data_matches_float64(case, planner):
    p = problem_of(case)
    x, w, _, dy = inputs(p, 3)
    ref, _ = reference_backward(x, w, dy, p.g)
    launch = ig.ImplicitGemmBackwardData(ig.DEFAULT_TILE).plan(p)
    for misalign in (False, True):
        dx = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block), [dy, w, nans(p.x_shape)],
                         launch.scalars, misalign=misalign)
        assert not numpy.isnan(dx).any()
        assert rel(dx, ref) < 2e-6


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_backward_filter_and_sum_match_float64(case, planner):
    p = problem_of(case)
    x, w, _, dy = inputs(p, 4)
    _, ref = reference_backward(x, w, dy, p.g)
    launch = ig.ImplicitGemmBackwardFilter(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0]).plan(p)
    shape = w.shape if launch.splits == 1 else (launch.splits,) + w.shape
    out = emulate.run(MAIN, emulated(launch.kernel, launch.grid, launch.block), [dy, x, nans(shape)], launch.scalars)
    assert not numpy.isnan(out).any()
    if launch.splits > 1:
        assert rel(out.astype(numpy.float64).sum(axis=0), ref) < 2e-6
        out = sum_splits(out, w.shape)
    assert rel(out, ref) < 2e-6  # a float32 sum over N·OH·OW products (up to 396 here)


def test_planner_splits_and_stores_are_exercised(planner):
    """The cases reach the paths they are meant to: split forward and backward-filter, float4 and scalar stores."""
    problems = [problem_of(c) for c in CASES]
    filter_variant = ig.ImplicitGemmBackwardFilter(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0])
    assert any(filter_variant.plan(p).splits > 1 for p in problems)
    assert any(ig.ImplicitGemmForward(ig.DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0]).applies(p) for p in problems)
    assert {p.g.OH * p.g.OW % 4 == 0 for p in problems} == {True, False}
    assert any(p.g.C * p.g.R * p.g.S % 4 == 0 for p in problems)  # backward-filter's float4 row stores
