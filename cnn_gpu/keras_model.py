"""Keras's model methods beyond compile / fit / evaluate / predict, mixed into Sequential.

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


class KerasModelMethods:
    """The methods of the module docstring; a Sequential supplies layers, _inputs, _targets, _forward, _step."""

    # ---- inference on one batch ------------------------------------------------------------------
    def __call__(self, x, training=False):
        """The model's outputs for the batch x, as a NumPy array (training=True: dropout and batch
        statistics as in training; nothing is updated but BatchNormalization's moving statistics)."""
        from cnn_gpu.backend import asarray, to_numpy

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
        from cnn_gpu.backend import asarray
        from cnn_gpu.models import _EagerSteps, _refuse_unsupported

        _refuse_unsupported(**unsupported)
        self._require_compiled("train_on_batch" if training else "test_on_batch")
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        if training:
            self._plan_backward()
        runner = _EagerSteps(self, training=training)
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
