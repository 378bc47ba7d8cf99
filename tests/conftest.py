"""Shared fixtures: the backend parametrisation every op test uses, and the references' tolerances.

`backend` runs a test once per backend: numpy always; cuda when a device is usable, otherwise skipped
with the reason in the summary (pytest is configured with -rs). `pytest --backend=numpy|cuda` narrows
it; CNN_GPU_BACKEND=cuda does the same and makes a missing GPU an error rather than a skip.
"""
from __future__ import annotations

import os

import numpy
import pytest

import cnn_gpu

# Kernels' outputs are NaN-filled before launch during tests, so an unwritten element fails.
os.environ.setdefault("CNN_GPU_DEBUG_FILL", "1")


def pytest_addoption(parser):
    parser.addoption("--backend", choices=("numpy", "cuda"), default=None, help="run op tests on one backend only")


def _requested_backends(config):
    chosen = config.getoption("--backend") or os.environ.get("CNN_GPU_BACKEND", "").lower()
    if chosen in ("numpy", "cuda"):
        return [chosen] if chosen == "numpy" else ["numpy", "cuda"]
    return ["numpy", "cuda"]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _requested_backends(metafunc.config), indirect=True)


@pytest.fixture
def backend(request):
    """'numpy' or 'cuda'; cuda skips with the reason when no device is usable (fails if cuda was required)."""
    name = request.param
    if name == "cuda":
        usable, reason = cnn_gpu.cuda_status()
        if not usable:
            if os.environ.get("CNN_GPU_BACKEND", "").lower() == "cuda":
                pytest.fail(f"CNN_GPU_BACKEND=cuda but {reason}")
            pytest.skip(f"cuda backend: {reason}")
    return name


@pytest.fixture
def xp(backend):
    if backend == "cuda":
        import cupy

        return cupy
    return numpy


@pytest.fixture
def rng():
    """Fresh random inputs each run (never zeros); the seed is printed on failure by pytest's repr."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return numpy.random.default_rng(seed)


@pytest.fixture(autouse=True)
def numpy_unless_backend_requested(request):
    """Tests that do not ask for `backend` are NumPy-reference tests (often float64): they build their
    layers and data on NumPy whatever CNN_GPU_BACKEND says. `backend`-parametrised tests pick their own."""
    previous = cnn_gpu.get_backend()
    if "backend" not in request.fixturenames:
        cnn_gpu.set_backend("numpy")
    yield
    cnn_gpu.set_backend(previous)


@pytest.fixture
def on_backend(backend):
    """`backend` made current, so the layers and models a test builds put their arrays there (the
    autouse fixture above restores the previous backend afterwards)."""
    cnn_gpu.set_backend(backend)
    return backend


@pytest.fixture
def device(backend):
    """torch device for the backend under test: cpu for numpy, cuda for cuda (torch imported only here: it is an
    optional extra, and the tests that take this fixture importorskip it first)."""
    import torch

    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch.device("cuda" if backend == "cuda" else "cpu")


@pytest.fixture
def force():
    """force({op: variant name}) runs the rest of the test under cnn_gpu.cuda.autotune.forced (the named variants for
    those ops, the defaults for every other tuned op); a later call adds to and overrides an earlier one."""
    import contextlib

    from cnn_gpu.cuda import autotune

    choices: dict = {}
    with contextlib.ExitStack() as stack:
        def enter(more: dict) -> None:
            choices.update(more)
            stack.enter_context(autotune.forced(dict(choices)))
        yield enter
