"""NumPy's BLAS threads beside PyTorch's: placeholder."""
import contextlib


def cpu_threads_for_numpy():
    return contextlib.nullcontext()
