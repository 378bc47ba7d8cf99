"""The NumPy path's parallel work on PyTorch's CPU threads, while a drop-in op runs.

PyTorch's OpenMP workers spin-wait for the next parallel op after each one. A second thread pool woken between torch
ops competes with them for the same cores: with NumPy's OpenBLAS threads doing the NumPy path's products, a drop-in
Linear(400, 120) forward and backward took 8.7 ms against 0.5 ms for the same products alone. So inside a drop-in op
the NumPy path runs its parallel work (cnn_gpu.ops.parallel) on torch's own threads, with torch's thread count (the
user's intra-op setting, which a process given one thread, as in multi-process training, keeps to):
- its products through torch.matmul, on zero-copy tensor views of the arrays;
- its numba loops (im2col, col2im, max pooling, the dropout mask) on torch's OpenMP threads, where numba's threading
  layer is OpenMP (numba_shares_torchs_threads), on one thread otherwise.
NumPy's BLAS is then not called inside an op (every product of the NumPy path goes through cnn_gpu.ops.parallel's
matmul), so its thread count is left as the user set it.
"""
from __future__ import annotations

import functools

import numba
import torch

from cnn_gpu.ops.arrays import ALIGNMENT
from cnn_gpu.ops.parallel import numba_threads_started, parallel_work


@functools.lru_cache(maxsize=None)
def numba_shares_torchs_threads() -> bool:
    """numba's threading layer is OpenMP, which in a process with PyTorch is PyTorch's own runtime (measured with the
    PyTorch wheels, whose libgomp numba's OpenMP layer binds to): its loops then run on torch's threads. TBB's or
    numba's own workqueue would be a second pool on the same cores, so the loops stay on one thread there."""
    numba_threads_started()
    return numba.threading_layer() == "omp"


def torch_matmul(a, b):
    """a @ b by torch.matmul on torch's threads, for NumPy arrays (a NumPy array back, over torch's result).

    Each operand starts on an ALIGNMENT-byte boundary (64, where torch's allocator starts every tensor), copied
    there where it does not: a BLAS's sums can depend on where an operand starts (MKL's do where it splits a long sum
    over threads), and a NumPy allocation's alignment varies from run to run. The product is in the operands' dtype
    under autocast too (the op's autocast rule has already made them float32)."""
    a, b = _aligned(a), _aligned(b)
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return torch.matmul(a, b).numpy()
    return torch.matmul(a, b).numpy()


def _aligned(a):
    t = torch.from_numpy(a)
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


class cpu_threads_for_numpy:
    """with cpu_threads_for_numpy(): the NumPy path's products and loops on torch's threads, with torch's thread count,
    for the duration. A class, not a generator context: it is entered around every drop-in op on the CPU, where its
    cost counts."""
    __slots__ = ("work",)

    def __enter__(self):
        loops = torch.get_num_threads() if numba_shares_torchs_threads() else 1
        self.work = parallel_work(loops, torch_matmul)
        self.work.__enter__()

    def __exit__(self, *exc):
        self.work.__exit__(*exc)
