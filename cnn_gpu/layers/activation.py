"""Activations by Keras name, and the layers that only apply one: Activation, ReLU, LeakyReLU, ELU, Softmax.

NamedActivation is what Conv2D, Dense and Activation share: relu / leaky_relu / sigmoid / tanh run as
the fused epilogue of conv2d / linear (or as the element-wise op on their own), and their backward
works from the forward OUTPUT y; elu / selu / gelu / softplus / swish (silu) run after the op as
their own element-wise op, and their backward needs its INPUT z (``grad_needs_input``: the layer then
keeps z too); softmax runs after the op, over the features of (N, K) data.

``logits=True`` on these layers' forward skips the activation: a model whose loss can fuse the
last activation (softmax + cross-entropy, sigmoid + binary cross-entropy) asks for the logits, and
the following backward then takes d(loss)/d(logits).
"""
from __future__ import annotations

from dataclasses import dataclass

from cnn_gpu import functional as F
from cnn_gpu.layers.base import Layer

EPILOGUES = ("relu", "leaky_relu", "sigmoid", "tanh")  # what conv2d / linear fuse
FROM_INPUT = {"elu": (F.elu, F.elu_backward), "selu": (F.selu, F.selu_backward), "gelu": (F.gelu, F.gelu_backward),
              "softplus": (F.softplus, F.softplus_backward), "swish": (F.swish, F.swish_backward),
              "silu": (F.silu, F.silu_backward)}  # backward from the input (module docstring)
ACTIVATIONS = ("linear", *EPILOGUES, *FROM_INPUT, "softmax")
KERAS_LEAKY_RELU_SLOPE = 0.2  # keras.activations.leaky_relu's default negative_slope

_ELEMENTWISE = {"relu": (F.relu, F.relu_backward), "sigmoid": (F.sigmoid, F.sigmoid_backward),
                "tanh": (F.tanh, F.tanh_backward)}


def check_activation(name, argument="activation"):
    """The activation's canonical name (None for none / 'linear'), or a ValueError naming the argument. A
    function of cnn_gpu.activations (keras.activations.relu, ...) stands for its name."""
    if callable(name) and getattr(name, "__module__", None) == "cnn_gpu.activations":
        name = name.__name__
    if name is None or name == "linear":
        return None
    if name not in ACTIVATIONS:
        raise ValueError(f"{argument} must be one of {', '.join(ACTIVATIONS)} or None, got {name!r}")
    return name


@dataclass(frozen=True)
class NamedActivation:
    """An activation by name: what the op fuses, what runs after it, and its gradient from y."""

    name: str | None
    negative_slope: float = KERAS_LEAKY_RELU_SLOPE

    @property
    def epilogue(self):
        """The name to pass to conv2d / linear as their fused activation (None: fuse nothing)."""
        return self.name if self.name in EPILOGUES else None

    @property
    def grad_needs_input(self) -> bool:
        """Whether grad() needs the activation's input z besides its output y."""
        return self.name in FROM_INPUT

    def after_fused_op(self, y):
        """What is left to apply to the output of an op that fused ``epilogue``."""
        if self.name in FROM_INPUT:
            return self.apply(y)
        return F.softmax(y) if self.name == "softmax" else y

    def apply(self, x):
        """The whole activation on its own."""
        if self.name is None:
            return x
        if self.name in FROM_INPUT:
            return FROM_INPUT[self.name][0](x)
        if self.name == "leaky_relu":
            return F.leaky_relu(x, self.negative_slope)
        if self.name == "softmax":
            return F.softmax(x)
        return _ELEMENTWISE[self.name][0](x)

    def grad(self, dy, y, z=None):
        """d(loss)/d(input of the activation) from dy and the activation's output y (and its input z, for
        the activations that need it)."""
        if self.name is None:
            return dy
        if self.name in FROM_INPUT:
            return FROM_INPUT[self.name][1](dy, z)
        if self.name == "leaky_relu":
            return F.leaky_relu_backward(dy, y, self.negative_slope)
        if self.name == "softmax":  # J^T dy with J = diag(y) - y y^T, per row
            return y * (dy - (dy * y).sum(axis=1, keepdims=True))
        return _ELEMENTWISE[self.name][1](dy, y)


def check_softmax_input(activation: NamedActivation, per_sample_shape, layer) -> None:
    if activation.name == "softmax" and len(per_sample_shape) != 1:
        raise ValueError(f"{layer.describe()}: softmax needs (N, features) data, got per-sample shape "
                         f"{tuple(per_sample_shape)}; add a Flatten layer first")


class Activation(Layer):
    """Applies an activation by Keras name (ACTIVATIONS): Activation('relu'), Activation('gelu'), ..."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation)
        self._function = NamedActivation(self.activation)
        self._applied = self._y = self._x = None

    def output_shape_for(self, input_shape):
        check_softmax_input(self._function, input_shape, self)
        return input_shape

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        self._y = self._applied.apply(x)
        self._x = x if self._applied.grad_needs_input else None
        return self._y

    def backward(self, dy):
        y = self.saved(self._y)
        return self._applied.grad(dy, y, self._x)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation or "linear"}


class ReLU(Layer):
    """max(x, 0), or x · negative_slope below zero when negative_slope > 0 (Keras's ReLU arguments)."""

    def __init__(self, negative_slope=0.0, **kwargs):
        super().__init__(**kwargs)
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.activation = "leaky_relu" if self.negative_slope > 0 else "relu"
        self._function = NamedActivation(self.activation, self.negative_slope)
        self._y = None

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._y = self._function.apply(x)
        return self._y

    def backward(self, dy):
        return self._function.grad(dy, self.saved(self._y))

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class LeakyReLU(ReLU):
    """x if x > 0 else negative_slope · x; Keras's default slope 0.3 (``alpha`` is Keras 2's name)."""

    def __init__(self, negative_slope=0.3, alpha=None, **kwargs):
        super().__init__(negative_slope=negative_slope if alpha is None else alpha, **kwargs)


class ELU(Layer):
    """Keras's ELU layer: x if x > 0 else alpha·(exp(x) − 1), alpha=1.0."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self._x = None

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x = x
        return F.elu(x, self.alpha)

    def backward(self, dy):
        return F.elu_backward(dy, self.saved(self._x), self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class Softmax(Activation):
    """Keras's Softmax layer over the last axis of (N, features) data (a model's loss may fuse it)."""

    def __init__(self, axis=-1, **kwargs):
        if axis not in (-1, 1):
            raise ValueError(f"axis must be -1 (the features of (N, features) data), got {axis!r}")
        kwargs.pop("activation", None)
        super().__init__("softmax", **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("activation")
        return config
