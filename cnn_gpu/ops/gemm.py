"""Matrix products: matmul, linear (x·Wᵀ + b with a fused activation) and linear's backward.

Contract:
  matmul(a, b) -> a @ b                                  a (M, K), b (K, N): both 2-D
  linear(x, w, b=None, activation=None, negative_slope=0.01) -> act(x @ wᵀ + b)
      x (N, in_features), w (out_features, in_features) as in PyTorch, b (out_features,) or None;
      activation None / 'relu' / 'leaky_relu' / 'sigmoid' / 'tanh', applied in the GEMM epilogue.
  linear_backward(dy, x, w) -> (dx, dw, db)              dy (N, out_features): gradient of the PRE-activation
      dx = dy @ w (N, in_features), dw = dyᵀ @ x (out_features, in_features), db = dy summed over rows.
Float32 (float64 too on NumPy), all NumPy or all CuPy; bad shapes are a ValueError naming the arguments and
their shapes, before any work. Any strides are accepted: the CUDA path reads row-major and transposed
(column-major) views in place and copies only other layouts. Empty dimensions work: a zero inner dimension
gives act(b) (zeros without b), zero rows or columns an empty result.

Kernels: kernels/gemm.cu. gemm_nn / gemm_nt / gemm_tn / gemm_tt are one tiled SGEMM reading op(A) and op(B)
as stored (x·wᵀ is nt, dy·w nn, dyᵀ·x tn), with bias + activation in the epilogue; sum_splits_bias_act
(kernels/sum_splits.cuh, compiled into gemm.cu and conv2d.cu; cuda_sum_splits here launches it for both) sums
columns in a fixed order, for db and to reduce split-K slices deterministically. Each product's tile
configuration and split-K is a variant (GemmTiles; GemmSliceTiles for cuda_gemm_k_slices) that cnn_gpu.cuda.autotune
chooses by timing on the first call of a shape (plan_gemm's heuristic choice is the default, used as is with
CNN_GPU_AUTOTUNE=0).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy

from cnn_gpu.cuda import autotune
from cnn_gpu.cuda.grid import INT32_MAX, cdiv, grid_stride_blocks, sm_count
from cnn_gpu.cuda.loader import family_defines, load_kernel
from cnn_gpu.cuda.variants import Variant, applicable, planned, register, registered
from cnn_gpu.ops import parallel
from cnn_gpu.ops.activation import activation_code, checked_slope, numpy_activation
from cnn_gpu.ops.arrays import contiguous, float_operands, nan_filled


# ---- shape checks (both paths) -------------------------------------------------------------------
def _check_linear_shapes(x, w, b=None) -> None:
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x's in_features must equal w's: x has shape {tuple(x.shape)} (N, in_features), "
                         f"w has shape {tuple(w.shape)} (out_features, in_features)")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},) to match w of shape {tuple(w.shape)}, got {tuple(b.shape)}")


# ---- NumPy path ----------------------------------------------------------------------------------
def _numpy_linear(x, w, b, activation, slope):
    y = parallel.matmul(x, w.T)
    if b is not None:
        y += b
    return numpy_activation(y, activation, slope)


def _numpy_linear_backward(dy, x, w):
    return parallel.matmul(dy, w), parallel.matmul(dy.T, x), dy.sum(axis=0)


# ---- CUDA path -----------------------------------------------------------------------------------
class _Operand(NamedTuple):
    """op(X) as the kernels read it: X's memory (element [0, 0] at array's data pointer), whether op
    transposes it, X's leading dimension in elements, and the shape of op(X)."""
    array: object
    transposed: bool
    ld: int
    rows: int
    cols: int

    @property
    def T(self) -> "_Operand":
        return _Operand(self.array, not self.transposed, self.ld, self.cols, self.rows)

    @property
    def vec4(self) -> bool:
        """float4 reads are safe: a 16-byte aligned base and rows of whole float4s."""
        return self.array.data.ptr % 16 == 0 and self.ld % 4 == 0


def _operand(cupy, a) -> _Operand:
    """a's 2-D layout for the kernels: read in place when rows or columns are unit-stride, else a copy."""
    rows, cols = a.shape
    row_stride, col_stride = a.strides
    if row_stride % a.itemsize == 0 and col_stride % a.itemsize == 0:
        row_stride, col_stride = row_stride // a.itemsize, col_stride // a.itemsize
        if col_stride == 1 or cols <= 1:  # row-major: a[r, c] at r * ld + c
            return _Operand(a, False, row_stride, rows, cols)
        if row_stride == 1 or rows <= 1:  # column-major, i.e. the row-major aᵀ: a[r, c] at c * ld + r
            return _Operand(a, True, col_stride, rows, cols)
    return _Operand(contiguous(cupy, a), False, cols, rows, cols)


class TileConfig(NamedTuple):
    """One compiled variant of the gemm kernels (kernels/gemm.cu's tile-size defines)."""
    tile_m: int
    tile_n: int
    tile_k: int
    thread_m: int
    thread_n: int
    min_blocks_per_sm: int  # __launch_bounds__ occupancy goal: caps registers at 64K / (threads · this)

    DEFINE_NAMES = ("TILE_M", "TILE_N", "TILE_K", "THREAD_M", "THREAD_N", "MIN_BLOCKS_PER_SM")  # the fields' defines

    @property
    def threads(self) -> int:
        return (self.tile_m // self.thread_m) * (self.tile_n // self.thread_n)

    @property
    def defines(self) -> dict:
        return dict(zip(self.DEFINE_NAMES, self))

    @classmethod
    def from_defines(cls, defines: dict) -> "TileConfig":
        return cls(*(defines[name] for name in cls.DEFINE_NAMES))


LARGE_TILES = TileConfig.from_defines(family_defines("gemm"))  # the family's default variant: big, square GEMMs
SKINNY_TILES = TileConfig(64, 64, 8, 8, 4, 4)    # M or N <= 64 (dense layers at small batch, class scores)
DEEP_TILES = TileConfig(128, 64, 16, 8, 4, 2)    # half the tiles' area, twice the slab: mid-sized products
SMALL_TILES = TileConfig(32, 32, 8, 4, 4, 8)     # 64 threads: more blocks for M or N <= 64
# 128 x 128 with a 16-deep slab: half the barriers and slab switches of LARGE_TILES for one block an SM
# (218 registers a thread on sm_90; at two blocks an SM it would spill)
WIDE_SLAB_TILES = TileConfig(128, 128, 16, 8, 8, 1)
TILE_CONFIGS = (LARGE_TILES, SKINNY_TILES, DEEP_TILES, SMALL_TILES, WIDE_SLAB_TILES)  # the autotuner's candidates, all tested
MIN_SLABS_PER_SPLIT = 16  # split-K slices keep at least 16·tile_k of K each, so the extra pass stays cheap
MIN_SLABS_PER_SPLIT_TUNED = 4  # the autotuner also tries slices this short (more blocks, a longer extra pass)
MAX_SPLITS = 16
MAX_GRID_Y = 65535

# A null device pointer for an absent optional kernel argument (bias).
_NULL = numpy.uint64(0)


class GemmPlan(NamedTuple):
    config: TileConfig
    splits: int
    k_per_split: int  # a multiple of config.tile_k (except cuda_gemm_k_slices' slices, which may end mid-slab)


def plan_gemm(m: int, n: int, k: int, sm_count: int, config: TileConfig | None = None,
              min_slabs_per_split: int = MIN_SLABS_PER_SPLIT) -> GemmPlan:
    """Tile config and split-K for an (m, n, k) product on a GPU with sm_count SMs. Small tiles when m or n
    is small (unless config is given); when the output tiles cannot fill the GPU once, K is split into up
    to MAX_SPLITS slices of at least min_slabs_per_split slabs each (summed by a second, fixed-order pass)."""
    if config is None:
        config = SKINNY_TILES if min(m, n) <= 64 else LARGE_TILES
    tiles = max(1, cdiv(m, config.tile_m) * cdiv(n, config.tile_n))
    resident = sm_count * config.min_blocks_per_sm
    splits = min(resident // tiles, cdiv(k, config.tile_k) // min_slabs_per_split, MAX_SPLITS)
    return _split_k(config, k, splits)


def _split_k(config: TileConfig, k: int, splits: int) -> GemmPlan:
    """K in at most `splits` slices of whole slabs, none empty."""
    slabs = cdiv(k, config.tile_k)
    slabs_per_split = max(1, cdiv(slabs, max(1, splits)))
    return GemmPlan(config, max(1, cdiv(slabs, slabs_per_split)), slabs_per_split * config.tile_k)


def gemm_plans(m: int, n: int, k: int, sm_count: int) -> list:
    """The distinct GemmPlans of the gemm op's variants that apply to an (m, n, k) product, in autotuner order,
    plan_gemm's choice first."""
    return list(_distinct_plans(m, n, k, sm_count).values())


def _distinct_plans(m: int, n: int, k: int, sm_count: int) -> dict:
    """{variant: its GemmPlan} of the gemm variants offered for an (m, n, k) product on sm_count SMs, in order: those
    whose config applies, the first of each distinct plan."""
    plans = {}
    for variant in registered("gemm"):
        if variant.config is None or _config_applies(variant.config, m, n):
            plan = variant.gemm_plan(m, n, k, sm_count)
            if plan not in plans.values():
                plans[variant] = plan
    return plans


def _config_name(config: TileConfig) -> str:
    return (f"{config.tile_m}x{config.tile_n}x{config.tile_k} tiles, {config.thread_m}x{config.thread_n} a thread, "
            f"{config.min_blocks_per_sm} blocks an SM")


def _config_applies(config: TileConfig, m: int, n: int) -> bool:
    """SMALL_TILES only when m or n <= 64; no config whose grid would be too tall."""
    return not (config is SMALL_TILES and min(m, n) > 64) and cdiv(n, config.tile_n) <= MAX_GRID_Y


@dataclass(frozen=True)
class GemmTiles(Variant):
    """A product by the gemm kernels compiled with `config` (None: plan_gemm's heuristic choice, the default), K
    unsplit (min_slabs_per_split 0) or split by plan_gemm at that slice floor. Offered where its plan differs from
    every earlier variant's (one variant per distinct plan)."""
    config: TileConfig | None
    min_slabs_per_split: int = MIN_SLABS_PER_SPLIT
    op = "gemm"
    algorithm = "tiled SGEMM"

    @property
    def name(self) -> str:
        if self.config is None:
            return "heuristic tiles and split-K"
        split = f"split-K of at least {self.min_slabs_per_split} slabs" if self.min_slabs_per_split else "no split-K"
        return f"{_config_name(self.config)}, {split}"

    def gemm_plan(self, m: int, n: int, k: int, sm_count: int) -> GemmPlan:
        if self.config is None:
            return plan_gemm(m, n, k, sm_count)
        if not self.min_slabs_per_split:
            return _split_k(self.config, k, 1)
        return plan_gemm(m, n, k, sm_count, self.config, self.min_slabs_per_split)

    def applies(self, problem: tuple) -> bool:
        _, m, n, k, _, _ = problem
        return self in _distinct_plans(m, n, k, sm_count())

    def plan(self, problem: tuple, lda: int, ldb: int, act: int, slope: float) -> tuple:
        """(kernel, grid, block, scalar arguments, GemmPlan) of the launch on the current device."""
        _, m, n, k, _, _ = problem
        return _gemm_launch(problem, lda, ldb, act, slope, self.gemm_plan(m, n, k, sm_count()))

    def launch(self, a: _Operand, b: _Operand, problem: tuple, bias, act: int, slope: float):
        import cupy

        kernel, grid, block, scalars, plan = planned(self, problem, a.ld, b.ld, act, slope)
        m, n = a.rows, b.cols
        c = nan_filled(cupy, (m, n))
        if plan.splits == 1:
            kernel(grid, block, (a.array, b.array, _NULL if bias is None else bias, c) + scalars)
            return c
        slices = nan_filled(cupy, (plan.splits, m, n))
        kernel(grid, block, (a.array, b.array, _NULL, slices) + scalars)
        return cuda_sum_splits("gemm", slices, plan.splits, m * n, c, bias, 1, act, slope)  # slices in order, then bias, act


@dataclass(frozen=True)
class GemmSliceTiles(Variant):
    """cuda_gemm_k_slices by the gemm kernels compiled with `config` (None: plan_gemm's heuristic config, the
    default); offered where the config differs from every earlier variant's. A config whose grid would be too tall
    fails its launch with a ValueError and is dropped by the autotuner."""
    config: TileConfig | None
    op = "gemm_k_slices"
    algorithm = "tiled SGEMM"

    @property
    def name(self) -> str:
        return "heuristic tiles" if self.config is None else _config_name(self.config)

    def tile_config(self, m: int, n: int, k: int, sm_count: int) -> TileConfig:
        return plan_gemm(m, n, k, sm_count).config if self.config is None else self.config

    def applies(self, problem: tuple) -> bool:
        _, m, n, k, _, _, _ = problem
        if self.config is SMALL_TILES and min(m, n) > 64:
            return False
        sms = sm_count()
        own = self.tile_config(m, n, k, sms)
        for earlier in registered("gemm_k_slices"):
            if earlier == self:
                return True
            if not (earlier.config is SMALL_TILES and min(m, n) > 64) and earlier.tile_config(m, n, k, sms) == own:
                return False
        return True

    def plan(self, problem: tuple, lda: int, ldb: int) -> tuple:
        """(kernel, grid, block, scalar arguments, GemmPlan) of the launch on the current device."""
        layout, m, n, k, slices, vec_a, vec_b = problem
        plan = GemmPlan(self.tile_config(m, n, k, sm_count()), slices, k // slices)
        return _gemm_launch((layout, m, n, k, vec_a, vec_b), lda, ldb, 0, 0.0, plan)

    def launch(self, a: _Operand, b: _Operand, problem: tuple, out):
        kernel, grid, block, scalars, _ = planned(self, problem, a.ld, b.ld)
        kernel(grid, block, (a.array, b.array, _NULL, out) + scalars)
        return out


register(GemmTiles(None), *(GemmTiles(config, min_slabs) for config in TILE_CONFIGS
                            for min_slabs in (0, MIN_SLABS_PER_SPLIT, MIN_SLABS_PER_SPLIT_TUNED)))
register(GemmSliceTiles(None), *(GemmSliceTiles(config) for config in TILE_CONFIGS))


def _cuda_gemm(a: _Operand, b: _Operand, bias, act: int, slope: float):
    """act(op(A) @ op(B) + bias) into a new dense (M, N) float32 array, with the autotuner's plan."""
    import cupy

    m, n = a.rows, b.cols
    if m == 0 or n == 0:
        return nan_filled(cupy, (m, n))
    bias = None if bias is None else contiguous(cupy, bias)
    problem = _problem(a, b)
    choice = autotune.pick("gemm", problem, lambda: applicable("gemm", problem),
                           lambda variant: variant.launch(a, b, problem, bias, act, slope))
    return choice.launch(a, b, problem, bias, act, slope)


def _problem(a: _Operand, b: _Operand) -> tuple:
    """(layout, m, n, k, vec_a, vec_b): what a product's best plan depends on (its autotuner key). The layout
    is 'nn', 'nt', 'tn' or 'tt': which of op(A), op(B) the kernel reads transposed."""
    layout = ("t" if a.transposed else "n") + ("t" if b.transposed else "n")
    return layout, a.rows, b.cols, a.cols, a.vec4, b.vec4


def _gemm_launch(problem: tuple, lda: int, ldb: int, act: int, slope: float, plan: GemmPlan) -> tuple:
    """(kernel, grid, block, scalar arguments, plan) of one gemm launch."""
    layout, m, n, k, vec_a, vec_b = problem
    config = plan.config
    grid = (cdiv(m, config.tile_m), cdiv(n, config.tile_n), plan.splits)
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"the product has {n} columns, more than the gemm kernels' grid allows ({MAX_GRID_Y * config.tile_n})")
    if min(k, plan.k_per_split) > INT32_MAX:
        raise ValueError(f"the product's inner dimension {k} is more than the gemm kernels' 32-bit slab loop allows per split")
    split = plan.splits > 1
    scalars = (numpy.int64(m), numpy.int64(n), numpy.int64(k), numpy.int64(lda), numpy.int64(ldb),
               numpy.int64(plan.k_per_split), numpy.int32(0 if split else act), numpy.float32(slope),
               numpy.int32(vec_a), numpy.int32(vec_b), numpy.int32(n % 4 == 0))
    return load_kernel("gemm", "gemm_" + layout, **config.defines), grid, (config.threads,), scalars, plan


def cuda_gemm_k_slices(a, b, slices: int, out):
    """out[z] = a[:, z·s : (z+1)·s] @ b[z·s : (z+1)·s, :] for z < slices, s = a.shape[1] // slices: a batch of
    equal-shaped products whose operands lie end to end along the inner dimension (the Winograd convolution's
    16), as ONE launch of the gemm kernels with `slices` split-K slices of s, kept apart instead of summed
    (gemm.cu: slice z covers k in [z·k_per_split, (z+1)·k_per_split) and writes C + z·M·N; a slice that ends
    inside a slab reads zeros past its end). a (M, slices·s) and b (slices·s, N) are 2-D CuPy float32 arrays,
    read in place as matmul reads them; out is a dense (slices, M, N) float32 array, returned. The tile
    configuration comes from the autotuner (family gemm)."""
    import cupy

    a, b = _operand(cupy, a), _operand(cupy, b)
    m, k, n = a.rows, a.cols, b.cols
    if k != b.rows or k % slices or tuple(out.shape) != (slices, m, n) or not out.flags.c_contiguous:
        raise ValueError(f"cuda_gemm_k_slices: {slices} slices of a {m}x{k} by {b.rows}x{n} product do not fit "
                         f"out of shape {tuple(out.shape)} (or out is not contiguous)")
    layout, _, _, _, vec_a, vec_b = _problem(a, b)
    problem = (layout, m, n, k, slices, vec_a, vec_b)
    choice = autotune.pick("gemm_k_slices", problem, lambda: applicable("gemm_k_slices", problem),
                           lambda variant: variant.launch(a, b, problem, out))
    return choice.launch(a, b, problem, out)


def cuda_sum_splits(family: str, x, rows: int, cols: int, out, bias=None, bias_stride: int = 1, act: int = 0,
                    slope: float = 0.0):
    """out[c] = act(sum over r < rows of x[r·cols + c] + bias[(c // bias_stride) % len(bias)]), each column's rows
    added in a fixed order (kernels/sum_splits.cuh's sum_splits_bias_act, as compiled into kernels/<family>.cu
    with that family's block shape), for x and out dense buffers of rows x cols and cols elements (of any
    shape: no reshaping on the way). gemm's bias is per column (bias_stride 1), conv2d's per channel of an NCHW
    output (bias_stride OH·OW)."""
    if cols == 0:
        return out
    period = 1 if bias is None else bias.size
    kernel, grid, block, scalars = _sum_splits_launch(family, rows, cols, bias_stride, period, act, slope)
    kernel(grid, block, (x, _NULL if bias is None else bias, out) + scalars)
    return out


@functools.lru_cache(maxsize=1024)
def _sum_splits_launch(family: str, rows: int, cols: int, bias_stride: int, bias_period: int, act: int,
                       slope: float) -> tuple:
    """(kernel, grid, block, scalar arguments) of sum_splits_bias_act in `family`, worked out once per shape."""
    defines = family_defines(family)
    block = (defines["SPLIT_SUM_COLUMNS"], defines["SPLIT_SUM_ROW_GROUPS"])
    scalars = (numpy.int64(rows), numpy.int64(cols), numpy.int64(bias_stride), numpy.int64(bias_period),
               numpy.int32(act), numpy.float32(slope))
    return load_kernel(family, "sum_splits_bias_act"), (grid_stride_blocks(cols, threads=block[0]),), block, scalars


def _cuda_linear_backward(dy, x, w):
    import cupy

    dy_op = _operand(cupy, dy)
    dx = _cuda_gemm(dy_op, _operand(cupy, w), None, 0, 0.0)
    dw = _cuda_gemm(dy_op.T, _operand(cupy, x), None, 0, 0.0)
    dy = contiguous(cupy, dy)
    rows, cols = dy.shape
    db = cuda_sum_splits("gemm", dy, rows, cols, nan_filled(cupy, (cols,)))
    return dx, dw, db


# ---- public functions ----------------------------------------------------------------------------
def matmul(a, b):
    """a @ b for 2-D a (M, K) and b (K, N)."""
    xp = float_operands({"a": (2, "M, K"), "b": (2, "K, N")}, a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns must equal b's rows: a has shape {tuple(a.shape)} (M, K), b has shape {tuple(b.shape)} (K, N)")
    if xp is numpy:
        return numpy.matmul(a, b)
    return _cuda_gemm(_operand(xp, a), _operand(xp, b), None, 0, 0.0)


def linear(x, w, b=None, activation=None, negative_slope=0.01):
    """act(x @ wᵀ + b): x (N, in_features), w (out_features, in_features), b (out_features,) or None."""
    act = activation_code(activation)
    negative_slope = checked_slope(negative_slope)
    xp = float_operands({"x": (2, "N, in_features"), "w": (2, "out_features, in_features"), "b": (1, "out_features")},
                        ("b",), x=x, w=w, b=b)
    _check_linear_shapes(x, w, b)
    if xp is numpy:
        return _numpy_linear(x, w, b, activation, negative_slope)
    return _cuda_gemm(_operand(xp, x), _operand(xp, w).T, b, act, negative_slope)


def linear_backward(dy, x, w):
    """(dx, dw, db) of linear, from dy, the gradient with respect to its pre-activation output."""
    xp = float_operands({"dy": (2, "N, out_features"), "x": (2, "N, in_features"), "w": (2, "out_features, in_features")},
                        dy=dy, x=x, w=w)
    _check_linear_shapes(x, w)
    expected = (x.shape[0], w.shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have shape {expected} (x's rows, w's out_features), got {tuple(dy.shape)}")
    if xp is numpy:
        return _numpy_linear_backward(dy, x, w)
    return _cuda_linear_backward(dy, x, w)
