"""conv2d / conv2d_backward: forward against a plain float64 loop, backward against finite differences,
CUDA against NumPy (float64) on odd shapes, every autotuner candidate (tile variant) pinned against NumPy
and through the NVRTC no-spill check, backward's compute_dx / compute_dw, bit-reproducible backward,
torch.nn.functional where torch is installed, and one test per bad-input rule."""
import math

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.cuda.loader import family_defines
from cnn_gpu.cuda import device, variants
from cnn_gpu.ops.conv import direct, implicit_gemm
from cnn_gpu.ops import geometry as geometry_ops
from cnn_gpu.ops.conv import (CONV_TILES, DEFAULT_TILE, SPLIT_BLOCKS_PER_SM, BackwardDataAsForward, FewChannelsBackwardFilter,
                              ImplicitGemmBackwardData, ImplicitGemmBackwardFilter, ImplicitGemmForward, _numpy_conv2d,
                              as_forward_geometry, conv_problem, flipped_filters)
from cnn_gpu.ops.geometry import window_geometry
import checks
from checks import compile_variant_without_spills, naive_axis, numeric_grad, pair, rel_error

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh"]


def naive_activation(v, name, slope):
    if name == "relu":
        return max(v, 0.0)
    if name == "leaky_relu":
        return v if v > 0 else slope * v
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-v))
    if name == "tanh":
        return math.tanh(v)
    return v


def naive_conv2d(x, w, b=None, stride=1, padding=0, activation=None, slope=0.01):
    """The definition, one multiply-add at a time, in float64, then the activation."""
    (_, _, H, W), (_, _, R, S) = x.shape, w.shape
    sh, sw = pair(stride)
    ph, pw = (padding, padding) if isinstance(padding, str) else pair(padding)
    (top, OH), (left, OW) = naive_axis(H, R, sh, ph), naive_axis(W, S, sw, pw)
    pads = (top, (OH - 1) * sh + R - H - top, left, (OW - 1) * sw + S - W - left)
    return numpy.vectorize(lambda v: naive_activation(v, activation, slope))(checks.naive_conv2d(x, w, b, (sh, sw), pads))


def inputs(rng, x_shape, w_shape, dtype=numpy.float32, bias=True):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


# ---- NumPy forward against the definition --------------------------------------------------------
# (x shape, w shape, stride, padding): odd sizes, strides 1-3, padding 0-2, 'same' with even kernels
# (asymmetric pads), 'valid', non-square kernels, batch 1.
FORWARD_CASES = [
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0),
    ((1, 2, 5, 7), (3, 2, 3, 3), 1, 0),
    ((2, 3, 7, 6), (2, 3, 3, 3), 1, 1),
    ((1, 2, 9, 8), (3, 2, 3, 2), 2, 2),
    ((2, 1, 8, 9), (2, 1, 2, 3), 3, (1, 0)),
    ((1, 3, 6, 5), (2, 3, 2, 2), 1, "same"),
    ((1, 2, 7, 6), (3, 2, 4, 3), 2, "same"),
    ((2, 2, 5, 8), (2, 2, 3, 4), (1, 3), "same"),
    ((1, 2, 6, 7), (2, 2, 5, 5), 1, "valid"),
    ((1, 2, 3, 3), (2, 2, 5, 4), 1, 2),
]


def case_id(case):
    xs, ws, s, p = case
    return f"x{'x'.join(map(str, xs))}-w{'x'.join(map(str, ws))}-s{s}-p{p}".replace(" ", "")


@pytest.mark.parametrize("case", FORWARD_CASES, ids=case_id)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_naive(rng, case, bias):
    x_shape, w_shape, stride, padding = case
    x, w, b = inputs(rng, x_shape, w_shape, bias=bias)
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    ref = naive_conv2d(x, w, b, stride, padding)
    assert y.shape == ref.shape and y.dtype == numpy.float32 and y.flags.c_contiguous
    assert rel_error(y, ref) < 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_activation_matches_naive(rng, activation):
    x, w, b = inputs(rng, (2, 3, 6, 5), (4, 3, 3, 2))
    y = F.conv2d(x, w, b, stride=(1, 2), padding="same", activation=activation, negative_slope=0.2)
    assert rel_error(y, naive_conv2d(x, w, b, (1, 2), "same", activation, 0.2)) < 1e-6


def test_float64_forward_is_exact(rng):
    x, w, b = inputs(rng, (1, 2, 5, 6), (3, 2, 3, 3), dtype=numpy.float64)
    y = F.conv2d(x, w, b, padding=1)
    assert y.dtype == numpy.float64
    assert rel_error(y, naive_conv2d(x, w, b, 1, 1)) < 1e-14


# ---- NumPy backward against finite differences --------------------------------------------------
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 2, 5, 6), (3, 2, 3, 3), 1, 1),
    ((1, 3, 7, 6), (2, 3, 2, 3), (2, 3), "same"),
    ((2, 1, 6, 5), (2, 1, 4, 2), 3, (2, 1)),
])
def test_backward_finite_differences(rng, x_shape, w_shape, stride, padding):
    x, w, b = inputs(rng, x_shape, w_shape, dtype=numpy.float64)
    dy = rng.standard_normal(F.conv2d(x, w, b, stride, padding).shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert rel_error(dx, numeric_grad(lambda v: F.conv2d(v, w, b, stride, padding), x, dy)) < 1e-7
    assert rel_error(dw, numeric_grad(lambda v: F.conv2d(x, v, b, stride, padding), w, dy)) < 1e-7
    assert rel_error(db, numeric_grad(lambda v: F.conv2d(x, w, v, stride, padding), b, dy)) < 1e-7


# ---- CUDA against NumPy (float64) -----------------------------------------------------------------
# Odd sizes that divide no tile; several filter and pixel tiles; C·R·S and K·R·S past one BK step;
# N·OH·OW long enough that dw and db are split over several blocks (sum_splits_bias_act).
BACKEND_CASES = [
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0),
    ((2, 3, 17, 13), (17, 3, 3, 3), 1, 1),
    ((3, 17, 33, 31), (3, 17, 5, 5), 2, "same"),
    ((2, 5, 9, 33), (7, 5, 2, 4), (2, 3), "same"),
    ((4, 8, 12, 12), (9, 8, 1, 1), 2, 0),
    ((2, 3, 7, 7), (5, 3, 7, 7), 1, 3),
    ((65, 1, 5, 5), (3, 1, 3, 3), 1, "valid"),
    ((1, 64, 15, 15), (130, 64, 3, 3), 1, 1),
    ((3, 33, 1, 17), (65, 33, 1, 3), (1, 3), (0, 2)),
    ((8, 1, 28, 28), (32, 1, 3, 3), 1, "same"),
    ((5, 31, 11, 9), (127, 31, 3, 3), 3, 2),
]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=case_id)
def test_forward_matches_numpy_float64(backend, xp, rng, case):
    x_shape, w_shape, stride, padding = case
    x, w, b = inputs(rng, x_shape, w_shape)
    activation = "leaky_relu" if x_shape[0] % 2 else None  # the epilogue on some cases, plain on others
    ref = F.conv2d(x.astype(numpy.float64), w.astype(numpy.float64), b.astype(numpy.float64), stride, padding, activation, 0.1)
    y = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, padding, activation, 0.1)
    assert y.dtype == numpy.float32 and y.shape == ref.shape
    assert rel_error(y, ref) < 1e-5


@pytest.mark.parametrize("case", BACKEND_CASES, ids=case_id)
def test_backward_matches_numpy_float64(backend, xp, rng, case):
    x_shape, w_shape, stride, padding = case
    x, w, _ = inputs(rng, x_shape, w_shape, bias=False)
    out_shape = F.conv2d(x, w, stride=stride, padding=padding).shape
    dy = rng.standard_normal(out_shape).astype(numpy.float32)
    refs = F.conv2d_backward(*(a.astype(numpy.float64) for a in (dy, x, w)), stride, padding)
    ours = F.conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), stride, padding)
    for name, got, ref in zip(("dx", "dw", "db"), ours, refs):
        assert got.dtype == numpy.float32 and got.shape == ref.shape, name
        assert rel_error(got, ref) < 1e-5, name


# ---- every autotuner candidate, pinned ----------------------------------------------------------------
# More than 128 filters and pixels (several tiles of the widest variant), C·R·S and K·R·S past one BK
# step, strides and 'same' padding; backward-filter also at each of its split targets. The B loaders
# gather 4 consecutive GEMM columns per chunk and the epilogues store 4 consecutive pixels, so also:
# images of 1 and 3 pixels (image boundaries inside a chunk, several per chunk), odd pixel counts
# (OH·OW = 225, 15; H·W = 63), pixel and C·R·S counts not multiples of 4 nor of any BN / BK (C·R·S = 5,
# 18, 279, 425), strides 2 and 3 with padding (backward-data's exact-quotient phases), 1×1 kernels, N = 1.
PINNED_CASES = [
    ((1, 64, 15, 15), (130, 64, 3, 3), 1, 1),
    ((3, 17, 33, 31), (3, 17, 5, 5), 2, "same"),
    ((5, 31, 11, 9), (127, 31, 3, 3), 3, 2),
    ((7, 5, 3, 1), (9, 5, 1, 1), 1, 0),
    ((2, 3, 9, 7), (33, 3, 2, 3), (2, 3), (1, 2)),
    ((1, 2, 1, 1), (5, 2, 3, 3), 1, 1),
]


@pytest.mark.parametrize("tile", CONV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_every_tile_matches_numpy_float64(backend, xp, rng, force, tile):
    if backend != "cuda":
        pytest.skip("tile variants are a CUDA-path choice")
    for blocks_per_sm in SPLIT_BLOCKS_PER_SM:
        split_forwards = []

        def forward(key, candidates):
            choice = ImplicitGemmForward(tile)
            # a grid too small for the GPU: the forward's C·R·S split of this tile (one variant per distinct split,
            # so the one offered may carry the other blocks_per_sm)
            split = [c for c in candidates if isinstance(c, ImplicitGemmForward) and c.tile == tile and c.blocks_per_sm]
            if split:
                choice = split[-1] if blocks_per_sm == SPLIT_BLOCKS_PER_SM[-1] else split[0]
                split_forwards.append(key)
            assert choice in candidates, (key, choice)
            return choice

        force({"conv2d_fwd": forward, "conv2d_bwd_data": ImplicitGemmBackwardData(tile).name,
               "conv2d_bwd_filter": ImplicitGemmBackwardFilter(tile, blocks_per_sm).name})
        for x_shape, w_shape, stride, padding in PINNED_CASES:
            x, w, b = inputs(rng, x_shape, w_shape)
            f64 = [a.astype(numpy.float64) for a in (x, w, b)]
            y = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, padding, "relu")
            assert rel_error(y, F.conv2d(*f64, stride, padding, "relu")) < 1e-5, (x_shape, w_shape)
            dy = rng.standard_normal(y.shape).astype(numpy.float32)
            refs = F.conv2d_backward(dy.astype(numpy.float64), f64[0], f64[1], stride, padding)
            for name, got, ref in zip(("dx", "dw", "db"), F.conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), stride, padding), refs):
                assert rel_error(got, ref) < 1e-5, (x_shape, w_shape, blocks_per_sm, name)
        assert split_forwards, "no pinned case ran a split forward"  # PINNED_CASES[0] (C·R·S 576, 225 pixels) does


# ---- backward-data as a forward convolution (the BackwardDataAsForward variant) ---------------------------
# (x shape, w shape, padding), stride 1: valid (a full convolution of dy), pads 1 and R−1, 'same' with even
# windows (asymmetric pads), a rectangular window, pads differing per axis, 1×1, odd sizes, one-pixel-wide x.
AS_FORWARD_CASES = [
    ((2, 3, 9, 7), (5, 3, 3, 3), 0),
    ((1, 17, 15, 15), (33, 17, 3, 3), 1),
    ((3, 4, 8, 6), (2, 4, 3, 3), 2),
    ((2, 5, 7, 9), (3, 5, 4, 2), "same"),
    ((1, 6, 5, 7), (7, 6, 5, 3), (4, 0)),
    ((3, 2, 3, 1), (4, 2, 1, 1), 0),
]


@pytest.mark.parametrize("x_shape, w_shape, padding", AS_FORWARD_CASES)
def test_backward_data_as_forward_conv_equals_col2im(rng, x_shape, w_shape, padding):
    """The candidate's identity, in float64 on the NumPy path: conv2d(dy, flipped w) under the as-forward
    geometry is the col2im backward's dx (itself checked against finite differences above)."""
    g = window_geometry(x_shape, w_shape[2:], 1, padding)
    assert BackwardDataAsForward().applies(conv_problem(g, w_shape[0]))
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((x_shape[0], w_shape[0], g.OH, g.OW))
    dx, _, _ = F.conv2d_backward(dy, x, w, 1, padding, compute_dw=False)
    as_forward = _numpy_conv2d(dy, flipped_filters(numpy, w), None, as_forward_geometry(g, w_shape[0]), None, 0.0)
    assert as_forward.shape == x_shape
    assert rel_error(as_forward, dx) < 1e-12


@pytest.mark.parametrize("window, stride, padding, eligible", [
    ((3, 3), 1, 0, True), ((3, 3), 1, 2, True), ((5, 5), 1, "same", True), ((1, 1), 1, 0, True),
    ((3, 3), 2, 1, False), ((3, 3), (1, 2), 1, False), ((3, 3), 1, 3, False), ((3, 3), 1, (1, 3), False),
    ((1, 1), 1, 1, False)])
def test_backward_data_as_forward_candidate_only_where_exact(window, stride, padding, eligible):
    candidates = variants.applicable("conv2d_bwd_data", conv_problem(window_geometry((2, 3, 9, 9), window, stride, padding), 4))
    assert candidates[0] == ImplicitGemmBackwardData(DEFAULT_TILE)  # what CNN_GPU_AUTOTUNE=0 runs
    tiles = tuple(ImplicitGemmBackwardData(tile) for tile in CONV_TILES)
    assert candidates == (tiles + (BackwardDataAsForward(),) if eligible else tiles)


@pytest.mark.parametrize("x_shape, w_shape, padding", AS_FORWARD_CASES)
def test_backward_data_as_forward_matches_numpy_float64(backend, xp, rng, force, x_shape, w_shape, padding):
    """BackwardDataAsForward forced, through each of the forward's own variants (Winograd for the 3×3 cases)."""
    if backend != "cuda":
        pytest.skip("BackwardDataAsForward is a CUDA-path variant")
    g = window_geometry(x_shape, w_shape[2:], 1, padding)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((x_shape[0], w_shape[0], g.OH, g.OW))
    dx_ref, _, db_ref = F.conv2d_backward(dy, x, w, 1, padding, compute_dw=False)
    x32, w32, dy32 = (xp.asarray(a.astype(numpy.float32)) for a in (x, w, dy))
    for forward in variants.applicable("conv2d_fwd", conv_problem(as_forward_geometry(g, w_shape[0]), x_shape[1])):
        force({"conv2d_bwd_data": BackwardDataAsForward().name, "conv2d_fwd": forward.name})
        dx, dw, db = F.conv2d_backward(dy32, x32, w32, 1, padding, compute_dw=False)
        assert dw is None and dx.dtype == numpy.float32 and dx.shape == x_shape
        assert rel_error(dx, dx_ref) < 1e-5, forward
        assert rel_error(db, db_ref) < 1e-5, forward


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("tile", CONV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_every_tile_compiles_without_spills(tile, arch):
    compile_variant_without_spills("conv2d", arch, tile.defines)


# ---- backward without dx or without dw --------------------------------------------------------------
@pytest.mark.parametrize("compute_dx, compute_dw", [(False, True), (True, False), (False, False)])
def test_backward_skips_the_gradients_not_asked_for(backend, xp, rng, compute_dx, compute_dw):
    x, w, _ = inputs(rng, (3, 5, 9, 11), (7, 5, 3, 3), bias=False)
    dy = xp.asarray(rng.standard_normal((3, 7, 5, 6)).astype(numpy.float32))
    args = (dy, xp.asarray(x), xp.asarray(w), 2, "same")
    full = [to_numpy(g) for g in F.conv2d_backward(*args)]
    partial = F.conv2d_backward(*args, compute_dx=compute_dx, compute_dw=compute_dw)
    for name, wanted, got, ref in zip(("dx", "dw", "db"), (compute_dx, compute_dw, True), partial, full):
        if wanted:  # the same kernels (the same tuned variant) as the full call: the same bits
            assert to_numpy(got).tobytes() == ref.tobytes(), name
        else:
            assert got is None, name


def test_backward_flags_are_keyword_only():
    x, w, _ = inputs(numpy.random.default_rng(0), (1, 1, 5, 5), (1, 1, 3, 3), bias=False)
    with pytest.raises(TypeError):
        F.conv2d_backward(numpy.ones((1, 1, 3, 3), numpy.float32), x, w, 1, 0, False)


def test_all_activations_on_backend(backend, xp, rng):
    x, w, b = inputs(rng, (3, 5, 9, 11), (17, 5, 3, 3))
    for activation in ACTIVATIONS:
        ref = F.conv2d(x.astype(numpy.float64), w.astype(numpy.float64), b.astype(numpy.float64), 1, "same", activation, 0.3)
        y = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), 1, "same", activation, 0.3)
        assert rel_error(y, ref) < 1e-5, activation


def test_non_contiguous_inputs_accepted(backend, xp, rng):
    x, w, _ = inputs(rng, (2, 3, 10, 14), (3, 4, 3, 3), bias=False)
    x_view = xp.asarray(x)[:, :, :, ::2]               # strided
    w_view = xp.asarray(w).transpose(1, 0, 2, 3)       # (4, 3, 3, 3), Fortran-ish
    b_view = xp.asarray(rng.standard_normal(8).astype(numpy.float32))[::2]   # strided
    ref_args = [to_numpy(a).astype(numpy.float64) for a in (x_view, w_view, b_view)]
    y = F.conv2d(x_view, w_view, b_view, 1, 1)
    assert rel_error(y, naive_conv2d(*ref_args, 1, 1)) < 1e-5
    dy = xp.asarray(rng.standard_normal((2, 4, 10, 7)).astype(numpy.float32))[:, :, ::-1]
    grads = F.conv2d_backward(dy, x_view, w_view, 1, 1)
    refs = F.conv2d_backward(to_numpy(dy).astype(numpy.float64), ref_args[0], ref_args[1], 1, 1)
    for got, ref in zip(grads, refs):
        assert rel_error(got, ref) < 1e-5


def test_backward_is_bitwise_reproducible(backend, xp, rng):
    """dw and db are reduced through split partials (no atomics): two runs give the same bits."""
    x, w, _ = inputs(rng, (16, 16, 32, 32), (16, 16, 3, 3), bias=False)
    dy = rng.standard_normal((16, 16, 32, 32)).astype(numpy.float32)
    args = (xp.asarray(dy), xp.asarray(x), xp.asarray(w), 1, 1)
    first = [to_numpy(g) for g in F.conv2d_backward(*args)]
    second = [to_numpy(g) for g in F.conv2d_backward(*args)]
    for name, a, b in zip(("dx", "dw", "db"), first, second):
        assert a.tobytes() == b.tobytes(), name


# ---- torch.nn.functional, where installed ---------------------------------------------------------
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 3, 11, 9), (5, 3, 3, 3), 1, 1),
    ((1, 4, 12, 13), (3, 4, 5, 3), (2, 3), (2, 1)),
    ((2, 2, 8, 7), (3, 2, 4, 2), 1, "same"),  # even kernel: torch pads the extra row/column at the end too
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_matches_torch(backend, xp, rng, x_shape, w_shape, stride, padding):
    torch = pytest.importorskip("torch")
    x, w, b = inputs(rng, x_shape, w_shape, dtype=numpy.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    cast = (lambda a: xp.asarray(a.astype(numpy.float32))) if backend == "cuda" else (lambda a: a)
    y = F.conv2d(cast(x), cast(w), cast(b), stride, padding)
    tol = 1e-5 if backend == "cuda" else 1e-12
    assert rel_error(y, ty.detach().numpy()) < tol
    for got, ref in zip(F.conv2d_backward(cast(dy), cast(x), cast(w), stride, padding), (tx.grad, tw.grad, tb.grad)):
        assert rel_error(got, ref.numpy()) < tol


# ---- the default variant is the family's defines (the kernel file has none of its own: test_kernels_compile) --
def test_default_tile_is_the_families_default_variant():
    assert DEFAULT_TILE.defines.items() <= family_defines("conv2d").items()
    assert CONV_TILES[0] == DEFAULT_TILE  # the autotuner's default, what CNN_GPU_AUTOTUNE=0 runs


# ---- bad inputs: one rule each ---------------------------------------------------------------------
def f32(*shape):
    return numpy.ones(shape, numpy.float32)


def test_rejects_x_wrong_ndim():
    with pytest.raises(ValueError, match=r"x must be 4-D .*\(1, 5, 5\)"):
        F.conv2d(f32(1, 5, 5), f32(2, 1, 3, 3))


def test_rejects_w_wrong_ndim():
    with pytest.raises(ValueError, match=r"w must be 4-D .*\(2, 1, 3\)"):
        F.conv2d(f32(1, 1, 5, 5), f32(2, 1, 3))


def test_rejects_b_wrong_ndim():
    with pytest.raises(ValueError, match=r"b must be 1-D .*\(2, 1\)"):
        F.conv2d(f32(1, 1, 5, 5), f32(2, 1, 3, 3), f32(2, 1))


def test_rejects_dy_wrong_ndim():
    with pytest.raises(ValueError, match=r"dy must be 4-D .*\(2, 3, 3\)"):
        F.conv2d_backward(f32(2, 3, 3), f32(1, 1, 5, 5), f32(2, 1, 3, 3))


def test_rejects_channel_mismatch():
    with pytest.raises(ValueError, match=r"w has 2 input channels \(shape \(4, 2, 3, 3\)\) but x has 3 \(shape \(1, 3, 5, 5\)\)"):
        F.conv2d(f32(1, 3, 5, 5), f32(4, 2, 3, 3))


def test_rejects_bias_shape():
    with pytest.raises(ValueError, match=r"b must have shape \(K,\) = \(4,\) .* got shape \(3,\)"):
        F.conv2d(f32(1, 2, 5, 5), f32(4, 2, 3, 3), f32(3))


def test_rejects_dy_shape():
    with pytest.raises(ValueError, match=r"dy must have the conv2d output shape \(1, 4, 3, 3\) .* got shape \(1, 4, 5, 5\)"):
        F.conv2d_backward(f32(1, 4, 5, 5), f32(1, 2, 5, 5), f32(4, 2, 3, 3))


def test_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"w \(5, 3\) is larger than the padded input \(4, 6\)"):
        F.conv2d(f32(1, 1, 4, 4), f32(1, 1, 5, 3), padding=(0, 1))


def test_rejects_empty_x():
    with pytest.raises(ValueError, match=r"x must have positive sizes, got shape \(0, 1, 5, 5\)"):
        F.conv2d(f32(0, 1, 5, 5), f32(1, 1, 3, 3))


def test_rejects_empty_w():
    with pytest.raises(ValueError, match=r"w must have positive sizes, got shape \(0, 1, 3, 3\)"):
        F.conv2d(f32(1, 1, 5, 5), f32(0, 1, 3, 3))


def test_rejects_non_positive_stride():
    with pytest.raises(ValueError, match="stride must be >= 1"):
        F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), stride=(1, 0))


def test_rejects_negative_padding():
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.conv2d_backward(f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding=-1)


def test_rejects_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'valid' or 'same'"):
        F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding="full")


def test_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), activation="gelu")


def test_rejects_negative_slope():
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), activation="leaky_relu", negative_slope=-0.1)


def test_geometry_is_remembered_per_exact_arguments():
    """window_geometry's cache: each shape and argument set gets the geometry a fresh computation gives; an argument
    equal to a remembered one but of another type is still checked as uncached: refused (bool, float, NumPy integer)
    or (a list) accepted with the pair's geometry."""
    fresh = geometry_ops._window_geometry
    for args in [((2, 3, 9, 9), (3, 3), 1, 0), ((2, 3, 9, 8), (3, 3), 1, 0), ((2, 3, 9, 9), (3, 2), (2, 1), (1, 0)),
                 ((2, 3, 9, 9), (3, 3), 2, "same"), ((2, 3, 9, 9), (3, 3), 1, "valid")]:
        for _ in range(2):  # computed, then remembered
            assert window_geometry(*args, window_name="w") == fresh(*args, "x", "w")
    x, w = f32(1, 1, 5, 5), f32(1, 1, 3, 3)
    F.conv2d(x, w, stride=1, padding=1)
    for stride in (True, 1.0, numpy.int64(1)):
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            F.conv2d(x, w, stride=stride, padding=1)
    for padding in (True, (1, True), 1.0):
        with pytest.raises(ValueError, match="padding must be an int or a pair of ints"):
            F.conv2d(x, w, padding=padding)
    assert F.conv2d(x, w, stride=[1, 2], padding=1).shape == F.conv2d(x, w, stride=(1, 2), padding=1).shape == (1, 1, 5, 3)


def test_direct_launches_are_remembered_per_problem_and_epilogue(monkeypatch):
    """A remembered plan (cnn_gpu.cuda.variants.planned) serves only its own problem, variant, activation and slope."""
    monkeypatch.setattr(implicit_gemm, "_kernel", lambda name, tile=DEFAULT_TILE: (name, tile))  # no compilation

    def launch(problem, tile, act, slope):
        return variants.planned(ImplicitGemmForward(tile), problem, act, slope)
    variants.planned.cache_clear()
    try:
        first = conv_problem(window_geometry((2, 3, 9, 9), (3, 3), 1, 0), 4)
        other = conv_problem(window_geometry((2, 3, 9, 8), (3, 3), 1, 0), 4)
        base = launch(first, DEFAULT_TILE, 1, 0.01)
        assert base.scalars[:len(first.args)] == first.args and base.kernel == ("conv2d_fwd_bias_act", DEFAULT_TILE)
        assert launch(other, DEFAULT_TILE, 1, 0.01).scalars[:len(other.args)] == other.args != first.args
        assert launch(first, CONV_TILES[1], 1, 0.01).kernel == ("conv2d_fwd_bias_act", CONV_TILES[1])
        assert launch(first, DEFAULT_TILE, 2, 0.01).scalars[len(first.args)] == 2
        assert launch(first, DEFAULT_TILE, 2, 0.5).scalars[len(first.args) + 1] == numpy.float32(0.5)
        assert launch(first, DEFAULT_TILE, 1, 0.01) is base
    finally:
        variants.planned.cache_clear()  # no entry holds the stand-in kernels


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be float"):
        F.conv2d(numpy.ones((1, 1, 5, 5), numpy.int32), f32(1, 1, 3, 3))


def test_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="operands must share one dtype: x is float64, w is float32"):
        F.conv2d(numpy.ones((1, 1, 5, 5)), f32(1, 1, 3, 3))


def test_rejects_list_input():
    with pytest.raises(TypeError, match="w must be a numpy.ndarray"):
        F.conv2d(f32(1, 1, 5, 5), [[[[1.0]]]])


def test_rejects_float64_on_cuda(backend, xp):
    if backend != "cuda":
        pytest.skip("float64 is accepted on NumPy")
    with pytest.raises(TypeError, match="x must be float32 on the cuda backend"):
        F.conv2d(xp.ones((1, 1, 5, 5)), xp.ones((1, 1, 3, 3), dtype=numpy.float32))


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.conv2d_backward(xp.ones((1, 1, 3, 3), dtype=numpy.float32), f32(1, 1, 5, 5), f32(1, 1, 3, 3))


# ---- backward-filter for few input channels (the FewChannelsBackwardFilter variant) ------------------------
# conv2d_bwd_filter_few_channels is compiled per layer (C, R, S, column stride) and walks strips of 4 output pixels:
# images whose OH·OW is a multiple of 4 (float4 dy) and is not (scalar dy), strips crossing output rows (OW % 4 != 0)
# and spanning several (OW < 4), row and column strides 2-3, asymmetric 'same' pads, a one-column x, K past several
# filter groups and not a multiple of one, 1-3 channels, the MNIST network's conv1 (2 splits) and 6400 strips (12 splits).
FEW_CHANNELS_CASES = [
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0),
    ((2, 1, 6, 9), (5, 1, 3, 3), 1, 0),
    ((3, 1, 17, 13), (33, 1, 3, 3), 1, "same"),
    ((2, 2, 9, 7), (7, 2, 3, 3), (2, 1), 1),
    ((3, 2, 11, 10), (17, 2, 3, 3), 2, 1),
    ((2, 3, 10, 11), (9, 3, 3, 3), 1, "same"),
    ((9, 1, 28, 28), (32, 1, 5, 5), 1, 0),
    ((2, 3, 7, 1), (9, 3, 1, 3), 1, (0, 2)),
    ((4, 1, 31, 33), (127, 1, 3, 3), 3, 2),
    ((2, 1, 9, 5), (4, 1, 2, 4), (1, 3), "same"),
    ((16, 1, 41, 39), (33, 1, 3, 3), 1, 1),
]


def few_channels_problem(x_shape, w_shape, stride, padding):
    return conv_problem(window_geometry(x_shape, w_shape[2:], stride, padding), w_shape[0])


def few_channels_plans(problem):
    """The FewChannelsBackwardFilter variants backward-filter offers on this layer (one per distinct grid)."""
    return [v for v in variants.applicable("conv2d_bwd_filter", problem) if isinstance(v, FewChannelsBackwardFilter)]


# (x shape, w shape, stride, offered): the 100×100 and the MNIST networks' conv1; RGB 3×3 at strides 1 and 2 (2 and 1 filters
# a thread); 2 channels of 4×4 (32 taps, the cap); 36 taps; RGB 7×7; a 1×1 layer of 32 channels (32 taps, but its 32
# tap rows of x would not fit the registers).
@pytest.mark.parametrize("x_shape, w_shape, stride, offered", [
    ((128, 1, 100, 100), (512, 1, 3, 3), 1, True), ((1024, 1, 28, 28), (32, 1, 5, 5), 1, True),
    ((8, 3, 32, 32), (64, 3, 3, 3), 1, True), ((8, 3, 32, 32), (64, 3, 3, 3), 2, True),
    ((8, 2, 16, 16), (16, 2, 4, 4), 1, True), ((8, 4, 16, 16), (16, 4, 3, 3), 1, False),
    ((8, 3, 64, 64), (64, 3, 7, 7), 2, False), ((8, 32, 16, 16), (16, 32, 1, 1), 1, False)])
def test_few_channels_is_a_candidate_for_few_taps_only(monkeypatch, x_shape, w_shape, stride, offered):
    monkeypatch.setattr(device, "sm_count", lambda: 132)  # the split variants are sized for the device
    problem = few_channels_problem(x_shape, w_shape, stride, 0)
    plans = variants.applicable("conv2d_bwd_filter", problem)
    assert plans[0] == ImplicitGemmBackwardFilter(DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[0])  # CNN_GPU_AUTOTUNE=0's
    few = few_channels_plans(problem)
    assert bool(few) == offered and tuple(few) == plans[len(plans) - len(few):]
    if offered:  # the first blocks-an-SM target, then each other one whose grid differs
        assert few[0] == FewChannelsBackwardFilter(SPLIT_BLOCKS_PER_SM[0])
        grids = [v.kernel_plan(problem, 132).grid for v in few]
        assert len(set(grids)) == len(grids)


def test_few_channels_plans_for_the_example_first_layers():
    """The 100×100 network's conv1 (N 128): 6 filters a thread, 86 filter groups; 4 splits (344 blocks of the 396 that 3 an SM
    on 132 SMs hold at once) or 18 (1548 of 4 rounds' 1584). The MNIST network's conv1 (N 1024): 3 filters, 11 groups, 36
    or 72 splits: 1 or 2 whole rounds."""
    net100 = few_channels_problem((128, 1, 100, 100), (512, 1, 3, 3), 1, 0)
    plans = [FewChannelsBackwardFilter(blocks).kernel_plan(net100, 132) for blocks in (2, 6)]
    assert dict(plans[0].defines) == {"FEWC_C": 1, "FEWC_R": 3, "FEWC_S": 3, "FEWC_SW": 1, "FEWC_FILTERS": 6}
    assert [p.grid for p in plans] == [(86, 4), (86, 18)] and [p.splits for p in plans] == [4, 18]
    mnist = few_channels_problem((1024, 1, 28, 28), (32, 1, 5, 5), 1, 0)
    plans = [FewChannelsBackwardFilter(blocks).kernel_plan(mnist, 132) for blocks in (2, 6)]
    assert dict(plans[0].defines)["FEWC_FILTERS"] == 3 and [p.grid for p in plans] == [(11, 36), (11, 72)]


@pytest.mark.parametrize("strips, groups, blocks_per_sm, sms", [
    (307328, 64, 2, 132), (307328, 64, 6, 132), (147456, 11, 2, 132), (100, 3, 2, 132), (1, 1, 6, 132),
    (6400, 5, 2, 132), (1000003, 127, 6, 114), (5000, 1, 2, 7)])
def test_few_channels_splits_cover_every_strip_once(strips, groups, blocks_per_sm, sms):
    splits, chunk = direct._few_channels_splits(strips, groups, blocks_per_sm, sms)
    assert (splits - 1) * chunk < strips <= splits * chunk  # no empty split, none missing
    assert splits == 1 or chunk >= direct._FEW_CHANNELS_MIN_CHUNK
    most = max(1, strips // direct._FEW_CHANNELS_MIN_CHUNK)
    assert groups * splits >= min(blocks_per_sm * sms, groups * most)  # fills the GPU where the strips allow


@pytest.mark.parametrize("case", FEW_CHANNELS_CASES, ids=case_id)
def test_few_channels_matches_numpy_float64(backend, xp, rng, force, case):
    if backend != "cuda":
        pytest.skip("FewChannelsBackwardFilter is a CUDA-path variant")
    x_shape, w_shape, stride, padding = case
    g = window_geometry(x_shape, w_shape[2:], stride, padding)
    x, w, _ = inputs(rng, x_shape, w_shape, bias=False)
    dy = rng.standard_normal((x_shape[0], w_shape[0], g.OH, g.OW)).astype(numpy.float32)
    _, dw_ref, db_ref = F.conv2d_backward(*(a.astype(numpy.float64) for a in (dy, x, w)), stride, padding, compute_dx=False)
    plans = few_channels_plans(few_channels_problem(*case))
    assert plans, case
    for plan in plans:
        force({"conv2d_bwd_filter": plan.name})
        _, dw, db = F.conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), stride, padding, compute_dx=False)
        assert dw.dtype == numpy.float32 and dw.shape == w_shape
        assert rel_error(dw, dw_ref) < 1e-5, plan
        assert rel_error(db, db_ref) < 1e-5, plan


def test_few_channels_scalar_path_for_a_misaligned_dy(backend, xp, rng, force):
    """OH·OW = 4·7 would take float4 loads; dy 4 bytes past a 16-byte boundary takes the guarded scalar loads."""
    if backend != "cuda":
        pytest.skip("FewChannelsBackwardFilter is a CUDA-path variant")
    x, w, _ = inputs(rng, (2, 1, 6, 9), (5, 1, 3, 3), bias=False)
    dy = rng.standard_normal(2 * 5 * 4 * 7 + 1).astype(numpy.float32)
    dy_misaligned = xp.asarray(dy)[1:].reshape(2, 5, 4, 7)
    assert dy_misaligned.data.ptr % 16 == 4 and dy_misaligned.flags.c_contiguous
    _, dw_ref, _ = F.conv2d_backward(dy[1:].reshape(2, 5, 4, 7).astype(numpy.float64), x.astype(numpy.float64),
                                     w.astype(numpy.float64), compute_dx=False)
    force({"conv2d_bwd_filter": FewChannelsBackwardFilter(SPLIT_BLOCKS_PER_SM[0]).name})
    _, dw, _ = F.conv2d_backward(dy_misaligned, xp.asarray(x), xp.asarray(w), compute_dx=False)
    assert rel_error(dw, dw_ref) < 1e-5


def test_few_channels_is_bitwise_reproducible(backend, xp, rng, force):
    """Split over blocks and reduced by warp shuffles and shared memory in a fixed order: two runs, the same bits."""
    if backend != "cuda":
        pytest.skip("FewChannelsBackwardFilter is a CUDA-path variant")
    x, w, _ = inputs(rng, (16, 1, 41, 39), (33, 1, 3, 3), bias=False)
    dy = xp.asarray(rng.standard_normal((16, 33, 41, 39)).astype(numpy.float32))
    force({"conv2d_bwd_filter": FewChannelsBackwardFilter(SPLIT_BLOCKS_PER_SM[0]).name})
    first, second = (to_numpy(F.conv2d_backward(dy, xp.asarray(x), xp.asarray(w), 1, 1, compute_dx=False)[1]) for _ in range(2))
    assert first.tobytes() == second.tobytes()


# Compiled per layer: the variants of the layers above (both example networks' first layers, RGB 3×3 at strides 1 and 2, the
# 32-tap cap, a 1×32 window at column stride 3, 3 channels of 1×1) through NVRTC, no spill.
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((128, 1, 100, 100), (512, 1, 3, 3), 1), ((1024, 1, 28, 28), (32, 1, 5, 5), 1), ((8, 3, 32, 32), (64, 3, 3, 3), 1),
    ((8, 3, 32, 32), (64, 3, 3, 3), 2), ((8, 2, 16, 16), (16, 2, 4, 4), 1), ((8, 1, 8, 64), (16, 1, 1, 32), 3),
    ((8, 3, 16, 16), (16, 3, 1, 1), 1)], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_few_channels_variants_compile_without_spills(x_shape, w_shape, stride, arch):
    plan = FewChannelsBackwardFilter(SPLIT_BLOCKS_PER_SM[0]).kernel_plan(few_channels_problem(x_shape, w_shape, stride, 0), 132)
    report = compile_variant_without_spills("conv2d_direct", arch, dict(plan.defines))
    assert "conv2d_bwd_filter_few_channels" in report
