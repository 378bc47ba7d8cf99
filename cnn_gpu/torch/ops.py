"""cnn_gpu's ops as PyTorch operators: ``torch.ops.cnn_gpu.<name>``.

Each is a ``torch.library.custom_op`` with
- one implementation for CPU and CUDA tensors: the NumPy path on zero-copy views of CPU tensors, our
  CUDA kernels on CUDA tensors (handed over with DLPack, launched on PyTorch's current stream);
- a fake implementation (shapes and dtypes only), so torch.compile and FakeTensor tracing never run it;
- an autograd formula whose backward is itself an operator here (``<name>_backward``), so torch.compile
  traces the backward pass too. The backward operators have no derivative: differentiating them
  (double backward, ``torch.func.hessian``) raises a RuntimeError naming the operator;
- an autocast rule, PyTorch's for its float32-only ops: under ``torch.autocast`` (CPU or CUDA) the
  floating inputs are cast to float32 and the op runs in float32 (float64 inputs stay float64).

The modules call an op through ``call``: the operator itself under torch.compile, FX tracing, fake tensors and
dispatch modes; its autograd formula as a ``torch.autograd.Function`` under the torch.func transforms; and in plain
eager mode the same formula over the op's implementation directly, skipping the dispatcher's round trips through
Python (the same results, bit for bit; tests/test_torch_ops.py holds them equal).

Dtypes: float32 on both devices, float64 too on the CPU (gradient checks). float16 / bfloat16 outside
autocast is a TypeError naming the dtype (our kernels are float32 only).
"""
from typing import Optional

import torch
from torch import Tensor

from cnn_gpu import functional as F
from cnn_gpu.ops.arrays import array_module
from cnn_gpu.ops.batchnorm import batch_norm_inference_backward
from cnn_gpu.torch.bridge import (call, check_tensors, differentiable, empty, float32_under_autocast, no_derivative,
                                  non_differentiable, operator, run, zeros_or_empty)

__all__ = ["BACKWARD_OPS", "FORWARD_OPS", "call"]


# ---- conv2d --------------------------------------------------------------------------------------
def _conv_padding(padding, same):
    return "same" if same else tuple(padding)


# Output shapes where no kernel runs (the fakes, an empty batch) are torch's own shape rules on the same
# arguments: the ops follow torch.nn's sizes, and torch's rules take symbolic sizes (torch.compile's dynamic
# shapes), which our geometry, computed once per concrete shape, does not.
def _conv2d_shape(x, weight, bias, stride, padding, dilation, groups, same):
    if same:  # ceil(size / stride): torch's 'same' (stride 1), Keras's for any stride
        return (x.shape[0], weight.shape[0], -(-x.shape[2] // stride[0]), -(-x.shape[3] // stride[1]))
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups).shape


def _pool_shape(x, kernel_size, stride, padding, ceil_mode=False):
    return torch.nn.functional.avg_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode).shape


@operator("cnn_gpu::conv2d")
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
           dilation: list[int], groups: int, same: bool) -> Tensor:
    """conv(x, weight) + bias, NCHW, weight (K, C // groups, R, S); padding (h, w) of zeros, or Keras/PyTorch
    'same' when same is True."""
    check_tensors("conv2d", x=x, weight=weight, bias=bias)
    if x.shape[0] == 0:
        return x.new_empty(_conv2d_shape(x, weight, bias, stride, padding, dilation, groups, same))
    return run(F.conv2d, x, weight, bias, stride=tuple(stride), padding=_conv_padding(padding, same),
               dilation=tuple(dilation), groups=groups)


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, same):
    check_tensors("conv2d", x=x, weight=weight, bias=bias)
    return x.new_empty(_conv2d_shape(x, weight, bias, stride, padding, dilation, groups, same))


@operator("cnn_gpu::conv2d_backward")
def conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int],
                    dilation: list[int], groups: int, same: bool,
                    output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); those output_mask leaves out are empty tensors (and not computed)."""
    check_tensors("conv2d_backward", grad=grad, x=x, weight=weight)
    want_dx, want_dw, want_db = output_mask
    if x.shape[0] == 0:
        return (torch.zeros_like(x) if want_dx else empty(x), zeros_or_empty(want_dw, weight),
                weight.new_zeros(weight.shape[0]) if want_db else empty(weight))
    dx, dw, db = run(lambda g, a, w: F.conv2d_backward(g, a, w, tuple(stride), _conv_padding(padding, same),
                                                        dilation=tuple(dilation), groups=groups,
                                                        compute_dx=want_dx, compute_dw=want_dw), grad, x, weight)
    return (dx if want_dx else empty(x), dw if want_dw else empty(weight), db if want_db else empty(weight))


@conv2d_backward.register_fake
def _(grad, x, weight, stride, padding, dilation, groups, same, output_mask):
    want_dx, want_dw, want_db = output_mask
    return (x.new_empty(x.shape) if want_dx else empty(x), weight.new_empty(weight.shape) if want_dw else empty(weight),
            weight.new_empty(weight.shape[0]) if want_db else empty(weight))


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, same = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation, groups, same, bias is not None)


def _conv2d_grad(ctx, grad):
    x, weight = ctx.saved_tensors
    stride, padding, dilation, groups, same, has_bias = ctx.conf
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
    dx, dw, db = call(conv2d_backward, grad, x, weight, stride, padding, dilation, groups, same, mask)
    return (dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None) + (None,) * 5


conv2d.differentiable = differentiable(conv2d, _conv2d_grad, _conv2d_setup)


# ---- linear --------------------------------------------------------------------------------------
def _check_linear_shapes(x, weight, bias):
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"cnn_gpu::linear: x must be (N, in_features) and weight (out_features, in_features), "
                         f"got shapes {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"cnn_gpu::linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


@operator("cnn_gpu::linear")
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x @ weight.T + bias for a 2-D x (the module folds any leading dimensions into one)."""
    check_tensors("linear", x=x, weight=weight, bias=bias)
    _check_linear_shapes(x, weight, bias)
    if x.shape[0] == 0:
        return x.new_empty((0, weight.shape[0]))
    return run(F.linear, x, weight, bias)


@linear.register_fake
def _(x, weight, bias):
    check_tensors("linear", x=x, weight=weight, bias=bias)
    _check_linear_shapes(x, weight, bias)
    return x.new_empty((x.shape[0], weight.shape[0]))


@operator("cnn_gpu::linear_backward")
def linear_backward(grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias)."""
    check_tensors("linear_backward", grad=grad, x=x, weight=weight)
    if x.shape[0] == 0:
        return torch.zeros_like(x), torch.zeros_like(weight), weight.new_zeros(weight.shape[0])
    return run(F.linear_backward, grad, x, weight)


@linear_backward.register_fake
def _(grad, x, weight):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_grad(ctx, grad):
    x, weight = ctx.saved_tensors
    dx, dw, db = call(linear_backward, grad, x, weight)
    return dx, dw, db if ctx.has_bias else None


linear.differentiable = differentiable(linear, _linear_grad, _linear_setup)


# ---- pooling -------------------------------------------------------------------------------------
@operator("cnn_gpu::max_pool2d")
def max_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """(y, indices): each window's maximum and its h * W + w position in the input plane (int64)."""
    check_tensors("max_pool2d", x=x)
    if x.shape[0] == 0:
        shape = _pool_shape(x, kernel_size, stride, padding, ceil_mode)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)
    return run(F.max_pool2d, x, kernel_size=tuple(kernel_size), stride=tuple(stride), padding=tuple(padding),
                ceil_mode=ceil_mode)


@max_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode):
    check_tensors("max_pool2d", x=x)
    shape = _pool_shape(x, kernel_size, stride, padding, ceil_mode)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


@operator("cnn_gpu::max_pool2d_backward")
def max_pool2d_backward(grad: Tensor, indices: Tensor, x_shape: list[int], kernel_size: list[int], stride: list[int],
                        padding: list[int], ceil_mode: bool) -> Tensor:
    check_tensors("max_pool2d_backward", grad=grad, indices=indices)
    if x_shape[0] == 0:
        return grad.new_zeros(x_shape)
    return run(lambda g, i: F.max_pool2d_backward(g, i, tuple(x_shape), tuple(kernel_size), tuple(stride),
                                                   tuple(padding), ceil_mode=ceil_mode), grad, indices)


@max_pool2d_backward.register_fake
def _(grad, indices, x_shape, kernel_size, stride, padding, ceil_mode):
    return grad.new_empty(x_shape)


def _max_pool2d_setup(ctx, inputs, output):
    x, kernel_size, stride, padding, ceil_mode = inputs
    non_differentiable(ctx, output[1])
    ctx.save_for_backward(output[1])
    ctx.conf = (list(x.shape), kernel_size, stride, padding, ceil_mode)


def _max_pool2d_grad(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return call(max_pool2d_backward, grad, indices, *ctx.conf), None, None, None, None


max_pool2d.differentiable = differentiable(max_pool2d, _max_pool2d_grad, _max_pool2d_setup)


def _sum_pool(x, kernel_size, stride, padding, count_include_pad, divisor_override):
    if divisor_override is not None:
        return F.sum_pool2d(x, kernel_size, stride, padding) / x.dtype.type(divisor_override)
    return F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=count_include_pad)


def _sum_pool_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad, divisor_override):
    if divisor_override is not None:
        return F.sum_pool2d_backward(dy / dy.dtype.type(divisor_override), x_shape, kernel_size, stride, padding)
    return F.avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad=count_include_pad)


@operator("cnn_gpu::avg_pool2d")
def avg_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], count_include_pad: bool,
               divisor_override: Optional[int]) -> Tensor:
    """Each window's sum over its area (count_include_pad), its in-bounds count, or divisor_override."""
    check_tensors("avg_pool2d", x=x)
    if x.shape[0] == 0:
        return x.new_empty(_pool_shape(x, kernel_size, stride, padding))
    return run(lambda a: _sum_pool(a, tuple(kernel_size), tuple(stride), tuple(padding), count_include_pad,
                                    divisor_override), x)


@avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, count_include_pad, divisor_override):
    check_tensors("avg_pool2d", x=x)
    return x.new_empty(_pool_shape(x, kernel_size, stride, padding))


@operator("cnn_gpu::avg_pool2d_backward")
def avg_pool2d_backward(grad: Tensor, x_shape: list[int], kernel_size: list[int], stride: list[int],
                        padding: list[int], count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    check_tensors("avg_pool2d_backward", grad=grad)
    if x_shape[0] == 0:
        return grad.new_zeros(x_shape)
    return run(lambda g: _sum_pool_backward(g, tuple(x_shape), tuple(kernel_size), tuple(stride), tuple(padding),
                                             count_include_pad, divisor_override), grad)


@avg_pool2d_backward.register_fake
def _(grad, x_shape, kernel_size, stride, padding, count_include_pad, divisor_override):
    return grad.new_empty(x_shape)


def _avg_pool2d_setup(ctx, inputs, output):
    x, *conf = inputs
    ctx.conf = (list(x.shape), *conf)


def _avg_pool2d_grad(ctx, grad):
    return (call(avg_pool2d_backward, grad, *ctx.conf),) + (None,) * 5


avg_pool2d.differentiable = differentiable(avg_pool2d, _avg_pool2d_grad, _avg_pool2d_setup)


# ---- activations ---------------------------------------------------------------------------------
# relu, sigmoid and tanh differentiate from their output y; leaky_relu from its input x, which keeps the
# sign of x whatever the slope's sign (y does not when the slope is negative, which the op contract refuses:
# a negative slope runs as array arithmetic here, on either device).
def _leaky_relu(x, slope):
    if slope >= 0:
        return F.leaky_relu(x, slope)
    return array_module(x=x).where(x > 0, x, x * x.dtype.type(slope))  # a select: 0 * inf would be NaN


def _activation_backward(dy, saved, name, slope):
    if name != "leaky_relu":
        return getattr(F, name + "_backward")(dy, saved)
    if slope >= 0:  # the sign of y is the sign of x: the op's own backward, on x
        return F.leaky_relu_backward(dy, saved, slope)
    return array_module(dy=dy).where(saved > 0, dy, dy * dy.dtype.type(slope))


@operator("cnn_gpu::activation_backward")
def activation_backward(grad: Tensor, saved: Tensor, name: str, negative_slope: float) -> Tensor:
    """dx of the activation `name` from grad and `saved` (the output y; the input x for leaky_relu)."""
    check_tensors("activation_backward", grad=grad, saved=saved)
    return run(lambda g, s: _activation_backward(g, s, name, negative_slope), grad, saved)


@activation_backward.register_fake
def _(grad, saved, name, negative_slope):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _activation(name, function, with_slope=False):
    """Registers cnn_gpu::<name>(x) (or (x, negative_slope)) and its autograd formula."""
    def implementation(x, *slope):
        check_tensors(name, x=x)
        return run(lambda a: function(a, *slope), x)

    schema = "(Tensor x, float negative_slope) -> Tensor" if with_slope else "(Tensor x) -> Tensor"
    op = operator(f"cnn_gpu::{name}", implementation, schema=schema)

    def fake(x, *slope):
        check_tensors(name, x=x)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0] if with_slope else output)
        ctx.slope = inputs[1] if with_slope else 0.0

    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        dx = call(activation_backward, grad, saved, name, ctx.slope)
        return (dx, None) if with_slope else dx

    op.register_fake(fake)
    op.differentiable = differentiable(op, backward, setup_context)
    return op


relu = _activation("relu", F.relu)
leaky_relu = _activation("leaky_relu", _leaky_relu, with_slope=True)
sigmoid = _activation("sigmoid", F.sigmoid)
tanh = _activation("tanh", F.tanh)


# ---- softmax cross-entropy -----------------------------------------------------------------------
def _check_logits(op, logits, labels):
    """Before check_tensors, whose dtype rule for floating tensors would otherwise name float labels first."""
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"cnn_gpu::{op}: labels must be integer class indices of shape (N,), got {labels.dtype} of "
                        f"shape {tuple(labels.shape)} (class probabilities are not supported)")
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"cnn_gpu::{op}: logits must be (N, K) and labels (N,), got shapes "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")


@operator("cnn_gpu::cross_entropy")
def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The mean softmax cross-entropy of (N, K) logits against (N,) integer labels: a 0-d tensor."""
    _check_logits("cross_entropy", logits, labels)
    check_tensors("cross_entropy", logits=logits, labels=labels)
    return run(lambda a, b: F.softmax_cross_entropy(a, b)[0], logits, labels)


@cross_entropy.register_fake
def _(logits, labels):
    _check_logits("cross_entropy", logits, labels)
    check_tensors("cross_entropy", logits=logits, labels=labels)
    return logits.new_empty(())


@operator("cnn_gpu::cross_entropy_backward")
def cross_entropy_backward(grad: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """dlogits = grad * (softmax(logits) - onehot(labels)) / N: the fused kernel run again (the forward
    returns the loss only, so no hidden output needs to be kept)."""
    check_tensors("cross_entropy_backward", grad=grad, logits=logits, labels=labels)
    dlogits = run(lambda a, b: F.softmax_cross_entropy(a, b, check_labels=False)[1], logits, labels)
    return dlogits.mul_(grad)


@cross_entropy_backward.register_fake
def _(grad, logits, labels):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _cross_entropy_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _cross_entropy_grad(ctx, grad):
    logits, labels = ctx.saved_tensors
    return call(cross_entropy_backward, grad, logits, labels), None


cross_entropy.differentiable = differentiable(cross_entropy, _cross_entropy_grad, _cross_entropy_setup)


# ---- dropout -------------------------------------------------------------------------------------
@operator("cnn_gpu::dropout")
def dropout(x: Tensor, p: float, seed: Tensor) -> tuple[Tensor, Tensor]:
    """(y, mask): y = x * mask / (1 - p), mask (uint8) drawn from the int64 seed (a CPU scalar) and the
    element index by cnn_gpu's counter-based hash; 0 <= p < 1."""
    check_tensors("dropout", x=x)
    return run(lambda a: F.dropout(a, p, int(seed)), x)


@dropout.register_fake
def _(x, p, seed):
    check_tensors("dropout", x=x)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape, dtype=torch.uint8)


@operator("cnn_gpu::dropout_backward")
def dropout_backward(grad: Tensor, mask: Tensor, p: float) -> Tensor:
    check_tensors("dropout_backward", grad=grad, mask=mask)
    return run(lambda g, m: F.dropout_backward(g, m, p), grad, mask)


@dropout_backward.register_fake
def _(grad, mask, p):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _dropout_setup(ctx, inputs, output):
    non_differentiable(ctx, output[1])
    ctx.save_for_backward(output[1])
    ctx.p = inputs[1]


def _dropout_grad(ctx, grad, _grad_mask):
    (mask,) = ctx.saved_tensors
    return call(dropout_backward, grad, mask, ctx.p), None, None


dropout.differentiable = differentiable(dropout, _dropout_grad, _dropout_setup)


# ---- batch normalisation -------------------------------------------------------------------------
def _check_batch_norm(x, weight, bias, running_mean, running_var):
    if x.dim() not in (2, 4):
        raise ValueError(f"cnn_gpu::batch_norm: x must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"cnn_gpu::batch_norm: {name} must have shape ({C},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")


@operator("cnn_gpu::batch_norm")
def batch_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
               running_var: Optional[Tensor], training: bool, momentum: float,
               eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, invstd, new_running_mean, new_running_var). training: the batch's statistics, and the running
    ones (if given) moved towards them by momentum; otherwise the running statistics. mean and invstd are the
    statistics used. The operator is functional (autograd needs that): the caller copies the new running
    statistics into its buffers; without running statistics they are empty."""
    check_tensors("batch_norm", x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _check_batch_norm(x, weight, bias, running_mean, running_var)
    new_mean = empty(x) if running_mean is None else running_mean.clone()
    new_var = empty(x) if running_var is None else running_var.clone()
    if x.shape[0] == 0 and not training:
        return x.new_empty(x.shape), running_mean.clone(), torch.rsqrt(running_var + eps), new_mean, new_var
    y, mean, invstd = run(lambda *a: F.batch_norm(*a, training=training, momentum=momentum, eps=eps),
                           x, weight, bias, None if running_mean is None else new_mean,
                           None if running_var is None else new_var)
    return y, mean, invstd, new_mean, new_var


@batch_norm.register_fake
def _(x, weight, bias, running_mean, running_var, training, momentum, eps):
    check_tensors("batch_norm", x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    _check_batch_norm(x, weight, bias, running_mean, running_var)
    C = x.shape[1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(C), x.new_empty(C),
            empty(x) if running_mean is None else torch.empty_like(running_mean),
            empty(x) if running_var is None else torch.empty_like(running_var))


@operator("cnn_gpu::batch_norm_backward")
def batch_norm_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, invstd: Tensor,
                        training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); training: the batch statistics' terms included; else they are constants."""
    check_tensors("batch_norm_backward", grad=grad, x=x, weight=weight, mean=mean, invstd=invstd)
    function = F.batch_norm_backward if training else batch_norm_inference_backward
    if x.shape[0] == 0:
        return torch.zeros_like(x), mean.new_zeros(mean.shape), mean.new_zeros(mean.shape)
    return run(function, grad, x, weight, mean, invstd)


@batch_norm_backward.register_fake
def _(grad, x, weight, mean, invstd, training):
    return torch.empty_like(x, memory_format=torch.contiguous_format), mean.new_empty(mean.shape), mean.new_empty(mean.shape)


def _batch_norm_setup(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, training, momentum, eps = inputs
    _, mean, invstd, new_mean, new_var = output
    non_differentiable(ctx, mean, invstd, new_mean, new_var)
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.conf = (training, weight is not None, bias is not None)


def _batch_norm_grad(ctx, grad, *_grad_statistics):
    x, weight, mean, invstd = ctx.saved_tensors
    training, has_weight, has_bias = ctx.conf
    dx, dweight, dbias = call(batch_norm_backward, grad, x, weight, mean, invstd, training)
    return dx, dweight if has_weight else None, dbias if has_bias else None, None, None, None, None, None


batch_norm.differentiable = differentiable(batch_norm, _batch_norm_grad, _batch_norm_setup)


FORWARD_OPS = (conv2d, linear, max_pool2d, avg_pool2d, relu, leaky_relu, sigmoid, tanh, cross_entropy, dropout,
               batch_norm)
BACKWARD_OPS = (conv2d_backward, linear_backward, max_pool2d_backward, avg_pool2d_backward, activation_backward,
                cross_entropy_backward, dropout_backward, batch_norm_backward)
for _op in FORWARD_OPS + BACKWARD_OPS:
    float32_under_autocast(_op)
for _op in BACKWARD_OPS:
    no_derivative(_op)
