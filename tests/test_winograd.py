"""conv2d's Winograd F(2×2, 3×3) forward (kernels/winograd.cu, the autotuner's WINOGRAD candidate): a float64
NumPy transcription of the three transforms, formula for formula as the kernels write them, equals the direct
convolution (proves the matrices, the tiling, the padding and the odd edges without a GPU); the CUDA path,
forced through pin_autotune, against NumPy in float64 on odd shapes, every activation, with and without bias,
each tile configuration of its sliced GEMM, bit for bit run to run; which layers get the candidate; the
32-bit check before any allocation."""
import numpy
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.ops.activation import numpy_activation
from cnn_gpu.ops.conv import CONV_TILES, DEFAULT_TILE, WINOGRAD, _forward_candidates, _problem, _winograd_plan
from cnn_gpu.ops.gemm import TILE_CONFIGS
from cnn_gpu.ops.geometry import window_geometry
from checks import pin_autotune, rel_error

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh"]

# The header's matrices of kernels/winograd.cu.
B_T = numpy.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=numpy.float64)
G = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=numpy.float64)
A_T = numpy.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=numpy.float64)


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


def filter_transform(w):
    """U[ξ][c][k] = (G · w[k,c] · Gᵀ)[ξ], ξ = 4·row + col."""
    K, C = w.shape[:2]
    u = filter_axis(filter_axis(w, -2), -1)  # (K, C, 4, 4)
    return u.reshape(K, C, 16).transpose(2, 1, 0)


def input_transform(x, TH, TW, pt, pl):
    """V[ξ][c][t] = (Bᵀ · d[c,t] · B)[ξ], t = (n·TH + th)·TW + tw, d[c,t] the 4×4 patch at rows 2·th − pt,
    columns 2·tw − pl of x (zeros outside x)."""
    N, C, H, W = x.shape
    padded = numpy.zeros((N, C, 2 * TH + 2, 2 * TW + 2))  # patch rows 2·th + a = h + pt, a < 4
    rows, cols = min(H, 2 * TH + 2 - pt), min(W, 2 * TW + 2 - pl)  # the part of x some patch covers
    padded[:, :, pt : pt + rows, pl : pl + cols] = x[:, :, :rows, :cols]
    patches = sliding_window_view(padded, (4, 4), axis=(2, 3))[:, :, ::2, ::2]  # (N, C, TH, TW, 4, 4)
    v = input_axis(input_axis(patches, -2), -1)
    return v.reshape(N, C, TH, TW, 16).transpose(4, 1, 0, 2, 3).reshape(16, C, N * TH * TW)


def output_transform(M, b, N, OH, OW, TH, TW, activation, slope):
    """y[n, k, 2·th + i, 2·tw + j] = act(b[k] + (Aᵀ · M[·][k][t] · A)[i][j]) for the outputs inside y."""
    K = M.shape[1]
    m = M.reshape(4, 4, K, N, TH, TW).transpose(3, 2, 4, 5, 0, 1)  # (N, K, TH, TW, 4, 4)
    tiles = output_axis(output_axis(m, -2), -1)  # (N, K, TH, TW, 2, 2)
    y = tiles.transpose(0, 1, 2, 4, 3, 5).reshape(N, K, 2 * TH, 2 * TW)[:, :, :OH, :OW]
    if b is not None:
        y = y + b[:, None, None]
    return numpy_activation(y, activation, slope)


def winograd_conv2d(x, w, b, padding, activation=None, slope=0.01):
    g = window_geometry(x.shape, w.shape[2:], 1, padding)
    TH, TW = -(-g.OH // 2), -(-g.OW // 2)
    U = filter_transform(w)
    V = input_transform(x, TH, TW, g.pad_top, g.pad_left)
    M = numpy.einsum("xck,xct->xkt", U, V)  # the 16 products
    return output_transform(M, b, g.N, g.OH, g.OW, TH, TW, activation, slope)


# ---- the transcription against the direct convolution (NumPy only) ------------------------------------
def test_axis_transforms_are_the_header_matrices(rng):
    v = rng.standard_normal((4, 4))
    assert numpy.allclose(input_axis(v, -2), B_T @ v, rtol=0, atol=1e-15)
    assert numpy.allclose(input_axis(v, -1), v @ B_T.T, rtol=0, atol=1e-15)
    g = rng.standard_normal((3, 3))
    assert numpy.allclose(filter_axis(filter_axis(g, -2), -1), G @ g @ G.T, rtol=0, atol=1e-15)
    assert numpy.allclose(output_axis(output_axis(v, -2), -1), A_T @ v @ A_T.T, rtol=0, atol=1e-15)


# (x shape, K, padding): a 3×3 input (one output), odd and even H, W (odd OH / OW drop a tile's last row or
# column), padding 0, 1, 2, asymmetric and 'same', patches past the bottom / right edge of x.
TRANSCRIPTION_CASES = [
    ((1, 1, 3, 3), 1, 0),
    ((3, 3, 4, 5), 5, 1),
    ((1, 17, 31, 33), 33, "same"),
    ((3, 2, 33, 31), 5, 0),
    ((2, 3, 6, 8), 3, (0, 2)),
    ((1, 4, 5, 4), 2, (2, 1)),
    ((2, 3, 1, 2), 4, 1),
]


@pytest.mark.parametrize("x_shape, K, padding", TRANSCRIPTION_CASES)
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_transcribed_transforms_equal_direct_conv(rng, x_shape, K, padding, activation):
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((K, x_shape[1], 3, 3))
    b = rng.standard_normal(K)
    ref = F.conv2d(x, w, b, 1, padding, activation, 0.2)  # float64 NumPy path (test_conv checks it against a loop)
    y = winograd_conv2d(x, w, b, padding, activation, 0.2)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < 1e-12


# ---- which layers get the candidate; the 32-bit check ---------------------------------------------------
@pytest.mark.parametrize("window, stride, eligible", [((3, 3), 1, True), ((3, 3), 2, False), ((3, 3), (1, 2), False),
                                                      ((5, 5), 1, False), ((3, 1), 1, False), ((1, 1), 1, False)])
def test_winograd_is_a_candidate_for_3x3_stride_1_only(window, stride, eligible):
    g = window_geometry((2, 3, 9, 9), window, stride, 1)
    candidates = _forward_candidates(g)
    assert candidates[0] == DEFAULT_TILE  # what CNN_GPU_AUTOTUNE=0 runs: never Winograd
    assert candidates == (CONV_TILES + (WINOGRAD,) if eligible else CONV_TILES)


def test_winograd_buffers_past_32_bits_raise_before_allocation():
    # 4096 channels of 512²: x, y and the pixel counts fit in 32 bits, V = 16·C·T = 16·4096·256² does not
    problem = _problem(window_geometry((1, 4096, 512, 512), (3, 3), 1, 1), 1)
    with pytest.raises(ValueError, match="Winograd buffer V"):
        _winograd_plan(problem)


# ---- the CUDA path, forced --------------------------------------------------------------------------
def force_winograd(monkeypatch, gemm_config=None):
    """conv2d's forward runs WINOGRAD, its sliced GEMM gemm_config (the default candidate when None)."""
    def choose(family, key, candidates):
        if family == "conv2d":
            assert key[0] == "conv2d_fwd_bias_act" and WINOGRAD in candidates, key
            return WINOGRAD
        assert family == "gemm" and key[0] == "k_slices", (family, key)
        if gemm_config is None:
            return candidates[0]
        if gemm_config not in candidates:
            pytest.skip(f"{gemm_config} is not a candidate for {key}")
        return gemm_config

    pin_autotune(monkeypatch, choose)


# (x shape, K, padding, activation): N 1 and 3; C 1, 3, 17 (a slice of the GEMM's reduction ends inside a slab),
# 65 (several slabs); K 1, 5, 33, 130 (two 128-row tiles); H, W odd and even incl. 3×3 and 4×5; T from 1 to 272
# tiles (several 128-column tiles); every activation.
CUDA_CASES = [
    ((1, 1, 3, 3), 1, 0, None),
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
def test_winograd_matches_numpy_float64(backend, xp, rng, monkeypatch, case, bias):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(monkeypatch)
    y, ref = run_case(xp, rng, case, bias)
    assert y.dtype == numpy.float32 and y.shape == ref.shape
    # The transforms add a few roundings to the direct conv's; C ≤ 65 here keeps them far below 1e-5.
    assert rel_error(y, ref) < 1e-5


@pytest.mark.parametrize("config", TILE_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_every_sliced_gemm_config_matches_numpy_float64(backend, xp, rng, monkeypatch, config):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(monkeypatch, config)
    for case in (CUDA_CASES[2], CUDA_CASES[3], CUDA_CASES[6]):
        y, ref = run_case(xp, rng, case)
        assert rel_error(y, ref) < 1e-5, case


def test_winograd_is_bitwise_reproducible(backend, xp, rng, monkeypatch):
    if backend != "cuda":
        pytest.skip("Winograd is a CUDA-path variant")
    force_winograd(monkeypatch)
    x = xp.asarray(rng.standard_normal((3, 17, 31, 33)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((33, 17, 3, 3)).astype(numpy.float32))
    b = xp.asarray(rng.standard_normal(33).astype(numpy.float32))
    first = to_numpy(F.conv2d(x, w, b, 1, 1, "relu"))
    assert first.tobytes() == to_numpy(F.conv2d(x, w, b, 1, 1, "relu")).tobytes()
