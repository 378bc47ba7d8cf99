"""One pytest-benchmark per op and variant (forward, backward, the training step), our kernels only.

GPU calls are synchronised inside the timed function, so each round is the whole call.
"""
from __future__ import annotations

import pytest

import cnn_gpu
from cnn_gpu.bench.cases import representative_cases

try:
    BACKEND = cnn_gpu.get_backend()
except RuntimeError as exc:  # CNN_GPU_BACKEND=cuda where no GPU is usable
    pytest.skip(str(exc), allow_module_level=True)

CASES = representative_cases(quick=BACKEND != "cuda")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.variant.replace(' ', '_')}" for c in CASES])
def test_op(benchmark, side, case):
    benchmark.group = case.op
    benchmark.extra_info["shape"] = case.shape
    try:
        bound = case.prepare(side)
        bound.ours()  # compile, autotune, allocate: outside the timed rounds
    except NotImplementedError as exc:
        pytest.skip(f"{case.op} {case.variant}: not implemented yet ({exc})")
    except ImportError as exc:  # a row whose reference or subject is an uninstalled package
        pytest.skip(f"{case.op} {case.variant}: {exc}")

    def call():
        bound.ours()
        side.synchronize()

    benchmark(call)
