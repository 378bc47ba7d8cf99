"""The direct convolutions of kernels/conv2d_direct.cu, compiled per layer shape: a forward for layers with few
filters (FewFiltersForward: conv2d_fwd_few_filters) and a backward-filter for layers with few input channels
(FewChannelsBackwardFilter: conv2d_bwd_filter_few_channels)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy

from cnn_gpu.cuda import device
from cnn_gpu.cuda.grid import cdiv
from cnn_gpu.cuda.loader import family_defines, load_kernel
from cnn_gpu.cuda.variants import Variant, planned
from cnn_gpu.ops.activation import activation_code
from cnn_gpu.ops.arrays import nan_filled
from cnn_gpu.ops.conv.implicit_gemm import _run
from cnn_gpu.ops.conv.problem import ConvProblem, _Launch, _split_count, earlier_split_matches
from cnn_gpu.ops.geometry import WindowGeometry


# conv2d_fwd_few_filters's limits: kernels/conv2d_direct.cu's FK_* defines, stated in cnn_gpu.cuda.loader.
_DIRECT = family_defines("conv2d_direct")
_FEW_FILTERS_MAX_K = _DIRECT["FK_MAX_FILTERS"]
_FEW_FILTERS_STRIP = _DIRECT["FK_STRIP"]                  # output columns a thread
_FEW_FILTERS_MAX_THREADS = _DIRECT["FK_MAX_THREADS"]
_FEW_FILTERS_MAX_LOADS = _DIRECT["FK_MAX_LOADS"]          # x elements a thread stages a channel
_FEW_FILTERS_MAX_WEIGHTS = _DIRECT["FK_MAX_WEIGHTS"]      # K·R·S, held in registers
_FEW_FILTERS_MAX_SEGMENT = _DIRECT["FK_MAX_SEGMENT"]      # x values of one row under a thread's 4 windows, rounded up to float4s
_FEW_FILTERS_MAX_ACCUMULATORS = _DIRECT["FK_MAX_ACCUMULATORS"]  # a thread's u·4·K outputs, held in registers


# A split of the channels takes at least this many (each is a staging pipeline's start-up and a slice to sum).
_FEW_FILTERS_MIN_CHUNK = 4


class _FewFiltersTile(NamedTuple):
    """conv2d_fwd_few_filters's block (FEWK_BX, FEWK_BY, FEWK_U): bx × by threads compute, each u output rows × 4
    columns of every filter: a tile of by·u rows × 4·bx columns."""
    bx: int
    by: int
    u: int

    @property
    def threads(self) -> int:
        return cdiv(self.bx * self.by, 32) * 32

    def loads(self, g: WindowGeometry) -> int:
        """x elements a thread stages a channel (the kernel's FK_LOADS): the tile's plane with its halo, in rows of
        float4s that end where its last thread's do."""
        segment = 4 * cdiv((_FEW_FILTERS_STRIP - 1) * g.stride_w + g.S, 4)
        rows = (self.by * self.u - 1) * g.stride_h + g.R
        return cdiv(rows * ((self.bx - 1) * _FEW_FILTERS_STRIP * g.stride_w + segment), self.threads)


def _few_filters_tile(g: WindowGeometry, K: int) -> _FewFiltersTile | None:
    """The tile of conv2d_fwd_few_filters on this layer; None where the kernel does not apply: K past
    _FEW_FILTERS_MAX_K, K·R·S past _FEW_FILTERS_MAX_WEIGHTS, a row segment past _FEW_FILTERS_MAX_SEGMENT, or no tile
    whose staging fits _FEW_FILTERS_MAX_LOADS. Columns: all cdiv(OW, 4) strips of a row in one tile up to 32 of them,
    wider rows in tiles of 16-32 strips (the fewest padded strips, then the widest). Rows: u rows a thread, the most
    of 4, 2, 1 within the accumulators and OH whose staging fits; up to 128 / bx thread rows, as few as cover OH in
    as many tiles, or (when that staging does not fit) all of them, whose halo weighs less."""
    segment = (_FEW_FILTERS_STRIP - 1) * g.stride_w + g.S
    if K > _FEW_FILTERS_MAX_K or K * g.R * g.S > _FEW_FILTERS_MAX_WEIGHTS or 4 * cdiv(segment, 4) > _FEW_FILTERS_MAX_SEGMENT:
        return None
    strips = cdiv(g.OW, _FEW_FILTERS_STRIP)
    bx = strips if strips <= 32 else min(range(16, 33), key=lambda b: (cdiv(strips, b) * b, -b))
    most_rows = _FEW_FILTERS_MAX_THREADS // bx
    for u in (4, 2, 1):
        if u * _FEW_FILTERS_STRIP * K > _FEW_FILTERS_MAX_ACCUMULATORS or u > g.OH:
            continue
        by = cdiv(cdiv(g.OH, cdiv(g.OH, most_rows * u)), u)
        for tile in (_FewFiltersTile(bx, by, u), _FewFiltersTile(bx, most_rows, u)):
            if tile.loads(g) <= _FEW_FILTERS_MAX_LOADS:
                return tile
    return None


class _FewFiltersPlan(NamedTuple):
    """conv2d_fwd_few_filters on one ConvProblem and variant: its FEWK_* defines ((name, value) pairs), grid, block,
    split count and scalar arguments but act and slope (numpy.int32s, in the kernel's order)."""
    defines: tuple
    grid: tuple
    block: tuple
    splits: int
    args: tuple


def _few_filters_plan(problem: ConvProblem, blocks_per_sm: int) -> _FewFiltersPlan:
    """A block a tile of _few_filters_tile and image, over all C channels (blocks_per_sm 0), or C split in chunks of
    at least _FEW_FILTERS_MIN_CHUNK until the grid gives every SM blocks_per_sm blocks. ValueError where the kernel
    does not apply."""
    g, K = problem.g, problem.K
    tile = _few_filters_tile(g, K)
    if tile is None:
        raise ValueError(f"conv2d_fwd_few_filters does not apply to K = {K} filters of {g.R}×{g.S} at stride "
                         f"{g.stride_h}×{g.stride_w} (output {g.OH}×{g.OW})")
    tiles_h, tiles_w = cdiv(g.OH, tile.by * tile.u), cdiv(g.OW, tile.bx * _FEW_FILTERS_STRIP)
    blocks = g.N * tiles_h * tiles_w
    splits, chunk = (1, g.C) if not blocks_per_sm else _split_count(g.C, _FEW_FILTERS_MIN_CHUNK, blocks, blocks_per_sm)
    defines = (("FEWK_K", K), ("FEWK_R", g.R), ("FEWK_S", g.S), ("FEWK_SH", g.stride_h), ("FEWK_SW", g.stride_w),
               ("FEWK_BX", tile.bx), ("FEWK_BY", tile.by), ("FEWK_U", tile.u))
    args = tuple(numpy.int32(v) for v in (g.N, g.C, g.H, g.W, g.OH, g.OW, g.pad_top, g.pad_left, tiles_w, tiles_h, chunk))
    return _FewFiltersPlan(defines, (blocks, splits), (tile.threads,), splits, args)


def _split_name(blocks_per_sm: int) -> str:
    return f", split to {blocks_per_sm} blocks an SM" if blocks_per_sm else ""


@dataclass(frozen=True)
class FewFiltersForward(Variant):
    """y by conv2d_fwd_few_filters, compiled per layer shape (tiles of output pixels × all K filters, where the implicit
    GEMM's tiles are 32-128 filters tall), bias and activation in its epilogue; offered for layers with few filters
    (K <= _FEW_FILTERS_MAX_K; _few_filters_tile). blocks_per_sm > 0: its C split over blocks where its tiles cannot
    fill the GPU, partials over the channel chunks, then the fixed-order sum that adds the bias and applies the
    activation. Backward-data of a first layer (C = 1, 3) as a forward conv is one."""
    blocks_per_sm: int = 0
    op = "conv2d_fwd"

    @property
    def algorithm(self) -> str:
        return "few output channels, split" if self.blocks_per_sm else "few output channels"

    @property
    def name(self) -> str:
        return "few output channels" + _split_name(self.blocks_per_sm)

    def applies(self, problem: ConvProblem) -> bool:
        if self.tile(problem) is None:
            return False
        if not self.blocks_per_sm:
            return True
        return (self.kernel_plan(problem).splits > 1
                and not earlier_split_matches(self, self.blocks_per_sm, lambda b: _few_filters_plan(problem, b).splits))

    def tile(self, problem: ConvProblem) -> _FewFiltersTile | None:
        """The kernel's block on this problem ((bx, by, u): bx × by threads of u rows × 4 columns of every filter);
        None where the kernel does not apply."""
        return _few_filters_tile(problem.g, problem.K)

    def kernel_plan(self, problem: ConvProblem) -> _FewFiltersPlan:
        """The kernel's compile-time defines, grid and arguments on this problem (ValueError where it does not apply)."""
        return _few_filters_plan(problem, self.blocks_per_sm)

    def plan(self, problem: ConvProblem, act: int, slope: float) -> _Launch:
        """The launch; split, its partials carry no bias and no activation."""
        plan = self.kernel_plan(problem)
        if plan.splits > 1:
            act, slope = activation_code(None), 0.0
        return _Launch(load_kernel("conv2d_direct", "conv2d_fwd_few_filters", **dict(plan.defines)), plan.grid,
                       plan.block, plan.args + (numpy.int32(act), numpy.float32(slope)), plan.splits)

    def launch(self, problem: ConvProblem, x, w, b, act: int, slope: float):
        import cupy

        launch = planned(self, problem, act, slope)  # the checks, before any allocation
        return _run(launch, (x, w, b if launch.splits == 1 else None), nan_filled(cupy, problem.y_shape),
                    b, problem.K, problem.g.OH * problem.g.OW, act, slope)


# conv2d_bwd_filter_few_channels's limits: kernels/conv2d_direct.cu's FC_* defines, stated in cnn_gpu.cuda.loader.
_FEW_CHANNELS_THREADS = _DIRECT["FC_THREADS"]
_FEW_CHANNELS_BLOCKS_AN_SM = _DIRECT["FC_BLOCKS_AN_SM"]  # resident on an SM at once (its __launch_bounds__)
_FEW_CHANNELS_STRIP = _DIRECT["FC_STRIP"]               # output pixels a thread takes at a time
_FEW_CHANNELS_MAX_TAPS = _DIRECT["FC_MAX_TAPS"]         # the largest C·R·S it is offered for
_FEW_CHANNELS_MAX_FILTERS = _DIRECT["FC_MAX_FILTERS"]
_FEW_CHANNELS_HELD_REGISTERS = _DIRECT["FC_HELD_REGISTERS"]


# Strips a split has at least: 4 a thread, so that the block's closing reduction stays a small part of its work.
_FEW_CHANNELS_MIN_CHUNK = 4 * _FEW_CHANNELS_THREADS


def _few_channels_filters(g: WindowGeometry) -> int:
    """Filters a thread of conv2d_bwd_filter_few_channels takes on this layer (FEWC_FILTERS): the most, up to
    _FEW_CHANNELS_MAX_FILTERS, whose accumulators and strip of dy, with every tap row's x segment, fit
    _FEW_CHANNELS_HELD_REGISTERS (the kernel asserts the same rule); 0 where the kernel does not apply (C·R·S past
    _FEW_CHANNELS_MAX_TAPS, or not even one filter fits)."""
    taps = g.C * g.R * g.S
    if taps > _FEW_CHANNELS_MAX_TAPS:
        return 0
    held_x = g.C * g.R * ((_FEW_CHANNELS_STRIP - 1) * g.stride_w + g.S)
    return max(0, min(_FEW_CHANNELS_MAX_FILTERS, (_FEW_CHANNELS_HELD_REGISTERS - held_x) // (taps + _FEW_CHANNELS_STRIP)))


def _few_channels_splits(strips: int, groups: int, blocks_per_sm: int, sms: int) -> tuple[int, int]:
    """(splits, chunk) of the strips for `groups` filter groups: chunks of at least _FEW_CHANNELS_MIN_CHUNK strips
    (none empty), blocks_per_sm blocks an SM where the strips allow, and of up to twice that many splits the count
    whose groups·splits equal blocks best fill their last round of the _FEW_CHANNELS_BLOCKS_AN_SM·sms blocks the GPU
    holds at once (SMs idle in a ragged last round are time lost to a kernel that streams dy)."""
    most = max(1, strips // _FEW_CHANNELS_MIN_CHUNK)
    fewest = min(cdiv(blocks_per_sm * sms, groups), most)
    round_blocks = _FEW_CHANNELS_BLOCKS_AN_SM * sms

    def split(wanted):
        chunk = cdiv(strips, wanted)
        return cdiv(strips, chunk), chunk

    def last_round_fill(wanted):
        blocks = groups * split(wanted)[0]
        return blocks / (cdiv(blocks, round_blocks) * round_blocks)

    return split(max(range(fewest, min(2 * fewest, most) + 1), key=last_round_fill))


class _FewChannelsPlan(NamedTuple):
    """conv2d_bwd_filter_few_channels on one ConvProblem: its FEWC_* defines ((name, value) pairs), grid, split count
    and scalar arguments (numpy.int32s, in the kernel's order)."""
    defines: tuple
    grid: tuple
    splits: int
    args: tuple


def _few_channels_plan(problem: ConvProblem, blocks_per_sm: int, sms: int) -> _FewChannelsPlan:
    """The kernel compiled for this layer's C, R, S and column stride, _few_channels_filters filters a thread,
    cdiv(K, filters) filter groups, the N·cdiv(OH·OW, 4) strips split by _few_channels_splits."""
    g, K = problem.g, problem.K
    filters = _few_channels_filters(g)
    if not filters:
        raise ValueError(f"conv2d_bwd_filter_few_channels does not apply to C·R·S = {g.C}·{g.R}·{g.S} at column stride {g.stride_w}")
    groups = cdiv(K, filters)
    splits, chunk = _few_channels_splits(g.N * cdiv(g.OH * g.OW, _FEW_CHANNELS_STRIP), groups, blocks_per_sm, sms)
    defines = (("FEWC_C", g.C), ("FEWC_R", g.R), ("FEWC_S", g.S), ("FEWC_SW", g.stride_w), ("FEWC_FILTERS", filters))
    args = tuple(numpy.int32(v) for v in (g.N, g.H, g.W, K, g.OH, g.OW, g.stride_h, g.pad_top, g.pad_left, chunk))
    return _FewChannelsPlan(defines, (groups, splits), splits, args)


@dataclass(frozen=True)
class FewChannelsBackwardFilter(Variant):
    """dw by conv2d_bwd_filter_few_channels, compiled per layer shape, streaming dy once: per-block partials over
    splits of the output pixels aiming at blocks_per_sm blocks an SM, then the fixed-order sum (dw written directly
    when one split does). Offered for layers with few input channels (C·R·S <= 32 and its values fit a thread's
    registers: _few_channels_filters), one variant per distinct grid."""
    blocks_per_sm: int
    op = "conv2d_bwd_filter"
    algorithm = "few input channels"

    @property
    def name(self) -> str:
        return "few input channels" + _split_name(self.blocks_per_sm)

    def applies(self, problem: ConvProblem) -> bool:
        if not _few_channels_filters(problem.g):
            return False
        sms = device.sm_count()
        return not earlier_split_matches(self, self.blocks_per_sm, lambda b: _few_channels_plan(problem, b, sms).grid)

    def kernel_plan(self, problem: ConvProblem, sms: int) -> _FewChannelsPlan:
        """The kernel's compile-time defines, grid and arguments on this problem for a GPU of sms SMs."""
        return _few_channels_plan(problem, self.blocks_per_sm, sms)

    def plan(self, problem: ConvProblem, sms: int) -> _Launch:
        plan = self.kernel_plan(problem, sms)
        return _Launch(load_kernel("conv2d_direct", "conv2d_bwd_filter_few_channels", **dict(plan.defines)), plan.grid,
                       (_FEW_CHANNELS_THREADS,), plan.args, plan.splits)

    def launch(self, problem: ConvProblem, dy, x, w_shape):
        import cupy

        return _run(planned(self, problem, device.sm_count()), (dy, x), nan_filled(cupy, w_shape))
