"""kernels/conv2d_depthwise.cu run on the CPU (tests/emulation: g++, one std::thread per CUDA thread, AddressSanitizer
and UBSan) with the launches cnn_gpu.ops.conv.depthwise plans, against float64 loops. NaN-filled outputs, odd shapes,
channel multipliers, strides 1 and 2, dilations, windows from 1×1 to 31×31, float4 and scalar stores. Skipped
where g++ is missing. No GPU involved: this is how the kernels are checked until a GPU runs their CUDA tests."""
from __future__ import annotations

import numpy
import pytest

from cnn_gpu.cuda import loader
from cnn_gpu.ops.conv import depthwise as dp
from emulation import emulate

pytestmark = pytest.mark.skipif(emulate.available() is not None, reason=f"CPU emulation: {emulate.available()}")
MAIN = "conv2d_depthwise_main.cpp"
SMS = 3  # a small GPU, so that backward-filter splits its units


def problem(N, C, H, W, M, R, S, stride=(1, 1), dilation=(1, 1), pad=(0, 0)):
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, pad
    OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    return dp.DepthwiseProblem(N, C, H, W, M, R, S, sh, sw, dh, dw, ph, pw, OH, OW)


# N, C, H, W, M, R, S, stride, dilation, pad
CASES = [
    problem(2, 3, 9, 11, 1, 3, 3, pad=(1, 1)),                           # MobileNet-like, partial tiles
    problem(3, 2, 13, 8, 2, 3, 3, stride=(2, 2), pad=(1, 1)),            # stride 2, multiplier 2, OW % 4 == 0
    problem(1, 2, 17, 19, 3, 7, 7, pad=(3, 3)),                          # ConvNeXt-like 7×7, multiplier 3
    problem(2, 1, 12, 16, 1, 3, 3, dilation=(2, 2), pad=(2, 2)),         # dilated, float4 stores
    problem(2, 2, 15, 14, 1, 5, 5, stride=(2, 2), pad=(1, 1)),           # stride 2, dy rows before the first
    problem(1, 2, 9, 30, 1, 3, 3, stride=(2, 2), pad=(1, 1)),            # stride 2 over several tiles a row
    problem(2, 2, 10, 9, 1, 4, 2, stride=(1, 2), dilation=(3, 1), pad=(2, 0)),  # even window, mixed strides/dilations
    problem(5, 2, 3, 5, 1, 1, 1),                                        # 1×1, several images a block
    problem(1, 1, 33, 34, 1, 31, 31, pad=(15, 15)),                      # 31×31: backward-filter in passes
    problem(2, 1, 37, 70, 1, 3, 3, pad=(1, 1)),                          # several planned tiles a plane
]


def small_tile(p):
    """A tile far smaller than the planner's, so that small planes take many tiles (halos across tile edges, the
    backward-filter's units split); threads enough to stage it within the kernel's MAX_LOADS."""
    u, v, bx, by, bp = 1, 4, 2, 3, 2
    staged = dp._staged(p, bx, by, bp, u, v)
    return dp.DepthwiseTile(u, v, bx, by, bp, 32 * max(1, -(-staged // (32 * dp.MAX_LOADS))))


# (problem, tile): the planner's tile (None) for every case, a small one for the windows up to 7×7
RUNS = [(p, None) for p in CASES] + [(p, small_tile(p)) for p in CASES if p.R <= 7 and p.W < 40]


def case_id(run):
    p, tile = run
    return (f"N{p.N}C{p.C}M{p.M}_{p.H}x{p.W}_w{p.R}x{p.S}_s{p.sh}{p.sw}_d{p.dh}{p.dw}_p{p.pt}{p.pl}"
            + ("_small" if tile else ""))


def padded(x, p):
    return numpy.pad(x, ((0, 0), (0, 0), (p.pt, p.pt), (p.pl, p.pl)))


def taps(p):
    """(r, s, rows, cols): each tap's slices of the padded input under every output."""
    for r in range(p.R):
        for s in range(p.S):
            yield r, s, slice(r * p.dh, r * p.dh + (p.OH - 1) * p.sh + 1, p.sh), \
                slice(s * p.dw, s * p.dw + (p.OW - 1) * p.sw + 1, p.sw)


def reference_forward(x, w, b, p):
    xg = padded(x.astype(numpy.float64), p).repeat(p.M, axis=1)  # channel k reads input channel k // M
    y = numpy.zeros((p.N, p.K, p.OH, p.OW))
    for r, s, rows, cols in taps(p):
        y += w[:, 0, r, s].astype(numpy.float64)[None, :, None, None] * xg[:, :, rows, cols]
    return y + b.astype(numpy.float64)[None, :, None, None]


def reference_backward(dy, x, w, p):
    dy64, xg = dy.astype(numpy.float64), padded(x.astype(numpy.float64), p).repeat(p.M, axis=1)
    dxg = numpy.zeros_like(xg)
    dw = numpy.zeros((p.K, 1, p.R, p.S))
    for r, s, rows, cols in taps(p):
        dxg[:, :, rows, cols] += w[:, 0, r, s].astype(numpy.float64)[None, :, None, None] * dy64
        dw[:, 0, r, s] = (dy64 * xg[:, :, rows, cols]).sum(axis=(0, 2, 3))
    dx = dxg.reshape(p.N, p.C, p.M, *dxg.shape[2:]).sum(axis=2)
    return dx[:, :, p.pt:p.pt + p.H, p.pl:p.pl + p.W], dw


def rel(a, ref):
    return numpy.linalg.norm(a - ref) / numpy.linalg.norm(ref)


def inputs(p, seed):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(numpy.float32)
    w = rng.standard_normal((p.K, 1, p.R, p.S)).astype(numpy.float32)
    b = rng.standard_normal(p.K).astype(numpy.float32)
    dy = rng.standard_normal((p.N, p.K, p.OH, p.OW)).astype(numpy.float32)
    return x, w, b, dy


def compiled(launch):
    """The launch with the defines its kernel compiles with: the planner's, over the family's (limits included)."""
    return launch._replace(defines=tuple(loader.family_defines("conv2d_depthwise", **dict(launch.defines)).items()))


def nans(shape):
    return numpy.full(shape, numpy.nan, numpy.float32)


@pytest.mark.parametrize("run", RUNS, ids=case_id)
def test_emulated_forward_matches_float64(run):
    p, tile = run
    x, w, b, _ = inputs(p, 1)
    launch = dp.forward_launch(p, tile)
    ref = reference_forward(x, w, b, p)
    y = emulate.run(MAIN, compiled(launch), [x, w, b, nans(ref.shape)], launch.scalars + (0, 0.0))  # no activation
    assert not numpy.isnan(y).any()
    assert rel(y, ref) < 1e-6
    # relu fused, and no bias (a null pointer); the scalar (misaligned) path
    y = emulate.run(MAIN, compiled(launch), [x, w, None, nans(ref.shape)], launch.scalars + (1, 0.0), misalign=True)
    b0 = numpy.zeros_like(b)
    assert rel(y, numpy.maximum(reference_forward(x, w, b0, p), 0)) < 1e-6


@pytest.mark.parametrize("run", RUNS, ids=case_id)
def test_emulated_backward_data_matches_float64(run):
    p, tile = run
    x, w, _, dy = inputs(p, 2)
    ref, _ = reference_backward(dy, x, w, p)
    launch = dp.data_launch(p, tile)
    for misalign in (False, True):
        dx = emulate.run(MAIN, compiled(launch), [dy, w, nans(x.shape)], launch.scalars, misalign=misalign)
        assert not numpy.isnan(dx).any()
        assert rel(dx, ref) < 1e-6


@pytest.mark.parametrize("run", RUNS, ids=case_id)
def test_emulated_backward_filter_matches_float64(run):
    p, tile = run
    x, w, _, dy = inputs(p, 3)
    _, ref = reference_backward(dy, x, w, p)
    launch = dp.filter_launch(p, SMS, tile)
    taps = p.R * p.S
    partials = emulate.run(MAIN, compiled(launch), [dy, x, nans((launch.splits, p.K, taps + 1))], launch.scalars)
    assert not numpy.isnan(partials).any()
    out = partials[0].copy()
    for z in range(1, launch.splits):  # sum_splits_bias_act's order
        out += partials[z]
    # a float32 sum over N·OH·OW products (up to 1122 here): a few 1e-7 relative
    assert rel(out[:, :taps].reshape(ref.shape), ref) < 2e-6
    assert rel(out[:, taps], dy.astype(numpy.float64).sum(axis=(0, 2, 3))) < 2e-6  # db from the same pass


def test_planner_splits_and_passes_are_exercised():
    """The cases above reach the paths they are meant to: a split backward-filter, a 31×31 one in passes, several
    images a block, more staging threads than outputs."""
    launches = [dp.filter_launch(p, SMS, tile) for p, tile in RUNS]
    assert any(launch.splits > 1 for launch in launches)
    assert any(launch.scalars[-3] * launch.scalars[-2] > 1 for launch in launches)  # several tiles a plane
    assert any(launch.grid[2] > 1 for launch in launches)
    tiles = [tile or dp.depthwise_tile(p, p.OH, p.OW) for p, tile in RUNS]
    assert any(t.bp > 1 for t in tiles)
    assert any(t.threads > 32 * -(-t.bx * t.by * t.bp // 32) for t in tiles)

