"""Sequential end to end: the 100×100 network's Keras program as written, the MNIST network learning, the summary's
Keras counts, gradients through the whole model (fused losses included) against finite differences,
the optimizers' formulas, save / load, reproducibility, and bad input."""
import numpy
import pytest

import cnn_gpu
from cnn_gpu import losses, optimizers
from cnn_gpu.layers import (Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D)
from cnn_gpu.models import Sequential, load_model
from cnn_gpu.networks import mnist_cnn
from checks import rel_error

# The Keras program that builds and trains the 100×100 network, with only its import lines changed (keras.models ->
# cnn_gpu.models, keras.layers / keras.layers.normalization -> cnn_gpu.layers) and epochs=10000 -> 1.
# X and y are given to it: a handful of 100x100x1 images, since its 512/256/128-filter layers are heavy.
PROGRAM_100X100 = """
from cnn_gpu.models import Sequential
from cnn_gpu.layers import Dense, Conv2D, Flatten, Activation, Dropout, MaxPooling2D
from cnn_gpu.layers import BatchNormalization
import numpy as np

#create model
model = Sequential()
#add model layers
model.add(Conv2D(512, kernel_size = (3,3), input_shape=(100,100,1)))
model.add(BatchNormalization())
model.add(Activation('relu'))
model.add(MaxPooling2D(pool_size=(3, 3)))
model.add(Dropout(0.1))
model.add(Conv2D(256, kernel_size = (3,3)))
model.add(BatchNormalization())
model.add(Activation('relu'))
model.add(MaxPooling2D(pool_size=(3, 3)))
model.add(Dropout(0.1))
model.add(Conv2D(128, kernel_size = (3,3)))
model.add(BatchNormalization())
model.add(Activation('relu'))
model.add(MaxPooling2D(pool_size=(3, 3)))
model.add(Dropout(0.1))
model.add(Flatten())
model.add(Dense(1, activation='sigmoid'))

model.summary()

model.compile(optimizer='adam', loss='binary_crossentropy', metrics=['accuracy'])
model.fit(X, y, batch_size=128, epochs=1, validation_split = 0.2)
"""


def expected_counts_100x100():
    """(total, trainable, non-trainable) by Keras's formulas for the 100×100 network on (100, 100, 1)."""
    conv = lambda r, s, c, f: (r * s * c + 1) * f  # noqa: E731
    size, trainable, frozen = 100, 0, 0
    channels = 1
    for filters in (512, 256, 128):
        trainable += conv(3, 3, channels, filters) + 2 * filters  # the convolution, BN's gamma and beta
        frozen += 2 * filters  # BN's moving mean and variance
        size = (size - 3 + 1 - 3) // 3 + 1  # 3x3 valid convolution, then 3x3 max-pooling, stride 3
        channels = filters
    trainable += (size * size * channels + 1) * 1  # Dense(1) on the flattened 2x2x128
    return trainable + frozen, trainable, frozen


def test_the_100x100_keras_program_runs_and_trains(rng, capsys):
    X = rng.random((5, 100, 100, 1)).astype(numpy.float32)
    y = rng.integers(0, 2, size=5)
    namespace = {"X": X, "y": y}
    exec(compile(PROGRAM_100X100, "program_100x100", "exec"), namespace)
    model = namespace["model"]
    history = model.history.history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 1 and numpy.isfinite(v[0]) for v in history.values())
    total, trainable, frozen = expected_counts_100x100()
    printed = capsys.readouterr().out
    assert total == 1_484_161  # the 1,186,945 does not follow from the formulas
    assert f"Total params: {total:,}" in printed
    assert f"Trainable params: {trainable:,}" in printed and f"Non-trainable params: {frozen:,}" in printed


def test_summary_table():
    model = Sequential([Conv2D(4, 3, input_shape=(10, 12, 2)), BatchNormalization(), MaxPooling2D(2), Flatten(),
                        Dense(3, activation="softmax")])
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    assert lines[0] == 'Model: "sequential"'
    assert any(line.split() == ["conv2d", "(Conv2D)", "(None,", "8,", "10,", "4)", str((9 * 2 + 1) * 4)] for line in lines)
    assert any(line.split()[:2] == ["flatten", "(Flatten)"] and "(None, 80)" in line for line in lines)
    assert "Non-trainable params: 8" in text
    assert f"Total params: {76 + 16 + 81 * 3:,}" in text


# ---- learning ------------------------------------------------------------------------------------
def mnist_network(seed=None, dropout=0.3):
    return mnist_cnn(seed=seed, dropout=dropout)


def blob_digits(rng, count, size=28, classes=10):
    """Images whose class is where a bright 6x6 square sits (plus noise), channels-last, with labels."""
    labels = rng.integers(0, classes, size=count)
    x = rng.random((count, size, size, 1)).astype(numpy.float32) * 0.3
    for image, label in zip(x, labels):
        top, left = 4 + 6 * (label // 4), 2 + 6 * (label % 4)
        image[top:top + 6, left:left + 6] += 1
    return x, labels


def test_the_mnist_network_learns(rng):
    x, y = blob_digits(rng, 48)
    model = mnist_network(seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert numpy.isfinite(loss) and 0 <= accuracy <= 1
    assert model.predict(x[:5]).shape == (5, 10)


def test_make_train_step_is_the_step_fit_runs(rng):
    """Batches run through make_train_step in fit's order leave the weights bit for bit where fit leaves them,
    and the step's running mean is fit's epoch loss; each call returns its batch's loss."""
    x, y = blob_digits(rng, 20)
    fitted, stepped = mnist_network(seed=3), mnist_network(seed=3)
    for model in (fitted, stepped):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = fitted.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    step = stepped.make_train_step(8)
    targets = stepped.prepare_targets(y)
    losses_seen = [float(cnn_gpu.to_numpy(step(stepped.to_layer_layout(x[i:i + 8]), targets[i:i + 8])))
                   for i in range(0, 20, 8)]
    for a, b in zip(fitted.layers, stepped.layers):
        for name in a.params:
            numpy.testing.assert_array_equal(cnn_gpu.to_numpy(a.params[name]), cnn_gpu.to_numpy(b.params[name]))
    means = step.totals.means()
    assert means["loss"] == pytest.approx(history.history["loss"][0], rel=1e-12)
    assert means["accuracy"] == history.history["accuracy"][0]
    assert means["loss"] == pytest.approx((8 * losses_seen[0] + 8 * losses_seen[1] + 4 * losses_seen[2]) / 20, rel=1e-6)
    assert step.replayed is False


def test_make_train_step_needs_a_compiled_model_and_a_batch_size():
    model = mnist_network(seed=0)
    with pytest.raises(ValueError, match="compile"):
        model.make_train_step(8)
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.make_train_step(0)
    with pytest.raises(ValueError, match="cuda_graph must be True, False or None"):
        model.make_train_step(8, cuda_graph="yes")


def test_the_100x100_network_has_its_keras_shapes():
    """Keras's counts for the 100×100 network: 100 → 98 → 32 → 30 → 10 → 8 → 2 pixels a side, 2·2·128 = 512
    features; conv (9·C + 1)·K, batch-norm 4·K (2·K non-trainable), dense 513."""
    from cnn_gpu.networks import cnn_100x100

    model = cnn_100x100(seed=0)
    assert model.output_shape == (1,)
    convs = [(9 * 1 + 1) * 512, (9 * 512 + 1) * 256, (9 * 256 + 1) * 128]
    assert model.count_params() == sum(convs) + 4 * (512 + 256 + 128) + 513
    assert [layer.output_shape for layer in model.layers if type(layer).__name__ == "MaxPooling2D"] == [
        (512, 32, 32), (256, 10, 10), (128, 2, 2)]


def test_fused_loss_equals_the_loss_of_the_predictions(rng):
    x, y = blob_digits(rng, 12)
    model = mnist_network(seed=2)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    probabilities = model.predict(x).astype(numpy.float64)
    assert numpy.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    loss, accuracy = model.evaluate(x, y, batch_size=5, verbose=0)
    assert abs(loss - numpy.mean(-numpy.log(probabilities[numpy.arange(12), y]))) < 1e-5
    assert accuracy == numpy.mean(probabilities.argmax(axis=1) == y)


def tiny_model(last, loss, seed=0):
    model = Sequential([Conv2D(2, 3, activation="tanh", input_shape=(6, 5, 2), dtype="float64"),
                        MaxPooling2D(2, padding="same", dtype="float64"), Flatten(dtype="float64"), last], seed=seed)
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss=loss, metrics=["accuracy"])
    return model


@pytest.mark.parametrize("units, activation, loss, targets", [
    (3, "softmax", "sparse_categorical_crossentropy", "labels"),
    (3, "softmax", "categorical_crossentropy", "soft"),
    (2, "sigmoid", "binary_crossentropy", "binary"),
    (1, "tanh", "mse", "real"),
    (3, None, losses.SparseCategoricalCrossentropy(from_logits=True), "labels"),
])
def test_one_training_step_follows_the_gradient(rng, units, activation, loss, targets):
    """One SGD step (lr 1, whole batch) moves each weight by -d(loss)/d(weight); finite differences of
    evaluate's loss give that derivative: forward, fused loss and backward through every layer."""
    x = rng.standard_normal((4, 6, 5, 2))
    y = {"labels": rng.integers(0, 3, 4), "soft": rng.dirichlet(numpy.ones(3), 4),
         "binary": rng.integers(0, 2, (4, 2)), "real": rng.standard_normal(4)}[targets]
    model = tiny_model(Dense(units, activation=activation, dtype="float64"), loss)
    before = [p.copy() for layer in model.layers for p in layer.params.values()]
    numeric = []
    for p in (p for layer in model.layers for p in layer.params.values()):
        grad = numpy.zeros_like(p)
        for i in range(p.size):
            old = p.flat[i]
            p.flat[i] = old + 1e-6
            plus = model.evaluate(x, y, batch_size=4, verbose=0)[0]
            p.flat[i] = old - 1e-6
            minus = model.evaluate(x, y, batch_size=4, verbose=0)[0]
            p.flat[i] = old
            grad.flat[i] = (plus - minus) / 2e-6
        numeric.append(grad)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    after = [p for layer in model.layers for p in layer.params.values()]
    for b, a, g in zip(before, after, numeric):
        assert rel_error(b - a, g) < 1e-6


def test_losses_match_their_formulas(rng):
    x = rng.standard_normal((6, 6, 5, 2))
    y = rng.standard_normal(6)
    model = tiny_model(Dense(1, dtype="float64"), "mse")
    assert abs(model.evaluate(x, y, verbose=0)[0] - numpy.mean((model.predict(x)[:, 0] - y) ** 2)) < 1e-12
    labels = rng.integers(0, 2, 6)
    model = tiny_model(Dense(1, activation="sigmoid", dtype="float64"), "binary_crossentropy")
    p = model.predict(x)[:, 0]
    loss, accuracy = model.evaluate(x, labels, verbose=0)
    assert abs(loss + numpy.mean(labels * numpy.log(p) + (1 - labels) * numpy.log(1 - p))) < 1e-12
    assert accuracy == numpy.mean((p > 0.5) == labels)


def test_categorical_one_hot_trains_like_sparse_labels(rng):
    x, y = blob_digits(rng, 16)
    histories = []
    for loss, targets in (("sparse_categorical_crossentropy", y), ("categorical_crossentropy", numpy.eye(10)[y])):
        model = mnist_network(seed=4)
        model.compile(loss=loss, metrics=["accuracy"])
        histories.append(model.fit(x, targets, batch_size=8, epochs=2, verbose=0).history)
    assert histories[0] == histories[1]


def test_validation_data_and_split(rng):
    x, y = blob_digits(rng, 20)
    model = mnist_network(seed=5)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=2).history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"} and len(history["val_loss"]) == 2
    history = model.fit(x, y, epochs=1, validation_data=(x[:3], y[:3]), verbose=1).history
    assert len(history["val_accuracy"]) == 1
    model.compile(loss="sparse_categorical_crossentropy")
    assert set(model.fit(x, y, verbose=0).history) == {"loss"}
    assert isinstance(model.evaluate(x, y, verbose=0), float)


def test_channels_first_data(rng):
    x, y = blob_digits(rng, 6, size=12)
    models = []
    for data_format, data in (("channels_last", x), ("channels_first", x.transpose(0, 3, 1, 2))):
        shape = data.shape[1:]
        model = Sequential([Conv2D(3, 3, activation="relu", input_shape=shape, data_format=data_format),
                            MaxPooling2D(2, data_format=data_format), Conv2D(2, 3, data_format=data_format)], seed=9)
        models.append(model.predict(data))
    assert models[0].shape == (6, 3, 3, 2) and models[1].shape == (6, 2, 3, 3)
    assert numpy.array_equal(models[0], models[1].transpose(0, 2, 3, 1))


def test_lazy_build_from_the_first_batch(rng):
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3, activation="softmax")])
    assert not model.built
    x, y = blob_digits(rng, 4, size=8, classes=3)
    model.compile(loss="sparse_categorical_crossentropy")
    model.fit(x, y, verbose=0)
    assert model.built and model.input_shape == (8, 8, 1) and model.output_shape == (3,)


# ---- optimizers ----------------------------------------------------------------------------------
def test_optimizers_follow_keras_formulas(rng):
    grads = [rng.standard_normal(5) for _ in range(3)]
    for opt, rule in [(optimizers.SGD(0.1), "sgd"), (optimizers.SGD(0.1, momentum=0.9), "momentum"),
                      (optimizers.SGD(0.1, momentum=0.9, nesterov=True), "nesterov"), (optimizers.Adam(), "adam")]:
        w = rng.standard_normal(5)
        ours, ref = w.copy(), w.copy()
        velocity, m, v = numpy.zeros(5), numpy.zeros(5), numpy.zeros(5)
        for t, g in enumerate(grads, 1):
            opt.apply({"w": ours}, {"w": g})
            if rule == "sgd":
                ref -= 0.1 * g
            elif rule == "momentum":
                velocity = 0.9 * velocity - 0.1 * g
                ref += velocity
            elif rule == "nesterov":
                velocity = 0.9 * velocity - 0.1 * g
                ref += 0.9 * velocity - 0.1 * g
            else:  # Keras folds the bias corrections into the step size
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                ref -= 0.001 * numpy.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (numpy.sqrt(v) + 1e-7)
        assert rel_error(ours, ref) < 1e-12, rule
        assert opt.iterations == 3


def test_optimizer_defaults_are_keras_defaults():
    sgd, adam = optimizers.get("sgd"), optimizers.get("Adam")
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)


# ---- saving, reproducibility ---------------------------------------------------------------------
def small_trained_model(rng, seed=0):
    model = Sequential([Conv2D(4, 3, padding="same", input_shape=(8, 8, 1)), BatchNormalization(), Activation("relu"),
                        MaxPooling2D(2), Dropout(0.2), Flatten(), Dense(3, activation="softmax")], seed=seed)
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.5), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = blob_digits(rng, 12, size=8, classes=3)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    return model, x, y


def test_save_and_load_round_trip(rng, tmp_path):
    model, x, y = small_trained_model(rng)
    path = model.save(tmp_path / "model.npz")
    assert path == tmp_path / "model.npz" and path.is_file()  # one file, at exactly the path given
    loaded = load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert numpy.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    assert isinstance(loaded.optimizer, optimizers.SGD) and loaded.optimizer.momentum == 0.5
    assert loaded.summary(print_fn=None).splitlines()[2:] == model.summary(print_fn=None).splitlines()[2:]
    loaded.fit(x, y, verbose=0)  # and it trains on


def test_load_model_refuses_other_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    foreign = tmp_path / "foreign.npz"
    numpy.savez(foreign, weights=numpy.ones(3))
    other_format = tmp_path / "other.npz"
    numpy.savez(other_format, config=numpy.array('{"format": "something else"}'))
    array = tmp_path / "array.npy"
    numpy.save(array, numpy.ones(3))
    for path in (text, foreign, other_format, array):
        with pytest.raises(ValueError, match=str(path)):
            load_model(path)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_model(tmp_path / "missing.npz")


def test_same_seed_same_history(rng):
    x, y = blob_digits(rng, 24)
    runs = []
    for seed in (7, 7, 8):
        model = mnist_network(seed=seed, dropout=0.5)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0).history
        runs.append((history, model.layers[0].params["kernel"].copy()))
    assert runs[0][0] == runs[1][0] and numpy.array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_runs_on_the_current_backend(backend, rng):
    previous = cnn_gpu.get_backend()
    cnn_gpu.set_backend(backend)
    try:
        model, x, y = small_trained_model(rng)
        assert type(model.layers[0].params["kernel"]).__module__.split(".")[0] == ("cupy" if backend == "cuda" else "numpy")
        assert numpy.isfinite(model.history.history["loss"]).all()
    finally:
        cnn_gpu.set_backend(previous)


# ---- bad input -----------------------------------------------------------------------------------
def compiled_mnist():
    model = mnist_network(seed=0)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("call, message", [
    (lambda m: m.compile(optimizer="nadam", loss="mse"), "optimizer"),
    (lambda m: m.compile(loss="hinge"), "loss"),
    (lambda m: m.compile(loss="mse", metrics=["auc"]), "metrics"),
    (lambda m: m.compile(loss="binary_crossentropy"), "activation='sigmoid'"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28)), numpy.zeros(4)), r"x has samples of shape \(28, 28\)"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28, 1)), numpy.zeros(3)), "y has 3 samples"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28, 1)), numpy.full(4, 10)), r"y must hold integer class labels in \[0, 10\)"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28, 1)), numpy.zeros(4), validation_split=1.5), "validation_split"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28, 1)), numpy.zeros(4), batch_size=0), "batch_size"),
    (lambda m: m.fit(numpy.zeros((4, 28, 28, 1)), numpy.zeros(4), epochs=-1), "epochs"),
    (lambda m: m.predict(numpy.zeros((2, 1, 28, 28))), r"the model takes \(28, 28, 1\)"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(compiled_mnist())


def test_fit_before_compile():
    with pytest.raises(ValueError, match="compile"):
        mnist_network().fit(numpy.zeros((2, 28, 28, 1)), numpy.zeros(2))


def test_summary_before_build():
    with pytest.raises(ValueError, match="not built"):
        Sequential([Dense(3)]).summary()


def test_conflicting_data_formats():
    with pytest.raises(ValueError, match="data_format"):
        Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Conv2D(2, 3, data_format="channels_first")])
