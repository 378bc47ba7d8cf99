"""PyTorch modules and functions running cnn_gpu's ops (drop-ins for torch.nn layers).

    from cnn_gpu.torch import Conv2d          # instead of torch.nn.Conv2d
    model = torch.nn.Sequential(Conv2d(1, 32, 5), torch.nn.ReLU(), ...)

Each module subclasses the ``torch.nn`` module of the same name, so parameters, initialisation and
``state_dict()`` are PyTorch's own and ``ours.load_state_dict(theirs.state_dict())`` works both ways;
only ``forward`` changes. It calls a PyTorch operator, ``torch.ops.cnn_gpu.<name>`` (cnn_gpu.torch.ops):
CPU tensors run the NumPy path through zero-copy views, CUDA tensors our kernels on PyTorch's current
stream. The operators have fake implementations and autograd formulas, so ``torch.compile(model,
fullgraph=True)``, ``torch.func.grad`` and ``torch.library.opcheck`` work; under ``torch.autocast`` they
compute in float32 (PyTorch's rule for its float32-only ops). Options we do not implement raise a
ValueError naming the argument when the module is built; the torch.nn layer can take its place there.

torch is imported here, not by ``import cnn_gpu``: it stays an optional extra.
"""
from __future__ import annotations

import torch

from cnn_gpu.torch import ops  # noqa: F401  (registers torch.ops.cnn_gpu.*)

__all__ = [
    "AvgPool2d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "LeakyReLU", "Linear", "MaxPool2d", "ReLU",
    "Sigmoid", "Tanh", "avg_pool2d", "batch_norm", "conv2d", "cross_entropy", "dropout", "leaky_relu", "linear",
    "max_pool2d", "relu", "sigmoid", "tanh",
]


def _pair(v):
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _refuse(layer: str, argument: str, value, supported: str):
    raise ValueError(f"cnn_gpu.torch.{layer} supports {supported}, got {argument}={value!r}; "
                     f"torch.nn.{layer} can take its place for this")


def _batched(x, name: str):
    """x as (N, C, H, W), and whether it was one unbatched (C, H, W) image (as torch.nn takes it)."""
    if x.dim() == 3:
        return x.unsqueeze(0), True
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    return x, False


# ---- functions (each a leaf for torch.fx.symbolic_trace, wrapped below) -------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: weight (K, C // groups, R, S); padding an int, a pair, 'valid' or 'same'
    (zeros; the Conv2d module pads with its padding_mode first)."""
    x, unbatched = _batched(x, "conv2d")
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    same = padding == "same"
    pads = [0, 0] if isinstance(padding, str) else _pair(padding)
    y = ops.call(ops.conv2d, x, weight, bias, _pair(stride), pads, _pair(dilation), int(groups), same)
    return y.squeeze(0) if unbatched else y


def linear(x, weight, bias=None):
    """x @ weight.T + bias over the last dimension of x, any leading dimensions (torch's (*, in_features))."""
    if x.dim() == 0:
        raise ValueError("linear expects an input of at least 1 dimension (*, in_features), got a 0-d tensor")
    y = ops.call(ops.linear, x.flatten(0, -2) if x.dim() > 1 else x.unsqueeze(0), weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, return_indices=False):
    x, unbatched = _batched(x, "max_pool2d")
    y, indices = ops.call(ops.max_pool2d, 
        x, _pair(kernel_size), _pair(kernel_size if stride is None else stride), _pair(padding), bool(ceil_mode))
    if unbatched:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return (y, indices) if return_indices else y


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, divisor_override=None):
    x, unbatched = _batched(x, "avg_pool2d")
    y = ops.call(ops.avg_pool2d, x, _pair(kernel_size), _pair(kernel_size if stride is None else stride),
                                     _pair(padding), bool(count_include_pad), divisor_override)
    return y.squeeze(0) if unbatched else y


def relu(x):
    return ops.call(ops.relu, x)


def leaky_relu(x, negative_slope=0.01):
    return ops.call(ops.leaky_relu, x, float(negative_slope))


def sigmoid(x):
    return ops.call(ops.sigmoid, x)


def tanh(x):
    return ops.call(ops.tanh, x)


def dropout(x, p=0.5, training=True):
    """Zeroes each element with probability p and scales the rest by 1 / (1 - p), as torch's dropout; the mask
    comes from cnn_gpu's counter-based hash, seeded from torch's generator (torch.manual_seed reproduces it)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0  # as torch: zeros (NaN stays NaN), a gradient of zeros
    seed = torch.randint(0, 2**62, (), dtype=torch.int64)
    return ops.call(ops.dropout, x, float(p), seed)[0]


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm for (N, C) and (N, C, H, W) inputs: batch statistics when training
    (running_mean / running_var, if given, updated in place), the running ones otherwise."""
    y, _, _, new_mean, new_var = ops.call(ops.batch_norm, x, weight, bias, running_mean, running_var,
                                                              bool(training), float(momentum), float(eps))
    if training and running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return y


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of (N, K) logits against (N,) integer class indices, or of one unbatched (K,)
    row against a 0-d index (torch.nn.functional.cross_entropy with its defaults)."""
    if logits.dim() == 1 and labels.dim() == 0:
        logits, labels = logits.unsqueeze(0), labels.unsqueeze(0)
    return ops.call(ops.cross_entropy, logits, labels)


for _name in ("conv2d", "linear", "max_pool2d", "avg_pool2d", "dropout", "batch_norm"):
    torch.fx.wrap(_name)


# ---- modules (torch.nn subclasses: same parameters, buffers and state_dict) -----------------------
class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d with every option: groups, dilation, padding_mode ('zeros', 'reflect', 'replicate',
    'circular') and padding='same'."""

    def forward(self, x):
        if self.padding_mode == "zeros":
            return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        # torch.nn.Conv2d's own steps: pad with the mode (torch's pad, any device, traceable), then no padding
        x = torch.nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        return conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Linear(torch.nn.Linear):
    def forward(self, x):
        return linear(x, self.weight, self.bias)


class MaxPool2d(torch.nn.MaxPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride=stride, padding=padding, dilation=dilation,
                         return_indices=return_indices, ceil_mode=ceil_mode)
        if _pair(self.dilation) != [1, 1]:
            _refuse("MaxPool2d", "dilation", dilation, "dilation=1")

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, divisor_override=divisor_override)
        if self.ceil_mode:
            _refuse("AvgPool2d", "ceil_mode", ceil_mode, "ceil_mode=False")

    def forward(self, x):
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad, self.divisor_override)


# Activations and dropout take torch's `inplace` flag and compute out of place: the result is the same tensor
# values, and the input is left as it was.
class ReLU(torch.nn.ReLU):
    def forward(self, x):
        return relu(x)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, x):
        return leaky_relu(x, self.negative_slope)


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, x):
        return sigmoid(x)


class Tanh(torch.nn.Tanh):
    def forward(self, x):
        return tanh(x)


class Flatten(torch.nn.Flatten):
    """Flatten is a view; PyTorch's own forward already is one, nothing to replace."""


class Dropout(torch.nn.Dropout):
    """Dropout whose mask comes from cnn_gpu's counter-based hash, seeded from torch's generator
    (so ``torch.manual_seed`` makes runs reproducible)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d's forward, step for step, on cnn_gpu::batch_norm: momentum=None is the cumulative
    moving average, eval mode uses the running statistics (and differentiates through them as constants),
    track_running_stats=False normalises with the batch statistics in both modes."""

    def forward(self, x):
        return _batch_norm_module(x, self.running_mean, self.running_var, self.weight, self.bias,
                                  self.num_batches_tracked, self.training, self.track_running_stats, self.momentum,
                                  self.eps)


def _batch_norm_module(x, running_mean, running_var, weight, bias, num_batches_tracked, training, track_running_stats,
                       momentum, eps):
    """torch.nn.BatchNorm2d.forward's steps (a function, so torch.fx.symbolic_trace keeps it as one call)."""
    if x.dim() != 4:
        raise ValueError(f"BatchNorm2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    factor = 0.0 if momentum is None else momentum
    if training and track_running_stats and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
    batch_statistics = training or (running_mean is None and running_var is None)
    keep = not training or track_running_stats
    return batch_norm(x, running_mean if keep else None, running_var if keep else None, weight, bias,
                      batch_statistics, factor, eps)


torch.fx.wrap("_batch_norm_module")
