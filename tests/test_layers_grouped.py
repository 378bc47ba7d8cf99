"""Conv2D with dilation_rate and groups, DepthwiseConv2D and SeparableConv2D: forward against torch float64 (the
same weights), backward against central differences, Keras's parameter counts and shapes, config round trips,
Keras's argument errors."""
from __future__ import annotations

import numpy
import pytest

from checks import numeric_grad, rel_error
from cnn_gpu.layers import Conv2D, DepthwiseConv2D, SeparableConv2D, from_config
from cnn_gpu.models import Sequential


def randomised(layer, rng):
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    return layer


def check_gradients(layer, x, rng, tol=1e-6):
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = dict(layer.grads)
    assert set(grads) == set(layer.params)
    assert rel_error(dx, numeric_grad(lambda v: layer.forward(v, training=True), x.copy(), dy)) < tol
    for name, p in layer.params.items():
        assert rel_error(grads[name], numeric_grad(lambda _: layer.forward(x, training=True), p, dy)) < tol, name


def torch_conv(torch, x, w, b, stride, padding, dilation, groups):
    """torch.nn.functional.conv2d in float64 with Keras's 'same' / 'valid' padding (the odd pad at the end)."""
    pads = []
    for size, k, s, d in zip(x.shape[2:], w.shape[2:], stride, dilation):
        span = (k - 1) * d + 1
        total = max((-(-size // s) - 1) * s + span - size, 0) if padding == "same" else 0
        pads += [total // 2, total - total // 2]
    xt = torch.nn.functional.pad(torch.tensor(x), (pads[2], pads[3], pads[0], pads[1]))
    return torch.nn.functional.conv2d(xt, torch.tensor(w), None if b is None else torch.tensor(b), stride, 0, dilation,
                                      groups).numpy()


@pytest.mark.parametrize("padding, dilation, groups, activation", [
    ("valid", 2, 2, None), ("same", (1, 3), 3, "relu"), ("same", 2, 6, "tanh"), ("valid", 1, 3, "sigmoid")])
def test_conv2d_with_dilation_and_groups(rng, padding, dilation, groups, activation):
    torch = pytest.importorskip("torch")
    layer = Conv2D(6, (3, 2), padding=padding, dilation_rate=dilation, groups=groups, activation=activation,
                   dtype="float64")
    x = rng.standard_normal((2, 6, 9, 8))
    layer.build(x.shape[1:])
    randomised(layer, rng)
    assert layer.params["kernel"].shape == (6, 6 // groups, 3, 2)
    y = layer.forward(x)
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    z = torch_conv(torch, x, layer.params["kernel"], layer.params["bias"], (1, 1), padding, d, groups)
    ref = {None: z, "relu": numpy.maximum(z, 0), "tanh": numpy.tanh(z), "sigmoid": 1 / (1 + numpy.exp(-z))}[activation]
    assert rel_error(y, ref) < 1e-12
    check_gradients(layer, x, rng)


@pytest.mark.parametrize("strides, padding, multiplier, dilation", [
    (1, "same", 1, 1), (2, "same", 2, 1), (1, "valid", 3, 2), ((2, 1), "valid", 1, 1)])
def test_depthwise_conv2d(rng, strides, padding, multiplier, dilation):
    torch = pytest.importorskip("torch")
    layer = DepthwiseConv2D(3, strides, padding, depth_multiplier=multiplier, dilation_rate=dilation, dtype="float64")
    x = rng.standard_normal((2, 4, 9, 10))
    layer.build(x.shape[1:])
    randomised(layer, rng)
    assert layer.params["kernel"].shape == (4 * multiplier, 1, 3, 3)
    s = (strides, strides) if isinstance(strides, int) else strides
    ref = torch_conv(torch, x, layer.params["kernel"], layer.params["bias"], s, padding, (dilation, dilation), 4)
    assert rel_error(layer.forward(x), ref) < 1e-12
    check_gradients(layer, x, rng)


@pytest.mark.parametrize("strides, padding, multiplier, activation", [(1, "same", 1, "relu"), (2, "valid", 2, None)])
def test_separable_conv2d(rng, strides, padding, multiplier, activation):
    torch = pytest.importorskip("torch")
    layer = SeparableConv2D(5, 3, strides, padding, depth_multiplier=multiplier, activation=activation, dtype="float64")
    x = rng.standard_normal((2, 3, 9, 8))
    layer.build(x.shape[1:])
    randomised(layer, rng)
    z = torch_conv(torch, x, layer.params["depthwise_kernel"], None, (strides, strides), padding, (1, 1), 3)
    y = torch_conv(torch, z, layer.params["pointwise_kernel"], layer.params["bias"], (1, 1), "valid", (1, 1), 1)
    assert rel_error(layer.forward(x), y if activation is None else numpy.maximum(y, 0)) < 1e-12
    check_gradients(layer, x, rng)


def test_parameter_counts_are_keras():
    """Keras: Conv2D R·S·(C/groups)·filters + filters; DepthwiseConv2D R·S·C·M + C·M; SeparableConv2D
    R·S·C·M + C·M·filters + filters (input 12×10 with 4 channels)."""
    model = Sequential([Conv2D(8, 3, groups=2, dilation_rate=2, input_shape=(12, 10, 4)),
                        DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
                        SeparableConv2D(6, (3, 1), depth_multiplier=3, use_bias=False)])
    counts = [sum(layer.count_params()) for layer in model.layers]
    assert counts == [3 * 3 * 2 * 8 + 8, 3 * 3 * 8 * 2 + 16, 3 * 1 * 16 * 3 + 16 * 3 * 6]
    text = model.summary(print_fn=None)
    assert "DepthwiseConv2D" in text and "SeparableConv2D" in text
    assert f"Total params: {sum(counts):,}" in text
    assert [layer.output_shape for layer in model.layers] == [(8, 8, 6), (16, 8, 6), (6, 6, 6)]


def test_config_round_trip():
    for layer in (Conv2D(4, 3, dilation_rate=(2, 1), groups=2), DepthwiseConv2D((3, 5), 2, "same", 3),
                  SeparableConv2D(7, 3, 1, "same", 2, 2, "relu", False)):
        config = layer.get_config()
        again = from_config(type(layer).__name__, config)
        assert again.get_config() == config


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(4, 3, strides=2, dilation_rate=2), "strides > 1 together with dilation_rate > 1"),
    (lambda: DepthwiseConv2D(3, strides=2, dilation_rate=2), "strides > 1 together with dilation_rate > 1"),
    (lambda: Conv2D(5, 3, groups=2), "filters = 5 must be a multiple of groups = 2"),
    (lambda: Conv2D(4, 3, groups=0), "groups must be a positive int"),
    (lambda: DepthwiseConv2D(3, depth_multiplier=0), "depth_multiplier must be a positive int"),
    (lambda: Conv2D(4, 3, dilation_rate=0), "dilation_rate must be >= 1"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_groups_must_divide_the_input_channels():
    with pytest.raises(ValueError, match="groups = 4 must divide the input channels, got 6"):
        Sequential([Conv2D(8, 3, groups=4, input_shape=(9, 9, 6))])
