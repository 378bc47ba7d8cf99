"""Argument checks shared by every op: one array library per call, float dtype, ndim, named errors.

Every error names the argument and its shape, and is raised before any work is done.
"""
from __future__ import annotations

import functools
import os

import numpy

from cnn_gpu.backend import is_cuda_array

# Every op call runs these checks, so each has a fast yes for the common case and falls back to checking
# rule by rule (for the error that names the argument) when that yes is not plain.
_NONE_TYPE = type(None)
_MODULE_OF_TYPE = {numpy.ndarray: numpy}  # array type -> its library, learnt by _checked_array_module
_FLOAT32, _FLOAT64 = numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)


def array_module(**arrays):
    """numpy or cupy, from the given (name=array) operands; None values are skipped.

    Mixed NumPy/CuPy operands, or something that is not an array at all, is a TypeError naming them.
    """
    kinds = {type(a) for a in arrays.values()}
    kinds.discard(_NONE_TYPE)
    if len(kinds) == 1:  # the common case, one array type already seen: no per-operand checks
        module = _MODULE_OF_TYPE.get(kinds.pop())
        if module is not None:
            return module
    return _checked_array_module(arrays)


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


def float_operands(layouts: dict, **arrays):
    """The usual preamble: one array library, float dtype, one dtype, expected ndim. Returns xp.

    layouts maps an argument name to (ndim, layout text), e.g. {"x": (4, "N, C, H, W")}.
    """
    xp = array_module(**arrays)
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


@functools.lru_cache(maxsize=None)
def _debug_fill() -> bool:
    """CNN_GPU_DEBUG_FILL, read once (at the first kernel output: tests set it before any op runs)."""
    return os.environ.get("CNN_GPU_DEBUG_FILL", "0") == "1"
