"""Sequential: a Keras model over our layers (add, build, summary, compile, the training step, save / load);
fit, evaluate, predict and Keras's other model methods are in cnn_gpu.keras_model, mixed in.

Data crosses the model's boundary in the user's layout (channels-last (N, H, W, C) as in Keras, or
channels-first with data_format='channels_first'); the model transposes each batch ONCE on the host
to the layers' NCHW, uploads it, and converts 4-D outputs back in predict.

A training step: one upload of the batch → forward through the layers → the loss, fused with the
last activation where it can be (the last layer is asked for its logits) → backward in reverse →
the optimizer updates each parameter in place. The loss and the correct-prediction count stay on
the device as running sums; the host reads them every few batches (progress bar) and at the end of
the epoch. Nothing in a step waits for the device (the labels are checked once, on the
host, before the fit), so on the cuda backend the step can be captured as a CUDA graph and replayed:
compile(..., cuda_graph=True), see _GraphedTrainSteps.

save(path) writes ONE .npz file: the config as JSON (layers, input shape, compile settings) and
every layer's weights and state; load_model(path) rebuilds the model on the current backend.
The optimizer's state (moments, velocity) is not saved: a loaded model starts its optimizer afresh.
"""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy

from cnn_gpu import layers as layer_classes
from cnn_gpu import losses, metrics as metric_classes, optimizers
from cnn_gpu.backend import asarray, get_backend, to_numpy
from cnn_gpu.keras_model import KerasModelMethods, check_native_file_name, positive_int, write_npz
from cnn_gpu.layers.base import Layer
from cnn_gpu.layers.core import InputLayer

FILE_FORMAT = "cnn_gpu.models.Sequential/1"
_unseeded_models = None  # after set_random_seed: where models made without a seed draw theirs


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed: seeds Python's and NumPy's global generators, and makes every model
    built afterwards without a seed draw one from this seed's stream (the same program, the same run)."""
    global _unseeded_models
    if not isinstance(seed, (int, numpy.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    random.seed(int(seed))
    numpy.random.seed(int(seed) % 2**32)
    _unseeded_models = numpy.random.SeedSequence(int(seed))


class Sequential(KerasModelMethods):
    """A linear stack of layers: Sequential(layers=None, seed=None, name='sequential').

    seed makes a run reproducible on one backend: the initial weights, the shuffles and the dropout
    masks all derive from it. A keras.Input(shape=...) / InputLayer first gives the input shape (it is
    not one of model.layers, as in Keras). Keras's model methods beyond fit / evaluate / predict
    (model(x), get_weights, save_weights, train_on_batch, trainable, ...) are in cnn_gpu.keras_model.
    """

    def __init__(self, layers=None, seed=None, name="sequential", trainable=True):
        self.name = name
        self.seed = seed
        seeds = numpy.random.SeedSequence(seed) if seed is not None or _unseeded_models is None \
            else _unseeded_models.spawn(1)[0]
        init_seeds, shuffle_seeds = seeds.spawn(2)
        self._init_rng = numpy.random.default_rng(init_seeds)
        self._shuffle_rng = numpy.random.default_rng(shuffle_seeds)
        self.layers: list[Layer] = []
        self.input_shape = None  # per sample, in the user's layout, once known
        self.data_format = None  # from the layers; None means channels_last
        self.optimizer = self.loss = None
        self.metrics: list = []
        self.compiled_metrics: list = []  # cnn_gpu.metrics.Metric objects, from compile
        self.cuda_graph = False
        self.history = None
        self.stop_training = False
        self._trained_layers: list = []  # the layers trainable at compile, which the optimizer updates
        self._backward_stop = 0  # the index of the last layer backward reaches (_plan_backward)
        self._built = False
        for layer in layers or ():
            self.add(layer)
        if not trainable:
            self.trainable = False

    # ---- building --------------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        if isinstance(layer, Sequential):  # a model as a layer: its layers, the same objects (weights, flags)
            if layer.input_shape is not None and not self.layers and self.input_shape is None:
                self.input_shape = layer.input_shape
            for inner in layer.layers:
                self.add(inner)
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be a cnn_gpu.layers layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self.layers or self.input_shape is not None:
                raise ValueError("an Input / InputLayer must come first in a Sequential model, before any layer")
            self.input_shape = layer.input_shape
            return
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
            self._mark_flattened_images()
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
        self._mark_flattened_images()

    def _mark_flattened_images(self) -> None:
        """Tell each Dense whose input is a flattened image (through element-wise layers) the image's (C, H, W):
        Keras flattens channels-last data in (H, W, C) order, we flatten NCHW, so its get_weights / set_weights
        reorder the kernel's rows to Keras's order (real Keras weights then load as they are)."""
        image = None
        for layer in self.layers:
            if isinstance(layer, layer_classes.Flatten):
                image = layer.built_shape if self._channels_last and len(layer.built_shape or ()) == 3 else None
            elif isinstance(layer, layer_classes.Dense):
                layer.flattened_image = image
                image = None
            elif not isinstance(layer, (layer_classes.Dropout, layer_classes.Activation, layer_classes.ReLU,
                                        layer_classes.ELU)):
                image = None  # only element-wise layers without parameters keep the order

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
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, cuda_graph=False) -> None:
        """optimizer: a Keras name ('rmsprop', Keras's default, 'adam', 'adamw', 'sgd') or an Optimizer; loss: a
        Keras loss name or a Loss; metrics: Keras names ('accuracy', 'top_k_categorical_accuracy', ...) or
        cnn_gpu.metrics.Metric objects. The layers trainable now are the ones fit updates (as in Keras, a
        change of layer.trainable takes effect at the next compile).

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
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"cuda_graph must be True or False, got {cuda_graph!r}")
        loss = losses.get(loss)
        metrics = [metrics] if isinstance(metrics, (str, metric_classes.Metric)) else list(metrics or [])
        compiled_metrics = [metric_classes.get(m, loss) for m in metrics]
        names = [m.name for m in compiled_metrics]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"metric names must be unique and not 'loss', got {names}")
        optimizer = optimizers.get(optimizer)
        self.optimizer, self.loss, self.compiled_metrics, self.metrics = optimizer, loss, compiled_metrics, names
        self.cuda_graph = cuda_graph
        self._check_loss_fits_last_layer()
        self._freeze_as_flagged()

    def _freeze_as_flagged(self) -> None:
        """Take the layers' trainable flags: the optimizer updates the parameters of the layers trainable now."""
        self._trained_layers = [layer for layer in self.layers if layer.trainable]

    def _plan_backward(self) -> None:
        """Backward stops at the first trained layer with parameters (nothing before it needs a gradient)."""
        first = next((i for i, layer in enumerate(self.layers) if layer.params and layer in self._trained_layers),
                     len(self.layers))
        for index, layer in enumerate(self.layers):
            layer.needs_input_gradient = index > first
        self._backward_stop = min(first, len(self.layers) - 1)

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
        for layer in reversed(self.layers[self._backward_stop:]):  # below the stop nothing takes a gradient
            doutputs = layer.backward(doutputs)

    def _apply_gradients(self) -> None:
        params = {f"{layer.name}/{k}": p for layer in self._trained_layers for k, p in layer.params.items()}
        grads = {f"{layer.name}/{k}": g for layer in self._trained_layers for k, g in layer.grads.items()}
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
        applied = self.loss.fuses  # the activation the outputs still lack (the loss applies it)
        totals.add(loss, [metric.batch_sum(outputs, targets, applied) for metric in self.compiled_metrics], len(inputs))
        return loss

    def _measuring_steps(self):
        """The runner that evaluates batches (inference mode, no update)."""
        return _EagerSteps(self, training=False)

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
        batch_size = positive_int("batch_size", batch_size)
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
                                 "metrics": [metric_classes.serialize(m) for m in self.compiled_metrics],
                                 "cuda_graph": self.cuda_graph}
        return config

    def save(self, path) -> Path:
        """Write the model (config + weights) to ONE .npz file at exactly ``path``; returns the path.
        Atomic: a save that fails (disk full, Ctrl-C) leaves any previous file at path untouched."""
        check_native_file_name(path, "path")
        if not self._built:
            raise ValueError("the model is not built yet, so it has no weights to save; fit or build it first")
        path = Path(path)
        arrays = {"config": numpy.array(json.dumps(self.get_config()))}
        for layer in self.layers:
            for key, value in {**layer.params, **layer.state}.items():
                arrays[f"{layer.name}/{key}"] = to_numpy(value)
        write_npz(path, arrays)  # atomic: a failed save leaves the previous file as it was
        return path


def load_model(path) -> Sequential:
    """A Sequential saved by Sequential.save, rebuilt on the current backend (compiled, if it was); the file
    is treated as untrusted (cnn_gpu.model_files.read_model says how)."""
    from cnn_gpu.model_files import read_model

    return read_model(path)


class _RunningTotals:
    """Σ loss·n and each metric's Σ over the batches so far, summed in place on the device (a captured step
    adds to the same arrays at every replay), and the count of samples, kept by the host. means()
    reads the sums: one wait for the device."""

    def __init__(self, metric_names):
        self.metric_names = list(metric_names)
        self.loss_sum = asarray(numpy.zeros((), numpy.float64))
        self.metric_sums = [asarray(numpy.zeros((), numpy.float64)) for _ in self.metric_names]
        self.count = 0

    def reset(self) -> None:
        self.loss_sum.fill(0)
        for total in self.metric_sums:
            total.fill(0)
        self.count = 0

    def add(self, loss, metric_values, n: int) -> None:
        """Device work only (the runner counts the samples)."""
        self.loss_sum += loss.astype(numpy.float64) * n
        for total, value in zip(self.metric_sums, metric_values, strict=True):
            total += value

    def means(self) -> dict:
        logs = {"loss": float(self.loss_sum) / self.count}
        for name, total in zip(self.metric_names, self.metric_sums):
            logs[name] = float(total) / self.count
        return logs


# ---- runners: how a pass gets its batches through Sequential._step ------------------------------------
class _EagerSteps:
    """Each batch uploaded and run through Sequential._step as it comes (training, or measuring only)."""

    replayed = False  # no graph

    def __init__(self, model: Sequential, training: bool):
        self.model = model
        self.training = training
        self.totals = _RunningTotals(model.metrics)

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
