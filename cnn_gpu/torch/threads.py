"""The NumPy path's threads beside PyTorch's CPU thread pool: BLAS's, and the numba loops'.

PyTorch's OpenMP workers spin-wait for the next parallel op after each one. NumPy's BLAS threads, started
by our NumPy path between torch ops, then compete for the cores those workers spin on: a drop-in
Linear(400, 120) forward and backward took 8.7 ms against 0.5 ms for the same NumPy products alone. So
while one of our ops runs on CPU tensors, BLAS gets the cores torch's workers leave free (the calling
thread at least): os.cpu_count() - (torch.get_num_threads() - 1), never more than it had, and never more
than torch's own thread count, which is the user's intra-op setting for these ops too (a process given
one thread, as in multi-process training, keeps to one). The limit is
set and restored around each op through the BLAS library's own set/get calls, found once by threadpoolctl
(its threadpool_limits context rescans every loaded library on each entry, ~80 µs a call against ~5 here).
The NumPy path's numba loops (im2col, col2im, the max-pool scatter, the dropout mask) run with torch's thread count
inside the op, on torch's own OpenMP threads (cnn_gpu.ops.parallel), when numba's threading layer is OpenMP.
"""
from __future__ import annotations

import functools
import importlib
import os

import numba
import torch

from cnn_gpu.ops.parallel import loop_threads, numba_threads_started


class _Blas:
    """One BLAS library's thread-count getter and setter: OpenBLAS's own functions where threadpoolctl exposes
    them (the NumPy wheels' OpenBLAS, pthreads build), threadpoolctl's methods otherwise."""

    def __init__(self, controller):
        symbol = getattr(controller, "_get_symbol", None)
        raw = (symbol is not None and controller.internal_api == "openblas"
               and getattr(controller, "threading_layer", None) == "pthreads")
        getter = symbol("openblas_get_num_threads") if raw else None
        setter = symbol("openblas_set_num_threads") if raw else None
        if getter is None or setter is None:
            getter, setter = controller.get_num_threads, controller.set_num_threads
        self.get, self.set = getter, setter


@functools.lru_cache(maxsize=None)
def _blas_libraries() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency of cnn_gpu; without it nothing is limited
        return ()
    importlib.import_module("numpy")  # its BLAS must be loaded to be found

    return tuple(_Blas(c) for c in ThreadpoolController().select(user_api="blas").lib_controllers)


@functools.lru_cache(maxsize=None)
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def numba_shares_torchs_threads() -> bool:
    """numba's threading layer is OpenMP, which in a process with PyTorch is PyTorch's own runtime (measured with the
    PyTorch wheels, whose libgomp numba's OpenMP layer binds to): its loops then run on torch's threads. TBB's or
    numba's own workqueue would be a second pool on the same cores, so the loops stay on one thread there."""
    numba_threads_started()
    return numba.threading_layer() == "omp"


@functools.lru_cache(maxsize=None)
def _counts(torch_threads: int) -> tuple:
    """(BLAS threads, loop threads) for an op run with torch's thread count."""
    blas = max(1, min(torch_threads, _cores() - torch_threads + 1))
    return blas, torch_threads if numba_shares_torchs_threads() else 1


class cpu_threads_for_numpy:
    """with cpu_threads_for_numpy(): for the duration, BLAS threads limited to the cores PyTorch's spinning workers
    leave free, and to torch's thread count; the NumPy path's numba loops run with torch's thread count, on torch's
    own threads (cnn_gpu.ops.parallel), where numba_shares_torchs_threads. A class, not a generator context: it is
    entered around every drop-in op on the CPU, where its cost counts."""
    __slots__ = ("changed", "loops")

    def __enter__(self):
        wanted, loops = _counts(torch.get_num_threads())
        self.changed = []
        for blas in _blas_libraries():
            before = blas.get()
            if before > wanted:
                blas.set(wanted)
                self.changed.append((blas, before))
        self.loops = loop_threads(loops)
        self.loops.__enter__()

    def __exit__(self, *exc):
        self.loops.__exit__(*exc)
        for blas, before in self.changed:
            blas.set(before)
