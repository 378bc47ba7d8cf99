"""2-D convolution (cross-correlation, as PyTorch and Keras), forward with a fused bias + activation
epilogue, and backward.

Contract:
  conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01) -> y
      x (N, C, H, W), w (K, C, R, S), b (K,) or None -> y (N, K, OH, OW)
      y[n, k, oh, ow] = act(b[k] + sum_{c, r, s} w[k, c, r, s] * x[n, c, oh*sh - pt + r, ow*sw - pl + s])
      (x is zero outside its bounds). stride: int or pair. padding: int, pair, 'valid' or 'same'
      (geometry: cnn_gpu.ops.geometry.window_geometry; 'same' puts an odd extra row at the bottom/right).
      activation: None, 'relu', 'leaky_relu', 'sigmoid' or 'tanh', applied in the same pass.
  conv2d_backward(dy, x, w, stride=1, padding=0) -> (dx, dw, db)
      dy is the gradient w.r.t. the PRE-activation output (the caller applies the activation's
      backward first); db = sum of dy over N, OH, OW.

NumPy path: im2col as a strided view of the padded input (no copy until the GEMM's operand is
formed), one batched matmul forward; backward as two GEMMs over the channel-major im2col matrix and a
col2im that adds one strided slice per kernel tap (R*S vectorised adds; a numba scatter-add measured
no faster). CUDA path: kernels/conv2d.cu, implicit GEMM (conv2d_fwd_bias_act, conv2d_bwd_data,
conv2d_bwd_filter) and deterministic split reductions (conv2d_bwd_bias, conv2d_sum_partials): no
float atomics, so backward is bit-reproducible.
"""
from __future__ import annotations

import numpy
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu.ops.activation import activation_code, numpy_activation
from cnn_gpu.ops.arrays import contiguous, float_operands, nan_filled
from cnn_gpu.ops.geometry import WindowGeometry, window_geometry

_LAYOUTS = {"x": (4, "N, C, H, W"), "w": (4, "K, C, R, S"), "b": (1, "K"), "dy": (4, "N, K, OH, OW")}

# Tile sizes of the implicit-GEMM kernels; must equal the #ifndef defaults in kernels/conv2d.cu (a test
# checks), so the CI compile check compiles what runs. An autotuner may pass other values.
CONV_TILE = {"CONV_BM": 64, "CONV_BN": 64, "CONV_BK": 16, "CONV_TM": 4, "CONV_TN": 4}


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


def _numpy_conv2d_backward(dy, x, w, g: WindowGeometry):
    K = w.shape[0]
    # Channel-major im2col: cols (C*R*S, N*OH*OW) and dy as (K, N*OH*OW), so both gradients are one GEMM.
    cols = _windows(x, g).transpose(1, 4, 5, 0, 2, 3).reshape(-1, g.N * g.OH * g.OW)
    dy_k = dy.transpose(1, 0, 2, 3).reshape(K, -1)
    dw = (dy_k @ cols.T).reshape(w.shape)
    dcols = (w.reshape(K, -1).T @ dy_k).reshape(g.C, g.R, g.S, g.N, g.OH, g.OW)
    # col2im: tap (r, s) of every window lands on a strided slice of the padded input, one add per tap.
    Hp, Wp = g.padded_hw
    dx_padded = numpy.zeros((g.C, g.N, Hp, Wp), dtype=x.dtype)
    for r in range(g.R):
        for s in range(g.S):
            dx_padded[:, :, r : r + (g.OH - 1) * g.stride_h + 1 : g.stride_h, s : s + (g.OW - 1) * g.stride_w + 1 : g.stride_w] += dcols[:, r, s]
    dx = dx_padded[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W].transpose(1, 0, 2, 3)
    return numpy.ascontiguousarray(dx), dw, dy.sum(axis=(0, 2, 3))


# ---- CUDA path -----------------------------------------------------------------------------------
_THREADS = (CONV_TILE["CONV_BM"] // CONV_TILE["CONV_TM"]) * (CONV_TILE["CONV_BN"] // CONV_TILE["CONV_TN"])
_BIAS_THREADS = 256  # conv2d_bwd_bias's block size (its shared buffer is sized for it)


def _kernel(name):
    from cnn_gpu.cuda.loader import load_kernel

    return load_kernel("conv2d", name, **CONV_TILE)


def _require_int32_geometry(g: WindowGeometry, K: int) -> None:
    """The kernels index within one image (and the GEMM extents) in 32 bits, across images in 64."""
    from cnn_gpu.cuda.launch import require_int32_indexable

    require_int32_indexable("one image of x", (g.C, g.H, g.W))
    require_int32_indexable("one image of y", (K, g.OH, g.OW))
    require_int32_indexable("w", (K, g.C, g.R, g.S))
    require_int32_indexable("the output pixels N*OH*OW", (g.N, g.OH, g.OW))
    require_int32_indexable("the input pixels N*H*W", (g.N, g.H, g.W))


def _geometry_args(g: WindowGeometry, K: int):
    """The geometry arguments every implicit-GEMM kernel takes, in its order."""
    return tuple(numpy.int32(v) for v in (g.N, g.C, g.H, g.W, K, g.R, g.S, g.OH, g.OW, g.stride_h, g.stride_w, g.pad_top, g.pad_left))


def _cuda_conv2d(x, w, b, g: WindowGeometry, activation, slope):
    import cupy

    from cnn_gpu.cuda.launch import cdiv

    x, w, b = contiguous(cupy, x), contiguous(cupy, w), contiguous(cupy, b)
    K = w.shape[0]
    _require_int32_geometry(g, K)
    y = nan_filled(cupy, _output_shape(g, K))
    grid = (cdiv(g.N * g.OH * g.OW, CONV_TILE["CONV_BN"]), cdiv(K, CONV_TILE["CONV_BM"]))
    _kernel("conv2d_fwd_bias_act")(
        grid, (_THREADS,),
        (x, w, b, y) + _geometry_args(g, K) + (numpy.int32(activation_code(activation)), numpy.float32(slope)),
    )
    return y


def _split_count(work: int, min_chunk: int, parallel_units: int) -> tuple[int, int]:
    """(splits, chunk) for a reduction of `work` items shared by `parallel_units` independent outputs:
    enough splits to give every SM two blocks, no chunk under min_chunk items, no empty split."""
    from cnn_gpu.cuda.launch import cdiv, sm_count

    splits = max(1, min(cdiv(2 * sm_count(), parallel_units), work // min_chunk))
    chunk = cdiv(cdiv(work, splits), min_chunk) * min_chunk
    return cdiv(work, chunk), chunk


def _sum_partials(partials, out):
    """out = partials.sum(axis=0) in a fixed order (the deterministic second pass)."""
    from cnn_gpu.cuda.launch import grid_stride_blocks

    n = out.size
    _kernel("conv2d_sum_partials")((grid_stride_blocks(n),), (256,), (partials, out, numpy.int64(n), numpy.int32(partials.shape[0])))
    return out


def _cuda_conv2d_backward(dy, x, w, g: WindowGeometry):
    import cupy

    from cnn_gpu.cuda.launch import cdiv

    dy, x, w = contiguous(cupy, dy), contiguous(cupy, x), contiguous(cupy, w)
    K = w.shape[0]
    _require_int32_geometry(g, K)
    geometry = _geometry_args(g, K)
    BM, BN, BK = CONV_TILE["CONV_BM"], CONV_TILE["CONV_BN"], CONV_TILE["CONV_BK"]

    dx = nan_filled(cupy, x.shape)
    _kernel("conv2d_bwd_data")((cdiv(g.N * g.H * g.W, BN), cdiv(g.C, BM)), (_THREADS,), (dy, w, dx) + geometry)

    # dw: split the N*OH*OW reduction so that small filters still fill the GPU; partials then a fixed-order sum.
    crs = g.C * g.R * g.S
    pixels = g.N * g.OH * g.OW
    tiles = cdiv(K, BM) * cdiv(crs, BN)
    splits, chunk = _split_count(pixels, 8 * BK, tiles)
    dw = nan_filled(cupy, w.shape)
    partials = dw if splits == 1 else nan_filled(cupy, (splits,) + w.shape)
    _kernel("conv2d_bwd_filter")((cdiv(crs, BN), cdiv(K, BM), splits), (_THREADS,), (dy, x, partials) + geometry + (numpy.int32(chunk),))
    if splits > 1:
        _sum_partials(partials, dw)

    db = nan_filled(cupy, (K,))
    splits, chunk = _split_count(pixels, 16 * _BIAS_THREADS, K)
    partials = db if splits == 1 else nan_filled(cupy, (splits, K))
    _kernel("conv2d_bwd_bias")(
        (K, splits), (_BIAS_THREADS,),
        (dy, partials, numpy.int32(K), numpy.int32(g.OH * g.OW), numpy.int32(pixels), numpy.int32(chunk)),
    )
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


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """(dx, dw, db) from dy, the gradient w.r.t. conv2d's pre-activation output."""
    xp = float_operands(_LAYOUTS, dy=dy, x=x, w=w)
    g = _geometry(x, w, stride, padding)
    expected = _output_shape(g, w.shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"dy must have the conv2d output shape {expected} for x of shape {tuple(x.shape)}, "
            f"w of shape {tuple(w.shape)}, stride {stride!r}, padding {padding!r}; got shape {tuple(dy.shape)}"
        )
    if xp is numpy:
        return _numpy_conv2d_backward(dy, x, w, g)
    return _cuda_conv2d_backward(dy, x, w, g)
