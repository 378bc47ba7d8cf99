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
- momentum in [0, 1], eps > 0. Errors name the argument, before any work.

Kernels: kernels/batchnorm.cu (batchnorm_stats, batchnorm_normalize, batchnorm_bwd_reduce,
batchnorm_bwd_data): per-channel sums in a fixed order (reproducible bits), two-pass variance.
"""
from __future__ import annotations

import numpy

from cnn_gpu.ops.arrays import check_same_shape, contiguous, float_operands, nan_filled

REDUCE_THREADS_MAX = 512  # threads of a per-channel reduction block (fewer for small channels)


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
def _sizes(x):
    """(N, C, HW) as the kernels take them."""
    n, c = x.shape[:2]
    return n, c, int(numpy.prod(x.shape[2:], dtype=numpy.int64))


def _reduce_threads(values_per_channel: int) -> int:
    """A multiple of 32, enough for the channel's values and at most REDUCE_THREADS_MAX."""
    return min(REDUCE_THREADS_MAX, max(32, -(-values_per_channel // 32) * 32))


def _cuda_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    import cupy

    from cnn_gpu.cuda.launch import grid_stride_blocks, require_int32_indexable
    from cnn_gpu.cuda.loader import load_kernel

    require_int32_indexable("x", x.shape)
    x, gamma, beta = contiguous(cupy, x), contiguous(cupy, gamma), contiguous(cupy, beta)
    n, c, hw = _sizes(x)
    if training:
        mean, invstd = nan_filled(cupy, (c,)), nan_filled(cupy, (c,))
        update = running_mean is not None
        # The kernel updates contiguous buffers; a strided running stat gets its values copied back.
        rm = contiguous(cupy, running_mean) if update else mean  # unused by the kernel when not update
        rv = contiguous(cupy, running_var) if update else invstd
        load_kernel("batchnorm", "batchnorm_stats")(
            (c,), (_reduce_threads(n * hw),),
            (x, mean, invstd, rm, rv, numpy.int32(n), numpy.int32(c), numpy.int32(hw),
             numpy.float32(eps), numpy.float32(momentum), numpy.int32(update)),
        )
        if update and rm is not running_mean:
            running_mean[...] = rm
        if update and rv is not running_var:
            running_var[...] = rv
    else:  # (C,) values: plain CuPy arithmetic
        mean = running_mean.copy()
        invstd = 1 / cupy.sqrt(running_var + numpy.float32(eps))
    y = nan_filled(cupy, x.shape)
    threads = 256
    load_kernel("batchnorm", "batchnorm_normalize")(
        (grid_stride_blocks(x.size, threads),), (threads,),
        (x, mean, invstd, gamma, beta, y, numpy.int32(x.size), numpy.int32(c), numpy.int32(hw)),
    )
    return y, mean, invstd


def _cuda_batch_norm_backward(dy, x, gamma, mean, invstd):
    import cupy

    from cnn_gpu.cuda.launch import grid_stride_blocks, require_int32_indexable
    from cnn_gpu.cuda.loader import load_kernel

    require_int32_indexable("x", x.shape)
    dy, x, gamma = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, gamma)
    mean, invstd = contiguous(cupy, mean), contiguous(cupy, invstd)
    n, c, hw = _sizes(x)
    dgamma, dbeta = nan_filled(cupy, (c,)), nan_filled(cupy, (c,))
    load_kernel("batchnorm", "batchnorm_bwd_reduce")(
        (c,), (_reduce_threads(n * hw),),
        (dy, x, mean, invstd, dgamma, dbeta, numpy.int32(n), numpy.int32(c), numpy.int32(hw)),
    )
    dx = nan_filled(cupy, x.shape)
    threads = 256
    load_kernel("batchnorm", "batchnorm_bwd_data")(
        (grid_stride_blocks(x.size, threads),), (threads,),
        (dy, x, mean, invstd, gamma, dgamma, dbeta, dx, numpy.int32(x.size), numpy.int32(c), numpy.int32(hw),
         numpy.float32(1.0 / (n * hw))),
    )
    return dx, dgamma, dbeta


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
    xp = float_operands({}, x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    _check_input_and_channels(x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (both or neither)")
    if training:
        _check_batch_statistics_defined(x)
    elif running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    return xp


# ---- public functions ----------------------------------------------------------------------------
def batch_norm(x, gamma=None, beta=None, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """(y, saved_mean, saved_invstd); updates running_mean / running_var in place when training."""
    xp = _check_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    gamma, beta = _filled_if_none(gamma, x, xp, 1), _filled_if_none(beta, x, xp, 0)
    if xp is numpy:
        return _numpy_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    return _cuda_batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)


def batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd):
    """(dx, dgamma, dbeta) of training-mode batch_norm, from the forward's saved statistics."""
    if saved_mean is None or saved_invstd is None:
        raise ValueError("saved_mean and saved_invstd (returned by batch_norm) are required")
    xp = float_operands({}, dy=dy, x=x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    _check_input_and_channels(x, gamma=gamma, saved_mean=saved_mean, saved_invstd=saved_invstd)
    check_same_shape("dy", dy, "x", x)
    _check_batch_statistics_defined(x)
    gamma = _filled_if_none(gamma, x, xp, 1)
    if xp is numpy:
        return _numpy_batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
    return _cuda_batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
