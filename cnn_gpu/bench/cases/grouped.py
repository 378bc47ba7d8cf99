"""Benchmark cases of grouped, depthwise and dilated convolution (op conv2d_grouped), forward and both backwards,
against cuDNN through torch conv2d / aten convolution_backward with the same groups and dilation: MobileNetV2's
depthwise 3×3 layers (stride 1 and 2), ConvNeXt's depthwise 7×7, a 31×31 depthwise layer (RepLKNet's first stage),
ResNeXt's grouped 3×3 (32 groups) and DeepLab's dilated 3×3 (dilation 2 and 4)."""
from __future__ import annotations

from cnn_gpu import functional as F
from cnn_gpu.bench.cases.base import Bound, Case, _torch_reference

# (label, N, C, K, H=W, kernel, stride, dilation, groups); padding keeps the size at stride 1 ((k − 1)·d / 2)
GROUPED_LAYERS = (
    ("MobileNetV2 dw 3x3", 128, 144, 144, 56, 3, 1, 1, 144),
    ("MobileNetV2 dw 3x3", 128, 192, 192, 28, 3, 1, 1, 192),
    ("MobileNetV2 dw 3x3", 128, 384, 384, 14, 3, 1, 1, 384),
    ("MobileNetV2 dw 3x3 s2", 128, 144, 144, 56, 3, 2, 1, 144),
    ("MobileNetV2 dw 3x3 s2", 128, 192, 192, 28, 3, 2, 1, 192),
    ("ConvNeXt dw 7x7", 128, 96, 96, 56, 7, 1, 1, 96),
    ("ConvNeXt dw 7x7", 128, 192, 192, 28, 7, 1, 1, 192),
    ("ConvNeXt dw 7x7", 128, 384, 384, 14, 7, 1, 1, 384),
    ("RepLKNet dw 31x31", 64, 128, 128, 56, 31, 1, 1, 128),
    ("ResNeXt 3x3 g32", 128, 128, 128, 56, 3, 1, 1, 32),
    ("ResNeXt 3x3 g32", 128, 512, 512, 14, 3, 1, 1, 32),
    ("DeepLab 3x3 d2", 16, 512, 512, 33, 3, 1, 2, 1),
    ("DeepLab 3x3 d4", 16, 512, 512, 33, 3, 1, 4, 1),
)
QUICK_GROUPED_LAYERS = (
    ("MobileNetV2 dw 3x3", 2, 16, 16, 14, 3, 1, 1, 16),
    ("MobileNetV2 dw 3x3 s2", 2, 16, 16, 14, 3, 2, 1, 16),
    ("ConvNeXt dw 7x7", 2, 8, 8, 14, 7, 1, 1, 8),
    ("ResNeXt 3x3 g32", 2, 64, 64, 8, 3, 1, 1, 32),
    ("DeepLab 3x3 d2", 2, 8, 8, 16, 3, 1, 2, 1),
)


def _grouped_cases(quick):
    for label, N, C, K, H, k, stride, dilation, groups in QUICK_GROUPED_LAYERS if quick else GROUPED_LAYERS:
        pad = (k - 1) * dilation // 2
        OH = (H + 2 * pad - (k - 1) * dilation - 1) // stride + 1
        shape = f"{label} N{N} {C}→{K} {H}² s{stride} d{dilation} g{groups}"
        flops = 2.0 * N * K * (C // groups) * k * k * OH * OH
        layer = (N, C, K, H, k, stride, pad, dilation, groups)
        yield Case("conv2d_grouped", "fwd", shape, _grouped_forward(*layer), flops, tol=1e-4)
        for part in ("data", "filter"):
            yield Case("conv2d_grouped", f"bwd {part}", shape, _grouped_backward(*layer, part), flops, tol=1e-4)


def _grouped_forward(N, C, K, H, k, stride, pad, dilation, groups):
    def prepare(side):
        x = side.normal(N, C, H, H)
        w = side.normal(K, C // groups, k, k, scale=(C // groups * k * k) ** -0.5)
        bound = Bound(lambda: F.conv2d(x, w, None, stride, pad, dilation=dilation, groups=groups), inputs=(x, w))
        T = side.torch
        if T is not None:
            conv = T.nn.functional.conv2d
            _torch_reference(bound, side, "cuDNN", "torch conv2d",
                             lambda x, w: conv(x, w, None, stride, pad, dilation, groups), x, w)
        return bound
    return prepare


def _grouped_backward(N, C, K, H, k, stride, pad, dilation, groups, part):
    """Backward-data (dx, db) or backward-filter (dw, db) against aten.convolution_backward with that output mask."""
    data = part == "data"

    def prepare(side):
        OH = (H + 2 * pad - (k - 1) * dilation - 1) // stride + 1
        x = side.normal(N, C, H, H)
        w = side.normal(K, C // groups, k, k, scale=(C // groups * k * k) ** -0.5)
        dy = side.normal(N, K, OH, OH)
        bound = Bound(lambda: F.conv2d_backward(dy, x, w, stride, pad, dilation=dilation, groups=groups,
                                                compute_dx=data, compute_dw=not data),
                      inputs=(dy, w) if data else (dy, x))
        T = side.torch
        if T is not None:
            backward = T.ops.aten.convolution_backward
            _torch_reference(bound, side, "cuDNN", f"aten convolution_backward, {'dx' if data else 'dw'} + db",
                             lambda dy, x, w: backward(dy, x, w, [K], [stride, stride], [pad, pad],
                                                       [dilation, dilation], False, [0, 0], groups,
                                                       [data, not data, True]), dy, x, w)
        return bound
    return prepare
