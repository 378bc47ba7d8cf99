"""Metrics by Keras name: what compile(metrics=[...]) reports beside the loss, as a mean over the samples.

    model.compile(..., metrics=["accuracy", "top_k_categorical_accuracy", TopKCategoricalAccuracy(k=3)])

'accuracy' / 'acc' is Keras's pick for the loss (binary for one output or binary cross-entropy,
otherwise argmax matching); the others are named explicitly. Each metric sums its per-sample values
over a batch on the device (``batch_sum(outputs, targets, applied)``), so the model keeps running sums
and reads them once in a while, as it does the loss.

``outputs`` are what the model's last layer gave: the logits when the loss fuses the last activation
(``applied`` names that activation, 'softmax' or 'sigmoid', which the metric applies where values
matter); ``targets`` are y as the loss prepared it (class labels (N,) for one-hot or integer y, else
float rows of the outputs' shape).
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.layers.base import keras_snake_case
from cnn_gpu.ops.arrays import array_module


class Metric:
    """Base: a name (the log key) and batch_sum()."""

    def __init__(self, name=None):
        self.name = name or keras_snake_case(type(self).__name__)

    def batch_sum(self, outputs, targets, applied):  # abstract: each metric below defines it
        raise NotImplementedError(f"{type(self).__name__} does not define batch_sum")

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _labels(targets):
    """Class labels from targets as the loss prepared them (labels already, or rows whose argmax is the class)."""
    return targets if targets.ndim == 1 else targets.argmax(axis=1)


def _probabilities(outputs, applied):
    """The outputs after the activation the loss fused (probabilities), for metrics that compare values."""
    if applied == "softmax":
        return F.softmax(outputs)
    if applied == "sigmoid":
        return F.sigmoid(outputs)
    return outputs


def _dense(targets, like):
    """targets as rows of the outputs' shape: class labels become one-hot rows."""
    if targets.ndim == 1 and like.ndim == 2 and like.shape[1] > 1:
        xp = array_module(outputs=like)
        return (xp.arange(like.shape[1])[None, :] == targets[:, None]).astype(like.dtype)
    return targets.reshape(like.shape)


class LossAccuracy(Metric):
    """'accuracy' as Keras picks it for the compiled loss: the loss's own count of correct predictions."""

    def __init__(self, loss, name="accuracy"):
        super().__init__(name)
        self.loss = loss

    def batch_sum(self, outputs, targets, applied):
        return self.loss.count_correct(outputs, targets)


class CategoricalAccuracy(Metric):
    """argmax(outputs) == the class of y (one-hot rows, or labels)."""

    def batch_sum(self, outputs, targets, applied):
        return (outputs.argmax(axis=1) == _labels(targets)).sum()


class SparseCategoricalAccuracy(CategoricalAccuracy):
    """argmax(outputs) == the integer label y."""


class BinaryAccuracy(Metric):
    """(probability > threshold) == y, element by element, averaged over each sample's outputs."""

    def __init__(self, name=None, threshold=0.5):
        super().__init__(name)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)

    def batch_sum(self, outputs, targets, applied):
        predicted = _probabilities(outputs, applied) > self.threshold
        truth = _dense(targets, outputs)
        per_sample = int(numpy.prod(outputs.shape[1:]))
        return (predicted == (truth > 0.5)).sum() / per_sample

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class TopKCategoricalAccuracy(Metric):
    """The class of y is among the k largest outputs (fewer than k outputs score higher than it)."""

    def __init__(self, k=5, name=None):
        super().__init__(name)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k

    def batch_sum(self, outputs, targets, applied):
        xp = array_module(outputs=outputs)
        labels = _labels(targets)
        own = xp.take_along_axis(outputs, labels.reshape(-1, 1).astype(numpy.int64), axis=1)
        return ((outputs > own).sum(axis=1) < self.k).sum()

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """Top-k accuracy against integer labels."""


class MeanAbsoluteError(Metric):
    """mean |output − y| per sample (after the activation the loss fused)."""

    def batch_sum(self, outputs, targets, applied):
        diff = _probabilities(outputs, applied) - _dense(targets, outputs)
        return abs(diff).reshape(len(diff), -1).mean(axis=1).sum()


class MeanSquaredError(Metric):
    """mean (output − y)² per sample (after the activation the loss fused)."""

    def batch_sum(self, outputs, targets, applied):
        diff = _probabilities(outputs, applied) - _dense(targets, outputs)
        return (diff * diff).reshape(len(diff), -1).mean(axis=1).sum()


# ---- Keras's metric functions: per-sample values on the host, and what compile(metrics=[function]) reports ----
def categorical_accuracy(y_true, y_pred):
    """keras.metrics.categorical_accuracy: 1.0 where argmax(y_pred) == argmax(y_true), per sample."""
    return (numpy.argmax(y_pred, axis=-1) == numpy.argmax(y_true, axis=-1)).astype(numpy.float32)


def sparse_categorical_accuracy(y_true, y_pred):
    """keras.metrics.sparse_categorical_accuracy: 1.0 where argmax(y_pred) == the integer label."""
    y_pred = numpy.asarray(y_pred)
    labels = numpy.asarray(y_true).reshape(len(y_pred), -1)[:, 0]
    return (numpy.argmax(y_pred, axis=-1) == labels).astype(numpy.float32)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    """keras.metrics.binary_accuracy: 1.0 where (y_pred > threshold) == y_true, element by element (as Keras 3)."""
    return (numpy.asarray(y_true) == (numpy.asarray(y_pred) > threshold)).astype(numpy.float32)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    """keras.metrics.sparse_top_k_categorical_accuracy: 1.0 where fewer than k outputs beat the label's."""
    y_pred = numpy.asarray(y_pred, dtype=numpy.float64)
    labels = numpy.asarray(y_true).reshape(len(y_pred), -1)[:, 0].astype(numpy.int64)
    own = numpy.take_along_axis(y_pred, labels[:, None], axis=1)
    return ((y_pred > own).sum(axis=1) < k).astype(numpy.float32)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """keras.metrics.top_k_categorical_accuracy: the top-k test against the class of one-hot y_true."""
    return sparse_top_k_categorical_accuracy(numpy.argmax(y_true, axis=-1), y_pred, k)


METRICS = {keras_snake_case(cls.__name__): cls for cls in (
    CategoricalAccuracy, SparseCategoricalAccuracy, BinaryAccuracy, TopKCategoricalAccuracy,
    SparseTopKCategoricalAccuracy, MeanAbsoluteError, MeanSquaredError)}
ALIASES = {"mae": "mean_absolute_error", "mse": "mean_squared_error"}
_FUNCTIONS = {categorical_accuracy: CategoricalAccuracy, sparse_categorical_accuracy: SparseCategoricalAccuracy,
              binary_accuracy: BinaryAccuracy, top_k_categorical_accuracy: TopKCategoricalAccuracy,
              sparse_top_k_categorical_accuracy: SparseTopKCategoricalAccuracy}
ACCURACY_NAMES = ("accuracy", "acc")


def get(identifier, loss) -> Metric:
    """A Metric for compile: a Keras name (its log key is the name as written), a Metric instance, or one
    of this module's classes; anything else a ValueError listing the names."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier, loss)
    if callable(identifier) and identifier in _FUNCTIONS:  # compile(metrics=[keras.metrics.categorical_accuracy])
        return _FUNCTIONS[identifier]()
    if isinstance(identifier, type) and issubclass(identifier, Metric) and identifier is not Metric \
            and identifier is not LossAccuracy:
        return identifier()
    if isinstance(identifier, str):
        if identifier.lower() in ACCURACY_NAMES:
            return LossAccuracy(loss, name=identifier)
        name = ALIASES.get(identifier.lower(), identifier.lower())
        if name in METRICS:
            return METRICS[name](name=identifier)
    raise ValueError(f"unknown metric {identifier!r}; metrics may be {', '.join(map(repr, [*ACCURACY_NAMES, *METRICS, *ALIASES]))}"
                     f" or a cnn_gpu.metrics.Metric")


def serialize(metric: Metric):
    """What compile settings save: the name for a metric made from one, else class name and config."""
    if isinstance(metric, LossAccuracy):
        return metric.name
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(spec, loss) -> Metric:
    if isinstance(spec, str):
        return get(spec, loss)
    classes = {cls.__name__: cls for cls in METRICS.values()}
    if not isinstance(spec, dict) or spec.get("class_name") not in classes:
        raise ValueError(f"unknown metric {spec!r}; known: {', '.join(classes)}")
    return classes[spec["class_name"]](**spec.get("config", {}))


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.metrics has no {name!r}; it has {', '.join(sorted(c.__name__ for c in METRICS.values()))}")
