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

Reading order: this module (the contract, validation, the NumPy path, the one dispatch on the array type);
cuda_path.py (the candidates of each kernel and the launch of the autotuner's choice); problem.py (what every
algorithm shares); then one module per algorithm family: implicit_gemm.py (kernels/conv2d.cu), winograd.py
(kernels/winograd.cu + kernels/gemm.cu), direct.py (kernels/conv2d_direct.cu).
"""
from __future__ import annotations

import numpy
from numpy.lib.stride_tricks import sliding_window_view

from cnn_gpu.ops.activation import activation_code, checked_slope, numpy_activation
from cnn_gpu.ops.arrays import float_operands
from cnn_gpu.ops.conv.cuda_path import AS_FORWARD, _cuda_conv2d, _cuda_conv2d_backward
from cnn_gpu.ops.conv.direct import FEW_CHANNELS, FEW_FILTERS
from cnn_gpu.ops.conv.implicit_gemm import CONV_TILES, DEFAULT_TILE, ConvTile
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM, SplitPlan, _output_shape
from cnn_gpu.ops.conv.winograd import WINOGRAD, WINOGRAD_4X4
from cnn_gpu.ops.geometry import WindowGeometry, window_geometry

__all__ = ["conv2d", "conv2d_backward", "AS_FORWARD", "CONV_TILES", "DEFAULT_TILE", "FEW_CHANNELS", "FEW_FILTERS",
           "SPLIT_BLOCKS_PER_SM", "ConvTile", "SplitPlan", "WINOGRAD", "WINOGRAD_4X4"]


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


_LAYOUTS = {"x": (4, "N, C, H, W"), "w": (4, "K, C, R, S"), "b": (1, "K"), "dy": (4, "N, K, OH, OW")}


def _geometry(x, w, stride, padding) -> WindowGeometry:
    """Output geometry, after the checks that need both x and w (ndim and dtype are checked already)."""
    if min(w.shape) < 1:
        raise ValueError(f"w must have positive sizes, got shape {tuple(w.shape)}")
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"w has {w.shape[1]} input channels (shape {tuple(w.shape)}) but x has {x.shape[1]} (shape {tuple(x.shape)})"
        )
    return window_geometry(x.shape, w.shape[2:], stride, padding, window_name="w")


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
