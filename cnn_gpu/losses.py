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
        y = _numeric(self.name, y)
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
        y = _numeric(self.name, y)
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


def _numeric(name, y) -> numpy.ndarray:
    """y as an array of numbers (bool, integer or float), or a TypeError naming it (strings, objects)."""
    y = numpy.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold numbers for {name}, got an array of dtype {y.dtype} (shape {y.shape})")
    return y


def _per_sample(targets) -> int:
    return int(numpy.prod(targets.shape[1:]))


def _dense_targets(name, y, output_shape) -> numpy.ndarray:
    """float y of shape (N, *output_shape); (N,) is accepted for one output per sample. (float64 on the
    host: each batch is cast to the model's dtype as it is uploaded.)"""
    y = _numeric(name, y).astype(numpy.float64, copy=False)
    output_shape = tuple(output_shape)
    if y.ndim == 1 and output_shape == (1,):
        y = y[:, numpy.newaxis]
    if y.shape[1:] != output_shape:
        raise ValueError(f"y must have shape (N, {', '.join(map(str, output_shape))}) for {name} to match the "
                         f"model's outputs, got shape {y.shape}")
    return y


LOSSES = {cls.name: cls for cls in (BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
                                    MeanSquaredError)}
ALIASES = {"mse": "mean_squared_error"}


def get(identifier) -> Loss:
    """A Loss from a Keras name ('binary_crossentropy', 'categorical_crossentropy',
    'sparse_categorical_crossentropy', 'mse' / 'mean_squared_error') or an instance."""
    if isinstance(identifier, Loss):
        return identifier
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
