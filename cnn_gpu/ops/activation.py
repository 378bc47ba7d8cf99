"""Element-wise activations: relu, leaky_relu, sigmoid, tanh, forward and backward.

Contract: forward(x) -> y of x's shape and dtype. backward(dy, y) -> dx takes the forward OUTPUT y
(not x), so a fused kernel (conv2d / linear with an activation epilogue) never keeps the
pre-activation. NaN propagates as in PyTorch. Kernels: kernels/activation.cu (activation_fwd,
activation_bwd); the same functions are the epilogues of conv2d and gemm (kernels/common.cuh).
"""
from __future__ import annotations

import functools

import numpy

from cnn_gpu.cuda.grid import elementwise_blocks, is_aligned
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.arrays import check_same_shape, contiguous, float_operands, nan_filled, real_number

# Codes shared with kernels/common.cuh (ACT_*).
ACTIVATION_CODES = {None: 0, "linear": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")


def activation_code(name) -> int:
    """The kernel code of an activation name (None or 'linear' means none)."""
    if name not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} or None, got {name!r}")
    return ACTIVATION_CODES[name]


# ---- NumPy path ----------------------------------------------------------------------------------
def numpy_activation(v, name, slope=0.01):
    """f(v) on NumPy; also the epilogue of the NumPy conv2d / linear. May work in place on v."""
    if name in (None, "linear"):
        return v
    if name == "relu":
        return numpy.maximum(v, 0, out=v) if v.flags.writeable else numpy.maximum(v, 0)
    if name == "leaky_relu":
        return numpy.where(v > 0, v, v * v.dtype.type(slope))
    if name == "sigmoid":
        # Stable in both tails: exp of a non-positive number only.
        e = numpy.exp(-numpy.abs(v))
        return numpy.where(v >= 0, 1 / (1 + e), e / (1 + e)).astype(v.dtype, copy=False)
    if name == "tanh":
        return numpy.tanh(v)
    raise ValueError(f"unknown activation {name!r}")


def numpy_activation_grad(dy, y, name, slope=0.01):
    """dL/dv from dL/dy and the forward output y."""
    if name in (None, "linear"):
        return dy
    if name == "relu":
        return numpy.where(y > 0, dy, dy.dtype.type(0))
    if name == "leaky_relu":
        return numpy.where(y > 0, dy, dy * dy.dtype.type(slope))
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    raise ValueError(f"unknown activation {name!r}")


# ---- CUDA path -----------------------------------------------------------------------------------
THREADS = 256


@functools.lru_cache(maxsize=256)
def _elementwise_launch(kernel_name, n, vec4, name, slope):
    """(kernel, grid, the scalar arguments after the arrays), worked out once per size and activation."""
    scalars = (numpy.int64(n), numpy.int32(activation_code(name)), numpy.float32(slope), numpy.int32(vec4))
    return load_kernel("activation", kernel_name), (elementwise_blocks(n, vec4, THREADS),), scalars


def _cuda_elementwise(kernel_name, inputs, name, slope):
    """Launch activation_fwd (inputs = x) or activation_bwd (inputs = dy, y); returns the output."""
    import cupy

    inputs = [contiguous(cupy, a) for a in inputs]
    out = nan_filled(cupy, inputs[0].shape)
    if out.size:
        kernel, grid, scalars = _elementwise_launch(kernel_name, out.size, is_aligned(16, out, *inputs), name, slope)
        kernel(grid, (THREADS,), (*inputs, out, *scalars))
    return out


def _cuda_activation(x, name, slope):
    return _cuda_elementwise("activation_fwd", [x], name, slope)


def _cuda_activation_grad(dy, y, name, slope):
    return _cuda_elementwise("activation_bwd", [dy, y], name, slope)


# ---- public functions ----------------------------------------------------------------------------
def checked_slope(slope) -> float:
    """negative_slope as a float, a finite number >= 0 (backward reads the sign of y for the sign of x, which
    needs slope >= 0); TypeError / ValueError naming it otherwise."""
    return real_number("negative_slope", slope, 0)


def _forward(name, x, slope=0.01):
    slope = checked_slope(slope)
    xp = float_operands({}, x=x)
    if xp is numpy:
        return numpy_activation(numpy.array(x, copy=True), name, slope)
    return _cuda_activation(x, name, slope)


def _backward(name, dy, y, slope=0.01):
    slope = checked_slope(slope)
    xp = float_operands({}, dy=dy, y=y)
    check_same_shape("dy", dy, "y", y)
    if xp is numpy:
        return numpy_activation_grad(dy, y, name, slope)
    return _cuda_activation_grad(dy, y, name, slope)


def relu(x):
    """max(x, 0)."""
    return _forward("relu", x)


def relu_backward(dy, y):
    return _backward("relu", dy, y)


def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x."""
    return _forward("leaky_relu", x, negative_slope)


def leaky_relu_backward(dy, y, negative_slope=0.01):
    return _backward("leaky_relu", dy, y, negative_slope)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed stably."""
    return _forward("sigmoid", x)


def sigmoid_backward(dy, y):
    return _backward("sigmoid", dy, y)


def tanh(x):
    return _forward("tanh", x)


def tanh_backward(dy, y):
    return _backward("tanh", dy, y)
