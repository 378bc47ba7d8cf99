"""Losses by Keras name, each with Keras's 'accuracy' for it, computed on the device.

A cross-entropy takes LOGITS: with ``from_logits=False`` (Keras's default) it fuses with the model's
last activation ('softmax' for the categorical ones, 'sigmoid' for binary), which the model then
skips, so loss and gradient come from one stable fused op (softmax_cross_entropy /
sigmoid_binary_cross_entropy) rather than log(softmax). ``fuses`` names that activation; a model
whose last layer does not end in it is refused at compile time. With ``from_logits=True`` the
outputs are the logits already. Mean squared error takes the outputs as they are.

    loss(outputs, targets) -> (mean loss as a 0-d device array, d loss / d outputs)
    loss(outputs, targets, check_labels=False): the same without checking class labels on the device
        (a wait for it): for targets that loss.targets() has checked, as the model's are
    loss.targets(y, output_shape) -> y checked and converted on the host, ready to upload per batch
    loss.count_correct(outputs, targets) -> 0-d device array: the batch's correct predictions
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F


class Loss:
    """Base: the Keras name, the fused activation, the config for saving."""

    name = ""
    fuses = None  # the last activation the model skips because this loss applies it to logits

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    # Abstract: each loss below defines these three.
    def __call__(self, outputs, targets, check_labels=True):
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def targets(self, y, output_shape) -> numpy.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not define targets")

    def count_correct(self, outputs, targets):
        raise NotImplementedError(f"{type(self).__name__} does not define count_correct")

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}


class _CrossEntropy(Loss):
    def __init__(self, from_logits=False):
        super().__init__(from_logits)
        if from_logits:
            self.fuses = None


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Integer class labels y (N,) or (N, 1) against (N, K) logits; accuracy: argmax == label."""

    name = "sparse_categorical_crossentropy"
    fuses = "softmax"

    def __call__(self, outputs, targets, check_labels=True):
        return F.softmax_cross_entropy(outputs, targets, check_labels=check_labels)

    def targets(self, y, output_shape):
        classes = _class_count(self.name, output_shape)
        y = numpy.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must be class labels of shape (N,) for {self.name}, got shape {y.shape}")
        labels = y.astype(numpy.int64)
        if not numpy.array_equal(labels, y) or (labels.size and (labels.min() < 0 or labels.max() >= classes)):
            raise ValueError(f"y must hold integer class labels in [0, {classes}) for {self.name} "
                             f"(the model has {classes} outputs), got values in [{y.min()}, {y.max()}]")
        return labels

    def count_correct(self, outputs, targets):
        return (outputs.argmax(axis=1) == targets).sum()


class CategoricalCrossentropy(SparseCategoricalCrossentropy):
    """One-hot (or soft) targets y (N, K) against (N, K) logits; accuracy: argmax == argmax(y).

    One-hot y becomes class labels on the host, once, so the fused kernel applies; soft targets
    (rows of probabilities) use −Σ t·log_softmax(z), gradient softmax(z)·Σt − t.
    """

    name = "categorical_crossentropy"

    def __call__(self, outputs, targets, check_labels=True):
        if targets.ndim == 1:
            return super().__call__(outputs, targets, check_labels)
        n = outputs.shape[0]
        loss = -(targets * F.log_softmax(outputs)).sum() / n
        return loss, (F.softmax(outputs) * targets.sum(axis=1, keepdims=True) - targets) / n

    def targets(self, y, output_shape):
        classes = _class_count(self.name, output_shape)
        y = numpy.asarray(y)
        if y.ndim != 2 or y.shape[1] != classes:
            raise ValueError(f"y must be (N, {classes}) one-hot rows for {self.name} (the model has {classes} "
                             f"outputs), got shape {y.shape}; use sparse_categorical_crossentropy for labels")
        if numpy.all((y == 0) | (y == 1)) and numpy.all(y.sum(axis=1) == 1):
            return y.argmax(axis=1).astype(numpy.int64)
        return numpy.asarray(y, dtype=numpy.float64)

    def count_correct(self, outputs, targets):
        labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
        return super().count_correct(outputs, labels)


class BinaryCrossentropy(_CrossEntropy):
    """Targets in [0, 1] of the outputs' shape ((N,) is taken as (N, 1)); accuracy: (p > 0.5) == y."""

    name = "binary_crossentropy"
    fuses = "sigmoid"

    def __call__(self, outputs, targets, check_labels=True):  # 0/1 targets are never checked on the device
        return F.sigmoid_binary_cross_entropy(outputs, targets)

    def targets(self, y, output_shape):
        y = _dense_targets(self.name, y, output_shape)
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"y must hold values in [0, 1] for {self.name}, got values in [{y.min()}, {y.max()}]")
        return y

    def count_correct(self, outputs, targets):
        # sigmoid(z) > 0.5 exactly when the logit z > 0; a sample with K outputs counts 1/K per match
        return ((outputs > 0) == (targets > 0.5)).sum() / _per_sample(targets)


class MeanSquaredError(Loss):
    """mean((outputs − y)²); accuracy as Keras picks it: binary for one output, argmax match otherwise."""

    name = "mean_squared_error"

    def __init__(self):
        super().__init__(from_logits=False)

    def __call__(self, outputs, targets, check_labels=True):  # no labels
        return F.mean_squared_error(outputs, targets)

    def targets(self, y, output_shape):
        return _dense_targets(self.name, y, output_shape)

    def count_correct(self, outputs, targets):
        if _per_sample(targets) == 1:
            return ((outputs > 0.5) == (targets > 0.5)).sum()
        return (outputs.argmax(axis=1) == targets.argmax(axis=1)).sum()

    def get_config(self):
        return {}


def _class_count(name, output_shape) -> int:
    if len(output_shape) != 1:
        raise ValueError(f"{name} needs (N, classes) outputs, the model's output per sample is {tuple(output_shape)}")
    return output_shape[0]


def _per_sample(targets) -> int:
    return int(numpy.prod(targets.shape[1:]))


def _dense_targets(name, y, output_shape) -> numpy.ndarray:
    """float y of shape (N, *output_shape); (N,) is accepted for one output per sample. (float64 on the
    host: each batch is cast to the model's dtype as it is uploaded.)"""
    y = numpy.asarray(y, dtype=numpy.float64)
    output_shape = tuple(output_shape)
    if y.ndim == 1 and output_shape == (1,):
        y = y[:, numpy.newaxis]
    if y.shape[1:] != output_shape:
        raise ValueError(f"y must have shape (N, {', '.join(map(str, output_shape))}) for {name} to match the "
                         f"model's outputs, got shape {y.shape}")
    return y


LOSSES = {cls.name: cls for cls in (BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
                                    MeanSquaredError)}


# ---- Keras's loss functions: per-sample values on the host, and what compile(loss=function) trains with -----
_EPSILON = 1e-7  # Keras's clip of probabilities away from 0 and 1


def _probabilities(y_pred, from_logits, activation):
    y_pred = numpy.asarray(y_pred, dtype=numpy.float64)
    if not from_logits:
        return numpy.clip(y_pred, _EPSILON, 1 - _EPSILON)
    if activation == "softmax":
        shifted = numpy.exp(y_pred - y_pred.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return 1 / (1 + numpy.exp(-y_pred))


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """keras.losses.categorical_crossentropy: −Σ y_true·log(p) over the last axis, per sample (probabilities
    normalised and clipped to [1e-7, 1 − 1e-7] as Keras does)."""
    p = _probabilities(y_pred, from_logits, "softmax")
    if not from_logits:
        p = p / numpy.asarray(y_pred, dtype=numpy.float64).sum(axis=-1, keepdims=True).clip(_EPSILON)
        p = numpy.clip(p, _EPSILON, 1 - _EPSILON)
    return -(numpy.asarray(y_true, dtype=numpy.float64) * numpy.log(p)).sum(axis=-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """keras.losses.sparse_categorical_crossentropy: categorical_crossentropy against integer labels."""
    y_pred = numpy.asarray(y_pred)
    return categorical_crossentropy(to_categorical(numpy.asarray(y_true).reshape(len(y_pred), -1)[:, 0], y_pred.shape[-1]),
                                    y_pred, from_logits)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    """keras.losses.binary_crossentropy: the mean over the last axis of −(y·log p + (1 − y)·log(1 − p))."""
    p = numpy.clip(_probabilities(y_pred, from_logits, "sigmoid"), _EPSILON, 1 - _EPSILON)
    y = numpy.asarray(y_true, dtype=numpy.float64)
    return -(y * numpy.log(p) + (1 - y) * numpy.log(1 - p)).mean(axis=-1)


def mean_squared_error(y_true, y_pred):
    """keras.losses.mean_squared_error: the mean over the last axis of (y_true − y_pred)²."""
    diff = numpy.asarray(y_true, dtype=numpy.float64) - numpy.asarray(y_pred, dtype=numpy.float64)
    return (diff * diff).mean(axis=-1)


mse = mean_squared_error
_FUNCTIONS = {categorical_crossentropy: CategoricalCrossentropy, sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
              binary_crossentropy: BinaryCrossentropy, mean_squared_error: MeanSquaredError}
ALIASES = {"mse": "mean_squared_error"}


def get(identifier) -> Loss:
    """A Loss from a Keras name ('binary_crossentropy', 'categorical_crossentropy',
    'sparse_categorical_crossentropy', 'mse' / 'mean_squared_error') or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if callable(identifier) and identifier in _FUNCTIONS:  # compile(loss=keras.losses.categorical_crossentropy)
        return _FUNCTIONS[identifier]()
    if isinstance(identifier, str):
        name = ALIASES.get(identifier.lower(), identifier.lower())
        if name in LOSSES:
            return LOSSES[name]()
    raise ValueError(f"loss must be one of {', '.join(repr(n) for n in [*LOSSES, *ALIASES])} or a Loss, got {identifier!r}")


def from_config(name: str, config: dict) -> Loss:
    """Rebuild a loss saved as (name, get_config())."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](**config)


def to_categorical(x, num_classes=None):
    """Keras's to_categorical: integer class labels (any shape; a trailing axis of 1 is dropped) as one-hot
    float32 rows of num_classes (default: the largest label + 1)."""
    x = numpy.asarray(x)
    if x.size and (x.dtype.kind not in "iub" and not numpy.array_equal(x, numpy.round(x))):
        raise ValueError(f"x must hold integer class labels, got {x.dtype} values such as {x.reshape(-1)[0]!r}")
    labels = x.astype(numpy.int64)
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.size and labels.min() < 0:
        raise ValueError(f"x must hold class labels >= 0, got {int(labels.min())}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    elif not isinstance(num_classes, (int, numpy.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"x holds label {int(labels.max())}, which does not fit num_classes={num_classes}")
    one_hot = numpy.zeros((*labels.shape, num_classes), dtype=numpy.float32)
    numpy.put_along_axis(one_hot, labels[..., numpy.newaxis], 1.0, axis=-1)
    return one_hot


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.losses has no {name!r}; it has {', '.join(sorted(c.__name__ for c in LOSSES.values()))}, "
                         f"the functions {', '.join([*LOSSES, *ALIASES])}, and to_categorical")
