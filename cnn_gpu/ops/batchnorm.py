"""Batch normalisation: per-channel statistics over N (and H, W), forward and training backward.

Contract:
- ``batch_norm(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True,
  momentum=0.1, eps=1e-5) -> (y, saved_mean, saved_invstd)``: x (N, C) or (N, C, H, W); gamma, beta,
  running_mean, running_var of shape (C,) and x's dtype. gamma None means 1, beta None means 0
  (Keras's scale=False / center=False).
  training=True: normalise with the batch mean and the BIASED batch variance (needs N*H*W >= 2); if
  running_mean and running_var are given (both or neither) they are updated IN PLACE, PyTorch-style:
  running = (1 - momentum) running + momentum batch_stat, with the UNBIASED variance for running_var.
  training=False: normalise with running_mean / running_var (both required).
  y = (x - mean) * saved_invstd * gamma + beta; saved_mean is the mean used (a copy of running_mean
  in inference) and saved_invstd = 1 / sqrt(var + eps).
- ``batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd) -> (dx, dgamma, dbeta)``: the
  training-mode gradient, batch-statistics terms included (gamma None means 1):
  dbeta = sum dy, dgamma = sum dy xhat, dx = gamma invstd (dy - dbeta/M - xhat dgamma/M), M = N*H*W.
- ``batch_norm_inference_backward(dy, x, gamma, saved_mean, saved_invstd) -> (dx, dgamma, dbeta)``: the
  gradient of training=False batch_norm, whose statistics are constants: dx = gamma invstd dy, the
  parameter gradients as above. Element-wise array code, the same on both backends.
- momentum in [0, 1], eps > 0. Errors name the argument, before any work.

Kernels: kernels/batchnorm.cu. Training statistics: batchnorm_stats over grid (C, splits), then
batchnorm_stats_finalize merging the splits (skipped with one split); inference: batchnorm_inference_stats;
then batchnorm_normalize. Backward: batchnorm_bwd_reduce, batchnorm_sum_splits (skipped with one split),
batchnorm_bwd_data. Fixed-order reductions (reproducible bits on a given GPU), centred variance.
"""
from __future__ import annotations

import functools
import math

import numpy

from cnn_gpu.cuda.grid import cdiv, fast_divmod_params, grid_stride_blocks, require_int32_indexable, sm_count
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.arrays import check_same_shape, check_writable, contiguous, float_operands, nan_filled, real_number


def _values_per_channel(x) -> int:
    """M = N * H * W."""
    return x.size // x.shape[1]


def _per_channel(v, x):
    """A (C,) vector shaped to broadcast against x."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _filled_if_none(v, x, xp, fill):
    """v, or a (C,) vector of fill (gamma None means 1, beta None means 0)."""
    return xp.full((x.shape[1],), fill, dtype=x.dtype) if v is None else v


# ---- NumPy path ----------------------------------------------------------------------------------
def _numpy_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    if training:
        mean = x.mean(axis=axes)
        centred = x - _per_channel(mean, x)
        var = (centred * centred).mean(axis=axes)
        if running_mean is not None:
            m = _values_per_channel(x)
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * (var * (m / (m - 1)))
    else:
        mean, var = running_mean.copy(), running_var
    invstd = 1 / numpy.sqrt(var + eps)
    y = (x - _per_channel(mean, x)) * _per_channel(invstd * gamma, x) + _per_channel(beta, x)
    return y, mean, invstd


def _numpy_batch_norm_backward(dy, x, gamma, mean, invstd):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    m = _values_per_channel(x)
    xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dx = _per_channel(gamma * invstd, x) * (dy - _per_channel(dbeta / m, x) - xhat * _per_channel(dgamma / m, x))
    return dx, dgamma, dbeta


# ---- CUDA path -----------------------------------------------------------------------------------
REDUCE_THREADS = 256  # a reduction block: 8 warps, each reducing tiles of 256 values
ELEMENTWISE_THREADS = 256
BLOCKS_PER_SM = 4  # reduction blocks the split aims for per SM: enough loads in flight to stream from memory
MIN_CHUNK = 16384  # values a split reduces at least (64 KB); a smaller one gains less than its finalize launch costs


@functools.lru_cache(maxsize=None)
def _split_plan(channels: int, values_per_channel: int, sms: int, min_chunk: int) -> tuple[int, int]:
    """(splits, chunk) for the per-channel reductions: C * splits near BLOCKS_PER_SM blocks an SM, no chunk
    under min_chunk values, no empty split (the last one may be shorter)."""
    splits = max(1, min(cdiv(BLOCKS_PER_SM * sms, channels), values_per_channel // min_chunk))
    chunk = cdiv(values_per_channel, splits)
    return cdiv(values_per_channel, chunk), chunk


# Launch arguments are functions of x's shape (and of eps, momentum): worked out once for each, since
# host time is most of a small batch-norm call's latency.
@functools.lru_cache(maxsize=256)
def _kernel_sizes(x_shape: tuple) -> tuple:
    """(N, C, HW) as the kernels take them, once x's shape is checked to fit their 32-bit indexing."""
    require_int32_indexable("x", x_shape)
    n, c = x_shape[:2]
    return n, c, math.prod(x_shape[2:])


@functools.lru_cache(maxsize=None)
def _channel_of_args(hw: int, channels: int) -> tuple:
    """The element-wise kernels' CHANNEL_OF_PARAMS: (divisor, multiplier, shift) of hw, then of C."""
    return tuple(arg for d in (hw, channels)
                 for arg in (numpy.int32(d), *(numpy.uint32(p) for p in fast_divmod_params(d))))


@functools.lru_cache(maxsize=256)
def _elementwise_launch(n: int, c: int, hw: int) -> tuple:
    """(grid, 1 / M as float32, then the size and CHANNEL_OF_PARAMS arguments) of batchnorm_normalize and
    batchnorm_bwd_data, a grid-stride loop over x's N*C*HW elements (not empty)."""
    size = n * c * hw
    return ((grid_stride_blocks(size, ELEMENTWISE_THREADS),), numpy.float32(1.0 / (n * hw)),
            (numpy.int32(size), *_channel_of_args(hw, c)))


@functools.lru_cache(maxsize=256)
def _thread_per_item_launch(items: int) -> tuple:
    """(grid, items as int32) of the small kernels with a thread per channel (or per channel and row)."""
    return (grid_stride_blocks(items, ELEMENTWISE_THREADS),), numpy.int32(items)


@functools.lru_cache(maxsize=256)
def _reduction_launch(n: int, c: int, hw: int, sms: int, min_chunk: int) -> tuple:
    """(splits, the (N, C, HW, chunk) int32 arguments, splits as int32) of the per-channel reductions over grid
    (C, splits) and of the pass merging their splits."""
    splits, chunk = _split_plan(c, n * hw, sms, min_chunk)
    return splits, (numpy.int32(n), numpy.int32(c), numpy.int32(hw), numpy.int32(chunk)), numpy.int32(splits)


@functools.lru_cache(maxsize=64)
def _statistics_finish_args(eps: float, momentum: float, update: bool) -> tuple:
    """batchnorm_stats' and batchnorm_stats_finalize's (eps, momentum, update) arguments."""
    return numpy.float32(eps), numpy.float32(momentum), numpy.int32(update)


def _cuda_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    import cupy

    n, c, hw = _kernel_sizes(x.shape)
    x, gamma, beta = contiguous(cupy, x), contiguous(cupy, gamma), contiguous(cupy, beta)
    stats = nan_filled(cupy, (2, c))  # rows: the mean and invstd used (returned, saved for backward)
    mean, invstd = stats[0], stats[1]
    if training:
        _cuda_batch_statistics(x, n, c, hw, mean, invstd, running_mean, running_var, momentum, eps)
    else:
        grid, channels = _thread_per_item_launch(c)
        load_kernel("batchnorm", "batchnorm_inference_stats")(
            grid, (ELEMENTWISE_THREADS,),
            (contiguous(cupy, running_mean), contiguous(cupy, running_var), mean, invstd, channels, numpy.float32(eps)),
        )
    y = nan_filled(cupy, x.shape)
    if x.size:  # an empty x in inference (N or H*W zero): nothing to normalise, and no FastDivmod of 0
        grid, _, sizes = _elementwise_launch(n, c, hw)
        load_kernel("batchnorm", "batchnorm_normalize")(
            grid, (ELEMENTWISE_THREADS,), (x, mean, invstd, gamma, beta, y, *sizes))
    return y, mean, invstd


def _cuda_batch_statistics(x, n, c, hw, mean, invstd, running_mean, running_var, momentum, eps):
    """Writes the batch mean and invstd into mean / invstd, updates the running statistics when given."""
    import cupy

    splits, shape, splits_arg = _reduction_launch(n, c, hw, sm_count(), MIN_CHUNK)
    update = running_mean is not None
    # The kernels update contiguous buffers; a strided running stat gets its values copied back.
    rm = contiguous(cupy, running_mean) if update else mean  # not touched by the kernels when not update
    rv = contiguous(cupy, running_var) if update else invstd
    partials = nan_filled(cupy, (splits, 2, c)) if splits > 1 else mean  # unused with one split
    finish = _statistics_finish_args(float(eps), float(momentum), update)
    load_kernel("batchnorm", "batchnorm_stats")(
        (c, splits), (REDUCE_THREADS,), (x, partials, mean, invstd, rm, rv, *shape, *finish))
    if splits > 1:
        grid, _ = _thread_per_item_launch(c)
        load_kernel("batchnorm", "batchnorm_stats_finalize")(
            grid, (ELEMENTWISE_THREADS,), (partials, mean, invstd, rm, rv, *shape, splits_arg, *finish))
    if update and rm is not running_mean:
        running_mean[...] = rm
    if update and rv is not running_var:
        running_var[...] = rv


def _cuda_batch_norm_backward(dy, x, gamma, mean, invstd):
    import cupy

    n, c, hw = _kernel_sizes(x.shape)
    dy, x, gamma = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, gamma)
    mean, invstd = contiguous(cupy, mean), contiguous(cupy, invstd)
    splits, shape, splits_arg = _reduction_launch(n, c, hw, sm_count(), MIN_CHUNK)
    param_grads = nan_filled(cupy, (2, c))  # rows: dgamma, dbeta
    partials = nan_filled(cupy, (splits, 2, c)) if splits > 1 else param_grads
    load_kernel("batchnorm", "batchnorm_bwd_reduce")(
        (c, splits), (REDUCE_THREADS,), (dy, x, mean, invstd, partials, *shape))
    if splits > 1:
        grid, pairs = _thread_per_item_launch(2 * c)
        load_kernel("batchnorm", "batchnorm_sum_splits")(
            grid, (ELEMENTWISE_THREADS,), (partials, param_grads, pairs, splits_arg))
    dgamma, dbeta = param_grads[0], param_grads[1]
    dx = nan_filled(cupy, x.shape)
    grid, inv_m, sizes = _elementwise_launch(n, c, hw)
    load_kernel("batchnorm", "batchnorm_bwd_data")(
        grid, (ELEMENTWISE_THREADS,), (dy, x, mean, invstd, gamma, dgamma, dbeta, dx, inv_m, *sizes))
    return dx, dgamma, dbeta


def _inference_backward(xp, dy, x, gamma, mean, invstd):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * ((x - _per_channel(mean, x)) * _per_channel(invstd, x))).sum(axis=axes)
    dx = dy * _per_channel(gamma * invstd, x)
    return xp.ascontiguousarray(dx), dgamma, dbeta


# ---- argument checks -----------------------------------------------------------------------------
def _check_input_and_channels(x, **per_channel):
    """x is (N, C) or (N, C, H, W) with C >= 1; every given per-channel array is (C,)."""
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be 2-D (N, C) or 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c == 0:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    for name, v in per_channel.items():
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"{name} shape {tuple(v.shape)} must be (C,) = ({c},) for x shape {tuple(x.shape)}")


def _check_batch_statistics_defined(x):
    if _values_per_channel(x) < 2:  # the unbiased variance divides by M - 1
        raise ValueError(f"x must have more than one value per channel (N*H*W >= 2) in training, got shape {tuple(x.shape)}")


def _check_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """xp, momentum and eps as floats; every check before the running statistics are written."""
    xp = float_operands({}, ("gamma", "beta", "running_mean", "running_var"),
                        x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    _check_input_and_channels(x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    momentum = real_number("momentum", momentum, 0, 1)
    eps = real_number("eps", eps, 0, low_open=True)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (both or neither)")
    if training:
        _check_batch_statistics_defined(x)
        check_writable(running_mean=running_mean, running_var=running_var)
    elif running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    return xp, momentum, eps


# ---- public functions ----------------------------------------------------------------------------
def batch_norm(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """(y, saved_mean, saved_invstd); updates running_mean / running_var in place when training."""
    xp, momentum, eps = _check_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    gamma, beta = _filled_if_none(gamma, x, xp, 1), _filled_if_none(beta, x, xp, 0)
    if xp is numpy:
        return _numpy_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    return _cuda_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)


def batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd):
    """(dx, dgamma, dbeta) of training-mode batch_norm, from the forward's saved statistics."""
    if saved_mean is None or saved_invstd is None:
        raise ValueError("saved_mean and saved_invstd (returned by batch_norm) are required")
    xp = float_operands({}, ("gamma",), dy=dy, x=x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    _check_input_and_channels(x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    check_same_shape("dy", dy, "x", x)
    _check_batch_statistics_defined(x)
    gamma = _filled_if_none(gamma, x, xp, 1)
    if xp is numpy:
        return _numpy_batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
    return _cuda_batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)


def batch_norm_inference_backward(dy, x, gamma, saved_mean, saved_invstd):
    """(dx, dgamma, dbeta) of batch_norm with training=False, from its saved (running) statistics."""
    xp = float_operands({}, ("gamma",), dy=dy, x=x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    _check_input_and_channels(x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    check_same_shape("dy", dy, "x", x)
    gamma = _filled_if_none(gamma, x, xp, 1)
    return _inference_backward(xp, dy, x, gamma, saved_mean, saved_invstd)
