"""PyTorch modules and autograd functions running cnn_gpu's ops (drop-in for torch.nn layers).

    from cnn_gpu.torch import Conv2d          # instead of torch.nn.Conv2d
    model = torch.nn.Sequential(Conv2d(1, 32, 5), torch.nn.ReLU(), ...)

CPU tensors run the NumPy backend through zero-copy views (``Tensor.numpy()`` / ``torch.from_numpy``);
CUDA tensors run our CUDA kernels on the tensor's device and on PyTorch's current stream, handed over
with DLPack (no host round trip, no device copy). Each module subclasses the ``torch.nn`` module of
the same name, so parameters, initialisation and ``state_dict()`` are PyTorch's own and
``ours.load_state_dict(theirs.state_dict())`` works both ways; only ``forward`` changes.

torch is imported here, not by ``import cnn_gpu``: it stays an optional extra.
"""
from __future__ import annotations

import contextlib

import torch

from cnn_gpu import functional as F

__all__ = [
    "AvgPool2d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "LeakyReLU", "Linear", "MaxPool2d",
    "ReLU", "Sigmoid", "Tanh", "conv2d", "cross_entropy", "linear", "max_pool2d",
]


# ---- zero-copy hand-over -------------------------------------------------------------------------
def _check_tensors(**tensors):
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device: {listing}")
    for name, t in tensors.items():
        if t is not None and t.is_cuda and t.dtype != torch.float32 and t.is_floating_point():
            raise TypeError(f"{name} must be float32 on CUDA, got {t.dtype}")


def _to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of a tensor's storage, or None."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        import cupy

        return cupy.from_dlpack(t)
    return t.numpy()


def _to_tensor(a):
    if a is None:
        return None
    if type(a).__module__.startswith("cupy"):
        return torch.from_dlpack(a)
    return torch.from_numpy(a)


@contextlib.contextmanager
def _on_device_of(t):
    """Run CuPy launches on the tensor's device and on PyTorch's current stream there."""
    if not t.is_cuda:
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream, t.device.index):
        yield


def _run(op, *tensors, **kwargs):
    """op on array views of the tensors; results back as tensors (tuples stay tuples)."""
    anchor = next(t for t in tensors if t is not None)
    with _on_device_of(anchor):
        out = op(*(_to_array(t) for t in tensors), **kwargs)
        if isinstance(out, tuple):
            return tuple(_to_tensor(o) for o in out)
        return _to_tensor(out)


# ---- autograd functions --------------------------------------------------------------------------
class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding):
        _check_tensors(x=x, weight=w, bias=b)
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, b is not None)
        return _run(F.conv2d, x, w, b, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        stride, padding, has_bias = ctx.conf
        dx, dw, db = _run(F.conv2d_backward, dy.contiguous(), x, w, stride=stride, padding=padding)
        return dx, dw, db if has_bias else None, None, None


class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        _check_tensors(x=x, weight=w, bias=b)
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _run(F.linear, x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw, db = _run(F.linear_backward, dy.contiguous(), x, w)
        return dx, dw, db if ctx.has_bias else None


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        y, indices = _run(F.max_pool2d, x, kernel_size=kernel_size, stride=stride, padding=padding)
        ctx.save_for_backward(indices)
        ctx.conf = (tuple(x.shape), kernel_size, stride, padding)
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    def backward(ctx, dy, _dindices):
        (indices,) = ctx.saved_tensors
        x_shape, kernel_size, stride, padding = ctx.conf
        dx = _run(lambda g, i: F.max_pool2d_backward(g, i, x_shape, kernel_size, stride, padding), dy.contiguous(), indices)
        return dx, None, None, None


class AvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        ctx.conf = (tuple(x.shape), kernel_size, stride, padding)
        return _run(F.avg_pool2d, x, kernel_size=kernel_size, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, dy):
        x_shape, kernel_size, stride, padding = ctx.conf
        return _run(lambda g: F.avg_pool2d_backward(g, x_shape, kernel_size, stride, padding), dy.contiguous()), None, None, None


class ActivationFunction(torch.autograd.Function):
    """relu / leaky_relu / sigmoid / tanh; backward from the saved output."""

    @staticmethod
    def forward(ctx, x, name, negative_slope):
        ctx.conf = (name, negative_slope)
        extra = (negative_slope,) if name == "leaky_relu" else ()
        y = _run(lambda a: getattr(F, name)(a, *extra), x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        name, negative_slope = ctx.conf
        extra = (negative_slope,) if name == "leaky_relu" else ()
        dx = _run(lambda g, o: getattr(F, name + "_backward")(g, o, *extra), dy.contiguous(), y)
        return dx, None, None


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels):
        _check_tensors(logits=logits, labels=labels)
        loss, dlogits = _run(F.softmax_cross_entropy, logits, labels)
        ctx.save_for_backward(dlogits)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        (dlogits,) = ctx.saved_tensors
        return dlogits * dloss, None


class DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rate, seed):
        y, mask = _run(F.dropout, x, rate=rate, seed=seed)
        ctx.save_for_backward(mask)
        ctx.rate = rate
        return y

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved_tensors
        return _run(F.dropout_backward, dy.contiguous(), mask, rate=ctx.rate), None, None


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm; running statistics are updated in place through the views."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, momentum, eps):
        _check_tensors(x=x, weight=gamma, bias=beta)
        y, mean, invstd = _run(F.batch_norm, x, gamma, beta, running_mean, running_var, training=True, momentum=momentum, eps=eps)
        ctx.save_for_backward(x, gamma, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gamma, mean, invstd = ctx.saved_tensors
        dx, dgamma, dbeta = _run(F.batch_norm_backward, dy.contiguous(), x, gamma, mean, invstd)
        return dx, dgamma, dbeta, None, None, None, None


# ---- functional wrappers -------------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0):
    return Conv2dFunction.apply(x, weight, bias, _pair(stride), _padding(padding))


def linear(x, weight, bias=None):
    return LinearFunction.apply(x, weight, bias)


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    y, indices = MaxPool2dFunction.apply(x, _pair(kernel_size), _pair(stride if stride is not None else kernel_size), _pair(padding))
    return (y, indices) if return_indices else y


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of (N, K) logits against int64 labels (torch.nn.functional.cross_entropy)."""
    return SoftmaxCrossEntropyFunction.apply(logits, labels)


def _pair(v):
    return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _padding(p):
    return p if isinstance(p, str) else _pair(p)


# ---- modules (torch.nn subclasses: same parameters, buffers and state_dict) -----------------------
class Conv2d(torch.nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, **kwargs)
        if self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("cnn_gpu.torch.Conv2d supports dilation=1, groups=1, padding_mode='zeros' only, "
                             f"got dilation={self.dilation}, groups={self.groups}, padding_mode={self.padding_mode!r}")

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Linear(torch.nn.Linear):
    def forward(self, x):
        return linear(x, self.weight, self.bias)


class MaxPool2d(torch.nn.MaxPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, **kwargs):
        super().__init__(kernel_size, stride=stride, padding=padding, **kwargs)
        if self.dilation not in (1, (1, 1)) or self.ceil_mode:
            raise ValueError("cnn_gpu.torch.MaxPool2d supports dilation=1 and ceil_mode=False only")

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, **kwargs):
        super().__init__(kernel_size, stride=stride, padding=padding, **kwargs)
        if self.ceil_mode or not self.count_include_pad or self.divisor_override is not None:
            raise ValueError("cnn_gpu.torch.AvgPool2d supports ceil_mode=False, count_include_pad=True, no divisor_override")

    def forward(self, x):
        stride = self.stride if self.stride is not None else self.kernel_size
        return AvgPool2dFunction.apply(x, _pair(self.kernel_size), _pair(stride), _pair(self.padding))


class ReLU(torch.nn.ReLU):
    def forward(self, x):
        return ActivationFunction.apply(x, "relu", 0.0)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, x):
        return ActivationFunction.apply(x, "leaky_relu", float(self.negative_slope))


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, x):
        return ActivationFunction.apply(x, "sigmoid", 0.0)


class Tanh(torch.nn.Tanh):
    def forward(self, x):
        return ActivationFunction.apply(x, "tanh", 0.0)


class Flatten(torch.nn.Flatten):
    """Flatten is a view; PyTorch's own forward already is one, nothing to replace."""


class Dropout(torch.nn.Dropout):
    """Dropout whose mask comes from cnn_gpu's counter-based hash, seeded from torch's generator
    (so ``torch.manual_seed`` makes runs reproducible)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return DropoutFunction.apply(x, float(self.p), seed)


class BatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"BatchNorm2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if not self.affine:
            raise ValueError("cnn_gpu.torch.BatchNorm2d supports affine=True only")
        if self.training or not self.track_running_stats:
            if self.track_running_stats:
                self.num_batches_tracked += 1
            momentum = 0.1 if self.momentum is None else self.momentum
            return BatchNormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)
        # Inference: a per-channel affine map of the running statistics, differentiable through autograd.
        y, _, _ = _run(F.batch_norm, x.detach(), self.weight.detach(), self.bias.detach(),
                       self.running_mean, self.running_var, training=False, momentum=0.0, eps=self.eps)
        return y
