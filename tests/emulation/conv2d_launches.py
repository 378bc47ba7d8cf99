"""What the CPU emulations of kernels/conv2d.cu share (tests/test_conv_implicit_gemm_emulated.py and
tests/test_conv_grouped_implicit_gemm_emulated.py): the `planner` fixture, under which cnn_gpu's own planners plan
launches as for a small GPU without compiling anything, the emulated launch of a plan, and the emulated split sum."""
from __future__ import annotations

from types import SimpleNamespace

import numpy
import pytest

from cnn_gpu.cuda import device, grid, loader
from cnn_gpu.ops import gemm
from cnn_gpu.ops.conv import implicit_gemm as ig
from emulation import emulate

MAIN = "conv2d_main.cpp"
SMS = 8  # a small GPU, so that the planners split the tests' larger cases (not the others)
RELU = 1


@pytest.fixture
def planner(monkeypatch):
    """Plans the default variants' launches as on a GPU of SMS SMs: each launch's kernel is its name and the merged
    defines it would compile with (cnn_gpu.cuda.loader.family_defines), nothing compiled."""
    monkeypatch.setattr(device, "sm_count", lambda: SMS)
    monkeypatch.setattr(grid, "sm_count", lambda: SMS)
    monkeypatch.setattr(ig, "_kernel", lambda name, tile=ig.DEFAULT_TILE: SimpleNamespace(
        name=name, defines=loader.family_defines("conv2d", **tile.defines)))
    monkeypatch.setattr(gemm, "load_kernel", lambda family, name, **defines: SimpleNamespace(
        name=name, defines=loader.family_defines(family, **defines)))


def emulated(plan, grid_, block):
    return SimpleNamespace(kernel=plan.name, defines=plan.defines, grid=grid_, block=block)


def rel(a, ref):
    return numpy.linalg.norm(a - ref) / numpy.linalg.norm(ref)


def nans(shape):
    return numpy.full(shape, numpy.nan, numpy.float32)


def sum_splits(partials, out_shape, bias=None, pixels=1, act=0, slope=0.0):
    """implicit_gemm._sum_partials's launch of sum_splits_bias_act (cnn_gpu.ops.gemm.cuda_sum_splits), emulated."""
    rows, cols = partials.shape[0], int(numpy.prod(out_shape))
    period = 1 if bias is None else bias.size
    plan, grid_, block, scalars = gemm._sum_splits_launch.__wrapped__("conv2d", rows, cols, pixels, period, act, slope)
    return emulate.run(MAIN, emulated(plan, grid_, block), [partials, bias, nans(out_shape)], scalars, out=2)
