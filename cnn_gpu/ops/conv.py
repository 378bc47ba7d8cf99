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
no faster).

CUDA path: kernels/conv2d.cu, implicit GEMM (conv2d_fwd_bias_act, conv2d_bwd_data, conv2d_bwd_filter) and
deterministic split reductions (conv2d_bwd_bias, conv2d_sum_partials): no float atomics, so backward is
bit-reproducible. Each of the three has variants; cnn_gpu.cuda.autotune times them on the first call of a
shape and keeps the fastest (CNN_GPU_AUTOTUNE=0 runs the first of each list, DEFAULT_TILE):
  forward          CONV_TILES; SplitPlan(tile, blocks_per_sm): C·R·S split over blocks, offered where the
                   output tiles cannot fill the GPU; for 3×3 stride-1 layers WINOGRAD (F(2×2, 3×3),
                   kernels/winograd.cu: 2.25× fewer multiplies, the products one launch of kernels/gemm.cu)
                   and WINOGRAD_4X4 (F(4×4, 3×3): 4× fewer, ~5× F(2×2)'s rounding error); for K <= 8 filters
                   FEW_FILTERS (kernels/conv2d_direct.cu's conv2d_fwd_few_filters, compiled per layer shape: tiles of
                   output pixels × all K filters, where the GEMM's tiles are 32-128 filters tall) and
                   SplitPlan(FEW_FILTERS, ...): its C split over blocks where its tiles cannot fill the GPU
  backward-data    CONV_TILES; for stride-1 layers with pads narrower than the window AS_FORWARD: dx as the
                   forward conv of dy with the filters flipped, which then gets the forward's variants
  backward-filter  SplitPlan(tile, blocks_per_sm): N·OH·OW split; for 3×3 stride-1 layers SplitPlan(WINOGRAD, ...)
                   and SplitPlan(WINOGRAD_4X4, ...): dy and input transforms, the 16 (36) products over chunks of
                   the 2×2 (4×4) tiles, a filter-gradient transform summing the chunks in order; for first layers
                   (C·R·S <= 32) SplitPlan(FEW_CHANNELS, ...): kernels/conv2d_direct.cu's
                   conv2d_bwd_filter_few_channels, compiled per layer shape, streaming dy once
A Winograd variant is offered only where its buffers fit 32-bit indexing and _WINOGRAD_MAX_BYTES.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu.cuda import autotune
from cnn_gpu.cuda.launch import cdiv, grid_stride_blocks, require_int32_indexable, sm_count
from cnn_gpu.cuda.loader import load_kernel
from cnn_gpu.ops.activation import activation_code, checked_slope, numpy_activation
from cnn_gpu.ops.arrays import contiguous, float_operands, nan_filled
from cnn_gpu.ops.gemm import MAX_GRID_Y, cuda_gemm_k_slices, plan_gemm
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
# A SplitPlan splits its reduction until the grid has this many blocks per SM (backward-filter's default is the
# first): 2 fills the GPU once; 6 also trims the last wave's idle SMs, at the cost of more partials to sum.
SPLIT_BLOCKS_PER_SM = (2, 6)


# The Winograd F(2×2, 3×3) variant (kernels/winograd.cu) of the forward and of backward-filter, a candidate beside
# CONV_TILES for 3×3, stride-1 layers only; never the default. The forward's buffers U, V, M hold
# 16·(C·K + C·T + K·T) floats (T: 2×2 output tiles), 1.4 GB on seed002's conv2, backward-filter's about
# 16·(K + C)·T; its rounding error is a few times the direct conv's (still within 1e-5).
WINOGRAD = "winograd F(2x2, 3x3)"
# The Winograd F(4×4, 3×3) variant of the forward and of backward-filter, beside WINOGRAD for the same layers, never
# the default: 36 products per 4×4 outputs (2.25 an output against F(2×2)'s 4), the forward's buffers
# 36·(C·K + C·T + K·T) floats (T: 4×4 tiles), about 0.56× F(2×2)'s; its rounding error is 6-13× the direct conv's
# (≤ 4.2e-6 at 512 channels; backward-filter's ≤ 6.5e-6 at N 128, near the direct one's: winograd.cu's header).
WINOGRAD_4X4 = "winograd F(4x4, 3x3)"

# Backward-data's variant for stride-1 layers with pads narrower than the window: dx is the forward conv of dy
# with w's channel axes swapped and its taps reversed (_launch_conv2d_bwd_data_as_forward); never the default.
AS_FORWARD = "backward-data as forward conv"

# Backward-filter's variant for layers with few input channels (C·R·S <= 32 and its values fit a thread's registers:
# _few_channels_filters): conv2d_bwd_filter_few_channels, compiled per layer shape; never the default.
FEW_CHANNELS = "few input channels"

# The forward's variant for layers with few filters (K <= _FEW_FILTERS_MAX_K; _few_filters_tile): conv2d_fwd_few_filters,
# compiled per layer shape, never the default. Backward-data of a first layer (C = 1, 3) through AS_FORWARD is one.
FEW_FILTERS = "few output channels"


class SplitPlan(NamedTuple):
    """A variant whose reduction is split over blocks (backward-filter's N·OH·OW, a small forward's C·R·S): tile
    sizes (or WINOGRAD, WINOGRAD_4X4 or FEW_CHANNELS, for backward-filter) and the grid size the split aims for, in
    blocks an SM."""
    tile: ConvTile | str
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
    checks passed, the autotuner's key, the kernels' geometry arguments (numpy.int32s, in order), x's and y's shapes."""
    g: WindowGeometry
    K: int
    key: tuple
    args: tuple
    x_shape: tuple
    y_shape: tuple


@functools.lru_cache(maxsize=1024)
def _problem(g: WindowGeometry, K: int) -> _Problem:
    _require_int32_geometry(g, K)
    ints = _geometry_ints(g, K)
    return _Problem(g, K, ints, tuple(numpy.int32(v) for v in ints), g.input_shape, _output_shape(g, K))


class _Launch(NamedTuple):
    """One direct convolution kernel (conv2d.cu, conv2d_direct.cu) worked out for a problem and variant, so that a
    call pays one cache lookup: the compiled kernel, grid, block, the scalar arguments after its arrays (numpy
    scalars, in order) and the number of partials its split reduction writes (1: it writes the output directly)."""
    kernel: object
    grid: tuple
    block: tuple
    scalars: tuple
    splits: int


def _run(launch: _Launch, inputs: tuple, out, *epilogue):
    """out from launch on the input arrays: written directly, or (a split reduction) as partials that
    _sum_partials(partials, out, *epilogue) then adds in a fixed order."""
    import cupy

    partials = out if launch.splits == 1 else nan_filled(cupy, (launch.splits,) + out.shape)
    launch.kernel(launch.grid, launch.block, inputs + (partials,) + launch.scalars)
    if launch.splits > 1:
        _sum_partials(partials, out, *epilogue)
    return out


def _tuned(kernel: str, problem: _Problem, candidates, launch):
    """The autotuner's choice among candidates() for one implicit-GEMM kernel on this geometry."""
    return autotune.pick("conv2d", (kernel,) + problem.key, candidates, launch)


def _cuda_conv2d(x, w, b, g: WindowGeometry, act: int, slope: float):
    import cupy

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    problem = _problem(g, w.shape[0])
    launch = functools.partial(_launch_conv2d_fwd, x, w, b, problem, act, slope)
    return launch(_tuned("conv2d_fwd_bias_act", problem, lambda: _forward_candidates(problem) + _forward_split_plans(problem), launch))


def _winograd_applies(g: WindowGeometry) -> bool:
    """Winograd F(m×m, 3×3) computes this layer: a 3×3 window at stride 1 (any padding)."""
    return (g.R, g.S, g.stride_h, g.stride_w) == (3, 3, 1, 1)


def _forward_candidates(problem: _Problem) -> tuple:
    """The forward's autotuner candidates but the split ones: CONV_TILES (the default first), WINOGRAD and
    WINOGRAD_4X4 for 3×3 stride-1 windows, each where its buffers fit (_winograd_plan), and FEW_FILTERS where the
    layer has few filters (_few_filters_tile)."""
    candidates = CONV_TILES
    if _winograd_applies(problem.g):
        candidates += tuple(v for v in _WINOGRAD_FORWARD_SIZES if _fits(_winograd_plan, problem, v))
    if _few_filters_tile(problem.g, problem.K):
        candidates += (FEW_FILTERS,)
    return candidates


# A split forward keeps at least this many BK-steps of the C·R·S reduction a split.
FORWARD_MIN_CHUNK_STEPS = 4


@functools.lru_cache(maxsize=1024)
def _forward_split(problem: _Problem, variant) -> tuple:
    """(tile, splits, chunk) of a direct forward variant: a ConvTile runs unsplit (one chunk of all C·R·S); a
    SplitPlan splits C·R·S into chunks of at least FORWARD_MIN_CHUNK_STEPS steps until its grid has its blocks an SM."""
    g, K = problem.g, problem.K
    crs = g.C * g.R * g.S
    if isinstance(variant, ConvTile):
        return variant, 1, crs
    tile = variant.tile
    tiles = cdiv(K, tile.bm) * cdiv(g.N * g.OH * g.OW, tile.bn)
    return (tile,) + _split_count(crs, FORWARD_MIN_CHUNK_STEPS * tile.bk, tiles, variant.blocks_per_sm)


def _forward_split_plans(problem: _Problem) -> tuple:
    """The forward's split-reduction candidates: each CONV_TILES, and FEW_FILTERS where it applies, at each
    SPLIT_BLOCKS_PER_SM whose grid would otherwise leave SMs idle (split at least in two), one per distinct split."""
    plans = {}
    for blocks in SPLIT_BLOCKS_PER_SM:
        for tile in CONV_TILES:
            plan = SplitPlan(tile, blocks)
            _, splits, _ = _forward_split(problem, plan)
            if splits > 1:
                plans.setdefault((tile, splits), plan)
        if _few_filters_tile(problem.g, problem.K):
            plan = SplitPlan(FEW_FILTERS, blocks)
            splits = _few_filters_plan(problem, plan).splits
            if splits > 1:
                plans.setdefault((FEW_FILTERS, splits), plan)
    return tuple(plans.values())


@functools.lru_cache(maxsize=1024)
def _gemm_grid(gemm_m: int, gemm_n: int, tile: ConvTile, splits: int = 1) -> tuple:
    """Grid of an implicit GEMM whose C is gemm_m x gemm_n: x over BN-wide columns, y over BM-tall rows."""
    return (cdiv(gemm_n, tile.bn), cdiv(gemm_m, tile.bm), splits)


def _launch_conv2d_fwd(x, w, b, problem: _Problem, act: int, slope: float, variant):
    """y for one forward candidate: WINOGRAD or WINOGRAD_4X4, FEW_FILTERS or a SplitPlan of it, a ConvTile, or a
    SplitPlan of one (C·R·S split: partials, then a fixed-order sum that adds the bias and applies the activation)."""
    import cupy

    if variant in _WINOGRAD_FORWARD_SIZES:
        return _launch_conv2d_fwd_winograd(x, w, b, problem, act, slope, variant)
    if variant == FEW_FILTERS or isinstance(variant, SplitPlan) and variant.tile == FEW_FILTERS:
        return _launch_conv2d_fwd_few_filters(x, w, b, problem, act, slope, variant)
    y = nan_filled(cupy, problem.y_shape)
    return _run(_direct_forward_launch(problem, variant, act, slope), (x, w, b), y, b, problem.K, problem.g.OH * problem.g.OW,
                act, slope)


@functools.lru_cache(maxsize=1024)
def _direct_forward_launch(problem: _Problem, variant, act: int, slope: float) -> _Launch:
    """conv2d_fwd_bias_act for a ConvTile or a SplitPlan of one (_forward_split)."""
    g = problem.g
    tile, splits, chunk = _forward_split(problem, variant)
    return _Launch(_kernel("conv2d_fwd_bias_act", tile), _gemm_grid(problem.K, g.N * g.OH * g.OW, tile, splits),
                   (tile.threads,), problem.args + (numpy.int32(act), numpy.float32(slope), numpy.int32(chunk)), splits)


_WINOGRAD_THREADS = 256  # kernels/winograd.cu's WINOGRAD_THREADS


# A Winograd variant's buffers together take at most this many bytes. They are always several times x and y
# (F(2×2): 16 floats per 2×2 tile), so no ratio to those sizes can exclude a layer whose tensors alone are
# large: seed002's conv1 (C 1 → K 512 on 100², N 128) would need a 10 GB backward-filter DY and a 5.9 GB
# F(4×4) forward M; its conv2 at N 128 takes 1.4 GB (F(2×2) forward, backward-filter), at N 256 2.9 GB.
_WINOGRAD_MAX_BYTES = 4 << 30


def _require_winograd_buffers(shapes: dict, variant: str) -> None:
    """ValueError unless every buffer {name: shape} is 32-bit indexable and together they fit _WINOGRAD_MAX_BYTES."""
    for name, shape in shapes.items():
        require_int32_indexable(f"the Winograd buffer {name} of {variant}", shape)
    nbytes = 4 * sum(int(numpy.prod(shape)) for shape in shapes.values())
    if nbytes > _WINOGRAD_MAX_BYTES:
        raise ValueError(f"the Winograd buffers of {variant} {shapes} take {nbytes} bytes, more than "
                         f"_WINOGRAD_MAX_BYTES ({_WINOGRAD_MAX_BYTES})")


def _fits(plan, *args) -> bool:
    """plan(*args) passes its buffer checks: a Winograd candidate is offered only then."""
    try:
        plan(*args)
    except ValueError:
        return False
    return True


class _WinogradSize(NamedTuple):
    """A forward Winograd variant's F(m×m, 3×3): the output tile's side and its kernels' names in winograd.cu."""
    m: int
    kernel_prefix: str

    @property
    def points(self) -> int:
        """α² = (m + 2)²: the transformed tile's points, one product each."""
        return (self.m + 2) ** 2


# The forward's Winograd candidates, in the order _forward_candidates offers them.
_WINOGRAD_FORWARD_SIZES = {WINOGRAD: _WinogradSize(2, "winograd_"), WINOGRAD_4X4: _WinogradSize(4, "winograd4x4_")}


class _WinogradPlan(NamedTuple):
    """A Winograd forward's kernels, buffer shapes and its transforms' grids and size arguments (numpy.int32s, in
    the kernels' order) for one _Problem, with the 32-bit checks on U, V and M passed."""
    kernels: tuple  # winograd.cu's filter, input and output transforms of this size
    u_shape: tuple  # (α², C, K)
    v_shape: tuple  # (α², C, T)
    m_shape: tuple  # (α², K, T)
    filter_launch: tuple  # (grid, size arguments)
    input_launch: tuple
    output_launch: tuple  # without act and slope


@functools.lru_cache(maxsize=1024)
def _winograd_plan(problem: _Problem, variant: str) -> _WinogradPlan:
    g, K = problem.g, problem.K
    size = _WINOGRAD_FORWARD_SIZES[variant]
    TH, TW = cdiv(g.OH, size.m), cdiv(g.OW, size.m)  # m×m output tiles of an image
    T = g.N * TH * TW
    shapes = {"U": (size.points, g.C, K), "V": (size.points, g.C, T), "M": (size.points, K, T)}
    _require_winograd_buffers(shapes, variant)
    kernels = tuple(size.kernel_prefix + step + "_transform" for step in ("filter", "input", "output"))
    return _WinogradPlan(kernels, shapes["U"], shapes["V"], shapes["M"], _winograd_launch(g.C * K, g.C, K),
                         _winograd_launch(g.C * T, g.C, g.H, g.W, TH, TW, T, T, T, g.C * T, g.pad_top, g.pad_left),
                         _winograd_launch(K * T, K, g.OH, g.OW, TH, TW, T))


def _winograd_launch(items: int, *sizes) -> tuple:
    """(grid, size arguments as numpy.int32s) of a winograd.cu transform over `items` items."""
    return (cdiv(items, _WINOGRAD_THREADS),), tuple(numpy.int32(v) for v in sizes)


def _launch_conv2d_fwd_winograd(x, w, b, problem: _Problem, act: int, slope: float, variant: str):
    """y by Winograd F(m×m, 3×3) (variant WINOGRAD: m = 2, WINOGRAD_4X4: 4): filter and input transforms, the α²
    products M[ξ] = U[ξ]ᵀ·V[ξ] as one sliced GEMM (U read as the K × α²·C matrix Uᵀ, V as α²·C × T), the output
    transform with bias and activation."""
    import cupy

    plan = _winograd_plan(problem, variant)  # the 32-bit checks, before any allocation
    K, T, points = problem.K, plan.v_shape[2], plan.v_shape[0]
    filter_kernel, input_kernel, output_kernel = (load_kernel("winograd", name) for name in plan.kernels)
    block = (_WINOGRAD_THREADS,)
    u = nan_filled(cupy, plan.u_shape)
    grid, sizes = plan.filter_launch
    filter_kernel(grid, block, (w, u) + sizes)
    v = nan_filled(cupy, plan.v_shape)
    grid, sizes = plan.input_launch
    input_kernel(grid, block, (x, v) + sizes)
    m = cuda_gemm_k_slices(u.reshape(-1, K).T, v.reshape(-1, T), points, nan_filled(cupy, plan.m_shape))
    y = nan_filled(cupy, _output_shape(problem.g, K))
    grid, sizes = plan.output_launch
    output_kernel(grid, block, (m, b, y) + sizes + (numpy.int32(act), numpy.float32(slope)))
    return y


# conv2d_fwd_few_filters's constants (kernels/conv2d_direct.cu's FK_*; a test compares them).
_FEW_FILTERS_MAX_K = 8
_FEW_FILTERS_STRIP = 4           # output columns a thread
_FEW_FILTERS_MAX_THREADS = 128
_FEW_FILTERS_MAX_LOADS = 24      # x elements a thread stages a channel
_FEW_FILTERS_MAX_WEIGHTS = 72    # K·R·S, held in registers
_FEW_FILTERS_MAX_SEGMENT = 16    # x values of one row under a thread's 4 windows, rounded up to float4s
_FEW_FILTERS_MAX_ACCUMULATORS = 32  # a thread's u·4·K outputs, held in registers
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


@functools.lru_cache(maxsize=1024)
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
    """conv2d_fwd_few_filters on one _Problem and variant: its FEWK_* defines ((name, value) pairs), grid, block,
    split count and scalar arguments but act and slope (numpy.int32s, in the kernel's order)."""
    defines: tuple
    grid: tuple
    block: tuple
    splits: int
    args: tuple


@functools.lru_cache(maxsize=1024)
def _few_filters_plan(problem: _Problem, variant) -> _FewFiltersPlan:
    """FEW_FILTERS: a block a tile of _few_filters_tile and image, over all C channels; SplitPlan(FEW_FILTERS,
    blocks_per_sm): C split in chunks of at least _FEW_FILTERS_MIN_CHUNK until the grid gives every SM blocks_per_sm
    blocks. ValueError where the kernel does not apply."""
    g, K = problem.g, problem.K
    tile = _few_filters_tile(g, K)
    if tile is None:
        raise ValueError(f"conv2d_fwd_few_filters does not apply to K = {K} filters of {g.R}×{g.S} at stride "
                         f"{g.stride_h}×{g.stride_w} (output {g.OH}×{g.OW})")
    tiles_h, tiles_w = cdiv(g.OH, tile.by * tile.u), cdiv(g.OW, tile.bx * _FEW_FILTERS_STRIP)
    blocks = g.N * tiles_h * tiles_w
    splits, chunk = (1, g.C) if variant == FEW_FILTERS else _split_count(g.C, _FEW_FILTERS_MIN_CHUNK, blocks,
                                                                        variant.blocks_per_sm)
    defines = (("FEWK_K", K), ("FEWK_R", g.R), ("FEWK_S", g.S), ("FEWK_SH", g.stride_h), ("FEWK_SW", g.stride_w),
               ("FEWK_BX", tile.bx), ("FEWK_BY", tile.by), ("FEWK_U", tile.u))
    args = tuple(numpy.int32(v) for v in (g.N, g.C, g.H, g.W, g.OH, g.OW, g.pad_top, g.pad_left, tiles_w, tiles_h, chunk))
    return _FewFiltersPlan(defines, (blocks, splits), (tile.threads,), splits, args)


def _launch_conv2d_fwd_few_filters(x, w, b, problem: _Problem, act: int, slope: float, variant):
    """y by conv2d_fwd_few_filters, bias and activation in its epilogue; split (SplitPlan(FEW_FILTERS, ...)): partials
    over the channel chunks, then the fixed-order sum that adds the bias and applies the activation."""
    import cupy

    launch = _few_filters_launch(problem, variant, act, slope)  # the checks, before any allocation
    return _run(launch, (x, w, b if launch.splits == 1 else None), nan_filled(cupy, problem.y_shape),
                b, problem.K, problem.g.OH * problem.g.OW, act, slope)


@functools.lru_cache(maxsize=1024)
def _few_filters_launch(problem: _Problem, variant, act: int, slope: float) -> _Launch:
    """conv2d_fwd_few_filters for _few_filters_plan; split, its partials carry no bias and no activation."""
    plan = _few_filters_plan(problem, variant)
    if plan.splits > 1:
        act, slope = activation_code(None), 0.0
    return _Launch(load_kernel("conv2d_direct", "conv2d_fwd_few_filters", **dict(plan.defines)), plan.grid, plan.block,
                   plan.args + (numpy.int32(act), numpy.float32(slope)), plan.splits)


@functools.lru_cache(maxsize=1024)
def _split_count(work: int, min_chunk: int, parallel_units: int, blocks_per_sm: int = 2) -> tuple[int, int]:
    """(splits, chunk) for a reduction of `work` items shared by `parallel_units` independent outputs:
    enough splits to give every SM blocks_per_sm blocks, no chunk under min_chunk items, no empty split."""
    splits = max(1, min(cdiv(blocks_per_sm * sm_count(), parallel_units), work // min_chunk))
    chunk = cdiv(cdiv(work, splits), min_chunk) * min_chunk
    return cdiv(work, chunk), chunk


def _sum_partials(partials, out, bias=None, K: int = 1, pixels: int = 1, act: int = 0, slope: float = 0.0):
    """out = act(partials.sum(axis=0) + bias) in a fixed order (the deterministic second pass); out is NCHW-like
    with K channels of `pixels` pixels when bias is given (element i takes bias[(i // pixels) % K])."""
    grid, scalars = _sum_partials_launch(out.size, partials.shape[0], K, pixels, act, slope)
    _kernel("conv2d_sum_partials")(grid, (256,), (partials, bias, out) + scalars)
    return out


@functools.lru_cache(maxsize=1024)
def _sum_partials_launch(n: int, splits: int, K: int, pixels: int, act: int, slope: float) -> tuple:
    """(grid, scalar arguments) of conv2d_sum_partials, worked out once per shape: it runs on every backward."""
    scalars = (numpy.int64(n), numpy.int32(splits), numpy.int32(K), numpy.int32(pixels), numpy.int32(act), numpy.float32(slope))
    return (grid_stride_blocks(n),), scalars


def _launch_conv2d_bwd_data(dy, w, problem: _Problem, tile):
    import cupy

    if tile == AS_FORWARD:
        return _launch_conv2d_bwd_data_as_forward(dy, w, problem)
    return _run(_direct_data_launch(problem, tile), (dy, w), nan_filled(cupy, problem.x_shape))


@functools.lru_cache(maxsize=1024)
def _direct_data_launch(problem: _Problem, tile: ConvTile) -> _Launch:
    """conv2d_bwd_data for a ConvTile: the implicit GEMM over dx's C × N*H*W, unsplit."""
    g = problem.g
    return _Launch(_kernel("conv2d_bwd_data", tile), _gemm_grid(g.C, g.N * g.H * g.W, tile), (tile.threads,), problem.args, 1)


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

    return _cuda_conv2d(dy, _flipped_filters(cupy, w), None, _as_forward_geometry(problem.g, problem.K),
                        activation_code(None), 0.0)


def _launch_conv2d_bwd_filter(dy, x, w_shape, problem: _Problem, plan: SplitPlan):
    """dw, its N*OH*OW reduction split so that small filters still fill the GPU: partials, then a fixed-order sum."""
    import cupy

    if plan.tile in _WINOGRAD_FILTER_SIZES:
        return _launch_conv2d_bwd_filter_winograd(dy, x, w_shape, problem, plan)
    if plan.tile == FEW_CHANNELS:
        return _launch_conv2d_bwd_filter_few_channels(dy, x, w_shape, problem, plan.blocks_per_sm)
    return _run(_direct_filter_launch(problem, plan), (dy, x), nan_filled(cupy, w_shape))


@functools.lru_cache(maxsize=1024)
def _direct_filter_launch(problem: _Problem, plan: SplitPlan) -> _Launch:
    """conv2d_bwd_filter for a SplitPlan of a ConvTile: the N*OH*OW reduction split until the grid fills the GPU."""
    g, K, tile = problem.g, problem.K, plan.tile
    crs = g.C * g.R * g.S
    tiles = cdiv(K, tile.bm) * cdiv(crs, tile.bn)
    splits, chunk = _split_count(g.N * g.OH * g.OW, 8 * tile.bk, tiles, plan.blocks_per_sm)
    return _Launch(_kernel("conv2d_bwd_filter", tile), _gemm_grid(K, crs, tile, splits), (tile.threads,),
                   problem.args + (numpy.int32(chunk),), splits)


_WINOGRAD_MIN_CHUNK = 64    # tiles: no chunk of the reduction is shorter (unless T is)
_WINOGRAD_CHUNK_ALIGN = 16  # chunks of whole 16-deep gemm slabs: float4-aligned, gemm.cu's interior path


def _winograd_chunks(T: int, wanted: int) -> tuple[int, int]:
    """(S, Tc): T tiles as S chunks of Tc, about `wanted` of them: Tc a multiple of _WINOGRAD_CHUNK_ALIGN, none
    under _WINOGRAD_MIN_CHUNK tiles (but the one chunk of a shorter T), none empty; the last padded to Tc."""
    chunks = max(1, min(wanted, T // _WINOGRAD_MIN_CHUNK))
    chunk = cdiv(cdiv(T, chunks), _WINOGRAD_CHUNK_ALIGN) * _WINOGRAD_CHUNK_ALIGN
    return cdiv(T, chunk), chunk


class _WinogradFilterSize(NamedTuple):
    """A backward-filter Winograd variant: its F(m×m, 3×3), and the most tiles a chunk of its reduction may hold (0:
    no limit but the grid's), a bound on the length of its products' running float32 sums."""
    size: _WinogradSize
    max_chunk: int


# Backward-filter's Winograd candidates, in the order _filter_plans offers them. F(4×4)'s error grows with the chunk
# length: 1.7e-5 for seed002 conv2 at N 128 in the one chunk of 8192 tiles its grid asks for; chunks of at most
# 1024 keep every layer of winograd.cu's table at ≤ 6.5e-6 (the direct kernel's own reaches 6.2e-6 there).
_WINOGRAD_FILTER_SIZES = {WINOGRAD: _WinogradFilterSize(_WinogradSize(2, "winograd_"), 0),
                          WINOGRAD_4X4: _WinogradFilterSize(_WinogradSize(4, "winograd4x4_"), 1024)}


class _WinogradFilterPlan(NamedTuple):
    """A Winograd backward-filter's kernels, buffer shapes and its transforms' grids and size arguments
    (numpy.int32s, in the kernels' order) for one _Problem and grid target, with the 32-bit and size checks passed."""
    kernels: tuple    # winograd.cu's dy, input and filter-gradient transforms of this size
    dy_shape: tuple   # (K, α², S·Tc)
    v_shape: tuple    # (C, α², S·Tc)
    p_shape: tuple    # (α²·S, K, C)
    dy_launch: tuple  # (grid, size arguments)
    input_launch: tuple
    filter_grad_launch: tuple


@functools.lru_cache(maxsize=1024)
def _winograd_filter_plan(problem: _Problem, variant: str, blocks_per_sm: int, sms: int) -> _WinogradFilterPlan:
    """Backward-filter by `variant` (WINOGRAD or WINOGRAD_4X4): the reduction over the T tiles in S chunks, enough
    that the sliced GEMM (α²·S slices of its default tile configuration's K × C tiles) gives each of sms SMs
    blocks_per_sm blocks, and none longer than the variant's max_chunk; ValueError when a buffer is past 32-bit
    indexing, all of them past _WINOGRAD_MAX_BYTES, or the α²·S slices past the gemm grid's z extent (as y's)."""
    g, K = problem.g, problem.K
    size, max_chunk = _WINOGRAD_FILTER_SIZES[variant]
    TH, TW = cdiv(g.OH, size.m), cdiv(g.OW, size.m)  # m×m output tiles of an image
    T = g.N * TH * TW
    config = plan_gemm(K, g.C, size.points * T, sms).config
    gemm_tiles = cdiv(K, config.tile_m) * cdiv(g.C, config.tile_n)
    wanted = cdiv(blocks_per_sm * sms, size.points * gemm_tiles)
    S, chunk = _winograd_chunks(T, max(wanted, cdiv(T, max_chunk)) if max_chunk else wanted)
    T_padded = S * chunk
    if size.points * S > MAX_GRID_Y:
        raise ValueError(f"backward-filter {variant}'s {size.points}·{S} chunk products are more slices than one gemm "
                         f"launch holds ({MAX_GRID_Y})")
    shapes = {"DY": (K, size.points, T_padded), "V": (g.C, size.points, T_padded), "P": (size.points * S, K, g.C)}
    _require_winograd_buffers(shapes, f"backward-filter {variant}")
    kernels = tuple(size.kernel_prefix + step + "_transform" for step in ("dy", "input", "filter_grad"))
    return _WinogradFilterPlan(
        kernels, shapes["DY"], shapes["V"], shapes["P"],
        _winograd_launch(K * T_padded, K, g.OH, g.OW, TH, TW, T, T_padded),
        _winograd_launch(g.C * T_padded, g.C, g.H, g.W, TH, TW, T, T_padded, size.points * T_padded, T_padded,
                         g.pad_top, g.pad_left),
        _winograd_launch(K * g.C, K, g.C, S))


def _launch_conv2d_bwd_filter_winograd(dy, x, w_shape, problem: _Problem, split: SplitPlan):
    """dw by Winograd F(m×m, 3×3) (split.tile WINOGRAD: m = 2, WINOGRAD_4X4: 4): dy and input transforms into
    (K | C, α², S·Tc), the α²·S chunk products P[ξ·S + s] = DY[:, ξ, chunk s] · V[:, ξ, chunk s]ᵀ as one sliced
    GEMM (DY read as the K × α²·S·Tc matrix A, V as the transposed B), the filter-gradient transform summing the
    chunks in order."""
    import cupy

    # the checks, before any allocation
    plan = _winograd_filter_plan(problem, split.tile, split.blocks_per_sm, sm_count())
    K, C = problem.K, problem.g.C
    dy_kernel, input_kernel, filter_grad_kernel = (load_kernel("winograd", name) for name in plan.kernels)
    block = (_WINOGRAD_THREADS,)
    dy_points = nan_filled(cupy, plan.dy_shape)
    grid, sizes = plan.dy_launch
    dy_kernel(grid, block, (dy, dy_points) + sizes)
    v = nan_filled(cupy, plan.v_shape)
    grid, sizes = plan.input_launch
    input_kernel(grid, block, (x, v) + sizes)
    p = cuda_gemm_k_slices(dy_points.reshape(K, -1), v.reshape(C, -1).T, plan.p_shape[0], nan_filled(cupy, plan.p_shape))
    dw = nan_filled(cupy, w_shape)
    grid, sizes = plan.filter_grad_launch
    filter_grad_kernel(grid, block, (p, dw) + sizes)
    return dw


# conv2d_bwd_filter_few_channels's constants (kernels/conv2d_direct.cu's FC_*; a test compares them).
_FEW_CHANNELS_THREADS = 128
_FEW_CHANNELS_BLOCKS_AN_SM = 3    # resident on an SM at once (its __launch_bounds__)
_FEW_CHANNELS_STRIP = 4           # output pixels a thread takes at a time
_FEW_CHANNELS_MAX_TAPS = 32       # the largest C·R·S it is offered for
_FEW_CHANNELS_MAX_FILTERS = 6
_FEW_CHANNELS_HELD_REGISTERS = 128
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
    """conv2d_bwd_filter_few_channels on one _Problem: its FEWC_* defines ((name, value) pairs), grid, split count
    and scalar arguments (numpy.int32s, in the kernel's order)."""
    defines: tuple
    grid: tuple
    splits: int
    args: tuple


@functools.lru_cache(maxsize=1024)
def _few_channels_plan(problem: _Problem, blocks_per_sm: int, sms: int) -> _FewChannelsPlan:
    """The variant compiled for this layer's C, R, S and column stride, _few_channels_filters filters a thread,
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


def _launch_conv2d_bwd_filter_few_channels(dy, x, w_shape, problem: _Problem, blocks_per_sm: int):
    """dw by conv2d_bwd_filter_few_channels: per-block partials over splits of the output pixels, then the fixed-order
    sum (dw written directly when one split does)."""
    import cupy

    return _run(_few_channels_launch(problem, blocks_per_sm, sm_count()), (dy, x), nan_filled(cupy, w_shape))


@functools.lru_cache(maxsize=1024)
def _few_channels_launch(problem: _Problem, blocks_per_sm: int, sms: int) -> _Launch:
    plan = _few_channels_plan(problem, blocks_per_sm, sms)
    return _Launch(load_kernel("conv2d_direct", "conv2d_bwd_filter_few_channels", **dict(plan.defines)), plan.grid,
                   (_FEW_CHANNELS_THREADS,), plan.args, plan.splits)


def _filter_plans(problem: _Problem) -> list:
    """Backward-filter's autotuner candidates: every CONV_TILES at each SPLIT_BLOCKS_PER_SM (the default first),
    then WINOGRAD and WINOGRAD_4X4 at each for 3×3 stride-1 layers where their buffers fit (_winograd_filter_plan),
    then FEW_CHANNELS at each for layers with few input channels (_few_channels_filters), one per distinct grid."""
    plans = [SplitPlan(tile, blocks) for blocks in SPLIT_BLOCKS_PER_SM for tile in CONV_TILES]
    if _winograd_applies(problem.g):
        plans += [SplitPlan(variant, blocks) for variant in _WINOGRAD_FILTER_SIZES for blocks in SPLIT_BLOCKS_PER_SM
                  if _fits(_winograd_filter_plan, problem, variant, blocks, sm_count())]
    if _few_channels_filters(problem.g):
        few_channels = {}
        for blocks in SPLIT_BLOCKS_PER_SM:
            few_channels.setdefault(_few_channels_plan(problem, blocks, sm_count()).grid, SplitPlan(FEW_CHANNELS, blocks))
        plans += few_channels.values()
    return plans


@functools.lru_cache(maxsize=1024)
def _bias_launch(problem: _Problem) -> _Launch:
    """conv2d_bwd_bias: db's N*OH*OW reduction, split until its K blocks a split fill the GPU."""
    K, pixels_per_image = problem.K, problem.g.OH * problem.g.OW
    pixels = problem.g.N * pixels_per_image
    splits, chunk = _split_count(pixels, 16 * _BIAS_THREADS, K)
    return _Launch(_kernel("conv2d_bwd_bias"), (K, splits), (_BIAS_THREADS,),
                   tuple(numpy.int32(v) for v in (K, pixels_per_image, pixels, chunk)), splits)


def _cuda_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool):
    import cupy

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    problem = _problem(g, w.shape[0])
    dx = dw = None
    if compute_dx:
        launch = functools.partial(_launch_conv2d_bwd_data, dy, w, problem)
        dx = launch(_tuned("conv2d_bwd_data", problem, lambda: _backward_data_candidates(problem.g), launch))
    if compute_dw:
        launch = functools.partial(_launch_conv2d_bwd_filter, dy, x, w.shape, problem)
        dw = launch(_tuned("conv2d_bwd_filter", problem, lambda: _filter_plans(problem), launch))
    return dx, dw, _run(_bias_launch(problem), (dy,), nan_filled(cupy, (problem.K,)))


# ---- public functions ----------------------------------------------------------------------------
def conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b), (N, C, H, W) x (K, C, R, S) -> (N, K, OH, OW). See the module docstring."""
    xp = float_operands(_LAYOUTS, ("b",), x=x, w=w, b=b)
    g = _geometry(x, w, stride, padding)
    K = w.shape[0]
    if b is not None and tuple(b.shape) != (K,):
        raise ValueError(f"b must have shape (K,) = ({K},) for w of shape {tuple(w.shape)}, got shape {tuple(b.shape)}")
    act = activation_code(activation)  # ValueError for an unknown name
    negative_slope = checked_slope(negative_slope)
    if xp is numpy:
        return _numpy_conv2d(x, w, b, g, activation, negative_slope)
    return _cuda_conv2d(x, w, b, g, act, float(negative_slope))  # a float: it keys the launch cache


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
