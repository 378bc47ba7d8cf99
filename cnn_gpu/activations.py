"""keras.activations: the activations as functions of an array, and what layers take as activation=.

    Dense(64, activation=keras.activations.gelu)     # the same as activation="gelu"
    keras.activations.swish(x)                       # x: an array in the layers' layout (any shape but softmax's (N, K))

Each is the layers' own activation (cnn_gpu.layers.activation.NamedActivation: our ops, fused epilogues
where a layer has one), with Keras's default arguments.
"""
from __future__ import annotations

from cnn_gpu.layers.activation import ACTIVATIONS, NamedActivation


def _activation(name):
    def apply(x):
        return NamedActivation(None if name == "linear" else name).apply(x)

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = f"keras.activations.{name}: the '{name}' activation of the layers, applied to x."
    return apply


NAMES = ("linear", *ACTIVATIONS[1:])
linear, relu, leaky_relu, sigmoid, tanh, elu, selu, gelu, softplus, swish, silu, softmax = map(_activation, (
    "linear", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "selu", "gelu", "softplus", "swish", "silu", "softmax"))
assert set(NAMES) == {f.__name__ for f in (linear, relu, leaky_relu, sigmoid, tanh, elu, selu, gelu, softplus, swish,
                                          silu, softmax)}


def get(identifier):
    """The function for a name (or the function itself), as keras.activations.get."""
    if callable(identifier) and getattr(identifier, "__module__", None) == __name__:
        return identifier
    if identifier is None:
        return linear
    if isinstance(identifier, str) and identifier in NAMES:
        return globals()[identifier]
    raise ValueError(f"unknown activation {identifier!r}; known: {', '.join(NAMES)}")


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.activations has no {name!r}; it has {', '.join(NAMES)}")
