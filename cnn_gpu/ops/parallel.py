"""The NumPy path's parallel work: its numba loops (parallel=True, numba.prange), each run through run_loop, and its
matrix products, each through matmul.

Both run on the calling thread (numba's loops on one thread, products by numpy.matmul), except inside
parallel_work(n, product), which the PyTorch drop-ins enter around each op with torch's thread count and torch's own
matmul. There, with numba's OpenMP layer, the loops run on PyTorch's own OpenMP threads (numba's layer binds to the
libgomp PyTorch loaded), and so do the products: the threads spin-wait for work after each torch op, and take it up
at once, where a second pool (NumPy's BLAS threads, Python threads) competes with them for the cores. Elsewhere the
loops stay on the calling thread because numba's OpenMP workers spin after each loop as OpenBLAS's do after each
product, and two spinning pools on the same cores slow each other (the MNIST training job took twice as long on two
cores).

Each loop's output plane or image is written by one thread in a fixed order, so its results do not depend on the
thread count. A product's may (a BLAS splits long sums over threads), as torch.nn's own do.
"""
from __future__ import annotations

import contextvars
import functools

import numba
import numpy

# (loop threads, product function or None for numpy.matmul)
_WORK = contextvars.ContextVar("cnn_gpu_parallel_work", default=(1, None))


class parallel_work:
    """with parallel_work(n, product=None): for the duration, the NumPy path's loops run with n threads (at most
    numba's NUMBA_NUM_THREADS), and its products as product(a, b) where given. A class, not a generator context:
    entered around every drop-in op, where its cost counts."""
    __slots__ = ("work", "token")

    def __init__(self, n: int, product=None):
        self.work = (max(1, min(n, numba.config.NUMBA_NUM_THREADS)), product)

    def __enter__(self):
        self.token = _WORK.set(self.work)

    def __exit__(self, *exc):
        _WORK.reset(self.token)


def matmul(a, b):
    """a @ b with NumPy's matmul rules (batched, broadcast): through parallel_work's product for NumPy arrays where
    one is set, else NumPy's (or CuPy's, for CuPy arrays) own."""
    product = _WORK.get()[1]
    if product is None or not isinstance(a, numpy.ndarray):
        return a @ b
    return product(a, b)


def run_loop(kernel, *args):
    """kernel(*args) with the loop thread count, numba's own count for the caller's thread left as it was."""
    numba_threads_started()
    wanted, before = _WORK.get()[0], numba.get_num_threads()
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
