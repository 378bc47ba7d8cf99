"""2-D convolution (cross-correlation, as PyTorch and Keras), forward with a fused bias + activation
epilogue, and backward.

Contract:
  conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01, *, dilation=1, groups=1) -> y
      x (N, C, H, W), w (K, C // groups, R, S), b (K,) or None -> y (N, K, OH, OW)
      y[n, k, oh, ow] = act(b[k] + sum_{c', r, s} w[k, c', r, s] * x[n, g*Cg + c', oh*sh - pt + r*dh, ow*sw - pl + s*dw])
      with Cg = C // groups, Kg = K // groups and g = k // Kg the group of filter k (groups == C: depthwise, each
      input channel its own K // C filters); x is zero outside its bounds. stride, dilation: int or pair.
      padding: int, pair, 'valid' or 'same' (geometry: cnn_gpu.ops.geometry.window_geometry; 'same' puts an odd
      extra row at the bottom/right and counts the dilated window's span, as TF/Keras and PyTorch do).
      activation: None, 'relu', 'leaky_relu', 'sigmoid' or 'tanh', applied in the same pass.
  conv2d_backward(dy, x, w, stride=1, padding=0, *, dilation=1, groups=1, compute_dx=True, compute_dw=True)
      -> (dx, dw, db)
      dy is the gradient w.r.t. the PRE-activation output (the caller applies the activation's
      backward first); db = sum of dy over N, OH, OW. dx (dw) is None when compute_dx (compute_dw)
      is False and is then not computed: a network's first layer needs no dx.
  Bad arguments (groups not dividing C or K, w's channels not C // groups, dilation < 1, a dilated window larger
  than the padded input) raise ValueError naming the argument and the shapes, before any work.

NumPy path: im2col (a dilated window: every dilation-th element of the window it spans) copied by numba loops over
the images (cnn_gpu.ops.parallel), one matmul batched over images and groups forward; backward as two GEMMs batched
over groups on the channel-major im2col matrix and a col2im adding each tap's gradient where it read x, a numba loop
over the images too. Given CuPy arrays, the same functions (im2col as a strided view, col2im as one strided add per
tap) are the CUDA path's grouped / dilated fallback (grouped.py).

CUDA path: kernels/conv2d.cu, implicit GEMM (conv2d_fwd_bias_act, conv2d_bwd_data, conv2d_bwd_filter) and
deterministic split reductions (conv2d_bwd_bias, sum_splits_bias_act): no float atomics, so backward is
bit-reproducible. Each of the three ops (conv2d_fwd, conv2d_bwd_data, conv2d_bwd_filter) has variants
(cnn_gpu.cuda.variants); cnn_gpu.cuda.autotune times the verified ones that apply on the first call of a shape
and keeps the fastest (CNN_GPU_AUTOTUNE=0 runs the first of each list, DEFAULT_TILE; CNN_GPU_UNVERIFIED=1 offers
the variants no GPU run has verified yet too):
  forward          ImplicitGemmForward(tile) for each of CONV_TILES, and split (C·R·S over blocks) where the output
                   tiles cannot fill the GPU; for 3×3 stride-1 layers WinogradForward(2) (F(2×2, 3×3),
                   kernels/winograd.cu: 2.25× fewer multiplies, the products one launch of kernels/gemm.cu) and
                   WinogradForward(4) (F(4×4, 3×3): 4× fewer, ~5× F(2×2)'s rounding error); for K <= 8 filters
                   FewFiltersForward (kernels/conv2d_direct.cu's conv2d_fwd_few_filters, compiled per layer shape:
                   tiles of output pixels × all K filters, where the GEMM's tiles are 32-128 filters tall), and split
                   (its C over blocks) where its tiles cannot fill the GPU
  backward-data    ImplicitGemmBackwardData(tile); for stride-1 layers with pads narrower than the window
                   BackwardDataAsForward: dx as the forward conv of dy with the filters flipped, which then gets the
                   forward's variants
  backward-filter  ImplicitGemmBackwardFilter(tile, blocks_per_sm): N·OH·OW split; for 3×3 stride-1 layers
                   WinogradBackwardFilter(2 | 4, blocks_per_sm): dy and input transforms, the 16 (36) products over
                   chunks of the 2×2 (4×4) tiles, a filter-gradient transform summing the chunks in order; for first
                   layers (C·R·S <= 32) FewChannelsBackwardFilter(blocks_per_sm): kernels/conv2d_direct.cu's
                   conv2d_bwd_filter_few_channels, compiled per layer shape, streaming dy once
A Winograd variant is offered only where its buffers fit 32-bit indexing and _WINOGRAD_MAX_BYTES.
A test or tool runs one variant with cnn_gpu.cuda.autotune.forced({"conv2d_fwd": "Winograd F(2x2, 3x3)"}).

Reading order: this module (the contract, validation, the NumPy path, the one dispatch on the array type);
cuda_path.py (each op's variants, registered in autotuner order, and the launch of the autotuner's choice);
problem.py (what every algorithm shares); then one module per algorithm family: implicit_gemm.py (kernels/conv2d.cu), winograd.py
(kernels/winograd.cu + kernels/gemm.cu), direct.py (kernels/conv2d_direct.cu). Grouped and dilated problems (groups > 1,
dilation > 1), which those kernels do not compute, take grouped.py's ops (conv2d_grouped_fwd, _bwd_data, _bwd_filter):
this module's NumPy path on CuPy arrays by default, and for depthwise layers (groups == C) the unverified direct
kernels of depthwise.py (kernels/conv2d_depthwise.cu).
"""
from __future__ import annotations

import numba
import numpy

from cnn_gpu.ops.activation import activation_code, checked_slope, numpy_activation
from cnn_gpu.ops.arrays import aligned_copy, aligned_empty, float_operands
from cnn_gpu.ops.conv.cuda_path import (BackwardDataAsForward, _cuda_conv2d, _cuda_conv2d_backward, as_forward_geometry,
                                        flipped_filters)
from cnn_gpu.ops.conv.grouped import cuda_grouped_conv2d, cuda_grouped_conv2d_backward
from cnn_gpu.ops.conv.direct import FewChannelsBackwardFilter, FewFiltersForward
from cnn_gpu.ops.conv.implicit_gemm import (CONV_TILES, DEFAULT_TILE, ConvTile, ImplicitGemmBackwardData,
                                            ImplicitGemmBackwardFilter, ImplicitGemmForward)
from cnn_gpu.ops.conv.problem import SPLIT_BLOCKS_PER_SM, ConvProblem, _output_shape, conv_problem
from cnn_gpu.ops.conv.winograd import WinogradBackwardFilter, WinogradForward
from cnn_gpu.ops.geometry import WindowGeometry, window_geometry, with_pads
from cnn_gpu.ops.parallel import matmul, run_loop

__all__ = ["conv2d", "conv2d_backward", "CONV_TILES", "DEFAULT_TILE", "SPLIT_BLOCKS_PER_SM", "BackwardDataAsForward",
           "ConvProblem", "ConvTile", "FewChannelsBackwardFilter", "FewFiltersForward", "ImplicitGemmBackwardData",
           "ImplicitGemmBackwardFilter", "ImplicitGemmForward", "WinogradBackwardFilter", "WinogradForward",
           "as_forward_geometry", "conv_problem", "flipped_filters"]


def conv2d(x, w, b=None, stride=1, padding=0, activation=None, negative_slope=0.01, *, dilation=1, groups=1):
    """y = act(conv(x, w) + b), (N, C, H, W) x (K, C // groups, R, S) -> (N, K, OH, OW). See the module docstring."""
    xp = float_operands(_LAYOUTS, ("b",), x=x, w=w, b=b)
    g = _geometry(x, w, stride, padding, dilation, groups)
    K = w.shape[0]
    if b is not None and tuple(b.shape) != (K,):
        raise ValueError(f"b must have shape (K,) = ({K},) for w of shape {tuple(w.shape)}, got shape {tuple(b.shape)}")
    act = activation_code(activation)  # ValueError for an unknown name
    negative_slope = checked_slope(negative_slope)
    if xp is numpy:
        return _numpy_conv2d(x, w, b, g, activation, negative_slope, groups)
    if groups != 1 or _dilated(g):
        return cuda_grouped_conv2d(x, w, b, g, groups, activation, float(negative_slope))
    return _cuda_conv2d(x, w, b, g, act, float(negative_slope))  # a float: it keys the launch cache


def conv2d_backward(dy, x, w, stride=1, padding=0, *, dilation=1, groups=1, compute_dx=True, compute_dw=True):
    """(dx, dw, db) from dy, the gradient w.r.t. conv2d's pre-activation output; dx / dw are None (and not
    computed) when compute_dx / compute_dw is False."""
    xp = float_operands(_LAYOUTS, dy=dy, x=x, w=w)
    g = _geometry(x, w, stride, padding, dilation, groups)
    expected = _output_shape(g, w.shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"dy must have the conv2d output shape {expected} for x of shape {tuple(x.shape)}, "
            f"w of shape {tuple(w.shape)}, stride {stride!r}, padding {padding!r}, dilation {dilation!r}; "
            f"got shape {tuple(dy.shape)}"
        )
    if xp is numpy:
        return _numpy_conv2d_backward(dy, x, w, g, compute_dx, compute_dw, groups)
    if groups != 1 or _dilated(g):
        return cuda_grouped_conv2d_backward(dy, x, w, g, groups, compute_dx, compute_dw)
    return _cuda_conv2d_backward(dy, x, w, g, compute_dx, compute_dw)


_LAYOUTS = {"x": (4, "N, C, H, W"), "w": (4, "K, C // groups, R, S"), "b": (1, "K"), "dy": (4, "N, K, OH, OW")}


def _geometry(x, w, stride, padding, dilation=1, groups=1) -> WindowGeometry:
    """Output geometry, after the checks that need both x and w (ndim and dtype are checked already)."""
    if min(w.shape) < 1:
        raise ValueError(f"w must have positive sizes, got shape {tuple(w.shape)}")
    if type(groups) is not int or groups < 1:  # noqa: E721 (a bool or a float is refused too)
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    C, K = x.shape[1], w.shape[0]
    if C % groups:
        raise ValueError(f"groups = {groups} must divide the input channels: x has C = {C} (shape {tuple(x.shape)})")
    if K % groups:
        raise ValueError(f"groups = {groups} must divide the filters: w has K = {K} (shape {tuple(w.shape)})")
    if w.shape[1] != C // groups and groups == 1:
        raise ValueError(
            f"w has {w.shape[1]} input channels (shape {tuple(w.shape)}) but x has {C} (shape {tuple(x.shape)})"
        )
    if w.shape[1] != C // groups:
        raise ValueError(f"w must have C // groups = {C // groups} input channels (x shape {tuple(x.shape)}, groups "
                         f"{groups}), got w of shape {tuple(w.shape)}")
    return window_geometry(x.shape, w.shape[2:], stride, padding, window_name="w", dilation=dilation)


def _dilated(g: WindowGeometry) -> bool:
    return g.dilation_h != 1 or g.dilation_w != 1


def _im2col(x, g: WindowGeometry, channel_major: bool):
    """Every window of the zero-padded x as one contiguous array: (N, C, R, S, OH, OW), image-major, the forward's
    GEMM operand, or (C, R, S, N, OH, OW), channel-major, the filter gradient's. NumPy: numba loops over the images
    (cnn_gpu.ops.parallel), a row of one tap at a time. CuPy: a copy of the strided view of the windows."""
    padded = with_pads(x, g, 0)
    if isinstance(x, numpy.ndarray):
        cols = aligned_empty((g.C, g.R, g.S, g.N, g.OH, g.OW) if channel_major else (g.N, g.C, g.R, g.S, g.OH, g.OW),
                             x.dtype)
        run_loop(_IM2COL[channel_major, g.stride_w == 1], padded, cols, g.stride_h, g.stride_w, g.dilation_h,
                 g.dilation_w)
        return cols
    xp = _cupy()
    view = xp.lib.stride_tricks.sliding_window_view(padded, g.window_extent, axis=(2, 3))
    if _dilated(g):
        view = view[..., :: g.dilation_h, :: g.dilation_w]
    view = view[:, :, : (g.OH - 1) * g.stride_h + 1 : g.stride_h, : (g.OW - 1) * g.stride_w + 1 : g.stride_w]
    return xp.ascontiguousarray(view.transpose((1, 4, 5, 0, 2, 3) if channel_major else (0, 1, 4, 5, 2, 3)))


# The numba loops come in versions with the layout and a unit stride_w fixed when compiled (closure constants): a
# row copied with a run-time stride, or picked by a branch in the loop, is not vectorised, and is 2x slower.
def _im2col_loop(channel_major: bool, unit_stride: bool):
    @numba.njit(cache=True, parallel=True)
    def im2col(padded, cols, stride_h, stride_w, dilation_h, dilation_w):
        N, C = padded.shape[0], padded.shape[1]
        R, S = (cols.shape[1], cols.shape[2]) if channel_major else (cols.shape[2], cols.shape[3])
        OH, OW = cols.shape[4], cols.shape[5]
        for n in numba.prange(N):
            for c in range(C):
                for r in range(R):
                    for s in range(S):
                        for oh in range(OH):
                            src = padded[n, c, oh * stride_h + r * dilation_h, s * dilation_w:]
                            dst = cols[c, r, s, n, oh] if channel_major else cols[n, c, r, s, oh]
                            if unit_stride:
                                for ow in range(OW):
                                    dst[ow] = src[ow]
                            else:
                                for ow in range(OW):
                                    dst[ow] = src[ow * stride_w]
    return im2col


_IM2COL = {(major, unit): _im2col_loop(major, unit) for major in (False, True) for unit in (False, True)}


def _cupy():
    import cupy

    return cupy


def _numpy_conv2d(x, w, b, g: WindowGeometry, activation, slope, groups=1):
    K, G = w.shape[0], groups
    # cols[n, g] is image n's (Cg*R*S, OH*OW) im2col matrix of group g; one GEMM batched over images and groups gives
    # y in (N, G, Kg, OH*OW).
    cols = _im2col(x, g, channel_major=False)
    y = matmul(w.reshape(G, K // G, -1), cols.reshape(g.N, G, -1, g.OH * g.OW)).reshape(g.N, K, g.OH * g.OW)
    if b is not None:
        y += b[:, None]
    if not isinstance(y, numpy.ndarray):  # the CUDA path's fallback: the activation by its own kernel
        from cnn_gpu.ops.activation import _cuda_activation

        if activation not in (None, "linear"):
            y = _cuda_activation(y, activation, slope)
        return y.reshape(_output_shape(g, K))
    return numpy_activation(y, activation, slope).reshape(_output_shape(g, K))


def _numpy_conv2d_backward(dy, x, w, g: WindowGeometry, compute_dx: bool, compute_dw: bool, groups=1):
    K, G = w.shape[0], groups
    # Channel-major im2col: cols (G, Cg*R*S, N*OH*OW) and dy as (G, Kg, N*OH*OW), so each gradient is one GEMM
    # batched over groups.
    dy_k = dy.reshape(g.N, G, K // G, -1).transpose(1, 2, 0, 3)
    dy_k = (aligned_copy(dy_k) if isinstance(dy_k, numpy.ndarray) else dy_k).reshape(G, K // G, -1)
    dx = dw = None
    if compute_dw:
        cols = _im2col(x, g, channel_major=True)
        dw = matmul(dy_k, cols.reshape(G, -1, g.N * g.OH * g.OW).transpose(0, 2, 1)).reshape(w.shape)
    if compute_dx:
        dcols = matmul(w.reshape(G, K // G, -1).transpose(0, 2, 1), dy_k)
        dx = _numpy_col2im(dcols.reshape(g.C, g.R, g.S, g.N, g.OH, g.OW), g, x.dtype)
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _numpy_col2im(dcols, g: WindowGeometry, dtype):
    """dx (N, C, H, W) from the window gradients dcols (C, R, S, N, OH, OW): each tap's gradient added where the tap
    read x, taps in (r, s) order. NumPy: numba loops over the images, each channel's plane summed padded, then
    cropped. CuPy: one strided add per tap on the padded input."""
    Hp, Wp = g.padded_hw
    if isinstance(dcols, numpy.ndarray):
        dx = numpy.empty((g.N, g.C, g.H, g.W), dtype=dtype)
        run_loop(_COL2IM[g.stride_w == 1], dcols, dx, Hp, Wp, g.pad_top, g.pad_left, g.stride_h, g.stride_w,
                 g.dilation_h, g.dilation_w)
        return dx
    xp = _cupy()
    dx_padded = xp.zeros((g.C, g.N, Hp, Wp), dtype=dtype)
    for r in range(g.R):
        for s in range(g.S):
            r0, s0 = r * g.dilation_h, s * g.dilation_w
            dx_padded[:, :, r0 : r0 + (g.OH - 1) * g.stride_h + 1 : g.stride_h,
                      s0 : s0 + (g.OW - 1) * g.stride_w + 1 : g.stride_w] += dcols[:, r, s]
    dx = dx_padded[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dx)


def _col2im_loop(unit_stride: bool):
    @numba.njit(cache=True, parallel=True)
    def col2im(dcols, dx, Hp, Wp, pad_top, pad_left, stride_h, stride_w, dilation_h, dilation_w):
        C, R, S, N, OH, OW = dcols.shape
        H, W = dx.shape[2], dx.shape[3]
        for n in numba.prange(N):
            plane = numpy.empty((Hp, Wp), dtype=dx.dtype)
            for c in range(C):
                plane[:] = 0
                for r in range(R):
                    for s in range(S):
                        for oh in range(OH):
                            src = dcols[c, r, s, n, oh]
                            dst = plane[oh * stride_h + r * dilation_h, s * dilation_w:]
                            if unit_stride:
                                for ow in range(OW):
                                    dst[ow] += src[ow]
                            else:
                                for ow in range(OW):
                                    dst[ow * stride_w] += src[ow]
                for h in range(H):
                    for w in range(W):
                        dx[n, c, h, w] = plane[pad_top + h, pad_left + w]
    return col2im


_COL2IM = {unit: _col2im_loop(unit) for unit in (False, True)}
