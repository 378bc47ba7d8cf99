"""Benchmark cases of the GEMM-shaped kernels: convolution forward and backward (against cuDNN), matmul and the
dense layers (against cuBLAS)."""
from __future__ import annotations

from cnn_gpu import functional as F
from cnn_gpu.bench.cases.base import Bound, Case, _torch_reference


# ---- convolution ---------------------------------------------------------------------------------
# (label, C, K, H=W, kernel, padding, full-suite batches); quick: (label, C, K, H, kernel, padding, batch)
CONV_LAYERS = (
    ("MNIST conv1", 1, 32, 28, 5, 0, (32, 128, 1024)),
    ("MNIST conv2", 32, 64, 12, 5, 0, (32, 128, 1024)),
    ("100×100 conv1", 1, 512, 100, 3, 0, (32, 128)),
    ("100×100 conv2", 512, 256, 32, 3, 0, (32, 128)),
    ("100×100 conv3", 256, 128, 10, 3, 0, (32, 128)),
    ("resnet 3x3", 64, 64, 56, 3, 1, (32, 128)),
    ("resnet 3x3", 128, 128, 28, 3, 1, (32, 128)),
    ("resnet 3x3", 256, 256, 14, 3, 1, (32, 128)),
    ("resnet 3x3", 512, 512, 7, 3, 1, (32, 128)),
    ("resnet 1x1", 256, 64, 56, 1, 0, (32, 128)),
)
QUICK_CONV_LAYERS = (
    ("MNIST conv1", 1, 32, 28, 5, 0, 8),
    ("MNIST conv2", 32, 64, 12, 5, 0, 8),
    ("100×100 conv3", 256, 128, 10, 3, 0, 2),
    ("resnet 3x3", 16, 16, 14, 3, 1, 4),
)


def conv_flops(N, C, K, R, S, OH, OW) -> float:
    return 2.0 * N * K * C * R * S * OH * OW


def _conv_cases(quick):
    layers = QUICK_CONV_LAYERS if quick else [(*layer[:6], N) for layer in CONV_LAYERS for N in layer[6]]
    for label, C, K, H, k, pad, N in layers:
        OH = H + 2 * pad - k + 1
        shape = f"{label} N{N} {C}→{K} {H}² k{k} p{pad}"
        flops = conv_flops(N, C, K, k, k, OH, OH)
        yield Case("conv2d", "fwd", shape, _conv_forward(N, C, K, H, k, pad, fused=False), flops, tol=1e-4)
        yield Case("conv2d", "fwd+bias+relu", shape, _conv_forward(N, C, K, H, k, pad, fused=True), flops, tol=1e-4)
        for part in ("data", "filter"):
            yield Case("conv2d", f"bwd {part}", shape, _conv_backward(N, C, K, H, k, pad, part), flops, tol=1e-4)


def _conv_forward(N, C, K, H, k, pad, fused):
    """Bare conv against cuDNN's bare conv; fused conv+bias+ReLU against conv-with-bias then ReLU."""
    def prepare(side):
        x = side.normal(N, C, H, H)
        w = side.normal(K, C, k, k, scale=(C * k * k) ** -0.5)
        b = side.normal(K) if fused else None
        activation = "relu" if fused else None
        bound = Bound(lambda: F.conv2d(x, w, b, stride=1, padding=pad, activation=activation), inputs=(x, w, b))
        T = side.torch
        if T is not None:
            conv = T.nn.functional.conv2d
            if fused:
                _torch_reference(bound, side, "cuDNN", "torch conv2d+bias, relu",
                                 lambda x, w, b: T.relu(conv(x, w, b, 1, pad)), x, w, b)
            else:
                _torch_reference(bound, side, "cuDNN", "torch conv2d", lambda x, w: conv(x, w, None, 1, pad), x, w)
        return bound
    return prepare


def _conv_backward(N, C, K, H, k, pad, part):
    """Backward-data (dx, db) or backward-filter (dw, db) against aten.convolution_backward with the same
    output mask (cuDNN backward-data or backward-filter, and its bias reduction). db is in both: ours
    computes it on every backward call, and PyTorch's autograd asks for it with either gradient (a
    network's first layer needs dw and db, every other layer all three)."""
    data = part == "data"

    def prepare(side):
        OH = H + 2 * pad - k + 1
        x = side.normal(N, C, H, H)
        w = side.normal(K, C, k, k, scale=(C * k * k) ** -0.5)
        dy = side.normal(N, K, OH, OH)
        # backward-data reads x's shape only, backward-filter w's shape only
        bound = Bound(lambda: F.conv2d_backward(dy, x, w, stride=1, padding=pad, compute_dx=data, compute_dw=not data),
                      inputs=(dy, w) if data else (dy, x))
        T = side.torch
        if T is not None:
            backward = T.ops.aten.convolution_backward
            _torch_reference(bound, side, "cuDNN", f"aten convolution_backward, {'dx' if data else 'dw'} + db",
                             lambda dy, x, w: backward(dy, x, w, [K], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                                                       [data, not data, True]), dy, x, w)
        return bound
    return prepare


# ---- GEMM ----------------------------------------------------------------------------------------
# (M, K, N): squares, then the dense layers' skinny products (batch × features × units).
GEMMS = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
         (128, 1024, 128), (1024, 1024, 128), (128, 128, 64), (128, 64, 10), (128, 512, 1))
QUICK_GEMMS = ((256, 256, 256), (32, 1024, 128))


def _matmul_cases(quick):
    for M, K, N in QUICK_GEMMS if quick else GEMMS:
        yield Case("matmul", "fwd", f"{M}×{K} @ {K}×{N}", _matmul(M, K, N), 2.0 * M * K * N, tol=1e-4)


def _matmul(M, K, N):
    def prepare(side):
        a, b = side.normal(M, K), side.normal(K, N)
        bound = Bound(lambda: F.matmul(a, b), inputs=(a, b))
        if side.device == "cuda":
            bound.refs["cuBLAS (cupy.matmul)"] = lambda: side.xp.matmul(a, b)
        T = side.torch
        if T is not None:
            _torch_reference(bound, side, "cuBLAS", "torch.matmul", T.matmul, a, b)
        return bound
    return prepare


# (label, in, out, activation, batches): the dense layers of the example networks.
DENSE_LAYERS = (
    ("MNIST dense1", 1024, 128, "relu", (32, 128, 1024)),
    ("MNIST dense2", 128, 64, "relu", (32, 128, 1024)),
    ("MNIST dense3", 64, 10, None, (32, 128, 1024)),
    ("100×100 dense", 512, 1, None, (128,)),
)


def _linear_cases(quick):
    layers = [(*layer[:4], N) for layer in DENSE_LAYERS for N in ((32,) if quick else layer[4])]
    if quick:
        layers = layers[:2]
    for label, n_in, n_out, activation, N in layers:
        shape = f"{label} N{N} {n_in}→{n_out}"
        flops = 2.0 * N * n_in * n_out
        variant = f"fwd+bias+{activation}" if activation else "fwd+bias"
        yield Case("linear", variant, shape, _linear_forward(N, n_in, n_out, activation), flops, tol=1e-4)
        yield Case("linear", "bwd", shape, _linear_backward(N, n_in, n_out), 2 * flops, tol=1e-4)


def _linear_forward(N, n_in, n_out, activation):
    def prepare(side):
        x, w, b = side.normal(N, n_in), side.normal(n_out, n_in, scale=n_in ** -0.5), side.normal(n_out)
        bound = Bound(lambda: F.linear(x, w, b, activation=activation), inputs=(x, w, b))
        T = side.torch
        if T is not None:
            linear = T.nn.functional.linear
            if activation:
                act = getattr(T, activation)
                _torch_reference(bound, side, "cuBLAS", f"torch linear, {activation}",
                                 lambda x, w, b: act(linear(x, w, b)), x, w, b)
            else:
                _torch_reference(bound, side, "cuBLAS", "torch linear", linear, x, w, b)
        return bound
    return prepare


def _linear_backward(N, n_in, n_out):
    """(dx, dw, db) = (dy·W, dyᵀ·x, Σ dy): the three calls autograd makes for torch linear."""
    def prepare(side):
        x, w, dy = side.normal(N, n_in), side.normal(n_out, n_in, scale=n_in ** -0.5), side.normal(N, n_out)
        bound = Bound(lambda: F.linear_backward(dy, x, w), inputs=(dy, x, w))
        T = side.torch
        if T is not None:
            _torch_reference(bound, side, "cuBLAS", "torch mm ×2 + sum",
                             lambda dy, x, w: (T.mm(dy, w), T.mm(dy.t(), x), dy.sum(0)), dy, x, w)
        return bound
    return prepare
