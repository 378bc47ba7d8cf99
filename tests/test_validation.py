"""Bad arguments get a clear error naming them, the same on both backends, before any work and before any
state is written: required arrays, real-number and int arguments (NumPy scalars accepted as PyTorch accepts
them), non-finite hyper-parameters, read-only operands of in-place ops, 32-bit limits."""
import math

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu import losses, optimizers, to_numpy
from cnn_gpu.layers import BatchNormalization, Dense, Dropout, LeakyReLU, ReLU
from cnn_gpu.models import Sequential


def f32(xp, *shape, seed=0):
    return xp.asarray(numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32))


# ---- required arrays ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call, name", [
    (lambda xp: F.conv2d(None, f32(xp, 2, 1, 3, 3)), "x"),
    (lambda xp: F.conv2d(f32(xp, 1, 1, 5, 5), None), "w"),
    (lambda xp: F.conv2d_backward(None, f32(xp, 1, 1, 5, 5), f32(xp, 2, 1, 3, 3)), "dy"),
    (lambda xp: F.linear(None, f32(xp, 3, 4)), "x"),
    (lambda xp: F.linear(f32(xp, 2, 4), None), "w"),
    (lambda xp: F.linear_backward(f32(xp, 2, 3), f32(xp, 2, 4), None), "w"),
    (lambda xp: F.matmul(f32(xp, 2, 3), None), "b"),
    (lambda xp: F.max_pool2d(None, 2), "x"),
    (lambda xp: F.max_pool2d_backward(f32(xp, 1, 1, 2, 2), None, (1, 1, 4, 4), 2), "indices"),
    (lambda xp: F.avg_pool2d(None, 2), "x"),
    (lambda xp: F.batch_norm(None), "x"),
    (lambda xp: F.batch_norm_backward(f32(xp, 4, 3), None, None, f32(xp, 3), f32(xp, 3)), "x"),
    (lambda xp: F.softmax(None), "x"),
    (lambda xp: F.softmax_cross_entropy(f32(xp, 2, 3), None), "labels"),
    (lambda xp: F.relu(None), "x"),
    (lambda xp: F.relu_backward(f32(xp, 3), None), "y"),
    (lambda xp: F.dropout(None, 0.5, 1), "x"),
    (lambda xp: F.flatten(None), "x"),
    (lambda xp: F.sgd_update(f32(xp, 3), None, None, 0.1), "grad"),
    (lambda xp: F.adam_update(f32(xp, 3), f32(xp, 3), None, f32(xp, 3), 1), "m"),
])
def test_none_for_a_required_array_names_it(backend, xp, call, name):
    with pytest.raises(TypeError, match=f"^{name} is required"):
        call(xp)


# ---- numbers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, name", [
    (lambda xp: F.leaky_relu(f32(xp, 3), negative_slope="0.1"), "negative_slope"),
    (lambda xp: F.conv2d(f32(xp, 1, 1, 5, 5), f32(xp, 2, 1, 3, 3), activation="leaky_relu", negative_slope=None), "negative_slope"),
    (lambda xp: F.linear(f32(xp, 2, 4), f32(xp, 3, 4), activation="leaky_relu", negative_slope=[0.1]), "negative_slope"),
    (lambda xp: F.dropout(f32(xp, 3), "half", 1), "rate"),
    (lambda xp: F.dropout_backward(f32(xp, 3), xp.ones(3, numpy.uint8), None), "rate"),
    (lambda xp: F.batch_norm(f32(xp, 4, 3), eps="tiny"), "eps"),
    (lambda xp: F.batch_norm(f32(xp, 4, 3), momentum=True), "momentum"),
    (lambda xp: F.sgd_update(f32(xp, 3), f32(xp, 3), None, "0.1"), "learning_rate"),
    (lambda xp: F.adam_update(f32(xp, 3), f32(xp, 3), f32(xp, 3), f32(xp, 3), 1, beta_1=None), "beta_1"),
    (lambda xp: F.adam_update(f32(xp, 3), f32(xp, 3), f32(xp, 3), f32(xp, 3), 1, epsilon=1j), "epsilon"),
])
def test_a_non_numeric_argument_is_a_type_error_naming_it(backend, xp, call, name):
    with pytest.raises(TypeError, match=f"^{name} must be a real number"):
        call(xp)


@pytest.mark.parametrize("make, name", [
    (lambda: ReLU(negative_slope="0.1"), "negative_slope"),
    (lambda: LeakyReLU(negative_slope=None), "negative_slope"),
    (lambda: Dropout("0.5"), "rate"),
    (lambda: BatchNormalization(epsilon="small"), "epsilon"),
    (lambda: BatchNormalization(momentum=None), "momentum"),
    (lambda: optimizers.SGD(learning_rate="fast"), "learning_rate"),
    (lambda: optimizers.Adam(beta_2="0.9"), "beta_2"),
])
def test_layers_and_optimizers_name_a_non_numeric_argument(make, name):
    with pytest.raises(TypeError, match=f"^{name} must be a real number"):
        make()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e400])
def test_non_finite_hyper_parameters_are_refused(bad):
    for make, name in ((lambda v: optimizers.Adam(learning_rate=v), "learning_rate"),
                       (lambda v: optimizers.SGD(learning_rate=v), "learning_rate"),
                       (lambda v: optimizers.SGD(momentum=v), "momentum"),
                       (lambda v: optimizers.Adam(epsilon=v), "epsilon"),
                       (lambda v: BatchNormalization(epsilon=v), "epsilon"),
                       (lambda v: Dropout(v), "rate"),
                       (lambda v: LeakyReLU(v), "negative_slope")):
        with pytest.raises(ValueError, match=f"^{name} must be"):
            make(bad)
    with pytest.raises(ValueError, match="learning_rate"):
        F.adam_update(*(numpy.zeros(3, numpy.float32) for _ in range(4)), 1, learning_rate=bad)


def test_numpy_scalars_are_accepted_where_pytorch_accepts_them(backend, xp):
    x = f32(xp, 2, 1, 6, 6)
    w = f32(xp, 3, 1, 3, 3, seed=1)
    by_numpy = F.conv2d(x, w, stride=numpy.int64(2), padding=(numpy.int32(1), numpy.int64(1)),
                        activation="leaky_relu", negative_slope=numpy.float32(0.25))
    by_python = F.conv2d(x, w, stride=2, padding=1, activation="leaky_relu", negative_slope=float(numpy.float32(0.25)))
    assert numpy.array_equal(to_numpy(by_numpy), to_numpy(by_python))
    y, indices = F.max_pool2d(x, numpy.int64(2), stride=numpy.int16(2))
    assert numpy.array_equal(to_numpy(y), to_numpy(F.max_pool2d(x, 2)[0]))
    kept, mask = F.dropout(x, numpy.float32(0.5), numpy.uint64(7))
    assert numpy.array_equal(to_numpy(kept), to_numpy(F.dropout(x, float(numpy.float32(0.5)), 7)[0]))
    assert Dropout(numpy.float32(0.25)).rate == float(numpy.float32(0.25))
    assert optimizers.Adam(learning_rate=numpy.float64(0.01)).learning_rate == 0.01
    assert BatchNormalization(momentum=numpy.float32(0.5), epsilon=numpy.float64(1e-3)).momentum == 0.5


@pytest.mark.parametrize("stride", [2**31, (1, 2**31), numpy.int64(2**40)])
def test_a_stride_past_32_bits_is_the_same_error_on_both_backends(backend, xp, stride):
    x, w = f32(xp, 1, 1, 5, 5), f32(xp, 1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"stride must be at most 2\*\*31 - 1"):
        F.conv2d(x, w, stride=stride)
    with pytest.raises(ValueError, match=r"stride must be at most 2\*\*31 - 1"):
        F.max_pool2d(x, 2, stride=stride)
    with pytest.raises(ValueError, match=r"padding must be at most 2\*\*31 - 1"):
        F.avg_pool2d(x, 2, padding=2**31)


def test_flatten_of_an_empty_batch(backend, xp):
    y = F.flatten(xp.zeros((0, 3, 4, 5), numpy.float32))
    assert y.shape == (0, 60)
    assert F.flatten_backward(y, (0, 3, 4, 5)).shape == (0, 3, 4, 5)


# ---- the model's arguments ------------------------------------------------------------------------------
def small_model(optimizer="adam"):
    model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2, activation="softmax")], seed=0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def test_fit_with_string_targets_is_a_clear_error():
    x = numpy.ones((4, 3), numpy.float32)
    with pytest.raises(TypeError, match="y must hold numbers .*dtype <U"):
        small_model().fit(x, numpy.array(["a", "b", "a", "b"]), verbose=0)
    for loss in ("categorical_crossentropy", "binary_crossentropy", "mse"):
        with pytest.raises(TypeError, match=f"y must hold numbers for {losses.get(loss).name}"):
            losses.get(loss).targets(numpy.array([["a", "b"]]), (2,))


@pytest.mark.parametrize("split, error", [("0.2", TypeError), (None, TypeError), (math.nan, ValueError), (1.0, ValueError)])
def test_fit_names_a_bad_validation_split(split, error):
    with pytest.raises(error, match="validation_split"):
        small_model().fit(numpy.ones((10, 3), numpy.float32), numpy.zeros(10, numpy.int64), validation_split=split, verbose=0)


def test_sgd_momentum_one_is_keras_range_and_trains():
    """Keras takes momentum in [0, 1]; 1 keeps the whole velocity. The optimizer and the op agree, so fit runs, and
    two steps follow v = m v - lr g; w += v."""
    model = small_model(optimizers.SGD(learning_rate=0.1, momentum=1.0))
    x, y = numpy.random.default_rng(0).random((4, 3), dtype=numpy.float32), numpy.array([0, 1, 0, 1])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        optimizers.SGD(momentum=1.0 + 1e-9)
    w, v, g = (numpy.array([1.0, -2.0], numpy.float32), numpy.zeros(2, numpy.float32),
               numpy.array([0.5, 0.25], numpy.float32))
    for _ in range(2):
        F.sgd_update(w, g, v, 0.1, 1.0)
    assert numpy.allclose(v, -0.1 * g * 2) and numpy.allclose(w, numpy.array([1.0, -2.0]) - 0.1 * g * 3)


# ---- in-place ops: every operand checked before anything is written --------------------------------------
def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def test_adam_with_a_read_only_param_leaves_m_and_v_untouched():
    rng = numpy.random.default_rng(1)
    param, grad, m, v = (rng.standard_normal(5).astype(numpy.float32) for _ in range(4))
    m0, v0 = m.copy(), v.copy()
    with pytest.raises(ValueError, match="^param is read-only"):
        F.adam_update(read_only(param), grad, m, v, 1)
    assert numpy.array_equal(m, m0) and numpy.array_equal(v, v0)
    with pytest.raises(ValueError, match="^v is read-only"):
        F.adam_update(param, grad, m, read_only(v), 1)
    assert numpy.array_equal(m, m0)


def test_sgd_with_a_read_only_param_leaves_the_velocity_untouched():
    rng = numpy.random.default_rng(2)
    param, grad, velocity = (rng.standard_normal(5).astype(numpy.float32) for _ in range(3))
    before = velocity.copy()
    with pytest.raises(ValueError, match="^param is read-only"):
        F.sgd_update(read_only(param), grad, velocity, 0.1, momentum=0.9)
    assert numpy.array_equal(velocity, before)
    param_before = param.copy()
    with pytest.raises(ValueError, match="^velocity is read-only"):
        F.sgd_update(param, grad, read_only(velocity), 0.1, momentum=0.9)
    assert numpy.array_equal(param, param_before)


def test_batch_norm_with_a_read_only_running_var_leaves_the_running_mean_untouched():
    x = numpy.random.default_rng(3).standard_normal((8, 3)).astype(numpy.float32)
    running_mean = numpy.zeros(3, numpy.float32)
    with pytest.raises(ValueError, match="^running_var is read-only"):
        F.batch_norm(x, running_mean=running_mean, running_var=read_only(numpy.ones(3, numpy.float32)))
    assert not running_mean.any()
    y, _, _ = F.batch_norm(x, running_mean=running_mean, running_var=read_only(numpy.ones(3, numpy.float32)),
                           training=False)  # inference writes nothing: read-only statistics are fine
    assert y.shape == x.shape


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex64"])
def test_a_layer_dtype_the_ops_do_not_compute_in_is_refused_at_construction(dtype):
    with pytest.raises(TypeError, match=f"dtype must be float32 .*got {dtype}"):
        Dense(3, dtype=dtype)
    assert Dense(3, dtype="float64").dtype == numpy.float64
