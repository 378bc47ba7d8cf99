"""The implicit-GEMM convolutions of kernels/conv2d.cu: forward (conv2d_fwd_bias_act), backward-data and
backward-filter, each compiled per tile size (ConvTile), with its reduction optionally split over blocks, as
variants (ImplicitGemmForward, ImplicitGemmBackwardData, ImplicitGemmBackwardFilter); their grouped and dilated
forms (conv2d_grouped_*: GroupedImplicitGemmForward, GroupedImplicitGemmBackwardData,
GroupedImplicitGemmBackwardFilter, for the ops of cnn_gpu.ops.conv.grouped), one launch over all groups; and the
deterministic sum of split partials (sum_splits_bias_act) and bias gradient (conv2d_bwd_bias) that every split
algorithm ends with."""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy

from cnn_gpu.cuda.grid import cdiv
from cnn_gpu.cuda.loader import family_defines, load_kernel
from cnn_gpu.cuda.variants import Variant, planned
from cnn_gpu.ops.arrays import nan_filled
from cnn_gpu.ops.gemm import cuda_sum_splits
from cnn_gpu.ops.conv.problem import (ConvProblem, _Launch, _require_int32_geometry, _split_count,
                                      earlier_split_matches)


class ConvTile(NamedTuple):
    """One compiled variant of the implicit-GEMM kernels (kernels/conv2d.cu's CONV_* defines): a block
    computes a bm x bn tile of C in steps of bk, each thread a tm x tn block of it."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    DEFINE_NAMES = ("CONV_BM", "CONV_BN", "CONV_BK", "CONV_TM", "CONV_TN")  # the fields' defines

    @property
    def defines(self) -> dict:
        return dict(zip(self.DEFINE_NAMES, self))

    @classmethod
    def from_defines(cls, defines: dict) -> "ConvTile":
        return cls(*(defines[name] for name in cls.DEFINE_NAMES))


# The family's default variant (cnn_gpu.cuda.loader.FAMILY_DEFINES), so the CI compile check compiles it.
DEFAULT_TILE = ConvTile.from_defines(family_defines("conv2d"))


# The autotuner's candidates for each implicit GEMM, the default first; each has a CUDA-vs-NumPy test and
# an NVRTC no-spill check. Bigger tiles for many filters and pixels (more FMAs per shared-memory read);
# 32 x 64 for few filters (first layers' forward); 128 x 32 for backward-filter of few input channels,
# whose GEMM is only C·R·S wide (9 or 25 for a 1-channel first layer).
CONV_TILES = (DEFAULT_TILE, ConvTile(128, 64, 16, 8, 4), ConvTile(64, 128, 16, 4, 8), ConvTile(128, 128, 16, 8, 8),
              ConvTile(32, 64, 16, 4, 4), ConvTile(128, 32, 16, 8, 4))


_BIAS_THREADS = family_defines("conv2d")["BIAS_THREADS"]  # conv2d_bwd_bias's block size (the kernel's define)


@functools.lru_cache(maxsize=None)
def _kernel(name, tile: ConvTile = DEFAULT_TILE):
    """A kernel of conv2d.cu compiled with tile's sizes (the reductions ignore them: any variant serves)."""
    return load_kernel("conv2d", name, **tile.defines)


def _gemm_grid(gemm_m: int, gemm_n: int, tile: ConvTile, splits: int = 1) -> tuple:
    """Grid of an implicit GEMM whose C is gemm_m x gemm_n: x over BN-wide columns, y over BM-tall rows."""
    return (cdiv(gemm_n, tile.bn), cdiv(gemm_m, tile.bm), splits)


def _tile_name(tile: ConvTile) -> str:
    return f"{tile.bm}x{tile.bn}x{tile.bk} tile, {tile.tm}x{tile.tn} a thread"


def _split_name(blocks_per_sm: int) -> str:
    return f", split to {blocks_per_sm} blocks an SM" if blocks_per_sm else ""


class _Tiled(Variant):
    """The name and algorithm of an implicit-GEMM variant: its tile, and its split (blocks_per_sm, 0 or absent:
    unsplit)."""

    @property
    def algorithm(self) -> str:
        return "implicit GEMM, split" if getattr(self, "blocks_per_sm", 0) else "implicit GEMM"

    @property
    def name(self) -> str:
        return f"implicit GEMM {_tile_name(self.tile)}{_split_name(getattr(self, 'blocks_per_sm', 0))}"


# A split forward keeps at least this many BK-steps of the C·R·S reduction a split.
FORWARD_MIN_CHUNK_STEPS = 4


@dataclass(frozen=True)
class ImplicitGemmForward(_Tiled):
    """conv2d_fwd_bias_act compiled with `tile`: unsplit (blocks_per_sm 0), or its C·R·S reduction split into chunks of
    at least FORWARD_MIN_CHUNK_STEPS steps until the grid has blocks_per_sm blocks an SM (partials, then a
    fixed-order sum that adds the bias and applies the activation), offered where that splits at least in two."""
    tile: ConvTile
    blocks_per_sm: int = 0
    op = "conv2d_fwd"

    def split(self, problem: ConvProblem, blocks_per_sm: int | None = None) -> tuple[int, int]:
        """(splits, chunk) of the C·R·S reduction (at blocks_per_sm, default this variant's)."""
        g, K, tile = problem.g, problem.K, self.tile
        crs = g.C * g.R * g.S
        blocks = self.blocks_per_sm if blocks_per_sm is None else blocks_per_sm
        if not blocks:
            return 1, crs
        tiles = cdiv(K, tile.bm) * cdiv(g.N * g.OH * g.OW, tile.bn)
        return _split_count(crs, FORWARD_MIN_CHUNK_STEPS * tile.bk, tiles, blocks)

    def applies(self, problem: ConvProblem) -> bool:
        if not self.blocks_per_sm:
            return True
        splits = self.split(problem)[0]
        return splits > 1 and not earlier_split_matches(self, self.blocks_per_sm, lambda b: self.split(problem, b)[0])

    def plan(self, problem: ConvProblem, act: int, slope: float) -> _Launch:
        g, tile = problem.g, self.tile
        splits, chunk = self.split(problem)
        return _Launch(_kernel("conv2d_fwd_bias_act", tile), _gemm_grid(problem.K, g.N * g.OH * g.OW, tile, splits),
                       (tile.threads,), problem.args + (numpy.int32(act), numpy.float32(slope), numpy.int32(chunk)), splits)

    def launch(self, problem: ConvProblem, x, w, b, act: int, slope: float):
        import cupy

        y = nan_filled(cupy, problem.y_shape)
        return _run(planned(self, problem, act, slope), (x, w, b), y, b, problem.K, problem.g.OH * problem.g.OW, act, slope)


@dataclass(frozen=True)
class ImplicitGemmBackwardData(_Tiled):
    """conv2d_bwd_data compiled with `tile`: the implicit GEMM over dx's C × N*H*W, unsplit."""
    tile: ConvTile
    op = "conv2d_bwd_data"

    def plan(self, problem: ConvProblem) -> _Launch:
        g, tile = problem.g, self.tile
        return _Launch(_kernel("conv2d_bwd_data", tile), _gemm_grid(g.C, g.N * g.H * g.W, tile), (tile.threads,),
                       problem.args, 1)

    def launch(self, problem: ConvProblem, dy, w):
        import cupy

        return _run(planned(self, problem), (dy, w), nan_filled(cupy, problem.x_shape))


@dataclass(frozen=True)
class ImplicitGemmBackwardFilter(_Tiled):
    """conv2d_bwd_filter compiled with `tile`, its N*OH*OW reduction split until the grid has blocks_per_sm blocks an
    SM (small filters still fill the GPU): partials, then a fixed-order sum."""
    tile: ConvTile
    blocks_per_sm: int
    op = "conv2d_bwd_filter"

    def plan(self, problem: ConvProblem) -> _Launch:
        g, K, tile = problem.g, problem.K, self.tile
        crs = g.C * g.R * g.S
        tiles = cdiv(K, tile.bm) * cdiv(crs, tile.bn)
        splits, chunk = _split_count(g.N * g.OH * g.OW, 8 * tile.bk, tiles, self.blocks_per_sm)
        return _Launch(_kernel("conv2d_bwd_filter", tile), _gemm_grid(K, crs, tile, splits), (tile.threads,),
                       problem.args + (numpy.int32(chunk),), splits)

    def launch(self, problem: ConvProblem, dy, x, w_shape):
        import cupy

        return _run(planned(self, problem), (dy, x), nan_filled(cupy, w_shape))


# ---- grouped and dilated: conv2d_grouped_* (the problems of cnn_gpu.ops.conv.grouped.GroupedProblem) -------------
_MAX_GRID_Z = 65535  # CUDA's limit on gridDim.z, which enumerates (split, group)


@functools.lru_cache(maxsize=1024)
def grouped_args(problem) -> tuple:
    """The conv2d_grouped_* kernels' geometry arguments for a GroupedProblem (g, K, groups): one group's ConvShape
    (C/groups channels, K/groups filters) then dh, dw, groups, as numpy.int32s; ValueError where the 32-bit
    indexing cannot hold the problem."""
    g, K, G = problem.g, problem.K, problem.groups
    _require_int32_geometry(g, K, G)
    ints = (g.N, g.C // G, g.H, g.W, K // G, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
            g.dilation_h, g.dilation_w, G)
    return tuple(numpy.int32(v) for v in ints)


def _grouped_grid(gemm_m: int, gemm_n: int, tile: ConvTile, groups: int, splits: int = 1) -> tuple:
    """_gemm_grid with z = splits·groups (block z: split z // groups of group z % groups)."""
    if splits * groups > _MAX_GRID_Z:
        raise ValueError(f"{groups} groups x {splits} splits pass the grid's z limit of {_MAX_GRID_Z}")
    return _gemm_grid(gemm_m, gemm_n, tile, splits * groups)


class _GroupedImplicitGemm(_Tiled):
    """What the three grouped implicit GEMMs share: applicable wherever the problem's indexing and grid fit (checked
    without compiling anything)."""

    def applies(self, problem) -> bool:
        try:
            grouped_args(problem)
            self.grid(problem)
        except ValueError:
            return False
        return True

    @abc.abstractmethod
    def grid(self, problem) -> tuple:
        """The launch grid (ValueError where it would pass CUDA's limits)."""


@dataclass(frozen=True)
class GroupedImplicitGemmForward(_GroupedImplicitGemm):
    """conv2d_grouped_fwd_bias_act compiled with `tile`, all groups in one launch: unsplit (blocks_per_sm 0), or each
    group's Cg·R·S reduction split as ImplicitGemmForward splits C·R·S (partials, then the fixed-order sum that adds
    the bias and applies the activation), offered where that splits at least in two."""
    tile: ConvTile
    blocks_per_sm: int = 0
    op = "conv2d_grouped_fwd"

    def split(self, problem, blocks_per_sm: int | None = None) -> tuple[int, int]:
        """(splits, chunk) of each group's Cg·R·S reduction (at blocks_per_sm, default this variant's)."""
        g, G, tile = problem.g, problem.groups, self.tile
        crs = g.C // G * g.R * g.S
        blocks = self.blocks_per_sm if blocks_per_sm is None else blocks_per_sm
        if not blocks:
            return 1, crs
        tiles = G * cdiv(problem.K // G, tile.bm) * cdiv(g.N * g.OH * g.OW, tile.bn)
        return _split_count(crs, FORWARD_MIN_CHUNK_STEPS * tile.bk, tiles, blocks)

    def applies(self, problem) -> bool:
        if not super().applies(problem):
            return False
        if not self.blocks_per_sm:
            return True
        splits = self.split(problem)[0]
        return splits > 1 and not earlier_split_matches(self, self.blocks_per_sm, lambda b: self.split(problem, b)[0])

    def grid(self, problem) -> tuple:
        g = problem.g
        return _grouped_grid(problem.K // problem.groups, g.N * g.OH * g.OW, self.tile, problem.groups,
                             self.split(problem)[0])

    def plan(self, problem, act: int, slope: float) -> _Launch:
        args = grouped_args(problem)
        splits, chunk = self.split(problem)
        return _Launch(_kernel("conv2d_grouped_fwd_bias_act", self.tile), self.grid(problem), (self.tile.threads,),
                       args + (numpy.int32(act), numpy.float32(slope), numpy.int32(chunk)), splits)

    def launch(self, problem, x, w, b, activation, slope):
        import cupy

        from cnn_gpu.ops.activation import activation_code

        act = activation_code(activation)
        y = nan_filled(cupy, (problem.g.N, problem.K, problem.g.OH, problem.g.OW))
        return _run(planned(self, problem, act, slope), (x, w, b), y, b, problem.K, problem.g.OH * problem.g.OW, act,
                    slope)


@dataclass(frozen=True)
class GroupedImplicitGemmBackwardData(_GroupedImplicitGemm):
    """conv2d_grouped_bwd_data compiled with `tile`: each group's implicit GEMM over its Cg × N*H*W of dx, unsplit,
    all groups in one launch."""
    tile: ConvTile
    op = "conv2d_grouped_bwd_data"

    def grid(self, problem) -> tuple:
        g = problem.g
        return _grouped_grid(g.C // problem.groups, g.N * g.H * g.W, self.tile, problem.groups)

    def plan(self, problem) -> _Launch:
        args = grouped_args(problem)
        return _Launch(_kernel("conv2d_grouped_bwd_data", self.tile), self.grid(problem), (self.tile.threads,), args, 1)

    def launch(self, problem, dy, x, w):
        import cupy

        return _run(planned(self, problem), (dy, w), nan_filled(cupy, problem.g.input_shape))


@dataclass(frozen=True)
class GroupedImplicitGemmBackwardFilter(_GroupedImplicitGemm):
    """conv2d_grouped_bwd_filter compiled with `tile`, all groups in one launch, each group's N*OH*OW reduction split
    as ImplicitGemmBackwardFilter splits it (partials, then a fixed-order sum). Its launch gives (dw, None): db is
    the op's own reduction."""
    tile: ConvTile
    blocks_per_sm: int
    op = "conv2d_grouped_bwd_filter"

    def split(self, problem) -> tuple[int, int]:
        """(splits, chunk) of each group's N·OH·OW reduction."""
        g, G, tile = problem.g, problem.groups, self.tile
        tiles = G * cdiv(problem.K // G, tile.bm) * cdiv(g.C // G * g.R * g.S, tile.bn)
        return _split_count(g.N * g.OH * g.OW, 8 * tile.bk, tiles, self.blocks_per_sm)

    def grid(self, problem) -> tuple:
        g, G = problem.g, problem.groups
        return _grouped_grid(problem.K // G, g.C // G * g.R * g.S, self.tile, G, self.split(problem)[0])

    def plan(self, problem) -> _Launch:
        args = grouped_args(problem)
        splits, chunk = self.split(problem)
        return _Launch(_kernel("conv2d_grouped_bwd_filter", self.tile), self.grid(problem), (self.tile.threads,),
                       args + (numpy.int32(chunk),), splits)

    def launch(self, problem, dy, x, w):
        import cupy

        return _run(planned(self, problem), (dy, x), nan_filled(cupy, w.shape)), None


@functools.lru_cache(maxsize=1024)
def _bias_launch(problem: ConvProblem) -> _Launch:
    """conv2d_bwd_bias: db's N*OH*OW reduction, split until its K blocks a split fill the GPU."""
    K, pixels_per_image = problem.K, problem.g.OH * problem.g.OW
    pixels = problem.g.N * pixels_per_image
    splits, chunk = _split_count(pixels, 16 * _BIAS_THREADS, K)
    return _Launch(_kernel("conv2d_bwd_bias"), (K, splits), (_BIAS_THREADS,),
                   tuple(numpy.int32(v) for v in (K, pixels_per_image, pixels, chunk)), splits)


def _run(launch: _Launch, inputs: tuple, out, *epilogue):
    """out from launch on the input arrays: written directly, or (a split reduction) as partials that
    _sum_partials(partials, out, *epilogue) then adds in a fixed order."""
    import cupy

    partials = out if launch.splits == 1 else nan_filled(cupy, (launch.splits,) + out.shape)
    launch.kernel(launch.grid, launch.block, inputs + (partials,) + launch.scalars)
    if launch.splits > 1:
        _sum_partials(partials, out, *epilogue)
    return out


def _sum_partials(partials, out, bias=None, K: int = 1, pixels: int = 1, act: int = 0, slope: float = 0.0):
    """out = act(partials.sum(axis=0) + bias) in a fixed order (the deterministic second pass); out is NCHW-like
    with K channels of `pixels` pixels when bias is given (element i takes bias[(i // pixels) % K])."""
    return cuda_sum_splits("conv2d", partials, partials.shape[0], out.size, out, bias, pixels, act, slope)
