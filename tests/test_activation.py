"""relu, leaky_relu, sigmoid, tanh: forward against plain float64 formulas, backward against finite
differences, CUDA against NumPy, NaN propagation, bad inputs."""
import math

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu.ops.activation import numpy_activation
from checks import error_relative_to, numeric_grad, rel_error

SHAPES = [(1,), (3, 5), (2, 3, 17, 31), (1, 1, 33, 65), (129, 127)]


def naive(name, x, slope=0.01):
    out = numpy.empty_like(x, dtype=numpy.float64)
    for i, v in enumerate(x.reshape(-1).astype(numpy.float64)):
        if name == "relu":
            r = v if v > 0 else 0.0
        elif name == "leaky_relu":
            r = v if v > 0 else slope * v
        elif name == "sigmoid":
            r = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
        else:
            r = math.tanh(v)
        out.reshape(-1)[i] = r
    return out


def forward(name, x):
    return F.leaky_relu(x, 0.2) if name == "leaky_relu" else getattr(F, name)(x)


def backward(name, dy, y):
    if name == "leaky_relu":
        return F.leaky_relu_backward(dy, y, 0.2)
    return getattr(F, name + "_backward")(dy, y)


NAMES = ["relu", "leaky_relu", "sigmoid", "tanh"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_naive(backend, xp, rng, name, shape):
    x = (rng.standard_normal(shape) * 4).astype(numpy.float32)
    y = forward(name, xp.asarray(x))
    assert y.shape == x.shape and y.dtype == numpy.float32
    assert rel_error(y, naive(name, x, 0.2)) < 1e-6


def backward_scale(dy, y):
    """The size of the terms of every backward formula here, |dy| (1 + y²): sigmoid's dy·y·(1 − y) and
    tanh's dy·(1 − y²) cancel where |y| nears 1, and a fused multiply-add rounds them differently."""
    dy, y = (numpy.asarray(a, dtype=numpy.float64) for a in (dy, y))
    return numpy.abs(dy) * (1 + y * y)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_numpy(backend, xp, rng, name, shape):
    x = (rng.standard_normal(shape) * 3).astype(numpy.float32)
    dy = rng.standard_normal(shape).astype(numpy.float32)
    y = forward(name, x)
    ref = backward(name, dy, y)
    ours = backward(name, xp.asarray(dy), xp.asarray(y))  # the same y: this tests backward alone
    assert error_relative_to(ours, ref, backward_scale(dy, y)) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_backward_finite_differences(rng, name):
    x = rng.standard_normal((2, 3, 4, 5))
    x[numpy.abs(x) < 1e-3] = 0.5  # keep away from relu's kink
    dy = rng.standard_normal(x.shape)
    y = forward(name, x)
    grad = backward(name, dy, y)
    assert rel_error(grad, numeric_grad(lambda v: forward(name, v), x, dy)) < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_propagate(backend, xp, name):
    x = xp.asarray(numpy.array([numpy.nan, numpy.inf, -numpy.inf, 0.0, -2.0], dtype=numpy.float32))
    y = numpy.asarray(forward(name, x).get() if backend == "cuda" else forward(name, x))
    assert numpy.isnan(y[0])
    expected_pos = {"relu": numpy.inf, "leaky_relu": numpy.inf, "sigmoid": 1.0, "tanh": 1.0}[name]
    expected_neg = {"relu": 0.0, "leaky_relu": -numpy.inf, "sigmoid": 0.0, "tanh": -1.0}[name]
    assert y[1] == expected_pos and y[2] == expected_neg


def test_non_contiguous_input_accepted(backend, xp, rng):
    x = rng.standard_normal((6, 8)).astype(numpy.float32)
    view = xp.asarray(x)[:, ::2]
    assert rel_error(F.relu(view), naive("relu", x[:, ::2])) == 0


# The kernels take 4 float4s a thread (ELEMENTWISE_UNROLL; 1024 a 256-thread block) and the n % 4 tail
# as scalars; a view one element into its buffer is unaligned and goes all scalar.
TAIL_SIZES = [1, 3, 4, 5, 4 * 256 * 4 - 1, 4 * 256 * 4, 4 * 256 * 4 + 1, 3 * 4 * 256 * 4 + 7]


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_unroll_tails_and_unaligned_views_match_numpy(backend, xp, rng, n, offset):
    buffers = [(rng.standard_normal(n + offset) * 3).astype(numpy.float32) for _ in range(2)]
    x, dy = (xp.asarray(b)[offset:] for b in buffers)
    x_host, dy_host = (b[offset:] for b in buffers)
    for name in NAMES:
        y = forward(name, x)
        ref_y = forward(name, x_host)
        assert rel_error(y, ref_y) < 1e-6, name
        y_view = xp.concatenate([xp.zeros(offset, dtype=numpy.float32), xp.asarray(ref_y)])[offset:]  # x's alignment
        ours, ref = backward(name, dy, y_view), backward(name, dy_host, ref_y)
        assert error_relative_to(ours, ref, backward_scale(dy_host, ref_y)) < 1e-6, name


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be float"):
        F.relu(numpy.arange(4))


def test_rejects_list_input():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.sigmoid([1.0, 2.0])


def test_backward_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"dy shape \(3,\) must equal y shape \(4,\)"):
        F.relu_backward(numpy.ones(3, numpy.float32), numpy.ones(4, numpy.float32))


def test_backward_rejects_negative_slope():
    with pytest.raises(ValueError, match="negative_slope"):
        F.leaky_relu(numpy.ones(3, numpy.float32), -0.5)


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy arrays"):
        F.relu_backward(xp.ones(3, dtype=numpy.float32), numpy.ones(3, numpy.float32))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_relu_backward_is_where_positive_bit_for_bit(rng, dtype):
    """dx = dy where y > 0, else +0.0 (NaN and infinite dy included), for any layout: numpy.where's bits."""
    y = rng.standard_normal((4, 3, 6, 10)).astype(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y.flat[::3], y.flat[1::7], y.flat[2::11] = 0.0, -0.0, numpy.nan
    dy.flat[::4], dy.flat[1::5], dy.flat[2::9], dy.flat[3::13] = -0.0, numpy.nan, -numpy.inf, numpy.inf
    bits = f"u{numpy.dtype(dtype).itemsize}"
    for g, v in [(dy, y), (dy.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1)), (dy[..., ::3], y[..., ::3])]:
        got = F.relu_backward(g, v)
        expected = numpy.where(v > 0, g, dtype(0))
        assert got.dtype == dtype and got.shape == g.shape
        assert numpy.array_equal(got.view(bits), expected.view(bits))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_relu_is_maximum_with_zero_bit_for_bit(rng, dtype):
    """relu(x) = numpy.maximum(x, 0)'s bits: NaN of either sign kept, -0.0 and negatives +0.0, for any layout, as a
    fresh array; the in-place epilogue of the NumPy conv2d / linear likewise."""
    x = rng.standard_normal((4, 3, 6, 10)).astype(dtype)
    x.flat[::4], x.flat[1::5], x.flat[2::9], x.flat[3::13] = -0.0, numpy.nan, -numpy.inf, numpy.inf
    x.flat[5::17] = -numpy.array(numpy.nan, dtype)
    bits = f"u{numpy.dtype(dtype).itemsize}"
    for v in [x, x.transpose(0, 2, 3, 1), x[..., ::3]]:
        expected = numpy.maximum(v, 0)
        before = v.copy()
        got = F.relu(v)
        assert got.dtype == dtype and got.shape == v.shape and not numpy.shares_memory(got, v)
        assert numpy.array_equal(got.view(bits), expected.view(bits))
        assert numpy.array_equal(v.view(bits), before.view(bits))  # the input untouched
        in_place = numpy_activation(v.copy(), "relu")
        assert numpy.array_equal(in_place.view(bits), expected.view(bits))
