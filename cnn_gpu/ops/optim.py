"""Optimizer steps, SGD (with momentum, Nesterov), Adam, RMSprop and decoupled weight decay (AdamW's),
applied in place with Keras's formulas.

Contract: sgd_update(param, grad, velocity, learning_rate, momentum=0.0, nesterov=False) and
adam_update(param, grad, m, v, step, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
overwrite param and the optimizer state (velocity; m, v) and return None, as in-place updates do.
param and the state must be C-contiguous (they are written through, not copied); grad may be any
layout. velocity may be None when momentum == 0 (plain SGD keeps no state). step is Adam's 1-based
step count t. On CUDA each call is one kernel launch (kernels/optim.cu: sgd_momentum_update,
adam_update).

    SGD:  velocity = momentum * velocity - lr * grad
          param += momentum * velocity - lr * grad   if nesterov, else   param += velocity
    Adam: m += (grad - m) * (1 - beta_1);  v += (grad^2 - v) * (1 - beta_2)
          param -= (m * alpha) / (sqrt(v) + epsilon),  alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)

    RMSprop: velocity = rho * velocity + (1 - rho) * grad^2
          centered: average_grad = rho * average_grad + (1 - rho) * grad;  d = velocity - average_grad^2 + epsilon
          else d = velocity + epsilon
          increment = lr * grad / sqrt(d)
          momentum > 0: momentum_buffer = momentum * momentum_buffer + increment;  param -= momentum_buffer
          else param -= increment
    weight decay (Keras's, before an optimizer's step): param -= param * weight_decay * lr

rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, learning_rate, rho=0.9, momentum=0.0,
epsilon=1e-7): average_grad only when centered, momentum_buffer only when momentum > 0 (else None).
weight_decay_update(param, learning_rate, weight_decay). sgd_update, rmsprop_update and
weight_decay_update also take ``learning_rate_from=a`` (learning_rate then None): a one-element float32
array on param's backend holding the learning rate, read as the update runs, as adam's step_size.
Kernels: kernels/optim.cu (sgd_momentum_update, adam_update, rmsprop_update, weight_decay_update).

alpha is computed on the host in float64 (adam_step_size) and rounded once to the parameter's dtype.
Or it is given ready-made: adam_update(..., step=None, ..., step_size=a) with a a one-element float32
array on param's backend holding alpha, read when the update runs (on CUDA the kernel reads it from
device memory, so a captured CUDA graph replays one launch with each step's alpha, written there by
the host before the replay).
"""
from __future__ import annotations

import functools
import math
import operator

import numpy

from cnn_gpu.cuda.grid import grid_stride_blocks, is_aligned
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.arrays import array_module, check_same_shape, contiguous, float_operands


def adam_step_size(learning_rate: float, beta_1: float, beta_2: float, step: int) -> float:
    """alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t): Adam's bias corrections folded into one scalar."""
    return learning_rate * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)


# ---- NumPy path ----------------------------------------------------------------------------------
def _numpy_sgd_update(param, grad, velocity, learning_rate, momentum, nesterov):
    real = param.dtype.type
    lr_grad = real(learning_rate) * grad
    if velocity is None:
        param -= lr_grad
        return
    velocity *= real(momentum)
    velocity -= lr_grad
    param += (real(momentum) * velocity - lr_grad) if nesterov else velocity


def _numpy_adam_update(param, grad, m, v, alpha, beta_1, beta_2, epsilon):
    real = param.dtype.type
    m += (grad - m) * real(1.0 - beta_1)
    v += (grad * grad - v) * real(1.0 - beta_2)
    param -= (m * real(alpha)) / (numpy.sqrt(v) + real(epsilon))


def _numpy_rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, lr, rho, momentum, epsilon):
    real = param.dtype.type
    velocity *= real(rho)
    velocity += real(1.0 - rho) * (grad * grad)
    if average_grad is not None:
        average_grad *= real(rho)
        average_grad += real(1.0 - rho) * grad
        denominator = velocity - average_grad * average_grad + real(epsilon)
    else:
        denominator = velocity + real(epsilon)
    increment = (real(lr) * grad) / numpy.sqrt(denominator)
    if momentum_buffer is not None:
        momentum_buffer *= real(momentum)
        momentum_buffer += increment
        param -= momentum_buffer
    else:
        param -= increment


def _numpy_weight_decay_update(param, lr, weight_decay):
    real = param.dtype.type
    param -= (param * real(weight_decay)) * real(lr)


# ---- CUDA path -----------------------------------------------------------------------------------
# Plain SGD has no velocity buffer: the kernel takes a NULL pointer, passed by value as 8 zero bytes.
_NULL_POINTER = numpy.uint64(0)


@functools.lru_cache(maxsize=256)
def _launch_arguments(n: int, vec4: bool) -> tuple:
    """(grid, n as int64, vec4 flag as int32) of a grid-stride launch over n parameters, a float4 an item where
    every array is 16-byte aligned."""
    return (grid_stride_blocks(max(n // 4, 1), 256),), numpy.int64(n), numpy.int32(vec4)


def _cuda_launch(kernel_name, arrays, scalars):
    """One grid-stride launch of kernels/optim.cu's kernel_name over param-sized arrays (None: NULL)."""
    n = arrays[0].size
    if n:
        pointers = [_NULL_POINTER if a is None else a for a in arrays]
        grid, size, vec4 = _launch_arguments(n, is_aligned(16, *[a for a in arrays if a is not None]))
        load_kernel("optim", kernel_name)(grid, (256,), (*pointers, size, *scalars, vec4))


def _by_value_or_from(value):
    """(the float32 passed by value, the pointer read instead): a one-element device array is read as the
    kernel runs (pointer), a number is passed by value (pointer NULL)."""
    import cupy

    if isinstance(value, cupy.ndarray):
        return numpy.float32(0), value
    return numpy.float32(value), _NULL_POINTER


def _cuda_sgd_update(param, grad, velocity, learning_rate, momentum, nesterov):
    import cupy

    _cuda_launch("sgd_momentum_update", (param, contiguous(cupy, grad), velocity),
                 (*_by_value_or_from(learning_rate), numpy.float32(momentum), numpy.int32(bool(nesterov))))


def _cuda_rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, learning_rate, rho, momentum, epsilon):
    import cupy

    _cuda_launch("rmsprop_update", (param, contiguous(cupy, grad), velocity, average_grad, momentum_buffer),
                 (*_by_value_or_from(learning_rate), numpy.float32(rho), numpy.float32(momentum), numpy.float32(epsilon)))


def _cuda_weight_decay_update(param, learning_rate, weight_decay):
    _cuda_launch("weight_decay_update", (param,), (*_by_value_or_from(learning_rate), numpy.float32(weight_decay)))


def _cuda_adam_update(param, grad, m, v, alpha, beta_1, beta_2, epsilon):
    """alpha: a float (passed by value) or a one-element device array (the kernel reads it as it runs)."""
    import cupy

    alpha_value, alpha_from = (numpy.float32(0), alpha) if isinstance(alpha, cupy.ndarray) else (numpy.float32(alpha), _NULL_POINTER)
    _cuda_launch("adam_update", (param, contiguous(cupy, grad), m, v),
                 (alpha_value, alpha_from, numpy.float32(1.0 - beta_1), numpy.float32(1.0 - beta_2), numpy.float32(epsilon)))


# ---- public functions ----------------------------------------------------------------------------
def _check_in_place_operands(param, grad, **state):
    """grad and state shaped like param; param and state C-contiguous, as they are written in place."""
    check_same_shape("grad", grad, "param", param)
    for name, a in {"param": param, **state}.items():
        if a is None:
            continue
        check_same_shape(name, a, "param", param)
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (it is updated in place), got strides {a.strides} for shape {a.shape}")


def _check_learning_rate(learning_rate):
    # 0 is a rate schedules reach (CosineDecay's end); the step then still moves Adam's moments and the velocity
    if not (learning_rate >= 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate!r}")


def _check_unit_interval(name, value):
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _learning_rate(learning_rate, learning_rate_from, param, xp):
    """The learning rate as the paths take it: a float, or (learning_rate_from given, learning_rate None) a
    one-element float32 array, read on the host by the NumPy path and by the kernel on CUDA."""
    if learning_rate_from is None:
        _check_learning_rate(learning_rate)
        return learning_rate
    if learning_rate is not None:
        raise ValueError(f"learning_rate must be None when learning_rate_from is given, got {learning_rate!r}")
    array_module(param=param, learning_rate_from=learning_rate_from)  # one backend
    if learning_rate_from.dtype != numpy.float32 or learning_rate_from.size != 1:
        raise TypeError(f"learning_rate_from must be a one-element float32 array, got {learning_rate_from.dtype} "
                        f"of shape {tuple(learning_rate_from.shape)}")
    return learning_rate_from.reshape(-1)[0] if xp is numpy else learning_rate_from


def sgd_update(param, grad, velocity, learning_rate, momentum=0.0, nesterov=False, *, learning_rate_from=None):
    """One SGD step in place (param, and velocity when given); returns None. velocity may be None
    only when momentum == 0."""
    _check_unit_interval("momentum", momentum)
    if velocity is None and momentum != 0:
        raise ValueError(f"velocity is required when momentum != 0 (momentum={momentum!r})")
    xp = float_operands({}, param=param, grad=grad, velocity=velocity)
    _check_in_place_operands(param, grad, velocity=velocity)
    lr = _learning_rate(learning_rate, learning_rate_from, param, xp)
    if xp is numpy:
        _numpy_sgd_update(param, grad, velocity, lr, momentum, nesterov)
    else:
        _cuda_sgd_update(param, grad, velocity, lr, momentum, nesterov)


def rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, learning_rate, rho=0.9, momentum=0.0,
                   epsilon=1e-7, *, learning_rate_from=None):
    """One RMSprop step in place (param, velocity, and average_grad / momentum_buffer when given); returns
    None. average_grad is given exactly when centered; momentum_buffer exactly when momentum > 0."""
    _check_unit_interval("rho", rho)
    _check_unit_interval("momentum", momentum)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    if (momentum_buffer is None) != (momentum == 0):
        raise ValueError(f"momentum_buffer must be given exactly when momentum > 0 (momentum={momentum!r}, "
                         f"momentum_buffer {'None' if momentum_buffer is None else 'given'})")
    xp = float_operands({}, param=param, grad=grad, velocity=velocity, average_grad=average_grad,
                        momentum_buffer=momentum_buffer)
    _check_in_place_operands(param, grad, velocity=velocity, average_grad=average_grad, momentum_buffer=momentum_buffer)
    lr = _learning_rate(learning_rate, learning_rate_from, param, xp)
    if xp is numpy:
        _numpy_rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, lr, rho, momentum, epsilon)
    else:
        _cuda_rmsprop_update(param, grad, velocity, average_grad, momentum_buffer, lr, rho, momentum, epsilon)


def weight_decay_update(param, learning_rate, weight_decay, *, learning_rate_from=None):
    """Keras's decoupled weight decay in place: param -= param * weight_decay * lr; returns None."""
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    xp = float_operands({}, param=param)
    if not param.flags.c_contiguous:
        raise ValueError(f"param must be C-contiguous (it is updated in place), got strides {param.strides} for shape {param.shape}")
    lr = _learning_rate(learning_rate, learning_rate_from, param, xp)
    if xp is numpy:
        _numpy_weight_decay_update(param, lr, weight_decay)
    else:
        _cuda_weight_decay_update(param, lr, weight_decay)


def _check_step(step, step_size, param):
    """step an int >= 1 and step_size None, or step None and step_size a one-element float32 array."""
    if step_size is not None:
        if step is not None:
            raise ValueError(f"step must be None when step_size is given (step_size holds the step's alpha), got step={step!r}")
        array_module(param=param, step_size=step_size)  # one backend
        if step_size.dtype != numpy.float32 or step_size.size != 1:
            raise TypeError(f"step_size must be a one-element float32 array, got {step_size.dtype} of shape {tuple(step_size.shape)}")
        return
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int (the 1-based step count), got {type(step).__name__} {step!r}") from None
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based step count), got {step}")


def adam_update(param, grad, m, v, step, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, *, step_size=None):
    """One Adam step in place (param, m, v); step is the 1-based step count t. Returns None.
    step_size: instead of step (then None), a one-element float32 array holding alpha, read as the update runs."""
    _check_step(step, step_size, param)
    _check_learning_rate(learning_rate)
    _check_unit_interval("beta_1", beta_1)
    _check_unit_interval("beta_2", beta_2)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    xp = float_operands({}, param=param, grad=grad, m=m, v=v)
    _check_in_place_operands(param, grad, m=m, v=v)
    if step_size is None:
        alpha = adam_step_size(learning_rate, beta_1, beta_2, step)
    else:
        alpha = step_size.reshape(-1)[0] if xp is numpy else step_size
    if xp is numpy:
        _numpy_adam_update(param, grad, m, v, alpha, beta_1, beta_2, epsilon)
    else:
        _cuda_adam_update(param, grad, m, v, alpha, beta_1, beta_2, epsilon)
