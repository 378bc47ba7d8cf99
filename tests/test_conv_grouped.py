"""conv2d / conv2d_backward with dilation and groups (depthwise with channel multipliers included): the NumPy path
against a naive float64 loop, central finite differences and torch.nn.functional.conv2d in float64; the CUDA path
(the CuPy fallback; the direct depthwise kernels and the grouped implicit GEMMs of every tile, forced) against the
NumPy path; bad arguments."""
from __future__ import annotations

import numpy
import pytest

from checks import naive_grouped_conv2d, numeric_grad, rel_error
from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.cuda import autotune


# (x shape, K, window, stride, padding, dilation, groups): odd sizes; groups 2, 3 and C (depthwise, multipliers 1,
# 2, 3); dilations 1 to 3, mixed per axis; strides 1 and 2; int, pair, 'same' and 'valid' padding
CASES = [
    ((2, 4, 7, 9), 6, (3, 3), 1, 1, 1, 2),
    ((1, 6, 9, 8), 6, (3, 2), (2, 1), 0, (2, 1), 3),
    ((2, 3, 11, 10), 3, (3, 3), 1, "same", 2, 3),
    ((2, 3, 9, 9), 6, (3, 3), 2, 1, 1, 3),
    ((1, 2, 10, 13), 6, (5, 3), 1, (2, 3), (1, 3), 2),
    ((3, 5, 8, 7), 5, (2, 2), 1, "same", 3, 5),
    ((1, 4, 12, 11), 8, (3, 3), 2, "same", 2, 4),
    ((2, 3, 6, 7), 4, (1, 2), 1, "valid", 2, 1),
]


def case_id(case):
    shape, K, window, stride, padding, dilation, groups = case
    return f"{'x'.join(map(str, shape))}_K{K}_w{window}_s{stride}_p{padding}_d{dilation}_g{groups}".replace(" ", "")


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_pads(shape, window, stride, padding, dilation):
    """(top, bottom, left, right) from the definitions: 'same' as TF/Keras over the dilated window's span."""
    pads = []
    for size, k, s, d in zip(shape[2:], window, pair(stride), pair(dilation)):
        span = (k - 1) * d + 1
        if padding == "same":
            total = max((-(-size // s) - 1) * s + span - size, 0)
            pads += [total // 2, total - total // 2]
        elif padding == "valid":
            pads += [0, 0]
        else:
            p = pair(padding)[len(pads) // 2]
            pads += [p, p]
    return tuple(pads)


def make(rng, case, dtype=numpy.float64):
    shape, K, window, stride, padding, dilation, groups = case
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((K, shape[1] // groups) + window).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numpy_forward_matches_naive_loop(rng, case):
    shape, K, window, stride, padding, dilation, groups = case
    x, w, b = make(rng, case)
    y = F.conv2d(x, w, b, stride, padding, dilation=dilation, groups=groups)
    ref = naive_grouped_conv2d(x, w, b, pair(stride), pair(dilation), reference_pads(shape, window, stride, padding,
                                                                                       dilation), groups)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < 1e-12


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numpy_backward_matches_finite_differences(rng, case):
    shape, K, window, stride, padding, dilation, groups = case
    x, w, b = make(rng, case)
    kwargs = dict(dilation=dilation, groups=groups)
    y = F.conv2d(x, w, b, stride, padding, **kwargs)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding, **kwargs)
    assert rel_error(dx, numeric_grad(lambda v: F.conv2d(v, w, b, stride, padding, **kwargs), x, dy)) < 1e-7
    assert rel_error(dw, numeric_grad(lambda v: F.conv2d(x, v, b, stride, padding, **kwargs), w, dy)) < 1e-7
    assert rel_error(db, numeric_grad(lambda v: F.conv2d(x, w, v, stride, padding, **kwargs), b, dy)) < 1e-7


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numpy_matches_torch_float64(rng, case):
    torch = pytest.importorskip("torch")
    shape, K, window, stride, padding, dilation, groups = case
    x, w, b = make(rng, case)
    pt, pb, pl, pr = reference_pads(shape, window, stride, padding, dilation)
    xt = torch.nn.functional.pad(torch.tensor(x), (pl, pr, pt, pb)).requires_grad_()
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, pair(stride), 0, pair(dilation), groups)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    y = F.conv2d(x, w, b, stride, padding, dilation=dilation, groups=groups)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding, dilation=dilation, groups=groups)
    assert rel_error(y, yt.detach().numpy()) < 1e-12
    assert rel_error(dx, xt.grad.numpy()[:, :, pt:pt + shape[2], pl:pl + shape[3]]) < 1e-12
    assert rel_error(dw, wt.grad.numpy()) < 1e-12
    assert rel_error(db, bt.grad.numpy()) < 1e-12


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_same_padding_with_dilation_matches_torch_same(rng):
    """padding='same' at stride 1 counts the dilated span, as torch's padding='same' does (an odd total pad: the
    extra row and column at the bottom and right in both)."""
    torch = pytest.importorskip("torch")
    for window, dilation in (((3, 3), 2), ((4, 2), (1, 3)), ((2, 5), (3, 1))):
        x = rng.standard_normal((1, 2, 9, 10))
        w = rng.standard_normal((2, 2) + window)
        ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding="same", dilation=dilation)
        assert rel_error(F.conv2d(x, w, padding="same", dilation=dilation), ref.numpy()) < 1e-12


def test_flag_defaults_keep_positional_calls(rng):
    """activation and negative_slope stay positional; dilation 1 and groups 1 are the plain convolution."""
    x, w, b = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    plain = F.conv2d(x, w, b, 1, 1, "leaky_relu", 0.2)
    assert numpy.array_equal(plain, F.conv2d(x, w, b, 1, 1, "leaky_relu", 0.2, dilation=1, groups=1))


# ---- bad arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((1, 6, 8, 8), (4, 2, 3, 3), dict(groups=4), r"groups = 4 must divide the input channels: x has C = 6 \(shape \(1, 6, 8, 8\)\)"),
    ((1, 6, 8, 8), (4, 2, 3, 3), dict(groups=3), r"groups = 3 must divide the filters: w has K = 4 \(shape \(4, 2, 3, 3\)\)"),
    ((1, 6, 8, 8), (6, 3, 3, 3), dict(groups=3), r"w must have C // groups = 2 input channels .*groups 3.*\(6, 3, 3, 3\)"),
    ((1, 6, 8, 8), (6, 6, 3, 3), dict(groups=0), r"groups must be a positive int, got 0"),
    ((1, 6, 8, 8), (6, 6, 3, 3), dict(groups=True), r"groups must be a positive int, got True"),
    ((1, 6, 8, 8), (6, 3, 3, 3), dict(groups=2.0), r"groups must be a positive int, got 2.0"),
    ((1, 2, 8, 8), (2, 2, 3, 3), dict(dilation=0), r"dilation must be >= 1, got 0"),
    ((1, 2, 8, 8), (2, 2, 3, 3), dict(dilation=(1, -2)), r"dilation must be >= 1"),
    ((1, 2, 8, 8), (2, 2, 3, 3), dict(dilation=1.5), r"dilation must be an int or a pair of ints"),
    ((1, 2, 8, 8), (2, 2, 3, 3), dict(dilation=4), r"w \(3, 3\) dilated by 4 \(spanning \(9, 9\)\) is larger than the "
                                                   r"padded input \(8, 8\)"),
])
def test_bad_arguments_name_the_argument_and_shapes(x_shape, w_shape, kwargs, message):
    x, w = numpy.ones(x_shape, numpy.float32), numpy.ones(w_shape, numpy.float32)
    with pytest.raises(ValueError, match=message):
        F.conv2d(x, w, **kwargs)
    dy = numpy.ones((1, w_shape[0], 6, 6), numpy.float32)
    with pytest.raises(ValueError, match=message):
        F.conv2d_backward(dy, x, w, **kwargs)


# ---- CUDA path ---------------------------------------------------------------------------------------
def run_cuda_case(xp, rng, case, activation=None):
    """(y, dx, dw, db) on the backend and the float64 NumPy references."""
    shape, K, window, stride, padding, dilation, groups = case
    x, w, b = make(rng, case, numpy.float32)
    kwargs = dict(dilation=dilation, groups=groups)
    y = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, padding, activation, **kwargs)
    ref = F.conv2d(x.astype(float), w.astype(float), b.astype(float), stride, padding, activation, **kwargs)
    dy = rng.standard_normal(ref.shape).astype(numpy.float32)
    grads = F.conv2d_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), stride, padding, **kwargs)
    refs = F.conv2d_backward(dy.astype(float), x.astype(float), w.astype(float), stride, padding, **kwargs)
    return (y,) + tuple(grads), (ref,) + tuple(refs)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_grouped_default_matches_numpy_float64(backend, xp, rng, case):
    if backend != "cuda":
        pytest.skip("the CUDA path")
    ours, refs = run_cuda_case(xp, rng, case, "relu")
    for a, ref in zip(ours, refs):
        assert a.dtype == numpy.float32
        assert rel_error(a, ref) < 1e-5


DEPTHWISE_CASES = [case for case in CASES if case[-1] == case[0][1]] + [
    ((3, 16, 17, 19), 16, (3, 3), 1, 1, 1, 16),
    ((2, 8, 29, 31), 16, (3, 3), 2, "same", 1, 8),
    ((2, 4, 21, 23), 4, (7, 7), 1, 3, 1, 4),
    ((1, 2, 33, 34), 2, (31, 31), 1, 15, 1, 2),
]
DEPTHWISE = {"conv2d_grouped_fwd": "direct depthwise", "conv2d_grouped_bwd_data": "direct depthwise",
             "conv2d_grouped_bwd_filter": "direct depthwise"}


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=case_id)
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_cuda_depthwise_kernels_match_numpy_float64(backend, xp, rng, case, activation):
    if backend != "cuda":
        pytest.skip("the CUDA path's depthwise kernels")
    with autotune.forced(DEPTHWISE):
        ours, refs = run_cuda_case(xp, rng, case, activation)
    for a, ref in zip(ours, refs):
        assert rel_error(a, ref) < 1e-5


def test_cuda_depthwise_backward_is_bitwise_reproducible(backend, xp, rng):
    if backend != "cuda":
        pytest.skip("the CUDA path's depthwise kernels")
    x = xp.asarray(rng.standard_normal((4, 24, 29, 31)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((48, 1, 5, 5)).astype(numpy.float32))
    dy = xp.asarray(rng.standard_normal((4, 48, 15, 16)).astype(numpy.float32))
    with autotune.forced(DEPTHWISE):
        first = [to_numpy(a).tobytes() for a in F.conv2d_backward(dy, x, w, 2, 2, groups=24)]
        second = [to_numpy(a).tobytes() for a in F.conv2d_backward(dy, x, w, 2, 2, groups=24)]
    assert first == second


def test_depthwise_kernels_are_not_offered_unverified():
    """The direct depthwise variants have not run on a GPU: registered, not verified, so off the default candidates."""
    from cnn_gpu.cuda import variants

    for op in DEPTHWISE:
        names = {v.name: v for v in variants.registered(op)}
        assert not names["direct depthwise"].verified
        assert variants.registered(op)[0].verified


# ---- the grouped implicit GEMMs (conv2d_grouped_*), forced ---------------------------------------------------------
def _implicit_gemm_tiles():
    from cnn_gpu.ops.conv import CONV_TILES

    return CONV_TILES


def _named(name):
    """A forced choice of the variant called name, skipping the test where it does not apply to the problem on this GPU
    (a split variant offered only where it splits)."""
    def choose(key, candidates):
        found = [c for c in candidates if c.name == name]
        if not found:
            pytest.skip(f"{name!r} does not apply to {key} on this GPU")
        return found[0]
    return choose


def _implicit_gemm_choices(tile, forward_blocks=0, filter_blocks=2):
    from cnn_gpu.ops.conv.implicit_gemm import (GroupedImplicitGemmBackwardData, GroupedImplicitGemmBackwardFilter,
                                                GroupedImplicitGemmForward)

    return {"conv2d_grouped_fwd": _named(GroupedImplicitGemmForward(tile, forward_blocks).name),
            "conv2d_grouped_bwd_data": _named(GroupedImplicitGemmBackwardData(tile).name),
            "conv2d_grouped_bwd_filter": _named(GroupedImplicitGemmBackwardFilter(tile, filter_blocks).name)}


@pytest.mark.parametrize("tile", _implicit_gemm_tiles(), ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("case", CASES + DEPTHWISE_CASES[-4:], ids=case_id)
def test_cuda_grouped_implicit_gemm_matches_numpy_float64(backend, xp, rng, case, tile):
    if backend != "cuda":
        pytest.skip("the CUDA path's grouped implicit GEMMs")
    with autotune.forced(_implicit_gemm_choices(tile)):
        ours, refs = run_cuda_case(xp, rng, case, "relu")
    for a, ref in zip(ours, refs):
        assert rel_error(a, ref) < 1e-5


# Cg·R·S = 288 and N·OH·OW = 1024: every tile's forward splits on a GPU of more than 32 SMs, its backward-filter on
# more than 9 (a split variant that does not apply, e.g. one splitting no further than the one before, is skipped)
SPLIT_CASE = ((4, 64, 16, 16), 32, (3, 3), 1, 2, 2, 2)


@pytest.mark.parametrize("tile", _implicit_gemm_tiles(), ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("blocks", (2, 6))
def test_cuda_grouped_implicit_gemm_split_variants_match_numpy_float64(backend, xp, rng, tile, blocks):
    if backend != "cuda":
        pytest.skip("the CUDA path's grouped implicit GEMMs")
    with autotune.forced(_implicit_gemm_choices(tile, blocks, blocks)):
        ours, refs = run_cuda_case(xp, rng, SPLIT_CASE, "tanh")
    for a, ref in zip(ours, refs):
        assert rel_error(a, ref) < 1e-5


def test_cuda_grouped_implicit_gemm_backward_is_bitwise_reproducible(backend, xp, rng):
    if backend != "cuda":
        pytest.skip("the CUDA path's grouped implicit GEMMs")
    from cnn_gpu.ops.conv import DEFAULT_TILE

    x = xp.asarray(rng.standard_normal((4, 32, 29, 31)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((16, 8, 3, 3)).astype(numpy.float32))
    dy = xp.asarray(rng.standard_normal((4, 16, 29, 31)).astype(numpy.float32))
    with autotune.forced(_implicit_gemm_choices(DEFAULT_TILE)):
        first = [to_numpy(a).tobytes() for a in F.conv2d_backward(dy, x, w, 1, 2, dilation=2, groups=4)]
        second = [to_numpy(a).tobytes() for a in F.conv2d_backward(dy, x, w, 1, 2, dilation=2, groups=4)]
    assert first == second


def test_grouped_implicit_gemms_are_registered_unverified_for_every_tile():
    """Every tile's grouped implicit GEMM (whole and split forward, backward-data, split backward-filter) is registered
    for its op, none verified (no GPU run has passed them), and the CuPy im2col path stays each op's default."""
    from cnn_gpu.cuda import variants
    from cnn_gpu.ops.conv.implicit_gemm import (GroupedImplicitGemmBackwardData, GroupedImplicitGemmBackwardFilter,
                                                GroupedImplicitGemmForward)
    from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM

    expected = [v for tile in _implicit_gemm_tiles() for v in (
        GroupedImplicitGemmForward(tile), GroupedImplicitGemmBackwardData(tile),
        *(GroupedImplicitGemmForward(tile, b) for b in SPLIT_BLOCKS_PER_SM),
        *(GroupedImplicitGemmBackwardFilter(tile, b) for b in SPLIT_BLOCKS_PER_SM))]
    for variant in expected:
        assert variants.named(variant.op, variant.name) == variant
        assert not variant.verified
    for op in ("conv2d_grouped_fwd", "conv2d_grouped_bwd_data", "conv2d_grouped_bwd_filter"):
        assert variants.registered(op)[0].name == "CuPy im2col + batched GEMM" and variants.registered(op)[0].verified
