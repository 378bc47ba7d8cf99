"""Which array library runs the ops: NumPy everywhere, CuPy (our CUDA kernels) where a GPU is usable.

The rule: ``CNN_GPU_BACKEND=numpy|cuda|auto`` (default ``auto``) picks the backend at first use;
``set_backend`` changes it later. ``auto`` means cuda when CuPy imports *and* a device answers,
else numpy, quietly. Asking for ``cuda`` explicitly where it cannot run is an error that says why.

The backend only decides where *new* data goes (``asarray``, layer parameters). Each op dispatches
on the type of the arrays it is given, so a NumPy array always runs the NumPy path.
"""
from __future__ import annotations

import functools
import os

import numpy

BACKENDS = ("numpy", "cuda")
_current: str | None = None


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import time
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, insufficient driver, no device
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "no CUDA device found"
    return True, f"{count} CUDA device(s)"


def _resolve(name: str) -> str:
    name = name.strip().lower()
    if name == "auto":
        return "cuda" if cuda_status()[0] else "numpy"
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of 'numpy', 'cuda', 'auto'; got {name!r}")
    if name == "cuda":
        usable, reason = cuda_status()
        if not usable:
            raise RuntimeError(f"the cuda backend was asked for, but it cannot run here: {reason}")
    return name


def get_backend() -> str:
    """'cuda' or 'numpy'; resolved from CNN_GPU_BACKEND on first call."""
    global _current
    if _current is None:
        _current = _resolve(os.environ.get("CNN_GPU_BACKEND", "auto"))
    return _current


def set_backend(name: str) -> str:
    """Switch to 'numpy', 'cuda' or 'auto'; returns the backend now in force."""
    global _current
    _current = _resolve(name)
    return _current


def array_module():
    """The array library of the current backend (numpy or cupy)."""
    if get_backend() == "cuda":
        import cupy

        return cupy
    return numpy


def is_cuda_array(a) -> bool:
    """True for a cupy.ndarray (checked without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


def asarray(a, dtype=None):
    """Move host (or device) data to the current backend."""
    xp = array_module()
    if xp is numpy:
        return numpy.asarray(to_numpy(a), dtype=dtype)
    return xp.asarray(a, dtype=dtype)


def to_numpy(a):
    """Bring any array (NumPy, CuPy, or anything numpy.asarray accepts) back to a NumPy array."""
    if is_cuda_array(a):
        return a.get()
    return numpy.asarray(a)
