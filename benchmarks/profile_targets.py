"""The calls Nsight Compute profiles in benchmarks/gpu_run.sh: one launch of each variant whose speed the
last run left unexplained, each forced (no autotuning under the profiler, which would replay every candidate).

    ncu --kernel-name regex:'maxpool2d|conv2d_fwd|conv2d_sum' python3 benchmarks/profile_targets.py

  - max-pool forward and backward on seed 002's pool1 (N32 C512 98², k3 s3: disjoint windows), each of their
    ways: run 6 had the forward at 78 % and both of the then backward ways at 44 % of copy bandwidth;
  - conv2d forward on seed 001's conv2 (N128, 32→64, 12², k5): the default tile unsplit, then split over its
    C·R·S (SplitPlan), with the split's sum pass: is the unsplit kernel short of blocks, as its grid suggests?
"""
from __future__ import annotations

import cupy

from cnn_gpu import functional as F
from cnn_gpu.cuda import autotune
from cnn_gpu.ops.conv import DEFAULT_TILE, SPLIT_BLOCKS_PER_SM, SplitPlan
from cnn_gpu.ops.pool import max_backward_ways, max_forward_ways, pool_geometry

random = cupy.random.RandomState(0)


def normal(*shape):
    return random.standard_normal(shape, dtype="float32")


def forcing(choice):
    """autotune.pick answering `choice` for every op until the next forcing."""
    autotune.pick = lambda family, key, candidates, launch: choice


def main() -> None:
    x = normal(32, 512, 98, 98)
    g = pool_geometry(x.shape, 3, 3, 0)
    for way in max_forward_ways(g):
        forcing(way)
        y, indices = F.max_pool2d(x, 3, 3)
    dy = normal(*y.shape)
    for way in max_backward_ways(g):
        forcing(way)
        F.max_pool2d_backward(dy, indices, x.shape, 3, 3)
    x, w, b = normal(128, 32, 12, 12), normal(64, 32, 5, 5), normal(64)
    for variant in (DEFAULT_TILE, SplitPlan(DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[-1])):
        forcing(variant)
        F.conv2d(x, w, b, activation="relu")
    cupy.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
