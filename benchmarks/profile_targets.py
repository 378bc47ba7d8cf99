"""The calls Nsight Compute profiles in benchmarks/gpu_run.sh: one launch of each variant whose speed the
last run left unexplained, each forced (no autotuning under the profiler, which would replay every candidate).

    ncu --kernel-name regex:'maxpool2d|conv2d_fwd|conv2d_sum' python3 benchmarks/profile_targets.py

  - max-pool forward and backward on the 100×100 network's pool1 (N32 C512 98², k3 s3: disjoint windows), each of
    their variants (benchmarks/NOTES.md has what the profiles showed);
  - conv2d forward on the MNIST network's conv2 (N128, 32→64, 12², k5): the default tile unsplit, then split over its
    C·R·S, with the split's sum pass: is the unsplit kernel short of blocks, as its grid suggests?
"""
from __future__ import annotations

import cupy

from cnn_gpu import functional as F
from cnn_gpu.cuda import autotune
from cnn_gpu.ops.conv import DEFAULT_TILE, SPLIT_BLOCKS_PER_SM, ImplicitGemmForward
from cnn_gpu.ops.pool import max_backward_variants, max_forward_variants, pool_geometry

random = cupy.random.RandomState(0)


def normal(*shape):
    return random.standard_normal(shape, dtype="float32")


def main() -> None:
    x = normal(32, 512, 98, 98)
    g = pool_geometry(x.shape, 3, 3, 0)
    for variant in max_forward_variants(g):
        with autotune.forced({"maxpool2d_fwd": variant}):
            y, indices = F.max_pool2d(x, 3, 3)
    dy = normal(*y.shape)
    for variant in max_backward_variants(g):
        with autotune.forced({"maxpool2d_bwd": variant}):
            F.max_pool2d_backward(dy, indices, x.shape, 3, 3)
    x, w, b = normal(128, 32, 12, 12), normal(64, 32, 5, 5), normal(64)
    for variant in (ImplicitGemmForward(DEFAULT_TILE), ImplicitGemmForward(DEFAULT_TILE, SPLIT_BLOCKS_PER_SM[-1])):
        with autotune.forced({"conv2d_fwd": variant.name}):
            F.conv2d(x, w, b, activation="relu")
    cupy.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
