"""Sequential's Keras model API: keras.Input, layer.trainable (frozen layers neither update nor count as
trainable; taking effect at compile), get_weights / set_weights in Keras's layouts (checked by running
real Keras's weights through our layers), save_weights / load_weights, train_on_batch / test_on_batch /
predict_on_batch / model(x), evaluate's forms, fit's arguments, Keras file names refused."""
import os

import numpy
import pytest

import cnn_gpu as keras
from checks import rel_error
from cnn_gpu import layers
from cnn_gpu.models import Sequential, load_model


def small_cnn(seed=0, batch_norm=False):
    body = [keras.Input(shape=(8, 8, 2)), layers.Conv2D(4, 3, activation="relu", name="conv")]
    body += [layers.BatchNormalization(name="bn")] if batch_norm else []
    body += [layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(6, activation="relu", name="hidden"),
             layers.Dense(3, activation="softmax", name="out")]
    return Sequential(body, seed=seed)


def data(rng, n=24):
    return rng.standard_normal((n, 8, 8, 2)).astype(numpy.float32), rng.integers(0, 3, n)


def weights_by_layer(model):
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}


def test_input_layer_gives_the_shape_and_is_not_a_layer():
    model = small_cnn()
    assert model.built and model.input_shape == (8, 8, 2)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    later = Sequential([keras.Input(shape=(None, None, 1)), layers.Conv2D(2, 3)])  # built from the first data
    assert not later.built
    assert later.predict(numpy.zeros((1, 5, 5, 1)), verbose=0).shape == (1, 3, 3, 2)
    with pytest.raises(ValueError, match="Input / InputLayer must come first"):
        Sequential([layers.Dense(2), keras.Input(shape=(3,))])
    assert keras.Input(batch_shape=(None, 4)).shape == (4,)


@pytest.mark.parametrize("frozen", [["conv"], ["hidden"], ["conv", "bn"], ["bn"]])
def test_frozen_layers_do_not_train_and_count_as_non_trainable(rng, frozen):
    x, y = data(rng)
    model = small_cnn(batch_norm=True)
    for name in frozen:
        model.get_layer(name).trainable = False
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = weights_by_layer(model)
    text = model.summary(print_fn=None)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = weights_by_layer(model)
    for layer in model.layers:
        changed = any(not numpy.array_equal(a, b) for a, b in zip(before[layer.name], after[layer.name]))
        if layer.name in frozen:
            assert not changed, layer.name  # a frozen BatchNormalization keeps its moving statistics too
        elif layer.get_weights():
            assert changed, layer.name
    frozen_count = sum(w.size for name in frozen for w in before[name])
    bn_moving = 8 if "bn" not in frozen else 0  # a trainable BN's moving mean and variance are non-trainable
    assert f"Non-trainable params: {frozen_count + bn_moving:,}" in text


def test_trainable_takes_effect_at_compile(rng):
    x, y = data(rng)
    model = small_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.get_layer("conv").trainable = False  # after compile: Keras trains it until the next compile
    before = model.get_layer("conv").get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    assert not numpy.array_equal(model.get_layer("conv").get_weights()[0], before[0])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = model.get_layer("conv").get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    numpy.testing.assert_array_equal(model.get_layer("conv").get_weights()[0], before[0])


def test_model_trainable_false_freezes_every_layer(rng):
    x, y = data(rng)
    model = small_cnn()
    model.trainable = False
    assert not any(layer.trainable for layer in model.layers) and not model.trainable
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        numpy.testing.assert_array_equal(a, b)
    assert "Trainable params: 0" in model.summary(print_fn=None)


def test_a_frozen_first_layer_is_not_differentiated(rng, monkeypatch):
    """Backward stops at the first trainable layer: nothing below it needs a gradient."""
    x, y = data(rng)
    model = small_cnn()
    model.get_layer("conv").trainable = False
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    calls = []
    for layer in model.layers:
        monkeypatch.setattr(layer, "backward", (lambda f, n: lambda dy: (calls.append(n), f(dy))[1])(layer.backward, layer.name))
    model.fit(x, y, batch_size=24, epochs=1, verbose=0)
    assert calls == ["out", "hidden"]


# ---- weights in Keras's layouts: real Keras's weights, run through our layers -------------------------
def test_set_weights_takes_keras_weights_and_predicts_as_keras(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    theirs = real.Sequential([real.Input(shape=(9, 7, 3)), real.layers.Conv2D(5, (3, 2), activation="relu"),
                              real.layers.BatchNormalization(), real.layers.GlobalAveragePooling2D(),
                              real.layers.Dense(4, activation="softmax")])
    x = rng.standard_normal((6, 9, 7, 3)).astype(numpy.float32)
    weights = theirs.get_weights()
    weights[3] = rng.random(5).astype(numpy.float32)  # moving mean and variance away from their defaults
    weights[4] = (rng.random(5) + 0.5).astype(numpy.float32)
    theirs.set_weights(weights)
    ours = Sequential([keras.Input(shape=(9, 7, 3)), layers.Conv2D(5, (3, 2), activation="relu"),
                       layers.BatchNormalization(), layers.GlobalAveragePooling2D(), layers.Dense(4, activation="softmax")])
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    ours.set_weights(weights)
    expected = real.ops.convert_to_numpy(theirs(x, training=False))
    assert rel_error(ours.predict(x, verbose=0), expected) < 1e-5
    for a, b in zip(ours.get_weights(), weights):
        numpy.testing.assert_array_equal(a, b)


def test_get_weights_layouts_without_keras(rng):
    model = small_cnn()
    kernel, bias, dense_kernel, dense_bias, out_kernel, out_bias = model.get_weights()
    assert kernel.shape == (3, 3, 2, 4) and bias.shape == (4,)  # Keras's (R, S, C, filters)
    assert dense_kernel.shape == (36, 6) and out_kernel.shape == (6, 3)  # Keras's (in, out)
    conv = model.get_layer("conv")
    numpy.testing.assert_array_equal(kernel, keras.to_numpy(conv.params["kernel"]).transpose(2, 3, 1, 0))
    new = [rng.standard_normal(w.shape).astype(numpy.float32) for w in model.get_weights()]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        numpy.testing.assert_array_equal(a, b)


def test_set_weights_checks_before_changing_anything(rng):
    model = small_cnn()
    before = model.get_weights()
    wrong = [w.copy() for w in before]
    wrong[-1] = numpy.zeros(4, numpy.float32)  # the last bias has 3 entries
    with pytest.raises(ValueError, match=r"weight 'bias' must have shape \(3,\), got \(4,\)"):
        model.set_weights([w + 1 for w in wrong])
    with pytest.raises(ValueError, match="the model has 6 weights"):
        model.set_weights(before[:-1])
    for a, b in zip(model.get_weights(), before):
        numpy.testing.assert_array_equal(a, b)


def test_save_and_load_weights(tmp_path, rng):
    model, other = small_cnn(seed=1), small_cnn(seed=2)
    path = model.save_weights(tmp_path / "m.weights.npz")
    other.load_weights(path)
    x, _ = data(rng, 5)
    numpy.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    mismatched = Sequential([keras.Input(shape=(8, 8, 2)), layers.Flatten(), layers.Dense(3, name="out")])
    with pytest.raises(ValueError, match="does not hold this model's weights"):
        mismatched.load_weights(path)
    with pytest.raises(FileExistsError):
        model.save_weights(path, overwrite=False)


@pytest.mark.parametrize("name", ["model.keras", "model.h5", "model.weights.h5"])
def test_keras_file_formats_are_refused(tmp_path, name):
    model = small_cnn()
    for call in (model.save, model.save_weights, model.load_weights, load_model):
        with pytest.raises(ValueError, match="Keras file format.*cnn_gpu neither writes nor reads"):
            call(tmp_path / name)
    assert not os.listdir(tmp_path)


# ---- one batch at a time ---------------------------------------------------------------------------
def test_train_on_batch_is_one_fit_step(rng):
    x, y = data(rng, 16)
    a, b = small_cnn(seed=3), small_cnn(seed=3)
    for model in (a, b):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = a.train_on_batch(x, y)
    history = b.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for p, q in zip(a.get_weights(), b.get_weights()):
        numpy.testing.assert_array_equal(p, q)
    assert result == pytest.approx([history.history["loss"][0], history.history["accuracy"][0]])
    assert a.train_on_batch(x, y, return_dict=True).keys() == {"loss", "accuracy"}


def test_test_and_predict_on_batch_and_call(rng):
    x, y = data(rng, 10)
    model = small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy", "top_k_categorical_accuracy"])
    before = model.get_weights()
    assert model.test_on_batch(x, y) == pytest.approx(model.evaluate(x, y, batch_size=10, verbose=0))
    probabilities = model.predict(x, verbose=0)
    numpy.testing.assert_array_equal(model.predict_on_batch(x), probabilities)
    numpy.testing.assert_array_equal(model(x), probabilities)
    for a, b in zip(before, model.get_weights()):
        numpy.testing.assert_array_equal(a, b)


def test_evaluate_forms(rng):
    x, y = data(rng, 12)
    model = small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["acc", "sparse_top_k_categorical_accuracy"])
    listed = model.evaluate(x, y, verbose=0)
    named = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(named) == ["loss", "acc", "sparse_top_k_categorical_accuracy"]
    assert listed == [named["loss"], named["acc"], named["sparse_top_k_categorical_accuracy"]]
    assert named["sparse_top_k_categorical_accuracy"] == 1.0  # 3 classes: always among the top 5
    probabilities = model.predict(x, verbose=0)
    assert named["acc"] == pytest.approx(numpy.mean(probabilities.argmax(1) == y))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)


def test_fit_verbose_two_prints_a_line_an_epoch(rng, capsys):
    x, y = data(rng, 8)
    model = small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=2, validation_data=(x, y))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and "val_accuracy" in lines[0]


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: m.fit(x, y, verbose=3), "verbose must be one of 'auto', 0, 1, 2"),
    (lambda m, x, y: m.fit(x, y, sample_weight=numpy.ones(len(x))), "sample_weight is not supported"),
    (lambda m, x, y: m.fit(x, y, class_weight={0: 1.0}, steps_per_epoch=2), "class_weight, steps_per_epoch are not"),
    (lambda m, x, y: m.fit(x, y, initial_epoch=-1), "initial_epoch"),
    (lambda m, x, y: m.fit(x, y, validation_data=(x, y, y)), "validation_data must be a pair"),
    (lambda m, x, y: m.compile(loss="mse", metrics=["f1_score"]), "unknown metric 'f1_score'.*'top_k_categorical_accuracy'"),
    (lambda m, x, y: m.compile(loss="mse", metrics=["accuracy", "acc", "accuracy"]), "unique"),
    (lambda m, x, y: m.get_layer(name="nowhere"), "no layer named 'nowhere'"),
    (lambda m, x, y: layers.Conv2D(4, 3, kernel_initializer="he_normally"), "kernel_initializer must be one of"),
    (lambda m, x, y: layers.Conv2D(filter=4, kernel_size=3), "unknown argument.*filter.*accepts filters, kernel_size"),
    (lambda m, x, y: layers.Dense(3, activation="mish"), "activation must be one of"),
])
def test_bad_input_names_the_argument(rng, call, message):
    x, y = data(rng, 4)
    model = small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises((ValueError, TypeError), match=message):
        call(model, x, y)


def test_pop_and_get_layer():
    model = small_cnn()
    assert model.get_layer(index=-1) is model.get_layer("out")
    removed = model.pop()
    assert removed.name == "out" and model.layers[-1].name == "hidden"
    model.add(layers.Dense(2, activation="softmax"))
    assert model.output_shape == (2,)


def test_set_random_seed_makes_unseeded_models_reproducible(rng):
    x, y = data(rng, 12)
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        model = Sequential([keras.Input(shape=(8, 8, 2)), layers.Flatten(), layers.Dropout(0.3), layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)


def test_load_model_restores_the_keras_settings(tmp_path, rng):
    from cnn_gpu import callbacks, initializers, metrics, optimizers

    x, y = data(rng, 12)
    model = Sequential([keras.Input(shape=(8, 8, 2)), layers.Conv2D(3, 3, activation="gelu", name="conv",
                                                                    kernel_initializer=initializers.HeUniform(seed=1)),
                        layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")], seed=0)
    model.get_layer("conv").trainable = False
    model.compile(optimizer=optimizers.AdamW(optimizers.schedules.CosineDecay(0.01, 5), weight_decay=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["acc", metrics.TopKCategoricalAccuracy(k=2)])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.TerminateOnNaN()])
    again = load_model(model.save(tmp_path / "m.npz"))
    assert not again.get_layer("conv").trainable and again.get_layer("conv").activation == "gelu"
    assert type(again.optimizer) is optimizers.AdamW and again.optimizer.weight_decay == 0.01
    assert again.metrics == ["acc", "top_k_categorical_accuracy"] and again.compiled_metrics[1].k == 2
    assert again.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


def test_trained_layers_keep_their_weights_in_a_new_model(rng):
    """Keras's transfer-learning forms: layers of a trained model, or the model itself, in a new Sequential."""
    x, y = data(rng, 12)
    base = Sequential([keras.Input(shape=(8, 8, 2)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2),
                       layers.Flatten()], seed=1)
    trained = base.get_weights()
    base.trainable = False
    for head_model in (Sequential([base, layers.Dense(3, activation="softmax")]),
                       Sequential([keras.Input(shape=(8, 8, 2)), *base.layers, layers.Dense(3, activation="softmax")])):
        assert head_model.input_shape == (8, 8, 2) and head_model.layers[0] is base.layers[0]
        head_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        head_model.fit(x, y, epochs=1, verbose=0)
        for now, before in zip(base.get_weights(), trained):
            numpy.testing.assert_array_equal(now, before)
        assert "Trainable params: 111" in head_model.summary(print_fn=None)  # the Dense alone: 36·3 + 3


def test_flatten_then_dense_takes_keras_weights(rng):
    """Keras flattens channels-last images in (H, W, C) order: a Dense after Flatten (and Dropout) exchanges its
    kernel rows in that order, so the MNIST convnet's Keras weights predict as Keras does."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    build = lambda k: k.Sequential([k.Input(shape=(10, 9, 2)), k.layers.Conv2D(3, 3, activation="relu"),  # noqa: E731
                                    k.layers.MaxPooling2D(2), k.layers.Flatten(), k.layers.Dropout(0.5),
                                    k.layers.Dense(4, activation="softmax")])
    theirs, ours = build(real), build(keras)
    ours.set_weights(theirs.get_weights())
    x = rng.standard_normal((5, 10, 9, 2)).astype(numpy.float32)
    assert rel_error(ours.predict(x, verbose=0), real.ops.convert_to_numpy(theirs(x, training=False))) < 1e-5
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        numpy.testing.assert_array_equal(a, real.ops.convert_to_numpy(b))


def test_flattened_dense_layout_round_trips(rng):
    model = Sequential([keras.Input(shape=(4, 3, 2)), layers.Flatten(), layers.Dense(5)])
    assert model.layers[1].flattened_image == (2, 4, 3)
    kernel = rng.standard_normal((24, 5)).astype(numpy.float32)
    model.set_weights([kernel, numpy.zeros(5, numpy.float32)])
    numpy.testing.assert_array_equal(model.get_weights()[0], kernel)
    x = rng.standard_normal((3, 4, 3, 2)).astype(numpy.float32)
    assert rel_error(model.predict(x, verbose=0), x.reshape(3, -1) @ kernel) < 1e-6  # Keras's (H, W, C) rows


def test_depthwise_and_separable_take_keras_weights(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real = pytest.importorskip("keras")
    build = lambda k: k.Sequential([k.Input(shape=(9, 8, 3)),  # noqa: E731
                                    k.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
                                    k.layers.SeparableConv2D(4, 3, depth_multiplier=2, activation="gelu"),
                                    k.layers.Conv2D(5, 2, groups=1, dilation_rate=2),
                                    k.layers.GlobalAveragePooling2D(), k.layers.Dense(3)])
    theirs, ours = build(real), build(keras)
    weights = [rng.standard_normal(w.shape).astype(numpy.float32) * 0.3 for w in theirs.get_weights()]
    theirs.set_weights(weights)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    ours.set_weights(weights)
    x = rng.standard_normal((4, 9, 8, 3)).astype(numpy.float32)
    assert rel_error(ours.predict(x, verbose=0), real.ops.convert_to_numpy(theirs(x, training=False))) < 1e-5
