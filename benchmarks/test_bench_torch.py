"""The PyTorch drop-ins beside torch.nn: one SGD training step of LeNet-5 at batch 64, built from cnn_gpu.torch and
from torch.nn with the same weights, timed in the same process (`pytest benchmarks/test_bench_torch.py
--benchmark-only`; compare the two rows of the group). On the CPU unless the cuda backend is current, with torch's
thread count as it is (what a user's script gets); `cnn-gpu bench --ops dropins` times the same steps with one
thread each for NumPy's BLAS, numba and torch."""
from __future__ import annotations

import pytest

import cnn_gpu

torch = pytest.importorskip("torch", reason="the drop-ins need PyTorch")

from cnn_gpu.bench.cases.torch_dropins import LENET_BATCH, lenet_steps  # noqa: E402

DEVICE = "cuda" if cnn_gpu.get_backend() == "cuda" and torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def steps():
    ours, theirs, _ = lenet_steps(torch, DEVICE, LENET_BATCH)
    return {"cnn_gpu.torch": ours, "torch.nn": theirs}


@pytest.mark.parametrize("layers", ["torch.nn", "cnn_gpu.torch"])
def test_lenet_train_step(benchmark, steps, layers):
    benchmark.group = f"LeNet-5 training step N{LENET_BATCH} ({DEVICE})"
    step = steps[layers]
    for _ in range(3):  # first calls: allocation, kernel compilation
        step()

    def call():
        step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark(call)
