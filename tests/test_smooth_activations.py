"""elu, selu, gelu (erf and tanh forms), softplus, swish / silu: forward against plain float64 formulas
one element at a time, backward against central finite differences, both against PyTorch float64, CUDA
against NumPy (tails, unaligned views), NaN propagation, bad input; and the layers that use them."""
import math

import numpy
import pytest

from checks import error_relative_to, numeric_grad, rel_error
from cnn_gpu import functional as F
from cnn_gpu.ops.activation import SELU_ALPHA, SELU_SCALE

NAMES = ["elu", "selu", "gelu", "gelu_tanh", "softplus", "swish"]
SHAPES = [(1,), (3, 5), (2, 3, 17, 31), (129, 127)]


def naive(name, x):
    """The definitions, in float64, one element at a time (math module only)."""
    def f(v):
        if name == "elu":
            return v if v > 0 else math.exp(v) - 1
        if name == "selu":
            return SELU_SCALE * (v if v > 0 else SELU_ALPHA * (math.exp(v) - 1))
        if name == "gelu":
            return 0.5 * v * math.erfc(-v / math.sqrt(2))  # = ½v(1 + erf(v/√2)), without cancellation
        if name == "gelu_tanh":
            return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))  # float64: ok to 1e-9
        if name == "softplus":
            return math.log1p(math.exp(-abs(v))) + max(v, 0.0)
        return v / (1 + math.exp(-v)) if v >= 0 else v * math.exp(v) / (1 + math.exp(v))
    return numpy.array([f(float(v)) for v in numpy.asarray(x).reshape(-1)]).reshape(numpy.shape(x))


def forward(name, x):
    return F.gelu(x, approximate=True) if name == "gelu_tanh" else getattr(F, name)(x)


def backward(name, dy, x):
    return F.gelu_backward(dy, x, approximate=True) if name == "gelu_tanh" else getattr(F, name + "_backward")(dy, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64_definition(backend, xp, rng, name, shape):
    x = (rng.standard_normal(shape) * 4).astype(numpy.float32)
    y = forward(name, xp.asarray(x))
    assert y.shape == x.shape and y.dtype == numpy.float32
    ref = naive(name, x)
    # relative to each value, floored at 1e-3: gelu's lower tail (|y| ~ 1e-11 at x = -7) is exact only to a few
    # float32 ulps of erfc, which a single-element norm would read as a relative error of ~1e-5
    assert error_relative_to(y, ref, numpy.maximum(numpy.abs(ref), 1e-3)) < 2e-6


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences(rng, name):
    x = rng.standard_normal((2, 3, 4, 5)) * 3
    x[numpy.abs(x) < 1e-3] = 0.5  # elu and selu have a kink in their second derivative at 0
    dy = rng.standard_normal(x.shape)
    assert rel_error(backward(name, dy, x), numeric_grad(lambda v: forward(name, v), x, dy)) < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_matches_pytorch_float64(rng, name):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 33)) * 4
    dy = rng.standard_normal(x.shape)
    functions = {"elu": torch.nn.functional.elu, "selu": torch.nn.functional.selu, "gelu": torch.nn.functional.gelu,
                 "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                 "softplus": torch.nn.functional.softplus, "swish": torch.nn.functional.silu}
    t = torch.tensor(x, requires_grad=True)
    out = functions[name](t)
    out.backward(torch.tensor(dy))
    assert rel_error(forward(name, x), out.detach().numpy()) < 1e-13
    assert rel_error(backward(name, dy, x), t.grad.numpy()) < 1e-13


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_backend_matches_numpy(backend, xp, rng, name, shape):
    x = (rng.standard_normal(shape) * 3).astype(numpy.float32)
    dy = rng.standard_normal(shape).astype(numpy.float32)
    ours = backward(name, xp.asarray(dy), xp.asarray(x))
    ref = backward(name, dy.astype(numpy.float64), x.astype(numpy.float64))
    assert error_relative_to(ours, ref, numpy.abs(dy) * (1 + numpy.abs(x))) < 2e-6


# The kernels take 4 float4s a thread and the n % 4 tail as scalars; a view one element in is unaligned.
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("n", [1, 3, 5, 4 * 256 * 4 - 1, 4 * 256 * 4 + 1, 3 * 4 * 256 * 4 + 7])
def test_tails_and_unaligned_views(backend, xp, rng, n, offset):
    buffers = [(rng.standard_normal(n + offset) * 3).astype(numpy.float32) for _ in range(2)]
    x, dy = (xp.asarray(b)[offset:] for b in buffers)
    x_host, dy_host = (b[offset:].astype(numpy.float64) for b in buffers)
    for name in NAMES:
        assert rel_error(forward(name, x), forward(name, x_host)) < 2e-6, name
        assert error_relative_to(backward(name, dy, x), backward(name, dy_host, x_host),
                                 numpy.abs(dy_host) * (1 + numpy.abs(x_host))) < 2e-6, name


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates_and_large_inputs_stay_finite(backend, xp, name):
    x = xp.asarray(numpy.array([numpy.nan, 80.0, -80.0, 0.0], dtype=numpy.float32))
    y = numpy.asarray(forward(name, x).get() if backend == "cuda" else forward(name, x))
    dx = backward(name, xp.ones(4, dtype=numpy.float32), x)
    dx = numpy.asarray(dx.get() if backend == "cuda" else dx)
    assert numpy.isnan(y[0]) and numpy.isnan(dx[0])
    assert numpy.isfinite(y[1:]).all() and numpy.isfinite(dx[1:]).all()
    assert rel_error(y[1:], naive(name, numpy.array([80.0, -80.0, 0.0]))) < 1e-6


def test_elu_alpha_and_silu_alias(rng):
    x = rng.standard_normal(50)
    assert rel_error(F.elu(x, 0.5), numpy.where(x > 0, x, 0.5 * numpy.expm1(x))) < 1e-15
    assert F.silu is F.swish and F.silu_backward is F.swish_backward


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        F.elu(numpy.ones(3, numpy.float32), -1.0)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(numpy.ones(3, numpy.float32), approximate="tanh")
    with pytest.raises(ValueError, match=r"dy shape \(3,\) must equal x shape \(4,\)"):
        F.swish_backward(numpy.ones(3, numpy.float32), numpy.ones(4, numpy.float32))
    with pytest.raises(TypeError, match="x must be float"):
        F.selu(numpy.arange(3))


# ---- the layers: Dense / Conv2D / Activation by name, gradients through them ----------------------------
@pytest.mark.parametrize("name", ["elu", "selu", "gelu", "softplus", "swish", "silu"])
def test_dense_with_activation_gradients_match_finite_differences(rng, name):
    from cnn_gpu.layers import Dense

    layer = Dense(4, activation=name, dtype="float64")
    x = rng.standard_normal((3, 5))
    layer.build((5,), rng)
    dy = rng.standard_normal((3, 4))
    layer.forward(x, training=True)
    dx = layer.backward(dy)
    assert rel_error(dx, numeric_grad(lambda v: layer.forward(v), x, dy)) < 1e-7
    kernel = layer.params["kernel"]

    def with_kernel(w):
        layer.params["kernel"] = w
        return layer.forward(x)

    layer.forward(x, training=True)
    layer.backward(dy)
    assert rel_error(layer.grads["kernel"], numeric_grad(with_kernel, kernel.copy(), dy)) < 1e-7


def test_conv_and_activation_layer_apply_the_op(rng):
    from cnn_gpu.layers import Activation, Conv2D, Softmax

    x = rng.standard_normal((2, 3, 6, 6)).astype(numpy.float32)
    conv = Conv2D(4, 3, activation="gelu")
    plain = Conv2D(4, 3)
    y = conv.forward(x)
    plain.build(x.shape[1:]), plain.set_weights(conv.get_weights())
    assert rel_error(y, naive("gelu", plain.forward(x))) < 2e-6
    assert rel_error(Activation("softplus").forward(x), naive("softplus", x)) < 2e-6
    logits = rng.standard_normal((4, 7))
    expected = numpy.exp(logits) / numpy.exp(logits).sum(1, keepdims=True)
    assert rel_error(Softmax().forward(logits), expected) < 1e-12


def test_keras_activations_functions(rng):
    import cnn_gpu as keras
    from cnn_gpu.layers import Dense

    x = rng.standard_normal((3, 4))
    assert rel_error(keras.activations.gelu(x), naive("gelu", x)) < 1e-12
    assert rel_error(keras.activations.softmax(x), numpy.exp(x) / numpy.exp(x).sum(1, keepdims=True)) < 1e-12
    assert keras.activations.get("swish") is keras.activations.swish and keras.activations.get(None)(x) is x
    assert Dense(3, activation=keras.activations.selu).activation == "selu"
    with pytest.raises(ValueError, match="activation must be one of"):
        Dense(3, activation=lambda v: v)
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        keras.activations.get("mish")
