"""Keras-named layers over cnn_gpu.functional: forward(x, training), backward(dy), params / grads.

    from cnn_gpu.layers import Conv2D, MaxPooling2D, Flatten, Dense
    conv = Conv2D(32, 5, activation="relu")
    y = conv.forward(x_nchw, training=True)       # builds from x on first use
    dx = conv.backward(dy); conv.grads["kernel"]

Layers compute on NCHW; input_shape / data_format describe a model's data, channels-last by default
(see cnn_gpu.layers.base). ``from_config`` rebuilds a layer from its ``get_config()``.
"""
from cnn_gpu.layers.activation import Activation, LeakyReLU, ReLU
from cnn_gpu.layers.base import Layer
from cnn_gpu.layers.conv import Conv2D, DepthwiseConv2D, SeparableConv2D
from cnn_gpu.layers.core import Dense, Dropout, Flatten
from cnn_gpu.layers.normalization import BatchNormalization
from cnn_gpu.layers.pooling import AveragePooling2D, MaxPooling2D, SumPooling2D

LAYER_CLASSES = {cls.__name__: cls for cls in (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                                                DepthwiseConv2D, Dropout, Flatten, LeakyReLU, MaxPooling2D, ReLU,
                                                SeparableConv2D, SumPooling2D)}


def from_config(class_name: str, config: dict) -> Layer:
    """A layer from its class name and get_config() dict; a ValueError for an unknown class."""
    if class_name not in LAYER_CLASSES:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(LAYER_CLASSES))}")
    return LAYER_CLASSES[class_name](**config)


__all__ = ["Activation", "AveragePooling2D", "BatchNormalization", "Conv2D", "Dense", "DepthwiseConv2D", "Dropout",
           "Flatten", "Layer", "SeparableConv2D",
           "LeakyReLU", "MaxPooling2D", "ReLU", "SumPooling2D", "from_config"]
