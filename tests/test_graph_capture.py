"""compile(..., cuda_graph=True): fit's training step captured as a CUDA graph and replayed.

On the GPU: a graph fit gives the same History and weights, bit for bit, as an eager fit with the same
seed (several epochs, a partial last batch, validation, dropout with Adam, batch-norm with SGD, a second
fit that captures again), and a step that cannot be captured falls back to eager with a warning. The
pieces underneath, on every backend: the ops reading a per-step scalar from an array (dropout's seed,
Adam's step size) as they read it by value, softmax_cross_entropy without its label check, and the
layers' and optimizers' step scalars reproducing eager steps. On NumPy the flag changes nothing.
"""
import functools
import warnings

import numpy
import pytest

import cnn_gpu
from cnn_gpu import functional as F
from cnn_gpu import optimizers
from cnn_gpu.optimizers.schedules import CosineDecay, ExponentialDecay
from cnn_gpu.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from cnn_gpu.models import Sequential, _RunningTotals, load_model
from cnn_gpu.ops.optim import adam_step_size
from test_models import blob_digits, mnist_network


def needs_cuda(backend):
    if backend != "cuda":
        pytest.skip("CUDA graphs exist on the cuda backend only (the numpy case is test_flag_changes_nothing_on_numpy)")


# ---- the models each comparison trains twice, eagerly and replayed --------------------------------
def mnist_adam(cuda_graph):
    """The MNIST network (dropout 0.3) with Adam and sparse labels on 28x28 blobs."""
    model = mnist_network(seed=11, dropout=0.3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], cuda_graph=cuda_graph)
    return model


def batch_norm_sgd(cuda_graph):
    """Batch-norm (moving statistics updated in place every step), two dropouts, SGD with momentum, sigmoid BCE."""
    model = Sequential([Conv2D(4, 3, input_shape=(28, 28, 1)), BatchNormalization(), Activation("relu"),
                        MaxPooling2D(2), Dropout(0.2), Flatten(), Dense(8, activation="relu"), Dropout(0.5),
                        Dense(1, activation="sigmoid")], seed=12)
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="binary_crossentropy", metrics=["accuracy"],
                  cuda_graph=cuda_graph)
    return model


def smooth_adamw_cosine(cuda_graph):
    """gelu and swish after their ops (kernels of their own), AdamW's weight decay and a cosine schedule: each
    step's rate and step size reach the replays as step scalars; top-k accuracy summed on the device."""
    model = Sequential([Conv2D(4, 3, activation="swish", input_shape=(28, 28, 1)), MaxPooling2D(2), Flatten(),
                        Dense(16, activation="gelu"), Dense(10, activation="softmax")], seed=13)
    model.compile(optimizer=optimizers.AdamW(CosineDecay(0.01, 12), weight_decay=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy", "top_k_categorical_accuracy"],
                  cuda_graph=cuda_graph)
    return model


def frozen_elu_rmsprop(cuda_graph):
    """A frozen first convolution (backward stops above it), elu, RMSprop centered with momentum."""
    model = Sequential([Conv2D(4, 3, activation="elu", input_shape=(28, 28, 1)), MaxPooling2D(2), Flatten(),
                        Dense(10, activation="softmax")], seed=14)
    model.layers[0].trainable = False
    model.compile(optimizer=optimizers.RMSprop(ExponentialDecay(0.01, 4, 0.5), momentum=0.5, centered=True),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], cuda_graph=cuda_graph)
    return model


def data_for(build, rng):
    """180 samples: with validation_split=0.2, 144 to train on, batches of 64, 64 and a partial 16."""
    x, labels = blob_digits(rng, 180)
    return x, (labels % 2 if build is batch_norm_sgd else labels)


def fell_back(caught) -> list:
    """The warnings that say a fit trained eagerly instead of replaying a graph."""
    return [str(w.message) for w in caught if "cuda_graph" in str(w.message)]


def weights(model) -> list:
    return [cnn_gpu.to_numpy(a) for layer in model.layers for a in (*layer.params.values(), *layer.state.values())]


def fit_twice(model, x, y):
    """Two fits (the second captures its own graph), with validation and shuffling; both Histories."""
    first = model.fit(x, y, batch_size=64, epochs=3, validation_split=0.2, verbose=0)
    second = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return first, second


# ---- on the GPU ----------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [mnist_adam, batch_norm_sgd, smooth_adamw_cosine, frozen_elu_rmsprop])
def test_graph_fit_equals_eager_fit_bit_for_bit(on_backend, rng, build):
    """The replays launch the eager step's kernels, with the same arguments but the buffers' addresses,
    the same mask seeds and Adam step sizes (drawn on the host as eager steps draw them, read from
    device memory), and every kernel is deterministic (fixed-order reductions, no atomics; the
    autotuner's choices are remembered per shape in the process): so the bits must agree exactly."""
    needs_cuda(on_backend)
    x, y = data_for(build, rng)
    eager, graphed = build(cuda_graph=False), build(cuda_graph=True)
    eager_histories = fit_twice(eager, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed_histories = fit_twice(graphed, x, y)
    assert not fell_back(caught)
    for ours, ref in zip(graphed_histories, eager_histories):
        assert ours.params["cuda_graph"] is True and ref.params["cuda_graph"] is False
        assert ours.history == ref.history
    for ours, ref in zip(weights(graphed), weights(eager), strict=True):
        numpy.testing.assert_array_equal(ours, ref)
    assert graphed.optimizer.iterations == eager.optimizer.iterations == 5 * 3
    numpy.testing.assert_array_equal(graphed.predict(x[:7]), eager.predict(x[:7]))


def waits_for_the_device(forward):
    """A forward that reads a value back to the host first: harmless eagerly, impossible in a capture."""
    @functools.wraps(forward)
    def forward_after_a_read(x, **kwargs):
        float(x.sum())
        return forward(x, **kwargs)
    return forward_after_a_read


def test_a_step_that_cannot_be_captured_trains_eagerly_with_a_warning(on_backend, rng):
    needs_cuda(on_backend)
    x, y = data_for(mnist_adam, rng)
    models = [mnist_adam(cuda_graph=False), mnist_adam(cuda_graph=True)]
    for model in models:
        model.layers[5].forward = waits_for_the_device(model.layers[5].forward)
    eager = models[0].fit(x, y, batch_size=64, epochs=2, verbose=0)
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        fallen_back = models[1].fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert fallen_back.params["cuda_graph"] is False
    assert fallen_back.history == eager.history
    for ours, ref in zip(weights(models[1]), weights(models[0]), strict=True):
        numpy.testing.assert_array_equal(ours, ref)


# ---- on NumPy: the flag is accepted and changes nothing ---------------------------------------------
def test_flag_changes_nothing_on_numpy(rng, tmp_path):
    x, y = data_for(mnist_adam, rng)
    x, y = x[:40], y[:40]
    runs = []
    for cuda_graph in (False, True):
        model = mnist_network(seed=3, dropout=0.5)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"], cuda_graph=cuda_graph)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0)
        assert not fell_back(caught)
        assert history.params["cuda_graph"] is False
        runs.append((history.history, weights(model)))
    assert runs[0][0] == runs[1][0]
    for ours, ref in zip(runs[1][1], runs[0][1], strict=True):
        numpy.testing.assert_array_equal(ours, ref)
    assert load_model(model.save(tmp_path / "model.npz")).cuda_graph is True  # the setting is saved


def test_cuda_graph_must_be_a_bool():
    model = mnist_network()
    with pytest.raises(ValueError, match="cuda_graph"):
        model.compile(loss="sparse_categorical_crossentropy", cuda_graph="yes")


# ---- step scalars: what a replay feeds, reproducing eager steps (on NumPy arrays here) -------------
OPTIMIZERS_FED = {
    "adam": lambda: "adam",
    "sgd_nesterov_schedule": lambda: optimizers.SGD(ExponentialDecay(0.05, 1, 0.5), momentum=0.9, nesterov=True),
    "rmsprop_centered_momentum": lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
    "adamw_cosine": lambda: optimizers.AdamW(CosineDecay(0.01, 2), weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS_FED)
def test_step_scalars_read_from_arrays_reproduce_eager_steps(rng, optimizer):
    """A replay, played on NumPy: each layer and the optimizer read their step scalars from arrays the
    host fills with next_step_scalars() before every step; the weights follow eager steps bit for bit
    (learning-rate schedules included: each step's rate travels as a step scalar)."""
    x, labels = blob_digits(rng, 16, size=12)
    inputs, targets = numpy.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels.astype(numpy.int64)

    def model():
        m = Sequential([Conv2D(3, 3, activation="relu", input_shape=(12, 12, 1)), MaxPooling2D(2), Dropout(0.4),
                        Flatten(), Dense(10, activation="softmax")], seed=21)
        m.compile(optimizer=OPTIMIZERS_FED[optimizer](), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    eager, fed = model(), model()
    sources = [*fed.layers, fed.optimizer]
    arrays = [tuple(numpy.zeros(1, dtype) for dtype in source.step_scalar_dtypes) for source in sources]
    for source, source_arrays in zip(sources, arrays):
        source.read_step_scalars_from(source_arrays)
    eager_totals, fed_totals = _RunningTotals(["accuracy"]), _RunningTotals(["accuracy"])
    for _ in range(3):
        eager._step(inputs, targets, True, eager_totals)
        for source, source_arrays in zip(sources, arrays):
            for array, value in zip(source_arrays, source.next_step_scalars(), strict=True):
                array[0] = value
        fed._step(inputs, targets, True, fed_totals)
    for source in sources:
        source.read_step_scalars_from(None)
    assert fed.optimizer.iterations == eager.optimizer.iterations == 3
    for ours, ref in zip(weights(fed), weights(eager), strict=True):
        numpy.testing.assert_array_equal(ours, ref)
    assert float(fed_totals.loss_sum) == float(eager_totals.loss_sum)
    fed._step(inputs, targets, True, fed_totals)  # unbound again: an ordinary eager step
    assert fed.optimizer.iterations == 4


# ---- the ops underneath, on every backend ---------------------------------------------------------
def test_dropout_reads_its_seed_from_an_array(backend, xp, rng):
    x = xp.asarray(rng.standard_normal((3, 5, 33)).astype(numpy.float32))
    seed = int(rng.integers(0, 2**63)) + 2**63  # the high bit set: the full uint64 range travels
    by_value = F.dropout(x, 0.3, seed)
    from_array = F.dropout(x, 0.3, xp.asarray(numpy.array([seed], numpy.uint64)))
    for ours, ref in zip(from_array, by_value):
        numpy.testing.assert_array_equal(cnn_gpu.to_numpy(ours), cnn_gpu.to_numpy(ref))


def test_adam_reads_its_step_size_from_an_array(backend, xp, rng):
    size, step = 67, 5
    p, g = rng.standard_normal(size).astype(numpy.float32), rng.standard_normal(size).astype(numpy.float32)
    m, v = (rng.standard_normal(size) * 0.1).astype(numpy.float32), (rng.random(size) * 0.1).astype(numpy.float32)
    by_value = [xp.asarray(a) for a in (p, g, m, v)]
    from_array = [xp.asarray(a) for a in (p, g, m, v)]
    alpha = numpy.array([adam_step_size(0.01, 0.8, 0.95, step)], numpy.float32)
    F.adam_update(*by_value, step, learning_rate=0.01, beta_1=0.8, beta_2=0.95)
    F.adam_update(*from_array, None, learning_rate=0.01, beta_1=0.8, beta_2=0.95, step_size=xp.asarray(alpha))
    for ours, ref in zip(from_array, by_value):
        numpy.testing.assert_array_equal(cnn_gpu.to_numpy(ours), cnn_gpu.to_numpy(ref))


def test_cross_entropy_without_the_label_check_is_the_same(backend, xp, rng):
    logits = xp.asarray(rng.standard_normal((17, 10)).astype(numpy.float32))
    labels = xp.asarray(rng.integers(0, 10, 17))
    for ours, ref in zip(F.softmax_cross_entropy(logits, labels, check_labels=False),
                         F.softmax_cross_entropy(logits, labels)):
        numpy.testing.assert_array_equal(cnn_gpu.to_numpy(ours), cnn_gpu.to_numpy(ref))
    with pytest.raises(ValueError, match="labels must lie in"):  # the check is still the default
        F.softmax_cross_entropy(logits, labels + 10)


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.dropout(x, 0.5, numpy.zeros(1, numpy.int64)), TypeError, "seed given as an array must hold one uint64"),
    (lambda x: F.dropout(x, 0.5, numpy.zeros(2, numpy.uint64)), TypeError, "seed given as an array"),
    (lambda x: F.adam_update(x, x, x.copy(), x.copy(), 3, step_size=numpy.ones(1, numpy.float32)), ValueError,
     "step must be None when step_size is given"),
    (lambda x: F.adam_update(x, x, x.copy(), x.copy(), None, step_size=numpy.ones(1)), TypeError,
     "step_size must be a one-element float32 array"),
    (lambda x: F.adam_update(x, x, x.copy(), x.copy(), None), TypeError, "step must be an int"),
])
def test_bad_step_scalars(call, error, message):
    with pytest.raises(error, match=message):
        call(numpy.ones(4, numpy.float32))
