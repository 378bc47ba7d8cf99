"""Softmax and log-softmax over the last axis, and the training losses fused with their gradients.

Contract:
- ``softmax(x)``, ``log_softmax(x)``: x of any ndim >= 1 with a non-empty last axis; computed over
  the last axis with the row maximum subtracted first, so ±1e4 logits stay finite. A NaN in a row
  makes that row NaN.
- ``softmax_cross_entropy(logits, labels, check_labels=True) -> (loss, dlogits)``: logits (N, K)
  float, labels (N,) integer class indices in [0, K), checked before any work. On CUDA that check is a
  device->host copy (the labels' min and max) and so a wait for the device: ``check_labels=False``
  skips it, for labels already checked on the host (as Sequential.fit checks its y once), which keeps
  a training step free of host syncs and capturable in a CUDA graph. Unchecked labels out of range
  make the kernel read outside the row. loss = mean_r -log softmax(logits)[r, labels[r]];
  dlogits = (softmax(logits) - onehot(labels)) / N.
- ``sigmoid_binary_cross_entropy(logits, labels) -> (loss, dlogits)``: logits any shape, labels the
  same shape: 0/1 (bool, int or float; soft targets in [0, 1] work too and are not checked).
  loss = mean of max(z, 0) - z t + log(1 + exp(-|z|)) (stable in both tails);
  dlogits = (sigmoid(z) - t) / size.
- ``mean_squared_error(pred, target) -> (loss, dpred)``: same shape and dtype (Keras's 'mse': the
  mean over every element). loss = mean (pred - target)^2; dpred = 2 (pred - target) / size.

Every loss is a 0-d array on the inputs' backend: nothing crosses to the host, so a training step
can keep it on the GPU. On CUDA each loss is one fused kernel (loss terms and gradient in one pass,
one partial sum a block) and a fixed-order sum of the partials: the loss bits are reproducible.
Kernels: kernels/softmax.cu (softmax_fwd, softmax_xent_fwd_bwd, elementwise_loss_fwd_bwd, sum_scaled).
"""
from __future__ import annotations

import functools

import numpy

from cnn_gpu.backend import to_numpy
from cnn_gpu.cuda.grid import cdiv, grid_stride_blocks
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.activation import numpy_activation
from cnn_gpu.ops.arrays import array_module, check_same_shape, contiguous, float_operands, nan_filled

# Shared with kernels/softmax.cu.
ROWS_PER_BLOCK = 8  # row kernels: one warp a row, this many warps a block
LOSS_CODES = {"sigmoid_bce": 0, "mse": 1}  # LOSS_SIGMOID_BCE, LOSS_MSE


# ---- NumPy path ----------------------------------------------------------------------------------
def _numpy_softmax(x, log):
    shifted = x - x.max(axis=-1, keepdims=True)
    e = numpy.exp(shifted)
    s = e.sum(axis=-1, keepdims=True)
    return shifted - numpy.log(s) if log else e / s


def _numpy_softmax_cross_entropy(logits, labels):
    n = logits.shape[0]
    rows = numpy.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = numpy.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    loss = numpy.mean(numpy.log(s[:, 0]) - shifted[rows, labels])
    dlogits = e / s
    dlogits[rows, labels] -= 1
    dlogits /= n
    return numpy.asarray(loss, dtype=logits.dtype), dlogits


def _numpy_elementwise_loss(loss, pred, target):
    if loss == "sigmoid_bce":
        terms = numpy.maximum(pred, 0) - pred * target + numpy.log1p(numpy.exp(-numpy.abs(pred)))
        grad = numpy_activation(pred, "sigmoid") - target
    else:
        diff = pred - target
        terms = diff * diff
        grad = 2 * diff
    return numpy.asarray(terms.mean(), dtype=pred.dtype), grad / pred.size


# ---- CUDA path -----------------------------------------------------------------------------------
def _cuda_softmax(x, log):
    import cupy

    x = contiguous(cupy, x)
    y = nan_filled(cupy, x.shape)
    k = x.shape[-1]
    rows = x.size // k
    if rows:
        load_kernel("softmax", "softmax_fwd")(
            (cdiv(rows, ROWS_PER_BLOCK),), (32 * ROWS_PER_BLOCK,),
            (x, y, numpy.int64(rows), numpy.int64(k), numpy.int32(log)),
        )
    return y


@functools.lru_cache(maxsize=256)
def _mean_of_partials_scalars(partials: int, count: int) -> tuple:
    """sum_scaled's (partials, 1 / count)."""
    return numpy.int64(partials), numpy.float32(1.0 / count)


def _cuda_mean_of_partials(block_loss, count):
    """0-d device array: sum(block_loss) / count, added in a fixed order by one block."""
    import cupy

    loss = nan_filled(cupy, ())
    partials, scale = _mean_of_partials_scalars(block_loss.size, count)
    load_kernel("softmax", "sum_scaled")((1,), (256,), (block_loss, partials, scale, loss))
    return loss


@functools.lru_cache(maxsize=256)
def _cross_entropy_launch(n: int, k: int) -> tuple:
    """(blocks, scalar arguments) of softmax_xent_fwd_bwd over n rows of k classes: one warp a row."""
    return cdiv(n, ROWS_PER_BLOCK), (numpy.int64(n), numpy.int64(k), numpy.float32(1.0 / n))


def _cuda_softmax_cross_entropy(logits, labels):
    import cupy

    logits = contiguous(cupy, logits)
    labels = contiguous(cupy, labels.astype(cupy.int64, copy=False))
    n, k = logits.shape
    dlogits = nan_filled(cupy, logits.shape)
    blocks, scalars = _cross_entropy_launch(n, k)
    block_loss = nan_filled(cupy, (blocks,))
    load_kernel("softmax", "softmax_xent_fwd_bwd")(
        (blocks,), (32 * ROWS_PER_BLOCK,), (logits, labels, dlogits, block_loss, *scalars))
    return _cuda_mean_of_partials(block_loss, n), dlogits


@functools.lru_cache(maxsize=256)
def _elementwise_loss_scalars(n: int, loss: str) -> tuple:
    """elementwise_loss_fwd_bwd's (n, 1 / n, loss code)."""
    return numpy.int64(n), numpy.float32(1.0 / n), numpy.int32(LOSS_CODES[loss])


def _cuda_elementwise_loss(loss, pred, target):
    import cupy

    pred, target = contiguous(cupy, pred), contiguous(cupy, target)
    grad = nan_filled(cupy, pred.shape)
    n = pred.size
    threads = 256
    blocks = grid_stride_blocks(n, threads)
    block_loss = nan_filled(cupy, (blocks,))
    load_kernel("softmax", "elementwise_loss_fwd_bwd")(
        (blocks,), (threads,), (pred, target, grad, block_loss, *_elementwise_loss_scalars(n, loss)))
    return _cuda_mean_of_partials(block_loss, n), grad


# ---- argument checks -----------------------------------------------------------------------------
def _check_last_axis(x):
    xp = float_operands({}, x=x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have at least 1 dimension and a non-empty last axis (the softmax axis), got shape {tuple(x.shape)}")
    return xp


def _check_class_labels(logits, labels, check_range):
    xp = array_module(logits=logits, labels=labels)
    float_operands({"logits": (2, "N, K")}, logits=logits)
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"logits must have at least one row and one class, got shape {tuple(logits.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array of class indices, got {labels.dtype} (shape {labels.shape})")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels shape {tuple(labels.shape)} must be (N,) = ({n},) for logits shape {tuple(logits.shape)}")
    if not check_range:
        return xp
    lo, hi = to_numpy(xp.stack((labels.min(), labels.max()))).tolist()  # one small copy to the host
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k}) (K = logits.shape[1]), got values from {lo} to {hi}")
    return xp


def _check_nonempty(name, a):
    if a.size == 0:
        raise ValueError(f"{name} must not be empty (the loss is a mean over its elements), got shape {tuple(a.shape)}")


# ---- public functions ----------------------------------------------------------------------------
def softmax(x):
    """exp(x - max) / sum(exp(x - max)) over the last axis."""
    xp = _check_last_axis(x)
    return _numpy_softmax(x, log=False) if xp is numpy else _cuda_softmax(x, log=False)


def log_softmax(x):
    """(x - max) - log(sum(exp(x - max))) over the last axis."""
    xp = _check_last_axis(x)
    return _numpy_softmax(x, log=True) if xp is numpy else _cuda_softmax(x, log=True)


def softmax_cross_entropy(logits, labels, check_labels=True):
    """(mean cross-entropy as a 0-d array, dlogits) for logits (N, K) and integer labels (N,).
    check_labels=False skips checking that the labels lie in [0, K) (on CUDA, a wait for the device)."""
    xp = _check_class_labels(logits, labels, check_labels)
    if xp is numpy:
        return _numpy_softmax_cross_entropy(logits, labels)
    return _cuda_softmax_cross_entropy(logits, labels)


def sigmoid_binary_cross_entropy(logits, labels):
    """(mean binary cross-entropy of sigmoid(logits) as a 0-d array, dlogits); labels of logits' shape."""
    xp = array_module(logits=logits, labels=labels)
    float_operands({}, logits=logits)
    if labels.dtype.kind not in "biuf":
        raise TypeError(f"labels must be a bool, integer or float array of 0/1 targets, got {labels.dtype} (shape {labels.shape})")
    check_same_shape("labels", labels, "logits", logits)
    _check_nonempty("logits", logits)
    targets = labels.astype(logits.dtype, copy=False)
    if xp is numpy:
        return _numpy_elementwise_loss("sigmoid_bce", logits, targets)
    return _cuda_elementwise_loss("sigmoid_bce", logits, targets)


def mean_squared_error(pred, target):
    """(mean of (pred - target)^2 as a 0-d array, dpred) for pred and target of one shape and dtype."""
    xp = float_operands({}, pred=pred, target=target)
    check_same_shape("target", target, "pred", pred)
    _check_nonempty("pred", pred)
    if xp is numpy:
        return _numpy_elementwise_loss("mse", pred, target)
    return _cuda_elementwise_loss("mse", pred, target)
