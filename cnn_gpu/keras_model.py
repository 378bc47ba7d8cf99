"""Keras's training loop and model methods, mixed into Sequential (cnn_gpu.models: the model and its step).

    model.fit(x, y, ..., callbacks=[...])      epochs of training steps, with Keras's hooks and logs -> History
    model.evaluate(x, y) / model.predict(x)    in inference mode
    model(x)                                   inference on one batch (as predict_on_batch)
    model.get_weights() / set_weights(list)    every layer's weights, Keras's order and layouts
    model.save_weights(path) / load_weights(path)
    model.train_on_batch(x, y) / test_on_batch(x, y) / predict_on_batch(x)
    model.trainable = False                    every layer; layer.trainable for one
    model.get_layer(name=None, index=None), model.pop()

Files: cnn_gpu writes its own .npz archives. Keras's formats (.keras, .h5, .weights.h5) are refused
with an error that says so, rather than written in another format under their names. Every write
is atomic: a temporary file beside the target, then os.replace, so a failed save leaves the old file.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy
from tqdm.auto import tqdm

from cnn_gpu.backend import asarray, to_numpy
from cnn_gpu.callbacks import CallbackList, History

SYNC_EVERY = 10  # batches between reads of the running loss for the progress bar (each read waits for the device)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
WEIGHTS_FORMAT = "cnn_gpu.weights/1"
VERBOSITY = ("auto", 0, 1, 2)


def check_native_file_name(path, argument="path") -> None:
    """A ValueError for a file name in one of Keras's formats, which cnn_gpu does not write or read."""
    name = os.fspath(path)
    if not isinstance(name, str):
        name = name.decode()
    if name.lower().endswith(KERAS_SUFFIXES):
        raise ValueError(f"{argument} {name!r} names a Keras file format ({', '.join(KERAS_SUFFIXES)}), which cnn_gpu "
                         f"neither writes nor reads: it saves its own .npz archive; name the file '... .npz' "
                         f"(e.g. 'model.npz', 'model.weights.npz')")


def verbosity(verbose) -> int:
    """Keras's verbose argument as 0, 1 or 2 ('auto' is 1: a progress bar)."""
    if isinstance(verbose, bool) or verbose not in VERBOSITY:
        raise ValueError(f"verbose must be one of 'auto', 0, 1, 2, got {verbose!r}")
    return 1 if verbose == "auto" else int(verbose)


def write_npz(path, arrays: dict) -> None:
    """numpy.savez(arrays) to exactly ``path``, atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            numpy.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def positive_int(name, value) -> int:
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def non_negative_int(name, value) -> int:
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def refuse_unsupported(**arguments) -> None:
    given = [name for name, value in arguments.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not supported by cnn_gpu's "
                         f"Sequential; leave {'it' if len(given) == 1 else 'them'} None")


class KerasModelMethods:
    """The methods of the module docstring; a Sequential supplies layers, _inputs, _targets, _forward,
    make_train_step and _measuring_steps (the runners of its steps)."""

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1) -> History:
        """Train for epochs initial_epoch..epochs-1 over (x, y); returns the History (also model.history).

        verbose: 'auto' or 1 a tqdm progress bar per epoch, 2 one line per epoch, 0 nothing. callbacks:
        cnn_gpu.callbacks objects (Keras's hooks and logs). validation_split takes the LAST fraction of x,
        before shuffling, as Keras does; validation_data=(x_val, y_val) overrides it; validation runs every
        validation_freq epochs. class_weight, sample_weight and the steps arguments are not supported
        (an error if given)."""
        refuse_unsupported(class_weight=class_weight, sample_weight=sample_weight, steps_per_epoch=steps_per_epoch,
                            validation_steps=validation_steps)
        self._require_compiled("fit")
        batch_size = positive_int("batch_size", 32 if batch_size is None else batch_size)
        validation_batch_size = positive_int("validation_batch_size", validation_batch_size or batch_size)
        epochs = positive_int("epochs", epochs)
        validation_freq = positive_int("validation_freq", validation_freq)
        initial_epoch = non_negative_int("initial_epoch", initial_epoch)
        verbose = verbosity(verbose)
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        x, targets, validation = self._validation_set(x, targets, validation_split, validation_data)
        self._plan_backward()

        steps = -(-len(x) // batch_size)
        history = History()
        callbacks = CallbackList([*(callbacks or []), history], self, {"epochs": epochs, "steps": steps, "verbose": verbose})
        self.stop_training = False
        training = self.make_train_step(batch_size)
        callbacks.call("on_train_begin", {})
        logs = {}
        for epoch in range(initial_epoch, epochs):
            callbacks.call("on_epoch_begin", epoch, {})
            order = self._shuffle_rng.permutation(len(x)) if shuffle else numpy.arange(len(x))
            with tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", disable=verbose != 1,
                      dynamic_ncols=True) as bar:
                logs = self._run(x, targets, order, batch_size, training, bar, callbacks)
                if validation is not None and (epoch + 1) % validation_freq == 0:
                    val = self._measure(*validation, validation_batch_size, tqdm(disable=True), callbacks)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                    bar.set_postfix(logs)
            callbacks.call("on_epoch_end", epoch, logs)
            if verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4g}" for k, v in logs.items()))
            if self.stop_training:
                break
        callbacks.call("on_train_end", logs)
        history.params = {**history.params, "cuda_graph": training.replayed}  # whether full batches ran as graph replays
        self.history = history
        return history

    def _validation_set(self, x, targets, validation_split, validation_data):
        """(x, targets, validation): the training part, and (x_val, targets_val) or None."""
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (x_val, y_val) (sample weights are not supported)")
            x_val = self._inputs(validation_data[0], "validation_data x")
            return x, targets, (x_val, self._targets(validation_data[1], len(x_val), "validation_data y"))
        if not validation_split:
            return x, targets, None
        if not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        split_at = int(len(x) * (1 - validation_split))
        if split_at == 0 or split_at == len(x):
            raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves "
                             f"{split_at} to train on and {len(x) - split_at} to validate on; both need samples")
        return x[:split_at], targets[:split_at], (x[split_at:], targets[split_at:])

    def _measure(self, x, targets, batch_size, bar, callbacks=None) -> dict:
        """The loss and metrics over (x, targets) in inference mode, with the test hooks of callbacks."""
        if callbacks is not None:
            callbacks.call("on_test_begin", {})
        logs = self._run(x, targets, numpy.arange(len(x)), batch_size, self._measuring_steps(), bar,
                         callbacks, ("on_test_batch_begin", "on_test_batch_end"))
        if callbacks is not None:
            callbacks.call("on_test_end", logs)
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """[loss, *metrics] in compile's order (the loss alone without metrics), or with return_dict=True
        {'loss': ..., metric name: ...}; in inference mode."""
        refuse_unsupported(sample_weight=sample_weight, steps=steps)
        self._require_compiled("evaluate")
        batch_size = positive_int("batch_size", 32 if batch_size is None else batch_size)
        verbose = verbosity(verbose)
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        callbacks = CallbackList(callbacks, self, {"verbose": verbose, "steps": -(-len(x) // batch_size)}) \
            if callbacks else None
        with tqdm(total=-(-len(x) // batch_size), desc="evaluate", unit="batch", disable=verbose != 1,
                  dynamic_ncols=True) as bar:
            logs = self._measure(x, targets, batch_size, bar, callbacks)
        if return_dict:
            return logs
        return [logs["loss"], *(logs[name] for name in self.metrics)] if self.metrics else logs["loss"]

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None) -> numpy.ndarray:
        """The outputs (after the last activation: probabilities for softmax / sigmoid) as a NumPy array."""
        refuse_unsupported(steps=steps)
        batch_size = positive_int("batch_size", 32 if batch_size is None else batch_size)
        verbose = verbosity(verbose)
        x = self._inputs(x)
        callbacks = CallbackList(callbacks, self, {"verbose": verbose}) if callbacks else None
        if callbacks:
            callbacks.call("on_predict_begin", {})
        outputs = []
        for start in tqdm(range(0, len(x), batch_size), desc="predict", unit="batch", disable=verbose != 1):
            y = self._forward(asarray(self.to_layer_layout(x[start:start + batch_size])), training=False, logits=False)
            outputs.append(to_numpy(y))
        if callbacks:
            callbacks.call("on_predict_end", {})
        return self.to_user_layout(numpy.concatenate(outputs))

    def _run(self, x, targets, order, batch_size: int, runner, bar, callbacks=None, hooks=("on_train_batch_begin",
             "on_train_batch_end")) -> dict:
        """One pass over x[order] in batches through runner (an _EagerSteps or _GraphedTrainSteps). Returns
        the means (loss, metrics). The running sums are read every SYNC_EVERY batches while the bar
        shows, after every batch when a callback has batch hooks (``hooks``: their names), and at the end.
        A callback setting model.stop_training ends a training pass after its batch."""
        runner.totals.reset()
        batch_logs = callbacks is not None and callbacks.needs_batch_logs
        for step, start in enumerate(range(0, len(order), batch_size), 1):
            index = order[start:start + batch_size]
            if batch_logs:
                callbacks.call(hooks[0], step - 1, {})
            runner(self.to_layer_layout(x[index]), self._host_targets(targets[index]))
            bar.update(1)
            if batch_logs:
                logs = runner.totals.means()
                callbacks.call(hooks[1], step - 1, logs)
                if not bar.disable and step % SYNC_EVERY == 0:
                    bar.set_postfix(logs, refresh=False)
            elif not bar.disable and step % SYNC_EVERY == 0:
                bar.set_postfix(runner.totals.means(), refresh=False)
            if runner.training and self.stop_training:
                break
        logs = runner.totals.means()
        bar.set_postfix(logs, refresh=False)
        return logs


    # ---- inference on one batch ------------------------------------------------------------------
    def __call__(self, x, training=False):
        """The model's outputs for the batch x, as a NumPy array (training=True: dropout and batch
        statistics as in training; nothing is updated but BatchNormalization's moving statistics)."""
        x = self._inputs(x)
        y = self._forward(asarray(self.to_layer_layout(x)), training=bool(training), logits=False)
        return self.to_user_layout(to_numpy(y))

    def predict_on_batch(self, x):
        return self(x)

    # ---- one step --------------------------------------------------------------------------------
    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One training step on the batch (x, y); returns [loss, *metrics] as evaluate does (the metrics of
        this batch alone) or a dict."""
        return self._one_batch(x, y, True, return_dict, sample_weight=sample_weight, class_weight=class_weight)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        """The loss and metrics of one batch in inference mode, as train_on_batch returns them."""
        return self._one_batch(x, y, False, return_dict, sample_weight=sample_weight)

    def _one_batch(self, x, y, training, return_dict, **unsupported):
        refuse_unsupported(**unsupported)
        self._require_compiled("train_on_batch" if training else "test_on_batch")
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        if training:
            self._plan_backward()
        runner = self.make_train_step(len(x), cuda_graph=False) if training else self._measuring_steps()
        runner(asarray(self.to_layer_layout(x)), asarray(self._host_targets(targets)))
        logs = runner.totals.means()
        if return_dict:
            return logs
        return [logs["loss"], *(logs[name] for name in self.metrics)] if self.metrics else logs["loss"]

    # ---- weights ---------------------------------------------------------------------------------
    def get_weights(self) -> list:
        """Every layer's get_weights(), in layer order: NumPy arrays in Keras's layouts."""
        self._require_built("get_weights")
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        """The inverse of get_weights; the count and every shape are checked before anything is set."""
        self._require_built("set_weights")
        weights = list(weights)
        counts = [len(layer.weights) for layer in self.layers]
        if len(weights) != sum(counts):
            raise ValueError(f"set_weights got {len(weights)} arrays, the model has {sum(counts)} weights")
        start, staged = 0, []
        for layer, count in zip(self.layers, counts):
            staged.append((layer, weights[start:start + count]))
            start += count
        for layer, values in staged:  # every shape first, so a bad list changes nothing
            for (key, current), value in zip(layer.weights.items(), values):
                expected = layer.keras_layout(key, numpy.empty(current.shape)).shape
                if numpy.shape(value) != expected:
                    raise ValueError(f"set_weights: {layer.describe()} weight {key!r} must have shape {expected}, "
                                     f"got {numpy.shape(value)}")
        for layer, values in staged:
            layer.set_weights(values)

    def save_weights(self, filepath, overwrite=True) -> Path:
        """Every layer's weights in one .npz archive at exactly ``filepath`` (atomic write); returns the path."""
        check_native_file_name(filepath, "filepath")
        self._require_built("save_weights")
        path = Path(filepath)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists and overwrite=False")
        arrays = {"format": numpy.array(WEIGHTS_FORMAT)}
        for layer in self.layers:
            for key, value in zip(layer.weights, layer.get_weights()):
                arrays[f"{layer.name}/{key}"] = value
        write_npz(path, arrays)
        return path

    def load_weights(self, filepath) -> None:
        """Weights written by save_weights (by layer name; every name and shape checked before any is set)."""
        check_native_file_name(filepath, "filepath")
        self._require_built("load_weights")
        path = Path(filepath)
        if not path.is_file():
            raise FileNotFoundError(f"no weights file at {path}")
        try:
            with numpy.load(path, allow_pickle=False) as stored:
                if "format" not in stored.files or str(stored["format"][()]) != WEIGHTS_FORMAT:
                    raise ValueError(f"{path} is not a cnn_gpu weights file (written by save_weights)")
                arrays = {key: stored[key] for key in stored.files if key != "format"}
        except (OSError, zipfile.BadZipFile, AttributeError):
            raise ValueError(f"{path} is not a cnn_gpu weights file: not a .npz archive") from None
        expected = {f"{layer.name}/{key}" for layer in self.layers for key in layer.weights}
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise ValueError(f"{path} does not hold this model's weights: missing {missing or 'none'}, "
                             f"not in the model {extra or 'none'}")
        self.set_weights([arrays[f"{layer.name}/{key}"] for layer in self.layers for key in layer.weights])

    def _require_built(self, what) -> None:
        if not self.built:
            raise ValueError(f"{what}() needs a built model: give it an input shape (keras.Input) or call build(), "
                             f"fit() or predict() first")

    # ---- layers ----------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """True when any layer is trainable; setting it sets every layer's flag (takes effect at compile)."""
        return any(layer.trainable for layer in self.layers) if self.layers else self._trainable_flag

    @trainable.setter
    def trainable(self, value) -> None:
        self._trainable_flag = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    _trainable_flag = True

    @property
    def trainable_weights(self) -> list:
        return [w for layer in self.layers if layer.trainable for w in layer.params.values()]

    @property
    def non_trainable_weights(self) -> list:
        return [w for layer in self.layers for w in (layer.weights.values() if not layer.trainable
                                                     else layer.state.values())]

    def get_layer(self, name=None, index=None):
        """A layer by name or by index (one of the two), as Keras's get_layer."""
        if (name is None) == (index is None):
            raise ValueError("get_layer takes exactly one of name= and index=")
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"index {index} is out of range: the model has {len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; the layers are {', '.join(layer.name for layer in self.layers)}")

    def pop(self):
        """Remove and return the last layer (the model keeps its other layers and weights)."""
        if not self.layers:
            raise ValueError("pop(): the model has no layers")
        layer = self.layers.pop()
        if not self.layers:
            self._built = False
        return layer
