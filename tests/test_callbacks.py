"""Callbacks: Keras's hook order and logs in fit / evaluate; EarlyStopping, ReduceLROnPlateau and
ModelCheckpoint's decisions against real Keras's callbacks fed the same logs (where Keras is installed);
what each callback does to a real fit (weights restored, files written atomically, rows logged,
training stopped); and bad arguments."""
import csv
import os

import numpy
import pytest

from cnn_gpu import callbacks
from cnn_gpu.layers import Dense, Flatten, Input
from cnn_gpu.models import Sequential


def tiny_model(seed=0, optimizer="sgd"):
    model = Sequential([Input(shape=(4, 4, 1)), Flatten(), Dense(8, activation="relu"), Dense(3, activation="softmax")],
                       seed=seed)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data(rng, n=40):
    return rng.standard_normal((n, 4, 4, 1)).astype(numpy.float32), rng.integers(0, 3, n)


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            calls = object.__getattribute__(self, "calls")
            return lambda *args: calls.append((name, *[dict(a) if isinstance(a, dict) else a for a in args]))
        return object.__getattribute__(self, name)

    @property
    def needs_batch_logs(self):
        return True


def test_hook_order_and_logs_in_fit(rng):
    x, y = tiny_data(rng, 20)
    model, recorder = tiny_model(), Recorder()
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:6], y[:6]), callbacks=[recorder], verbose=0)
    names = [call[0] for call in recorder.calls]
    assert names[0] == "on_train_begin" and names[-1] == "on_train_end"
    epoch = ["on_epoch_begin", *["on_train_batch_begin", "on_train_batch_end"] * 3, "on_test_begin",
             "on_test_batch_begin", "on_test_batch_end", "on_test_end", "on_epoch_end"]
    assert names[1:-1] == epoch * 2
    assert recorder.model is model and recorder.params == {"epochs": 2, "steps": 3, "verbose": 0}
    batch_ends = [call for call in recorder.calls if call[0] == "on_train_batch_end"]
    assert [call[1] for call in batch_ends] == [0, 1, 2] * 2
    assert set(batch_ends[0][2]) == {"loss", "accuracy"}
    epoch_ends = [call for call in recorder.calls if call[0] == "on_epoch_end"]
    assert [call[1] for call in epoch_ends] == [0, 1]
    assert set(epoch_ends[0][2]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert epoch_ends[1][2] == {k: v[1] for k, v in model.history.history.items()}
    # the last batch's running means are the epoch's means
    last_batch = batch_ends[2][2]
    assert last_batch["loss"] == pytest.approx(epoch_ends[0][2]["loss"])


def test_evaluate_and_predict_call_their_hooks(rng):
    x, y = tiny_data(rng, 10)
    model, recorder = tiny_model(), Recorder()
    model.evaluate(x, y, batch_size=4, callbacks=[recorder], verbose=0)
    assert [c[0] for c in recorder.calls] == ["on_test_begin", *["on_test_batch_begin", "on_test_batch_end"] * 3,
                                              "on_test_end"]
    recorder.calls.clear()
    model.predict(x, callbacks=[recorder], verbose=0)
    assert [c[0] for c in recorder.calls] == ["on_predict_begin", "on_predict_end"]


def test_epoch_hooks_alone_do_not_read_batch_logs():
    class EpochOnly(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    class BatchToo(callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            pass

    assert not EpochOnly().needs_batch_logs and BatchToo().needs_batch_logs
    assert not callbacks.ModelCheckpoint("w.npz").needs_batch_logs
    assert callbacks.ModelCheckpoint("w.npz", save_freq=3).needs_batch_logs


def test_stop_training_from_a_batch_hook_ends_the_fit(rng):
    x, y = tiny_data(rng, 40)
    model = tiny_model()
    seen = []
    stopper = callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
        seen.append(batch), setattr(model, "stop_training", batch == 1)))
    history = model.fit(x, y, batch_size=8, epochs=3, callbacks=[stopper], verbose=0)
    assert seen == [0, 1] and len(history.history["loss"]) == 1


def test_initial_epoch_and_history(rng):
    x, y = tiny_data(rng)
    model = tiny_model()
    epochs = []
    history = model.fit(x, y, epochs=5, initial_epoch=3, verbose=0,
                        callbacks=[callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs.append(epoch))])
    assert epochs == [3, 4] and history.epoch == [3, 4] and model.history is history
    assert model.optimizer.iterations == 2 * 2  # 40 samples, batches of 32


# ---- the monitor callbacks against real Keras, fed the same logs -------------------------------------
class FakeModel:
    """What a callback reads and writes on its model: weights, stop_training, optimizer.learning_rate."""

    class Optimizer:
        learning_rate = 0.1

    def __init__(self):
        self.stop_training = False
        self.weights = [numpy.zeros(1)]
        self.optimizer = self.Optimizer()
        self.compiled_metrics = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def drive(callback, model, values, monitor):
    """Run callback through epochs whose logs hold values; per epoch (stop flag, weights tag, lr)."""
    callback.set_model(model)
    callback.on_train_begin({})
    trace = []
    for epoch, value in enumerate(values):
        model.weights = [numpy.full(1, float(epoch))]
        callback.on_epoch_end(epoch, {monitor: value, "loss": value})
        trace.append((model.stop_training, float(model.optimizer.learning_rate)))
        if model.stop_training:
            break
    callback.on_train_end({})
    return trace, float(model.weights[0][0])


def keras_or_skip():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


SEQUENCES = {
    "falls_then_flat": [1.0, 0.8, 0.79, 0.81, 0.8, 0.82, 0.9],
    "rises": [0.2, 0.3, 0.4, 0.35, 0.5, 0.5, 0.49],
    "noisy": [0.5, 0.45, 0.47, 0.44, 0.46, 0.43, 0.48, 0.49, 0.5, 0.51],
}
EARLY_STOPPING_CASES = [
    dict(patience=0), dict(patience=2), dict(patience=1, min_delta=0.02), dict(patience=2, restore_best_weights=True),
    dict(patience=1, baseline=0.3), dict(patience=1, start_from_epoch=3, restore_best_weights=True),
    dict(patience=2, mode="max", restore_best_weights=True), dict(patience=1, monitor="val_accuracy", mode="max"),
]


@pytest.mark.parametrize("sequence", SEQUENCES)
@pytest.mark.parametrize("arguments", EARLY_STOPPING_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_early_stopping_decides_as_keras(sequence, arguments):
    keras = keras_or_skip()
    monitor = arguments.get("monitor", "val_loss")
    values = SEQUENCES[sequence]
    ours = drive(callbacks.EarlyStopping(**arguments), FakeModel(), values, monitor)
    theirs = drive(keras.callbacks.EarlyStopping(**arguments), FakeModel(), values, monitor)
    assert ours == theirs


@pytest.mark.parametrize("sequence", SEQUENCES)
@pytest.mark.parametrize("arguments", [dict(patience=1), dict(patience=2, factor=0.5, cooldown=1),
                                       dict(patience=0, factor=0.5, min_lr=0.03), dict(patience=1, min_delta=0.05),
                                       dict(patience=1, mode="max")], ids=str)
def test_reduce_lr_on_plateau_decides_as_keras(sequence, arguments):
    keras = keras_or_skip()
    values = SEQUENCES[sequence]
    ours = drive(callbacks.ReduceLROnPlateau(**arguments), FakeModel(), values, "val_loss")
    theirs = drive(keras.callbacks.ReduceLROnPlateau(**arguments), FakeModel(), values, "val_loss")
    assert [lr for _, lr in ours[0]] == pytest.approx([lr for _, lr in theirs[0]])


def test_early_stopping_without_keras_reference():
    """patience=1 on a loss that stops falling at epoch 2: stops at epoch 3, restores epoch 2's weights."""
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    trace, restored = drive(stopper, FakeModel(), [1.0, 0.5, 0.4, 0.6, 0.3], "val_loss")
    assert [stop for stop, _ in trace] == [False, False, False, True]
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 2 and restored == 2.0


def test_early_stopping_restores_best_weights_in_a_real_fit(rng):
    x, y = tiny_data(rng)
    model = tiny_model(optimizer="adam")
    snapshots = []
    record = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))
    losses = iter([0.5, 0.4, 0.45, 0.47, 0.3])

    class ScriptedLoss(callbacks.Callback):  # a scripted val_loss, so the best epoch is known
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(losses)

    stopper = callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    model.fit(x, y, epochs=5, callbacks=[ScriptedLoss(), record, stopper], verbose=0)
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    for now, best in zip(model.get_weights(), snapshots[1]):
        numpy.testing.assert_array_equal(now, best)


# ---- files ---------------------------------------------------------------------------------------
def test_model_checkpoint_formats_names_and_saves_best_only(tmp_path, rng):
    x, y = tiny_data(rng)
    model = tiny_model()
    losses = iter([0.9, 0.5, 0.7, 0.4])

    class ScriptedLoss(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(losses)

    every = callbacks.ModelCheckpoint(str(tmp_path / "all" / "model_{epoch:02d}_{val_loss:.2f}.npz"))
    best = callbacks.ModelCheckpoint(str(tmp_path / "best.weights.npz"), save_best_only=True, save_weights_only=True)
    saved_at = []
    track = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: saved_at.append(os.path.getmtime(tmp_path / "best.weights.npz")))
    model.fit(x, y, epochs=4, callbacks=[ScriptedLoss(), every, best, track], verbose=0)
    assert sorted(os.listdir(tmp_path / "all")) == ["model_01_0.90.npz", "model_02_0.50.npz", "model_03_0.70.npz",
                                                    "model_04_0.40.npz"]
    assert saved_at[2] == saved_at[1] and best.best == 0.4  # epoch 3 did not improve: not rewritten
    fresh = tiny_model(seed=5)
    fresh.load_weights(tmp_path / "best.weights.npz")
    for ours, theirs in zip(fresh.get_weights(), model.get_weights()):
        numpy.testing.assert_array_equal(ours, theirs)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]  # atomic writes left nothing behind


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous checkpoint whole, and no temporary file."""
    model = tiny_model()
    model.build((4, 4, 1))
    path = tmp_path / "w.npz"
    checkpoint = callbacks.ModelCheckpoint(str(path), save_weights_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {})
    before = path.read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(numpy, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.on_epoch_end(1, {})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.npz"]


def test_csv_logger_and_learning_rate_scheduler(tmp_path, rng):
    x, y = tiny_data(rng)
    model = tiny_model()
    scheduler = callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
    logger = callbacks.CSVLogger(tmp_path / "log.csv")
    model.fit(x, y, epochs=3, validation_split=0.25, callbacks=[scheduler, logger], verbose=0)
    with open(tmp_path / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.01, 0.005, 0.0025])
    assert [float(r["loss"]) for r in rows] == pytest.approx(model.history.history["loss"])
    assert model.optimizer.learning_rate == pytest.approx(0.0025)
    # append=True adds rows under the same header
    model.fit(x, y, epochs=1, callbacks=[callbacks.CSVLogger(tmp_path / "log.csv", append=True)], verbose=0)
    with open(tmp_path / "log.csv") as file:
        assert len(list(csv.reader(file))) == 5


def test_reduce_lr_on_plateau_changes_the_optimizer(rng):
    x, y = tiny_data(rng)
    model = tiny_model()
    values = iter([1.0, 1.0, 1.0, 1.0])

    class Flat(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(values)

    history = model.fit(x, y, epochs=4, callbacks=[Flat(), callbacks.ReduceLROnPlateau(patience=1, factor=0.5)], verbose=0)
    # logged before each epoch's decision: flat from epoch 0, patience 1 halves the rate at epochs 1 and 2
    assert history.history["learning_rate"] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    assert model.optimizer.learning_rate == pytest.approx(0.00125)


def test_terminate_on_nan(rng):
    x, y = tiny_data(rng)
    x[:] = numpy.nan
    history = tiny_model().fit(x, y, batch_size=8, epochs=3, callbacks=[callbacks.TerminateOnNaN()], verbose=0)
    assert len(history.history["loss"]) == 1


@pytest.mark.parametrize("make, error, message", [
    (lambda: callbacks.EarlyStopping(patiance=3), TypeError, "EarlyStopping: .*patiance.*it accepts monitor, min_delta, patience"),
    (lambda: callbacks.EarlyStopping(mode="maximum"), ValueError, "mode must be one of 'auto', 'min', 'max'"),
    (lambda: callbacks.EarlyStopping(patience=-1), ValueError, "patience"),
    (lambda: callbacks.ReduceLROnPlateau(factor=1.5), ValueError, "factor"),
    (lambda: callbacks.ModelCheckpoint("best.keras"), ValueError, "Keras file format"),
    (lambda: callbacks.ModelCheckpoint("w.weights.h5", save_weights_only=True), ValueError, r"\.npz"),
    (lambda: callbacks.ModelCheckpoint("m.npz", save_freq="batch"), ValueError, "save_freq"),
    (lambda: callbacks.LambdaCallback(on_epoch_ended=print), TypeError, "on_epoch_ended.*accepts on_epoch_begin"),
    (lambda: callbacks.LearningRateScheduler(0.1), TypeError, "callable"),
])
def test_bad_callback_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_callbacks_must_be_callbacks(rng):
    x, y = tiny_data(rng)
    with pytest.raises(TypeError, match="callbacks must hold"):
        tiny_model().fit(x, y, callbacks=[print], verbose=0)


def test_auto_mode_refuses_an_unknown_monitor():
    stopper = callbacks.EarlyStopping(monitor="val_f1")
    stopper.set_model(FakeModel())
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        stopper.on_epoch_end(0, {"val_f1": 0.5})
