"""The NumPy path's parallel loops: numba kernels (parallel=True, numba.prange), each run through run_loop.

They run on one thread, except inside loop_threads(n), which the PyTorch drop-ins enter with torch's thread count
around each op. There, with numba's OpenMP layer, the loops run on PyTorch's own OpenMP threads (numba's layer binds
to the libgomp PyTorch loaded), which spin-wait for work after each torch op: a loop takes them up at once, where a
second pool (BLAS's, Python threads) competes with them for the cores. Elsewhere the loops stay on the calling thread
because numba's OpenMP workers spin after each loop as OpenBLAS's do after each product, and two spinning pools on
the same cores slow each other (the MNIST training job took twice as long on two cores).

Each output plane or image is written by one thread in a fixed order, so results do not depend on the thread count.
"""
from __future__ import annotations

import contextvars
import functools

import numba
import numpy

_LOOP_THREADS = contextvars.ContextVar("cnn_gpu_loop_threads", default=1)


class loop_threads:
    """with loop_threads(n): the NumPy path's loops run with n threads (at most numba's NUMBA_NUM_THREADS) for the
    duration. A class, not a generator context: entered around every drop-in op, where its cost counts."""
    __slots__ = ("n", "token")

    def __init__(self, n: int):
        self.n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))

    def __enter__(self):
        self.token = _LOOP_THREADS.set(self.n)

    def __exit__(self, *exc):
        _LOOP_THREADS.reset(self.token)


def run_loop(kernel, *args):
    """kernel(*args) with the loop thread count, numba's own count for the caller's thread left as it was."""
    numba_threads_started()
    wanted, before = _LOOP_THREADS.get(), numba.get_num_threads()
    if wanted == before:
        return kernel(*args)
    numba.set_num_threads(wanted)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(before)


@numba.njit(cache=True, parallel=True)
def _touch(out):
    for i in numba.prange(out.size):
        out[i] = i


@functools.cache
def numba_threads_started() -> bool:
    """Starts numba's threading layer (a first parallel run), once, leaving the OpenMP thread counts of the calling
    thread as they were: numba's OpenMP layer sets them to its own as it starts, and where that is PyTorch's OpenMP
    runtime, the first loop undid a torch.set_num_threads(n) made before it."""
    from threadpoolctl import ThreadpoolController

    openmp = ThreadpoolController().select(user_api="openmp").lib_controllers
    before = [library.get_num_threads() for library in openmp]
    _touch(numpy.empty(1, dtype=numpy.int64))
    for library, count in zip(openmp, before):
        if library.get_num_threads() != count:
            library.set_num_threads(count)
    return True
