"""The public op contract: NCHW, float32 (float64 too on NumPy). Every op has a forward and a backward.

Each function validates its arguments (ValueError / TypeError naming the argument and shapes, before
any work), then runs the NumPy reference for numpy arrays or our CUDA kernels for cupy arrays.
The implementations live in cnn_gpu/ops/, one module per op family; this module only re-exports.
"""
from cnn_gpu.ops.activation import (
    elu,
    elu_backward,
    gelu,
    gelu_backward,
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    selu,
    selu_backward,
    sigmoid,
    sigmoid_backward,
    silu,
    silu_backward,
    softplus,
    softplus_backward,
    swish,
    swish_backward,
    tanh,
    tanh_backward,
)
from cnn_gpu.ops.batchnorm import batch_norm, batch_norm_backward
from cnn_gpu.ops.conv import conv2d, conv2d_backward
from cnn_gpu.ops.dropout import dropout, dropout_backward
from cnn_gpu.ops.gemm import linear, linear_backward, matmul
from cnn_gpu.ops.optim import adam_update, rmsprop_update, sgd_update, weight_decay_update
from cnn_gpu.ops.pool import (
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    sum_pool2d,
    sum_pool2d_backward,
)
from cnn_gpu.ops.shape import flatten, flatten_backward, zero_pad2d, zero_pad2d_backward
from cnn_gpu.ops.softmax import (
    log_softmax,
    mean_squared_error,
    sigmoid_binary_cross_entropy,
    softmax,
    softmax_cross_entropy,
)

__all__ = [
    "adam_update", "avg_pool2d", "avg_pool2d_backward", "batch_norm", "batch_norm_backward",
    "conv2d", "conv2d_backward", "dropout", "dropout_backward", "elu", "elu_backward", "flatten", "flatten_backward",
    "gelu", "gelu_backward", "rmsprop_update", "selu", "selu_backward", "silu", "silu_backward", "softplus",
    "softplus_backward", "swish", "swish_backward", "weight_decay_update",
    "leaky_relu", "leaky_relu_backward", "linear", "linear_backward", "log_softmax", "matmul",
    "max_pool2d", "max_pool2d_backward", "mean_squared_error", "relu", "relu_backward", "sgd_update", "sigmoid",
    "sigmoid_backward", "sigmoid_binary_cross_entropy", "softmax", "softmax_cross_entropy",
    "sum_pool2d", "sum_pool2d_backward", "tanh", "tanh_backward", "zero_pad2d", "zero_pad2d_backward",
]
