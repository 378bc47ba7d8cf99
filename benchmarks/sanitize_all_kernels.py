"""Call every CUDA kernel once on small odd shapes, for compute-sanitizer (memcheck, racecheck, synccheck).

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/sanitize_all_kernels.py

Every functional op forward and backward, reaching every kernel and launch path: all four GEMM
transposes, both GEMM tile configurations and split-K (with its fixed-order sum), every fused
activation of the conv and GEMM epilogues, aligned (float4) and misaligned element-wise paths,
max / average / sum pooling with padding, dropout, batch-norm training / inference / backward, the
losses, SGD (plain, momentum, Nesterov) and Adam; forced, the variants only timing picks: the Winograd convolution
forward and backward-filter (F(2×2) and F(4×4)), the split forward, backward-data as a forward convolution,
backward-filter for few input channels, the forward for few filters (split too) and backward-data
through it, each max-pool forward and backward way; grouped, dilated and depthwise conv2d (the depthwise kernels forced, and the grouped implicit GEMMs forced, whole
and split). Shapes
divide no tile size. CuPy's memory pool is off, so each array is its own cudaMalloc and an access past
its end is seen. Each call is synchronised on its own, so an error names its op. Prints one line per
call and OK at the end; exits 1 if any call raised.
"""
from __future__ import annotations

import sys

import cupy
import numpy

from cnn_gpu import functional as F

ACTIVATIONS = (None, "relu", "leaky_relu", "sigmoid", "tanh")
rng = numpy.random.default_rng(0)
failures = []


def arr(*shape):
    return cupy.asarray(rng.standard_normal(shape, dtype=numpy.float32))


def misaligned(n):
    """A contiguous float32 vector whose data pointer is 4 bytes past a 16-byte boundary."""
    return arr(n + 1)[1:]


def call(label, fn, *args, **kwargs):
    """fn(*args, **kwargs), synchronised; its result, or None after printing the failure."""
    try:
        result = fn(*args, **kwargs)
        cupy.cuda.runtime.deviceSynchronize()
    except Exception as exc:  # report and go on: one run should show every failing kernel
        failures.append(label)
        print(f"FAILED {label}: {type(exc).__name__}: {exc}", flush=True)
        return None
    print(f"ok     {label}", flush=True)
    return result


def conv2d():
    # the last two shapes have enough output pixels to split the filter (and bias) reductions over blocks
    for (N, C, H, W, K, R, S, stride, padding) in ((3, 5, 17, 13, 7, 3, 3, 1, 1), (2, 3, 31, 33, 65, 5, 3, 2, "same"),
                                                    (9, 1, 33, 33, 32, 5, 5, 1, 2), (33, 17, 9, 11, 3, 1, 1, 3, 0)):
        x, w, b = arr(N, C, H, W), arr(K, C, R, S), arr(K)
        for activation in ACTIVATIONS:
            call(f"conv2d fwd {activation} {x.shape} {w.shape} s{stride} p{padding}", F.conv2d, x, w, b, stride, padding, activation)
        y = call(f"conv2d fwd no bias {x.shape}", F.conv2d, x, w, None, stride, padding)
        if y is not None:
            call(f"conv2d bwd {x.shape} {w.shape} s{stride} p{padding}", F.conv2d_backward, arr(*y.shape), x, w, stride, padding)


def forced(choices: dict):
    """The named ops run the named variants, every other op its default (variants only ever chosen by timing would
    otherwise run here only when this GPU's timing or cache happens to pick them; unverified ones never)."""
    from cnn_gpu.cuda import autotune

    return autotune.forced(choices)


def most_split(prefix: str):
    """A forced choice: of the variants offered whose names start with prefix, the last (the most split where a split
    is offered; the unsplit one where none is)."""
    return lambda key, candidates: [c for c in candidates if c.name.startswith(prefix)][-1]


def winograd_conv2d():
    """conv2d's forward and backward-filter through their Winograd candidates, forced: each size's forward's and
    backward-filter's five transforms, and the sliced GEMMs (whose tile configuration is tuned as usual). The first
    shape's backward-filter splits its 816 2×2 tiles into 11 chunks, its 216 4×4 tiles into 3, the last one padded
    in both; the second's 2 (1) tiles are one padded chunk. Both shapes' outputs end inside a 4×4 tile."""
    shapes = ((3, 17, 31, 33, 5, "same", "relu"), (1, 3, 4, 5, 33, 0, None))
    with forced({"conv2d_fwd": "Winograd F(2x2, 3x3)", "conv2d_bwd_filter": "Winograd F(2x2, 3x3), split to 2 blocks an SM"}):
        for (N, C, H, W, K, padding, activation) in shapes:
            x, w = arr(N, C, H, W), arr(K, C, 3, 3)
            call(f"conv2d fwd winograd {activation} {x.shape} {w.shape} p{padding}", F.conv2d, x, w, arr(K), 1, padding, activation)
            y = call(f"conv2d fwd winograd no bias {x.shape} {w.shape} p{padding}", F.conv2d, x, w, None, 1, padding)
            if y is not None:
                call(f"conv2d bwd filter winograd {x.shape} {w.shape} p{padding}", F.conv2d_backward, arr(*y.shape), x, w, 1,
                     padding, compute_dx=False)
    with forced({"conv2d_fwd": "Winograd F(4x4, 3x3)", "conv2d_bwd_filter": "Winograd F(4x4, 3x3), split to 2 blocks an SM"}):
        for (N, C, H, W, K, padding, activation) in shapes:
            x, w = arr(N, C, H, W), arr(K, C, 3, 3)
            call(f"conv2d fwd winograd 4x4 {activation} {x.shape} {w.shape} p{padding}", F.conv2d, x, w, arr(K), 1, padding,
                 activation)
            y = call(f"conv2d fwd winograd 4x4 no bias {x.shape} {w.shape} p{padding}", F.conv2d, x, w, None, 1, padding)
            if y is not None:
                call(f"conv2d bwd filter winograd 4x4 {x.shape} {w.shape} p{padding}", F.conv2d_backward, arr(*y.shape), x,
                     w, 1, padding, compute_dx=False)


def split_forward_and_as_forward_conv2d():
    """The forward with its C·R·S reduction split (partials, then the sum pass adding bias and activation) and
    backward-data as the forward conv of dy (whose own forward then also runs split), forced. The first shape
    splits (576-long reduction, 225 pixels); the second's 40-long reduction is one chunk."""
    from cnn_gpu.ops.conv import DEFAULT_TILE, BackwardDataAsForward, ImplicitGemmForward

    with forced({"conv2d_fwd": most_split(ImplicitGemmForward(DEFAULT_TILE).name),
                 "conv2d_bwd_data": BackwardDataAsForward().name}):
        for (N, C, H, W, K, R, S, padding) in ((1, 64, 15, 15, 130, 3, 3, 1), (2, 5, 7, 9, 3, 4, 2, "same")):
            x, w = arr(N, C, H, W), arr(K, C, R, S)
            for activation in ACTIVATIONS:
                call(f"conv2d fwd split {activation} {x.shape} {w.shape} p{padding}", F.conv2d, x, w, arr(K), 1, padding, activation)
            y = call(f"conv2d fwd split no bias {x.shape} {w.shape} p{padding}", F.conv2d, x, w, None, 1, padding)
            if y is not None:
                call(f"conv2d bwd data as forward {x.shape} {w.shape} p{padding}", F.conv2d_backward, arr(*y.shape), x, w, 1,
                     padding, compute_dw=False)


def few_channels_conv2d():
    """conv2d's backward-filter through its few-input-channel variant, forced: strips crossing output rows with float4
    and with scalar dy loads (OH·OW = 28, 1599), a misaligned dy, column stride 2 with 2 channels, dw written
    directly (one split) and through 12 splits and the sum pass."""
    with forced({"conv2d_bwd_filter": "few input channels, split to 2 blocks an SM"}):
        for (N, C, H, W, K, R, S, stride, padding) in ((2, 1, 6, 9, 5, 3, 3, 1, 0), (16, 1, 41, 39, 33, 3, 3, 1, 1),
                                                       (3, 2, 11, 10, 17, 3, 3, 2, 1), (9, 1, 28, 28, 32, 5, 5, 1, 0)):
            x, w = arr(N, C, H, W), arr(K, C, R, S)
            y = call(f"conv2d fwd {x.shape} {w.shape} s{stride} p{padding}", F.conv2d, x, w, None, stride, padding)
            if y is not None:
                call(f"conv2d bwd filter few channels {x.shape} {w.shape} s{stride} p{padding}", F.conv2d_backward,
                     arr(*y.shape), x, w, stride, padding, compute_dx=False)
        x, w = arr(2, 1, 6, 9), arr(5, 1, 3, 3)
        call("conv2d bwd filter few channels, misaligned dy", F.conv2d_backward, misaligned(2 * 5 * 4 * 7).reshape(2, 5, 4, 7),
             x, w, compute_dx=False)


def few_filters_conv2d():
    """conv2d's forward through its few-filter variant, forced, with 1 and 3 filters: float4 stores (OW 16) and
    guarded scalar ones, tiles cut short at the image's edges, an image 3 tiles wide, stride 2, each activation and
    no bias; the same through its channel split (partials, then the sum pass; the first and last shapes split); then
    backward-data of 1- and 3-channel layers as a forward conv, whose forward of dy runs the few-filter kernel."""
    shapes = ((2, 17, 33, 16, 1, 3, 3, 1, "same"), (3, 5, 9, 261, 3, 3, 5, 1, 1), (1, 64, 15, 15, 3, 3, 3, 2, 2))
    for label, variant in (("few output channels", "few output channels"),
                           ("few output channels, most split", most_split("few output channels"))):
        with forced({"conv2d_fwd": variant}):
            for (N, C, H, W, K, R, S, stride, padding) in shapes:
                x, w = arr(N, C, H, W), arr(K, C, R, S)
                for activation in ACTIVATIONS:
                    call(f"conv2d fwd {label} {activation} {x.shape} {w.shape} s{stride} p{padding}", F.conv2d, x, w,
                         arr(K), stride, padding, activation)
                call(f"conv2d fwd {label} no bias {x.shape} {w.shape} s{stride} p{padding}", F.conv2d, x, w, None,
                     stride, padding)
    with forced({"conv2d_bwd_data": "as forward conv", "conv2d_fwd": "few output channels"}):
        for (N, C, H, W, K, R, S, padding) in ((3, 1, 28, 28, 32, 5, 5, 0), (2, 3, 17, 19, 16, 3, 3, 1)):
            x, w = arr(N, C, H, W), arr(K, C, R, S)
            dy = arr(N, K, H + 2 * padding - R + 1, W + 2 * padding - S + 1)
            call(f"conv2d bwd data as forward, few filters {x.shape} {w.shape} p{padding}", F.conv2d_backward, dy, x, w, 1,
                 padding, compute_dw=False)


def gemm():
    # (M, K, N): skinny tiles, large tiles, split-K (small output, long K), K not a multiple of 4
    for M, K, N in ((3, 17, 5), (129, 67, 131), (33, 4097, 31), (65, 1024, 127), (1, 1, 1)):
        a, b = arr(M, K), arr(K, N)
        call(f"matmul nn {M}x{K}x{N}", F.matmul, a, b)
        call(f"matmul tn {M}x{K}x{N}", F.matmul, arr(K, M).T, b)
        call(f"matmul nt {M}x{K}x{N}", F.matmul, a, arr(N, K).T)
        call(f"matmul tt {M}x{K}x{N}", F.matmul, arr(K, M).T, arr(N, K).T)
        x, w, bias = a, arr(N, K), arr(N)
        for activation in ACTIVATIONS:
            call(f"linear {activation} {M}x{K}->{N}", F.linear, x, w, bias, activation)
        call(f"linear no bias {M}x{K}->{N}", F.linear, x, w)
        call(f"linear bwd {M}x{K}->{N}", F.linear_backward, arr(M, N), x, w)


def activations():
    for name in ("relu", "leaky_relu", "sigmoid", "tanh"):
        forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
        for label, x, dy in (("aligned", arr(4 * 33), arr(4 * 33)), ("odd", arr(3, 17, 31), arr(3, 17, 31)),
                             ("misaligned", misaligned(129), misaligned(129))):
            y = call(f"{name} fwd {label}", forward, x)
            if y is not None:
                call(f"{name} bwd {label}", backward, dy, y)
    for name in ("elu", "selu", "gelu", "softplus", "swish"):  # backward from the input x
        forward, backward = getattr(F, name), getattr(F, f"{name}_backward")
        for label, x, dy in (("aligned", arr(4 * 33), arr(4 * 33)), ("odd", arr(3, 17, 31), arr(3, 17, 31)),
                             ("misaligned", misaligned(129), misaligned(129))):
            call(f"{name} fwd {label}", forward, x)
            call(f"{name} bwd {label}", backward, dy, x)
    call("gelu tanh fwd", F.gelu, arr(3, 17, 31), True)
    call("gelu tanh bwd", F.gelu_backward, arr(3, 17, 31), arr(3, 17, 31), True)


def pooling():
    for (N, C, H, W, k, stride, padding) in ((3, 5, 17, 13, 2, None, 0), (2, 3, 31, 33, 3, 2, 1), (1, 7, 9, 11, (3, 2), 1, "same"),
                                              (2, 3, 19, 20, 2, 3, 1)):  # disjoint windows with gaps and padding
        x = arr(N, C, H, W)
        pooled = call(f"max_pool2d fwd {x.shape} k{k} s{stride} p{padding}", F.max_pool2d, x, k, stride, padding)
        if pooled is None:
            continue
        y, indices = pooled
        call(f"max_pool2d bwd {x.shape}", F.max_pool2d_backward, arr(*y.shape), indices, x.shape, k, stride, padding)
        call(f"sum_pool2d fwd {x.shape}", F.sum_pool2d, x, k, stride, padding)
        call(f"sum_pool2d bwd {x.shape}", F.sum_pool2d_backward, arr(*y.shape), x.shape, k, stride, padding)
        for include_pad in (True, False):
            call(f"avg_pool2d fwd {x.shape} count_include_pad={include_pad}", F.avg_pool2d, x, k, stride, padding, include_pad)
            call(f"avg_pool2d bwd {x.shape} count_include_pad={include_pad}", F.avg_pool2d_backward, arr(*y.shape), x.shape,
                 k, stride, padding, include_pad)


def max_pool_variants():
    """max_pool2d and its backward through each of their variants (chosen by timing, so forced here): the forward's
    generic and fixed-window kernels; the backward's cells, gather and staged variants on disjoint windows, gather
    and staged on overlapping ones, on planes of several staged pieces."""
    from cnn_gpu.ops.pool import max_backward_variants, max_forward_variants, pool_geometry

    for (N, C, H, W, k, stride, padding) in ((3, 5, 37, 41, 3, 3, 1), (2, 3, 33, 65, 3, 2, 1), (1, 2, 3, 1100, 2, 2, 0)):
        x, g = arr(N, C, H, W), pool_geometry((N, C, H, W), k, stride, padding)
        for variant in max_forward_variants(g):
            with forced({"maxpool2d_fwd": variant}):
                pooled = call(f"max_pool2d fwd {variant} {x.shape} k{k} s{stride} p{padding}", F.max_pool2d, x, k, stride,
                              padding)
        if pooled is None:
            continue
        y, indices = pooled
        for variant in max_backward_variants(g):
            with forced({"maxpool2d_bwd": variant}):
                call(f"max_pool2d bwd {variant} {x.shape} k{k} s{stride} p{padding}", F.max_pool2d_backward, arr(*y.shape),
                     indices, x.shape, k, stride, padding)


def losses():
    for N, K in ((1, 1), (3, 17), (33, 10), (7, 1031)):
        logits = arr(N, K)
        call(f"softmax {N}x{K}", F.softmax, logits)
        call(f"log_softmax {N}x{K}", F.log_softmax, logits)
        call(f"softmax_cross_entropy {N}x{K}", F.softmax_cross_entropy, logits, cupy.asarray(rng.integers(0, K, N)))
        labels = cupy.asarray((rng.random((N, K)) > 0.5).astype(numpy.float32))
        call(f"sigmoid_binary_cross_entropy {N}x{K}", F.sigmoid_binary_cross_entropy, logits, labels)
        call(f"mean_squared_error {N}x{K}", F.mean_squared_error, logits, arr(N, K))
    call("softmax 3-D", F.softmax, arr(3, 5, 7))


def dropout():
    for shape, rate in (((3, 17, 31), 0.3), ((129,), 0.5), ((5, 7), 0.0)):
        dropped = call(f"dropout fwd {shape} rate {rate}", F.dropout, arr(*shape), rate, 1234)
        call(f"dropout fwd misaligned rate {rate}", F.dropout, misaligned(131), rate, 99)
        if dropped is not None:
            call(f"dropout bwd {shape} rate {rate}", F.dropout_backward, arr(*shape), dropped[1], rate)


def batchnorm():
    for shape in ((3, 5, 17, 13), (33, 7), (1, 3, 1, 2), (2, 65, 9, 11), (6, 3, 97, 101)):  # the last: split reductions
        C = shape[1]
        x, gamma, beta = arr(*shape), arr(C), arr(C)
        mean, var = arr(C), cupy.abs(arr(C)) + 0.5
        call(f"batch_norm train {shape}", F.batch_norm, x, gamma, beta, mean, var, True, 0.1, 1e-3)
        call(f"batch_norm train no affine {shape}", F.batch_norm, x)
        call(f"batch_norm infer {shape}", F.batch_norm, x, gamma, beta, mean, var, False, 0.1, 1e-3)
        normalised = call(f"batch_norm train, no running stats {shape}", F.batch_norm, x, gamma, beta, training=True)
        if normalised is not None:
            _, saved_mean, saved_invstd = normalised
            call(f"batch_norm bwd {shape}", F.batch_norm_backward, arr(*shape), x, gamma, saved_mean, saved_invstd)


def optimizers():
    for shape in ((3, 17), (129,), (2, 3, 5, 7)):
        param, grad = arr(*shape), arr(*shape)
        velocity = cupy.zeros(shape, dtype=numpy.float32)
        call(f"sgd plain {shape}", F.sgd_update, param, grad, None, 0.01)
        call(f"sgd momentum {shape}", F.sgd_update, param, grad, velocity, 0.01, 0.9)
        call(f"sgd nesterov {shape}", F.sgd_update, param, grad, velocity, 0.01, 0.9, True)
        m, v = cupy.zeros(shape, dtype=numpy.float32), cupy.zeros(shape, dtype=numpy.float32)
        call(f"adam {shape}", F.adam_update, param, grad, m, v, 1)
        call(f"adam step 2, transposed grad {shape}", F.adam_update, param, arr(*shape[::-1]).T, m, v, 2)
        lr_from = cupy.asarray(numpy.float32([0.01]))
        call(f"sgd nesterov, rate from memory {shape}", F.sgd_update, param, grad, velocity, None, 0.9, True,
             learning_rate_from=lr_from)
        velocity.fill(1)
        average, buffer = cupy.zeros(shape, dtype=numpy.float32), cupy.zeros(shape, dtype=numpy.float32)
        call(f"rmsprop plain {shape}", F.rmsprop_update, param, grad, velocity, None, None, 0.01)
        call(f"rmsprop centered momentum {shape}", F.rmsprop_update, param, grad, velocity, average, buffer, 0.01,
             momentum=0.5)
        call(f"rmsprop rate from memory {shape}", F.rmsprop_update, param, grad, velocity, None, None, None,
             learning_rate_from=lr_from)
        call(f"weight decay {shape}", F.weight_decay_update, param, 0.01, 0.004)
        call(f"weight decay rate from memory {shape}", F.weight_decay_update, param, None, 0.004, learning_rate_from=lr_from)


def grouped_conv2d():
    """Grouped and dilated conv2d through the default (CuPy) path, and depthwise through the direct depthwise kernels,
    forced: strides 1 and 2, dilation, channel multipliers 1 and 3, windows 3×3, 5×4, 7×7 and 31×31, several tiles and
    images a block, float4 (OW 16) and scalar stores, a split backward-filter."""
    depthwise = {op: "direct depthwise" for op in ("conv2d_grouped_fwd", "conv2d_grouped_bwd_data", "conv2d_grouped_bwd_filter")}
    shapes = ((3, 6, 17, 16, 6, 3, 3, 1, 1, 1), (2, 4, 31, 33, 12, 5, 4, 2, 2, 1), (2, 5, 29, 27, 5, 7, 7, 1, 6, 2),
              (1, 2, 40, 37, 2, 31, 31, 1, 15, 1), (9, 8, 12, 16, 8, 3, 3, 1, "same", 4))
    for (N, C, H, W, K, R, S, stride, padding, dilation) in shapes:
        x, w, b = arr(N, C, H, W), arr(K, 1, R, S), arr(K)
        for label, choices in (("default", {}), ("depthwise", depthwise)):
            with forced(choices):
                y = call(f"conv2d {label} fwd {x.shape} {w.shape} s{stride} p{padding} d{dilation}", F.conv2d, x, w, b,
                         stride, padding, "relu", dilation=dilation, groups=C)
                if y is not None:
                    call(f"conv2d {label} bwd {x.shape} {w.shape} s{stride} p{padding} d{dilation}", F.conv2d_backward,
                         arr(*y.shape), x, w, stride, padding, dilation=dilation, groups=C)
    x, w = arr(2, 8, 11, 9), arr(8, 2, 3, 3)  # grouped and dilated, not depthwise: the default path only
    y = call("conv2d grouped fwd g4 d2", F.conv2d, x, w, None, 1, 2, dilation=2, groups=4)
    if y is not None:
        call("conv2d grouped bwd g4 d2", F.conv2d_backward, arr(*y.shape), x, w, 1, 2, dilation=2, groups=4)


def grouped_implicit_gemm_conv2d():
    """Grouped, dilated and depthwise conv2d through the grouped implicit GEMMs (conv2d_grouped_*), forced: the default
    tile and the 128×128 one, the forward whole and at its most split (the first shape splits its 288-long per-group
    reduction in 3), backward-filter at its most split (the third shape's 288 pixels in 2); groups 2 and 4, depthwise with multiplier 2, dilations 2 and
    (2, 3), strides 1 and 2, float4 (OH·OW a multiple of 4) and scalar stores, every activation."""
    from cnn_gpu.ops.conv import CONV_TILES, DEFAULT_TILE
    from cnn_gpu.ops.conv.implicit_gemm import GroupedImplicitGemmBackwardData, GroupedImplicitGemmForward

    # N, C, H, W, K, R, S, stride, padding, dilation, groups
    shapes = ((2, 64, 9, 11, 32, 3, 3, 1, 2, 2, 2), (2, 8, 11, 9, 8, 3, 2, 2, (2, 3), (2, 3), 4),
              (3, 6, 8, 12, 12, 3, 3, 1, 1, 1, 6), (1, 4, 13, 11, 8, 3, 3, 2, 2, 2, 4))
    for tile in (DEFAULT_TILE, CONV_TILES[3]):
        for split in (False, True):
            forward = GroupedImplicitGemmForward(tile).name
            choices = {"conv2d_grouped_fwd": most_split(forward) if split else forward,  # forward: the tile's name
                       "conv2d_grouped_bwd_data": GroupedImplicitGemmBackwardData(tile).name,
                       "conv2d_grouped_bwd_filter": most_split(forward)}
            with forced(choices):
                for (N, C, H, W, K, R, S, stride, padding, dilation, groups) in shapes:
                    x, w = arr(N, C, H, W), arr(K, C // groups, R, S)
                    label = f"{tile.bm}x{tile.bn} {'split ' if split else ''}{x.shape} {w.shape} s{stride} d{dilation} g{groups}"
                    for activation in ACTIVATIONS:
                        call(f"conv2d grouped implicit GEMM fwd {activation} {label}", F.conv2d, x, w, arr(K), stride,
                             padding, activation, dilation=dilation, groups=groups)
                    y = call(f"conv2d grouped implicit GEMM fwd no bias {label}", F.conv2d, x, w, None, stride, padding,
                             dilation=dilation, groups=groups)
                    if y is not None:
                        call(f"conv2d grouped implicit GEMM bwd {label}", F.conv2d_backward, arr(*y.shape), x, w, stride,
                             padding, dilation=dilation, groups=groups)


def main() -> int:
    cupy.cuda.set_allocator(None)  # no memory pool: every array is its own allocation for memcheck
    for family in (conv2d, winograd_conv2d, split_forward_and_as_forward_conv2d, few_channels_conv2d, few_filters_conv2d, grouped_conv2d, grouped_implicit_gemm_conv2d, gemm, activations, pooling, max_pool_variants, losses, dropout, batchnorm, optimizers):
        family()
    if failures:
        print(f"{len(failures)} call(s) failed: {', '.join(failures)}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
