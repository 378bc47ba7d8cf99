"""Inverted dropout, forward and backward, with a keep mask that NumPy and CUDA draw bit for bit alike.

Contract: dropout(x, rate, seed) -> (y, mask): mask is uint8 of x's shape (1 = kept) and
y = x * mask / (1 - rate), so the expected value of y is x. dropout_backward(dy, mask, rate) ->
dx = dy * mask / (1 - rate). rate is in [0, 1) (rate 0 keeps everything and y == x); seed is an int in
[0, 2**64), or a one-element uint64 array on x's backend holding it, read when the mask is drawn: on
CUDA the kernel reads it from device memory as it runs, so a captured CUDA graph replays one launch
with a new seed each step (written there by the host before the replay), with no host sync.

The keep decision for element i (flat C-order index) is integer arithmetic on a counter-based hash,
keep iff (hash_seed_index(seed, i) >> 8) >= round(rate * 2**24), with hash_seed_index from
kernels/common.cuh mirrored below. So a (seed, shape) pair gives the same mask on both backends and
for any launch shape, and the backward pass can replay it. The scale 1 / (1 - rate) is rounded once
to the data's dtype and multiplied in (a dropped element is x * 0, so NaN and inf still propagate,
as in PyTorch). Kernels: kernels/dropout.cu (dropout_fwd, dropout_bwd).
"""
from __future__ import annotations

import functools
import operator

import numba
import numpy

from cnn_gpu.backend import is_cuda_array
from cnn_gpu.cuda.grid import elementwise_blocks, is_aligned
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.arrays import (array_module, check_float, check_same_shape, contiguous, float_operands, nan_filled,
                                real_number)
from cnn_gpu.ops.parallel import run_loop

# The hash's top 24 bits against a 24-bit threshold: rate resolves to 2**-24 on both backends.
THRESHOLD_BITS = 24


def keep_threshold(rate: float) -> int:
    """The integer an element's 24-bit hash must reach to be kept: round(rate * 2**24)."""
    return int(round(rate * (1 << THRESHOLD_BITS)))


# ---- the hash, as kernels/common.cuh computes it ---------------------------------------------------
# uint32 arithmetic throughout; numba widens uint32 products to 64 bits, so each one is truncated back.
@numba.njit(cache=True)
def _mix32(h):
    h = numpy.uint32(h ^ (h >> numpy.uint32(16)))
    h = numpy.uint32(h * numpy.uint32(0x7FEB352D))
    h = numpy.uint32(h ^ (h >> numpy.uint32(15)))
    h = numpy.uint32(h * numpy.uint32(0x846CA68B))
    return numpy.uint32(h ^ (h >> numpy.uint32(16)))


@numba.njit(cache=True)
def _hash_seed_index(seed, index):
    low, high = numpy.uint64(0xFFFFFFFF), numpy.uint64(32)
    h = _mix32(numpy.uint32(seed & low) ^ numpy.uint32(0x9E3779B9))
    h = _mix32(h ^ numpy.uint32(seed >> high))
    h = _mix32(h ^ numpy.uint32(index & low))
    return _mix32(h ^ numpy.uint32(index >> high))


# A numba loop rather than vectorised uint32 NumPy: the hash is ~20 integer operations an element, which NumPy runs as
# ~14 passes over the array.
@numba.njit(cache=True, parallel=True)
def _fill_keep_mask(seed, threshold, mask):
    for i in numba.prange(mask.size):
        mask[i] = (_hash_seed_index(seed, numpy.uint64(i)) >> numpy.uint32(8)) >= threshold


# ---- NumPy path ----------------------------------------------------------------------------------
def numpy_keep_mask(seed: int, rate: float, shape) -> numpy.ndarray:
    """The uint8 keep mask of the given shape, exactly as dropout_fwd draws it."""
    mask = numpy.empty(shape, dtype=numpy.uint8)
    run_loop(_fill_keep_mask, numpy.uint64(seed), numpy.uint32(keep_threshold(rate)), mask.reshape(-1))
    return mask


def _numpy_scaled_by_mask(v, mask, rate):
    # v * (scale or 0): the factor is exact, so this is one rounding, as in the kernels
    factor = mask.astype(v.dtype)
    factor *= v.dtype.type(1.0 / (1.0 - rate))
    return v * factor


# ---- CUDA path -----------------------------------------------------------------------------------
THREADS = 256

# A seed given as an int goes by value with a NULL seed_from pointer (8 zero bytes); one in a device
# array goes as that pointer.
_NULL_POINTER = numpy.uint64(0)


@functools.lru_cache(maxsize=256)
def _launch_arguments(n, vec4, rate):
    """(grid, n, keep threshold, scale, vec4 flag) as the kernels take them, worked out once per size,
    alignment and rate; the scale 1 / (1 - rate) is rounded once to float32."""
    return ((elementwise_blocks(n, vec4, THREADS),), numpy.int64(n), numpy.uint32(keep_threshold(rate)),
            numpy.float32(1.0 / (1.0 - rate)), numpy.int32(vec4))


def _cuda_dropout(x, rate, seed):
    import cupy

    x = contiguous(cupy, x)
    y = nan_filled(cupy, x.shape)
    mask = nan_filled(cupy, x.shape, numpy.uint8)
    if x.size:
        grid, n, threshold, scale, vec4 = _launch_arguments(x.size, is_aligned(16, x, y) and is_aligned(4, mask), rate)
        seed_value, seed_from = (numpy.uint64(0), seed) if is_cuda_array(seed) else (numpy.uint64(seed), _NULL_POINTER)
        load_kernel("dropout", "dropout_fwd")(
            grid, (THREADS,), (x, y, mask, n, seed_value, seed_from, threshold, scale, vec4))
    return y, mask


def _cuda_dropout_backward(dy, mask, rate):
    import cupy

    dy, mask = contiguous(cupy, dy), contiguous(cupy, mask)
    dx = nan_filled(cupy, dy.shape)
    if dy.size:
        grid, n, _, scale, vec4 = _launch_arguments(dy.size, is_aligned(16, dy, dx) and is_aligned(4, mask), rate)
        load_kernel("dropout", "dropout_bwd")(grid, (THREADS,), (dy, mask, dx, n, scale, vec4))
    return dx


# ---- public functions ----------------------------------------------------------------------------
def _check_rate(rate) -> float:
    return real_number("rate", rate, 0, 1, high_open=True)


def _check_seed(seed, x):
    """An int seed in [0, 2**64), or a one-element uint64 array on x's backend (returned as they are)."""
    if isinstance(seed, numpy.ndarray) or is_cuda_array(seed):
        array_module(x=x, seed=seed)  # one backend
        if seed.dtype != numpy.uint64 or seed.size != 1:
            raise TypeError(f"seed given as an array must hold one uint64, got {seed.dtype} of shape {tuple(seed.shape)}")
        return seed
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int in [0, 2**64) or a one-element uint64 array, got "
                        f"{type(seed).__name__} {seed!r}") from None
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def dropout(x, rate, seed):
    """(y, mask): y = x * mask / (1 - rate), mask uint8 (1 = kept), drawn from (seed, flat index).
    seed: an int, or a one-element uint64 array on x's backend holding it (read when the mask is drawn)."""
    rate = _check_rate(rate)
    xp = float_operands({}, x=x)
    seed = _check_seed(seed, x)
    if xp is numpy:
        seed = int(seed.reshape(-1)[0]) if isinstance(seed, numpy.ndarray) else seed
        mask = numpy_keep_mask(seed, rate, x.shape)
        return _numpy_scaled_by_mask(x, mask, rate), mask
    return _cuda_dropout(x, rate, seed)


def dropout_backward(dy, mask, rate):
    """dx = dy * mask / (1 - rate), with the mask and rate of the forward pass."""
    rate = _check_rate(rate)
    xp = array_module(dy=dy, mask=mask)
    check_float("dy", dy, xp)
    if mask.dtype != numpy.uint8:
        raise TypeError(f"mask must be uint8 (as dropout returns it), got {mask.dtype} (shape {mask.shape})")
    check_same_shape("dy", dy, "mask", mask)
    if xp is numpy:
        return _numpy_scaled_by_mask(dy, mask, rate)
    return _cuda_dropout_backward(dy, mask, rate)
