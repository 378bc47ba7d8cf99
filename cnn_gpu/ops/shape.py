"""flatten: (N, ...) -> (N, prod(...)) as a reshape (a view when the input is contiguous: no copy)."""
from __future__ import annotations

import math

from cnn_gpu.ops.arrays import array_module


def flatten(x):
    array_module(x=x)
    if x.ndim < 1:
        raise ValueError(f"x must have a batch axis, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch has no size to infer it from


def flatten_backward(dy, x_shape):
    array_module(dy=dy)
    x_shape = tuple(int(v) for v in x_shape)
    if dy.size != _prod(x_shape):
        raise ValueError(f"dy shape {tuple(dy.shape)} has {dy.size} elements, x_shape {x_shape} needs {_prod(x_shape)}")
    return dy.reshape(x_shape)


def _prod(shape):
    size = 1
    for v in shape:
        size *= v
    return size
