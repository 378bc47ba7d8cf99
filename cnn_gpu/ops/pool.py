"""2-D pooling: max (with argmax indices), average and sum, forward and backward. NCHW.

Contract, shared by every function here:
- kernel_size: an int or a pair (R, S); stride: the same, defaulting to kernel_size; padding: an int,
  a pair, 'valid' or 'same'. The output size and the four pads come from
  cnn_gpu.ops.geometry.window_geometry. An int/pair padding may be at most half the window
  (as PyTorch), so no window lies wholly in padding; 'same' never produces such a window either.
  max_pool2d(_backward) also take ceil_mode (PyTorch's): the output size rounded up, the last windows
  running past the input; those parts count as padding (pad_bottom / pad_right grow), read by no kernel.
- max_pool2d(x, ...) -> (y, indices). Padding never wins: each window's maximum is taken over its
  in-bounds elements. indices (int64, y's shape) hold h * W + w into each input plane, as PyTorch's
  return_indices; the first maximum in row-major window order wins; NaN beats every number and the
  first NaN wins (PyTorch keeps the last NaN); a window of only -inf points at its first in-bounds
  element (as PyTorch).
- max_pool2d_backward(dy, indices, x_shape, ...) -> dx: dy routed through indices, summed where
  windows overlap, deterministically (the kernels never use float atomics). An index that does not name
  an element of its own window (max_pool2d's always do) routes nowhere, on both backends: checking
  would cost the CUDA path a wait for the device in every training step.
- sum_pool2d: the window sum, padding counting as zero. avg_pool2d: the same sum divided by the
  window area (count_include_pad=True, PyTorch's default) or by the number of in-bounds elements
  (False: Keras 'same' average pooling). Both share one code path, told apart by a divisor mode.
- Bad arguments raise ValueError / TypeError naming the argument and shapes before any work.

NumPy path: max pooling and its backward scatter are numba loops over the planes (cnn_gpu.ops.parallel); average
and sum pooling vectorised over (N, C, OH, OW) with a loop over the R*S window offsets. CUDA path:
kernels/pool.cu. Forward: one thread per output element (maxpool2d_fwd_argmax, sumpool2d_fwd). Backward:
one thread per input element gathering from the windows that contain it (maxpool2d_bwd, sumpool2d_bwd).
Max pooling has other variants, among which cnn_gpu.cuda.autotune picks the fastest for the shape, the
first of each list being the default: forward (MaxPoolForward), a kernel compiled for the window size
(maxpool2d_fwd_argmax_fixed); backward (MaxPoolBackward), one warp per 4 KB piece of dx, staged in shared
memory and stored as whole lines (maxpool2d_bwd_staged), and, for disjoint windows (stride >= kernel_size:
the common 2/2, 3/3), one thread per window writing the cell of dx around it (maxpool2d_bwd_disjoint).
Every variant gives the NumPy path's bits, but where windows overlap the staged one adds in another fixed
order (within rounding).
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numba
import numpy

from cnn_gpu.cuda import autotune
from cnn_gpu.cuda.grid import INT32_MAX, cdiv, fast_divmod_params, require_int32_indexable
from cnn_gpu.cuda.loader import family_defines, load_kernel
from cnn_gpu.cuda.variants import Variant, applicable, planned, register
from cnn_gpu.ops.arrays import array_module, contiguous, float_operands, nan_filled
from cnn_gpu.ops.geometry import WindowGeometry, as_pair, plain_arguments, window_geometry, with_pads
from cnn_gpu.ops.parallel import run_loop

# Divisor modes shared with kernels/pool.cu (DIVISOR_*).
DIVISOR_ONE = 0  # sum pooling
DIVISOR_WINDOW_AREA = 1  # average, padding counted (count_include_pad=True)
DIVISOR_IN_BOUNDS = 2  # average over the in-bounds elements only (count_include_pad=False)

NCHW = (4, "N, C, H, W")


# ---- geometry and argument checks ----------------------------------------------------------------
def pool_geometry(x_shape, kernel_size, stride, padding, x_name="x", ceil_mode=False) -> WindowGeometry:
    """Validated geometry of a pooling window; stride defaults to kernel_size.

    Remembered per arguments when kernel_size, stride and padding are the usual ints, pairs of ints or
    strings (host time is most of a small pool's latency): their exact types are checked first, so an
    argument merely equal to a valid one (True, 2.0, numpy.int64(2)) is still checked and refused."""
    if plain_arguments(kernel_size, stride, padding) and type(ceil_mode) is bool:
        return _remembered_pool_geometry(tuple(x_shape), kernel_size, stride, padding, x_name, ceil_mode)
    return _pool_geometry(x_shape, kernel_size, stride, padding, x_name, ceil_mode)


@functools.lru_cache(maxsize=1024)
def _remembered_pool_geometry(x_shape, kernel_size, stride, padding, x_name, ceil_mode) -> WindowGeometry:
    return _pool_geometry(x_shape, kernel_size, stride, padding, x_name, ceil_mode)


def _pool_geometry(x_shape, kernel_size, stride, padding, x_name, ceil_mode=False) -> WindowGeometry:
    window = as_pair("kernel_size", kernel_size, 1)
    g = window_geometry(x_shape, window, window if stride is None else stride, padding, x_name=x_name)
    if not isinstance(padding, str) and (g.pad_top > g.R // 2 or g.pad_left > g.S // 2):
        raise ValueError(f"padding {padding!r} must be at most half of kernel_size {(g.R, g.S)}")
    if ceil_mode:
        if isinstance(padding, str):
            raise ValueError(f"ceil_mode=True needs an int or pair padding, got padding {padding!r}")
        pad_bottom, OH = _ceil_mode_extent(g.H, g.R, g.stride_h, g.pad_top)
        pad_right, OW = _ceil_mode_extent(g.W, g.S, g.stride_w, g.pad_left)
        g = g._replace(pad_bottom=pad_bottom, pad_right=pad_right, OH=OH, OW=OW)
    return g


def _ceil_mode_extent(size: int, window: int, stride: int, pad: int) -> tuple[int, int]:
    """(pad after, output size) of ceil_mode along an axis, as PyTorch counts it: the output size rounded up,
    less one if the last window would start past the input and its leading pad. The extra windows' part
    beyond the input and the given pad is more padding, which never wins (and no window is padding only)."""
    out = -(-(size + 2 * pad - window) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return max(pad, (out - 1) * stride + window - size - pad), out


def _output_shape(g: WindowGeometry):
    return (g.N, g.C, g.OH, g.OW)


def _checked_x_shape(x_shape):
    try:
        shape = tuple(map(operator.index, x_shape))
    except TypeError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"x_shape must be 4 positive ints (N, C, H, W), got {x_shape!r}")
    return shape


def _check_dy(dy, g: WindowGeometry):
    if tuple(dy.shape) != _output_shape(g):
        raise ValueError(
            f"dy shape {tuple(dy.shape)} must equal the pooling output shape {_output_shape(g)} "
            f"for x shape {g.input_shape}"
        )


def _check_indices(indices, dy):
    if indices.dtype != numpy.int64:
        raise TypeError(f"indices must be int64 (as max_pool2d returns them), got {indices.dtype} (shape {tuple(indices.shape)})")
    if tuple(indices.shape) != tuple(dy.shape):
        raise ValueError(f"indices shape {tuple(indices.shape)} must equal dy shape {tuple(dy.shape)}")


def _average_divisor_mode(count_include_pad: bool) -> int:
    return DIVISOR_WINDOW_AREA if count_include_pad else DIVISOR_IN_BOUNDS


# ---- NumPy path ----------------------------------------------------------------------------------
def _window_starts(g: WindowGeometry):
    """Top rows (OH,) and left columns (OW,) of the windows, in unpadded input coordinates."""
    return numpy.arange(g.OH) * g.stride_h - g.pad_top, numpy.arange(g.OW) * g.stride_w - g.pad_left


def _offset_view(padded, g: WindowGeometry, r: int, s: int):
    """Element (r, s) of every window at once: a strided (N, C, OH, OW) view of the padded array."""
    return padded[:, :, r:r + (g.OH - 1) * g.stride_h + 1:g.stride_h, s:s + (g.OW - 1) * g.stride_w + 1:g.stride_w]


def _numpy_divisor(g: WindowGeometry, mode: int, dtype):
    """Per-window divisor, broadcastable to (N, C, OH, OW)."""
    if mode == DIVISOR_WINDOW_AREA:
        return dtype.type(g.R * g.S)
    h0, w0 = _window_starts(g)
    rows = numpy.minimum(h0 + g.R, g.H) - numpy.maximum(h0, 0)
    cols = numpy.minimum(w0 + g.S, g.W) - numpy.maximum(w0, 0)
    return (rows[:, None] * cols[None, :]).astype(dtype)


# Max pooling, planes in parallel (cnn_gpu.ops.parallel). Each plane's taps are visited in row-major window order,
# each gathered contiguous first so the compare-and-select over the plane's windows runs in SIMD (a loop over one
# window's taps at a time does not vectorise, and was 2.5x slower than NumPy). A tap wins where it is greater than
# the maximum so far, or is a NaN where that is not: the first maximum and the first NaN stay, and padding (-inf)
# never wins. Until something beats -inf, the winner is the window's first in-bounds tap (`first`).
@numba.njit(cache=True, parallel=True)
def _max_pool_planes(padded, y, indices, first, corner, plane_step, R, S, stride_h, stride_w):
    N, C, OH, OW = y.shape
    n = OH * OW
    for p in numba.prange(N * C):
        plane, y_plane, index_plane = padded[p // C, p % C], y[p // C, p % C], indices[p // C, p % C]
        tap, best, winner = numpy.empty(n, padded.dtype), numpy.empty(n, padded.dtype), numpy.empty(n, numpy.int32)
        for i in range(n):
            best[i] = -numpy.inf
            winner[i] = first[i]
        for r in range(R):
            for s in range(S):
                i = 0
                for oh in range(OH):
                    row = plane[oh * stride_h + r]
                    for ow in range(OW):
                        tap[i] = row[ow * stride_w + s]
                        i += 1
                k = numpy.int32(r * S + s)
                for i in range(n):
                    v, b = tap[i], best[i]
                    wins = (not (v <= b)) and (b == b)
                    winner[i] = k if wins else winner[i]
                    best[i] = v if wins else b
        i = 0
        for oh in range(OH):
            for ow in range(OW):
                y_plane[oh, ow] = best[i]
                index_plane[oh, ow] = corner[i] + plane_step[winner[i]]
                i += 1


def _numpy_max_pool2d(x, g: WindowGeometry):
    h0, w0 = _window_starts(g)
    first = (numpy.maximum(-h0, 0)[:, None] * g.S + numpy.maximum(-w0, 0)[None, :]).astype(numpy.int32).ravel()
    corner = (h0[:, None] * g.W + w0[None, :]).ravel()  # each window's top-left in the plane, h * W + w
    taps = numpy.arange(g.R * g.S)
    plane_step = (taps // g.S) * g.W + taps % g.S  # tap r * S + s -> its distance r * W + s from the corner
    y = numpy.empty(_output_shape(g), dtype=x.dtype)
    indices = numpy.empty(_output_shape(g), dtype=numpy.int64)
    run_loop(_max_pool_planes, with_pads(x, g, -numpy.inf), y, indices, first, corner, plane_step,
             g.R, g.S, g.stride_h, g.stride_w)
    return y, indices


def _numpy_sum_pool2d(x, g: WindowGeometry, mode: int):
    padded = with_pads(x, g, 0)
    y = numpy.zeros(_output_shape(g), dtype=x.dtype)
    for r in range(g.R):
        for s in range(g.S):
            y += _offset_view(padded, g, r, s)
    if mode != DIVISOR_ONE:
        y /= _numpy_divisor(g, mode, x.dtype)
    return y


def _numpy_sum_pool2d_backward(dy, g: WindowGeometry, mode: int):
    share = dy if mode == DIVISOR_ONE else dy / _numpy_divisor(g, mode, dy.dtype)
    Hp, Wp = g.padded_hw
    dx_padded = numpy.zeros((g.N, g.C, Hp, Wp), dtype=dy.dtype)
    for r in range(g.R):
        for s in range(g.S):
            _offset_view(dx_padded, g, r, s)[...] += share
    return numpy.ascontiguousarray(dx_padded[:, :, g.pad_top:g.pad_top + g.H, g.pad_left:g.pad_left + g.W])


# A numba scatter-add, planes in parallel (cnn_gpu.ops.parallel) and each plane's in order, so the sum order is
# fixed, and an index outside its window (numba does not check bounds) is skipped in the same pass, as the CUDA
# kernels never match it. The window's corner comes from the loops and the index's row from one unsigned division
# (the index is non-negative by then; numba's signed floor division costs a fifth more).
@numba.njit(cache=True, parallel=True)
def _scatter_add_planes(dy_planes, index_planes, dx_planes, W, OW, R, S, stride_h, stride_w, pad_top, pad_left):
    plane_size = dx_planes.shape[1]
    OH = dy_planes.shape[1] // OW
    for p in numba.prange(dy_planes.shape[0]):
        dy_plane, index_plane, dx_plane = dy_planes[p], index_planes[p], dx_planes[p]
        o = 0
        for oh in range(OH):
            top = oh * stride_h - pad_top
            for ow in range(OW):
                at = index_plane[o]
                if 0 <= at < plane_size:
                    h = numba.int64(numba.uint64(at) // numba.uint64(W))
                    w = at - h * W
                    left = ow * stride_w - pad_left
                    if top <= h < top + R and left <= w < left + S:
                        dx_plane[at] += dy_plane[o]
                o += 1


def _numpy_max_pool2d_backward(dy, indices, g: WindowGeometry):
    dx = numpy.zeros((g.N * g.C, g.H * g.W), dtype=dy.dtype)
    planes = g.N * g.C
    run_loop(
        _scatter_add_planes,
        numpy.ascontiguousarray(dy).reshape(planes, -1), numpy.ascontiguousarray(indices).reshape(planes, -1), dx,
        g.W, g.OW, g.R, g.S, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
    )
    return dx.reshape(g.input_shape)


# ---- CUDA path -----------------------------------------------------------------------------------
# Launch arguments are pure functions of the geometry: built once per geometry (host time is most of a
# small call's latency). Every launch covers whole planes and fewer than 2**31 elements of each array,
# so the kernels index in 32 bits; a bigger tensor takes several launches (one in practice).
THREADS = 256
# maxpool2d_bwd_staged: one warp an item, STAGED_WARPS warps a block, STAGED_PIECE floats of dx a warp stages
STAGED_WARPS, STAGED_PIECE = (family_defines("pool")[name] for name in ("STAGED_WARPS", "STAGED_PIECE"))
assert STAGED_WARPS * 32 == THREADS, "maxpool2d_bwd_staged is launched with the other kernels' THREADS a block"


def _pool_geometry_args(g: WindowGeometry):
    """kernels/pool.cu's POOL_GEOMETRY arguments."""
    return tuple(numpy.int32(v) for v in (g.H, g.W, g.OH, g.OW, g.R, g.S, g.stride_h, g.stride_w, g.pad_top, g.pad_left))


def _divmod_magic(*divisors):
    """The (multiplier, shift) pairs of the kernels' DIVMOD_MAGIC arguments, in order."""
    return tuple(numpy.uint32(v) for d in divisors for v in fast_divmod_params(d))


@functools.lru_cache(maxsize=1024)
def _output_item_args(g: WindowGeometry):
    """POOL_GEOMETRY + DIVMOD_MAGIC(OH), DIVMOD_MAGIC(OW): the kernels with one thread per output element."""
    return _pool_geometry_args(g) + _divmod_magic(g.OH, g.OW)


def _staged_pieces(g: WindowGeometry) -> int:
    """maxpool2d_bwd_staged's items a plane: STAGED_PIECE-float pieces from the line holding its first element."""
    return cdiv(g.H * g.W + 31, STAGED_PIECE)


@functools.lru_cache(maxsize=1024)
def _staged_args(g: WindowGeometry):
    """maxpool2d_bwd_staged's arguments after the item count: POOL_GEOMETRY, pieces a plane and DIVMOD_MAGIC of
    it, of W, stride_h and stride_w, then classes = cdiv(S, stride_w) (windows that many apart along a row do
    not overlap) and its DIVMOD_MAGIC."""
    pieces, classes = _staged_pieces(g), cdiv(g.S, g.stride_w)
    return (_pool_geometry_args(g) + (numpy.int32(pieces),) + _divmod_magic(pieces, g.W, g.stride_h, g.stride_w)
            + (numpy.int32(classes),) + _divmod_magic(classes))


@functools.lru_cache(maxsize=1024)
def _input_item_args(g: WindowGeometry):
    """POOL_GEOMETRY + DIVMOD_MAGIC of H, W, stride_h, stride_w: the gathers, one thread per input element."""
    return _pool_geometry_args(g) + _divmod_magic(g.H, g.W, g.stride_h, g.stride_w)


@functools.lru_cache(maxsize=1024)
def _launches(g: WindowGeometry, items_per_plane: int, items_per_block: int = THREADS):
    """(first plane, planes, grid, int32 items) of each launch over g's N*C planes."""
    total = g.N * g.C
    per_launch = INT32_MAX // max(g.H * g.W, g.OH * g.OW)
    launches = []
    for first in range(0, total, per_launch):
        planes = min(per_launch, total - first)
        items = planes * items_per_plane
        launches.append((first, planes, (cdiv(items, items_per_block),), numpy.int32(items)))
    return tuple(launches)


def _launch(name: str, g: WindowGeometry, items_per_plane: int, arrays, scalars, items_per_block: int = THREADS,
            **defines):
    """Launch kernels/pool.cu's `name` (compiled with `defines`) over every plane, THREADS threads a block and
    items_per_block items a block (one thread or one warp an item): `arrays` (N, C, ...) offset to each
    launch's first plane, then the item count and `scalars`."""
    kernel = load_kernel("pool", name, **defines)
    total = g.N * g.C
    for first, planes, grid, items in _launches(g, items_per_plane, items_per_block):
        views = arrays if planes == total else [a.reshape(total, -1)[first:first + planes] for a in arrays]
        kernel(grid, (THREADS,), (*views, items, *scalars))


@functools.lru_cache(maxsize=1024)
def _check_plane_fits_int32(g: WindowGeometry) -> None:
    """In-plane coordinates are 32-bit in the kernels, and a launch holds at least one plane: checked
    before any output is allocated (a failed check is not remembered, so it raises every time)."""
    require_int32_indexable("padded x plane", g.padded_hw)


def _disjoint_windows(g: WindowGeometry) -> bool:
    return g.stride_h >= g.R and g.stride_w >= g.S


def _cuda_max_pool2d(x, g: WindowGeometry):
    import cupy

    _check_plane_fits_int32(g)
    x = contiguous(cupy, x)
    choice = autotune.pick("maxpool2d_fwd", _geometry_key(g), lambda: applicable("maxpool2d_fwd", g),
                           lambda variant: variant.launch(g, x))
    return choice.launch(g, x)


def _cuda_max_pool2d_backward(dy, indices, g: WindowGeometry):
    import cupy

    _check_plane_fits_int32(g)
    dy, indices = contiguous(cupy, dy), contiguous(cupy, indices)
    choice = autotune.pick("maxpool2d_bwd", _geometry_key(g), lambda: applicable("maxpool2d_bwd", g),
                           lambda variant: variant.launch(g, dy, indices))
    return choice.launch(g, dy, indices)


def _geometry_key(g: WindowGeometry) -> tuple:
    return (g.N, g.C, g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_top, g.pad_left)


# Up to this many window elements the fixed-window forward applies: its loads live in registers.
FIXED_WINDOW_MAX = 16


@dataclass(frozen=True)
class MaxPoolForward(Variant):
    """max_pool2d's kernel. "generic" (the default): any window, its elements loaded WINDOW_BATCH at a time behind a
    cursor (~20 instructions an element); "fixed": compiled for the window size, every load at a fixed offset, ~10
    instructions an element (benchmarks/NOTES.md, max-pool forward), for windows of up to FIXED_WINDOW_MAX elements."""
    name: str
    op = "maxpool2d_fwd"

    @property
    def algorithm(self) -> str:
        return f"{self.name} window"

    def applies(self, g: WindowGeometry) -> bool:
        return self.name == "generic" or g.R * g.S <= FIXED_WINDOW_MAX

    def plan(self, g: WindowGeometry) -> tuple:
        """(kernel name, compile-time defines) of the launch."""
        if self.name == "fixed":
            return "maxpool2d_fwd_argmax_fixed", {"FIXED_WINDOW_R": g.R, "FIXED_WINDOW_S": g.S}
        return "maxpool2d_fwd_argmax", {}

    def launch(self, g: WindowGeometry, x):
        import cupy

        name, defines = planned(self, g)
        y = nan_filled(cupy, _output_shape(g))
        indices = nan_filled(cupy, _output_shape(g), dtype=numpy.int64)
        _launch(name, g, g.OH * g.OW, (x, y, indices), _output_item_args(g), **defines)
        return y, indices


@dataclass(frozen=True)
class MaxPoolBackward(Variant):
    """max_pool2d_backward's kernel. "cells" (the default where windows are disjoint, stride >= kernel_size): a thread
    an output window writes its cell of dx (4-byte stores stride_w apart, so a 32-byte sector arrives in pieces; no
    index math per element); "gather" (the default otherwise): a thread a dx element reads the windows holding it
    (coalesced stores, ~125 instructions an element); "staged": a warp a 4 KB piece of dx, built in shared memory,
    stored as whole lines of float4s (benchmarks/NOTES.md, max-pool backward). Every variant gives the NumPy path's
    bits, but where windows overlap the staged one adds in another fixed order (within rounding)."""
    name: str
    op = "maxpool2d_bwd"

    @property
    def algorithm(self) -> str:
        return self.name

    def applies(self, g: WindowGeometry) -> bool:
        return self.name != "cells" or _disjoint_windows(g)

    def plan(self, g: WindowGeometry) -> tuple:
        """(kernel name, items a plane, scalar arguments, items a block) of the launch."""
        if self.name == "cells":
            return "maxpool2d_bwd_disjoint", g.OH * g.OW, _output_item_args(g), THREADS
        if self.name == "staged":
            return "maxpool2d_bwd_staged", _staged_pieces(g), _staged_args(g), STAGED_WARPS
        return "maxpool2d_bwd", g.H * g.W, _input_item_args(g), THREADS

    def launch(self, g: WindowGeometry, dy, indices):
        import cupy

        name, items_per_plane, scalars, items_per_block = planned(self, g)
        dx = nan_filled(cupy, g.input_shape)
        _launch(name, g, items_per_plane, (dy, indices, dx), scalars, items_per_block=items_per_block)
        return dx


register(MaxPoolForward("generic"), MaxPoolForward("fixed"))
register(MaxPoolBackward("cells"), MaxPoolBackward("gather"), MaxPoolBackward("staged"))


def max_forward_variants(g: WindowGeometry) -> tuple:
    """The names of the variants max_pool2d may take for g (verified or not), the default first."""
    return tuple(v.name for v in applicable("maxpool2d_fwd", g))


def max_backward_variants(g: WindowGeometry) -> tuple:
    """The names of the variants max_pool2d_backward may take for g (verified or not), the default first."""
    return tuple(v.name for v in applicable("maxpool2d_bwd", g))


def _cuda_sum_pool2d(x, g: WindowGeometry, mode: int):
    import cupy

    _check_plane_fits_int32(g)
    x = contiguous(cupy, x)
    y = nan_filled(cupy, _output_shape(g))
    _launch("sumpool2d_fwd", g, g.OH * g.OW, (x, y), _output_item_args(g) + (numpy.int32(mode),))
    return y


def _cuda_sum_pool2d_backward(dy, g: WindowGeometry, mode: int):
    import cupy

    _check_plane_fits_int32(g)
    dy = contiguous(cupy, dy)
    dx = nan_filled(cupy, g.input_shape)
    _launch("sumpool2d_bwd", g, g.H * g.W, (dy, dx), _input_item_args(g) + (numpy.int32(mode),))
    return dx


# ---- public functions ----------------------------------------------------------------------------
def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """(y, indices): the maximum of each window and its flat h * W + w position in the input plane.
    ceil_mode: the output size rounded up as PyTorch's, the last windows running past the input."""
    xp = float_operands({"x": NCHW}, x=x)
    g = pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode=ceil_mode)
    if xp is numpy:
        return _numpy_max_pool2d(x, g)
    return _cuda_max_pool2d(x, g)


def max_pool2d_backward(dy, indices, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False):
    """dx of x_shape: each dy added at the input position its index names."""
    xp = float_operands({"dy": NCHW}, dy=dy)
    array_module(dy=dy, indices=indices)
    g = pool_geometry(_checked_x_shape(x_shape), kernel_size, stride, padding, x_name="x_shape", ceil_mode=ceil_mode)
    _check_dy(dy, g)
    _check_indices(indices, dy)
    if xp is numpy:
        return _numpy_max_pool2d_backward(dy, indices, g)
    return _cuda_max_pool2d_backward(dy, indices, g)


def _sum_pool2d(x, kernel_size, stride, padding, mode):
    xp = float_operands({"x": NCHW}, x=x)
    g = pool_geometry(x.shape, kernel_size, stride, padding)
    if xp is numpy:
        return _numpy_sum_pool2d(x, g, mode)
    return _cuda_sum_pool2d(x, g, mode)


def _sum_pool2d_backward(dy, x_shape, kernel_size, stride, padding, mode):
    xp = float_operands({"dy": NCHW}, dy=dy)
    g = pool_geometry(_checked_x_shape(x_shape), kernel_size, stride, padding, x_name="x_shape")
    _check_dy(dy, g)
    if xp is numpy:
        return _numpy_sum_pool2d_backward(dy, g, mode)
    return _cuda_sum_pool2d_backward(dy, g, mode)


def sum_pool2d(x, kernel_size, stride=None, padding=0):
    """The sum of each window; padding counts as zero."""
    return _sum_pool2d(x, kernel_size, stride, padding, DIVISOR_ONE)


def sum_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    return _sum_pool2d_backward(dy, x_shape, kernel_size, stride, padding, DIVISOR_ONE)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """The mean of each window: its sum over the window area (count_include_pad) or its in-bounds count."""
    return _sum_pool2d(x, kernel_size, stride, padding, _average_divisor_mode(count_include_pad))


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, count_include_pad=True):
    return _sum_pool2d_backward(dy, x_shape, kernel_size, stride, padding, _average_divisor_mode(count_include_pad))
