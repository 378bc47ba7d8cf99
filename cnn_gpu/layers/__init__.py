"""Keras-named layers over cnn_gpu.functional: forward(x, training), backward(dy), params / grads.

    from cnn_gpu.layers import Conv2D, MaxPooling2D, Flatten, Dense
    conv = Conv2D(32, 5, activation="relu")
    y = conv.forward(x_nchw, training=True)       # builds from x on first use
    dx = conv.backward(dy); conv.grads["kernel"]

Layers compute on NCHW; input_shape / data_format describe a model's data, channels-last by default
(see cnn_gpu.layers.base). ``from_config`` rebuilds a layer from its ``get_config()``. ``Input`` is
keras.Input: the InputLayer a Sequential model may start with.
"""
from cnn_gpu.layers.activation import ELU, Activation, LeakyReLU, ReLU, Softmax
from cnn_gpu.layers.base import Layer
from cnn_gpu.layers.conv import Conv2D, DepthwiseConv2D, SeparableConv2D
from cnn_gpu.layers.core import Dense, Dropout, Flatten, Input, InputLayer
from cnn_gpu.layers.normalization import BatchNormalization
from cnn_gpu.layers.pooling import (AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D,
                                    SumPooling2D)
from cnn_gpu.layers.reshaping import Rescaling, Reshape, ZeroPadding2D

LAYER_CLASSES = {cls.__name__: cls for cls in (
    Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout, ELU, Flatten,
    GlobalAveragePooling2D, GlobalMaxPooling2D, InputLayer, LeakyReLU, MaxPooling2D, ReLU, Rescaling, Reshape,
    SeparableConv2D, Softmax, SumPooling2D, ZeroPadding2D)}
# Keras's other names for the same layers
ALIASES = {"Convolution2D": Conv2D, "MaxPool2D": MaxPooling2D, "AvgPool2D": AveragePooling2D,
           "GlobalAvgPool2D": GlobalAveragePooling2D, "GlobalMaxPool2D": GlobalMaxPooling2D,
           "SeparableConvolution2D": SeparableConv2D}
globals().update(ALIASES)


def from_config(class_name: str, config: dict) -> Layer:
    """A layer from its class name and get_config() dict; a ValueError for an unknown class."""
    if class_name not in LAYER_CLASSES:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(LAYER_CLASSES))}")
    return LAYER_CLASSES[class_name](**config)


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.layers has no layer {name!r}; it has {', '.join(sorted([*LAYER_CLASSES, *ALIASES]))} "
                         f"and Input")


__all__ = [*sorted(LAYER_CLASSES), *sorted(ALIASES), "Input", "Layer", "from_config"]
