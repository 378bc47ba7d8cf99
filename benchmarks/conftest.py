"""pytest-benchmark tests of every op, on the current backend (`pytest benchmarks/ --benchmark-only`).

The cases are cnn_gpu.bench.cases's: the first case of each (op, variant), GPU-sized on the cuda
backend, CPU-sized on numpy. These tests time our calls only (the comparison with cuDNN / cuBLAS,
and the correctness check before timing, are `cnn-gpu bench`'s). Anything missing makes them skip
with the reason: pytest-benchmark not installed, an op that raises NotImplementedError, a row that needs an
uninstalled package (ImportError).
"""
from __future__ import annotations

import importlib.util

import pytest

import cnn_gpu

HAVE_PYTEST_BENCHMARK = importlib.util.find_spec("pytest_benchmark") is not None

if not HAVE_PYTEST_BENCHMARK:
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed (pip install pytest-benchmark)")


@pytest.fixture(scope="session")
def side():
    """Where the cases run: the current backend (CNN_GPU_BACKEND), without PyTorch (nothing to compare)."""
    from cnn_gpu.bench import Side

    return Side(cnn_gpu.get_backend(), seed=0, with_torch=False)
