"""Keras programs run with only their imports changed (`import keras` -> `import cnn_gpu as keras`,
`from keras import layers` -> `from cnn_gpu import layers`), on data in Keras's own cache format: an
mnist.npz in a temporary KERAS_HOME, built from scikit-learn's bundled digits (28×28, uint8 0-255).

- keras.io's "Simple MNIST convnet", as published, with epochs = 15 -> 3 to keep the suite fast;
- a transfer-learning program in Keras's documented pattern: train a network, freeze its convolutions,
  swap and fine-tune the head with EarlyStopping(restore_best_weights=True).
And the namespace itself: the Keras names are the library's own objects.
"""
import contextlib
import io

import numpy
import pytest

import cnn_gpu
from cnn_gpu import datasets

MNIST_CONVNET = '''
import numpy as np
import cnn_gpu as keras
from cnn_gpu import layers

# Model / data parameters
num_classes = 10
input_shape = (28, 28, 1)

# Load the data and split it between train and test sets
(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()

# Scale images to the [0, 1] range
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
# Make sure images have shape (28, 28, 1)
x_train = np.expand_dims(x_train, -1)
x_test = np.expand_dims(x_test, -1)
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")


# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
)

model.summary()

batch_size = 128
epochs = 3

model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1)

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
'''

TRANSFER_LEARNING = '''
import numpy as np
import cnn_gpu as keras
from cnn_gpu import layers

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
x_test = np.expand_dims(x_test.astype("float32") / 255, -1)

# A network trained on all ten digits
base = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.Conv2D(16, 3, activation="relu", name="conv_1"),
    layers.MaxPooling2D(2),
    layers.Conv2D(32, 3, activation="relu", name="conv_2"),
    layers.MaxPooling2D(2),
    layers.Flatten(),
    layers.Dense(10, activation="softmax"),
])
base.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
base.fit(x_train, y_train, batch_size=64, epochs=2, verbose=0)
pretrained = base.get_weights()

# A new task: is the digit even? The convolutions are reused frozen, a new head is trained.
model = keras.Sequential([keras.Input(shape=(28, 28, 1))] + base.layers[:-1]
                         + [layers.Dense(32, activation="relu"), layers.Dense(1, activation="sigmoid")])
for layer in model.layers[:5]:
    layer.trainable = False
model.summary()
frozen = [layer.get_weights() for layer in model.layers[:5]]

model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="binary_crossentropy", metrics=["accuracy"])
early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
history = model.fit(x_train, (y_train % 2 == 0).astype("float32"), batch_size=64, epochs=6,
                    validation_split=0.2, callbacks=[early_stopping], verbose=0)
loss, accuracy = model.evaluate(x_test, (y_test % 2 == 0).astype("float32"), verbose=0)
print("fine-tuned for", len(history.history["loss"]), "epochs; test accuracy", accuracy)
'''


def write_keras_mnist_cache(folder):
    """Keras's mnist.npz layout (x_train, y_train, x_test, y_test; uint8) from the bundled digits."""
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(size=28)
    to_bytes = lambda x: numpy.round(x[..., 0] * 255).astype(numpy.uint8)  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    numpy.savez(folder / "mnist.npz", x_train=to_bytes(x_train), y_train=y_train.astype(numpy.uint8),
                x_test=to_bytes(x_test), y_test=y_test.astype(numpy.uint8))


@pytest.fixture(scope="module")
def keras_cache(tmp_path_factory):
    home = tmp_path_factory.mktemp("keras_home")
    write_keras_mnist_cache(home / "datasets")
    return home


@pytest.fixture
def keras_home(keras_cache, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(keras_cache))
    return keras_cache


def run_program(text):
    """Run the program text; (its globals, what it printed)."""
    namespace = {"__name__": "__main__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(text, "<keras program>", "exec"), namespace)
    return namespace, printed.getvalue()


def test_simple_mnist_convnet(keras_home):
    namespace, printed = run_program(MNIST_CONVNET)
    assert "x_train shape: (1437, 28, 28, 1)" in printed and "360 test samples" in printed
    # Keras's summary counts: conv 3·3·1·32 + 32, conv 3·3·32·64 + 64, dense 5·5·64·10 + 10
    assert "Total params: 34,826" in printed
    model = namespace["model"]
    assert [len(v) for v in model.history.history.values()] == [3, 3, 3, 3]
    assert set(model.history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, accuracy = namespace["score"]
    assert f"Test accuracy: {accuracy}" in printed
    # the test loss is the mean cross-entropy of the predictions (an independent computation of it)
    x_test, y_test = namespace["x_test"], namespace["y_test"]
    probabilities = model.predict(x_test, verbose=0)
    assert loss == pytest.approx(-numpy.mean(numpy.log(probabilities[y_test == 1])), rel=1e-4)
    assert accuracy == pytest.approx(numpy.mean(probabilities.argmax(1) == y_test.argmax(1)))
    assert accuracy > 0.6  # three epochs of 12 batches on the digits: well above chance (0.1)


def test_transfer_learning_with_frozen_convolutions_and_early_stopping(keras_home):
    namespace, printed = run_program(TRANSFER_LEARNING)
    model, base, frozen = namespace["model"], namespace["base"], namespace["frozen"]
    # the frozen layers are base's own objects, their trained weights kept in the new model and unchanged
    # by the fine-tuning
    assert model.layers[0] is base.layers[0]
    for now, trained in zip([w for layer in model.layers[:5] for w in layer.get_weights()], namespace["pretrained"]):
        numpy.testing.assert_array_equal(now, trained)
    for layer, before in zip(model.layers[:5], frozen):
        for now, then in zip(layer.get_weights(), before):
            numpy.testing.assert_array_equal(now, then)
    # the summary counts the frozen convolutions as non-trainable: 3·3·1·16 + 16 and 3·3·16·32 + 32
    assert "Non-trainable params: 4,800" in printed
    assert "Trainable params: 25,665" in printed  # dense 800·32 + 32, dense 32 + 1
    history, stopper = namespace["history"], namespace["early_stopping"]
    epochs_run = len(history.history["loss"])
    assert 2 <= epochs_run <= 6
    if stopper.stopped_epoch:  # it stopped early: patience 1 means the last epoch did not improve
        assert history.history["val_loss"][-1] >= min(history.history["val_loss"][:-1])
    assert namespace["accuracy"] > 0.75  # even-or-odd from the frozen features


def test_keras_names_are_the_library_objects():
    from cnn_gpu import callbacks, layers, losses, metrics, models, optimizers, utils

    assert cnn_gpu.Sequential is models.Sequential and cnn_gpu.models.load_model is models.load_model
    assert cnn_gpu.layers is layers and cnn_gpu.Input is layers.Input
    assert cnn_gpu.callbacks is callbacks and cnn_gpu.optimizers is optimizers and cnn_gpu.losses is losses
    assert cnn_gpu.metrics is metrics and cnn_gpu.utils.to_categorical is losses.to_categorical
    assert cnn_gpu.optimizers.schedules.ExponentialDecay is cnn_gpu.learning_rate_schedules.ExponentialDecay
    from cnn_gpu.optimizers.schedules import CosineDecay  # the import form Keras programs use
    from cnn_gpu.datasets import mnist
    assert CosineDecay is cnn_gpu.learning_rate_schedules.CosineDecay
    assert mnist.load_data is cnn_gpu.datasets.mnist.load_data
    assert utils.to_categorical([1], 3).tolist() == [[0, 1, 0]]


@pytest.mark.parametrize("module, name", [
    ("cnn_gpu", "Model"), ("cnn_gpu.layers", "Conv3D"), ("cnn_gpu.optimizers", "Nadam"),
    ("cnn_gpu.callbacks", "TensorBoard"), ("cnn_gpu.initializers", "Orthogonal"), ("cnn_gpu.metrics", "AUC"),
    ("cnn_gpu.utils", "plot_model"),
])
def test_unknown_names_list_what_there_is(module, name):
    import importlib

    with pytest.raises(AttributeError, match=f"{name!r}.*(has|offers) "):
        getattr(importlib.import_module(module), name)
