"""The direct depthwise kernels' planner (cnn_gpu.ops.conv.depthwise) and their variants: every planned tile within
the kernel's limits, the variants registered unverified and applying to depthwise problems only, and the planned
variants of the benchmark's depthwise layers compiled by NVRTC for sm_80 and sm_90 with no spill. Their numerics:
tests/test_conv_depthwise_emulated.py (CPU emulation) and tests/test_conv_grouped.py (on a GPU)."""
from __future__ import annotations

import itertools

import numpy
import pytest

from checks import compile_variant_without_spills
from cnn_gpu.cuda import device, variants
from cnn_gpu.ops.conv import depthwise as dp
from cnn_gpu.ops.conv import grouped
from cnn_gpu.ops.geometry import window_geometry


def problem(N, C, H, W, M, R, S, s=1, d=1, pad=None):
    pad = (d * (R - 1)) // 2 if pad is None else pad
    OH, OW = (H + 2 * pad - d * (R - 1) - 1) // s + 1, (W + 2 * pad - d * (S - 1) - 1) // s + 1
    return dp.DepthwiseProblem(N, C, H, W, M, R, S, s, s, d, d, pad, pad, OH, OW)


# The benchmark's depthwise layers (cnn_gpu/bench/cases/grouped.py)
BENCH = {
    "MobileNetV2 3x3 56": problem(128, 144, 56, 56, 1, 3, 3),
    "MobileNetV2 3x3 s2 56": problem(128, 144, 56, 56, 1, 3, 3, s=2),
    "MobileNetV2 3x3 14": problem(128, 384, 14, 14, 1, 3, 3),
    "ConvNeXt 7x7 56": problem(128, 96, 56, 56, 1, 7, 7),
    "ConvNeXt 7x7 14": problem(128, 384, 14, 14, 1, 7, 7),
    "RepLKNet 31x31 56": problem(64, 128, 56, 56, 1, 31, 31),
}


def staged_within_limits(p, tile):
    staged = dp._staged(p, tile.bx, tile.by, tile.bp, tile.u, tile.v)
    return (tile.threads % 32 == 0 and tile.bx * tile.by * tile.bp <= tile.threads <= dp.MAX_THREADS
            and 4 * staged <= dp._MAX_STAGED_BYTES and -(-staged // tile.threads) <= dp.MAX_LOADS)


def test_every_planned_tile_is_within_the_kernels_limits():
    """Windows 1×1 to 31×31, strides 1 and 2, dilations 1 to 4, planes 1×4 to 112×115, 1 to 128 images."""
    for R, s, d, H, N in itertools.product((1, 2, 3, 5, 7, 9, 13, 31), (1, 2), (1, 2, 4), (1, 7, 14, 33, 112),
                                           (1, 3, 128)):
        if (R - 1) * d + 1 > H + 2 * ((R - 1) * d // 2):
            continue
        p = problem(N, 8, H, H + 3, 2, R, R, s, d)
        for out_h, out_w in ((p.OH, p.OW), (p.H, p.W)):
            tile = dp.depthwise_tile(p, out_h, out_w)
            if tile is None:  # only a window whose span alone outgrows shared memory (the grouped fallback runs it)
                assert 4 * dp._staged(p, 1, 1, 1, 2, 4) > dp._MAX_STAGED_BYTES, p
            else:
                assert staged_within_limits(p, tile), (p, tile)
        assert 1 <= dp.filter_rows_a_pass(p) <= R


def test_backward_filter_split_fills_the_gpu_and_covers_every_unit():
    for p in BENCH.values():
        launch = dp.filter_launch(p, 132)
        K, splits, passes = launch.grid
        tile = dp.depthwise_tile(p, p.OH, p.OW)
        units = -(-p.N // tile.bp) * -(-p.OH // tile.th) * -(-p.OW // tile.tw)
        chunk = int(launch.scalars[-1])
        assert K == p.K and splits == launch.splits and (splits - 1) * chunk < units <= splits * chunk
        assert K * splits * passes >= min(8 * 132, K * units * passes)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ["MobileNetV2 3x3 s2 56", "ConvNeXt 7x7 56", "RepLKNet 31x31 56"])
def test_bench_layers_variants_compile_without_spills(name, arch):
    """3×3 at stride 2, 7×7 and 31×31 (the other bench layers' variants take the same code paths)."""
    p = BENCH[name]
    for launch in (dp.forward_launch(p), dp.data_launch(p)):  # backward-filter's defines are the forward's
        report = compile_variant_without_spills("conv2d_depthwise", arch, dict(launch.defines))
        assert launch.kernel in report


def test_depthwise_variants_are_registered_unverified_and_apply_to_depthwise_only(monkeypatch):
    monkeypatch.setattr(device, "sm_count", lambda: 132)
    depthwise = grouped.grouped_problem(window_geometry((2, 8, 9, 9), (3, 3), 1, 1), 16, 8)
    dense_dilated = grouped.grouped_problem(window_geometry((2, 8, 9, 9), (3, 3), 1, 2, dilation=2), 16, 1)
    def names(found):  # the grouped implicit GEMMs apply to every grouped or dilated problem: not these tests' subject
        return [v.name for v in found if not v.name.startswith("implicit GEMM")]

    for op in ("conv2d_grouped_fwd", "conv2d_grouped_bwd_data", "conv2d_grouped_bwd_filter"):
        assert names(variants.applicable(op, depthwise)) == ["CuPy im2col + batched GEMM", "direct depthwise"]
        assert names(variants.applicable(op, dense_dilated)) == ["CuPy im2col + batched GEMM"]
        monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "0")
        assert [v.name for v in variants.offered(op, depthwise)] == ["CuPy im2col + batched GEMM"]
        monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "1")
        assert names(variants.offered(op, depthwise)) == ["CuPy im2col + batched GEMM", "direct depthwise"]


@pytest.mark.parametrize("x_shape, window, groups", [((64, 128, 56, 56), (31, 31), 128), ((64, 128, 56, 56), (3, 3), 4),
                                                     ((3, 6, 9, 9), (3, 3), 2)])
def test_fallback_chunks_cover_the_problem_within_the_im2col_bound(x_shape, window, groups):
    g = window_geometry(x_shape, window, 1, window[0] // 2)
    problem = grouped.grouped_problem(g, x_shape[1], groups)
    chunks = grouped._chunks(problem)
    covered = sorted((n, group) for c in chunks for n in range(c.n0, c.n1) for group in range(c.g0, c.g1))
    assert covered == [(n, group) for n in range(g.N) for group in range(groups)]
    per_group = 4 * (g.C // groups) * g.R * g.S * g.OH * g.OW
    assert all((c.n1 - c.n0) * (c.g1 - c.g0) * per_group <= grouped._IM2COL_MAX_BYTES for c in chunks)
    assert len(chunks) == 1 or x_shape[0] > 3


def test_fallback_chunks_compute_the_convolution(monkeypatch, rng):
    """The fallback's chunked launches (by images, and by groups within an image), run on the host with NumPy arrays
    and an im2col bound of a few groups, give the unchunked NumPy path's results."""
    from cnn_gpu import functional as F

    x, w, b = rng.standard_normal((3, 6, 9, 8)), rng.standard_normal((12, 2, 3, 3)), rng.standard_normal(12)
    g = window_geometry(x.shape, (3, 3), 2, 1, dilation=(1, 2))
    problem = grouped.grouped_problem(g, 12, 3)
    y = F.conv2d(x, w, b, 2, 1, "relu", dilation=(1, 2), groups=3)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = F.conv2d_backward(dy, x, w, 2, 1, dilation=(1, 2), groups=3)
    per_group = 4 * 2 * 9 * g.OH * g.OW
    for bound in (per_group * 3 * 2, per_group * 2, per_group):  # two images a chunk; two groups, one group of one
        monkeypatch.setattr(grouped, "_IM2COL_MAX_BYTES", bound)
        variants.planned.cache_clear()
        assert len(grouped._chunks(problem)) > 1
        assert numpy.allclose(grouped.GroupedIm2colForward().launch(problem, x, w, b, "relu", 0.01), y, rtol=1e-12, atol=1e-12)
        assert numpy.allclose(grouped.GroupedIm2colBackwardData().launch(problem, dy, x, w), dx, rtol=1e-12, atol=1e-12)
        chunked_dw, db = grouped.GroupedIm2colBackwardFilter().launch(problem, dy, x, w)
        assert db is None and numpy.allclose(chunked_dw, dw, rtol=1e-12, atol=1e-12)  # db: the op's own reduction
    variants.planned.cache_clear()
