"""The layers, initialisers and metrics Keras CNN examples use: GlobalAveragePooling2D, GlobalMaxPooling2D,
ZeroPadding2D, Rescaling, ELU, Softmax against plain NumPy definitions and finite differences (and real
Keras where installed); kernel_initializer / bias_initializer by Keras name against Keras's formulas;
the metrics against direct computations; keras.datasets.mnist.load_data from Keras's cache file."""
import os

import numpy
import pytest

import cnn_gpu as keras
from checks import numeric_grad, rel_error
from cnn_gpu import initializers, layers, losses, metrics
from cnn_gpu.datasets import mnist


# ---- layers ------------------------------------------------------------------------------------------
def layer_gradient_check(layer, x, rng):
    """backward against central differences of sum(forward(x) · dy), float64."""
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    assert rel_error(dx, numeric_grad(lambda v: layer.forward(v, training=True), x.copy(), dy)) < 1e-7


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_matches_definitions_and_gradients(backend, xp, rng, keepdims):
    x = rng.standard_normal((3, 4, 5, 6)).astype(numpy.float32)
    average, maximum = layers.GlobalAveragePooling2D(keepdims=keepdims), layers.GlobalMaxPooling2D(keepdims=keepdims)
    shape = (3, 4, 1, 1) if keepdims else (3, 4)
    assert rel_error(average.forward(xp.asarray(x)), x.mean(axis=(2, 3)).reshape(shape)) < 1e-6
    assert rel_error(maximum.forward(xp.asarray(x)), x.max(axis=(2, 3)).reshape(shape)) == 0
    x64 = rng.standard_normal((2, 3, 4, 5))
    layer_gradient_check(layers.GlobalAveragePooling2D(keepdims=keepdims, dtype="float64"), x64, rng)
    layer_gradient_check(layers.GlobalMaxPooling2D(keepdims=keepdims, dtype="float64"), x64, rng)


@pytest.mark.parametrize("padding, pads", [(1, (1, 1, 1, 1)), ((2, 1), (2, 2, 1, 1)), (((0, 3), (2, 1)), (0, 3, 2, 1))])
def test_zero_padding_forms(backend, xp, rng, padding, pads):
    x = rng.standard_normal((2, 3, 4, 5)).astype(numpy.float32)
    layer = layers.ZeroPadding2D(padding)
    expected = numpy.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    assert rel_error(layer.forward(xp.asarray(x)), expected) == 0
    assert layer.output_shape == expected.shape[1:]
    layer_gradient_check(layers.ZeroPadding2D(padding, dtype="float64"), rng.standard_normal((2, 2, 3, 3)), rng)


def test_rescaling_and_elu(rng):
    x = rng.standard_normal((4, 6))
    assert rel_error(layers.Rescaling(1 / 255, offset=-1, dtype="float64").forward(x), x / 255 - 1) < 1e-15
    layer_gradient_check(layers.Rescaling(0.5, offset=2.0, dtype="float64"), x, rng)
    elu = layers.ELU(alpha=0.7, dtype="float64")
    assert rel_error(elu.forward(x), numpy.where(x > 0, x, 0.7 * numpy.expm1(x))) < 1e-15
    layer_gradient_check(layers.ELU(alpha=0.7, dtype="float64"), x, rng)


def test_layers_against_real_keras(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    x = rng.standard_normal((2, 7, 6, 3)).astype(numpy.float32)
    pairs = [(layers.GlobalAveragePooling2D(), real.layers.GlobalAveragePooling2D()),
             (layers.GlobalMaxPooling2D(keepdims=True), real.layers.GlobalMaxPooling2D(keepdims=True)),
             (layers.ZeroPadding2D(((1, 2), (3, 0))), real.layers.ZeroPadding2D(((1, 2), (3, 0)))),
             (layers.Rescaling(0.5, 0.25), real.layers.Rescaling(0.5, 0.25)),
             (layers.Activation("gelu"), real.layers.Activation("gelu")),
             (layers.Activation("selu"), real.layers.Activation("selu")),
             (layers.Activation("swish"), real.layers.Activation("swish"))]
    for ours, theirs in pairs:
        model = keras.Sequential([keras.Input(shape=(7, 6, 3)), ours])
        assert rel_error(model.predict(x, verbose=0), real.ops.convert_to_numpy(theirs(x))) < 1e-6, type(ours).__name__


def test_a_cnn_with_the_new_layers_trains(rng):
    model = keras.Sequential([keras.Input(shape=(8, 8, 1)), layers.Rescaling(1 / 255), layers.ZeroPadding2D(1),
                              layers.Conv2D(4, 3, activation="elu", kernel_initializer="he_normal", use_bias=False),
                              layers.GlobalMaxPooling2D(), layers.Dense(3), layers.Softmax()], seed=0)
    model.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert "Total params: 51" in model.summary(print_fn=None)  # 3·3·1·4 (no bias) + 4·3 + 3
    x = rng.integers(0, 256, (30, 8, 8, 1)).astype(numpy.float32)
    y = (x.mean(axis=(1, 2, 3)) > 127.5).astype(int) + (x[:, 0, 0, 0] > 200)
    history = model.fit(x, y, epochs=3, batch_size=10, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_layer_configs_round_trip():
    for layer in (layers.ZeroPadding2D(((1, 2), (0, 3))), layers.Rescaling(0.5, 1.0), layers.GlobalMaxPooling2D(True),
                  layers.Softmax(), layers.ELU(0.3), layers.Dense(4, kernel_initializer=initializers.HeUniform(seed=3),
                                                                    bias_initializer="ones", trainable=False)):
        again = layers.from_config(type(layer).__name__, layer.get_config())
        assert again.get_config() == layer.get_config()


# ---- initialisers -----------------------------------------------------------------------------------
# Keras's formulas: variance-scaling with n = fan_in, fan_out or their mean; truncated draws at ±2σ
@pytest.mark.parametrize("name, scale, mode, truncated", [
    ("glorot_uniform", 1, "fan_avg", None), ("glorot_normal", 1, "fan_avg", True), ("he_normal", 2, "fan_in", True),
    ("he_uniform", 2, "fan_in", None), ("lecun_normal", 1, "fan_in", True), ("lecun_uniform", 1, "fan_in", None),
])
def test_variance_scaling_initializers_follow_keras_formulas(name, scale, mode, truncated):
    layer = layers.Conv2D(64, (3, 3), kernel_initializer=name)
    layer.build((32, 12, 12), numpy.random.default_rng(0))
    kernel = layer.get_weights()[0]  # Keras's (3, 3, 32, 64): fan_in 3·3·32, fan_out 3·3·64
    n = {"fan_in": 288, "fan_avg": (288 + 576) / 2}[mode]
    variance = scale / n
    if truncated is None:
        limit = numpy.sqrt(3 * variance)
        assert numpy.abs(kernel).max() <= limit and numpy.abs(kernel).max() > 0.99 * limit
    else:
        stddev = numpy.sqrt(variance) / 0.87962566103423978
        assert numpy.abs(kernel).max() <= 2 * stddev
    assert kernel.var() == pytest.approx(variance, rel=0.05)  # 18,432 draws
    assert abs(kernel.mean()) < 4 * numpy.sqrt(variance / kernel.size)


def test_plain_initializers_and_use_bias():
    dense = layers.Dense(5, kernel_initializer="ones", bias_initializer=initializers.Constant(0.5))
    dense.build((3,))
    kernel, bias = dense.get_weights()
    assert (kernel == 1).all() and (bias == 0.5).all()
    no_bias = layers.Conv2D(2, 3, use_bias=False)
    no_bias.build((1, 5, 5))
    assert [w.shape for w in no_bias.get_weights()] == [(3, 3, 1, 2)]
    draws = initializers.RandomNormal(stddev=0.1, seed=4)((1000,))
    assert draws.std() == pytest.approx(0.1, rel=0.1)
    numpy.testing.assert_array_equal(initializers.HeNormal(seed=7)((4, 4)), initializers.HeNormal(seed=7)((4, 4)))
    assert initializers.keras_fans((3, 3, 8, 16)) == (72.0, 144.0)


def test_initializers_match_real_keras_statistics():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    for name in ("glorot_normal", "he_uniform", "lecun_normal"):
        theirs = real.ops.convert_to_numpy(real.initializers.get(name)((3, 3, 16, 32)))
        ours = initializers.get(name)((3, 3, 16, 32))
        assert ours.std() == pytest.approx(theirs.std(), rel=0.06), name
        assert numpy.abs(ours).max() <= numpy.abs(theirs).max() * 1.1 + 1e-6, name


def test_unknown_initializer_lists_the_names():
    with pytest.raises(ValueError, match="bias_initializer must be one of .*glorot_normal.*he_uniform"):
        layers.Dense(3, bias_initializer="xavier")


# ---- metrics ------------------------------------------------------------------------------------------
def test_metrics_against_direct_computations(rng):
    outputs = rng.standard_normal((50, 6))
    labels = rng.integers(0, 6, 50)
    top = numpy.argsort(-outputs, axis=1)
    for k in (1, 3, 5):
        expected = numpy.mean([labels[i] in top[i, :k] for i in range(50)])
        assert metrics.TopKCategoricalAccuracy(k=k).batch_sum(outputs, labels, None) / 50 == pytest.approx(expected)
    assert metrics.CategoricalAccuracy().batch_sum(outputs, labels, None) / 50 == pytest.approx(
        numpy.mean(outputs.argmax(1) == labels))
    one_hot = losses.to_categorical(labels, 6)
    assert metrics.get("categorical_accuracy", None).batch_sum(outputs, one_hot, None) == \
        metrics.SparseCategoricalAccuracy().batch_sum(outputs, labels, None)
    # binary accuracy on logits of a fused sigmoid: p > 0.5 exactly when the logit > 0
    logits, truth = rng.standard_normal((40, 2)), rng.integers(0, 2, (40, 2)).astype(float)
    expected = numpy.mean((1 / (1 + numpy.exp(-logits)) > 0.7) == truth)
    assert metrics.BinaryAccuracy(threshold=0.7).batch_sum(logits, truth, "sigmoid") / 40 == pytest.approx(expected)
    probabilities = numpy.exp(outputs) / numpy.exp(outputs).sum(1, keepdims=True)
    mae = metrics.get("mae", None).batch_sum(outputs, labels, "softmax") / 50
    assert mae == pytest.approx(numpy.mean(numpy.abs(probabilities - one_hot)))


def test_metrics_match_real_keras(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    probabilities = rng.random((30, 5))
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = rng.integers(0, 5, 30)
    one_hot = losses.to_categorical(labels, 5)
    as_numpy = real.ops.convert_to_numpy
    cases = [("top_k_categorical_accuracy", one_hot, real.metrics.top_k_categorical_accuracy(one_hot, probabilities, k=5)),
             ("categorical_accuracy", one_hot, real.metrics.categorical_accuracy(one_hot, probabilities)),
             ("sparse_categorical_accuracy", labels,
              real.metrics.sparse_categorical_accuracy(labels, probabilities))]
    for name, targets, theirs in cases:
        ours = metrics.get(name, None).batch_sum(probabilities, labels, None) / 30
        assert ours == pytest.approx(float(numpy.mean(as_numpy(theirs)))), name
    top3 = real.metrics.TopKCategoricalAccuracy(k=3)
    top3.update_state(one_hot, probabilities)
    assert metrics.TopKCategoricalAccuracy(k=3).batch_sum(probabilities, labels, None) / 30 == pytest.approx(
        float(as_numpy(top3.result())))


def test_to_categorical():
    assert losses.to_categorical([2, 0], 4).tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert losses.to_categorical(numpy.array([[1], [2]])).shape == (2, 3)
    assert losses.to_categorical([1]).dtype == numpy.float32
    with pytest.raises(ValueError, match="num_classes=2"):
        losses.to_categorical([3], 2)
    with pytest.raises(ValueError, match="integer class labels"):
        losses.to_categorical([0.5])


# ---- keras.datasets.mnist --------------------------------------------------------------------------------
def write_cache(folder, rng, n=(12, 5)):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": rng.integers(0, 256, (n[0], 28, 28), dtype=numpy.uint8), "y_train": rng.integers(0, 10, n[0], dtype=numpy.uint8),
              "x_test": rng.integers(0, 256, (n[1], 28, 28), dtype=numpy.uint8), "y_test": rng.integers(0, 10, n[1], dtype=numpy.uint8)}
    numpy.savez(folder / "mnist.npz", **arrays)
    return arrays


def check_loaded(loaded, arrays):
    (x_train, y_train), (x_test, y_test) = loaded
    for ours, name in ((x_train, "x_train"), (y_train, "y_train"), (x_test, "x_test"), (y_test, "y_test")):
        assert ours.dtype == numpy.uint8
        numpy.testing.assert_array_equal(ours, arrays[name])


def test_mnist_from_keras_home(tmp_path, rng, monkeypatch):
    arrays = write_cache(tmp_path / "kh" / "datasets", rng)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    check_loaded(keras.datasets.mnist.load_data(), arrays)


def test_mnist_from_the_home_folder(tmp_path, rng, monkeypatch):
    arrays = write_cache(tmp_path / "home" / ".keras" / "datasets", rng)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    check_loaded(mnist.load_data(), arrays)
    check_loaded(mnist.load_data(str(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz")), arrays)


def test_mnist_from_idx_files(tmp_path, rng):
    from test_datasets import _write_mnist

    written = _write_mnist(tmp_path, rng, gzipped=True)
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=tmp_path)
    assert x_train.dtype == numpy.uint8 and x_train.ndim == 3 and y_test.dtype == numpy.uint8
    numpy.testing.assert_array_equal(x_train, written["train_images"])
    numpy.testing.assert_array_equal(y_test, written["test_labels"])


def test_mnist_missing_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=f"never downloads: put Keras's mnist.npz .* at {tmp_path / 'empty' / 'datasets' / 'mnist.npz'}"):
        mnist.load_data()


def test_mnist_rejects_a_file_that_is_not_keras_cache(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    numpy.savez(tmp_path / "datasets" / "mnist.npz", images=numpy.zeros(3))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="not Keras's mnist.npz: it lacks x_train, y_train, x_test, y_test"):
        mnist.load_data()


def test_fashion_mnist_from_keras_cache_folder(tmp_path, rng, monkeypatch):
    from test_datasets import _write_mnist

    folder = tmp_path / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    written = _write_mnist(folder, rng, gzipped=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    numpy.testing.assert_array_equal(x_test, written["test_images"])
    numpy.testing.assert_array_equal(y_train, written["train_labels"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="never downloads: put the four files .*fashion-mnist"):
        keras.datasets.fashion_mnist.load_data()


# ---- loss functions ---------------------------------------------------------------------------------------
def test_loss_functions_and_compile_with_them(rng):
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    p = numpy.exp(logits) / numpy.exp(logits).sum(1, keepdims=True)
    expected = -numpy.log(p[numpy.arange(6), labels])
    assert rel_error(losses.sparse_categorical_crossentropy(labels, p), expected) < 1e-12
    assert rel_error(losses.categorical_crossentropy(losses.to_categorical(labels, 4), logits, from_logits=True), expected) < 1e-12
    t = rng.integers(0, 2, (6, 3)).astype(float)
    q = 1 / (1 + numpy.exp(-logits[:, :3]))
    assert rel_error(losses.binary_crossentropy(t, q), -(t * numpy.log(q) + (1 - t) * numpy.log(1 - q)).mean(1)) < 1e-12
    assert isinstance(losses.get(losses.sparse_categorical_crossentropy), losses.SparseCategoricalCrossentropy)
    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(4, activation="softmax")], seed=0)
    model.compile(optimizer="sgd", loss=keras.losses.sparse_categorical_crossentropy)
    x = rng.standard_normal((6, 4)).astype(numpy.float32)
    assert model.evaluate(x, labels, verbose=0) == pytest.approx(
        losses.sparse_categorical_crossentropy(labels, model.predict(x, verbose=0)).mean(), rel=1e-5)


def test_loss_functions_match_real_keras(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    as_numpy = real.ops.convert_to_numpy
    p = rng.random((5, 3)) + 0.01
    p /= p.sum(1, keepdims=True)
    labels = rng.integers(0, 3, 5)
    one_hot = losses.to_categorical(labels, 3)
    t = rng.integers(0, 2, (5, 3)).astype(numpy.float32)
    for ours, theirs in ((losses.categorical_crossentropy(one_hot, p), real.losses.categorical_crossentropy(one_hot, p)),
                         (losses.sparse_categorical_crossentropy(labels, p), real.losses.sparse_categorical_crossentropy(labels, p)),
                         (losses.binary_crossentropy(t, p), real.losses.binary_crossentropy(t, p)),
                         (losses.mean_squared_error(t, p), real.losses.mean_squared_error(t, p))):
        assert rel_error(ours, as_numpy(theirs)) < 1e-6


def test_reshape_as_keras_reshapes(rng):
    """An MLP's output reshaped to an image and back: what Keras gives, in the data's channels-last layout."""
    model = keras.Sequential([keras.Input(shape=(24,)), layers.Reshape((2, 4, 3)), layers.Reshape((-1,))])
    x = rng.standard_normal((5, 24)).astype(numpy.float32)
    image_model = keras.Sequential([keras.Input(shape=(24,)), layers.Reshape((2, 4, 3))])
    numpy.testing.assert_array_equal(image_model.predict(x, verbose=0), x.reshape(5, 2, 4, 3))
    numpy.testing.assert_array_equal(model.predict(x, verbose=0), x)
    flat = keras.Sequential([keras.Input(shape=(2, 4, 3)), layers.Reshape((6, 4))])
    images = rng.standard_normal((5, 2, 4, 3)).astype(numpy.float32)
    numpy.testing.assert_array_equal(flat.predict(images, verbose=0), images.reshape(5, 6, 4))
    layer = layers.Reshape((3, 2, 2), dtype="float64")
    layer.build((2, 3, 2))
    layer_gradient_check(layer, rng.standard_normal((2, 2, 3, 2)), rng)
    with pytest.raises(ValueError, match="cannot reshape a sample of 24 values"):
        keras.Sequential([keras.Input(shape=(24,)), layers.Reshape((5, 5))])


def test_metric_functions_match_real_keras_and_compile_with_them(rng):
    p = rng.random((20, 6))
    labels = rng.integers(0, 6, 20)
    one_hot = losses.to_categorical(labels, 6)
    assert metrics.categorical_accuracy(one_hot, p).tolist() == (p.argmax(1) == labels).astype(float).tolist()
    assert metrics.sparse_top_k_categorical_accuracy(labels, p, k=2).mean() == pytest.approx(
        metrics.TopKCategoricalAccuracy(k=2).batch_sum(p, labels, None) / 20)
    assert isinstance(metrics.get(metrics.sparse_categorical_accuracy, None), metrics.SparseCategoricalAccuracy)
    try:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras as real
    except ImportError:
        return
    as_numpy = real.ops.convert_to_numpy
    t = rng.integers(0, 2, (20, 6)).astype(numpy.float32)
    for ours, theirs in ((metrics.categorical_accuracy(one_hot, p), real.metrics.categorical_accuracy(one_hot, p)),
                         (metrics.sparse_categorical_accuracy(labels, p), real.metrics.sparse_categorical_accuracy(labels, p)),
                         (metrics.binary_accuracy(t, p), real.metrics.binary_accuracy(t, p)),
                         (metrics.top_k_categorical_accuracy(one_hot, p, k=3), real.metrics.top_k_categorical_accuracy(one_hot, p, k=3))):
        numpy.testing.assert_allclose(ours, as_numpy(theirs), rtol=1e-6)


@pytest.mark.parametrize("applied", [None, "softmax"])
def test_metric_sums_on_every_backend(backend, xp, rng, applied):
    """The sums each metric adds on the device equal the NumPy ones (on CUDA: array ops and our softmax)."""
    outputs = rng.standard_normal((33, 7)).astype(numpy.float32)
    labels = rng.integers(0, 7, 33)
    for metric in (metrics.CategoricalAccuracy(), metrics.TopKCategoricalAccuracy(k=3), metrics.BinaryAccuracy(),
                   metrics.MeanAbsoluteError(), metrics.MeanSquaredError()):
        ours = metric.batch_sum(xp.asarray(outputs), xp.asarray(labels), applied)
        ref = metric.batch_sum(outputs, labels, applied)
        assert float(ours) == pytest.approx(float(ref), rel=1e-5), metric.name
