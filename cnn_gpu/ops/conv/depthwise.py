"""Depthwise convolution (groups == C) by the direct kernels of kernels/conv2d_depthwise.cu: their tile choice,
launch plans and launches.

The kernels are compiled per layer shape (window, strides, dilations, tile: DEPTHWISE_* defines). They have not
yet run on a GPU, so their variants are unverified (cnn_gpu.cuda.variants): offered only with CNN_GPU_UNVERIFIED=1
or when forced. The plans are pure functions of the problem (and the SM count), so that a CPU
emulation of the kernels (tests/test_conv_depthwise_emulated.py) runs exactly the launches the CUDA path makes.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy

from cnn_gpu.cuda.grid import cdiv, require_int32_indexable
from cnn_gpu.cuda.loader import family_defines

# kernels/conv2d_depthwise.cu's limits, stated in FAMILY_DEFINES: staged elements a thread, static shared memory a block
MAX_LOADS, MAX_SMEM = (family_defines("conv2d_depthwise")[f"DEPTHWISE_{name}"] for name in ("MAX_LOADS", "MAX_SMEM"))
_MAX_STAGED_BYTES = 40 * 1024  # the staged tile's share: backward-filter's warp totals take up to 8 KB more
MAX_THREADS = 1024
MAX_GRID_Y = 65535
_COMPUTE_THREADS = 128    # threads a block aims at for its outputs
_MAX_ACCUMULATORS = 49    # backward-filter: a thread's RC·S window sums (a 7×7 window in one pass)


class DepthwiseProblem(NamedTuple):
    """One depthwise layer: x (N, C, H, W), w (C·M, 1, R, S), strides, dilations, top and left pads, output size."""
    N: int
    C: int
    H: int
    W: int
    M: int
    R: int
    S: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    OH: int
    OW: int

    @property
    def K(self) -> int:
        return self.C * self.M


class DepthwiseTile(NamedTuple):
    """A block's tile (the DEPTHWISE_* defines but the window's): bp planes × (by·u) rows × (bx·v) columns, each
    computing thread u rows × v columns; threads (a multiple of 32, >= bx·by·bp) also serve the staging."""
    u: int
    v: int
    bx: int
    by: int
    bp: int
    threads: int

    @property
    def th(self) -> int:
        return self.by * self.u

    @property
    def tw(self) -> int:
        return self.bx * self.v


def _staged(p: DepthwiseProblem, bx: int, by: int, bp: int, u: int, v: int) -> int:
    """Elements of the larger of the two staged tiles (forward's x, backward-data's dy) for this tile."""
    th, tw = by * u, bx * v
    xh, xw = (th - 1) * p.sh + (p.R - 1) * p.dh + 1, (tw - 1) * p.sw + (p.S - 1) * p.dw + 1
    yh, yw = (th - 1 + (p.R - 1) * p.dh) // p.sh + 2, (tw - 1 + (p.S - 1) * p.dw) // p.sw + 2
    return bp * max(xh * xw, yh * yw)


@functools.lru_cache(maxsize=1024)
def depthwise_tile(p: DepthwiseProblem, out_h: int, out_w: int) -> DepthwiseTile | None:
    """The tile over an out_h × out_w plane of outputs (forward and backward-filter: y's; backward-data: dx's):
    4 columns a thread (8 for windows 7 wide and more on planes 32 wide and more), 2 rows (more would hold
    too many registers in backward-filter, whose RC·S accumulators are held too); a plane's row of threads up to 16 wide, ~128 computing threads, several images
    a block when a plane has fewer outputs; planes, then rows, then columns of threads halved until the staged tile
    fits 40 KB, then enough threads that each stages at most MAX_LOADS elements. None when nothing fits."""
    v = 8 if p.S >= 7 and out_w >= 32 else 4
    u = 2
    bx = min(cdiv(out_w, v), 16)
    by = min(cdiv(out_h, u), max(1, _COMPUTE_THREADS // bx))
    bp = max(1, min(p.N, _COMPUTE_THREADS // (bx * by)))
    while 4 * _staged(p, bx, by, bp, u, v) > _MAX_STAGED_BYTES:
        if bp > 1:
            bp = cdiv(bp, 2)
        elif by > 1:
            by = cdiv(by, 2)
        elif bx > 1:
            bx = cdiv(bx, 2)
        else:
            return None
    threads = max(cdiv(bx * by * bp, 32), cdiv(cdiv(_staged(p, bx, by, bp, u, v), MAX_LOADS), 32)) * 32
    return DepthwiseTile(u, v, bx, by, bp, threads) if threads <= MAX_THREADS else None


def filter_rows_a_pass(p: DepthwiseProblem) -> int:
    """Backward-filter's window rows a pass (DEPTHWISE_RC): all of them while R·S accumulators fit a thread, else
    as many rows as do."""
    return p.R if p.R * p.S <= _MAX_ACCUMULATORS else max(1, _MAX_ACCUMULATORS // p.S)


class DepthwiseLaunch(NamedTuple):
    """One kernel of conv2d_depthwise.cu on one problem: its defines ((name, value) pairs), grid, block, scalar
    arguments after its arrays (numpy scalars, in order; act and slope not included) and the number of partials
    it writes (1: the output itself)."""
    kernel: str
    defines: tuple
    grid: tuple
    block: tuple
    scalars: tuple
    splits: int


def _defines(p: DepthwiseProblem, tile: DepthwiseTile) -> tuple:
    """The compile-time constants; one set compiles all three kernels, so each takes backward-filter's RC."""
    return (("DEPTHWISE_R", p.R), ("DEPTHWISE_S", p.S), ("DEPTHWISE_SH", p.sh), ("DEPTHWISE_SW", p.sw),
            ("DEPTHWISE_DH", p.dh), ("DEPTHWISE_DW", p.dw), ("DEPTHWISE_U", tile.u), ("DEPTHWISE_V", tile.v),
            ("DEPTHWISE_BX", tile.bx), ("DEPTHWISE_BY", tile.by), ("DEPTHWISE_BP", tile.bp),
            ("DEPTHWISE_RC", filter_rows_a_pass(p)), ("DEPTHWISE_THREADS", tile.threads))


def _int32s(*values) -> tuple:
    return tuple(numpy.int32(v) for v in values)


def _require_indexable(p: DepthwiseProblem) -> None:
    """The kernels index within a plane in 32 bits (across planes in 64) and put channels on the grid's y."""
    require_int32_indexable("one plane of x", (p.H, p.W))
    require_int32_indexable("one plane of y", (p.OH, p.OW))
    if p.C > MAX_GRID_Y:
        raise ValueError(f"the depthwise kernels take at most {MAX_GRID_Y} channels (the grid's y), got C = {p.C}")


def _tile_or_error(p: DepthwiseProblem, out_h: int, out_w: int) -> DepthwiseTile:
    tile = depthwise_tile(p, out_h, out_w)
    if tile is None:
        raise ValueError(f"no depthwise tile fits a {p.R}×{p.S} window at stride {p.sh}×{p.sw}, dilation "
                         f"{p.dh}×{p.dw}")
    return tile


def _plane_grid(p: DepthwiseProblem, tile: DepthwiseTile, out_h: int, out_w: int) -> tuple:
    tiles_h, tiles_w = cdiv(out_h, tile.th), cdiv(out_w, tile.tw)
    return (cdiv(p.N, tile.bp) * tiles_h * tiles_w, p.C), tiles_h, tiles_w


@functools.lru_cache(maxsize=1024)
def forward_launch(p: DepthwiseProblem, tile: DepthwiseTile | None = None) -> DepthwiseLaunch:
    """conv2d_depthwise_fwd_bias_act: a block a tile (depthwise_tile's, or the one given) of y's planes for bp
    images of one channel, all M filters; act and slope follow these scalars."""
    _require_indexable(p)
    tile = tile or _tile_or_error(p, p.OH, p.OW)
    grid, tiles_h, tiles_w = _plane_grid(p, tile, p.OH, p.OW)
    return DepthwiseLaunch("conv2d_depthwise_fwd_bias_act", _defines(p, tile), grid, (tile.threads,),
                           _int32s(p.N, p.C, p.H, p.W, p.M, p.OH, p.OW, p.pt, p.pl, tiles_h, tiles_w), 1)


@functools.lru_cache(maxsize=1024)
def data_launch(p: DepthwiseProblem, tile: DepthwiseTile | None = None) -> DepthwiseLaunch:
    """conv2d_depthwise_bwd_data: a block a tile of dx's planes for bp images of one channel."""
    _require_indexable(p)
    tile = tile or _tile_or_error(p, p.H, p.W)
    grid, tiles_h, tiles_w = _plane_grid(p, tile, p.H, p.W)
    return DepthwiseLaunch("conv2d_depthwise_bwd_data", _defines(p, tile), grid, (tile.threads,),
                           _int32s(p.N, p.C, p.H, p.W, p.M, p.OH, p.OW, p.pt, p.pl, tiles_h, tiles_w), 1)


# Blocks an SM the backward-filter split aims for (blocks of ~128 threads: 8 give an SM 32 warps), and the fewest
# units (bp images × one tile) a split takes.
_FILTER_BLOCKS_PER_SM = 8
_FILTER_MIN_CHUNK = 2


@functools.lru_cache(maxsize=1024)
def filter_launch(p: DepthwiseProblem, sms: int, tile: DepthwiseTile | None = None) -> DepthwiseLaunch:
    """conv2d_depthwise_bwd_filter (dw and db): grid (K, splits, passes); the units of each channel split until the grid gives
    each of sms SMs _FILTER_BLOCKS_PER_SM blocks (no split under _FILTER_MIN_CHUNK units, none empty)."""
    _require_indexable(p)
    tile = tile or _tile_or_error(p, p.OH, p.OW)
    rows = filter_rows_a_pass(p)
    passes = cdiv(p.R, rows)
    tiles_h, tiles_w = cdiv(p.OH, tile.th), cdiv(p.OW, tile.tw)
    units = cdiv(p.N, tile.bp) * tiles_h * tiles_w
    wanted = max(1, min(cdiv(_FILTER_BLOCKS_PER_SM * sms, p.K * passes), units // _FILTER_MIN_CHUNK, MAX_GRID_Y))
    chunk = cdiv(units, wanted)
    splits = cdiv(units, chunk)
    return DepthwiseLaunch("conv2d_depthwise_bwd_filter", _defines(p, tile), (p.K, splits, passes),
                           (tile.threads,), _int32s(p.N, p.C, p.H, p.W, p.M, p.OH, p.OW, p.pt, p.pl, tiles_h, tiles_w,
                                                    chunk), splits)


# ---- CUDA launches ---------------------------------------------------------------------------------
def _kernel(launch: DepthwiseLaunch):
    from cnn_gpu.cuda.loader import load_kernel

    return load_kernel("conv2d_depthwise", launch.kernel, **dict(launch.defines))


def cuda_depthwise_forward(x, w, b, p: DepthwiseProblem, act: int, slope: float):
    """y (N, K, OH, OW) = act(b + depthwise(x, w)); x, w, b contiguous CuPy float32 arrays (b may be None)."""
    import cupy

    from cnn_gpu.ops.arrays import nan_filled

    launch = forward_launch(p)  # the checks, before any allocation
    y = nan_filled(cupy, (p.N, p.K, p.OH, p.OW))
    _kernel(launch)(launch.grid, launch.block, (x, w, b, y) + launch.scalars + (numpy.int32(act), numpy.float32(slope)))
    return y


def cuda_depthwise_backward_data(dy, w, p: DepthwiseProblem):
    import cupy

    from cnn_gpu.ops.arrays import nan_filled

    launch = data_launch(p)
    dx = nan_filled(cupy, (p.N, p.C, p.H, p.W))
    _kernel(launch)(launch.grid, launch.block, (dy, w, dx) + launch.scalars)
    return dx


def cuda_depthwise_backward_filter(dy, x, p: DepthwiseProblem, sum_partials):
    """(dw (K, 1, R, S), db (K,)): per-block partials of both, (splits, K, R·S + 1), then sum_partials(partials, out)
    adds them in a fixed order (out written directly when one split does)."""
    import cupy

    from cnn_gpu.cuda.device import sm_count
    from cnn_gpu.ops.arrays import nan_filled

    launch = filter_launch(p, sm_count())
    taps = p.R * p.S
    out = nan_filled(cupy, (p.K, taps + 1))
    partials = out if launch.splits == 1 else nan_filled(cupy, (launch.splits,) + out.shape)
    _kernel(launch)(launch.grid, launch.block, (dy, x, partials) + launch.scalars)
    if launch.splits > 1:
        sum_partials(partials, out)
    return cupy.ascontiguousarray(out[:, :taps]).reshape(p.K, 1, p.R, p.S), cupy.ascontiguousarray(out[:, taps])
