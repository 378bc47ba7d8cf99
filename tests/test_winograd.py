"""conv2d's Winograd F(2×2, 3×3) and F(4×4, 3×3) forward and backward-filter (kernels/winograd.cu, the WinogradForward
and WinogradBackwardFilter variants): a float64 NumPy transcription of the transforms, formula for formula as the
kernels write them (and of backward-filter's chunked products, zero-padded tiles included), equals the direct
convolution and its filter gradient (proves the matrices, the tiling, the padding and the odd edges without a
GPU); the CUDA paths, forced through cnn_gpu.cuda.autotune.forced, against NumPy in float64 on odd shapes (the forward with every
activation, with and without bias), each tile configuration of their sliced GEMMs, bit for bit run to run; which
layers get the candidates, the buffer-size rule, backward-filter's chunk bound; the 32-bit checks before any
allocation."""
import dataclasses
import json
import re
from typing import Callable, NamedTuple

import numpy
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.cuda import device, variants
from cnn_gpu.ops.activation import numpy_activation
from cnn_gpu.ops.conv import (CONV_TILES, DEFAULT_TILE, SPLIT_BLOCKS_PER_SM, FewChannelsBackwardFilter, FewFiltersForward,
                              ImplicitGemmBackwardFilter, ImplicitGemmForward, WinogradBackwardFilter, WinogradForward,
                              conv_problem)
from cnn_gpu.ops.conv.winograd import _winograd_chunks
from cnn_gpu.ops.gemm import TILE_CONFIGS
from cnn_gpu.ops.geometry import window_geometry
from checks import rel_error

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh"]
VARIANTS = [2, 4]  # m of the Winograd variants F(m×m, 3×3), of the forward and of backward-filter


def filter_variant(m, blocks_per_sm):
    """The registered backward-filter variant F(m×m, 3×3) split for blocks_per_sm blocks an SM."""
    return variants.named("conv2d_bwd_filter", f"Winograd F({m}x{m}, 3x3), split to {blocks_per_sm} blocks an SM")

# The header's matrices of kernels/winograd.cu: F(2×2, 3×3) ...
B_T = numpy.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=numpy.float64)
G = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=numpy.float64)
A_T = numpy.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=numpy.float64)
G_T = G.T
A = A_T.T
# ... and F(4×4, 3×3) (interpolation points 0, ±2/3, ±3/2, ∞)
B_T_4X4 = numpy.array([[36, 0, -97, 0, 36, 0], [0, -36, -54, 16, 24, 0], [0, 36, -54, -16, 24, 0],
                       [0, -24, -16, 54, 36, 0], [0, 24, -16, -54, 36, 0], [0, 36, 0, -97, 0, 36]]) / 16
G_4X4 = numpy.array([[260, 0, 0], [-72, -48, -32], [-72, 48, -32], [32, 48, 72], [32, -48, 72], [0, 0, 260]]) / 585
A_T_4X4 = numpy.array([[8, 27, 27, 8, 8, 0], [0, 18, -18, 12, -12, 0], [0, 12, 12, 18, 18, 0],
                       [0, 8, -8, 27, -27, 8]]) / 8
G_T_4X4 = G_4X4.T
A_4X4 = A_T_4X4.T


# ---- the kernels' arithmetic, transcribed (float64, along axis -2 for columns, -1 for rows) ----------
def input_axis(v, axis):
    """winograd.cu's input_axis: Bᵀ·v along axis."""
    d0, d1, d2, d3 = numpy.moveaxis(v, axis, 0)
    return numpy.moveaxis(numpy.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3]), 0, axis)


def filter_axis(v, axis):
    """winograd.cu's filter_axis: G·v along axis (3 points in, 4 out)."""
    g0, g1, g2 = numpy.moveaxis(v, axis, 0)
    return numpy.moveaxis(numpy.stack([g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]), 0, axis)


def output_axis(v, axis):
    """winograd.cu's output_axis: Aᵀ·v along axis (4 points in, 2 out)."""
    m0, m1, m2, m3 = numpy.moveaxis(v, axis, 0)
    return numpy.moveaxis(numpy.stack([m0 + m1 + m2, m1 - m2 - m3]), 0, axis)


def output_grad_axis(v, axis):
    """winograd.cu's output_grad_axis: A·v along axis (2 points in, 4 out)."""
    d0, d1 = numpy.moveaxis(v, axis, 0)
    return numpy.moveaxis(numpy.stack([d0, d0 + d1, d0 - d1, -d1]), 0, axis)


def filter_grad_axis(v, axis):
    """winograd.cu's filter_grad_axis: Gᵀ·v along axis (4 points in, 3 out)."""
    m0, m1, m2, m3 = numpy.moveaxis(v, axis, 0)
    return numpy.moveaxis(numpy.stack([m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3]), 0, axis)


def input_axis_4x4(v, axis):
    """winograd.cu's F4x4::input_axis: Bᵀ·v along axis (6 points)."""
    d0, d1, d2, d3, d4, d5 = numpy.moveaxis(v, axis, 0)
    a_even, a_odd = d4 - 2.25 * d2, d3 - 2.25 * d1
    b_even, b_odd = 2.25 * d4 - d2, 2.25 * d3 - d1
    return numpy.moveaxis(numpy.stack([2.25 * (d0 - 2.25 * d2) + b_even, 1.5 * a_even + a_odd, 1.5 * a_even - a_odd,
                                       b_even + 1.5 * b_odd, b_even - 1.5 * b_odd, 2.25 * (d5 - 2.25 * d3) - a_odd]),
                          0, axis)


def filter_axis_4x4(v, axis):
    """winograd.cu's F4x4::filter_axis: G·v along axis (3 points in, 6 out)."""
    g0, g1, g2 = numpy.moveaxis(v, axis, 0)
    odd = (16 / 195) * g1
    a_even, b_even = (-8 / 65) * g0 + (-32 / 585) * g2, (32 / 585) * g0 + (8 / 65) * g2
    return numpy.moveaxis(numpy.stack([(4 / 9) * g0, a_even - odd, a_even + odd, b_even + odd, b_even - odd,
                                       (4 / 9) * g2]), 0, axis)


def output_axis_4x4(v, axis):
    """winograd.cu's F4x4::output_axis: Aᵀ·v along axis (6 points in, 4 out)."""
    m0, m1, m2, m3, m4, m5 = numpy.moveaxis(v, axis, 0)
    a_sum, a_diff, b_sum, b_diff = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return numpy.moveaxis(numpy.stack([(m0 + b_sum) + 3.375 * a_sum, 2.25 * a_diff + 1.5 * b_diff,
                                       1.5 * a_sum + 2.25 * b_sum, (a_diff + m5) + 3.375 * b_diff]), 0, axis)


def output_grad_axis_4x4(v, axis):
    """winograd.cu's F4x4::output_grad_axis: A·v along axis (4 points in, 6 out)."""
    d0, d1, d2, d3 = numpy.moveaxis(v, axis, 0)
    a_even, a_odd = 3.375 * d0 + 1.5 * d2, 2.25 * d1 + d3
    b_even, b_odd = d0 + 2.25 * d2, 1.5 * d1 + 3.375 * d3
    return numpy.moveaxis(numpy.stack([d0, a_even + a_odd, a_even - a_odd, b_even + b_odd, b_even - b_odd, d3]), 0, axis)


def filter_grad_axis_4x4(v, axis):
    """winograd.cu's F4x4::filter_grad_axis: Gᵀ·v along axis (6 points in, 3 out)."""
    m0, m1, m2, m3, m4, m5 = numpy.moveaxis(v, axis, 0)
    a_sum, a_diff, b_sum, b_diff = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return numpy.moveaxis(numpy.stack([(4 / 9) * m0 + (-8 / 65) * a_sum + (32 / 585) * b_sum,
                                       (16 / 195) * (b_diff - a_diff),
                                       (4 / 9) * m5 + (-32 / 585) * a_sum + (8 / 65) * b_sum]), 0, axis)


class Size(NamedTuple):
    """One size F(m×m, 3×3): the output tile's side and its five transcribed axis transforms (the forward's three,
    backward-filter's two)."""
    m: int
    input_axis: Callable
    filter_axis: Callable
    output_axis: Callable
    output_grad_axis: Callable
    filter_grad_axis: Callable

    @property
    def alpha(self) -> int:
        return self.m + 2


F2X2 = Size(2, input_axis, filter_axis, output_axis, output_grad_axis, filter_grad_axis)
F4X4 = Size(4, input_axis_4x4, filter_axis_4x4, output_axis_4x4, output_grad_axis_4x4, filter_grad_axis_4x4)
SIZES = {2: F2X2, 4: F4X4}


def filter_transform(w, size):
    """U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ], ξ = α·row + col."""
    K, C = w.shape[:2]
    u = size.filter_axis(size.filter_axis(w, -2), -1)  # (K, C, α, α)
    return u.reshape(K, C, size.alpha ** 2).transpose(2, 1, 0)


def input_transform(x, size, TH, TW, pt, pl):
    """V[ξ][c][t] = (Bᵀ · d[c,t] · B)[ξ], t = (n·TH + th)·TW + tw, d[c,t] the α×α patch at rows m·th − pt,
    columns m·tw − pl of x (zeros outside x)."""
    N, C, H, W = x.shape
    m, alpha = size.m, size.alpha
    padded = numpy.zeros((N, C, m * TH + 2, m * TW + 2))  # patch rows m·th + a = h + pt, a < α
    rows, cols = min(H, m * TH + 2 - pt), min(W, m * TW + 2 - pl)  # the part of x some patch covers
    padded[:, :, pt : pt + rows, pl : pl + cols] = x[:, :, :rows, :cols]
    patches = sliding_window_view(padded, (alpha, alpha), axis=(2, 3))[:, :, ::m, ::m]  # (N, C, TH, TW, α, α)
    v = size.input_axis(size.input_axis(patches, -2), -1)
    return v.reshape(N, C, TH, TW, alpha ** 2).transpose(4, 1, 0, 2, 3).reshape(alpha ** 2, C, N * TH * TW)


def output_transform(M, b, size, N, OH, OW, TH, TW, activation, slope):
    """y[n, k, m·th + i, m·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j]) for the outputs inside y."""
    K, m, alpha = M.shape[1], size.m, size.alpha
    points = M.reshape(alpha, alpha, K, N, TH, TW).transpose(3, 2, 4, 5, 0, 1)  # (N, K, TH, TW, α, α)
    tiles = size.output_axis(size.output_axis(points, -2), -1)  # (N, K, TH, TW, m, m)
    y = tiles.transpose(0, 1, 2, 4, 3, 5).reshape(N, K, m * TH, m * TW)[:, :, :OH, :OW]
    if b is not None:
        y = y + b[:, None, None]
    return numpy_activation(y, activation, slope)


def pad_tiles(v, T_padded):
    """v (..., T) with zero tiles appended up to T_padded, as the transforms write them."""
    return numpy.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, T_padded - v.shape[-1])])


def dy_transform(dy, size, TH, TW, T_padded):
    """DY[k][ξ][t] = (A · dy[k,t] · Aᵀ)[ξ], dy[k,t] the m×m block at rows m·th, columns m·tw of dy (zeros past
    OH, OW), zeros for T ≤ t < T_padded."""
    N, K, OH, OW = dy.shape
    m, points = size.m, size.alpha ** 2
    padded = numpy.zeros((N, K, m * TH, m * TW))
    padded[:, :, :OH, :OW] = dy
    blocks = padded.reshape(N, K, TH, m, TW, m).transpose(0, 1, 2, 4, 3, 5)  # (N, K, TH, TW, m, m)
    v = size.output_grad_axis(size.output_grad_axis(blocks, -2), -1)  # (N, K, TH, TW, α, α)
    return pad_tiles(v.reshape(N, K, TH * TW, points).transpose(1, 3, 0, 2).reshape(K, points, N * TH * TW), T_padded)


def filter_grad_transform(P, size, S):
    """dw[k, c] = Gᵀ · (Σ_{s = 0..S−1} P[ξ·S + s][k][c]) · G, the chunks summed in order."""
    K, C = P.shape[1:]
    alpha = size.alpha
    chunks = P.reshape(alpha ** 2, S, K, C)
    m = chunks[:, 0]
    for s in range(1, S):
        m = m + chunks[:, s]
    m = m.reshape(alpha, alpha, K, C).transpose(2, 3, 0, 1)  # (K, C, α, α)
    return size.filter_grad_axis(size.filter_grad_axis(m, -2), -1)


def winograd_conv2d_backward_filter(dy, x, padding, size, wanted_chunks):
    """dw by the backward-filter's transforms and products, the reduction in winograd._winograd_chunks' chunks."""
    g = window_geometry(x.shape, (3, 3), 1, padding)
    TH, TW = -(-g.OH // size.m), -(-g.OW // size.m)
    S, chunk = _winograd_chunks(g.N * TH * TW, wanted_chunks)
    K, C, points = dy.shape[1], g.C, size.alpha ** 2
    DY = dy_transform(dy, size, TH, TW, S * chunk)  # (K, α², S·Tc)
    V = pad_tiles(input_transform(x, size, TH, TW, g.pad_top, g.pad_left).transpose(1, 0, 2), S * chunk)  # (C, α², S·Tc)
    P = numpy.einsum("kxsj,cxsj->xskc", DY.reshape(K, points, S, chunk), V.reshape(C, points, S, chunk))  # α²·S products
    return filter_grad_transform(P.reshape(points * S, K, C), size, S)


def winograd_conv2d(x, w, b, padding, size, activation=None, slope=0.01):
    g = window_geometry(x.shape, w.shape[2:], 1, padding)
    TH, TW = -(-g.OH // size.m), -(-g.OW // size.m)
    U = filter_transform(w, size)
    V = input_transform(x, size, TH, TW, g.pad_top, g.pad_left)
    M = numpy.einsum("xck,xct->xkt", U, V)  # the α² products
    return output_transform(M, b, size, g.N, g.OH, g.OW, TH, TW, activation, slope)


# ---- the transcription against the direct convolution (NumPy only) ------------------------------------
def test_axis_transforms_are_the_header_matrices(rng):
    v = rng.standard_normal((4, 4))
    assert numpy.allclose(input_axis(v, -2), B_T @ v, rtol=0, atol=1e-15)
    assert numpy.allclose(input_axis(v, -1), v @ B_T.T, rtol=0, atol=1e-15)
    g = rng.standard_normal((3, 3))
    assert numpy.allclose(filter_axis(filter_axis(g, -2), -1), G @ g @ G.T, rtol=0, atol=1e-15)
    assert numpy.allclose(output_axis(output_axis(v, -2), -1), A_T @ v @ A_T.T, rtol=0, atol=1e-15)
    assert numpy.allclose(filter_grad_axis(filter_grad_axis(v, -2), -1), G_T @ v @ G_T.T, rtol=0, atol=1e-15)
    d = rng.standard_normal((2, 2))
    assert numpy.allclose(output_grad_axis(output_grad_axis(d, -2), -1), A @ d @ A.T, rtol=0, atol=1e-15)


def test_4x4_axis_transforms_are_the_header_matrices(rng):
    v = rng.standard_normal((6, 6))
    assert numpy.allclose(input_axis_4x4(v, -2), B_T_4X4 @ v, rtol=0, atol=1e-13)
    assert numpy.allclose(input_axis_4x4(v, -1), v @ B_T_4X4.T, rtol=0, atol=1e-13)
    g = rng.standard_normal((3, 3))
    assert numpy.allclose(filter_axis_4x4(filter_axis_4x4(g, -2), -1), G_4X4 @ g @ G_4X4.T, rtol=0, atol=1e-15)
    assert numpy.allclose(output_axis_4x4(output_axis_4x4(v, -2), -1), A_T_4X4 @ v @ A_T_4X4.T, rtol=0, atol=1e-13)
    assert numpy.allclose(filter_grad_axis_4x4(filter_grad_axis_4x4(v, -2), -1), G_T_4X4 @ v @ G_T_4X4.T, rtol=0,
                          atol=1e-14)
    d = rng.standard_normal((4, 4))
    assert numpy.allclose(output_grad_axis_4x4(output_grad_axis_4x4(d, -2), -1), A_4X4 @ d @ A_4X4.T, rtol=0, atol=1e-13)


# (x shape, K, padding): a 3×3 input (one output), odd and even H, W (OH / OW of every residue mod 4: F(2×2) and
# F(4×4) drop some of a tile's last rows or columns), padding 0, 1, 2, asymmetric and 'same', patches past the
# bottom / right edge of x; T of 4×4 tiles up to 216, in several chunks (backward-filter), the last padded.
TRANSCRIPTION_CASES = [
    ((1, 1, 3, 3), 1, 0),
    ((3, 3, 4, 5), 5, 1),
    ((1, 17, 31, 33), 33, "same"),
    ((3, 2, 33, 31), 5, 0),
    ((2, 3, 6, 8), 3, (0, 2)),
    ((1, 4, 5, 4), 2, (2, 1)),
    ((2, 3, 1, 2), 4, 1),
    ((3, 2, 31, 33), 4, 1),
]


@pytest.mark.parametrize("x_shape, K, padding", TRANSCRIPTION_CASES)
@pytest.mark.parametrize("activation", [None, "tanh"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_transcribed_transforms_equal_direct_conv(rng, x_shape, K, padding, activation, variant):
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((K, x_shape[1], 3, 3))
    b = rng.standard_normal(K)
    ref = F.conv2d(x, w, b, 1, padding, activation, 0.2)  # float64 NumPy path (test_conv checks it against a loop)
    y = winograd_conv2d(x, w, b, padding, SIZES[variant], activation, 0.2)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < 1e-12


@pytest.mark.parametrize("x_shape, K, padding", TRANSCRIPTION_CASES)
@pytest.mark.parametrize("wanted_chunks", [1, 3, 5])
@pytest.mark.parametrize("variant", VARIANTS)
def test_transcribed_backward_filter_equals_direct_dw(rng, x_shape, K, padding, wanted_chunks, variant):
    # 2×2 tiles: T from 1 to 816: one chunk padded to a multiple of 16 tiles; T 272 in 3 or 4 chunks, the last
    # padded (272 = 2·96 + 80 = 3·80 + 32); T 720 in 3 or 5 exact ones, 816 in 3 exact or 5 padded ones. 4×4 tiles:
    # T from 1 to 216: 192 in 3 exact chunks, 216 in 3 padded ones (2·80 + 56)
    x = rng.standard_normal(x_shape)
    g = window_geometry(x_shape, (3, 3), 1, padding)
    dy = rng.standard_normal((g.N, K, g.OH, g.OW))
    w = rng.standard_normal((K, g.C, 3, 3))
    _, ref, _ = F.conv2d_backward(dy, x, w, 1, padding, compute_dx=False)  # float64 NumPy (test_conv: vs differences)
    dw = winograd_conv2d_backward_filter(dy, x, padding, SIZES[variant], wanted_chunks)
    assert dw.shape == ref.shape
    assert rel_error(dw, ref) < 1e-12


@pytest.mark.parametrize("T", [1, 17, 64, 272, 720, 25088])
@pytest.mark.parametrize("wanted", [1, 3, 17, 1000])
def test_winograd_chunks_cover_the_tiles_in_aligned_chunks(T, wanted):
    S, chunk = _winograd_chunks(T, wanted)
    assert 1 <= S <= wanted and chunk % 16 == 0  # whole 16-deep slabs: float4-aligned slices
    assert (S - 1) * chunk < T <= S * chunk  # no empty chunk; the padding lies in the last
    assert S == 1 or chunk >= 64


# ---- which layers get the candidates; the buffer rules -------------------------------------------------
@pytest.mark.parametrize("window, stride, eligible", [((3, 3), 1, True), ((3, 3), 2, False), ((3, 3), (1, 2), False),
                                                      ((5, 5), 1, False), ((3, 1), 1, False), ((1, 1), 1, False)])
def test_winograd_is_a_candidate_for_3x3_stride_1_only(monkeypatch, window, stride, eligible):
    monkeypatch.setattr(device, "sm_count", lambda: 132)  # the split variants are sized for the device
    candidates = tuple(c for c in variants.applicable("conv2d_fwd", conv_problem(window_geometry((2, 3, 9, 9), window, stride, 1), 4))
                       if not isinstance(c, FewFiltersForward)  # offered for these 4 filters too: tests/test_conv_direct.py
                       and not (isinstance(c, ImplicitGemmForward) and c.blocks_per_sm))
    tiles = tuple(ImplicitGemmForward(tile) for tile in CONV_TILES)
    assert candidates[0] == ImplicitGemmForward(DEFAULT_TILE)  # what CNN_GPU_AUTOTUNE=0 runs: never Winograd
    assert candidates == (tiles + (WinogradForward(2), WinogradForward(4)) if eligible else tiles)
    assert len({json.dumps(c.name) for c in candidates}) == len(candidates)  # the tuner's cache tells them apart


@pytest.mark.parametrize("variant", VARIANTS)
def test_winograd_buffers_past_32_bits_raise_before_allocation(variant):
    # 4096 channels of 512²: x, y and the pixel counts fit in 32 bits, V does not: 16·C·T = 16·4096·256² floats
    # for F(2×2), 36·4096·128² for F(4×4)
    problem = conv_problem(window_geometry((1, 4096, 512, 512), (3, 3), 1, 1), 1)
    with pytest.raises(ValueError, match="Winograd buffer V"):
        WinogradForward(variant).plan(problem)


# the 100×100 network's conv2 at N 128 (32² → 30²): 15 × 15 tiles of 2×2 an image, 8 × 8 of 4×4 (the header's T and buffers)
@pytest.mark.parametrize("variant, points, T", [(2, 16, 128 * 15 * 15), (4, 36, 128 * 8 * 8)])
def test_winograd_forward_plan_of_the_100x100_conv2(variant, points, T):
    plan = WinogradForward(variant).plan(conv_problem(window_geometry((128, 512, 32, 32), (3, 3), 1, 0), 256))
    assert plan.u_shape == (points, 512, 256) and plan.v_shape == (points, 512, T) and plan.m_shape == (points, 256, T)


def test_winograd_kernels_are_winograd_cu_entry_points():
    from cnn_gpu.cuda import compile_check

    try:
        entry_points = set(compile_check.compile_family("winograd", "sm_90").report)
    except compile_check.NVRTCUnavailable as exc:
        pytest.skip(str(exc))
    problem = conv_problem(window_geometry((1, 1, 3, 3), (3, 3), 1, 0), 1)
    for variant in VARIANTS:
        assert set(WinogradForward(variant).plan(problem).kernels) <= entry_points, variant
        assert set(filter_variant(variant, 2).plan(problem, 132).kernels) <= entry_points, variant


WINOGRAD_FILTER_PLANS = [filter_variant(m, blocks) for m in VARIANTS for blocks in SPLIT_BLOCKS_PER_SM]


@pytest.mark.parametrize("window, stride, eligible", [((3, 3), 1, True), ((3, 3), 2, False), ((5, 5), 1, False),
                                                      ((1, 1), 1, False)])
def test_winograd_filter_is_a_candidate_for_3x3_stride_1_only(monkeypatch, window, stride, eligible):
    monkeypatch.setattr(device, "sm_count", lambda: 132)
    plans = [p for p in variants.applicable("conv2d_bwd_filter", conv_problem(window_geometry((2, 3, 9, 9), window, stride, 1), 4))
             if not isinstance(p, FewChannelsBackwardFilter)]  # offered for these few channels too: tests/test_conv.py
    assert plans[0] == ImplicitGemmBackwardFilter(DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0])  # CNN_GPU_AUTOTUNE=0: never Winograd
    direct = [ImplicitGemmBackwardFilter(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES]
    assert plans == direct + WINOGRAD_FILTER_PLANS if eligible else plans == direct
    assert len({json.dumps(p.name) for p in plans}) == len(plans)  # the tuner's cache tells them apart by their names


# (x shape, K, offered, excluded by _WINOGRAD_MAX_BYTES alone): the 100×100 network's conv2 at N 128 (DY, V, P 1.4 GB F(2×2),
# 1.1 GB F(4×4)); its conv1 (F(2×2): a 10 GB DY, past 32 bits too; F(4×4): a 6.0 GB DY within 32 bits); its conv2 at
# N 512 (F(2×2): 5.7 GB, every buffer within 32 bits; F(4×4): 4.2 GB, within _WINOGRAD_MAX_BYTES).
@pytest.mark.parametrize("x_shape, K, offered, over_budget", [
    ((128, 512, 32, 32), 256, (2, 4), ()), ((128, 1, 100, 100), 512, (), (4,)),
    ((512, 512, 32, 32), 256, (4,), (2,))])
def test_winograd_filter_is_no_candidate_past_its_buffer_budget(monkeypatch, x_shape, K, offered, over_budget):
    monkeypatch.setattr(device, "sm_count", lambda: 132)
    problem = conv_problem(window_geometry(x_shape, (3, 3), 1, 0), K)
    plans = variants.applicable("conv2d_bwd_filter", problem)
    assert [p for p in plans if isinstance(p, WinogradBackwardFilter)] == [p for p in WINOGRAD_FILTER_PLANS if p.m in offered]
    for variant in over_budget:
        with pytest.raises(ValueError, match="_WINOGRAD_MAX_BYTES"):
            filter_variant(variant, SPLIT_BLOCKS_PER_SM[0]).plan(problem, 132)


# (x shape, K, offered): the 100×100 network's conv2 at N 128 (both sizes); its conv1 (F(2×2)'s M is past 32 bits, F(4×4)'s
# 5.9 GB M is not: excluded by _WINOGRAD_MAX_BYTES alone).
@pytest.mark.parametrize("x_shape, K, offered", [((128, 512, 32, 32), 256, (2, 4)),
                                                 ((128, 1, 100, 100), 512, ())])
def test_winograd_forward_is_no_candidate_past_its_buffer_budget(x_shape, K, offered):
    problem = conv_problem(window_geometry(x_shape, (3, 3), 1, 0), K)
    assert [v.m for v in variants.registered("conv2d_fwd") if isinstance(v, WinogradForward) and v.applies(problem)] == list(offered)
    if not offered:
        with pytest.raises(ValueError, match="_WINOGRAD_MAX_BYTES"):
            WinogradForward(4).plan(problem)


# the header's numbers, 132 SMs, 128 × 128 GEMM tiles (2 × 4 of them). F(2×2): 28 800 tiles in 3 chunks of 9600, no
# padding. F(4×4): 8192 tiles; the grid asks for one chunk (36 · 8 = 288 GEMM blocks already), the chunk bound for 8
# of 1024.
@pytest.mark.parametrize("variant, points, S, T", [(2, 16, 3, 28800), (4, 36, 8, 8192)])
def test_winograd_filter_split_of_the_100x100_conv2(variant, points, S, T):
    plan = filter_variant(variant, 2).plan(conv_problem(window_geometry((128, 512, 32, 32), (3, 3), 1, 0), 256), 132)
    assert plan.dy_shape == (256, points, T) and plan.v_shape == (512, points, T) and plan.p_shape == (points * S, 256, 512)


# ResNet's 3×3 layers at N 128 (and one at N 512), 64 to 512 channels, on 132 and 16 SMs: F(4×4)'s chunks never pass
# 1024 tiles (the float32 error bound of winograd.cu's header), and the bound changes only the splits that need it.
@pytest.mark.parametrize("N, C, H", [(128, 64, 56), (128, 128, 28), (128, 256, 14), (128, 512, 7), (512, 64, 56)])
@pytest.mark.parametrize("blocks_per_sm", SPLIT_BLOCKS_PER_SM)
@pytest.mark.parametrize("sms", [132, 16])
def test_winograd_4x4_filter_chunks_stay_within_their_bound(N, C, H, blocks_per_sm, sms):
    problem = conv_problem(window_geometry((N, C, H, H), (3, 3), 1, 1), C)

    def chunks(plan):
        S = plan.p_shape[0] // 36
        return S, plan.dy_shape[2] // S

    variant = filter_variant(4, blocks_per_sm)
    S, chunk = chunks(variant.plan(problem, sms))
    assert chunk <= 1024 and variant.max_chunk == 1024
    grid_S, grid_chunk = chunks(dataclasses.replace(variant, max_chunk=0).plan(problem, sms))
    assert (S, chunk) == (grid_S, grid_chunk) if grid_chunk <= 1024 else S > grid_S


@pytest.mark.parametrize("variant", VARIANTS)
def test_winograd_filter_buffers_past_32_bits_raise_before_allocation(variant):
    # V = α²·C·T_padded floats is past 2^31: 16·4096·256² (F(2×2)), 36·4096·128² (F(4×4)); DY (one filter's) is not
    problem = conv_problem(window_geometry((1, 4096, 512, 512), (3, 3), 1, 1), 1)
    with pytest.raises(ValueError, match=f"Winograd buffer V of backward-filter {re.escape(f'Winograd F({variant}x{variant}, 3x3)')}"):
        filter_variant(variant, SPLIT_BLOCKS_PER_SM[0]).plan(problem, 132)


def test_winograd_4x4_filter_is_no_candidate_past_the_gemm_grid(monkeypatch):
    # 512 images of 256² with one channel and one filter: small buffers (0.6 GB), but 2 097 152 4×4 tiles in chunks of
    # at most 1024 need 36 · 2048 gemm slices, past a grid's 65 535 layers (F(2×2)'s grid-sized chunks stay few)
    monkeypatch.setattr(device, "sm_count", lambda: 132)
    problem = conv_problem(window_geometry((512, 1, 256, 256), (3, 3), 1, 1), 1)
    with pytest.raises(ValueError, match="more slices than one gemm launch holds"):
        filter_variant(4, SPLIT_BLOCKS_PER_SM[0]).plan(problem, 132)
    plans = variants.applicable("conv2d_bwd_filter", problem)
    assert [p.m for p in plans if isinstance(p, WinogradBackwardFilter)] == [2] * len(SPLIT_BLOCKS_PER_SM)


# ---- the CUDA paths, forced -------------------------------------------------------------------------
def force_winograd(force, gemm_config=None, op="conv2d_fwd", choice=WinogradForward(2)):
    """conv2d's `op` (the forward, or conv2d_bwd_filter with a WinogradBackwardFilter) runs `choice`, its sliced GEMM the
    variant of gemm_config (the default when None); every other op its default."""
    def sliced(key, candidates):
        if gemm_config is None:
            return candidates[0]
        _, m, n, k, _, _, _ = key
        for candidate in candidates:
            if candidate.tile_config(m, n, k, device.sm_count()) == gemm_config:
                return candidate
        pytest.skip(f"{gemm_config} is not a candidate for {key}")

    force({op: choice.name, "gemm_k_slices": sliced})


# (x shape, K, padding, activation): N 1, 2 and 3; C 1, 3, 17 (a slice of the GEMM's reduction ends inside a slab),
# 65 (several slabs); K 1, 5, 33, 130 (two 128-row tiles); H, W odd and even incl. 3×3 and 4×5; T from 1 (F(4×4))
# or 2 to 272 tiles (several 128-column tiles); every activation. The 3×3 inputs have 5 filters: the norm of one
# output, a 9-term sum that may cancel, is past 1e-5 in 0.5-1.5 % of draws (a float32 emulation, both sizes).
CUDA_CASES = [
    ((2, 1, 3, 3), 5, 0, None),
    ((3, 3, 4, 5), 5, 1, "relu"),
    ((1, 17, 31, 33), 33, "same", "leaky_relu"),
    ((3, 17, 33, 31), 5, 0, "sigmoid"),
    ((1, 3, 3, 3), 33, "same", "tanh"),
    ((3, 1, 6, 8), 1, (0, 2), "relu"),
    ((2, 65, 9, 9), 130, 1, None),
]


def run_case(xp, rng, case, bias=True):
    """(ours, float64 reference) for one case."""
    x_shape, K, padding, activation = case
    x = rng.standard_normal(x_shape).astype(numpy.float32)
    w = rng.standard_normal((K, x_shape[1], 3, 3)).astype(numpy.float32)
    b = rng.standard_normal(K).astype(numpy.float32) if bias else None
    ref = F.conv2d(x.astype(numpy.float64), w.astype(numpy.float64), None if b is None else b.astype(numpy.float64),
                   1, padding, activation, 0.1)
    y = F.conv2d(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b), 1, padding, activation, 0.1)
    return y, ref


@pytest.mark.parametrize("case", CUDA_CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_winograd_matches_numpy_float64(backend, xp, rng, force, case, bias, variant):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(force, choice=WinogradForward(variant))
    y, ref = run_case(xp, rng, case, bias)
    assert y.dtype == numpy.float32 and y.shape == ref.shape
    # The transforms add a few roundings to the direct conv's: a float32 emulation of them over these cases stays
    # under 5e-7 (F(2×2)) and 1.5e-6 (F(4×4)).
    assert rel_error(y, ref) < 1e-5


@pytest.mark.parametrize("config", TILE_CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_sliced_gemm_config_matches_numpy_float64(backend, xp, rng, force, config, variant):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(force, config, choice=WinogradForward(variant))
    for case in (CUDA_CASES[2], CUDA_CASES[3], CUDA_CASES[6]):
        y, ref = run_case(xp, rng, case)
        assert rel_error(y, ref) < 1e-5, case


@pytest.mark.parametrize("variant", VARIANTS)
def test_winograd_is_bitwise_reproducible(backend, xp, rng, force, variant):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(force, choice=WinogradForward(variant))
    x = xp.asarray(rng.standard_normal((3, 17, 31, 33)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((33, 17, 3, 3)).astype(numpy.float32))
    b = xp.asarray(rng.standard_normal(33).astype(numpy.float32))
    first = to_numpy(F.conv2d(x, w, b, 1, 1, "relu"))
    assert first.tobytes() == to_numpy(F.conv2d(x, w, b, 1, 1, "relu")).tobytes()


def run_filter_case(xp, rng, case):
    """(dw, float64 reference dw) for one case (its activation unused)."""
    x_shape, K, padding, _ = case
    g = window_geometry(x_shape, (3, 3), 1, padding)
    x = rng.standard_normal(x_shape).astype(numpy.float32)
    w = rng.standard_normal((K, g.C, 3, 3)).astype(numpy.float32)
    dy = rng.standard_normal((g.N, K, g.OH, g.OW)).astype(numpy.float32)
    _, ref, _ = F.conv2d_backward(dy.astype(numpy.float64), x.astype(numpy.float64), w.astype(numpy.float64), 1,
                                  padding, compute_dx=False)
    _, dw, _ = F.conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), 1, padding, compute_dx=False)
    return dw, ref


def force_winograd_filter(force, plan=WINOGRAD_FILTER_PLANS[0], gemm_config=None):
    force_winograd(force, gemm_config, op="conv2d_bwd_filter", choice=plan)


# CUDA_CASES' shapes and one more (816 2×2, 216 4×4 tiles): on 132 SMs T from 16 to 816 2×2 tiles in 1 to 11 chunks,
# 1 to 216 4×4 tiles in 1 to 3, padded (272 as 4 × 80, 816 as 11 × 80, 216 as 3 × 80) or not (720 as 9 × 80, 192 as
# 3 × 64).
FILTER_CUDA_CASES = CUDA_CASES + [((3, 2, 31, 33), 4, 1, None)]


@pytest.mark.parametrize("case", FILTER_CUDA_CASES)
@pytest.mark.parametrize("plan", WINOGRAD_FILTER_PLANS, ids=lambda p: p.name)
def test_winograd_filter_matches_numpy_float64(backend, xp, rng, force, case, plan):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd_filter(force, plan)
    dw, ref = run_filter_case(xp, rng, case)
    assert dw.dtype == numpy.float32 and dw.shape == ref.shape
    # a CPU emulation of the transform kernels and of the products (running float32 FMA sums) stays under 6e-7
    # (F(2×2)) and 1.5e-6 (F(4×4)) over 120 draws of these cases
    assert rel_error(dw, ref) < 1e-5


@pytest.mark.parametrize("config", TILE_CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_sliced_gemm_config_of_winograd_filter_matches_numpy_float64(backend, xp, rng, force, config,
                                                                          variant):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd_filter(force, filter_variant(variant, SPLIT_BLOCKS_PER_SM[-1]), config)
    for case in (FILTER_CUDA_CASES[2], FILTER_CUDA_CASES[3], FILTER_CUDA_CASES[6], FILTER_CUDA_CASES[7]):
        dw, ref = run_filter_case(xp, rng, case)
        assert rel_error(dw, ref) < 1e-5, case


@pytest.mark.parametrize("variant", VARIANTS)
def test_winograd_filter_is_bitwise_reproducible(backend, xp, rng, force, variant):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd_filter(force, filter_variant(variant, SPLIT_BLOCKS_PER_SM[-1]))  # several chunks, summed in order
    x = xp.asarray(rng.standard_normal((3, 17, 31, 33)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((33, 17, 3, 3)).astype(numpy.float32))
    dy = xp.asarray(rng.standard_normal((3, 33, 31, 33)).astype(numpy.float32))
    first = to_numpy(F.conv2d_backward(dy, x, w, 1, 1, compute_dx=False)[1])
    assert first.tobytes() == to_numpy(F.conv2d_backward(dy, x, w, 1, 1, compute_dx=False)[1]).tobytes()
