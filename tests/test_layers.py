"""Layers on their own: forward against plain float64 loops / formulas, backward (dx and every
parameter gradient) against finite differences, Keras's initialisers and shapes, CUDA against NumPy
with the same weights, and bad arguments."""
import math

import numpy
import pytest

import cnn_gpu
from cnn_gpu.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                            LeakyReLU, MaxPooling2D, ReLU, SumPooling2D, from_config)
from checks import numeric_grad, rel_error


# ---- plain references ----------------------------------------------------------------------------
def keras_same_pads(size, window, stride):
    """(before, after) padding of Keras 'same': output ceil(size / stride), the odd pad after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def pads_for(padding, H, W, R, S, stride):
    if padding == "valid":
        return (0, 0), (0, 0)
    return keras_same_pads(H, R, stride[0]), keras_same_pads(W, S, stride[1])


def naive_conv2d(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (pt, pb), (pl, pr) = pads_for(padding, H, W, R, S, stride)
    padded = numpy.zeros((N, C, H + pt + pb, W + pl + pr))
    padded[:, :, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - R) // stride[0] + 1
    OW = (W + pl + pr - S) // stride[1] + 1
    y = numpy.zeros((N, K, OH, OW))
    for n in range(N):
        for k in range(K):
            for i in range(OH):
                for j in range(OW):
                    window = padded[n, :, i * stride[0]:i * stride[0] + R, j * stride[1]:j * stride[1] + S]
                    y[n, k, i, j] = numpy.sum(window * w[k]) + b[k]
    return y


def naive_pool(x, kind, size, stride, padding):
    """max (padding never wins), mean over in-bounds elements, or sum, window by window."""
    N, C, H, W = x.shape
    (pt, pb), (pl, pr) = pads_for(padding, H, W, size[0], size[1], stride)
    OH = (H + pt + pb - size[0]) // stride[0] + 1
    OW = (W + pl + pr - size[1]) // stride[1] + 1
    y = numpy.zeros((N, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            top, left = i * stride[0] - pt, j * stride[1] - pl
            window = x[:, :, max(top, 0):top + size[0], max(left, 0):left + size[1]]
            y[:, :, i, j] = {"max": numpy.max, "avg": numpy.mean, "sum": numpy.sum}[kind](window, axis=(2, 3))
    return y


def naive_activation(name, v, slope=0.2):
    if name == "relu":
        return numpy.maximum(v, 0)
    if name == "leaky_relu":
        return numpy.where(v > 0, v, slope * v)
    if name == "sigmoid":
        return 1 / (1 + numpy.exp(-v))
    if name == "tanh":
        return numpy.tanh(v)
    if name == "softmax":
        e = numpy.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return v


def randomised(layer, rng):
    """Give every parameter random values (biases start at zero, which would hide their terms)."""
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    return layer


def check_gradients(layer, x, rng, training=True, tol=1e-6):
    """dx and every grads[name] against central differences of sum(forward(x) * dy), float64."""
    y = layer.forward(x, training=training)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    grads = dict(layer.grads)
    assert set(grads) == set(layer.params)
    assert rel_error(dx, numeric_grad(lambda v: layer.forward(v, training=training), x.copy(), dy)) < tol
    for name, p in layer.params.items():
        numeric = numeric_grad(lambda _: layer.forward(x, training=training), p, dy)  # perturbs p in place
        assert rel_error(grads[name], numeric) < tol, name


# ---- Conv2D --------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding, strides, activation", [
    ("valid", 1, None), ("same", 1, "relu"), ("same", 2, "sigmoid"), ("valid", (2, 1), "tanh"),
    ("same", 1, "leaky_relu"),
])
def test_conv2d_forward_and_backward(rng, padding, strides, activation):
    layer = Conv2D(3, (3, 2), strides=strides, padding=padding, activation=activation, dtype="float64")
    x = rng.standard_normal((2, 2, 6, 5))
    layer.build(x.shape[1:], rng)
    randomised(layer, rng)
    stride = strides if isinstance(strides, tuple) else (strides, strides)
    ref = naive_activation(activation, naive_conv2d(x, layer.params["kernel"], layer.params["bias"], stride, padding))
    y = layer.forward(x)
    assert y.shape == (2, *layer.output_shape) == ref.shape
    assert rel_error(y, ref) < 1e-12
    check_gradients(layer, x, rng)


def test_conv2d_parameters_are_keras_shaped_and_initialised(rng):
    layer = Conv2D(8, 3)
    layer.build((4, 10, 10), rng)
    kernel, bias = layer.params["kernel"], layer.params["bias"]
    assert kernel.shape == (8, 4, 3, 3) and kernel.dtype == numpy.float32
    limit = math.sqrt(6 / (4 * 9 + 8 * 9))  # glorot_uniform: fan_in C·R·S, fan_out F·R·S
    assert numpy.abs(kernel).max() <= limit and numpy.abs(kernel).max() > 0.5 * limit
    assert numpy.all(bias == 0) and bias.shape == (8,)
    assert layer.count_params() == ((4 * 9 + 1) * 8, 0)
    assert layer.output_shape == (8, 8, 8)


def test_conv2d_without_bias(rng):
    layer = Conv2D(2, 3, use_bias=False, dtype="float64")
    x = rng.standard_normal((2, 3, 5, 5))
    layer.build(x.shape[1:], rng)
    assert set(layer.params) == {"kernel"}
    check_gradients(layer, x, rng)


def test_same_seed_same_weights():
    a, b = Conv2D(4, 3), Conv2D(4, 3)
    a.build((2, 6, 6), numpy.random.default_rng(5))
    b.build((2, 6, 6), numpy.random.default_rng(5))
    assert numpy.array_equal(a.params["kernel"], b.params["kernel"])


# ---- Dense and activations -----------------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_dense_forward_and_backward(rng, activation):
    layer = Dense(4, activation=activation, dtype="float64")
    x = rng.standard_normal((3, 5))
    layer.build((5,), rng)
    randomised(layer, rng)
    ref = naive_activation(activation, x @ layer.params["kernel"].T + layer.params["bias"])
    assert rel_error(layer.forward(x), ref) < 1e-12
    check_gradients(layer, x, rng)


def test_dense_initialisation(rng):
    layer = Dense(6)
    layer.build((10,), rng)
    assert layer.params["kernel"].shape == (6, 10)
    assert numpy.abs(layer.params["kernel"]).max() <= math.sqrt(6 / 16)
    assert layer.count_params() == (66, 0)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear"])
def test_activation_layer(rng, name):
    layer = Activation(name)
    x = rng.standard_normal((3, 7)) * 2
    assert rel_error(layer.forward(x), naive_activation(name, x)) < 1e-12
    check_gradients(layer, x, rng)


def test_activation_layer_on_images(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    check_gradients(Activation("tanh"), x, rng)


def test_logits_skip_the_activation_and_its_backward(rng):
    layer = Dense(3, activation="softmax", dtype="float64")
    x = rng.standard_normal((4, 5))
    layer.build((5,), rng)
    z = layer.forward(x, logits=True)
    assert rel_error(z, x @ layer.params["kernel"].T) < 1e-12  # the bias starts at zero
    dy = rng.standard_normal(z.shape)
    assert rel_error(layer.backward(dy), dy @ layer.params["kernel"]) < 1e-12


def test_relu_and_leaky_relu_layers(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    assert rel_error(ReLU().forward(x), numpy.maximum(x, 0)) == 0
    leaky = LeakyReLU()  # Keras's default slope 0.3
    assert rel_error(leaky.forward(x), numpy.where(x > 0, x, 0.3 * x)) < 1e-15
    assert LeakyReLU(alpha=0.1).negative_slope == 0.1
    check_gradients(LeakyReLU(negative_slope=0.1), x, rng)
    check_gradients(ReLU(), x, rng)


# ---- pooling, flatten, dropout -------------------------------------------------------------------
@pytest.mark.parametrize("cls, kind", [(MaxPooling2D, "max"), (AveragePooling2D, "avg"), (SumPooling2D, "sum")])
@pytest.mark.parametrize("pool_size, strides, padding", [(2, None, "valid"), (3, None, "same"), ((3, 2), 1, "same")])
def test_pooling(rng, cls, kind, pool_size, strides, padding):
    layer = cls(pool_size, strides, padding, dtype="float64")
    x = rng.standard_normal((2, 3, 7, 5))
    size = pool_size if isinstance(pool_size, tuple) else (pool_size, pool_size)
    stride = size if strides is None else (strides, strides)
    ref = naive_pool(x, kind, size, stride, padding)
    y = layer.forward(x)
    assert y.shape == ref.shape and (2, *layer.output_shape) == ref.shape
    assert rel_error(y, ref) < 1e-12
    check_gradients(layer, x, rng)


def test_max_pooling_default_stride_is_pool_size():
    layer = MaxPooling2D(pool_size=(3, 3))
    assert layer.strides == (3, 3)
    layer.build((512, 98, 98))
    assert layer.output_shape == (512, 32, 32)


def test_flatten_keeps_the_channel_major_order(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Flatten()
    y = layer.forward(x)
    assert numpy.array_equal(y, x.reshape(2, 60)) and layer.output_shape == (60,)
    check_gradients(layer, x, rng)


def test_dropout(rng):
    x = rng.standard_normal((4, 3, 8, 8)) + 3  # no zeros in x, so y == 0 marks exactly the dropped elements
    layer = Dropout(0.25, seed=3)
    assert layer.forward(x) is x  # inference: the identity
    y = layer.forward(x, training=True)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.9
    assert numpy.allclose(y[kept], x[kept] / 0.75)
    dy = rng.standard_normal(x.shape)
    assert numpy.allclose(layer.backward(dy), numpy.where(kept, dy / 0.75, 0))
    assert not numpy.array_equal(layer.forward(x, training=True) != 0, kept)  # a fresh mask each step
    again = Dropout(0.25, seed=3)
    assert numpy.array_equal(again.forward(x, training=True), y)  # the seed fixes the sequence of masks


# ---- BatchNormalization --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 3, 4, 2), (6, 4)])
def test_batch_normalization_training(rng, shape):
    layer = BatchNormalization(dtype="float64")
    x = rng.standard_normal(shape) * 2 + 1
    layer.build(shape[1:], rng)
    randomised(layer, rng)
    axes = (0, 2, 3) if len(shape) == 4 else (0,)
    bshape = (1, -1, 1, 1) if len(shape) == 4 else (1, -1)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    ref = (x - mean.reshape(bshape)) / numpy.sqrt(var.reshape(bshape) + 1e-3)
    ref = ref * layer.params["gamma"].reshape(bshape) + layer.params["beta"].reshape(bshape)
    assert rel_error(layer.forward(x, training=True), ref) < 1e-12
    # Keras's momentum 0.99 weighs the old value; the moving variance takes the unbiased batch variance
    m = x.size // shape[1]
    assert rel_error(layer.state["moving_mean"], 0.01 * mean) < 1e-12
    assert rel_error(layer.state["moving_variance"], 0.99 + 0.01 * var * m / (m - 1)) < 1e-12
    check_gradients(layer, x, rng)


def test_batch_normalization_inference_uses_moving_statistics(rng):
    layer = BatchNormalization(epsilon=1e-2, dtype="float64")
    x = rng.standard_normal((4, 3, 2, 2))
    layer.build(x.shape[1:], rng)
    randomised(layer, rng)
    layer.state["moving_mean"][...] = rng.standard_normal(3)
    layer.state["moving_variance"][...] = rng.random(3) + 0.5
    b = (1, -1, 1, 1)
    ref = ((x - layer.state["moving_mean"].reshape(b)) / numpy.sqrt(layer.state["moving_variance"].reshape(b) + 1e-2)
           * layer.params["gamma"].reshape(b) + layer.params["beta"].reshape(b))
    assert rel_error(layer.forward(x), ref) < 1e-12
    assert layer.count_params() == (6, 6)


# ---- CUDA against NumPy, same weights ------------------------------------------------------------
LAYER_CASES = {
    "conv_same_relu": (lambda: Conv2D(5, 3, padding="same", activation="relu"), (3, 3, 17, 31)),
    "conv_valid_stride2": (lambda: Conv2D(7, (5, 3), strides=2), (2, 5, 33, 17)),
    "dense_sigmoid": (lambda: Dense(65, activation="sigmoid"), (3, 33)),
    "dense_softmax": (lambda: Dense(17, activation="softmax"), (5, 31)),
    "max_pool_same": (lambda: MaxPooling2D(3, padding="same"), (2, 3, 17, 31)),
    "avg_pool_same": (lambda: AveragePooling2D(2, padding="same"), (2, 3, 17, 31)),
    "sum_pool": (lambda: SumPooling2D(3, strides=2), (2, 3, 17, 31)),
    "batch_norm": (lambda: BatchNormalization(), (3, 5, 7, 9)),
    "dropout": (lambda: Dropout(0.3, seed=11), (3, 5, 7, 9)),
    "leaky_relu": (lambda: LeakyReLU(), (3, 65)),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_matches_numpy_on_every_backend(on_backend, rng, case):
    factory, shape = LAYER_CASES[case]
    x = rng.standard_normal(shape).astype(numpy.float32)
    seed = int(rng.integers(2**31))
    results = []
    for name in ("numpy", on_backend):
        cnn_gpu.set_backend(name)
        layer = factory()
        layer.build(shape[1:], numpy.random.default_rng(seed))
        y = layer.forward(cnn_gpu.asarray(x), training=True)
        dy = numpy.random.default_rng(seed).standard_normal(y.shape).astype(numpy.float32)
        dx = layer.backward(cnn_gpu.asarray(dy))
        results.append((y, dx, dict(layer.grads), dict(layer.state)))
    (y0, dx0, g0, s0), (y1, dx1, g1, s1) = results
    assert rel_error(y1, y0) < 1e-5 and rel_error(dx1, dx0) < 1e-5
    for name in g0:
        assert rel_error(g1[name], g0[name]) < 1e-5, name
    for name in s0:
        assert rel_error(s1[name], s0[name]) < 1e-5, name


# ---- config and errors ---------------------------------------------------------------------------
def test_config_round_trip():
    layer = Conv2D(4, (3, 5), strides=2, padding="same", activation="tanh", use_bias=False, input_shape=(9, 9, 2))
    again = from_config("Conv2D", layer.get_config())
    assert again.get_config() == layer.get_config()


@pytest.mark.parametrize("make, argument", [
    (lambda: Conv2D(4, 3, padding="full"), "padding"),
    (lambda: Conv2D(0, 3), "filters"),
    (lambda: Conv2D(4, 0), "kernel_size"),
    (lambda: Conv2D(4, 3, strides=(1, 2, 3)), "strides"),
    (lambda: Conv2D(4, 3, activation="swishy"), "activation"),
    (lambda: Dense(0), "units"),
    (lambda: Dense(3, activation="mish"), "activation"),
    (lambda: Activation("relu7"), "activation"),
    (lambda: Dropout(1.0), "rate"),
    (lambda: BatchNormalization(momentum=1.5), "momentum"),
    (lambda: BatchNormalization(epsilon=0), "epsilon"),
    (lambda: MaxPooling2D(pool_size=0), "pool_size"),
    (lambda: ReLU(negative_slope=-1), "negative_slope"),
    (lambda: Conv2D(4, 3, data_format="nhwc"), "data_format"),
])
def test_bad_arguments(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_dense_needs_flat_input(rng):
    with pytest.raises(ValueError, match="Flatten"):
        Dense(3).forward(rng.standard_normal((2, 3, 4, 4)).astype(numpy.float32))


def test_conv_needs_images_and_matching_channels(rng):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Conv2D(2, 3).forward(rng.standard_normal((2, 9)).astype(numpy.float32))
    layer = Conv2D(2, 3)
    layer.forward(rng.standard_normal((1, 3, 8, 8)).astype(numpy.float32))
    with pytest.raises(ValueError, match=r"x of shape \(1, 4, 8, 8\)"):
        layer.forward(rng.standard_normal((1, 4, 8, 8)).astype(numpy.float32))


def test_pool_larger_than_input(rng):
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2D(5).forward(rng.standard_normal((1, 1, 3, 3)).astype(numpy.float32))


def test_backward_before_forward():
    layer = Dense(3)
    layer.build((4,))
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(numpy.ones((2, 3), numpy.float32))
    with pytest.raises(RuntimeError, match="forward"):
        Dropout(0.5).backward(numpy.ones((2, 3), numpy.float32))
