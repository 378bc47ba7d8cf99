"""2-D convolution (cross-correlation, as PyTorch and Keras), forward with a fused bias + activation
epilogue, and backward.

Contract:
  conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01) -> y
      x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, OH, OW)
      y[n, k, oh, ow] = act(b[k] + sum_{c, r, s} w[k, c, r, s] * x[n, c, oh*sh - pt + r, ow*sw - pl + s])
      (x is zero outside its bounds). stride: int or pair. padding: int, pair, 'valid' or 'same'
      (geometry: cnn_gpu.ops.geometry.window_geometry; 'same' puts an odd extra row at the bottom/right).
      activation: None, 'relu', 'leaky_relu', 'sigmoid' or 'tanh', applied in the same pass.
  conv2d_backward(dy, x, w, stride=1, padding=0, *, compute_dx=True, compute_dw=True) -> (dx, dw, db)
      dy is the gradient w.r.t. the PRE-activation output (the caller applies the activation's
      backward first); db = sum of dy over N, OH, OW. dx (dw) is None when compute_dx (compute_dw)
      is False and is then not computed: a network's first layer needs no dx.

NumPy path: im2col as a strided view of the padded input (no copy until the GEMM's operand is
formed), one batched matmul forward; backward as two GEMMs over the channel-major im2col matrix and a
col2im that adds one strided slice per kernel tap (R*S vectorised adds; a numba scatter-add measured
no faster). CUDA path: kernels/conv2d.cu, implicit GEMM (conv2d_fwd_bias_act, conv2d_bwd_data,
conv2d_bwd_filter) and deterministic split reductions (conv2d_bwd_bias, conv2d_sum_partials): no
float atomics, so backward is bit-reproducible. Each of the three implicit GEMMs takes its tile sizes
(ConvTile, and for backward-filter also how far its reduction is split) from cnn_gpu.cuda.autotune, which
times the candidates on the first call of a shape; DEFAULT_TILE is used as is with CNN_GPU_AUTOTUNE=0.
For 3×3, stride-1 layers the forward's candidates also include WINOGRAD (kernels/winograd.cu, F(2×2, 3×3):
2.25× fewer FLOPs through three transform passes and 16 products in one launch of kernels/gemm.cu), chosen
only when timing finds it faster.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu.cuda import autotune
from cnn_gpu.cuda.launch import cdiv, grid_stride_blocks, require_int32_indexable, sm_count
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.activation import activation_code, numpy_activation
from cnn_gpu.ops.arrays import contiguous, float_operands, nan_filled
from cnn_gpu.ops.gemm import cuda_gemm_k_slices
from cnn_gpu.ops.geometry import WindowGeometry, window_geometry

_LAYOUTS = {"x": (4, "N, C, H, W"), "w": (4, "K, C, R, S"), "b": (1, "K"), "dy": (4, "N, K, OH, OW")}


# ---- kernel variants (the autotuner's candidates) ------------------------------------------------
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

    @property
    def defines(self) -> dict:
        return {"CONV_BM": self.bm, "CONV_BN": self.bn, "CONV_BK": self.bk, "CONV_TM": self.tm, "CONV_TN": self.tn}


# The kernel file's #ifndef defaults (a test checks), so the CI compile check compiles the default variant.
DEFAULT_TILE = ConvTile(64, 64, 16, 4, 4)
# The autotuner's candidates for each implicit GEMM, the default first; each has a CUDA-vs-NumPy test and
# an NVRTC no-spill check. Bigger tiles for many filters and pixels (more FMAs per shared-memory read);
# 32 x 64 for few filters (first layers' forward); 128 x 32 for backward-filter of few input channels,
# whose GEMM is only C·R·S wide (9 or 25 for a 1-channel first layer).
CONV_TILES = (DEFAULT_TILE, ConvTile(128, 64, 16, 8, 4), ConvTile(64, 128, 16, 4, 8), ConvTile(128, 128, 16, 8, 8),
              ConvTile(32, 64, 16, 4, 4), ConvTile(128, 32, 16, 8, 4))
# Backward-filter splits its reduction until the grid has this many blocks per SM (the first is the default):
# 2 fills the GPU once; 6 also trims the last wave's idle SMs, at the cost of more partials to sum.
FILTER_BLOCKS_PER_SM = (2, 6)


# The forward's Winograd F(2×2, 3×3) variant (kernels/winograd.cu), a candidate beside CONV_TILES for 3×3,
# stride-1 layers only; never the default. Its buffers U, V, M hold 16·(C·K + C·T + K·T) floats (T: 2×2 output
# tiles), 1.4 GB on seed002's conv2; its rounding error is a few times the direct conv's (still within 1e-5).
WINOGRAD = "winograd F(2x2, 3x3)"

# Backward-data's variant for stride-1 layers with pads narrower than the window: dx is the forward conv of dy
# with w's channel axes swapped and its taps reversed (_launch_conv2d_bwd_data_as_forward); never the default.
AS_FORWARD = "backward-data as forward conv"


class FilterPlan(NamedTuple):
    """Backward-filter's variant: tile sizes and the grid size its split reduction aims for."""
    tile: ConvTile
    blocks_per_sm: int


# ---- validation ----------------------------------------------------------------------------------
def _geometry(x, w, stride, padding) -> WindowGeometry:
    """Output geometry, after the checks that need both x and w (ndim and dtype are checked already)."""
    if min(w.shape) < 1:
        raise ValueError(f"w must have positive sizes, got shape {tuple(w.shape)}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"w has {w.shape[1]} input channels (shape {tuple(w.shape)}) but x has {x.shape[1]} (shape {tuple(x.shape)})"
        )
    return window_geometry(x.shape, w.shape[2:], stride, padding, window_name="w")


def _output_shape(g: WindowGeometry, K: int):
    return (g.N, K, g.OH, g.OW)


# ---- NumPy path ----------------------------------------------------------------------------------
def _windows(x, g: WindowGeometry):
    """The view (N, C, OH, OW, R, S) of every window of the zero-padded x (no copy of the windows)."""
    pads = ((0, 0), (0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right))
    padded = numpy.pad(x, pads) if any(sum(p) for p in pads) else x
    view = sliding_window_view(padded, (g.R, g.S), axis=(2, 3))
    return view[:, :, : (g.OH - 1) * g.stride_h + 1 : g.stride_h, : (g.OW - 1) * g.stride_w + 1 : g.stride_w]


def _numpy_conv2d(x, w, b, g: WindowGeometry, activation, slope):
    K = w.shape[0]
    # cols[n] is image n's (C*R*S, OH*OW) im2col matrix; one batched GEMM gives y in (N, K, OH*OW).
    cols = _windows(x, g).transpose(0, 1, 4, 5, 2, 3).reshape(g.N, -1, g.OH * g.OW)
    y = numpy.matmul(w.reshape(K, -1), cols)
    if b is not None:
        y += b[:, None]
    return numpy_activation(y, activation, slope).reshape(_output_shape(g, K))


def _numpy_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool):
    K = w.shape[0]
    # Channel-major im2col: cols (C*R*S, N*OH*OW) and dy as (K, N*OH*OW), so both gradients are one GEMM.
    dy_k = dy.transpose(1, 0, 2, 3).reshape(K, -1)
    dx = dw = None
    if compute_dw:
        cols = _windows(x, g).transpose(1, 4, 5, 0, 2, 3).reshape(-1, g.N * g.OH * g.OW)
        dw = (dy_k @ cols.T).reshape(w.shape)
    if compute_dx:
        dx = _numpy_col2im((w.reshape(K, -1).T @ dy_k).reshape(g.C, g.R, g.S, g.N, g.OH, g.OW), g, x.dtype)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _numpy_col2im(dcols, g: WindowGeometry, dtype):
    """dx (N, C, H, W) from the window gradients dcols (C, R, S, N, OH, OW): tap (r, s) of every window
    lands on a strided slice of the padded input, one add per tap."""
    Hp, Wp = g.padded_hw
    dx_padded = numpy.zeros((g.C, g.N, Hp, Wp), dtype=dtype)
    for r in range(g.R):
        for s in range(g.S):
            dx_padded[:, :, r : r + (g.OH - 1) * g.stride_h + 1 : g.stride_h, s : s + (g.OW - 1) * g.stride_w + 1 : g.stride_w] += dcols[:, r, s]
    dx = dx_padded[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W].transpose(1, 0, 2, 3)
    return numpy.ascontiguousarray(dx)


# ---- CUDA path -----------------------------------------------------------------------------------
_BIAS_THREADS = 256  # conv2d_bwd_bias's block size (its shared buffer is sized for it)


@functools.lru_cache(maxsize=None)
def _kernel(name, tile: ConvTile = DEFAULT_TILE):
    """A kernel of conv2d.cu compiled with tile's sizes (the reductions ignore them: any variant serves)."""
    return load_kernel("conv2d", name, **tile.defines)


def _require_int32_geometry(g: WindowGeometry, K: int) -> None:
    """The kernels index within one image (and the GEMM extents) in 32 bits, across images in 64."""
    require_int32_indexable("one image of x", (g.C, g.H, g.W))
    require_int32_indexable("one zero-padded image of x", (g.C,) + g.padded_hw)  # gather offsets span the padding
    require_int32_indexable("one image of y", (K, g.OH, g.OW))
    require_int32_indexable("w", (K, g.C, g.R, g.S))
    require_int32_indexable("the output pixels N*OH*OW", (g.N, g.OH, g.OW))
    require_int32_indexable("the input pixels N*H*W", (g.N, g.H, g.W))


def _geometry_ints(g: WindowGeometry, K: int) -> tuple:
    """The geometry every implicit-GEMM kernel takes, in its order (also the autotuner's problem key)."""
    return tuple(int(v) for v in (g.N, g.C, g.H, g.W, K, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top, g.pad_left))


class _Problem(NamedTuple):
    """What every launch for one (geometry, K) needs, checked and converted once: the 32-bit indexing
    checks passed, the autotuner's key and the kernels' geometry arguments (numpy.int32s, in order)."""
    g: WindowGeometry
    K: int
    key: tuple
    args: tuple


@functools.lru_cache(maxsize=1024)
def _problem(g: WindowGeometry, K: int) -> _Problem:
    _require_int32_geometry(g, K)
    ints = _geometry_ints(g, K)
    return _Problem(g, K, ints, tuple(numpy.int32(v) for v in ints))


def _tuned(kernel: str, problem: _Problem, candidates, launch):
    """The autotuner's choice among candidates() for one implicit-GEMM kernel on this geometry."""
    return autotune.pick("conv2d", (kernel,) + problem.key, candidates, launch)


def _cuda_conv2d(x, w, b, g: WindowGeometry, activation, slope):
    import cupy

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    problem = _problem(g, w.shape[0])
    launch = functools.partial(_launch_conv2d_fwd, x, w, b, problem, activation_code(activation), slope)
    return launch(_tuned("conv2d_fwd_bias_act", problem, lambda: _forward_candidates(problem.g), launch))


def _forward_candidates(g: WindowGeometry) -> tuple:
    """The forward's autotuner candidates: CONV_TILES (the default first), and WINOGRAD for 3×3 stride-1 windows."""
    winograd = (g.R, g.S, g.stride_h, g.stride_w) == (3, 3, 1, 1)
    return CONV_TILES + (WINOGRAD,) if winograd else CONV_TILES


@functools.lru_cache(maxsize=1024)
def _gemm_grid(gemm_m: int, gemm_n: int, tile: ConvTile, splits: int = 1) -> tuple:
    """Grid of an implicit GEMM whose C is gemm_m x gemm_n: x over BN-wide columns, y over BM-tall rows."""
    return (cdiv(gemm_n, tile.bn), cdiv(gemm_m, tile.bm), splits)


def _launch_conv2d_fwd(x, w, b, problem: _Problem, act: int, slope: float, tile):
    import cupy

    if tile == WINOGRAD:
        return _launch_conv2d_fwd_winograd(x, w, b, problem, act, slope)
    g, K = problem.g, problem.K
    y = nan_filled(cupy, _output_shape(g, K))
    _kernel("conv2d_fwd_bias_act", tile)(
        _gemm_grid(K, g.N * g.OH * g.OW, tile), (tile.threads,),
        (x, w, b, y) + problem.args + (numpy.int32(act), numpy.float32(slope)))
    return y


_WINOGRAD_THREADS = 256  # kernels/winograd.cu's WINOGRAD_THREADS
_WINOGRAD_POINTS = 16    # the 4×4 transformed tile: 16 products


class _WinogradPlan(NamedTuple):
    """The Winograd forward's buffer shapes and its transforms' grids and size arguments (numpy.int32s, in the
    kernels' order) for one _Problem, with the 32-bit checks on U, V and M passed."""
    u_shape: tuple  # (16, C, K)
    v_shape: tuple  # (16, C, T)
    m_shape: tuple  # (16, K, T)
    filter_launch: tuple  # (grid, size arguments)
    input_launch: tuple
    output_launch: tuple  # without act and slope


@functools.lru_cache(maxsize=1024)
def _winograd_plan(problem: _Problem) -> _WinogradPlan:
    g, K = problem.g, problem.K
    TH, TW = cdiv(g.OH, 2), cdiv(g.OW, 2)  # 2×2 output tiles of an image
    T = g.N * TH * TW
    shapes = {"U": (_WINOGRAD_POINTS, g.C, K), "V": (_WINOGRAD_POINTS, g.C, T), "M": (_WINOGRAD_POINTS, K, T)}
    for name, shape in shapes.items():
        require_int32_indexable(f"the Winograd buffer {name}", shape)

    def launch(items, *sizes):
        return (cdiv(items, _WINOGRAD_THREADS),), tuple(numpy.int32(v) for v in sizes)

    return _WinogradPlan(shapes["U"], shapes["V"], shapes["M"], launch(g.C * K, g.C, K),
                         launch(g.C * T, g.C, g.H, g.W, TH, TW, T, g.pad_top, g.pad_left),
                         launch(K * T, K, g.OH, g.OW, TH, TW, T))


def _launch_conv2d_fwd_winograd(x, w, b, problem: _Problem, act: int, slope: float):
    """y by Winograd F(2×2, 3×3): filter and input transforms, the 16 products M[ξ] = U[ξ]ᵀ·V[ξ] as one sliced
    GEMM (U read as the K × 16·C matrix Uᵀ, V as 16·C × T), the output transform with bias and activation."""
    import cupy

    plan = _winograd_plan(problem)  # the 32-bit checks, before any allocation
    K, T = problem.K, plan.v_shape[2]
    block = (_WINOGRAD_THREADS,)
    u = nan_filled(cupy, plan.u_shape)
    grid, sizes = plan.filter_launch
    load_kernel("winograd", "winograd_filter_transform")(grid, block, (w, u) + sizes)
    v = nan_filled(cupy, plan.v_shape)
    grid, sizes = plan.input_launch
    load_kernel("winograd", "winograd_input_transform")(grid, block, (x, v) + sizes)
    m = cuda_gemm_k_slices(u.reshape(-1, K).T, v.reshape(-1, T), _WINOGRAD_POINTS, nan_filled(cupy, plan.m_shape))
    y = nan_filled(cupy, _output_shape(problem.g, K))
    grid, sizes = plan.output_launch
    load_kernel("winograd", "winograd_output_transform")(grid, block, (m, b, y) + sizes + (numpy.int32(act), numpy.float32(slope)))
    return y


@functools.lru_cache(maxsize=1024)
def _split_count(work: int, min_chunk: int, parallel_units: int, blocks_per_sm: int = 2) -> tuple[int, int]:
    """(splits, chunk) for a reduction of `work` items shared by `parallel_units` independent outputs:
    enough splits to give every SM blocks_per_sm blocks, no chunk under min_chunk items, no empty split."""
    splits = max(1, min(cdiv(blocks_per_sm * sm_count(), parallel_units), work // min_chunk))
    chunk = cdiv(cdiv(work, splits), min_chunk) * min_chunk
    return cdiv(work, chunk), chunk


def _sum_partials(partials, out):
    """out = partials.sum(axis=0) in a fixed order (the deterministic second pass)."""
    n = out.size
    _kernel("conv2d_sum_partials")((grid_stride_blocks(n),), (256,), (partials, out, numpy.int64(n), numpy.int32(partials.shape[0])))
    return out


def _launch_conv2d_bwd_data(dy, w, problem: _Problem, tile):
    import cupy

    if tile == AS_FORWARD:
        return _launch_conv2d_bwd_data_as_forward(dy, w, problem)
    g = problem.g
    dx = nan_filled(cupy, g.input_shape)
    _kernel("conv2d_bwd_data", tile)(_gemm_grid(g.C, g.N * g.H * g.W, tile), (tile.threads,), (dy, w, dx) + problem.args)
    return dx


def _backward_data_candidates(g: WindowGeometry) -> tuple:
    """Backward-data's autotuner candidates: CONV_TILES (the default first), and AS_FORWARD when dx is a forward
    convolution of dy: stride 1 and no pad as wide as the window (the flipped window's pads R−1−p are then ≥ 0)."""
    as_forward = (g.stride_h, g.stride_w) == (1, 1) and max(g.pad_top, g.pad_bottom) < g.R and max(g.pad_left, g.pad_right) < g.S
    return CONV_TILES + (AS_FORWARD,) if as_forward else CONV_TILES


@functools.lru_cache(maxsize=1024)
def _as_forward_geometry(g: WindowGeometry, K: int) -> WindowGeometry:
    """dx's geometry as a forward conv: dy (N, K, OH, OW) under an R × S window padded R−1−p on each side (p this
    layer's pad on that side) has output H × W, since OH = H + pt + pb − R + 1."""
    return WindowGeometry(g.N, K, g.OH, g.OW, g.R, g.S, 1, 1, g.R - 1 - g.pad_top, g.R - 1 - g.pad_bottom,
                          g.S - 1 - g.pad_left, g.S - 1 - g.pad_right, g.H, g.W)


def _flipped_filters(xp, w):
    """w (K, C, R, S) as dx's forward filters: (C, K, R, S) with every tap reversed, w'[c, k, r, s] = w[k, c, R−1−r, S−1−s]."""
    return contiguous(xp, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _launch_conv2d_bwd_data_as_forward(dy, w, problem: _Problem):
    """dx of a stride-1 layer as conv2d(dy, flipped w) under _as_forward_geometry: the forward's own autotuned
    candidates (Winograd for 3×3) then serve backward-data, e.g. a valid 3×3 layer's full convolution."""
    import cupy

    return _cuda_conv2d(dy, _flipped_filters(cupy, w), None, _as_forward_geometry(problem.g, problem.K), None, 0.0)


def _launch_conv2d_bwd_filter(dy, x, w_shape, problem: _Problem, plan: FilterPlan):
    """dw, its N*OH*OW reduction split so that small filters still fill the GPU: partials, then a fixed-order sum."""
    import cupy

    g, K, tile = problem.g, problem.K, plan.tile
    crs = g.C * g.R * g.S
    tiles = cdiv(K, tile.bm) * cdiv(crs, tile.bn)
    splits, chunk = _split_count(g.N * g.OH * g.OW, 8 * tile.bk, tiles, plan.blocks_per_sm)
    dw = nan_filled(cupy, w_shape)
    partials = dw if splits == 1 else nan_filled(cupy, (splits,) + tuple(w_shape))
    _kernel("conv2d_bwd_filter", tile)(
        _gemm_grid(K, crs, tile, splits), (tile.threads,), (dy, x, partials) + problem.args + (numpy.int32(chunk),))
    if splits > 1:
        _sum_partials(partials, dw)
    return dw


def _filter_plans():
    return [FilterPlan(tile, blocks) for blocks in FILTER_BLOCKS_PER_SM for tile in CONV_TILES]


@functools.lru_cache(maxsize=1024)
def _bias_launch(K: int, pixels_per_image: int, pixels: int) -> tuple:
    """(splits, the grid, the kernel's scalar arguments) of db's split reduction."""
    splits, chunk = _split_count(pixels, 16 * _BIAS_THREADS, K)
    return splits, (K, splits), tuple(numpy.int32(v) for v in (K, pixels_per_image, pixels, chunk))


def _cuda_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool):
    import cupy

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    K = w.shape[0]
    problem = _problem(g, K)
    dx = dw = None
    if compute_dx:
        launch = functools.partial(_launch_conv2d_bwd_data, dy, w, problem)
        dx = launch(_tuned("conv2d_bwd_data", problem, lambda: _backward_data_candidates(problem.g), launch))
    if compute_dw:
        launch = functools.partial(_launch_conv2d_bwd_filter, dy, x, w.shape, problem)
        dw = launch(_tuned("conv2d_bwd_filter", problem, _filter_plans, launch))

    splits, grid, args = _bias_launch(K, g.OH * g.OW, g.N * g.OH * g.OW)
    db = nan_filled(cupy, (K,))
    partials = db if splits == 1 else nan_filled(cupy, (splits, K))
    _kernel("conv2d_bwd_bias")(grid, (_BIAS_THREADS,), (dy, partials) + args)
    if splits > 1:
        _sum_partials(partials, db)
    return dx, dw, db


# ---- public functions ----------------------------------------------------------------------------
def conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b), (N, C, H, W) x (K, C, R, S) -> (N, K, OH, OW). See the module docstring."""
    xp = float_operands(_LAYOUTS, x=x, w=w, b=b)
    g = _geometry(x, w, stride, padding)
    K = w.shape[0]
    if b is not None and tuple(b.shape) != (K,):
        raise ValueError(f"b must have shape (K,) = ({K},) for w of shape {tuple(w.shape)}, got shape {tuple(b.shape)}")
    activation_code(activation)  # ValueError for an unknown name
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope!r}")
    if xp is numpy:
        return _numpy_conv2d(x, w, b, g, activation, negative_slope)
    return _cuda_conv2d(x, w, b, g, activation, negative_slope)


def conv2d_backward(dy, x, w, stride=1, padding=0, *, compute_dx=True, compute_dw=True):
    """(dx, dw, db) from dy, the gradient w.r.t. conv2d's pre-activation output; dx / dw are None (and not
    computed) when compute_dx / compute_dw is False."""
    xp = float_operands(_LAYOUTS, dy=dy, x=x, w=w)
    g = _geometry(x, w, stride, padding)
    expected = _output_shape(g, w.shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"dy must have the conv2d output shape {expected} for x of shape {tuple(x.shape)}, "
            f"w of shape {tuple(w.shape)}, stride {stride!r}, padding {padding!r}; got shape {tuple(dy.shape)}"
        )
    if xp is numpy:
        return _numpy_conv2d_backward(dy, x, w, g, compute_dx, compute_dw)
    return _cuda_conv2d_backward(dy, x, w, g, compute_dx, compute_dw)
