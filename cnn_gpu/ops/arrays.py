"""Argument checks shared by every op: one array library per call, float dtype, ndim, required and
writable operands, real-number and int arguments, named errors.

Every error names the argument and its shape, and is raised before any work is done.
"""
from __future__ import annotations

import functools
import math
import os

import numpy

from cnn_gpu.backend import is_cuda_array

# Every op call runs these checks, so each has a fast yes for the common case and falls back to checking
# rule by rule (for the error that names the argument) when that yes is not plain.
_NONE_TYPE = type(None)
_MODULE_OF_TYPE = {numpy.ndarray: numpy}  # array type -> its library, learnt by _checked_array_module
_FLOAT32, _FLOAT64 = numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)
_REAL_TYPES = (int, float, numpy.integer, numpy.floating)


def array_module(optional=(), **arrays):
    """numpy or cupy, from the given (name=array) operands; None is allowed only for the names in optional
    (and skipped), a TypeError naming the operand otherwise.

    Mixed NumPy/CuPy operands, or something that is not an array at all, is a TypeError naming them.
    """
    kinds = {type(a) for a in arrays.values()}
    if _NONE_TYPE in kinds:
        kinds.discard(_NONE_TYPE)
        check_required(optional, **arrays)
    if len(kinds) == 1:  # the common case, one array type already seen: no per-operand checks
        module = _MODULE_OF_TYPE.get(kinds.pop())
        if module is not None:
            return module
    return _checked_array_module(arrays)


def check_required(optional=(), **arrays) -> None:
    """A TypeError naming the first operand that is None without being optional."""
    for name, a in arrays.items():
        if a is None and name not in optional:
            raise TypeError(f"{name} is required: a numpy.ndarray or cupy.ndarray, got None")


def _checked_array_module(arrays: dict):
    kinds = {}
    for name, a in arrays.items():
        if a is None:
            continue
        if is_cuda_array(a):
            kinds[name] = "cupy"
        elif isinstance(a, numpy.ndarray):
            kinds[name] = "numpy"
        else:
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{n} is {k}" for n, k in kinds.items())
        raise TypeError(f"operands must be all NumPy or all CuPy arrays: {listing}")
    if "cupy" in kinds.values():
        import cupy

        module = cupy
    else:
        module = numpy
    for a in arrays.values():
        if a is not None:
            _MODULE_OF_TYPE[type(a)] = module
    return module


def check_float(name: str, a, xp) -> None:
    """float32 everywhere; float64 too on NumPy (for gradient checks)."""
    allowed = (numpy.float32,) if xp is not numpy else (numpy.float32, numpy.float64)
    if a.dtype not in allowed:
        names = " or ".join(numpy.dtype(t).name for t in allowed)
        raise TypeError(f"{name} must be {names} on the {'cuda' if xp is not numpy else 'numpy'} backend, got {a.dtype} (shape {a.shape})")


def check_ndim(name: str, a, ndim: int, layout: str = "") -> None:
    if a.ndim != ndim:
        hint = f" ({layout})" if layout else ""
        raise ValueError(f"{name} must be {ndim}-D{hint}, got shape {tuple(a.shape)}")


def check_same_dtype(**arrays) -> None:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"operands must share one dtype: {listing}")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} shape {tuple(a.shape)} must equal {name_b} shape {tuple(b.shape)}")


def float_operands(layouts: dict, optional=(), **arrays):
    """The usual preamble: one array library, float dtype, one dtype, expected ndim. Returns xp.

    layouts maps an argument name to (ndim, layout text), e.g. {"x": (4, "N, C, H, W")}; optional names
    the operands that may be None (any other None is a TypeError naming it).
    """
    xp = array_module(optional, **arrays)
    if not _plainly_valid(layouts, arrays, xp):
        for name, a in arrays.items():
            if a is None:
                continue
            check_float(name, a, xp)
            if name in layouts:
                ndim, layout = layouts[name]
                check_ndim(name, a, ndim, layout)
        check_same_dtype(**arrays)
    return xp


def _plainly_valid(layouts: dict, arrays: dict, xp) -> bool:
    """float_operands' fast yes: one float dtype object (float64 on NumPy only) shared by all operands, and the
    layouts' ndims. False means "check rule by rule", not "invalid"."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        if dtype is None:
            dtype = a.dtype
        if a.dtype is not dtype or (name in layouts and a.ndim != layouts[name][0]):
            return False
    return dtype is None or dtype is _FLOAT32 or (dtype is _FLOAT64 and xp is numpy)


def check_writable(**arrays) -> None:
    """Operands an op writes in place must take writes: checked for all of them before the op writes any, so
    a refusal leaves every operand as it was (NumPy's read-only arrays; CuPy arrays are always writable)."""
    for name, a in arrays.items():
        if a is not None and not getattr(a.flags, "writeable", True):
            raise ValueError(f"{name} is read-only, but it is updated in place (shape {tuple(a.shape)})")


def real_number(name: str, value, low=None, high=None, *, low_open=False, high_open=False) -> float:
    """value as a float, or a TypeError / ValueError naming the argument: a real number (int, float or a
    NumPy integer or floating scalar, as PyTorch takes them; not a bool), finite, in [low, high] (an open
    end where low_open / high_open; None: unbounded)."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, _REAL_TYPES):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low}"
        elif high is not None:
            bounds = f" {'<' if high_open else '<='} {high}"
        else:
            bounds = ""
        raise ValueError(f"{name} must be{bounds} and finite, got {value!r}" if bounds else
                         f"{name} must be finite, got {value!r}")
    return number


def integer(name: str, value, low=None) -> int:
    """value as an int (an int or a NumPy integer, not a bool), >= low, or a TypeError / ValueError naming it."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, (int, numpy.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def contiguous(xp, a):
    """A C-contiguous version (a view when it already is): kernels take dense NCHW."""
    return a if a is None or a.flags.c_contiguous else xp.ascontiguousarray(a)


def nan_filled(xp, shape, dtype=numpy.float32):
    """Output buffer for a kernel. NaN-filled under CNN_GPU_DEBUG_FILL=1 (the tests set it) so an
    element no thread writes is caught (integer buffers: their dtype's maximum); plain ``empty`` otherwise."""
    if _debug_fill():
        fill = numpy.nan if numpy.dtype(dtype).kind == "f" else numpy.iinfo(dtype).max
        return xp.full(shape, fill, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


ALIGNMENT = 64  # bytes: a cache line, and where torch's CPU allocator starts every tensor


def aligned_empty(shape, dtype):
    """numpy.empty starting on an ALIGNMENT-byte boundary (NumPy's own arrays start on 16): where a product's operand
    starts can change a BLAS's sums (MKL's, where it splits a long sum over threads)."""
    dtype = numpy.dtype(dtype)
    size = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
    raw = numpy.empty(size + ALIGNMENT, dtype=numpy.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def aligned_copy(a):
    """A C-contiguous copy of a NumPy array, starting on an ALIGNMENT-byte boundary."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@functools.lru_cache(maxsize=None)
def _debug_fill() -> bool:
    """CNN_GPU_DEBUG_FILL, read once (at the first kernel output: tests set it before any op runs)."""
    return os.environ.get("CNN_GPU_DEBUG_FILL", "0") == "1"
