"""Sequential: Keras's model API (add, summary, compile, fit, evaluate, predict, save) over our layers.

Data crosses the model's boundary in the user's layout (channels-last (N, H, W, C) as in Keras, or
channels-first with data_format='channels_first'); the model transposes each batch ONCE on the host
to the layers' NCHW, uploads it, and converts 4-D outputs back in predict.

A training step: one upload of the batch → forward through the layers → the loss, fused with the
last activation where it can be (the last layer is asked for its logits) → backward in reverse →
the optimizer updates each parameter in place. The loss and the correct-prediction count stay on
the device as running sums; the host reads them once every SYNC_EVERY batches (progress bar) and at
the end of the epoch. Nothing in a step waits for the device (the labels are checked once, on the
host, before the fit), so on the cuda backend the step can be captured as a CUDA graph and replayed:
compile(..., cuda_graph=True), see _GraphedTrainSteps.

save(path) writes ONE .npz file: the config as JSON (layers, input shape, compile settings) and
every layer's weights and state; load_model(path) rebuilds the model on the current backend.
The optimizer's state (moments, velocity) is not saved: a loaded model starts its optimizer afresh.
"""
from __future__ import annotations

import functools
import json
import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy
from tqdm.auto import tqdm

from cnn_gpu import layers as layer_classes
from cnn_gpu import losses, optimizers
from cnn_gpu.backend import asarray, get_backend, to_numpy
from cnn_gpu.files import atomic_write
from cnn_gpu.layers.base import Layer
from cnn_gpu.ops.arrays import real_number

FILE_FORMAT = "cnn_gpu.models.Sequential/1"
SYNC_EVERY = 10  # batches between reads of the running loss (each read waits for the device)
METRICS = ("accuracy", "acc")


class History:
    """What fit returns: ``history`` maps 'loss', 'accuracy', 'val_loss', 'val_accuracy' to per-epoch values."""

    def __init__(self, params: dict):
        self.history: dict = {}
        self.epoch: list = []
        self.params = params

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={list(self.history)}>"


class Sequential:
    """A linear stack of layers: Sequential(layers=None, seed=None, name='sequential').

    seed makes a run reproducible on one backend: the initial weights, the shuffles and the dropout
    masks all derive from it.
    """

    def __init__(self, layers=None, seed=None, name="sequential"):
        self.name = name
        self.seed = seed
        init_seeds, shuffle_seeds = numpy.random.SeedSequence(seed).spawn(2)
        self._init_rng = numpy.random.default_rng(init_seeds)
        self._shuffle_rng = numpy.random.default_rng(shuffle_seeds)
        self.layers: list[Layer] = []
        self.input_shape = None  # per sample, in the user's layout, once known
        self.data_format = None  # from the layers; None means channels_last
        self.optimizer = self.loss = None
        self.metrics: list = []
        self.cuda_graph = False
        self.history = None
        self._built = False
        for layer in layers or ():
            self.add(layer)

    # ---- building --------------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be a cnn_gpu.layers layer, got {type(layer).__name__}")
        if layer.name is None:
            layer.name = self._unique_name(layer.default_name())
        elif any(other.name == layer.name for other in self.layers):
            raise ValueError(f"layer name {layer.name!r} is already used in this model; names must be unique")
        if layer.data_format is not None:
            # The first layer that names a data_format sets the model's, before anything is built.
            in_force = self.data_format or ("channels_last" if self._built else None)
            if in_force not in (None, layer.data_format):
                raise ValueError(f"data_format {layer.data_format!r} of {layer.describe()} conflicts with the "
                                 f"model's {in_force!r}")
            self.data_format = layer.data_format
        if not self.layers and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        self.layers.append(layer)
        if self._built:
            layer.build(self.layers[-2].output_shape, self._init_rng)
        elif self.input_shape is not None and len(self.layers) == 1:
            self.build(self.input_shape)

    def _unique_name(self, base: str) -> str:
        taken = {layer.name for layer in self.layers}
        name, suffix = base, 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        return name

    def build(self, input_shape) -> None:
        """Build every layer for per-sample input_shape, in the user's layout ((None, ...) also accepted)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        if not self.layers:
            raise ValueError("the model has no layers; add some before building it")
        if self.input_shape is not None and tuple(shape) != tuple(self.input_shape):
            raise ValueError(f"input_shape {tuple(shape)} differs from the first layer's input_shape {self.input_shape}")
        self.input_shape = tuple(int(v) for v in shape)
        layer_shape = self._layer_shape(self.input_shape)
        for layer in self.layers:
            layer_shape = layer.build(layer_shape, self._init_rng)
        self.layers[0].needs_input_gradient = False  # no one takes dL/dx of the data: the first conv skips it
        self._built = True

    @property
    def built(self) -> bool:
        return self._built

    @property
    def output_shape(self):
        """Per-sample output shape in the user's layout (the model must be built)."""
        return self._user_shape(self.layers[-1].output_shape)

    # ---- layouts ---------------------------------------------------------------------------------
    @property
    def _channels_last(self) -> bool:
        return self.data_format in (None, "channels_last")

    def _layer_shape(self, user_shape) -> tuple:
        user_shape = tuple(user_shape)
        if self._channels_last and len(user_shape) == 3:
            return (user_shape[2], user_shape[0], user_shape[1])
        return user_shape

    def _user_shape(self, layer_shape) -> tuple:
        layer_shape = tuple(layer_shape)
        if self._channels_last and len(layer_shape) == 3:
            return (layer_shape[1], layer_shape[2], layer_shape[0])
        return layer_shape

    def to_layer_layout(self, x):
        """A batch (N, H, W, C) in the user's layout as the layers' C-contiguous NCHW (any array type)."""
        return x.transpose(0, 3, 1, 2).copy() if self._channels_last and x.ndim == 4 else x

    def to_user_layout(self, y):
        """The layers' NCHW output as the user's layout."""
        return y.transpose(0, 2, 3, 1) if self._channels_last and y.ndim == 4 else y

    # ---- description -----------------------------------------------------------------------------
    def summary(self, print_fn=print) -> str:
        """Keras's table: layer (type), output shape, parameters; totals. Prints it and returns it."""
        if not self._built:
            raise ValueError("the model is not built yet: give the first layer an input_shape, or call build(), "
                             "fit() or predict() first")
        rows = [(f"{layer.name} ({type(layer).__name__})", str((None, *self._user_shape(layer.output_shape))),
                 str(sum(layer.count_params()))) for layer in self.layers]
        header = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(r[i]) for r in [header, *rows]) + 4 for i in range(3)]
        width = sum(widths)

        def line(cells):
            return "".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()

        trainable = sum(layer.count_params()[0] for layer in self.layers)
        frozen = sum(layer.count_params()[1] for layer in self.layers)
        body = [line(rows[0])] if rows else []
        for row in rows[1:]:
            body += ["_" * width, line(row)]
        text = "\n".join([f'Model: "{self.name}"', "_" * width, line(header), "=" * width, *body, "=" * width,
                          f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
                          f"Non-trainable params: {frozen:,}", "_" * width])
        if print_fn is not None:
            print_fn(text)
        return text

    def count_params(self) -> int:
        return sum(sum(layer.count_params()) for layer in self.layers)

    # ---- training set-up -------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, cuda_graph=False) -> None:
        """optimizer: 'adam' | 'sgd' | an Optimizer; loss: a Keras loss name or a Loss; metrics: ['accuracy'] or None.

        cuda_graph=True: on the cuda backend, fit captures its training step once as a CUDA graph and
        replays it for every full batch: one graph launch a step instead of a launch (and its Python)
        per kernel, which is what bounds a small network. The replays compute what eager steps compute
        (the same kernels, mask seeds and Adam step sizes); the last partial batch, validation,
        evaluate and predict run eagerly. Where the step cannot be captured, fit warns and trains
        eagerly. On the numpy backend the flag does nothing. One fit with it at a time per device
        (their graphs share a memory pool).
        """
        if loss is None:
            raise ValueError("loss is required: one of " + ", ".join(repr(n) for n in [*losses.LOSSES, *losses.ALIASES]))
        metrics = list(metrics or [])
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"metrics may only hold 'accuracy', got {metrics!r}")
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph must be True or False, got {cuda_graph!r}")
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = ["accuracy"] if metrics else []
        self.cuda_graph = cuda_graph
        self._check_loss_fits_last_layer()

    def _check_loss_fits_last_layer(self) -> None:
        if not self.layers:
            raise ValueError("the model has no layers; add them before compile()")
        last = self.layers[-1]
        if self.loss.fuses is not None and last.activation != self.loss.fuses:
            raise ValueError(f"loss {self.loss.name!r} needs the last layer to end in activation={self.loss.fuses!r} "
                             f"(it is computed from the logits, fused with that activation), but the last layer, "
                             f"{last.describe()}, has activation={last.activation!r}; add Activation({self.loss.fuses!r}) "
                             f"or use the loss object with from_logits=True")

    def _require_compiled(self, what: str) -> None:
        if self.loss is None:
            raise ValueError(f"{what}() needs a compiled model: call model.compile(optimizer=..., loss=...) first")
        self._check_loss_fits_last_layer()

    # ---- host-side data checks -------------------------------------------------------------------
    @property
    def dtype(self):
        return self.layers[0].dtype if self.layers else numpy.dtype(numpy.float32)

    def _inputs(self, x, name="x") -> numpy.ndarray:
        """x as a host array of the model's dtype, checked against (and building) the input shape."""
        x = numpy.asarray(to_numpy(x), dtype=self.dtype)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty batch of samples (N, ...), got shape {x.shape}")
        if not self._built:
            if self.input_shape is None:
                self.build(x.shape[1:])
            else:
                self.build(self.input_shape)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{name} has samples of shape {x.shape[1:]} (x shape {x.shape}), "
                             f"the model takes {self.input_shape}")
        return x

    def _targets(self, y, count: int, name="y") -> numpy.ndarray:
        y = to_numpy(y)
        if numpy.ndim(y) < 1 or len(y) != count:
            raise ValueError(f"{name} has {len(y) if numpy.ndim(y) else 0} samples (shape {numpy.shape(y)}), "
                             f"x has {count}")
        targets = self.loss.targets(y, self.output_shape)
        return self.to_layer_layout(targets)

    def _host_targets(self, batch) -> numpy.ndarray:
        """A batch of targets as they are uploaded: class labels as they are, real values in the model's dtype."""
        return batch.astype(self.dtype, copy=False) if batch.dtype.kind == "f" else batch

    # ---- the steps -------------------------------------------------------------------------------
    def _forward(self, x, training: bool, logits: bool):
        *body, last = self.layers
        for layer in body:
            x = layer.forward(x, training=training)
        return last.forward(x, training=training, logits=True) if logits else last.forward(x, training=training)

    def _backward(self, doutputs) -> None:
        for layer in reversed(self.layers):
            doutputs = layer.backward(doutputs)

    def _apply_gradients(self) -> None:
        params = {f"{layer.name}/{k}": p for layer in self.layers for k, p in layer.params.items()}
        grads = {f"{layer.name}/{k}": g for layer in self.layers for k, g in layer.grads.items()}
        self.optimizer.apply(params, grads)

    def _step(self, inputs, targets, training: bool, totals):
        """One batch on the device: forward, the loss and its gradient, when training backward and the
        optimizer's update, and the loss and correct count added to totals; returns the batch's loss (a
        device scalar). Nothing here waits for the device or reads host data (targets come from
        loss.targets(), checked on the host, so the loss skips its device check), which is what lets
        _GraphedTrainSteps capture it."""
        outputs = self._forward(inputs, training, logits=self.loss.fuses is not None)
        loss, doutputs = self.loss(outputs, targets, check_labels=False)
        if training:
            self._backward(doutputs)
            self._apply_gradients()
        totals.add(loss, self.loss.count_correct(outputs, targets) if self.metrics else None, len(inputs))
        return loss

    def _run(self, x, targets, order, batch_size: int, runner, bar) -> dict:
        """One pass over x[order] in batches through runner (an _EagerSteps or _GraphedTrainSteps). Returns
        the means (loss, accuracy). The running sums are read every SYNC_EVERY batches while the bar
        shows, and at the end."""
        runner.totals.reset()
        for step, start in enumerate(range(0, len(order), batch_size), 1):
            index = order[start:start + batch_size]
            runner(self.to_layer_layout(x[index]), self._host_targets(targets[index]))
            bar.update(1)
            if not bar.disable and step % SYNC_EVERY == 0:
                bar.set_postfix(runner.totals.means(), refresh=False)
        logs = runner.totals.means()
        bar.set_postfix(logs, refresh=False)
        return logs

    def prepare_targets(self, y):
        """y (as fit takes it) as what a training step takes: the loss's targets in the layers' layout, checked
        on the host once (class labels in range, shapes), in the model's dtype where they are real values."""
        self._require_compiled("prepare_targets")
        return self._host_targets(self._targets(y, len(y)))

    def make_train_step(self, batch_size: int, cuda_graph: bool | None = None):
        """The training step fit runs, as a callable: ``step(x, targets)`` trains on one batch and returns its
        loss, a scalar left on the device (reading it waits for the step). x is a batch in the layers' NCHW
        layout and targets come from prepare_targets(y), NumPy arrays (uploaded) or arrays already on the
        device. ``step.totals.means()`` gives the mean loss (and accuracy) of the batches so far;
        ``step.replayed`` says whether a batch ran as a CUDA-graph replay.

        cuda_graph (default: compile's setting): on the cuda backend, full batches of batch_size are replayed
        from one captured CUDA graph (see compile); other batches, and every batch elsewhere, run eagerly."""
        self._require_compiled("make_train_step")
        batch_size = _positive_int("batch_size", batch_size)
        if cuda_graph is None:
            cuda_graph = self.cuda_graph
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph must be True, False or None, got {cuda_graph!r}")
        if not cuda_graph or get_backend() != "cuda":
            return _EagerSteps(self, training=True)
        import cupy

        if cupy.cuda.runtime.is_hip:
            warnings.warn("cuda_graph: CuPy cannot capture CUDA graphs on ROCm/HIP; fit trains eagerly",
                          RuntimeWarning, stacklevel=2)
            return _EagerSteps(self, training=True)
        return _GraphedTrainSteps(self, batch_size)

    # ---- the Keras API ---------------------------------------------------------------------------
    def fit(self, x, y, batch_size=32, epochs=1, verbose=1, *, validation_split=0.0, validation_data=None,
            shuffle=True) -> History:
        """Train for ``epochs`` passes over (x, y); returns a History. verbose: 0 silent, 1 a progress
        bar per epoch, 2 one line per epoch. validation_split takes the LAST fraction of x, before
        shuffling, as Keras does; validation_data=(x_val, y_val) overrides it."""
        self._require_compiled("fit")
        batch_size = _positive_int("batch_size", 32 if batch_size is None else batch_size)
        epochs = _positive_int("epochs", epochs)
        validation_split = real_number("validation_split", validation_split, 0, 1, high_open=True)
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        validation = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            x_val = self._inputs(validation_data[0], "validation_data x")
            validation = (x_val, self._targets(validation_data[1], len(x_val), "validation_data y"))
        elif validation_split:
            split_at = int(len(x) * (1 - validation_split))
            if split_at == 0 or split_at == len(x):
                raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves "
                                 f"{split_at} to train on and {len(x) - split_at} to validate on; both need samples")
            x, validation = x[:split_at], (x[split_at:], targets[split_at:])
            targets = targets[:split_at]

        steps = -(-len(x) // batch_size)
        self.history = history = History({"epochs": epochs, "steps": steps, "verbose": verbose})
        training = self.make_train_step(batch_size)
        for epoch in range(epochs):
            order = self._shuffle_rng.permutation(len(x)) if shuffle else numpy.arange(len(x))
            with tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch", disable=verbose != 1,
                      dynamic_ncols=True) as bar:
                logs = self._run(x, targets, order, batch_size, training, bar)
                if validation is not None:
                    val = self._run(*validation, numpy.arange(len(validation[0])), batch_size,
                                    _EagerSteps(self, training=False), tqdm(disable=True))
                    logs.update({f"val_{k}": v for k, v in val.items()})
                    bar.set_postfix(logs)
            if verbose == 2:
                print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
            history.append(epoch, logs)
        history.params["cuda_graph"] = training.replayed  # whether full batches ran as graph replays
        return history

    def evaluate(self, x, y, batch_size=32, verbose=1):
        """[loss, accuracy] (the loss alone without metrics), in inference mode."""
        self._require_compiled("evaluate")
        batch_size = _positive_int("batch_size", 32 if batch_size is None else batch_size)
        x = self._inputs(x)
        targets = self._targets(y, len(x))
        with tqdm(total=-(-len(x) // batch_size), desc="evaluate", unit="batch", disable=verbose != 1,
                  dynamic_ncols=True) as bar:
            logs = self._run(x, targets, numpy.arange(len(x)), batch_size, _EagerSteps(self, training=False), bar)
        return [logs["loss"], logs["accuracy"]] if self.metrics else logs["loss"]

    def predict(self, x, batch_size=32, verbose=0) -> numpy.ndarray:
        """The outputs (after the last activation: probabilities for softmax / sigmoid) as a NumPy array."""
        batch_size = _positive_int("batch_size", 32 if batch_size is None else batch_size)
        x = self._inputs(x)
        outputs = []
        for start in tqdm(range(0, len(x), batch_size), desc="predict", unit="batch", disable=verbose != 1):
            y = self._forward(asarray(self.to_layer_layout(x[start:start + batch_size])), training=False, logits=False)
            outputs.append(to_numpy(y))
        return self.to_user_layout(numpy.concatenate(outputs))

    # ---- saving ----------------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = {"format": FILE_FORMAT, "name": self.name, "seed": self.seed, "data_format": self.data_format,
                  "input_shape": list(self.input_shape) if self.input_shape else None,
                  "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                  "compile": None}
        if self.loss is not None:
            config["compile"] = {"optimizer": {"class_name": type(self.optimizer).__name__,
                                               "config": self.optimizer.get_config()},
                                 "loss": {"name": self.loss.name, "config": self.loss.get_config()},
                                 "metrics": self.metrics, "cuda_graph": self.cuda_graph}
        return config

    def save(self, path) -> Path:
        """Write the model (config + weights) to ONE .npz file at exactly ``path``; returns the path.
        Atomic: a save that fails (disk full, Ctrl-C) leaves any previous file at path untouched."""
        if not self._built:
            raise ValueError("the model is not built yet, so it has no weights to save; fit or build it first")
        path = Path(path)
        arrays = {"config": numpy.array(json.dumps(self.get_config()))}
        for layer in self.layers:
            for key, value in {**layer.params, **layer.state}.items():
                arrays[f"{layer.name}/{key}"] = to_numpy(value)
        with atomic_write(path) as file:  # a failed save leaves the previous file as it was
            numpy.savez(file, **arrays)
        return path


def load_model(path) -> Sequential:
    """A Sequential saved by Sequential.save, rebuilt on the current backend (compiled, if it was).

    The file is treated as untrusted: nothing is unpickled, and every inconsistency (not a .npz archive,
    a missing or malformed config, an unknown layer or keyword, a dtype the layers do not compute in,
    members the model does not have, a weight missing or of another shape than its layer needs, sizes
    the file does not hold, non-finite weights) is a ValueError "not a valid cnn_gpu model file: <path>:
    <problem>", raised before the model is built: the config is checked against the stored arrays'
    headers first, so a file cannot make the loader allocate more than the arrays it holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        return _load_model_file(path)
    except _InvalidModelFile as exc:
        raise ValueError(f"not a valid cnn_gpu model file: {path}: {exc}") from None


class _InvalidModelFile(Exception):
    """What is wrong with a model file (load_model adds the file's name)."""


_MAX_CONFIG_BYTES = 16 * 2**20   # a config is a few KB; more is not one Sequential.save wrote
_DEFLATE_MAX_RATIO = 1032        # the most a DEFLATE stream can expand; a member claiming more is lying


def _load_model_file(path: Path) -> Sequential:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        problem = "the file is empty" if path.stat().st_size == 0 else f"not a .npz archive ({exc})"
        raise _InvalidModelFile(problem) from None
    with archive:
        members = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.filename[:-4] in members:
                raise _InvalidModelFile(f"member {info.filename!r} is not one array of a model (not a unique .npy)")
            members[info.filename[:-4]] = info
        if "config" not in members:
            raise _InvalidModelFile("it holds no model config")
        config = _read_config(archive, members["config"])
        planned = _planned_weights(config)  # {key: (shape, dtype)}, nothing allocated
        unknown = sorted(set(members) - set(planned) - {"config"})
        if unknown:
            raise _InvalidModelFile(f"members {', '.join(map(repr, unknown))} are not weights of the model it describes")
        missing = sorted(set(planned) - set(members))
        if missing:
            raise _InvalidModelFile(f"weights {', '.join(missing)} of the model it describes are missing")
        headers = {key: _array_header(archive, members[key]) for key in planned}
        for key, (shape, _) in planned.items():
            stored_shape, stored_dtype = headers[key][:2]
            if stored_shape != shape:
                raise _InvalidModelFile(f"weight {key} has shape {stored_shape}, its layer needs {shape}")
            if stored_dtype.kind != "f" or stored_dtype.itemsize not in (4, 8):
                raise _InvalidModelFile(f"weight {key} has dtype {stored_dtype}, not float32 or float64")
        # Every check that needs no weight values has passed: build, then read the weights one by one.
        model = _model_from_config(config)
        for layer in model.layers:
            for kind in ("params", "state"):
                arrays = getattr(layer, kind)
                for name in arrays:
                    key = f"{layer.name}/{name}"
                    values = _read_array(archive, members[key], *headers[key])
                    if not numpy.isfinite(values).all():
                        raise _InvalidModelFile(f"weight {key} holds non-finite values (NaN or inf)")
                    arrays[name] = layer.new_param(values)
    return model


def _read_config(archive, info) -> dict:
    shape, dtype, fortran, offset = _array_header(archive, info, limit=_MAX_CONFIG_BYTES)
    if shape != () or dtype.kind != "U":
        raise _InvalidModelFile(f"its config is a {dtype} array of shape {shape}, not one JSON string")
    try:
        config = json.loads(str(_read_array(archive, info, shape, dtype, fortran, offset)[()]))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's stack
        raise _InvalidModelFile(f"its config is not JSON ({exc})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FILE_FORMAT:
        raise _InvalidModelFile(f"its format is {found!r}, expected {FILE_FORMAT!r}")
    for key, valid, what in (("name", lambda v: isinstance(v, str), "a string"),
                             ("seed", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int or null"),
                             ("input_shape", lambda v: v is None or (isinstance(v, list) and v and all(
                                 isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)),
                              "null or a list of positive ints"),
                             ("layers", lambda v: isinstance(v, list) and v and all(
                                 isinstance(spec, dict) and isinstance(spec.get("class_name"), str)
                                 and isinstance(spec.get("config"), dict) for spec in v),
                              "a non-empty list of {class_name, config}"),
                             ("compile", lambda v: v is None or isinstance(v, dict), "null or an object")):
        if key not in config:
            raise _InvalidModelFile(f"its config has no {key!r}")
        if not valid(config[key]):
            raise _InvalidModelFile(f"its config's {key!r} must be {what}, got {config[key]!r:.200}")
    return config


def _new_layers(config) -> list:
    """The config's layers, constructed (nothing built), each in a dtype the current backend computes in."""
    dtypes = ("float32",) if get_backend() == "cuda" else ("float32", "float64")
    layers = []
    for index, spec in enumerate(config["layers"]):
        try:
            layer = layer_classes.from_config(spec["class_name"], spec["config"])
        except (TypeError, ValueError) as exc:
            raise _InvalidModelFile(f"layer {index} ({spec['class_name']:.100}): {exc}") from None
        if layer.dtype.name not in dtypes:
            raise _InvalidModelFile(f"layer {index} ({spec['class_name']}) has dtype {layer.dtype.name}; "
                                    f"the {get_backend()} backend computes in {' or '.join(dtypes)}")
        layers.append(layer)
    return layers


class _ShapesOnlyRandom:
    """Stands in for a Generator while a model is built for its weights' shapes: every draw is a
    zero-strided array of the requested size (no memory), or 0."""

    def __getattr__(self, name):
        def draw(*args, size=None, **kwargs):
            return 0 if size is None else numpy.broadcast_to(numpy.float64(0), size)
        return draw


def _planned_weights(config) -> dict:
    """{'layer/param': (shape, dtype)} of the model the config describes, worked out by building it with
    zero-strided stand-ins for its weights (nothing of their size is allocated)."""
    probe = Sequential(name="probe")
    probe._init_rng = _ShapesOnlyRandom()
    try:
        for layer in _new_layers(config):
            layer.new_param = functools.partial(_stand_in_weight, layer.dtype)
            probe.add(layer)
        if not probe.built:
            if config["input_shape"] is None:
                raise _InvalidModelFile("neither the config nor its first layer gives the input shape")
            probe.build(config["input_shape"])
    except (TypeError, ValueError) as exc:
        raise _InvalidModelFile(f"its layers do not fit together: {exc}") from None
    except MemoryError:
        raise _InvalidModelFile("its layers are too large to build") from None
    return {f"{layer.name}/{key}": (tuple(value.shape), value.dtype)
            for layer in probe.layers for arrays in (layer.params, layer.state) for key, value in arrays.items()}


def _stand_in_weight(dtype, values):
    return numpy.broadcast_to(numpy.zeros((), dtype), numpy.shape(values))


def _model_from_config(config) -> Sequential:
    model = Sequential(seed=config["seed"], name=config["name"])
    for layer in _new_layers(config):
        model.add(layer)
    if not model.built:
        model.build(config["input_shape"])
    try:
        if config["compile"]:
            settings = config["compile"]
            model.compile(optimizer=optimizers.from_config(settings["optimizer"]["class_name"], settings["optimizer"]["config"]),
                          loss=losses.from_config(settings["loss"]["name"], settings["loss"]["config"]),
                          metrics=settings["metrics"], cuda_graph=settings.get("cuda_graph", False))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise _InvalidModelFile(f"its compile settings are not valid ({type(exc).__name__}: {exc})") from None
    return model


def _array_header(archive, info, limit=None) -> tuple:
    """(shape, dtype, fortran_order, data offset) of a .npy member, read from its header alone, after
    checking that the member holds exactly the bytes its header declares and no more than it could."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _InvalidModelFile(f"member {info.filename!r} uses compression method {info.compress_type}")
    if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
        raise _InvalidModelFile(f"member {info.filename!r} declares {info.file_size} bytes from {info.compress_size}")
    if limit is not None and info.file_size > limit:
        raise _InvalidModelFile(f"member {info.filename!r} is {info.file_size} bytes, more than {limit}")
    try:
        with archive.open(info) as member:
            version = numpy.lib.format.read_magic(member)
            read_header = {(1, 0): numpy.lib.format.read_array_header_1_0,
                           (2, 0): numpy.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}")
            shape, fortran, dtype = read_header(member)
            offset = member.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _InvalidModelFile(f"member {info.filename!r} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise _InvalidModelFile(f"member {info.filename!r} holds Python objects")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise _InvalidModelFile(f"member {info.filename!r} declares shape {shape} of {dtype} ({nbytes} bytes) "
                                f"but holds {info.file_size - offset}")
    return tuple(shape), dtype, fortran, offset


def _read_array(archive, info, shape, dtype, fortran, offset) -> numpy.ndarray:
    """A member's array, its header already checked by _array_header."""
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with archive.open(info) as member:
            member.read(offset)
            data = member.read(nbytes)
            if len(data) != nbytes or member.read(1):  # reading to the end also checks the CRC
                raise ValueError("its size differs from its header")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _InvalidModelFile(f"member {info.filename!r} cannot be read ({exc})") from None
    order = "F" if fortran else "C"
    array = numpy.empty(shape, dtype, order=order)  # writable: the layers update their state in place
    array.reshape(-1, order=order)[...] = numpy.frombuffer(data, dtype=dtype)
    return array


class _RunningTotals:
    """Σ loss·n and Σ correct over the batches so far, summed in place on the device (a captured step
    adds to the same arrays at every replay), and the count of samples, kept by the host. means()
    reads the sums: one wait for the device."""

    def __init__(self, with_accuracy: bool):
        self.with_accuracy = with_accuracy
        self.loss_sum = asarray(numpy.zeros((), numpy.float64))
        self.correct = asarray(numpy.zeros((), numpy.float64))
        self.count = 0

    def reset(self) -> None:
        self.loss_sum.fill(0)
        self.correct.fill(0)
        self.count = 0

    def add(self, loss, correct, n: int) -> None:
        """Device work only (the runner counts the samples)."""
        self.loss_sum += loss.astype(numpy.float64) * n
        if correct is not None:
            self.correct += correct

    def means(self) -> dict:
        logs = {"loss": float(self.loss_sum) / self.count}
        if self.with_accuracy:
            logs["accuracy"] = float(self.correct) / self.count
        return logs


# ---- runners: how a pass gets its batches through Sequential._step ------------------------------------
class _EagerSteps:
    """Each batch uploaded and run through Sequential._step as it comes (training, or measuring only)."""

    replayed = False  # no graph

    def __init__(self, model: Sequential, training: bool):
        self.model = model
        self.training = training
        self.totals = _RunningTotals(with_accuracy=bool(model.metrics))

    def __call__(self, inputs, targets):
        """One batch in the layers' layout: NumPy arrays (uploaded here) or arrays already on the device.
        Returns the batch's loss, on the device."""
        loss = self.model._step(asarray(inputs), asarray(targets), self.training, self.totals)
        self.totals.count += len(inputs)
        return loss


class _GraphedTrainSteps(_EagerSteps):
    """fit's training steps on the cuda backend, the full batches replayed from one captured CUDA graph.

    How a step runs: the first full batch eagerly (it compiles and tunes every kernel the step uses and
    creates the optimizer's slots); the second is captured (cnn_gpu.cuda.graph.GraphedStep: Sequential._step
    on static buffers, the layers' and the optimizer's step scalars read from a device buffer) and, with
    every later full batch, replayed; a partial last batch eagerly. Where the capture fails (the platform,
    or something in the step that waits for the device), a RuntimeWarning says why and the fit goes on
    eagerly, starting with that batch.
    """

    def __init__(self, model: Sequential, batch_size: int):
        super().__init__(model, training=True)
        self.batch_size = batch_size
        self.replayed = False
        self._graph = None
        self._warmed_up = self._given_up = False
        # Everything with step scalars, or (the optimizer's iteration count) host state a step advances.
        self._sources = [*model.layers, model.optimizer]

    def __call__(self, inputs, targets):
        full = len(inputs) == self.batch_size
        if full and self._warmed_up and not self._given_up and self._graph is None:
            self._capture(inputs, targets)
        if full and self._graph is not None:
            return self._replay(inputs, targets)
        loss = super().__call__(inputs, targets)
        self._warmed_up = self._warmed_up or full
        return loss

    def _capture(self, inputs, targets) -> None:
        from cnn_gpu.cuda.graph import GraphedStep

        try:
            self._graph = GraphedStep(lambda x, t: self.model._step(x, t, True, self.totals), (inputs, targets),
                                      self._sources)
        except Exception as exc:  # a real error in the step would also have stopped the eager warm-up step
            self._given_up = True
            warnings.warn(f"cuda_graph: the training step could not be captured as a CUDA graph "
                          f"({type(exc).__name__}: {exc}); fit trains eagerly", RuntimeWarning, stacklevel=2)

    def _replay(self, inputs, targets):
        loss = self._graph.replay(inputs, targets)  # on the current stream
        self.totals.count += len(inputs)
        self.replayed = True
        return loss


def _positive_int(name, value) -> int:
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
